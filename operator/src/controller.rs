//! The MigrationPlan and Canary controllers. They share one FleetNode
//! reflector store. Each reconcile reads the object and the FleetNodes from
//! the stores, asks the pure planner what to do, and carries it out: the
//! status through the status subresource first, then server-side apply of
//! FleetNode modes (bounded concurrency, rate-limited), an Event per
//! transition, and a requeue at the planner's due time. A finalizer on each
//! plan and standalone Canary releases its FleetNodes when it is deleted.

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt, stream};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use switchyard_crds::plan::AlertAction;
use switchyard_crds::{
    ANNOTATION_PAUSED_BY, ANNOTATION_START_MODE, ANNOTATION_STEP, Canary, CanaryPhase, CanarySpec,
    CanaryStatus, FIELD_MANAGER, FINALIZER, FleetNode, LABEL_CANARY, LABEL_PLAN, MigrationPlan,
    NetworkMode, Verdict,
};

use crate::metrics::Metrics;
use crate::planner::selection::{PlanRef, held_by_other, matches};
use crate::planner::{self, AnalysisInput, NodePatch, NodeView, PlanInput, TriggerInput};
use crate::ratelimit::RateLimiter;

/// Where analysis verdicts and rollback triggers come from (the analysis
/// issue implements it; tests drive verdicts directly).
pub trait Analysis: Send + Sync + 'static {
    /// The latest verdict for a plan.
    fn verdict(&self, plan: &MigrationPlan) -> Option<AnalysisInput>;
    /// A fired rollback trigger for a plan.
    fn trigger(&self, plan: &MigrationPlan) -> Option<TriggerInput>;
    /// The latest verdict for a standalone Canary.
    fn canary_verdict(&self, _canary: &Canary) -> Option<AnalysisInput> {
        None
    }
    /// Bumped when a verdict or trigger may have changed outside any watched
    /// object (an alert arrived): every plan is reconciled again at once.
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
    /// (namespace, name) of each plan with a new measurement or trigger:
    /// that plan is reconciled again. Taken once, by the controller.
    fn plan_updates(&self) -> Option<futures::stream::BoxStream<'static, (String, String)>> {
        None
    }
}

/// Fencing: whether this replica may still write. Checked before every
/// batch of writes, so a leader whose Lease lapsed (a slow renewal under
/// load) stops writing before a standby that took over starts.
pub trait Fence: Send + Sync + 'static {
    /// Whether this replica still holds leadership with time to spare.
    fn still_leader(&self) -> futures::future::BoxFuture<'_, bool>;
}

/// A fence that always allows writing (a single replica, or tests).
pub struct NoFence;

impl Fence for NoFence {
    fn still_leader(&self) -> futures::future::BoxFuture<'_, bool> {
        Box::pin(async { true })
    }
}

/// The Lease as fence: this replica must be its holder, and the Lease must
/// stay valid for at least `margin` more.
pub struct LeaseFence {
    /// The Lease's API.
    pub api: Api<k8s_openapi::api::coordination::v1::Lease>,
    /// The Lease's name.
    pub name: String,
    /// This replica's identity.
    pub identity: String,
    /// Safety margin before the Lease's expiry.
    pub margin: Duration,
}

impl Fence for LeaseFence {
    fn still_leader(&self) -> futures::future::BoxFuture<'_, bool> {
        Box::pin(async move {
            let Ok(lease) = self.api.get(&self.name).await else {
                return false;
            };
            let Some(spec) = lease.spec else { return false };
            let holder = spec.holder_identity.as_deref() == Some(self.identity.as_str());
            let valid_until = spec.renew_time.map(|t| t.0).and_then(|t| {
                let secs = i64::from(spec.lease_duration_seconds.unwrap_or(0));
                t.checked_add(jiff::SignedDuration::from_secs(secs)).ok()
            });
            let margin =
                jiff::SignedDuration::try_from(self.margin).unwrap_or(jiff::SignedDuration::ZERO);
            holder
                && valid_until.is_some_and(|until| {
                    Timestamp::now()
                        .checked_add(margin)
                        .is_ok_and(|t| t < until)
                })
        })
    }
}

/// No analysis: steps advance on acknowledgement and soak alone.
pub struct NoAnalysis;

impl Analysis for NoAnalysis {
    fn verdict(&self, _: &MigrationPlan) -> Option<AnalysisInput> {
        None
    }
    fn trigger(&self, _: &MigrationPlan) -> Option<TriggerInput> {
        None
    }
}

/// Controller settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// FleetNode writes in flight at once.
    pub write_concurrency: usize,
    /// FleetNode writes per second.
    pub write_qps: f64,
    /// FleetNode writes allowed in a burst.
    pub write_burst: u32,
}

