//! `MigrationPlan`: move the FleetNodes a selector picks through an ordered
//! list of network modes, canary first, then waves, gated by analysis, with
//! automatic rollback.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::analysis::Analysis;
use crate::duration::Duration;
use crate::mode::NetworkMode;

/// The default cumulative wave shares, in percent of a stage's nodes.
pub const DEFAULT_WAVES: [u8; 5] = [5, 25, 50, 75, 100];

/// Desired migration of a set of FleetNodes.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "switchyard.dev",
    version = "v1alpha1",
    kind = "MigrationPlan",
    namespaced,
    validation = Rule::new("self.metadata.name.size() <= 63").message("metadata.name: at most 63 characters: the operator writes the name as a label value on every FleetNode it moves, and a label value is at most 63 characters"),
    status = "MigrationPlanStatus",
    shortname = "mplan",
    shortname = "mp",
    category = "switchyard",
    derive = "PartialEq",
    doc = "Moves the FleetNodes its selector picks through an ordered list of network modes: a canary, then waves, gated by health analysis, with automatic rollback.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Stage",
        type_ = "string",
        json_path = ".status.stageMode",
        description = "Mode of the stage in progress"
    ),
    printcolumn(
        name = "Wave",
        type_ = "integer",
        json_path = ".status.wave",
        description = "Wave index within the stage"
    ),
    printcolumn(
        name = "Progress",
        type_ = "integer",
        json_path = ".status.progressPercent",
        description = "Percent of all node steps done"
    ),
    printcolumn(
        name = "Nodes",
        type_ = "integer",
        json_path = ".status.nodes.total",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!(self.stages.exists(s, s == 'LibP2pOnly') && self.stages.exists(s, s == 'IrohOnly'))").message("stages must not hold both LibP2pOnly and IrohOnly: nodes in those modes cannot talk, so the fleet would split; go through a Dual mode and stop at one end").field_path(".stages"),
    validation = Rule::new("self.waves.isSorted()").message("waves must be cumulative percentages in increasing order, e.g. [5, 25, 50, 75, 100]").field_path(".waves"),
    validation = Rule::new("!has(self.maxUnavailable) || string(self.maxUnavailable).matches('^([1-9][0-9]*|([1-9][0-9]?|100)%)$')").message("maxUnavailable must be a count of at least 1 or a percent from 1% to 100%, e.g. 5 or \"10%\"").field_path(".maxUnavailable"),
    validation = Rule::new("self.waves[size(self.waves) - 1] == 100").message("the last wave must be 100 so every node reaches the stage's mode").field_path(".waves")
)]
pub struct MigrationPlanSpec {
    /// Which FleetNodes in this namespace the plan moves.
    pub selector: LabelSelector,

    /// Modes to move every selected node through, in order. A stage starts
    /// only when every node has acknowledged the previous one.
    #[schemars(length(min = 1, max = 8))]
    pub stages: Vec<NetworkMode>,

    /// A canary run before the waves of each stage. Absent: no canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<PlanCanary>,

    /// Cumulative shares, in percent, of a stage's nodes that each wave
    /// brings to the stage's mode. Strictly increasing, ending at 100.
    #[serde(default = "default_waves")]
    #[schemars(length(min = 1, max = 20), inner(range(min = 1, max = 100)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub waves: Vec<u8>,

    /// Soak time after a wave is acknowledged before the next one starts
    /// (analysis must pass at its end).
    #[serde(default = "default_wave_interval")]
    pub wave_interval: Duration,

    /// Most nodes switching (not yet acknowledged) at once: a count such as
    /// 5, or a percent of the selected nodes such as "10%" (at least 1).
    #[serde(default = "default_max_unavailable")]
    pub max_unavailable: IntOrString,

    /// How long a step may wait for its nodes to acknowledge before the
    /// plan reports them as stuck (condition Degraded, reason
    /// ProgressDeadlineExceeded).
    #[serde(default = "default_progress_deadline")]
    pub progress_deadline: Duration,

    /// Health analysis gating each canary and wave. Absent: steps advance
    /// on acknowledgement and soak time alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Analysis>,

    /// When and how to roll back.
    #[serde(default)]
    pub rollback: RollbackPolicy,

    /// Stop switching nodes. In-flight switches finish; nothing new starts
    /// until this is false again. The operator sets it itself when analysis
    /// is inconclusive.
    #[serde(default)]
    pub paused: bool,

    /// Why a person paused the plan (`kubectl switchyard pause --reason`):
    /// shown in status and in the Paused Event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub pause_reason: Option<String>,

