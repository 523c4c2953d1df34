//! The MigrationPlan and Canary controllers. They share one FleetNode
//! reflector store. Each reconcile reads the object and the FleetNodes from
//! the stores, asks the pure planner what to do, and carries it out: the
//! status through the status subresource first, then server-side apply of
//! FleetNode modes (bounded concurrency, rate-limited), an Event per
//! transition, and a requeue at the planner's due time. A finalizer on each
//! plan and standalone Canary releases its FleetNodes when it is deleted.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
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

pub use crate::context::{
    Analysis, Context, Error, Fence, LeaseFence, NoAnalysis, NoFence, Settings,
};
use crate::context::{
    StoreOf, Stores, Synced, decode, error_policy, from_finalizer, holder_of, plan_refs,
    release_patch, requeue, resource_of,
};
use crate::metrics::Metrics;
use crate::planner::selection::matches;
use crate::planner::{self, NodePatch, NodeView, PlanInput};
use crate::ratelimit::RateLimiter;

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
pub async fn reconcile(plan: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.timed(
        "migrationplan",
        "MigrationPlan",
        &plan.clone(),
        reconcile_with_finalizer(plan, &ctx),
    )
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
        tally: ctx.analysis.plan_tally(&plan).as_ref(),
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
                analysis_tally: None,
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
        failures: std::sync::Mutex::new(std::collections::HashMap::new()),
    });
    let analysis_run = ctx.analysis.start(Stores {
        nodes: ctx.nodes.clone(),
        plans: ctx.plans.clone(),
        canaries: ctx.canaries.clone(),
        ready: ctx.ready.clone(),
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
        .run(reconcile, error_policy("MigrationPlan"), ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "plan controller event");
            }
        });
    let canaries_for_map = canary_reader;
    let ar = canary_ar;
    let canary_updated = match ctx.analysis.canary_updates() {
        Some(updates) => {
            let ar = ar.clone();
            updates
                .map(move |(ns, name)| ObjectRef::new_with(&name, ar.clone()).within(&ns))
                .boxed()
        }
        None => futures::stream::pending().boxed(),
    };
    let canary_controller = canary_controller
        .reconcile_on(canary_updated)
        .watches_shared_stream(node_for_canaries, move |node: Arc<FleetNode>| {
            interested(&canaries_for_map, &ar, &node, LABEL_CANARY)
        })
        .shutdown_on_signal()
        .run(crate::canary::reconcile, error_policy("Canary"), ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "canary controller event");
            }
        });
    // The controllers end on a signal; the watches end with them.
    let analysis_run = analysis_run.unwrap_or_else(|| Box::pin(futures::future::pending::<()>()));
    tokio::select! {
        _ = futures::future::join(plan_controller, canary_controller) => {}
        _ = node_watch => {}
        _ = analysis_run => {}
    }
}
