//! What the dashboard shows, built purely from the stores' contents, the
//! board's histories and `now`.

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::DynamicObject;
use serde::{Deserialize, Serialize};
use switchyard_crds::plan::{AnalysisResult, BlockedNode, NodeCounts, RollbackRecord};
use switchyard_crds::{FleetNode, MigrationPlan, NetworkMode};

use super::{AnalysisPoint, Board, FleetPoint, NodeHealth};
use crate::context::decode;

/// Nodes listed in the health view, worst first.
pub const HEALTH_NODES: usize = 100;

/// Everything the page shows, as `/api/v1/snapshot` and `/ws` send it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Unix milliseconds.
    pub generated_at: i64,
    /// Whether this replica leads (only the leader has analysis data).
    pub leader: bool,
    /// Every plan, by namespace and name.
    pub plans: Vec<PlanView>,
    /// The fleet by mode, now and over time.
    pub fleet: FleetView,
    /// The agents' own health reports.
    pub health: HealthView,
    /// Each plan's analysis history.
    pub analysis: Vec<SubjectHistory>,
}

/// One plan as the dashboard shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanView {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Why the stored object is not a valid plan, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalid: Option<String>,
    /// Lifecycle phase.
    pub phase: String,
    /// Whether the phase is final.
    pub finished: bool,
    /// The plan's stages.
    pub stages: Vec<NetworkMode>,
    /// Index of the stage in progress.
    pub stage: u32,
    /// Its mode.
    pub stage_mode: Option<NetworkMode>,
    /// The plan's cumulative waves, in percent.
    pub waves: Vec<u8>,
    /// Index of the wave in progress; `None` in a canary.
    pub wave: Option<u32>,
    /// Whether the plan has a canary per stage.
    pub canary: bool,
    /// Percent of node-steps done.
    pub progress_percent: u8,
    /// The ETA, RFC 3339.
    pub estimated_completion: Option<String>,
    /// Seconds from now to the ETA.
    pub eta_seconds: Option<i64>,
    /// When the plan first switched a node.
    pub start_time: Option<String>,
    /// When it finished.
    pub completion_time: Option<String>,
    /// Node counts.
    pub nodes: NodeCounts,
    /// Paused by a person.
    pub paused: bool,
    /// Why.
    pub pause_reason: Option<String>,
    /// What the plan is doing or waiting for.
    pub message: Option<String>,
    /// The latest analysis, with each check's value and threshold.
    pub last_analysis: Option<AnalysisResult>,
    /// The rollback in progress.
    pub rollback: Option<RollbackRecord>,
    /// Finished rollbacks, newest last.
    pub rollback_history: Vec<RollbackRecord>,
    /// Nodes holding the plan back.
    pub blocked_nodes: Vec<BlockedNode>,
}

/// The fleet by applied mode.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetView {
    /// FleetNodes.
    pub total: usize,
    /// Now.
    pub now: FleetPoint,
    /// Over time, oldest first.
    pub history: Vec<FleetPoint>,
}

/// Health states of one transport over the reporting agents.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransportSummary {
    /// Agents reporting each state.
    pub healthy: u32,
    /// Degraded.
    pub degraded: u32,
    /// Unhealthy.
    pub unhealthy: u32,
    /// Unknown, or no state reported.
    pub unknown: u32,
    /// Mean score over the agents that report one.
    pub mean_score: Option<f64>,
    /// Lowest score.
    pub lowest_score: Option<f64>,
}

/// The agents' own health reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthView {
    /// Agents with a report.
    pub reported: usize,
    /// libp2p over the agents.
    pub libp2p: TransportSummary,
    /// iroh over the agents.
    pub iroh: TransportSummary,
    /// The highest partition risk any agent reports.
    pub highest_partition_risk: Option<f64>,
    /// The reports, worst first (lowest score, then highest partition
    /// risk), at most [`HEALTH_NODES`].
    pub nodes: Vec<NodeHealth>,
}

/// One plan's analysis over time.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubjectHistory {
    /// `ns/name`.
    pub plan: String,
    /// Oldest first.
    pub points: Vec<AnalysisPoint>,
}

fn rfc3339(t: Option<&Time>) -> Option<String> {
    t.map(|t| t.0.to_string())
}

