//! The MigrationPlan reconciler: observe the plan's nodes from the stores,
//! ask the pure planner, and carry the decision out. The status goes first
//! (through the status subresource), then the FleetNode writes, the owned
//! MigrationCanary, the gauges and the Events. If this replica dies between the
//! status and the node writes, its successor finds the new status and
//! re-issues the same writes (idempotent), instead of reading the old
//! status beside nodes already moved, which would step them back.

use std::sync::Arc;

use jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;
use switchyard_crds::fleet_node::apply_body;
use switchyard_crds::{
    ANNOTATION_PAUSED_BY, ANNOTATION_START_MODE, ANNOTATION_STEP, API_VERSION, FIELD_MANAGER,
    FleetNode, LABEL_PLAN, MigrationCanary, MigrationPlan, MigrationPlanStatus, NetworkMode,
};

use crate::context::{Context, Error, holder_of, plan_refs, release_patch, requeue, resource_of};
use crate::planner::owned::owned_canary;
use crate::planner::selection::matches;
use crate::planner::{self, Decision, Event, NodePatch, NodeView, PlanInput};
use crate::reconcile::Reconciled;

/// MigrationPlans, for [`crate::reconcile::reconcile_object`].
pub(crate) struct Plans;

impl Reconciled for Plans {
    const KIND: &'static str = "MigrationPlan";
    const CONTROLLER: &'static str = "migrationplan";
    type Typed = MigrationPlan;

    fn resource() -> ApiResource {
        resource_of::<MigrationPlan>()
    }

    async fn apply(
        plan: Arc<MigrationPlan>,
        ctx: &Arc<Context>,
        ns: &str,
    ) -> Result<Action, Error> {
        reconcile_plan(plan, ctx, ns).await
    }

    async fn unreadable(
        obj: &DynamicObject,
        message: String,
        ctx: &Arc<Context>,
        ns: &str,
    ) -> Result<Action, Error> {
        unreadable_plan(obj, message, ctx, ns).await
    }

    async fn cleanup(obj: &DynamicObject, ctx: &Arc<Context>, ns: &str) -> Result<Action, Error> {
        release_plan(obj, ctx, ns).await
    }
}

fn node_patch(plan: &str, p: &NodePatch) -> serde_json::Value {
    apply_body(
        &p.node,
        p.mode,
        None,
        &[(LABEL_PLAN, plan)],
        &[
            (ANNOTATION_START_MODE, p.start_mode.as_str()),
            (ANNOTATION_STEP, &p.step),
        ],
    )
}

/// The plan's nodes as the planner sees them (those its selector picks or
/// that carry its label, each with who else holds it), the rest of the
/// fleet (every other FleetNode of the namespace), and the names of the
/// plan's nodes left out because their pod is gone.
fn observe(
    plan: &MigrationPlan,
    plans: &[Arc<MigrationPlan>],
    ctx: &Context,
    ns: &str,
    now: Timestamp,
) -> (Vec<NodeView>, Vec<NodeView>, Vec<String>) {
    let name = plan.name_any();
    let refs = plan_refs(plans, now);
    let canaries = ctx.canaries_in(ns);
    let (mut mine, mut outside, mut excluded) = (Vec::new(), Vec::new(), Vec::new());
    for n in ctx.nodes.state() {
        if n.namespace().as_deref() != Some(ns) {
            continue;
        }
        if matches(&plan.spec.selector, n.labels()) || n.labels().get(LABEL_PLAN) == Some(&name) {
            if crate::sweep::is_absent(&n) {
                excluded.push(n.name_any());
                continue;
            }
            mine.push(NodeView::from_fleet_node(
                &n,
                holder_of(&n, &name, &refs, &canaries),
            ));
        } else {
            outside.push(NodeView::from_fleet_node(&n, None));
        }
    }
    excluded.sort();
    (mine, outside, excluded)
}

async fn reconcile_plan(
    plan: Arc<MigrationPlan>,
    ctx: &Arc<Context>,
    ns: &str,
) -> Result<Action, Error> {
    let name = plan.name_any();
    let now = Timestamp::now();
    let plans = ctx.plans_in(ns);
    let (views, outside, excluded) = observe(&plan, &plans, ctx, ns, now);
    let analysis = ctx.analysis.verdict(&plan);
    let trigger = ctx.analysis.trigger(&plan);
    let tally = ctx.analysis.plan_tally(&plan);
    let mut decision = planner::plan(&PlanInput {
        name: &name,
        generation: plan.metadata.generation.unwrap_or(0),
        spec: &plan.spec,
        status: plan.status.as_ref(),
        nodes: &views,
        outside: &outside,
        analysis: analysis.as_ref(),
        trigger: trigger.as_ref(),
        tally: tally.as_ref(),
        paused_by_alert: plan
            .annotations()
            .get(ANNOTATION_PAUSED_BY)
            .map(String::as_str)
            == Some("alert"),
        write_qps: Some(ctx.settings.write_qps),
        now,
    });
    decision.status.nodes.excluded = u32::try_from(excluded.len()).unwrap_or(u32::MAX);
    decision.status.excluded_nodes = excluded.into_iter().take(10).collect();
    if decision.resume {
        tracing::info!(plan = %name, "the alerts that paused the plan resolved; resuming");
        set_paused(ctx, ns, &name, false, false).await?;
    } else {
        act(ctx, &plan, ns, &decision).await?;
        gauges(ctx, &name, &plans, &plan.spec, &decision, now);
    }
    let events = events(&decision.transitions);
    if let Some(notifier) = &ctx.notifier {
        for e in events
            .iter()
            .filter(|e| crate::notify::REASONS.contains(&e.reason))
        {
            notifier.send(crate::notify::Notification {
                namespace: ns.to_owned(),
                plan: name.clone(),
                reason: e.reason,
                message: e.note.clone(),
                warning: e.severity == planner::Severity::Warning,
                time: now.to_string(),
            });
        }
    }
    ctx.publish(&plan.object_ref(&()), events).await;
    Ok(requeue(decision.requeue_at, now))
}

