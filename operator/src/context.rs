//! What the controllers share: the stores, the seams to analysis and
//! leadership ([`Analysis`], [`Fence`]), and the write helpers every
//! reconcile uses (FleetNode applies, status applies, Events). The plan and
//! MigrationCanary controllers both build on this module; it depends on neither.

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt, stream};
use jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use switchyard_crds::{
    AnalysisTally, FIELD_MANAGER, FleetNode, LABEL_CANARY, MigrationCanary, MigrationCanaryPhase,
    MigrationPlan, NetworkMode,
};

use crate::metrics::Metrics;
use crate::planner::selection::{PlanRef, held_by_other};
use crate::planner::{AnalysisInput, Event, TriggerInput};
use crate::ratelimit::RateLimiter;

/// Where analysis verdicts and rollback triggers come from (the analysis
/// issue implements it; tests drive verdicts directly).
pub trait Analysis: Send + Sync + 'static {
    /// The latest verdict for a plan.
    fn verdict(&self, plan: &MigrationPlan) -> Option<AnalysisInput>;
    /// A fired rollback trigger for a plan.
    fn trigger(&self, plan: &MigrationPlan) -> Option<TriggerInput>;
    /// The latest verdict for a standalone MigrationCanary.
    fn canary_verdict(&self, _canary: &MigrationCanary) -> Option<AnalysisInput> {
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
    /// (namespace, name) of each standalone MigrationCanary with a new measurement.
    /// Taken once, by the controller.
    fn canary_updates(&self) -> Option<futures::stream::BoxStream<'static, (String, String)>> {
        None
    }
    /// The running count of a plan's analysis, for its status.
    fn plan_tally(&self, _plan: &MigrationPlan) -> Option<AnalysisTally> {
        None
    }
    /// The running count of a standalone MigrationCanary's analysis, for its status.
    fn canary_tally(&self, _canary: &MigrationCanary) -> Option<AnalysisTally> {
        None
    }
    /// Start measuring from the controllers' stores: the returned future
    /// runs as long as the controllers do.
    fn start(&self, _stores: Stores) -> Option<futures::future::BoxFuture<'static, ()>> {
        None
    }
}

/// The controllers' reflector stores, which the analysis reads too: one
/// watch per kind for the whole operator.
#[derive(Clone)]
pub struct Stores {
    pub(crate) nodes: Store<FleetNode>,
    pub(crate) plans: Store<DynamicObject>,
    pub(crate) canaries: Store<DynamicObject>,
    /// Whether all three hold a complete list.
    pub(crate) ready: Arc<Synced>,
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
    /// How long a FleetNode's pod may be missing before plans stop
    /// selecting and waiting for the node.
    pub absence_grace: Duration,
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
            // Longer than a pod's restart and rescheduling.
            absence_grace: Duration::from_secs(300),
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
    /// Whether the node, plan and MigrationCanary stores hold a complete list.
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
    /// Where plans' phase transitions are sent, if anywhere.
    pub(crate) notifier: Option<crate::notify::Notifier>,
    /// The resourceVersion of this replica's last status write per object
    /// (kind/namespace/name): a reconcile that sees an older version is
    /// looking at a store that has not caught up with its own write.
    pub(crate) written: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// Transient failures in a row per object (kind/namespace/name), for
    /// its backoff; a success forgets the object.
    pub(crate) failures: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    /// The resourceVersion of this replica's last write per FleetNode
    /// (namespace, name), until the node store shows it.
    pub(crate) node_writes: std::sync::Mutex<std::collections::HashMap<(String, String), u64>>,
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
    pub(crate) fn kind(&self) -> String {
        match self {
            Error::Kube(kube::Error::Api(s)) => s.reason.clone(),
            Error::Kube(_) => "Transport".to_owned(),
            Error::NoNamespace(_) => "NoNamespace".to_owned(),
            Error::Finalizer(_) => "Finalizer".to_owned(),
        }
    }
}

impl Error {
    /// Whether retrying cannot help until the object (or the cluster's
    /// configuration) changes: the API server refused the request itself
    /// (bad request, forbidden, not found, invalid, too large), or the
    /// object cannot be handled at all. Conflicts (409), throttling (429),
    /// timeouts and server errors are transient.
    pub(crate) fn is_permanent(&self) -> bool {
        match self {
            Error::Kube(kube::Error::Api(s)) => {
                matches!(s.code, 400 | 403 | 404 | 405 | 413 | 415 | 422)
            }
            Error::NoNamespace(_) => true,
            Error::Kube(_) | Error::Finalizer(_) => false,
        }
    }
}