/// A stored plan as the dashboard shows it.
pub fn plan_view(obj: &DynamicObject, now: Timestamp) -> PlanView {
    let namespace = obj.metadata.namespace.clone().unwrap_or_default();
    let name = obj.metadata.name.clone().unwrap_or_default();
    let plan: MigrationPlan = match decode(obj, "MigrationPlan") {
        Ok(p) => p,
        Err(e) => {
            return PlanView {
                namespace,
                name,
                invalid: Some(e),
                phase: "Invalid".into(),
                finished: true,
                ..Default::default()
            };
        }
    };
    let s = plan.status.clone().unwrap_or_default();
    PlanView {
        namespace,
        name,
        invalid: None,
        phase: format!("{:?}", s.phase),
        finished: s.phase.is_terminal(),
        stages: plan.spec.stages.clone(),
        stage: s.stage,
        stage_mode: s
            .stage_mode
            .or_else(|| plan.spec.stages.get(s.stage as usize).copied()),
        waves: plan.spec.waves.clone(),
        wave: s.wave,
        canary: plan.spec.canary.is_some(),
        progress_percent: s.progress_percent,
        estimated_completion: rfc3339(s.estimated_completion.as_ref()),
        eta_seconds: s
            .estimated_completion
            .as_ref()
            .filter(|_| !s.phase.is_terminal())
            .map(|t| t.0.duration_since(now).as_secs().max(0)),
        start_time: rfc3339(s.start_time.as_ref()),
        completion_time: rfc3339(s.completion_time.as_ref()),
        nodes: s.nodes,
        paused: plan.spec.paused,
        pause_reason: plan.spec.pause_reason.clone(),
        message: s.message,
        last_analysis: s.last_analysis,
        rollback: s.rollback,
        rollback_history: s.rollback_history,
        blocked_nodes: s.blocked_nodes,
    }
}

fn summary<'a>(reports: impl Iterator<Item = &'a super::TransportHealth>) -> TransportSummary {
    let mut t = TransportSummary::default();
    let (mut sum, mut n) = (0.0, 0u32);
    for r in reports {
        match r.state.as_deref() {
            Some("Healthy") => t.healthy += 1,
            Some("Degraded") => t.degraded += 1,
            Some("Unhealthy") => t.unhealthy += 1,
            _ => t.unknown += 1,
        }
        if let Some(score) = r.score {
            sum += score;
            n += 1;
            t.lowest_score = Some(t.lowest_score.map_or(score, |l: f64| l.min(score)));
        }
    }
    t.mean_score = (n > 0).then(|| sum / f64::from(n));
    t
}

/// The health view of `reports`.
pub fn health_view(reports: &[NodeHealth]) -> HealthView {
    let mut nodes = reports.to_vec();
    // Unknown scores first (no data is not healthy), then the lowest.
    nodes.sort_by(|a, b| {
        let score = |h: &NodeHealth| h.score.unwrap_or(-1.0);
        score(a)
            .total_cmp(&score(b))
            .then_with(|| {
                let risk = |h: &NodeHealth| h.partition_risk.unwrap_or(0.0);
                risk(b).total_cmp(&risk(a))
            })
            .then_with(|| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)))
    });
    HealthView {
        reported: reports.len(),
        libp2p: summary(reports.iter().map(|r| &r.libp2p)),
        iroh: summary(reports.iter().map(|r| &r.iroh)),
        highest_partition_risk: reports
            .iter()
            .filter_map(|r| r.partition_risk)
            .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r)))),
        nodes: nodes.into_iter().take(HEALTH_NODES).collect(),
    }
}

/// The whole snapshot at `now`.
pub fn snapshot(
    board: &Board,
    plans: &[Arc<DynamicObject>],
    nodes: &[Arc<FleetNode>],
    leader: bool,
    now: Timestamp,
) -> Snapshot {
    let mut plans: Vec<PlanView> = plans.iter().map(|p| plan_view(p, now)).collect();
    plans.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let (history, reports, analysis) = board.read(|s| {
        (
            s.fleet.iter().cloned().collect::<Vec<_>>(),
            s.health.values().cloned().collect::<Vec<_>>(),
            s.analysis
                .iter()
                .map(|(k, v)| SubjectHistory {
                    plan: k.clone(),
                    points: v.iter().cloned().collect(),
                })
                .collect::<Vec<_>>(),
        )
    });
    Snapshot {
        generated_at: now.as_millisecond(),
        leader,
        plans,
        fleet: FleetView {
            total: nodes.len(),
            now: FleetPoint::of(nodes.iter().map(|n| n.as_ref()), now),
            history,
        },
        health: health_view(&reports),
        analysis,
    }
}
