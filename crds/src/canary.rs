//! `MigrationCanary`: a trial of one network mode on a few nodes, compared against
//! the rest. Usable alone (an A/B test) or owned by a MigrationPlan, which
//! creates one per stage.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::analysis::Analysis;
use crate::duration::Duration;
use crate::mode::NetworkMode;
use crate::plan::{MetricResult, Verdict};

/// A trial of `mode` on a few of the selected nodes.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "switchyard.dev",
    version = "v1alpha1",
    kind = "MigrationCanary",
    namespaced,
    validation = Rule::new("self.metadata.name.size() <= 63").message("metadata.name: at most 63 characters: the operator writes the name as a label value on every FleetNode it moves, and a label value is at most 63 characters"),
    status = "MigrationCanaryStatus",
    shortname = "mcanary",
    category = "switchyard",
    derive = "PartialEq",
    doc = "Tries a network mode on a few FleetNodes and compares their health against a baseline.",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Verdict", type_ = "string", json_path = ".status.verdict"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.nodes) ? 1 : 0) + (has(self.count) ? 1 : 0) + (has(self.percent) ? 1 : 0) == 1").message("set exactly one of nodes, count or percent"))]
pub struct MigrationCanarySpec {
    /// The FleetNodes the canary nodes are taken from; the rest of them are
    /// the baseline unless baselineSelector says otherwise.
    pub selector: LabelSelector,

    /// FleetNode names to use as canaries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1000))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub nodes: Option<Vec<String>>,

    /// Number of canary nodes, picked in a stable order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub count: Option<u32>,

    /// Percent of the selected nodes to use (at most 50, so a baseline
    /// remains).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 50))]
    pub percent: Option<u8>,

    /// The mode to try.
    pub mode: NetworkMode,

    /// How long the trial runs before the verdict.
    #[serde(default = "default_duration")]
    pub duration: Duration,

    /// The nodes to compare against. Absent: the selected nodes that are
    /// not canaries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_selector: Option<LabelSelector>,

    /// When the trial mode load-balances, the percent of the canary nodes'
    /// requests sent over iroh (written to their spec.irohShare). Absent:
    /// 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    pub ab_share: Option<u8>,

    /// How the trial is judged. Absent: the default checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Analysis>,
}

/// Lifecycle phase of a MigrationCanary.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum MigrationCanaryPhase {
    /// Not started.
    #[default]
    Pending,
    /// The canary nodes run the trial mode.
    Running,
    /// The trial passed.
    Succeeded,
    /// The trial failed.
    Failed,
    /// The canary nodes were returned to their previous modes.
    RolledBack,
    /// The spec is invalid; nothing was changed.
    Invalid,
}

/// Observed state of a MigrationCanary.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MigrationCanaryStatus {
    /// Lifecycle phase.
    #[serde(default)]
    pub phase: MigrationCanaryPhase,
    /// The metadata.generation this status answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The nodes chosen as canaries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub nodes: Vec<String>,
    /// When every canary node had acknowledged the trial mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// MigrationCanary vs baseline per metric.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub metrics: Vec<MetricResult>,
    /// The verdict, once the duration has passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// A human-readable summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The analysis's running count for the current step (and the
    /// HighErrorRate trigger's clock), so a new leader continues it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis_tally: Option<crate::analysis::AnalysisTally>,

    /// Standard conditions: Ready, Progressing, Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

fn default_duration() -> Duration {
    Duration::from_secs(600)
}
