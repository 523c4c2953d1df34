//! Stand-in node agents for system tests and the local demo, until the real
//! node-agent exists: they watch FleetNodes and acknowledge each new
//! `spec.mode` by patching status (`appliedMode`, `observedGeneration`)
//! after a delay of the caller's choosing.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use switchyard_crds::FleetNode;

/// Acknowledge every mode change in `namespace`, each after `delay(node)`.
/// Runs until the watch ends; spawn it and abort it when done.
pub async fn acknowledge_modes(client: Client, namespace: &str, delay: impl Fn(&str) -> Duration) {
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
        let nodes = nodes.clone();
        let wait = delay(&n.name_any());
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
