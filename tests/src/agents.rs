//! Stand-in node agents for the operator's system tests and the local demo,
//! where what matters is the operator and the timing of acknowledgements,
//! not transports: they watch FleetNodes and acknowledge each new
//! `spec.mode` by patching status (`appliedMode`, `observedGeneration`)
//! after a delay of the caller's choosing, or never (a hung agent, which a
//! real one cannot be made to be on demand). The real node-agent
//! (`switchyard-node-agent`) is tested against the same API server in its
//! own crate and in the operator's real-fleet tests.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use switchyard_crds::{FleetNode, NetworkMode};

/// What a stand-in agent does with a mode change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// Apply the mode and report it after this long.
    After(Duration),
    /// Never report: a hung or partitioned agent.
    Never,
}

/// Acknowledge every mode change in `namespace`, each after `delay(node)`.
/// Runs until the watch ends; spawn it and abort it when done.
pub async fn acknowledge_modes(client: Client, namespace: &str, delay: impl Fn(&str) -> Duration) {
    agents(client, namespace, move |node, _| Ack::After(delay(node))).await;
}

/// Stand-in agents for every FleetNode in `namespace`; `behaviour(node,
/// mode)` says what the node's agent does when told to run `mode`.
pub async fn agents(client: Client, namespace: &str, behaviour: impl Fn(&str, NetworkMode) -> Ack) {
    let nodes: Api<FleetNode> = Api::namespaced(client, namespace);
    let mut events = watcher(nodes.clone(), watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .boxed();
    while let Ok(Some(n)) = events.try_next().await {
        let Some(want) = n.spec.mode else { continue };
        let generation = n.metadata.generation.unwrap_or(0);
        let status = n.status.clone().unwrap_or_default();
        if status.applied_mode == Some(want)
            && status.observed_generation.unwrap_or(0) >= generation
        {
            continue;
        }
        let Ack::After(wait) = behaviour(&n.name_any(), want) else {
            continue;
        };
        let nodes = nodes.clone();
        tokio::spawn(async move {
            // The agent's time to apply the mode.
            tokio::time::sleep(wait).await;
            let patch = serde_json::json!({"status": {"appliedMode": want, "observedGeneration": generation}});
            let _ = nodes
                .patch_status(&n.name_any(), &PatchParams::default(), &Patch::Merge(patch))
                .await;
        });
    }
}