    /// Skip the rest of one step's wait (the canary's duration or the
    /// wave's soak), e.g. once a person has looked
    /// (`kubectl switchyard promote`). Analysis still gates the step. Names
    /// the step, so it cannot skip a later one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote: Option<Promote>,

    /// Set to roll the plan back by hand: every node returns to the mode
    /// it had when the plan started, in the safe order. Example:
    /// kubectl patch mplan NAME --type merge -p '{"spec":{"rollbackRequest":{"reason":"..."}}}'
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_request: Option<RollbackRequest>,
}

/// A promotion of one step.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Promote {
    /// The step: `STAGE/WAVE`, or `STAGE/canary` (0-based), as the plan's
    /// status shows it in `analysisTally.step` and on its nodes'
    /// `switchyard.dev/step` annotation.
    #[schemars(length(min = 1, max = 64))]
    pub step: String,
}

/// A manual rollback request.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RollbackRequest {
    /// Why, for the rollback history and events.
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub reason: String,
    /// How this rollback moves nodes, instead of `rollback.strategy`
    /// (`kubectl switchyard rollback --strategy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<RollbackStrategy>,
}

/// Which nodes lead each stage, and for how long they run alone.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.nodes) ? 1 : 0) + (has(self.count) ? 1 : 0) + (has(self.percent) ? 1 : 0) == 1").message("set exactly one of nodes, count or percent"))]
pub struct PlanCanary {
    /// FleetNode names to use as canaries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1000))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub nodes: Option<Vec<String>>,

    /// Number of canary nodes, picked in the plan's stable node order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub count: Option<u32>,

    /// Percent of the selected nodes to use as canaries (at most 50, so a
    /// baseline remains to compare against).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 50))]
    pub percent: Option<u8>,

    /// How long the canaries run in the new mode before the verdict.
    #[serde(default = "default_canary_duration")]
    pub duration: Duration,

    /// Analysis for the canary step; absent: the plan's analysis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Analysis>,
}

/// When and how a plan rolls back.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.gradual) || self.strategy == 'Gradual'").message("gradual settings need strategy: Gradual").field_path(".gradual"))]
pub struct RollbackPolicy {
    /// Roll back by itself when analysis fails or a trigger fires. When
    /// false the plan stops in phase Failed instead.
    #[serde(default = "default_true")]
    pub automatic: bool,

    /// Fast: as many nodes at once as maxUnavailable allows. Gradual:
    /// batches of gradual.waveSize with gradual.interval between them.
    #[serde(default)]
    pub strategy: RollbackStrategy,

    /// Batch size and spacing for strategy Gradual.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gradual: Option<GradualRollback>,

    /// Plan: every node returns to its starting mode. Wave: only the nodes
    /// of the failing wave return to the mode they had before the stage,
    /// and the plan stops in phase Failed.
    #[serde(default)]
    pub scope: RollbackScope,

    /// Conditions on the agents' metrics that start a rollback at once,
    /// whatever step the plan is in. Absent: all four with the seed's
    /// thresholds.
    #[serde(default)]
    pub triggers: RollbackTriggers,

    /// Alertmanager alerts that start a rollback when they fire. An alert
    /// matches a matcher when it carries every label the matcher lists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub alert_matchers: Vec<AlertMatcher>,

    /// What a matching alert does: Rollback (default; or phase Failed when
    /// rollback is not automatic) or Pause (sets spec.paused).
    #[serde(default)]
    pub alert_action: AlertAction,

    /// With alertAction Pause: resume by itself once every matching alert
    /// has resolved. Off by default: a person resumes.
    #[serde(default)]
    pub resume_when_alerts_resolve: bool,

    /// Also roll back when nodes miss the progress deadline (by default the
    /// plan only reports them and waits).
    #[serde(default)]
    pub on_progress_deadline: bool,
}

impl Default for RollbackPolicy {
    fn default() -> Self {
        RollbackPolicy {
            automatic: true,
            strategy: RollbackStrategy::default(),
            gradual: None,
            scope: RollbackScope::default(),
            triggers: RollbackTriggers::default(),
            alert_matchers: Vec::new(),
            alert_action: AlertAction::default(),
            resume_when_alerts_resolve: false,
            on_progress_deadline: false,
        }
    }
}

/// What a matching Alertmanager alert does to a plan.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum AlertAction {
    /// Roll back (or stop in phase Failed when rollback is not automatic).
    #[default]
    Rollback,
    /// Pause the plan: in-flight switches finish, nothing new starts.
    Pause,
}