impl Default for Settings {
    fn default() -> Self {
        // Enough to keep a 10,000-node wave moving without bursting the API
        // server's default max-in-flight (400) for one client.
        Settings {
            write_concurrency: 32,
            // client-go defaults to 5 QPS / 10 burst for everything; a mode
            // write is small, and the plan's maxUnavailable already bounds
            // how many are due at once.
            write_qps: 200.0,
            write_burst: 400,
        }
    }
}

/// Shared state of the controllers.
pub struct Context {
    pub(crate) client: Client,
    pub(crate) nodes: Store<FleetNode>,
    /// MigrationPlans as stored: an object that does not decode (possible
    /// when the API server does not validate) must not stop the watch.
    pub(crate) plans: Store<DynamicObject>,
    /// Canaries as stored, likewise.
    pub(crate) canaries: Store<DynamicObject>,
    /// Whether the node, plan and Canary stores hold a complete list.
    pub(crate) ready: Arc<Synced>,
    /// This replica's name on its Events.
    pub(crate) instance: String,
    /// Events recorded, to keep Event names unique.
    pub(crate) events: std::sync::atomic::AtomicU64,
    pub(crate) analysis: Arc<dyn Analysis>,
    pub(crate) settings: Settings,
    pub(crate) limiter: RateLimiter,
    pub(crate) metrics: Metrics,
    pub(crate) fence: Arc<dyn Fence>,
    /// The resourceVersion of this replica's last status write per object
    /// (kind/namespace/name): a reconcile that sees an older version is
    /// looking at a store that has not caught up with its own write.
    pub(crate) written: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

/// A reconcile failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The object has no namespace.
    #[error("{0} has no namespace")]
    NoNamespace(String),
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
}

impl Error {
    fn kind(&self) -> String {
        match self {
            Error::Kube(kube::Error::Api(s)) => s.reason.clone(),
            Error::Kube(_) => "Transport".to_owned(),
            Error::NoNamespace(_) => "NoNamespace".to_owned(),
            Error::Finalizer(_) => "Finalizer".to_owned(),
        }
    }
}

pub(crate) fn from_finalizer(e: kube::runtime::finalizer::Error<Error>) -> Error {
    use kube::runtime::finalizer::Error as F;
    match e {
        F::ApplyFailed(e) | F::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    }
}

fn node_patch(plan: &str, p: &NodePatch) -> serde_json::Value {
    json!({
        "apiVersion": "switchyard.dev/v1alpha1",
        "kind": "FleetNode",
        "metadata": {
            "name": p.node,
            "labels": {LABEL_PLAN: plan},
            "annotations": {ANNOTATION_START_MODE: p.start_mode.as_str(), ANNOTATION_STEP: p.step},
        },
        "spec": {"mode": p.mode.as_str()},
    })
}

/// A FleetNode apply that keeps only `spec.mode` under `manager`: the
/// manager's labels and annotations go, so the node is free again.
pub(crate) fn release_patch(node: &str, mode: NetworkMode) -> serde_json::Value {
    json!({
        "apiVersion": "switchyard.dev/v1alpha1",
        "kind": "FleetNode",
        "metadata": {"name": node},
        "spec": {"mode": mode.as_str()},
    })
}

/// The plans of a namespace as ownership resolution sees them.
pub(crate) fn plan_refs(plans: &[Arc<MigrationPlan>], now: Timestamp) -> Vec<PlanRef<'_>> {
    plans
        .iter()
        .map(|p| PlanRef {
            name: p.metadata.name.as_deref().unwrap_or(""),
            created: p.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0),
            phase: p.status.as_ref().map(|s| s.phase).unwrap_or_default(),
            selector: &p.spec.selector,
        })
        .collect()
}

/// Whether a standalone Canary still holds the nodes it labelled.
pub(crate) fn canary_holds(c: &Canary) -> bool {
    c.metadata.deletion_timestamp.is_none()
        && matches!(
            c.status.as_ref().map(|s| s.phase).unwrap_or_default(),
            CanaryPhase::Pending | CanaryPhase::Running
        )
}

