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
        now,
    });
    decision.status.nodes.excluded = u32::try_from(excluded.len()).unwrap_or(u32::MAX);
    decision.status.excluded_nodes = excluded.into_iter().take(10).collect();
    if decision.resume {
        tracing::info!(plan = %name, "the alerts that paused the plan resolved; resuming");
        set_paused(ctx, ns, &name, false, false).await?;
    } else {
        act(ctx, &plan, ns, &decision).await?;
        gauges(ctx, &name, &plans, &decision);
    }
    ctx.publish(&plan.object_ref(&()), events(&decision.transitions))
        .await;
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
fn gauges(ctx: &Context, name: &str, plans: &[Arc<MigrationPlan>], decision: &Decision) {
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
        if let planner::Transition::RollbackStarted { trigger, .. } = t {
            ctx.metrics
                .rollbacks
                .with_label_values(&[trigger.as_str()])
                .inc();
        }
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