/// How long to wait before retrying an object after its `failures`-th
/// transient failure in a row: 500 ms doubling up to 5 minutes, plus up to
/// a quarter more from `jitter` (any number; spreads objects that failed
/// together). A pure function of the count rather than `backon`'s
/// retry iterators: the controller asks for one delay per failed
/// reconcile and keeps the count per object itself, and a pure delay can
/// be tested without a clock or a random source.
pub(crate) fn backoff(failures: u32, jitter: u64) -> Duration {
    const FIRST: Duration = Duration::from_millis(500);
    const MOST: Duration = Duration::from_secs(300);
    let base = FIRST
        .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
        .min(MOST);
    let spread = u64::try_from(base.as_millis() / 4).unwrap_or(0).max(1);
    base + Duration::from_millis(jitter % spread)
}

/// An object's resourceVersion as the integer etcd-backed servers use;
/// `None` for anything else (never compared).
fn rv_of(meta: &kube::api::ObjectMeta) -> Option<u64> {
    meta.resource_version.as_deref()?.parse().ok()
}

/// The key an object's backoff and status writes are kept under.
pub(crate) fn object_key(kind: &str, obj: &DynamicObject) -> String {
    format!(
        "{kind}/{}/{}",
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    )
}

pub(crate) fn from_finalizer(e: kube::runtime::finalizer::Error<Error>) -> Error {
    use kube::runtime::finalizer::Error as F;
    match e {
        F::ApplyFailed(e) | F::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    }
}