/// Who other than `me` holds this node: a live plan, or a standalone
/// Canary that labelled it.
pub(crate) fn holder_of(
    node: &FleetNode,
    me: &str,
    plans: &[PlanRef<'_>],
    canaries: &[Arc<Canary>],
) -> Option<String> {
    if let Some(p) = held_by_other(me, node.labels(), plans) {
        return Some(format!("MigrationPlan {p}"));
    }
    let c = node.labels().get(LABEL_CANARY)?;
    canaries
        .iter()
        .find(|x| x.metadata.name.as_ref() == Some(c) && x.metadata.name.as_deref() != Some(me))
        .filter(|x| canary_holds(x))
        .map(|_| format!("Canary {c}"))
}

impl Context {
    /// Apply FleetNode bodies under `manager`: rate-limited, bounded
    /// concurrency; stops at the first error.
    pub(crate) async fn write_nodes(
        &self,
        ns: &str,
        manager: &str,
        writes: Vec<(String, serde_json::Value)>,
    ) -> Result<(), Error> {
        let nodes: Api<FleetNode> = Api::namespaced(self.client.clone(), ns);
        let pp = PatchParams::apply(manager).force();
        stream::iter(writes)
            .map(|(node, body)| {
                let nodes = nodes.clone();
                let pp = pp.clone();
                async move {
                    self.limiter.acquire().await;
                    let r = nodes
                        .patch(&node, &pp, &Patch::Apply(&body))
                        .await
                        .map(|_| ());
                    let outcome = if r.is_ok() { "ok" } else { "error" };
                    self.metrics.node_writes.with_label_values(&[outcome]).inc();
                    r
                }
            })
            .buffer_unordered(self.settings.write_concurrency.max(1))
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Record Events: (reason, message, warning), one events.k8s.io Event
    /// each. Not through kube's `Recorder`: it folds every Event with the
    /// same reason into one series and keeps only the first note, so
    /// "stage 0 wave 0" would stand for every later wave too.
    pub(crate) async fn publish(
        &self,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        events: Vec<(String, String, bool)>,
    ) {
        use k8s_openapi::api::events::v1::Event as KubeEvent;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
        let Some(ns) = reference.namespace.clone() else {
            return;
        };
        let api: Api<KubeEvent> = Api::namespaced(self.client.clone(), &ns);
        for (reason, note, warning) in events {
            let now = Timestamp::now();
            let regarding = reference.name.clone().unwrap_or_default();
            let name = format!(
                "{regarding}.{:x}",
                now.as_nanosecond().unsigned_abs() ^ u128::from(self.event_seq())
            );
            // The API server caps a note at 1 kB.
            let mut note = note;
            if note.len() > 1024 {
                let mut cut = 1021;
                while !note.is_char_boundary(cut) {
                    cut -= 1;
                }
                note.truncate(cut);
                note.push_str("...");
            }
            let event = KubeEvent {
                metadata: kube::api::ObjectMeta {
                    name: Some(name),
                    namespace: Some(ns.clone()),
                    ..Default::default()
                },
                event_time: Some(MicroTime(now)),
                action: Some("Reconcile".into()),
                reason: Some(reason),
                note: Some(note),
                type_: Some(if warning { "Warning" } else { "Normal" }.into()),
                regarding: Some(reference.clone()),
                reporting_controller: Some(FIELD_MANAGER.into()),
                reporting_instance: Some(self.instance.clone()),
                ..Default::default()
            };
            if let Err(e) = api.create(&Default::default(), &event).await {
                tracing::warn!(error = %e, "could not record event");
            }
        }
    }

    fn event_seq(&self) -> u64 {
        self.events
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Server-side apply `status` to a Switchyard object's status
    /// subresource under `manager`, unless it is unchanged. Raw, so the
    /// answer decodes even when the object's spec does not.
    pub(crate) async fn write_status<K, S>(
        &self,
        ns: &str,
        name: &str,
        manager: &str,
        old: Option<&S>,
        status: &S,
    ) -> Result<(), Error>
    where
        K: Resource<DynamicType = ()>,
        S: PartialEq + serde::Serialize,
    {
        if old == Some(status) {
            return Ok(());
        }
        let ar = resource_of::<K>();
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), ns, &ar);
        let body = json!({"apiVersion": ar.api_version, "kind": ar.kind, "metadata": {"name": name}, "status": status});
        let written = api
            .patch_status(
                name,
                &PatchParams::apply(manager).force(),
                &Patch::Apply(&body),
            )
            .await?;
        if let Some(rv) = written
            .metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
        {
            self.written
                .lock()
                .expect("written lock")
                .insert(format!("{}/{ns}/{name}", ar.kind), rv);
        }
        Ok(())
    }

    /// Whether `obj` is older than this replica's last status write to it
    /// (resourceVersions compared as the integers etcd-backed servers use;
    /// anything else is never called stale).
    pub(crate) fn stale(&self, kind: &str, obj: &DynamicObject) -> bool {
        let key = format!(
            "{kind}/{}/{}",
            obj.namespace().unwrap_or_default(),
            obj.name_any()
        );
        let seen = obj
            .metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok());
        match (seen, self.written.lock().expect("written lock").get(&key)) {
            (Some(seen), Some(written)) => seen < *written,
            _ => false,
        }
    }

    /// Run one reconcile of `controller`, recording its duration and
    /// outcome.
    pub(crate) async fn timed(
        &self,
        controller: &str,
        reconcile: impl std::future::Future<Output = Result<Action, Error>>,
    ) -> Result<Action, Error> {
        let timer = self
            .metrics
            .reconcile_seconds
            .with_label_values(&[controller])
            .start_timer();
        let result = reconcile.await;
        timer.observe_duration();
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics.reconciles.with_label_values(&[outcome]).inc();
        result
    }

    /// Wait for every store to hold a complete view; deciding on a
    /// half-filled node store would hide nodes from the barrier and the
    /// island guard.
    ///
    /// Flags set by the watch streams, not `Store::wait_until_ready`: that
    /// future keeps only the last waiter's waker, so many reconciles
    /// waiting at once (15 plans applied together) sleep forever.
    pub(crate) fn synced(&self) -> bool {
        self.ready.all()
    }
}

