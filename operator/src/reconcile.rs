//! The one entry path every reconciled kind shares: the stores are
//! synced, the object is not older than this replica's own last write, the
//! Lease still fences this replica, then the finalizer, then decode (or
//! report the object unreadable, or clean up after its deletion). Each
//! kind says only what to do at those last three steps.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalize, finalizer};
use switchyard_crds::FINALIZER;

use crate::context::{Context, Error, decode, from_finalizer};

/// A kind the operator reconciles from its raw stored objects.
pub(crate) trait Reconciled: Send + Sync + 'static {
    /// The kind's name, e.g. `MigrationPlan`.
    const KIND: &'static str;
    /// The controller's label on the operator's metrics.
    const CONTROLLER: &'static str;
    /// The typed object.
    type Typed: serde::de::DeserializeOwned + Send + Sync + 'static;

    /// The kind's API resource.
    fn resource() -> ApiResource;

    /// Whether another controller drives this object (nothing is done).
    fn skip(_obj: &DynamicObject) -> bool {
        false
    }

    /// Observe, plan and act on a readable object.
    fn apply(
        obj: Arc<Self::Typed>,
        ctx: &Arc<Context>,
        ns: &str,
    ) -> impl Future<Output = Result<Action, Error>> + Send;

    /// Report an object that does not decode, naming the field.
    fn unreadable(
        obj: &DynamicObject,
        message: String,
        ctx: &Arc<Context>,
        ns: &str,
    ) -> impl Future<Output = Result<Action, Error>> + Send;

    /// Let go of what a deleted object held.
    fn cleanup(
        obj: &DynamicObject,
        ctx: &Arc<Context>,
        ns: &str,
    ) -> impl Future<Output = Result<Action, Error>> + Send;
}

/// Reconcile one object of kind `K`, timed and counted.
pub(crate) async fn reconcile_object<K: Reconciled>(
    obj: Arc<DynamicObject>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    ctx.timed(K::CONTROLLER, K::KIND, &obj.clone(), entry::<K>(obj, &ctx))
        .await
}

async fn entry<K: Reconciled>(
    obj: Arc<DynamicObject>,
    ctx: &Arc<Context>,
) -> Result<Action, Error> {
    let name = obj.name_any();
    tracing::debug!(kind = K::KIND, %name, "reconcile");
    if K::skip(&obj) {
        return Ok(Action::await_change());
    }
    if !ctx.synced() {
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    // Deciding on a status older than our own last write would undo it
    // (a plan would drop lastAnalysis when the pause's spec event arrives
    // before the status event; a MigrationCanary that has returned its nodes, seen
    // still Running, would try its mode on them again): wait for the
    // store to catch up.
    if ctx.stale(K::KIND, &obj) {
        return Ok(Action::requeue(Duration::from_millis(100)));
    }
    let ns = obj
        .namespace()
        .ok_or_else(|| Error::NoNamespace(format!("{} {name}", K::KIND)))?;
    // Likewise for this replica's own node writes: a node whose write the
    // store does not show yet would be told again.
    if ctx.nodes_behind(&ns) {
        return Ok(Action::requeue(Duration::from_millis(100)));
    }
    if !ctx.fence.still_leader().await {
        tracing::warn!(kind = K::KIND, %name, "not the leader any more: writing nothing");
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &K::resource());
    finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            Finalize::Apply(o) => match decode::<K::Typed>(&o, K::KIND) {
                Ok(typed) => K::apply(Arc::new(typed), ctx, &ns).await,
                Err(message) => K::unreadable(&o, message, ctx, &ns).await,
            },
            Finalize::Cleanup(o) => K::cleanup(&o, ctx, &ns).await,
        }
    })
    .await
    .map_err(from_finalizer)
}
