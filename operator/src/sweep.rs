//! Nodes whose pod is gone. A FleetNode an agent registered from a pod
//! (annotation `switchyard.dev/pod`) and whose pod has been missing longer
//! than the grace period is marked `switchyard.dev/absent-since`; plans
//! then neither select nor wait for it, and count it in their status. The
//! mark goes when the pod is back (a StatefulSet's pod returns under its
//! name). Pods no StatefulSet brings back need none of this: their
//! FleetNodes are owned by the pod and collected with it.
//!
//! Only nodes that can hold a plan up are looked at: those that have not
//! acknowledged their desired mode, and those already marked. That keeps
//! the pod reads to the few nodes a plan is waiting for.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use switchyard_crds::{ANNOTATION_ABSENT_SINCE, ANNOTATION_POD, FleetNode};

use crate::context::Context;

/// What to do about one node's mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Nothing.
    Keep,
    /// Mark it absent since this time.
    Absent(Timestamp),
    /// Its pod is back: remove the mark.
    Clear,
}

/// The decision for one node: when its pod was first seen missing (kept
/// by the caller between sweeps) and what to do about its mark.
pub fn decide(
    first_missing: Option<Timestamp>,
    pod_exists: bool,
    marked: bool,
    now: Timestamp,
    grace: Duration,
) -> (Option<Timestamp>, Mark) {
    if pod_exists {
        return (None, if marked { Mark::Clear } else { Mark::Keep });
    }
    let since = first_missing.unwrap_or(now);
    let gone_for = now.duration_since(since);
    let over =
        gone_for >= jiff::SignedDuration::try_from(grace).unwrap_or(jiff::SignedDuration::MAX);
    match (marked, over) {
        (false, true) => (Some(since), Mark::Absent(since)),
        _ => (Some(since), Mark::Keep),
    }
}

/// Whether a FleetNode carries the absent mark.
pub fn is_absent(node: &FleetNode) -> bool {
    node.annotations().contains_key(ANNOTATION_ABSENT_SINCE)
}

/// At most this many pod reads per sweep.
const MAX_READS: usize = 200;

/// Sweep every `every` until the process ends (the leader's loop).
pub async fn run(ctx: Arc<Context>, every: Duration) {
    let mut missing: HashMap<(String, String), Timestamp> = HashMap::new();
    loop {
        tokio::time::sleep(every).await;
        sweep(&ctx, &mut missing).await;
    }
}

async fn sweep(ctx: &Context, missing: &mut HashMap<(String, String), Timestamp>) {
    let candidates: Vec<Arc<FleetNode>> = ctx
        .nodes
        .state()
        .into_iter()
        .filter(|n| n.annotations().contains_key(ANNOTATION_POD))
        .filter(|n| is_absent(n) || !n.acknowledged())
        .take(MAX_READS)
        .collect();
    let mut seen = Vec::with_capacity(candidates.len());
    for node in candidates {
        let ns = node.namespace().unwrap_or_default();
        let name = node.name_any();
        let pod = node.annotations()[ANNOTATION_POD].clone();
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        let exists = match pods.get_opt(&pod).await {
            Ok(p) => p.is_some(),
            Err(e) => {
                tracing::warn!(node = %name, %pod, error = %e, "reading the node's pod");
                continue;
            }
        };
        let key = (ns.clone(), name.clone());
        let (first, mark) = decide(
            missing.get(&key).copied(),
            exists,
            is_absent(&node),
            Timestamp::now(),
            ctx.settings.absence_grace,
        );
        match first {
            Some(t) => {
                missing.insert(key.clone(), t);
            }
            None => {
                missing.remove(&key);
            }
        }
        seen.push(key);
        let value = match mark {
            Mark::Keep => continue,
            Mark::Absent(since) => json!(since.to_string()),
            Mark::Clear => serde_json::Value::Null,
        };
        if !ctx.fence.still_leader().await {
            return;
        }
        let api: Api<FleetNode> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({"metadata": {"annotations": {ANNOTATION_ABSENT_SINCE: value}}});
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => tracing::info!(node = %name, %pod, ?mark, "node's pod absence mark"),
            Err(e) => tracing::warn!(node = %name, error = %e, "marking the node's pod absence"),
        }
    }
    // Forget nodes no longer looked at (acknowledged, or deleted).
    missing.retain(|k, _| seen.contains(k));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_marked_only_after_its_pod_is_gone_longer_than_the_grace_and_cleared_when_it_is_back()
     {
        let t0: Timestamp = "2026-12-01T00:00:00Z".parse().expect("time");
        let at = |s: i64| t0 + jiff::SignedDuration::from_secs(s);
        let grace = Duration::from_secs(60);
        // First seen missing: remembered, not marked.
        assert_eq!(
            decide(None, false, false, t0, grace),
            (Some(t0), Mark::Keep)
        );
        assert_eq!(
            decide(Some(t0), false, false, at(59), grace),
            (Some(t0), Mark::Keep)
        );
        assert_eq!(
            decide(Some(t0), false, false, at(60), grace),
            (Some(t0), Mark::Absent(t0))
        );
        // Already marked: nothing more to write.
        assert_eq!(
            decide(Some(t0), false, true, at(600), grace),
            (Some(t0), Mark::Keep)
        );
        // Back before the grace ran out: forgotten; back after: cleared.
        assert_eq!(
            decide(Some(t0), true, false, at(30), grace),
            (None, Mark::Keep)
        );
        assert_eq!(
            decide(Some(t0), true, true, at(900), grace),
            (None, Mark::Clear)
        );
        // A new leader with an old mark and no memory keeps the mark.
        assert_eq!(
            decide(None, false, true, at(5), grace),
            (Some(at(5)), Mark::Keep)
        );
    }
}
