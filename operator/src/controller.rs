//! The MigrationPlan controller: each reconcile reads the plan and the
//! FleetNodes from the shared reflector stores, asks the pure planner what
//! to do, and carries it out: server-side apply of FleetNode modes (field
//! manager `switchyard-operator`, bounded concurrency), the status through
//! the status subresource, an Event per transition, and a requeue at the
//! planner's due time.

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt, stream};
use jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use switchyard_crds::{
    ANNOTATION_START_MODE, ANNOTATION_STEP, FIELD_MANAGER, FleetNode, LABEL_PLAN, MigrationPlan,
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

/// Shared state of the controller.
pub struct Context {
    client: Client,
    nodes: Store<FleetNode>,
    plans: Store<MigrationPlan>,
    recorder: Recorder,
    analysis: Arc<dyn Analysis>,
    settings: Settings,
    limiter: RateLimiter,
    metrics: Metrics,
    fence: Arc<dyn Fence>,
}

/// A reconcile failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The plan has no namespace.
    #[error("MigrationPlan {0} has no namespace")]
    NoNamespace(String),
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

/// Reconcile one MigrationPlan.
pub async fn reconcile(plan: Arc<MigrationPlan>, ctx: Arc<Context>) -> Result<Action, Error> {
    let timer = ctx
        .metrics
        .reconcile_seconds
        .with_label_values(&["migrationplan"])
        .start_timer();
    let result = reconcile_plan(plan, &ctx).await;
    timer.observe_duration();
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics.reconciles.with_label_values(&[outcome]).inc();
    result
}

async fn reconcile_plan(plan: Arc<MigrationPlan>, ctx: &Arc<Context>) -> Result<Action, Error> {
    let name = plan.name_any();
    // Decide only on a complete view: a node store still filling would
    // hide nodes from the barrier and the island guard.
    if ctx.nodes.wait_until_ready().await.is_err() || ctx.plans.wait_until_ready().await.is_err() {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let ns = plan
        .namespace()
        .ok_or_else(|| Error::NoNamespace(name.clone()))?;
    let now = Timestamp::now();
    let all_plans: Vec<Arc<MigrationPlan>> = ctx
        .plans
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(&ns))
        .collect();
    let refs: Vec<PlanRef<'_>> = all_plans
        .iter()
        .map(|p| PlanRef {
            name: p.metadata.name.as_deref().unwrap_or(""),
            created: p.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0),
            phase: p.status.as_ref().map(|s| s.phase).unwrap_or_default(),
            selector: &p.spec.selector,
        })
        .collect();
    let views: Vec<NodeView> = ctx
        .nodes
        .state()
        .iter()
        .filter(|n| n.namespace().as_deref() == Some(&ns))
        .filter(|n| {
            matches(&plan.spec.selector, n.labels()) || n.labels().get(LABEL_PLAN) == Some(&name)
        })
        .map(|n| NodeView::from_fleet_node(n, held_by_other(&name, n.labels(), &refs)))
        .collect();
    let analysis = ctx.analysis.verdict(&plan);
    let trigger = ctx.analysis.trigger(&plan);
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

    if !ctx.fence.still_leader().await {
        tracing::warn!(plan = %name, "not the leader any more: writing nothing");
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    // Record the decision first, then act on it: if this replica dies
    // between the two, its successor finds the new status and re-issues
    // the same node writes (idempotent), instead of reading the old status
    // beside nodes already moved, which would step them back.
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let plans: Api<MigrationPlan> = Api::namespaced(ctx.client.clone(), &ns);
    if decision.pause.is_some() {
        plans
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"paused": true}})),
            )
            .await?;
    }
    let status = json!({"apiVersion": "switchyard.dev/v1alpha1", "kind": "MigrationPlan", "metadata": {"name": name}, "status": decision.status});
    plans
        .patch_status(&name, &pp, &Patch::Apply(&status))
        .await?;
    let nodes: Api<FleetNode> = Api::namespaced(ctx.client.clone(), &ns);
    let writes: Vec<(String, serde_json::Value)> = decision
        .patches
        .iter()
        .map(|p| (p.node.clone(), node_patch(&name, p)))
        .collect();
    stream::iter(writes)
        .map(|(node, body)| {
            let nodes = nodes.clone();
            let pp = pp.clone();
            let ctx = ctx.clone();
            async move {
                ctx.limiter.acquire().await;
                let r = nodes
                    .patch(&node, &pp, &Patch::Apply(&body))
                    .await
                    .map(|_| ());
                let outcome = if r.is_ok() { "ok" } else { "error" };
                ctx.metrics.node_writes.with_label_values(&[outcome]).inc();
                r
            }
        })
        .buffer_unordered(ctx.settings.write_concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;

    // Plans by phase (recomputed from the store), this plan's nodes by mode.
    ctx.metrics.plans.reset();
    for p in ctx.plans.state() {
        let phase = p.status.as_ref().map(|s| s.phase).unwrap_or_default();
        ctx.metrics
            .plans
            .with_label_values(&[&format!("{phase:?}")])
            .inc();
    }
    for mode in switchyard_crds::NetworkMode::ALL {
        let count = i64::from(decision.status.nodes.by_mode.get(mode));
        ctx.metrics
            .nodes
            .with_label_values(&[&name, mode.as_str()])
            .set(count);
    }
    for t in &decision.transitions {
        if let planner::Transition::RollbackStarted { trigger, .. } = t {
            ctx.metrics.rollbacks.with_label_values(&[trigger]).inc();
        }
    }
    let reference = plan.object_ref(&());
    for t in &decision.transitions {
        let event = Event {
            type_: if t.is_warning() {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: t.reason().into(),
            note: Some(t.message()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(plan = %name, error = %e, "could not record event");
        }
    }
    Ok(match decision.requeue_at {
        Some(at) => Action::requeue(
            Duration::try_from(at.duration_since(now))
                .unwrap_or_default()
                .max(Duration::from_millis(50)),
        ),
        None => Action::await_change(),
    })
}

fn error_policy(_plan: Arc<MigrationPlan>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "reconcile failed");
    let kind = match error {
        Error::Kube(kube::Error::Api(s)) => s.reason.clone(),
        Error::Kube(_) => "Transport".to_owned(),
        Error::NoNamespace(_) => "NoNamespace".to_owned(),
    };
    ctx.metrics.errors.with_label_values(&[&kind]).inc();
    // Transient API errors: back off a little, with jitter from the clock.
    let jitter = u64::from(Timestamp::now().subsec_nanosecond().unsigned_abs() % 500);
    Action::requeue(Duration::from_millis(500 + jitter))
}

/// Run the MigrationPlan controller until the stream ends.
pub async fn run(
    client: Client,
    namespace: Option<String>,
    analysis: Arc<dyn Analysis>,
    settings: Settings,
    metrics: Metrics,
    fence: Arc<dyn Fence>,
) {
    let (plans_api, nodes_api): (Api<MigrationPlan>, Api<FleetNode>) = match &namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let (node_reader, node_writer) = reflector::store();
    let node_stream =
        reflector::reflector(node_writer, watcher(nodes_api, watcher::Config::default()))
            .default_backoff()
            .touched_objects();
    let controller = Controller::new(plans_api, watcher::Config::default());
    let plans = controller.store();
    let plans_for_map = plans.clone();
    let ctx = Arc::new(Context {
        client: client.clone(),
        nodes: node_reader,
        plans,
        recorder: Recorder::new(
            client,
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: None,
            },
        ),
        analysis,
        limiter: RateLimiter::new(settings.write_qps, settings.write_burst),
        settings,
        metrics,
        fence,
    });
    controller
        .watches_stream(node_stream, move |node: FleetNode| {
            // A node change concerns every plan in its namespace that selects
            // or owns it.
            let ns = node.namespace();
            plans_for_map
                .state()
                .into_iter()
                .filter(|p| p.namespace() == ns)
                .filter(|p| {
                    matches(&p.spec.selector, node.labels())
                        || node.labels().get(LABEL_PLAN) == p.metadata.name.as_ref()
                })
                .map(|p| ObjectRef::from_obj(&*p))
                .collect::<Vec<_>>()
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
}