/// Set or clear spec.paused, and the paused-by-alert mark with it.
async fn set_paused(
    ctx: &Context,
    ns: &str,
    name: &str,
    paused: bool,
    by_alert: bool,
) -> Result<(), Error> {
    let mark = by_alert.then_some("alert");
    let plans: Api<MigrationPlan> = Api::namespaced(ctx.client.clone(), ns);
    plans
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"annotations": {ANNOTATION_PAUSED_BY: mark}},
                "spec": {"paused": paused},
            })),
        )
        .await?;
    Ok(())
}

/// Carry a decision out: pause, status, node writes, owned MigrationCanary.
async fn act(
    ctx: &Context,
    plan: &MigrationPlan,
    ns: &str,
    decision: &Decision,
) -> Result<(), Error> {
    let name = plan.name_any();
    if let Some(pause) = &decision.pause {
        set_paused(ctx, ns, &name, true, pause.by_alert).await?;
    }
    ctx.write_status::<MigrationPlan, _>(
        ns,
        &name,
        FIELD_MANAGER,
        plan.status.as_ref(),
        &decision.status,
    )
    .await?;
    let writes = decision
        .patches
        .iter()
        .map(|p| (p.node.clone(), node_patch(&name, p)))
        .collect();
    ctx.write_nodes(ns, FIELD_MANAGER, writes).await?;
    if let Some(action) = &decision.canary
        && let Some(owned) = owned_canary(&name, &plan.spec, &decision.status, action, |c| {
            ctx.canary(ns, c)
        })
    {
        write_owned_canary(ctx, plan, ns, owned).await?;
    }
    Ok(())
}

/// Apply the owned MigrationCanary's spec and status where they changed. It is
/// owned by the plan: garbage collection removes it with the plan, and the
/// MigrationCanary controller leaves it alone.
async fn write_owned_canary(
    ctx: &Context,
    plan: &MigrationPlan,
    ns: &str,
    owned: planner::owned::OwnedCanary,
) -> Result<(), Error> {
    let api: Api<MigrationCanary> = Api::namespaced(ctx.client.clone(), ns);
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let plan_name = plan.name_any();
    if let Some(spec) = &owned.spec {
        let owner = plan.controller_owner_ref(&()).ok_or_else(|| {
            Error::NoNamespace(format!("MigrationPlan {plan_name} has no uid yet"))
        })?;
        let body = json!({
            "apiVersion": API_VERSION,
            "kind": "MigrationCanary",
            "metadata": {
                "name": owned.name,
                "labels": {LABEL_PLAN: plan_name},
                "ownerReferences": [owner],
            },
            "spec": spec,
        });
        api.patch(&owned.name, &pp, &Patch::Apply(&body)).await?;
    }
    if let Some(status) = &owned.status {
        let body = json!({
            "apiVersion": API_VERSION,
            "kind": "MigrationCanary",
            "metadata": {"name": owned.name},
            "status": status,
        });
        api.patch_status(&owned.name, &pp, &Patch::Apply(&body))
            .await?;
    }
    Ok(())
}