/// How fast a rollback moves nodes.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum RollbackStrategy {
    /// As many nodes at once as maxUnavailable allows, no pauses.
    #[default]
    Fast,
    /// Batches of gradual.waveSize percent, gradual.interval apart.
    Gradual,
}

/// Batch size and spacing of a gradual rollback.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GradualRollback {
    /// Percent of the plan's nodes per batch.
    #[serde(default = "default_rollback_wave_size")]
    #[schemars(range(min = 1, max = 100))]
    pub wave_size: u8,
    /// Wait after a batch is acknowledged before the next one.
    #[serde(default = "default_rollback_interval")]
    pub interval: Duration,
}

impl Default for GradualRollback {
    fn default() -> Self {
        GradualRollback {
            wave_size: default_rollback_wave_size(),
            interval: default_rollback_interval(),
        }
    }
}

/// Which nodes a rollback moves.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum RollbackScope {
    /// Every node the plan moved.
    #[default]
    Plan,
    /// Only the nodes of the failing wave.
    Wave,
}

/// Metric conditions that trigger an automatic rollback. Each is on when
/// present; an empty object uses the default threshold.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RollbackTriggers {
    /// Error rate above threshold for the given time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_error_rate: Option<HighErrorRate>,
    /// p95 latency regression beyond a bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_regression: Option<LatencyRegression>,
    /// Partition risk above a bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_partition: Option<NetworkPartition>,
    /// Agents failing their health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_failure: Option<HealthCheckFailure>,
}

impl Default for RollbackTriggers {
    fn default() -> Self {
        RollbackTriggers {
            high_error_rate: Some(HighErrorRate::default()),
            latency_regression: Some(LatencyRegression::default()),
            network_partition: Some(NetworkPartition::default()),
            health_check_failure: Some(HealthCheckFailure::default()),
        }
    }
}

/// Roll back when the error rate stays above `threshold` for `for`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HighErrorRate {
    /// Error rate (0-1). Default 0.05, the seed's 5%.
    #[serde(default = "default_error_threshold")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub threshold: f64,
    /// How long it must stay above. Default 5m.
    #[serde(default = "default_error_for", rename = "for")]
    pub for_: Duration,
}

impl Default for HighErrorRate {
    fn default() -> Self {
        HighErrorRate {
            threshold: default_error_threshold(),
            for_: default_error_for(),
        }
    }
}

/// Roll back when a latency percentile exceeds a bound.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LatencyRegression {
    /// The bound in milliseconds. Default 500, the seed's value.
    #[serde(default = "default_latency_ms")]
    #[schemars(range(min = 1))]
    pub threshold_ms: u32,
    /// The percentile of request latency compared with it, 50 to 99.9.
    /// Default 95.
    #[serde(default = "default_latency_percentile")]
    #[schemars(range(min = 50.0, max = 99.9))]
    pub percentile: f64,
}

impl Default for LatencyRegression {
    fn default() -> Self {
        LatencyRegression {
            threshold_ms: default_latency_ms(),
            percentile: default_latency_percentile(),
        }
    }
}

/// Roll back when the agents' partition risk exceeds a bound.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPartition {
    /// Partition risk (0-1). Default 0.7, the seed's value.
    #[serde(default = "default_partition_risk")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub risk_above: f64,
}

impl Default for NetworkPartition {
    fn default() -> Self {
        NetworkPartition {
            risk_above: default_partition_risk(),
        }
    }
}

/// Roll back when agents report an unhealthy health score.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheckFailure {
    /// Lowest acceptable health score (0-1). Default 0.5.
    #[serde(default = "default_min_health")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_health_score: f64,
}

impl Default for HealthCheckFailure {
    fn default() -> Self {
        HealthCheckFailure {
            min_health_score: default_min_health(),
        }
    }
}

/// Alertmanager alerts that trigger a rollback.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AlertMatcher {
    /// Labels the alert must carry, with these exact values, e.g.
    /// {alertname: SwitchyardHighErrorRate, severity: critical}.
    #[schemars(extend("minProperties" = 1))]
    pub labels: BTreeMap<String, String>,
}

/// Lifecycle phase of a MigrationPlan.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum PlanPhase {
    /// Accepted, nothing switched yet.
    #[default]
    Pending,
    /// A stage's canary is running.
    Canary,
    /// Waves are running.
    Progressing,
    /// spec.paused is true; nothing new starts.
    Paused,
    /// Nodes are returning to their previous modes.
    RollingBack,
    /// A rollback finished. Terminal.
    RolledBack,
    /// Every stage finished. The plan keeps holding new nodes at the final
    /// mode until it is deleted.
    Succeeded,
    /// Stopped: analysis failed without automatic rollback, or a wave was
    /// rolled back. A manual rollback request still works.
    Failed,
    /// The spec is invalid; nothing was changed. Fix the spec.
    Invalid,
}