/// Which of the node, plan and Canary stores hold a complete list. Once
/// all three do, `switchyard_operator_stores_synced` is 1: from then on the
/// operator decides from the whole fleet (a benchmark's baseline, a
/// readiness check).
pub(crate) struct Synced {
    stores: [std::sync::atomic::AtomicBool; 3],
    gauge: prometheus::IntGauge,
}

/// The stores [`Synced`] tracks.
#[derive(Clone, Copy)]
enum StoreOf {
    Nodes = 0,
    Plans = 1,
    Canaries = 2,
}

impl Synced {
    fn new(gauge: prometheus::IntGauge) -> Self {
        gauge.set(0);
        Synced {
            stores: Default::default(),
            gauge,
        }
    }

    /// `store` holds its first complete list.
    fn mark(&self, store: StoreOf) {
        self.stores[store as usize].store(true, std::sync::atomic::Ordering::Release);
        if self.all() {
            self.gauge.set(1);
        }
    }

    fn all(&self) -> bool {
        self.stores
            .iter()
            .all(|r| r.load(std::sync::atomic::Ordering::Acquire))
    }
}

/// The API resource of a Switchyard kind, for dynamic access.
pub(crate) fn resource_of<K: Resource<DynamicType = ()>>() -> ApiResource {
    ApiResource::erase::<K>(&())
}

/// Decode a stored Switchyard object; the error names the field.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    obj: &DynamicObject,
    kind: &str,
) -> Result<T, String> {
    let mut value = serde_json::to_value(obj).map_err(|e| e.to_string())?;
    value["apiVersion"] = json!("switchyard.dev/v1alpha1");
    value["kind"] = json!(kind);
    switchyard_crds::manifest::decode::<T>(kind, &value).map_err(|e| e.to_string())
}

impl Context {
    /// The readable MigrationPlans of a namespace.
    pub(crate) fn plans_in(&self, ns: &str) -> Vec<Arc<MigrationPlan>> {
        self.plans
            .state()
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
            .filter_map(|p| decode(p, "MigrationPlan").ok().map(Arc::new))
            .collect()
    }

    /// The readable Canaries of a namespace.
    pub(crate) fn canaries_in(&self, ns: &str) -> Vec<Arc<Canary>> {
        self.canaries
            .state()
            .iter()
            .filter(|c| c.metadata.namespace.as_deref() == Some(ns))
            .filter_map(|c| decode(c, "Canary").ok().map(Arc::new))
            .collect()
    }

    /// One Canary by name, if it exists and reads.
    pub(crate) fn canary(&self, ns: &str, name: &str) -> Option<Canary> {
        let obj = self
            .canaries
            .get(&ObjectRef::new_with(name, resource_of::<Canary>()).within(ns))?;
        decode(&obj, "Canary").ok()
    }
}

/// Requeue at `at`, or wait for a change.
pub(crate) fn requeue(at: Option<Timestamp>, now: Timestamp) -> Action {
    match at {
        Some(at) => Action::requeue(
            Duration::try_from(at.duration_since(now))
                .unwrap_or_default()
                .max(Duration::from_millis(50)),
        ),
        None => Action::await_change(),
    }
}

/// Reconcile one MigrationPlan.
pub async fn reconcile(plan: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.timed("migrationplan", reconcile_with_finalizer(plan, &ctx))
        .await
}

