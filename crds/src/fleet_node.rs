//! `FleetNode`: one per node-agent instance. `spec` is the desired state and
//! belongs to the operator; `status` is the observed state and belongs to the
//! agent (compare Bottlerocket's BottlerocketShadow).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::mode::{NetworkMode, RoutingStrategy};

/// Desired state of one fleet node. Written by the Switchyard operator only
/// (server-side apply, field manager `switchyard-operator`).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "switchyard.dev",
    version = "v1alpha1",
    kind = "FleetNode",
    namespaced,
    status = "FleetNodeStatus",
    shortname = "fnode",
    category = "switchyard",
    derive = "Default",
    derive = "PartialEq",
    doc = "One node of a peer-to-peer fleet, registered by its node-agent. spec.mode is the network mode the operator wants; status reports what the agent runs.",
    printcolumn(
        name = "Desired",
        type_ = "string",
        json_path = ".spec.mode",
        description = "Network mode the operator wants"
    ),
    printcolumn(
        name = "Applied",
        type_ = "string",
        json_path = ".status.appliedMode",
        description = "Network mode the agent runs"
    ),
    printcolumn(
        name = "Plan",
        type_ = "string",
        json_path = ".metadata.labels.switchyard\\.dev/plan",
        description = "MigrationPlan that manages this node"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct FleetNodeSpec {
    /// Network mode this node should run. Set by the Switchyard operator;
    /// when absent the agent keeps the initial mode from its configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<NetworkMode>,

    /// Routing strategy override for the dual modes. When absent the node
    /// uses the mode's default (PreferLibP2p, LoadBalance or PreferIroh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_strategy: Option<RoutingStrategy>,

    /// Percent of requests sent over iroh when the node load-balances (the
    /// A/B share of a MigrationCanary). 0-100; when absent, 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    pub iroh_share: Option<u8>,
}

/// Observed state of one fleet node. Written by its node-agent only.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FleetNodeStatus {
    /// Network mode the agent is running now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_mode: Option<NetworkMode>,

    /// Routing strategy the agent is using now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_strategy: Option<RoutingStrategy>,

    /// The metadata.generation of the spec that appliedMode answers. The
    /// node has acknowledged spec.mode only when this is at least
    /// metadata.generation and appliedMode equals spec.mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The node's identities, both derived from one ed25519 key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<NodeIdentity>,

    /// Addresses the node listens on, per transport.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addresses: Option<NodeAddresses>,

    /// URL of the agent's Prometheus metrics, e.g. http://10.0.0.7:9090/metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_endpoint: Option<String>,

    /// When appliedMode last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,

    /// Standard conditions: Ready, ModeApplied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// A node's identities on both transports.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeIdentity {
    /// libp2p PeerId (base58, e.g. 12D3KooW...).
    pub peer_id: String,
    /// iroh EndpointId (hex-encoded ed25519 public key).
    pub endpoint_id: String,
}

/// Listen addresses per transport.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeAddresses {
    /// libp2p multiaddrs, e.g. /ip4/10.0.0.7/tcp/4001.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub libp2p: Vec<String>,
    /// iroh direct addresses as ip:port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub iroh: Vec<String>,
}

/// A server-side apply body for FleetNode `name`: `spec.mode` (and
/// `spec.irohShare` when given), with these labels and annotations. Under
/// server-side apply a manager's body is all it owns: labels or
/// annotations it set before and leaves out here are removed.
pub fn apply_body(
    name: &str,
    mode: NetworkMode,
    iroh_share: Option<u8>,
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
) -> serde_json::Value {
    let map = |pairs: &[(&str, &str)]| -> serde_json::Map<String, serde_json::Value> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
            .collect()
    };
    let mut metadata = serde_json::json!({"name": name});
    if !labels.is_empty() {
        metadata["labels"] = map(labels).into();
    }
    if !annotations.is_empty() {
        metadata["annotations"] = map(annotations).into();
    }
    let mut spec = serde_json::json!({"mode": mode.as_str()});
    if let Some(share) = iroh_share {
        spec["irohShare"] = share.into();
    }
    serde_json::json!({
        "apiVersion": crate::API_VERSION,
        "kind": "FleetNode",
        "metadata": metadata,
        "spec": spec,
    })
}

impl FleetNode {
    /// The `switchyard.dev/start-mode` annotation: the mode it names, none,
    /// or (`Err`) why the value is not a mode and what to do about it.
    pub fn start_mode(&self) -> Result<Option<NetworkMode>, String> {
        let a = crate::ANNOTATION_START_MODE;
        match self.metadata.annotations.as_ref().and_then(|m| m.get(a)) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                format!(
                    "a bad {a} annotation {v:?} (not one of {}): set it to the mode the node started in, or remove it",
                    NetworkMode::ALL.map(NetworkMode::as_str).join(", ")
                )
            }),
        }
    }

    /// The mode the operator wants, if it has set one.
    pub fn desired_mode(&self) -> Option<NetworkMode> {
        self.spec.mode
    }

    /// The mode the agent reports running.
    pub fn applied_mode(&self) -> Option<NetworkMode> {
        self.status.as_ref().and_then(|s| s.applied_mode)
    }

    /// Whether the agent has acknowledged the current spec: it has observed
    /// this generation and runs the desired mode. A node with no desired
    /// mode counts as acknowledged once it reports any mode.
    pub fn acknowledged(&self) -> bool {
        let Some(status) = &self.status else {
            return false;
        };
        let generation = self.metadata.generation.unwrap_or(0);
        let observed = status.observed_generation.unwrap_or(-1) >= generation;
        match (self.spec.mode, status.applied_mode) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(want), Some(have)) => observed && want == have,
        }
    }
}
