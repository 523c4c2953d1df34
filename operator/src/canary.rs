//! The MigrationCanary controller. Canaries owned by a MigrationPlan are driven by
//! their plan (it moves the nodes and writes their status); this controller
//! runs standalone Canaries through [`crate::planner::canary`]: status
//! first, then FleetNode writes under the field manager
//! `switchyard-canary`, then Events. Deleting a running MigrationCanary returns its
//! nodes to the modes they had and releases them.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::api::{ApiResource, DynamicObject, ObjectMeta};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use switchyard_crds::fleet_node::apply_body;
use switchyard_crds::{
    ANNOTATION_START_MODE, CANARY_FIELD_MANAGER, FleetNode, LABEL_CANARY, MigrationCanary,
    MigrationCanaryPhase, MigrationCanaryStatus, MigrationPlan, NetworkMode,
};

use crate::context::{Context, Error, holder_of, plan_refs, release_patch, requeue, resource_of};
use crate::planner::Event;
use crate::planner::canary::{
    CanaryInput, CanaryNode, CanaryPatch, plan_canary, release_targets, unreadable,
};
use crate::planner::selection::matches;
use crate::reconcile::Reconciled;

/// Whether a MigrationPlan owns this MigrationCanary.
pub fn owned_by_plan(meta: &ObjectMeta) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "MigrationPlan" && o.controller == Some(true))
}

/// A MigrationCanary whose stored object does not decode: Invalid, naming the field.
async fn unreadable_canary(
    obj: &DynamicObject,
    message: String,
    ctx: &Arc<Context>,
    ns: &str,
) -> Result<Action, Error> {
    let name = obj.name_any();
    let status: Option<MigrationCanaryStatus> = obj
        .data
        .get("status")
        .and_then(|s| serde_json::from_value(s.clone()).ok());
    let decision = unreadable(
        obj.metadata.generation.unwrap_or(0),
        status.as_ref(),
        message,
        Timestamp::now(),
    );
    ctx.write_status::<MigrationCanary, _>(
        ns,
        &name,
        CANARY_FIELD_MANAGER,
        status.as_ref(),
        &decision.status,
    )
    .await?;
    ctx.publish(
        &obj.object_ref(&resource_of::<MigrationCanary>()),
        decision.events.clone(),
    )
    .await;
    Ok(Action::await_change())
}

/// Standalone Canaries, for [`crate::reconcile::reconcile_object`].
pub(crate) struct Canaries;

impl Reconciled for Canaries {
    const KIND: &'static str = "MigrationCanary";
    const CONTROLLER: &'static str = "canary";
    type Typed = MigrationCanary;

    fn resource() -> ApiResource {
        resource_of::<MigrationCanary>()
    }

    /// A plan drives the Canaries it owns.
    fn skip(obj: &DynamicObject) -> bool {
        owned_by_plan(&obj.metadata)
    }

    async fn apply(
        canary: Arc<MigrationCanary>,
        ctx: &Arc<Context>,
        ns: &str,
    ) -> Result<Action, Error> {
        let result = run_canary(canary, ctx, ns).await;
        phase_gauge(ctx);
        result
    }

    async fn unreadable(
        obj: &DynamicObject,
        message: String,
        ctx: &Arc<Context>,
        ns: &str,
    ) -> Result<Action, Error> {
        unreadable_canary(obj, message, ctx, ns).await
    }

    async fn cleanup(obj: &DynamicObject, ctx: &Arc<Context>, ns: &str) -> Result<Action, Error> {
        let result = release_canary(obj, ctx, ns).await;
        phase_gauge(ctx);
        result
    }
}

/// Canaries by phase, recomputed from the store.
fn phase_gauge(ctx: &Context) {
    ctx.metrics.canaries.reset();
    for c in ctx.canaries.state() {
        let phase = c
            .data
            .get("status")
            .and_then(|s| s.get("phase"))
            .and_then(|p| p.as_str())
            .unwrap_or("Pending")
            .to_owned();
        ctx.metrics.canaries.with_label_values(&[&phase]).inc();
    }
}

fn canary_patch(canary: &str, p: &CanaryPatch) -> serde_json::Value {
    if !p.hold {
        return release_patch(&p.node, p.mode);
    }
    apply_body(
        &p.node,
        p.mode,
        p.iroh_share,
        &[(LABEL_CANARY, canary)],
        &[(ANNOTATION_START_MODE, p.start_mode.as_str())],
    )
}