impl PlanPhase {
    /// Phases after which the plan switches no more nodes by itself
    /// (Succeeded still enrols newcomers, RolledBack releases nothing).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            PlanPhase::RolledBack | PlanPhase::Succeeded | PlanPhase::Failed | PlanPhase::Invalid
        )
    }
}

/// Observed state of a MigrationPlan. Counts and a few named nodes only:
/// per-node facts live on the FleetNodes, so a 10,000-node plan stays small.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MigrationPlanStatus {
    /// Lifecycle phase.
    #[serde(default)]
    pub phase: PlanPhase,

    /// The metadata.generation this status answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Index into spec.stages of the stage in progress.
    #[serde(default)]
    pub stage: u32,

    /// Mode of the stage in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_mode: Option<NetworkMode>,

    /// Index into spec.waves of the wave in progress; absent while the
    /// stage's canary runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave: Option<u32>,

    /// When the current step (canary, wave or rollback batch) began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<Time>,

    /// When the current step last made progress (a node was told to
    /// switch or acknowledged); the progress deadline counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_progress_time: Option<Time>,

    /// When every node of the current step had acknowledged; soak time and
    /// canary duration count from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_acknowledged_at: Option<Time>,

    /// When the plan first switched a node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,

    /// When the plan reached Succeeded or RolledBack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,

    /// Estimated completion: for every remaining step, its switch time
    /// (batches of maxUnavailable nodes at the observed time a batch takes
    /// to acknowledge, and the operator's write rate) and its wait (canary
    /// duration or soak, at least the analysis's passes in a row).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_completion: Option<Time>,

    /// Milliseconds a batch of nodes has taken from being told a mode to
    /// acknowledging it, a weighted mean over this plan's steps (the ETA's
    /// switch time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_switch_millis: Option<u64>,

    /// Node counts.
    #[serde(default)]
    pub nodes: NodeCounts,

    /// Percent of all node-steps done (0-100).
    #[serde(default)]
    pub progress_percent: u8,

    /// The most recent analysis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_analysis: Option<AnalysisResult>,

    /// The rollback in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackRecord>,

    /// Finished rollbacks, newest last (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub rollback_history: Vec<RollbackRecord>,

    /// Up to 10 of the nodes counted in `nodes.excluded` (their pod is
    /// gone), by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub excluded_nodes: Vec<String>,

    /// Up to 10 nodes holding the plan back, with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub blocked_nodes: Vec<BlockedNode>,

    /// The analysis's running count for the current step (and the
    /// HighErrorRate trigger's clock), so a new leader continues it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis_tally: Option<crate::analysis::AnalysisTally>,

    /// A human-readable summary of what the plan is doing or waiting for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// Standard conditions: Ready, Progressing, Degraded, Paused, and
    /// Reconciling and Stalled for kstatus.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Node counts of a plan.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodeCounts {
    /// Nodes the selector picks.
    #[serde(default)]
    pub total: u32,
    /// Nodes running their desired mode.
    #[serde(default)]
    pub acknowledged: u32,
    /// Nodes told to switch that have not acknowledged yet.
    #[serde(default)]
    pub switching: u32,
    /// Nodes the plan may not touch (held by another plan, not reporting).
    #[serde(default)]
    pub blocked: u32,
    /// Nodes the selector picks whose pod has been gone longer than the
    /// operator's grace period: neither selected nor waited for, and not in
    /// `total`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub excluded: u32,
    /// Nodes by applied mode.
    #[serde(default)]
    pub by_mode: ModeCounts,
}

/// A count per network mode.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ModeCounts {
    /// Nodes in LibP2pOnly.
    #[serde(default, rename = "LibP2pOnly")]
    pub libp2p_only: u32,
    /// Nodes in DualPreferLibP2p.
    #[serde(default, rename = "DualPreferLibP2p")]
    pub dual_prefer_libp2p: u32,
    /// Nodes in DualLoadBalance.
    #[serde(default, rename = "DualLoadBalance")]
    pub dual_load_balance: u32,
    /// Nodes in DualPreferIroh.
    #[serde(default, rename = "DualPreferIroh")]
    pub dual_prefer_iroh: u32,
    /// Nodes in IrohOnly.
    #[serde(default, rename = "IrohOnly")]
    pub iroh_only: u32,
}

