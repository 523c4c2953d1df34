//! The Canary controller. Canaries owned by a MigrationPlan are driven by
//! their plan (it moves the nodes and writes their status); this controller
//! runs standalone Canaries through [`crate::planner::canary`]: status
//! first, then FleetNode writes under the field manager
//! `switchyard-canary`, then Events. Deleting a running Canary returns its
//! nodes to the modes they had and releases them.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::api::{Api, DynamicObject, ObjectMeta};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalize, finalizer};
use kube::{Resource, ResourceExt};
use serde_json::json;
use switchyard_crds::{
    ANNOTATION_START_MODE, CANARY_FIELD_MANAGER, Canary, CanaryPhase, CanaryStatus, FINALIZER,
    FleetNode, LABEL_CANARY, MigrationPlan, NetworkMode, forms_island,
};

use crate::context::{
    Context, Error, decode, from_finalizer, holder_of, plan_refs, release_patch, requeue,
    resource_of,
};
use crate::planner::canary::{CanaryInput, CanaryNode, CanaryPatch, plan_canary, unreadable};
use crate::planner::selection::matches;

/// Whether a MigrationPlan owns this Canary.
pub fn owned_by_plan(meta: &ObjectMeta) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "MigrationPlan" && o.controller == Some(true))
}

/// A Canary whose stored object does not decode: Invalid, naming the field.
async fn unreadable_canary(
    obj: &DynamicObject,
    message: String,
    ctx: &Arc<Context>,
    ns: &str,
) -> Result<Action, Error> {
    let name = obj.name_any();
    let status: Option<CanaryStatus> = obj
        .data
        .get("status")
        .and_then(|s| serde_json::from_value(s.clone()).ok());
    let decision = unreadable(
        obj.metadata.generation.unwrap_or(0),
        status.as_ref(),
        message,
        Timestamp::now(),
    );
    ctx.write_status::<Canary, _>(
        ns,
        &name,
        CANARY_FIELD_MANAGER,
        status.as_ref(),
        &decision.status,
    )
    .await?;
    ctx.publish(
        &obj.object_ref(&resource_of::<Canary>()),
        decision
            .events
            .iter()
            .map(|(r, m, w)| ((*r).to_owned(), m.clone(), *w))
            .collect(),
    )
    .await;
    Ok(Action::await_change())
}

/// Reconcile one Canary.
pub async fn reconcile(canary: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Action, Error> {
    let result = ctx
        .timed(
            "canary",
            "Canary",
            &canary.clone(),
            reconcile_canary(canary, &ctx),
        )
        .await;
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
    result
}

async fn reconcile_canary(canary: Arc<DynamicObject>, ctx: &Arc<Context>) -> Result<Action, Error> {
    tracing::debug!(canary = %canary.name_any(), "reconcile");
    if owned_by_plan(&canary.metadata) {
        return Ok(Action::await_change());
    }
    if !ctx.synced() {
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    // Deciding on a status older than our own last write would undo it:
    // a canary that has returned its nodes, seen still Running by a
    // reconcile its own node writes woke, would try its mode again on
    // them. Wait for the store to catch up.
    if ctx.stale("Canary", &canary) {
        return Ok(Action::requeue(Duration::from_millis(100)));
    }
    let name = canary.name_any();
    let ns = canary
        .namespace()
        .ok_or_else(|| Error::NoNamespace(format!("Canary {name}")))?;
    if !ctx.fence.still_leader().await {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &ns, &resource_of::<Canary>());
    finalizer(&api, FINALIZER, canary, |event| async {
        match event {
            Finalize::Apply(c) => match decode::<Canary>(&c, "Canary") {
                Ok(typed) => run_canary(Arc::new(typed), ctx, &ns).await,
                Err(message) => unreadable_canary(&c, message, ctx, &ns).await,
            },
            Finalize::Cleanup(c) => release_canary(&c, ctx, &ns).await,
        }
    })
    .await
    .map_err(from_finalizer)
}

fn canary_patch(canary: &str, p: &CanaryPatch) -> serde_json::Value {
    if !p.hold {
        return release_patch(&p.node, p.mode);
    }
    let mut spec = json!({"mode": p.mode.as_str()});
    if let Some(share) = p.iroh_share {
        spec["irohShare"] = json!(share);
    }
    json!({
        "apiVersion": "switchyard.dev/v1alpha1",
        "kind": "FleetNode",
        "metadata": {
            "name": p.node,
            "labels": {LABEL_CANARY: canary},
            "annotations": {ANNOTATION_START_MODE: p.start_mode.as_str()},
        },
        "spec": spec,
    })
}

async fn run_canary(canary: Arc<Canary>, ctx: &Arc<Context>, ns: &str) -> Result<Action, Error> {
    let name = canary.name_any();
    let now = Timestamp::now();
    let plans: Vec<Arc<MigrationPlan>> = ctx.plans_in(ns);
    let refs = plan_refs(&plans, now);
    let canaries = ctx.canaries_in(ns);
    let mut nodes = Vec::new();
    let mut others = Vec::new();
    for n in ctx.nodes.state() {
        if n.namespace().as_deref() != Some(ns) {
            continue;
        }
        let selected = matches(&canary.spec.selector, n.labels());
        let mine = n.labels().get(LABEL_CANARY) == Some(&name);
        if !selected && !mine {
            others.extend([n.desired_mode(), n.applied_mode()].into_iter().flatten());
            continue;
        }
        let start = crate::planner::start_mode(n.metadata.annotations.as_ref());
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
    ctx.write_status::<Canary, _>(
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
    ctx.publish(
        &canary.object_ref(&()),
        decision
            .events
            .iter()
            .map(|(r, m, w)| ((*r).to_owned(), m.clone(), *w))
            .collect(),
    )
    .await;
    let mut action = requeue(decision.requeue_at, now);
    if decision.status.phase == CanaryPhase::Pending && decision.requeue_at.is_none() {
        // Waiting on nodes another plan or canary holds: look again now
        // and then, since their release may not touch a node we watch.
        action = Action::requeue(Duration::from_secs(30));
    }
    Ok(action)
}

/// A deleted Canary returns its nodes to the modes they had and releases
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
    let writes: Vec<(String, serde_json::Value)> = all
        .iter()
        .filter(|n| n.labels().get(LABEL_CANARY) == Some(&name))
        .map(|n| {
            let now = n
                .desired_mode()
                .or(n.applied_mode())
                .unwrap_or(NetworkMode::LibP2pOnly);
            let start = n
                .annotations()
                .get(ANNOTATION_START_MODE)
                .and_then(|m| m.parse().ok())
                .unwrap_or(now);
            let back = if forms_island(present.iter().copied().chain([start])) {
                now
            } else {
                start
            };
            (n.name_any(), release_patch(&n.name_any(), back))
        })
        .collect();
    let count = writes.len();
    ctx.write_nodes(ns, CANARY_FIELD_MANAGER, writes).await?;
    if count > 0 {
        ctx.publish(
            &canary.object_ref(&resource_of::<Canary>()),
            vec![(
                "NodesReleased".to_owned(),
                format!("Canary deleted: {count} FleetNode(s) returned and released"),
                false,
            )],
        )
        .await;
    }
    Ok(Action::await_change())
}