async fn reconcile_with_finalizer(
    plan: Arc<DynamicObject>,
    ctx: &Arc<Context>,
) -> Result<Action, Error> {
    let name = plan.name_any();
    tracing::debug!(plan = %name, "reconcile");
    if !ctx.synced() {
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    // Planning on a status older than our own last write would undo it
    // (e.g. drop lastAnalysis when the pause's spec event arrives before
    // the status event): wait for the store to catch up.
    if ctx.stale("MigrationPlan", &plan) {
        return Ok(Action::requeue(Duration::from_millis(100)));
    }
    let ns = plan
        .namespace()
        .ok_or_else(|| Error::NoNamespace(format!("MigrationPlan {name}")))?;
    if !ctx.fence.still_leader().await {
        tracing::warn!(plan = %name, "not the leader any more: writing nothing");
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let ar = resource_of::<MigrationPlan>();
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &ar);
    kube::runtime::finalizer::finalizer(&api, FINALIZER, plan, |event| async {
        match event {
            kube::runtime::finalizer::Event::Apply(p) => match decode(&p, "MigrationPlan") {
                Ok(plan) => reconcile_plan(Arc::new(plan), ctx, &ns).await,
                Err(message) => unreadable_plan(&p, message, ctx, &ns).await,
            },
            kube::runtime::finalizer::Event::Cleanup(p) => release_plan(&p, ctx, &ns).await,
        }
    })
    .await
    .map_err(from_finalizer)
}

/// A deleted plan lets go of its FleetNodes: each keeps its current mode
/// (deleting a plan is not a rollback; `spec.rollbackRequest` is), and
/// loses the plan label and annotations.
async fn release_plan(plan: &DynamicObject, ctx: &Arc<Context>, ns: &str) -> Result<Action, Error> {
    let name = plan.name_any();
    let writes: Vec<(String, serde_json::Value)> = ctx
        .nodes
        .state()
        .iter()
        .filter(|n| n.namespace().as_deref() == Some(ns))
        .filter(|n| n.labels().get(LABEL_PLAN) == Some(&name))
        .map(|n| {
            let mode = n
                .desired_mode()
                .or(n.applied_mode())
                .unwrap_or(NetworkMode::LibP2pOnly);
            (n.name_any(), release_patch(&n.name_any(), mode))
        })
        .collect();
    let count = writes.len();
    ctx.write_nodes(ns, FIELD_MANAGER, writes).await?;
    for mode in NetworkMode::ALL {
        let _ = ctx
            .metrics
            .nodes
            .remove_label_values(&[&name, mode.as_str()]);
        let _ = ctx
            .metrics
            .nodes_desired
            .remove_label_values(&[&name, mode.as_str()]);
    }
    ctx.publish(
        &plan.object_ref(&resource_of::<MigrationPlan>()),
        vec![(
            "NodesReleased".to_owned(),
            format!("plan deleted: {count} FleetNode(s) released at their current modes"),
            false,
        )],
    )
    .await;
    Ok(Action::await_change())
}

/// A plan whose stored object does not decode: Invalid, naming the field.
async fn unreadable_plan(
    obj: &DynamicObject,
    message: String,
    ctx: &Arc<Context>,
    ns: &str,
) -> Result<Action, Error> {
    let name = obj.name_any();
    let status: Option<switchyard_crds::MigrationPlanStatus> = obj
        .data
        .get("status")
        .and_then(|s| serde_json::from_value(s.clone()).ok());
    let decision = planner::unreadable(
        &name,
        obj.metadata.generation.unwrap_or(0),
        status.as_ref(),
        message,
        Timestamp::now(),
    );
    ctx.write_status::<MigrationPlan, _>(
        ns,
        &name,
        FIELD_MANAGER,
        status.as_ref(),
        &decision.status,
    )
    .await?;
    ctx.publish(
        &obj.object_ref(&resource_of::<MigrationPlan>()),
        decision
            .transitions
            .iter()
            .map(|t| (t.reason().to_owned(), t.message(), t.is_warning()))
            .collect(),
    )
    .await;
    Ok(Action::await_change())
}

async fn reconcile_plan(
    plan: Arc<MigrationPlan>,
    ctx: &Arc<Context>,
    ns: &str,
) -> Result<Action, Error> {
    let name = plan.name_any();
    let now = Timestamp::now();
    let all_plans = ctx.plans_in(ns);
    let refs = plan_refs(&all_plans, now);
    let canaries = ctx.canaries_in(ns);
    let views: Vec<NodeView> = ctx
        .nodes
        .state()
        .iter()
        .filter(|n| n.namespace().as_deref() == Some(ns))
        .filter(|n| {
            matches(&plan.spec.selector, n.labels()) || n.labels().get(LABEL_PLAN) == Some(&name)
        })
        .map(|n| NodeView::from_fleet_node(n, holder_of(n, &name, &refs, &canaries)))
        .collect();
    let analysis = ctx.analysis.verdict(&plan);
    let trigger = ctx.analysis.trigger(&plan);
    // Paused by alerts that have all resolved, and the plan asks to go on.
    if plan.spec.paused
        && plan.spec.rollback.resume_when_alerts_resolve
        && plan
            .annotations()
            .get(ANNOTATION_PAUSED_BY)
            .map(String::as_str)
            == Some("alert")
        && trigger.is_none()
    {
        let plans: Api<MigrationPlan> = Api::namespaced(ctx.client.clone(), ns);
        plans
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({
                    "metadata": {"annotations": {ANNOTATION_PAUSED_BY: null}},
                    "spec": {"paused": false},
                })),
            )
            .await?;
        tracing::info!(plan = %name, "the alerts that paused the plan resolved; resuming");
        ctx.publish(
            &plan.object_ref(&()),
            vec![(
                "AlertsResolved".to_owned(),
                "the alerts that paused the plan resolved; resuming".to_owned(),
                false,
            )],
        )
        .await;
        // The spec change brings the plan back; nothing else to do now.
        return Ok(Action::await_change());
    }
    let decision = planner::plan(&PlanInput {
        name: &name,
        generation: plan.metadata.generation.unwrap_or(0),
        spec: &plan.spec,
        status: plan.status.as_ref(),
        nodes: &views,
        analysis: analysis.as_ref(),
        trigger: trigger.as_ref(),
        now,
    });

    // Record the decision first, then act on it: if this replica dies
    // between the two, its successor finds the new status and re-issues
    // the same node writes (idempotent), instead of reading the old status
    // beside nodes already moved, which would step them back.
    let plans: Api<MigrationPlan> = Api::namespaced(ctx.client.clone(), ns);
    if decision.pause.is_some() {
        let by_alert = trigger.as_ref().is_some_and(|t| t.trigger == "Alert")
            && plan.spec.rollback.alert_action == AlertAction::Pause;
        let mut patch = json!({"spec": {"paused": true}});
        if by_alert {
            patch["metadata"] = json!({"annotations": {ANNOTATION_PAUSED_BY: "alert"}});
        }
        plans
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
    }
    ctx.write_status::<MigrationPlan, _>(
        ns,
        &name,
        FIELD_MANAGER,
        plan.status.as_ref(),
        &decision.status,
    )
    .await?;
    let writes: Vec<(String, serde_json::Value)> = decision
        .patches
        .iter()
        .map(|p| (p.node.clone(), node_patch(&name, p)))
        .collect();
    ctx.write_nodes(ns, FIELD_MANAGER, writes).await?;
    if let Some(action) = &decision.canary {
        owned_canary(ctx, &plan, ns, action, &decision.status).await?;
    }

    // Plans by phase (recomputed from the store), this plan's nodes by mode.
    ctx.metrics.plans.reset();
    for p in &all_plans {
        let phase = if p.metadata.name.as_ref() == Some(&name) {
            decision.status.phase
        } else {
            p.status.as_ref().map(|s| s.phase).unwrap_or_default()
        };
        ctx.metrics
            .plans
            .with_label_values(&[&format!("{phase:?}")])
            .inc();
    }
    let desired = |m: NetworkMode| {
        views
            .iter()
            .filter(|v| v.held_by.is_none() && v.desired.or(v.applied) == Some(m))
            .count()
    };
    for mode in NetworkMode::ALL {
        let count = i64::from(decision.status.nodes.by_mode.get(mode));
        ctx.metrics
            .nodes
            .with_label_values(&[&name, mode.as_str()])
            .set(count);
        // Desired after this reconcile's writes.
        let moved_in = decision.patches.iter().filter(|p| p.mode == mode).count();
        let moved_out = decision
            .patches
            .iter()
            .filter(|p| {
                views
                    .iter()
                    .find(|v| v.name == p.node)
                    .and_then(|v| v.desired.or(v.applied))
                    == Some(mode)
            })
            .count();
        let want = (desired(mode) + moved_in).saturating_sub(moved_out);
        ctx.metrics
            .nodes_desired
            .with_label_values(&[&name, mode.as_str()])
            .set(i64::try_from(want).unwrap_or(i64::MAX));
    }
    for t in &decision.transitions {
        if let planner::Transition::RollbackStarted { trigger, .. } = t {
            ctx.metrics.rollbacks.with_label_values(&[trigger]).inc();
        }
    }
    ctx.publish(
        &plan.object_ref(&()),
        decision
            .transitions
            .iter()
            .map(|t| (t.reason().to_owned(), t.message(), t.is_warning()))
            .collect(),
    )
    .await;
    Ok(requeue(decision.requeue_at, now))
}