/// Plans by phase (recomputed from the store), this plan's nodes by mode,
/// and the rollbacks it started.
fn gauges(
    ctx: &Context,
    name: &str,
    plans: &[Arc<MigrationPlan>],
    spec: &switchyard_crds::MigrationPlanSpec,
    decision: &Decision,
    now: jiff::Timestamp,
) {
    ctx.metrics.plans.reset();
    for p in plans {
        let phase = if p.metadata.name.as_deref() == Some(name) {
            decision.status.phase
        } else {
            p.status.as_ref().map(|s| s.phase).unwrap_or_default()
        };
        ctx.metrics
            .plans
            .with_label_values(&[&format!("{phase:?}")])
            .inc();
    }
    for mode in NetworkMode::ALL {
        let applied = decision.status.nodes.by_mode.get(mode);
        ctx.metrics
            .nodes
            .with_label_values(&[name, mode.as_str()])
            .set(i64::from(applied));
        ctx.metrics
            .nodes_desired
            .with_label_values(&[name, mode.as_str()])
            .set(i64::from(decision.desired.get(mode)));
    }
    for t in &decision.transitions {
        match t {
            planner::Transition::RollbackStarted { trigger, .. } => ctx
                .metrics
                .rollbacks
                .with_label_values(&[trigger.as_str()])
                .inc(),
            planner::Transition::RollbackFinished { nodes } => ctx
                .metrics
                .progress
                .rolled_back
                .with_label_values(&[name])
                .inc_by(u64::from(*nodes)),
            _ => {}
        }
    }
    let p = progress_numbers(spec, &decision.status, now);
    let m = &ctx.metrics.progress;
    m.ratio.with_label_values(&[name]).set(p.ratio);
    m.eta_seconds.with_label_values(&[name]).set(p.eta_seconds);
    m.velocity.with_label_values(&[name]).set(p.velocity);
    m.migrated.with_label_values(&[name]).set(p.migrated);
}

/// A plan's progress metrics, from its status at `now`.
#[derive(Debug, PartialEq)]
struct ProgressNumbers {
    ratio: f64,
    eta_seconds: f64,
    velocity: f64,
    migrated: i64,
}

fn progress_numbers(
    spec: &switchyard_crds::MigrationPlanSpec,
    s: &switchyard_crds::MigrationPlanStatus,
    now: jiff::Timestamp,
) -> ProgressNumbers {
    let ratio = f64::from(s.progress_percent) / 100.0;
    let eta_seconds = s
        .estimated_completion
        .as_ref()
        .filter(|_| !s.phase.is_terminal())
        .map_or(0.0, |t| t.0.duration_since(now).as_secs_f64().max(0.0));
    #[allow(clippy::cast_precision_loss)]
    let node_steps = f64::from(s.nodes.total) * spec.stages.len() as f64 * ratio;
    let hours = s
        .start_time
        .as_ref()
        .map_or(0.0, |t| now.duration_since(t.0).as_secs_f64() / 3600.0);
    let velocity = if hours > 0.0 { node_steps / hours } else { 0.0 };
    let migrated = spec
        .stages
        .last()
        .map_or(0, |m| i64::from(s.nodes.by_mode.get(*m)));
    ProgressNumbers {
        ratio,
        eta_seconds,
        velocity,
        migrated,
    }
}

/// The Events of a decision's transitions.
fn events(transitions: &[planner::Transition]) -> Vec<Event> {
    transitions.iter().map(planner::Transition::event).collect()
}

/// A deleted plan lets go of its FleetNodes: each keeps its current mode
/// (see [`planner::release_targets`]) and loses the plan label and
/// annotations.
async fn release_plan(plan: &DynamicObject, ctx: &Arc<Context>, ns: &str) -> Result<Action, Error> {
    let name = plan.name_any();
    let views: Vec<NodeView> = ctx
        .nodes
        .state()
        .iter()
        .filter(|n| n.namespace().as_deref() == Some(ns))
        .map(|n: &Arc<FleetNode>| NodeView::from_fleet_node(n, None))
        .collect();
    let writes: Vec<(String, serde_json::Value)> = planner::release_targets(&name, &views)
        .into_iter()
        .map(|(node, mode)| {
            let body = release_patch(&node, mode);
            (node, body)
        })
        .collect();
    let count = writes.len();
    ctx.write_nodes(ns, FIELD_MANAGER, writes).await?;
    ctx.metrics.progress.remove(&name);
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
        vec![Event::normal(
            "NodesReleased",
            format!("plan deleted: {count} FleetNode(s) released at their current modes"),
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
    let status: Option<MigrationPlanStatus> = obj
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
        events(&decision.transitions),
    )
    .await;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_numbers_come_from_status_and_now() {
        let spec: switchyard_crds::MigrationPlanSpec = serde_json::from_value(json!({
            "selector": {},
            "stages": ["DualPreferLibP2p", "IrohOnly"],
        }))
        .expect("spec");
        let now: jiff::Timestamp = "2026-12-01T06:00:00Z".parse().expect("now");
        let status: switchyard_crds::MigrationPlanStatus = serde_json::from_value(json!({
            "phase": "Progressing",
            "progressPercent": 50,
            "startTime": "2026-12-01T05:00:00Z",
            "estimatedCompletion": "2026-12-01T06:10:00Z",
            "nodes": {"total": 40, "acknowledged": 40, "switching": 0, "blocked": 0,
                      "byMode": {"IrohOnly": 15, "DualPreferLibP2p": 25}},
        }))
        .expect("status");
        assert_eq!(
            progress_numbers(&spec, &status, now),
            ProgressNumbers {
                ratio: 0.5,
                eta_seconds: 600.0,
                velocity: 40.0,
                migrated: 15,
            }
        );
        let done = switchyard_crds::MigrationPlanStatus {
            phase: switchyard_crds::PlanPhase::Succeeded,
            ..status
        };
        assert_eq!(progress_numbers(&spec, &done, now).eta_seconds, 0.0);
    }
}