/// A FleetNode apply that keeps only `spec.mode` under `manager`: the
/// manager's labels and annotations go, so the node is free again.
pub(crate) fn release_patch(node: &str, mode: NetworkMode) -> serde_json::Value {
    switchyard_crds::fleet_node::apply_body(node, mode, None, &[], &[])
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

/// Whether a standalone MigrationCanary still holds the nodes it labelled.
pub(crate) fn canary_holds(c: &MigrationCanary) -> bool {
    c.metadata.deletion_timestamp.is_none()
        && matches!(
            c.status.as_ref().map(|s| s.phase).unwrap_or_default(),
            MigrationCanaryPhase::Pending | MigrationCanaryPhase::Running
        )
}

/// Who other than `me` holds this node: a live plan, or a standalone
/// MigrationCanary that labelled it.
pub(crate) fn holder_of(
    node: &FleetNode,
    me: &str,
    plans: &[PlanRef<'_>],
    canaries: &[Arc<MigrationCanary>],
) -> Option<String> {
    if let Some(p) = held_by_other(me, node.labels(), plans) {
        return Some(format!("MigrationPlan {p}"));
    }
    let c = node.labels().get(LABEL_CANARY)?;
    canaries
        .iter()
        .find(|x| x.metadata.name.as_ref() == Some(c) && x.metadata.name.as_deref() != Some(me))
        .filter(|x| canary_holds(x))
        .map(|_| format!("MigrationCanary {c}"))
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
                        .map(|written| self.wrote_node(ns, &node, &written));
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

    /// Remember the resourceVersion a node write returned, until the node
    /// store shows it.
    fn wrote_node(&self, ns: &str, node: &str, written: &FleetNode) {
        if let Some(rv) = rv_of(&written.metadata) {
            self.node_writes
                .lock()
                .expect("node writes lock")
                .insert((ns.to_owned(), node.to_owned()), rv);
        }
    }

    /// Whether the node store of `ns` has not caught up with this
    /// replica's own node writes yet: deciding now would see those nodes
    /// as not yet told and tell them again. Writes it has caught up with
    /// (or whose node is gone) are forgotten.
    pub(crate) fn nodes_behind(&self, ns: &str) -> bool {
        let mut writes = self.node_writes.lock().expect("node writes lock");
        let mut behind = false;
        writes.retain(|(n_ns, name), rv| {
            if n_ns != ns {
                return true;
            }
            let seen = self
                .nodes
                .get(&ObjectRef::new(name).within(ns))
                .and_then(|n| rv_of(&n.metadata));
            let lagging = seen.is_some_and(|seen| seen < *rv);
            behind |= lagging;
            lagging
        });
        behind
    }

    /// Record Events, one events.k8s.io Event each. Not through kube's `Recorder`: it folds every Event with the
    /// same reason into one series and keeps only the first note, so
    /// "stage 0 wave 0" would stand for every later wave too.
    pub(crate) async fn publish(
        &self,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        events: Vec<Event>,
    ) {
        use k8s_openapi::api::events::v1::Event as KubeEvent;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
        let Some(ns) = reference.namespace.clone() else {
            return;
        };
        let api: Api<KubeEvent> = Api::namespaced(self.client.clone(), &ns);
        for Event {
            reason,
            note,
            severity,
        } in events
        {
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
                reason: Some(reason.to_owned()),
                note: Some(note),
                type_: Some(severity.as_str().to_owned()),
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
        if let Some(rv) = rv_of(&written.metadata) {
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
        let key = object_key(kind, obj);
        let seen = rv_of(&obj.metadata);
        match (seen, self.written.lock().expect("written lock").get(&key)) {
            (Some(seen), Some(written)) => seen < *written,
            _ => false,
        }
    }

    /// Run one reconcile of `controller` on `obj` (of `kind`), recording
    /// its duration and outcome. A success ends the object's backoff; a
    /// permanent failure is also a Warning Event on the object, since
    /// nothing retries it until it changes (see [`error_policy`]).
    pub(crate) async fn timed(
        &self,
        controller: &str,
        kind: &str,
        obj: &DynamicObject,
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
        match &result {
            Ok(_) => {
                self.failures
                    .lock()
                    .expect("failures lock")
                    .remove(&object_key(kind, obj));
            }
            Err(e) if e.is_permanent() => {
                let ar = match kind {
                    "MigrationCanary" => resource_of::<MigrationCanary>(),
                    _ => resource_of::<MigrationPlan>(),
                };
                self.publish(
                    &obj.object_ref(&ar),
                    vec![Event::warning(
                        "ReconcileFailed",
                        format!("{e}; not retried until the {kind} changes"),
                    )],
                )
                .await;
            }
            Err(_) => {}
        }
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

/// Which of the node, plan and MigrationCanary stores hold a complete list. Once
/// all three do, `switchyard_operator_stores_synced` is 1: from then on the
/// operator decides from the whole fleet (a benchmark's baseline, a
/// readiness check).
pub(crate) struct Synced {
    stores: [std::sync::atomic::AtomicBool; 3],
    gauge: prometheus::IntGauge,
}

/// The stores [`Synced`] tracks.
#[derive(Clone, Copy)]
pub(crate) enum StoreOf {
    Nodes = 0,
    Plans = 1,
    Canaries = 2,
}

impl Synced {
    pub(crate) fn new(gauge: prometheus::IntGauge) -> Self {
        gauge.set(0);
        Synced {
            stores: Default::default(),
            gauge,
        }
    }

    /// `store` holds its first complete list.
    pub(crate) fn mark(&self, store: StoreOf) {
        self.stores[store as usize].store(true, std::sync::atomic::Ordering::Release);
        if self.all() {
            self.gauge.set(1);
        }
    }

    pub(crate) fn all(&self) -> bool {
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
    value["apiVersion"] = json!(switchyard_crds::API_VERSION);
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
    pub(crate) fn canaries_in(&self, ns: &str) -> Vec<Arc<MigrationCanary>> {
        self.canaries
            .state()
            .iter()
            .filter(|c| c.metadata.namespace.as_deref() == Some(ns))
            .filter_map(|c| decode(c, "MigrationCanary").ok().map(Arc::new))
            .collect()
    }

    /// One MigrationCanary by name, if it exists and reads.
    pub(crate) fn canary(&self, ns: &str, name: &str) -> Option<MigrationCanary> {
        let obj = self
            .canaries
            .get(&ObjectRef::new_with(name, resource_of::<MigrationCanary>()).within(ns))?;
        decode(&obj, "MigrationCanary").ok()
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

/// What to do after a failed reconcile: a permanent error waits for the
/// object to change (the Warning Event says why); a transient one is
/// retried with the object's own exponential backoff.
pub(crate) fn error_policy(
    kind: &'static str,
) -> impl Fn(Arc<DynamicObject>, &Error, Arc<Context>) -> Action {
    move |obj, error, ctx| {
        ctx.metrics.errors.with_label_values(&[&error.kind()]).inc();
        if error.is_permanent() {
            tracing::warn!(%error, object = %object_key(kind, &obj), "reconcile failed; waiting for a change");
            return Action::await_change();
        }
        let failures = {
            let mut all = ctx.failures.lock().expect("failures lock");
            let n = all.entry(object_key(kind, &obj)).or_default();
            *n = n.saturating_add(1);
            *n
        };
        let jitter = u64::from(Timestamp::now().subsec_nanosecond().unsigned_abs());
        let wait = backoff(failures, jitter);
        tracing::warn!(%error, object = %object_key(kind, &obj), failures, ?wait, "reconcile failed; retrying");
        Action::requeue(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_failures_back_off_exponentially_up_to_five_minutes() {
        let ms = |n: u32| backoff(n, 0).as_millis();
        assert_eq!([ms(1), ms(2), ms(3), ms(4)], [500, 1000, 2000, 4000]);
        assert_eq!(ms(10), 256_000);
        assert_eq!(ms(11), 300_000);
        assert_eq!(ms(u32::MAX), 300_000);
        // Jitter adds at most a quarter.
        for j in [1, 99, 124, 125, 12_345] {
            let d = backoff(3, j).as_millis();
            assert!((2000..2500).contains(&d), "{d}");
        }
    }

    #[test]
    fn refusals_are_permanent_and_conflicts_and_outages_are_not() {
        let api = |code: u16| {
            Error::Kube(kube::Error::Api(Box::new(kube::core::Status {
                code,
                ..Default::default()
            })))
        };
        for code in [400, 403, 404, 422] {
            assert!(api(code).is_permanent(), "{code}");
        }
        for code in [409, 429, 500, 503, 504] {
            assert!(!api(code).is_permanent(), "{code}");
        }
        assert!(!Error::Finalizer("x".into()).is_permanent());
    }
}