/// The name of a plan's Canary for a stage.
pub fn owned_canary_name(plan: &str, stage: u32) -> String {
    format!("{plan}-stage-{stage}")
}

/// Materialise the plan's canary as an owned Canary object: its spec names
/// the nodes the plan chose, its status mirrors the plan's progress. The
/// plan moves the nodes; the Canary controller leaves owned Canaries alone,
/// and garbage collection removes them with the plan.
async fn owned_canary(
    ctx: &Context,
    plan: &MigrationPlan,
    ns: &str,
    action: &planner::CanaryAction,
    plan_status: &switchyard_crds::MigrationPlanStatus,
) -> Result<(), Error> {
    let plan_name = plan.name_any();
    let api: Api<Canary> = Api::namespaced(ctx.client.clone(), ns);
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let (stage, status) = match action {
        planner::CanaryAction::Ensure {
            stage,
            mode,
            nodes,
            duration,
        } => {
            if nodes.is_empty() {
                return Ok(());
            }
            let name = owned_canary_name(&plan_name, *stage);
            let existing = ctx.canary(ns, &name);
            let spec = CanarySpec {
                selector: plan.spec.selector.clone(),
                nodes: Some(nodes.clone()),
                count: None,
                percent: None,
                mode: *mode,
                duration: *duration,
                baseline_selector: None,
                ab_share: None,
                analysis: plan.spec.canary.as_ref().and_then(|c| c.analysis.clone()),
            };
            if existing.as_ref().map(|c| &c.spec) != Some(&spec) {
                let owner = plan.controller_owner_ref(&()).ok_or_else(|| {
                    Error::NoNamespace(format!("MigrationPlan {plan_name} has no uid yet"))
                })?;
                let body = json!({
                    "apiVersion": "switchyard.dev/v1alpha1",
                    "kind": "Canary",
                    "metadata": {
                        "name": name,
                        "labels": {LABEL_PLAN: plan_name},
                        "ownerReferences": [owner],
                    },
                    "spec": spec,
                });
                api.patch(&name, &pp, &Patch::Apply(&body)).await?;
            }
            let status = CanaryStatus {
                phase: CanaryPhase::Running,
                observed_generation: None,
                nodes: nodes.clone(),
                started_at: plan_status.step_acknowledged_at.clone(),
                metrics: Vec::new(),
                verdict: None,
                message: Some(format!(
                    "owned by MigrationPlan {plan_name}: {} node(s) on {mode}",
                    nodes.len()
                )),
                conditions: Vec::new(),
            };
            (*stage, status)
        }
        planner::CanaryAction::Finish { stage, verdict } => {
            let name = owned_canary_name(&plan_name, *stage);
            let Some(existing) = ctx.canary(ns, &name) else {
                return Ok(());
            };
            let mut status = existing.status.clone().unwrap_or_default();
            status.phase = if *verdict == Verdict::Pass {
                CanaryPhase::Succeeded
            } else {
                CanaryPhase::Failed
            };
            status.verdict = Some(*verdict);
            if let Some(r) = &plan_status.last_analysis {
                status.metrics = r.metrics.clone();
            }
            status.message = Some(format!("verdict {verdict:?}"));
            (*stage, status)
        }
    };
    let name = owned_canary_name(&plan_name, stage);
    let existing = ctx.canary(ns, &name);
    let same = existing.and_then(|c| c.status.clone()).is_some_and(|s| {
        s.phase == status.phase
            && s.nodes == status.nodes
            && s.started_at == status.started_at
            && s.verdict == status.verdict
    });
    if !same {
        let body = json!({
            "apiVersion": "switchyard.dev/v1alpha1",
            "kind": "Canary",
            "metadata": {"name": name},
            "status": status,
        });
        api.patch_status(&name, &pp, &Patch::Apply(&body)).await?;
    }
    Ok(())
}

