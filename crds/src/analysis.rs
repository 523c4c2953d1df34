//! The analysis block shared by `MigrationPlan` and `MigrationCanary`: how often to
//! measure, how much data a measurement needs, how many bad measurements to
//! tolerate, and the metric checks themselves.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use crate::duration::Duration;

/// A transport, for metric checks that look at one of them.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
pub enum Transport {
    /// The libp2p stack.
    Libp2p,
    /// The iroh stack.
    Iroh,
}

/// How health is judged between steps. Absent data never counts as success:
/// a measurement below `minSampleSize` is inconclusive.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.metrics.all(m, self.metrics.exists_one(n, n.name == m.name))").message("metric check names must be unique").field_path(".metrics"))]
pub struct Analysis {
    /// Time between two measurements.
    #[serde(default = "default_interval")]
    pub interval: Duration,

    /// Fewest requests a measurement must cover to count; below it the
    /// measurement is inconclusive.
    #[serde(default = "default_min_sample_size")]
    #[schemars(range(min = 1))]
    pub min_sample_size: u32,

    /// Failed measurements tolerated; one more makes the verdict Fail.
    #[serde(default)]
    pub failure_limit: u32,

    /// Inconclusive measurements tolerated; one more makes the verdict
    /// Inconclusive, handled as onInconclusive says.
    #[serde(default)]
    pub inconclusive_limit: u32,

    /// Passing measurements in a row a step needs before it passes.
    #[serde(default = "default_consecutive_successes")]
    #[schemars(range(min = 1, max = 100))]
    pub consecutive_successes: u32,
    /// What an inconclusive verdict does: Pause (default) stops the plan
    /// until a person resumes it; Rollback treats it as a failed verdict;
    /// Continue lets the step pass without data (use with care).
    #[serde(default)]
    pub on_inconclusive: InconclusiveAction,

    /// The checks. When absent: error rate at most 5%, p95 latency at most
    /// 500ms, partition risk at most 0.7 (the seed's alert rules).
    #[serde(default = "default_metrics")]
    #[schemars(length(min = 1, max = 32))]
    pub metrics: Vec<MetricCheck>,

    /// A Prometheus for this plan's PromQL checks instead of the
    /// operator's (e.g. a tenant's Mimir or Thanos). The operator's
    /// credentials are never sent to it; its own can come from a Secret
    /// (`secretRef`). It is trusted as the operator's Prometheus is (the
    /// same CA bundle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusOverride>,
}

/// Where a plan's PromQL checks go.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.address.startsWith('http://') || self.address.startsWith('https://')").message("address must be an http:// or https:// URL, e.g. https://mimir.monitoring:8080/prometheus").field_path(".address"))]
pub struct PrometheusOverride {
    /// Base URL of the Prometheus HTTP API (a path prefix is kept).
    #[schemars(length(min = 8, max = 512))]
    pub address: String,
    /// Headers every query carries, e.g. `X-Scope-OrgID`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub headers: Vec<HttpHeader>,
    /// Credentials for this Prometheus: a Secret in the plan's namespace
    /// holding `token` (sent as a bearer token) or `username` and
    /// `password` (basic auth). The Secret must carry the label
    /// `switchyard.dev/prometheus-credentials: "true"`, and the operator
    /// reads it only when installed with
    /// `operator.prometheus.allowPlanCredentials` (it then may get Secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
}

/// A Secret in the object's own namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SecretRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The label a Secret needs before a plan's `analysis.prometheus.secretRef`
/// may use it: its owner's consent to send it to the plan's Prometheus.
pub const PROMETHEUS_CREDENTIALS_LABEL: &str = "switchyard.dev/prometheus-credentials";

/// An HTTP header.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!self.name.matches('(?i)^authorization$')").message("credentials cannot be set as a header of a plan").field_path(".name"))]
pub struct HttpHeader {
    /// Header name.
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
    )]
    pub name: String,
    /// Header value.
    #[schemars(length(max = 1024))]
    pub value: String,
}

impl Default for Analysis {
    fn default() -> Self {
        Analysis {
            interval: default_interval(),
            min_sample_size: default_min_sample_size(),
            failure_limit: 0,
            inconclusive_limit: 0,
            consecutive_successes: default_consecutive_successes(),
            prometheus: None,
            on_inconclusive: InconclusiveAction::default(),
            metrics: default_metrics(),
        }
    }
}

/// What an inconclusive analysis does.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum InconclusiveAction {
    /// Pause the plan (sets spec.paused) until a person resumes it.
    #[default]
    Pause,
    /// Treat it as a failed verdict (rollback if automatic rollback is on).
    Rollback,
    /// Let the step pass as if the analysis had passed.
    Continue,
}