async fn run_canary(
    canary: Arc<MigrationCanary>,
    ctx: &Arc<Context>,
    ns: &str,
) -> Result<Action, Error> {
    let name = canary.name_any();
    let now = Timestamp::now();
    let plans: Vec<Arc<MigrationPlan>> = ctx.plans_in(ns);
    let refs = plan_refs(&plans, now);
    let canaries = ctx.canaries_in(ns);
    let mut nodes = Vec::new();
    let mut others = Vec::new();
    for n in ctx.nodes.state() {
        // A node whose pod has been gone past the grace period is neither
        // picked nor waited for (see `sweep`).
        if n.namespace().as_deref() != Some(ns) || crate::sweep::is_absent(&n) {
            continue;
        }
        let selected = matches(&canary.spec.selector, n.labels());
        let mine = n.labels().get(LABEL_CANARY) == Some(&name);
        if !selected && !mine {
            others.extend([n.desired_mode(), n.applied_mode()].into_iter().flatten());
            continue;
        }
        let start = n.start_mode();
        nodes.push(CanaryNode {
            name: n.name_any(),
            desired: n.desired_mode(),
            applied: n.applied_mode(),
            acknowledged: n.acknowledged(),
            mine,
            start_mode: start.as_ref().ok().copied().flatten(),
            // A plan selecting the node holds it, whatever its label says;
            // so does a start mode of ours nobody can read (see
            // `planner::start_mode`).
            held_by: holder_of(&n, "", &refs, &canaries).or_else(|| start.err().filter(|_| mine)),
            selected,
        });
    }
    let analysis = ctx.analysis.canary_verdict(&canary);
    let decision = plan_canary(&CanaryInput {
        name: &name,
        generation: canary.metadata.generation.unwrap_or(0),
        spec: &canary.spec,
        status: canary.status.as_ref(),
        nodes: &nodes,
        others: &others,
        analysis: analysis.as_ref(),
        tally: ctx.analysis.canary_tally(&canary).as_ref(),
        now,
    });
    ctx.write_status::<MigrationCanary, _>(
        ns,
        &name,
        CANARY_FIELD_MANAGER,
        canary.status.as_ref(),
        &decision.status,
    )
    .await?;
    let writes = decision
        .patches
        .iter()
        .map(|p| (p.node.clone(), canary_patch(&name, p)))
        .collect();
    ctx.write_nodes(ns, CANARY_FIELD_MANAGER, writes).await?;
    ctx.publish(&canary.object_ref(&()), decision.events.clone())
        .await;
    let mut action = requeue(decision.requeue_at, now);
    if decision.status.phase == MigrationCanaryPhase::Pending && decision.requeue_at.is_none() {
        // Waiting on nodes another plan or canary holds: look again now
        // and then, since their release may not touch a node we watch.
        action = Action::requeue(Duration::from_secs(30));
    }
    Ok(action)
}

/// A deleted MigrationCanary returns its nodes to the modes they had and releases
/// them in one write each. A node whose start mode would now be cut off
/// from the fleet (a plan moved the others on meanwhile) keeps the trial
/// mode instead, which talks to both sides.
async fn release_canary(
    canary: &DynamicObject,
    ctx: &Arc<Context>,
    ns: &str,
) -> Result<Action, Error> {
    let name = canary.name_any();
    let all: Vec<Arc<FleetNode>> = ctx
        .nodes
        .state()
        .into_iter()
        .filter(|n| n.namespace().as_deref() == Some(ns))
        .collect();
    let present: Vec<NetworkMode> = all
        .iter()
        .filter(|n| n.labels().get(LABEL_CANARY) != Some(&name))
        .flat_map(|n| [n.desired_mode(), n.applied_mode()])
        .flatten()
        .collect();
    let held: Vec<(String, NetworkMode, Option<NetworkMode>)> = all
        .iter()
        .filter(|n| n.labels().get(LABEL_CANARY) == Some(&name))
        .map(|n| {
            let now = n
                .desired_mode()
                .or(n.applied_mode())
                .unwrap_or(NetworkMode::LibP2pOnly);
            (n.name_any(), now, n.start_mode().ok().flatten())
        })
        .collect();
    let writes: Vec<(String, serde_json::Value)> = release_targets(&held, &present)
        .into_iter()
        .map(|(node, mode)| {
            let body = release_patch(&node, mode);
            (node, body)
        })
        .collect();
    let count = writes.len();
    ctx.write_nodes(ns, CANARY_FIELD_MANAGER, writes).await?;
    if count > 0 {
        ctx.publish(
            &canary.object_ref(&resource_of::<MigrationCanary>()),
            vec![Event::normal(
                "NodesReleased",
                format!("MigrationCanary deleted: {count} FleetNode(s) returned and released"),
            )],
        )
        .await;
    }
    Ok(Action::await_change())
}