fn error_policy<K>(_obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "reconcile failed");
    ctx.metrics.errors.with_label_values(&[&error.kind()]).inc();
    // Transient API errors: back off a little, with jitter from the clock.
    let jitter = u64::from(Timestamp::now().subsec_nanosecond().unsigned_abs() % 500);
    Action::requeue(Duration::from_millis(500 + jitter))
}

fn api_for<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Watch `api` into a shared store with `subscribers` subscribers; the
/// returned future drives the watch. Every subscriber must be polled, or
/// the watch waits for it.
#[allow(clippy::type_complexity)]
fn shared<K>(
    api: Api<K>,
    subscribers: usize,
    ready: (Arc<Synced>, StoreOf),
) -> (
    Store<K>,
    Vec<reflector::ReflectHandle<K>>,
    impl std::future::Future<Output = ()> + Send,
)
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store_shared(4096);
    let handles = (0..subscribers)
        .filter_map(|_| writer.subscribe())
        .collect();
    let driver = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect_shared(writer)
        .for_each(move |r| {
            match r {
                Ok(watcher::Event::InitDone) => ready.0.mark(ready.1),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "watch"),
            }
            futures::future::ready(())
        });
    (reader, handles, driver)
}

/// A reflector for a Switchyard kind read as raw objects: the store, and
/// the stream that fills it and triggers the controller. `ready` is set
/// once the first complete list is in the store.
fn raw_reflector(
    api: Api<DynamicObject>,
    ar: &ApiResource,
    ready: (Arc<Synced>, StoreOf),
) -> (
    Store<DynamicObject>,
    impl futures::Stream<Item = Result<DynamicObject, watcher::Error>> + Send + 'static,
) {
    let writer = reflector::store::Writer::new(ar.clone());
    let reader = writer.as_reader();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    )
    .inspect(move |e| {
        if let Ok(watcher::Event::InitDone) = e {
            ready.0.mark(ready.1);
        }
    })
    .touched_objects();
    (reader, stream)
}