/// What a relative threshold compares a check's value with.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum Reference {
    /// The same metric on the nodes the plan has not moved (default).
    #[default]
    Baseline,
    /// The same metric over libp2p on the same (canary) nodes: set
    /// `transport: Iroh` to compare iroh with libp2p where both run.
    Libp2p,
    /// The same metric over iroh on the same (canary) nodes.
    Iroh,
}

/// A metric the operator computes from the agents' scraped /metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub enum BuiltinMetric {
    /// Failed requests divided by all requests (0-1).
    ErrorRate,
    /// Median request latency in milliseconds.
    LatencyP50,
    /// 95th percentile request latency in milliseconds.
    LatencyP95,
    /// 99th percentile request latency in milliseconds.
    LatencyP99,
    /// The agents' partition-risk gauge (0-1).
    PartitionRisk,
    /// Connected peers per node.
    PeerCount,
    /// The agents' health score (0-1).
    HealthScore,
    /// The share of DHT operations (lookups, puts, gets, routing checks)
    /// that succeeded over the window (0-1), from the agents'
    /// `switchyard_dht_lookups_total`.
    DhtLookupSuccess,
    /// The lowest DHT routing health of the nodes (seed 001's
    /// KademliaRoutingCheck): 2 Healthy, 1 Degraded, 0 Failed. `min: 2`
    /// gates on every node Healthy.
    RoutingHealth,
}

/// One check: a value (built-in or PromQL) and the thresholds it must meet.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.builtin) != has(self.promql)").message("set exactly one of builtin or promql"),
    validation = Rule::new("has(self.max) || has(self.min) || has(self.maxIncreasePercent) || has(self.maxDecreasePercent)").message("set at least one threshold: max, min, maxIncreasePercent or maxDecreasePercent"),
    validation = Rule::new("!has(self.max) || !has(self.min) || self.min <= self.max").message("min must not exceed max"),
    validation = Rule::new("!has(self.compareWith) || has(self.builtin)").message("compareWith applies to builtin metrics; a PromQL check states its comparison in its query")
)]
pub struct MetricCheck {
    /// Name of the check, unique within the analysis; shown in status.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,

    /// A built-in metric over the agents' scraped metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<BuiltinMetric>,

    /// A PromQL expression returning one value, run against the operator's
    /// configured Prometheus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub promql: Option<String>,

    /// Restrict a built-in metric to one transport. Absent: both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<Transport>,

    /// Fail when the value is above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,

    /// Fail when the value is below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,

    /// Fail when the value exceeds the baseline's by more than this percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 10000.0))]
    pub max_increase_percent: Option<f64>,

    /// What maxIncreasePercent and maxDecreasePercent compare with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare_with: Option<Reference>,
    /// Fail when the value falls below the baseline's by more than this
    /// percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub max_decrease_percent: Option<f64>,
}

fn default_interval() -> Duration {
    // Long enough for a few hundred probe RPCs per node at the agents'
    // default probe rate, short enough that a bad wave is caught quickly.
    Duration::from_secs(60)
}

fn default_consecutive_successes() -> u32 {
    1
}

fn default_min_sample_size() -> u32 {
    // Below ~50 requests one failure moves the error rate by 2%, which is
    // noise next to the 5% threshold.
    50
}

/// The seed's default alert thresholds as analysis checks.
pub fn default_metrics() -> Vec<MetricCheck> {
    vec![
        MetricCheck {
            name: "error-rate".into(),
            builtin: Some(BuiltinMetric::ErrorRate),
            max: Some(0.05),
            ..MetricCheck::default()
        },
        MetricCheck {
            name: "latency-p95".into(),
            builtin: Some(BuiltinMetric::LatencyP95),
            max: Some(500.0),
            ..MetricCheck::default()
        },
        MetricCheck {
            name: "partition-risk".into(),
            builtin: Some(BuiltinMetric::PartitionRisk),
            max: Some(0.7),
            ..MetricCheck::default()
        },
    ]
}

/// The running count of one step's analysis, kept in status so that a new
/// leader continues where the old one stopped: a failover does not reset
/// `failureLimit`, and a high error rate's `for` clock keeps running.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisTally {
    /// The step the counts belong to, e.g. `Canary stage 0` or
    /// `Progressing stage 1 wave 2`; counting starts over on another step.
    #[serde(default)]
    pub step: String,
    /// When the step's nodes had all acknowledged its mode, as the counts
    /// know it; counting starts over when this changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_at: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// Failed measurements of this step.
    #[serde(default)]
    pub failures: u32,
    /// Inconclusive measurements of this step.
    #[serde(default)]
    pub inconclusives: u32,
    /// Passing measurements in a row.
    #[serde(default)]
    pub successes: u32,
    /// Since when the error rate has been above the HighErrorRate
    /// trigger's threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate_above_since: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}