impl ModeCounts {
    /// Add one node in `mode`.
    pub fn add(&mut self, mode: NetworkMode) {
        *self.get_mut(mode) += 1;
    }

    /// The count for `mode`.
    pub fn get(&self, mode: NetworkMode) -> u32 {
        match mode {
            NetworkMode::LibP2pOnly => self.libp2p_only,
            NetworkMode::DualPreferLibP2p => self.dual_prefer_libp2p,
            NetworkMode::DualLoadBalance => self.dual_load_balance,
            NetworkMode::DualPreferIroh => self.dual_prefer_iroh,
            NetworkMode::IrohOnly => self.iroh_only,
        }
    }

    fn get_mut(&mut self, mode: NetworkMode) -> &mut u32 {
        match mode {
            NetworkMode::LibP2pOnly => &mut self.libp2p_only,
            NetworkMode::DualPreferLibP2p => &mut self.dual_prefer_libp2p,
            NetworkMode::DualLoadBalance => &mut self.dual_load_balance,
            NetworkMode::DualPreferIroh => &mut self.dual_prefer_iroh,
            NetworkMode::IrohOnly => &mut self.iroh_only,
        }
    }
}

/// The outcome of one analysis.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisResult {
    /// When it was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    /// Overall verdict.
    pub verdict: Verdict,
    /// Every metric's value, threshold and verdict.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub metrics: Vec<MetricResult>,
    /// Summary, e.g. which check failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One metric's outcome.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MetricResult {
    /// The check's name.
    pub name: String,
    /// Measured value (canary group, or whole selection); absent when no
    /// data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Baseline value for relative checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<f64>,
    /// The threshold applied, as text, e.g. "<= 0.05".
    #[serde(default)]
    pub threshold: String,
    /// This metric's verdict.
    pub verdict: Verdict,
    /// Whose data the value is, e.g. "canary (2 nodes), iroh" or
    /// "prometheus"; the baseline's, after "vs".
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cohort: String,
    /// Why there is no value, when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// An analysis verdict.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum Verdict {
    /// Every check met its thresholds on enough data.
    Pass,
    /// A check missed its threshold more often than failureLimit allows.
    Fail,
    /// Not enough data to judge. Never counts as success.
    #[default]
    Inconclusive,
}

/// A rollback, in progress or finished.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RollbackRecord {
    /// When it began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// What started it: Manual, AnalysisFailed, HighErrorRate,
    /// LatencyRegression, NetworkPartition, HealthCheckFailure, Alert,
    /// ProgressDeadline.
    pub trigger: String,
    /// Details, e.g. the alert name or the failed check.
    #[serde(default)]
    pub reason: String,
    /// Plan or Wave.
    #[serde(default)]
    pub scope: RollbackScope,
    /// Nodes it moved.
    #[serde(default)]
    pub nodes: u32,
    /// For scope Wave: the step whose nodes it returns, as `<stage>/<wave>`
    /// or `<stage>/canary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
}

/// A node that holds the plan back.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BlockedNode {
    /// FleetNode name.
    pub name: String,
    /// Why, e.g. "held by MigrationPlan other" or "not acknowledged for 10m".
    pub reason: String,
}

fn default_true() -> bool {
    true
}

/// The default cumulative waves.
pub fn default_waves() -> Vec<u8> {
    DEFAULT_WAVES.to_vec()
}

fn default_wave_interval() -> Duration {
    // Five minutes is the seed's alert window for error rate: a wave that
    // soaks this long has had one full window to trip the alert.
    Duration::from_secs(300)
}

fn default_max_unavailable() -> IntOrString {
    // A mode switch drains and restarts one stack on a node; a tenth of the
    // fleet doing so at once keeps 90% of routes untouched.
    IntOrString::String("10%".into())
}

fn default_progress_deadline() -> Duration {
    // An agent applies a mode in seconds; ten minutes covers a pod restart
    // and image pull without hiding a stuck node for long.
    Duration::from_secs(600)
}

fn default_canary_duration() -> Duration {
    // Two analysis intervals' worth beyond the seed's 5-minute alert window.
    Duration::from_secs(600)
}

fn default_rollback_wave_size() -> u8 {
    10
}

fn default_rollback_interval() -> Duration {
    Duration::from_secs(60)
}

fn default_error_threshold() -> f64 {
    0.05
}

fn default_error_for() -> Duration {
    Duration::from_secs(300)
}

fn default_latency_ms() -> u32 {
    500
}

fn default_latency_percentile() -> f64 {
    95.0
}

fn default_partition_risk() -> f64 {
    0.7
}

fn default_min_health() -> f64 {
    0.5
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