/// Which stored objects in the node's namespace care about a node change:
/// ones whose selector picks it or whose `label` it carries.
fn interested(
    store: &Store<DynamicObject>,
    ar: &ApiResource,
    node: &FleetNode,
    label: &str,
) -> Vec<ObjectRef<DynamicObject>> {
    let ns = node.namespace();
    store
        .state()
        .into_iter()
        .filter(|o| o.metadata.namespace == ns)
        .filter(|o| {
            let selected = o
                .data
                .get("spec")
                .and_then(|s| s.get("selector"))
                .and_then(|s| serde_json::from_value::<LabelSelector>(s.clone()).ok())
                .is_some_and(|sel| matches(&sel, node.labels()));
            selected || node.labels().get(label) == o.metadata.name.as_ref()
        })
        .map(|o| ObjectRef::from_obj_with(&*o, ar.clone()))
        .collect()
}

/// Run the MigrationPlan and Canary controllers until shutdown.
pub async fn run(
    client: Client,
    namespace: Option<String>,
    analysis: Arc<dyn Analysis>,
    settings: Settings,
    metrics: Metrics,
    fence: Arc<dyn Fence>,
) {
    let ns = namespace.as_deref();
    let ready = Arc::new(Synced::new(metrics.stores_synced.clone()));
    let (node_reader, mut node_subs, node_watch) = shared(
        api_for::<FleetNode>(&client, ns),
        2,
        (ready.clone(), StoreOf::Nodes),
    );
    let (Some(node_for_canaries), Some(node_for_plans)) = (node_subs.pop(), node_subs.pop()) else {
        tracing::error!("the shared FleetNode store gave no subscribers");
        return;
    };
    // Plans and Canaries are watched as raw objects: one that does not
    // decode (possible when the API server does not validate) is reported
    // Invalid instead of breaking the watch for every other.
    let plan_ar = resource_of::<MigrationPlan>();
    let canary_ar = resource_of::<Canary>();
    let raw_api = |ar: &ApiResource| -> Api<DynamicObject> {
        match ns {
            Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
            None => Api::all_with(client.clone(), ar),
        }
    };
    let (plan_reader, plan_stream) =
        raw_reflector(raw_api(&plan_ar), &plan_ar, (ready.clone(), StoreOf::Plans));
    let (canary_reader, canary_stream) = raw_reflector(
        raw_api(&canary_ar),
        &canary_ar,
        (ready.clone(), StoreOf::Canaries),
    );
    let plan_controller =
        Controller::for_stream_with(plan_stream, plan_reader.clone(), plan_ar.clone());
    let canary_controller =
        Controller::for_stream_with(canary_stream, canary_reader.clone(), canary_ar.clone());
    let ctx = Arc::new(Context {
        client: client.clone(),
        nodes: node_reader,
        plans: plan_reader.clone(),
        canaries: canary_reader.clone(),
        ready,
        instance: std::env::var("POD_NAME").unwrap_or_else(|_| FIELD_MANAGER.into()),
        events: std::sync::atomic::AtomicU64::new(0),
        analysis,
        limiter: RateLimiter::new(settings.write_qps, settings.write_burst),
        settings,
        metrics,
        fence,
        written: std::sync::Mutex::new(std::collections::HashMap::new()),
    });
    let plans_for_map = plan_reader;
    let ar = plan_ar;
    let nudges = match ctx.analysis.changes() {
        Some(rx) => tokio_stream::wrappers::WatchStream::from_changes(rx)
            .map(|_| ())
            .boxed(),
        None => futures::stream::pending().boxed(),
    };
    let updated = match ctx.analysis.plan_updates() {
        Some(updates) => {
            let ar = ar.clone();
            updates
                .map(move |(ns, name)| ObjectRef::new_with(&name, ar.clone()).within(&ns))
                .boxed()
        }
        None => futures::stream::pending().boxed(),
    };
    let plan_controller = plan_controller
        .reconcile_all_on(nudges)
        .reconcile_on(updated)
        .watches_shared_stream(node_for_plans, move |node: Arc<FleetNode>| {
            interested(&plans_for_map, &ar, &node, LABEL_PLAN)
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "plan controller event");
            }
        });
    let canaries_for_map = canary_reader;
    let ar = canary_ar;
    let canary_controller = canary_controller
        .watches_shared_stream(node_for_canaries, move |node: Arc<FleetNode>| {
            interested(&canaries_for_map, &ar, &node, LABEL_CANARY)
        })
        .shutdown_on_signal()
        .run(crate::canary::reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "canary controller event");
            }
        });
    // The controllers end on a signal; the watches end with them.
    tokio::select! {
        _ = futures::future::join(plan_controller, canary_controller) => {}
        _ = node_watch => {}
    }
}
