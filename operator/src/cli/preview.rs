//! `kubectl switchyard start --dry-run`: what a plan would do to the live
//! fleet, computed by the real planner in its simulator. Pure: the fleet,
//! the plan, the write rate and `now` in, the schedule out.
//!
//! The simulation acknowledges every node at once and passes every
//! analysis, so the schedule is the plan's shape over this fleet (which
//! nodes go in each canary and wave, from which modes, in what order, and
//! whether the fleet-wide island guard would hold a step), and its
//! duration is the waits and writes alone: the live ETA adds the time the
//! nodes take to switch.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use jiff::Timestamp;
use kube::ResourceExt;
use serde::Serialize;
use switchyard_crds::{FleetNode, MigrationPlan, NetworkMode, PlanPhase};

use crate::planner::sim::Sim;
use crate::planner::{NodeView, selection};

/// One step of the schedule.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    /// `STAGE/WAVE` or `STAGE/canary`, as the planner names it.
    pub step: String,
    /// The mode its nodes go to.
    pub mode: NetworkMode,
    /// The nodes it moves, in order.
    pub nodes: Vec<String>,
    /// Their modes before the step, counted.
    pub from: BTreeMap<String, usize>,
    /// Seconds from the start until the step begins.
    pub starts_after_seconds: f64,
    /// Seconds its writes take at the write rate.
    pub write_seconds: f64,
}

/// Count patch `p`, made `at` seconds in, into its step.
fn record(
    steps: &mut Vec<Step>,
    modes: &mut BTreeMap<String, NetworkMode>,
    p: &crate::planner::NodePatch,
    at: f64,
    write_qps: f64,
) {
    let i = match steps
        .iter()
        .position(|s| s.step == p.step && s.mode == p.mode)
    {
        Some(i) => i,
        None => {
            steps.push(Step {
                step: p.step.clone(),
                mode: p.mode,
                nodes: Vec::new(),
                from: BTreeMap::new(),
                starts_after_seconds: at,
                write_seconds: 0.0,
            });
            steps.len() - 1
        }
    };
    let s = &mut steps[i];
    s.nodes.push(p.node.clone());
    let from = modes
        .insert(p.node.clone(), p.mode)
        .unwrap_or(NetworkMode::LibP2pOnly);
    *s.from.entry(from.to_string()).or_default() += 1;
    #[allow(clippy::cast_precision_loss)]
    let writes = s.nodes.len() as f64;
    s.write_seconds = writes / write_qps;
}

/// The whole schedule.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Preview {
    /// FleetNodes in the namespace.
    pub fleet: usize,
    /// Of them, those the plan selects.
    pub selected: usize,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// How the simulation ended: `Succeeded`, or why it stopped.
    pub outcome: String,
    /// Seconds from start to the end (waits and writes; switching is
    /// taken as instant).
    pub duration_seconds: f64,
    /// The write rate assumed, writes a second.
    pub write_qps: f64,
}

/// Simulate `plan` over `fleet` (the FleetNodes of its namespace).
pub fn preview(
    plan: &MigrationPlan,
    fleet: &[FleetNode],
    write_qps: f64,
    now: Timestamp,
) -> Preview {
    let mut sim = Sim::new(plan.spec.clone(), 0, NetworkMode::LibP2pOnly);
    sim.name = plan.name_any();
    sim.now = now;
    sim.write_qps = Some(write_qps);
    let mut modes: BTreeMap<String, NetworkMode> = BTreeMap::new();
    for n in fleet {
        let mode = n.applied_mode().unwrap_or(NetworkMode::LibP2pOnly);
        if selection::matches(&plan.spec.selector, n.labels()) {
            sim.add_node(&n.name_any(), mode);
            modes.insert(n.name_any(), mode);
        } else {
            sim.outside.push(NodeView::from_fleet_node(n, None));
        }
    }
    let selected = modes.len();
    let mut steps: Vec<Step> = Vec::new();
    let mut idle = 0;
    let outcome = loop {
        if plan.spec.analysis.is_some() {
            sim.verdict(switchyard_crds::Verdict::Pass);
        }
        let d = sim.reconcile();
        let at = sim.now.duration_since(now).as_secs_f64();
        for p in d.patches.iter().filter(|p| p.step.contains('/')) {
            record(&mut steps, &mut modes, p, at, write_qps);
        }
        let status = sim.status.clone().unwrap_or_default();
        match status.phase {
            PlanPhase::Succeeded => break "Succeeded".to_owned(),
            PlanPhase::Invalid | PlanPhase::Failed | PlanPhase::RolledBack => {
                break format!("{:?}: {}", status.phase, status.message.unwrap_or_default());
            }
            _ => {}
        }
        sim.ack_all();
        idle = if d.patches.is_empty() && d.requeue_at.is_none() {
            idle + 1
        } else {
            0
        };
        if idle > 20 || steps.len() > 10_000 {
            break format!("stops: {}", status.message.unwrap_or_default());
        }
        // Nodes just told acknowledge at once: look again a second later;
        // otherwise wait for what the planner waits for.
        let next = if d.patches.is_empty() {
            d.requeue_at
                .filter(|t| *t > sim.now)
                .map_or(1, |t| t.duration_since(sim.now).as_secs().max(1))
        } else {
            1
        };
        sim.advance(next);
    };
    let writes: f64 = steps.iter().map(|s| s.write_seconds).sum();
    Preview {
        fleet: fleet.len(),
        selected,
        steps,
        outcome,
        duration_seconds: sim.now.duration_since(now).as_secs_f64() + writes,
        write_qps,
    }
}

/// The preview as a table.
pub fn render(plan: &MigrationPlan, p: &Preview) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Dry run of MigrationPlan {}/{} against {} FleetNodes ({} selected, {} outside the plan, all checked for islands).",
        plan.namespace().unwrap_or_default(),
        plan.name_any(),
        p.fleet,
        p.selected,
        p.fleet - p.selected,
    );
    let rows: Vec<Vec<String>> = p
        .steps
        .iter()
        .map(|s| {
            let (stage, step) = s.step.split_once('/').unwrap_or((&s.step, ""));
            let stage = stage
                .parse::<u32>()
                .map_or_else(|_| stage.to_owned(), |n| (n + 1).to_string());
            let step = step
                .parse::<u32>()
                .map_or_else(|_| step.to_owned(), |w| format!("wave {}", w + 1));
            let from: Vec<String> = s.from.iter().map(|(m, n)| format!("{m} {n}")).collect();
            let first: Vec<&str> = s.nodes.iter().take(3).map(String::as_str).collect();
            let more = s.nodes.len().saturating_sub(3);
            vec![
                stage,
                step,
                s.mode.to_string(),
                s.nodes.len().to_string(),
                from.join(", "),
                super::render::age(secs(s.starts_after_seconds)),
                format!("{:.2}s", s.write_seconds),
                if more > 0 {
                    format!("{} +{more}", first.join(", "))
                } else {
                    first.join(", ")
                },
            ]
        })
        .collect();
    out.push_str(&super::render::table(
        &[
            "STAGE",
            "STEP",
            "MODE",
            "NODES",
            "FROM",
            "STARTS AFTER",
            "WRITES",
            "NODES (FIRST)",
        ],
        &rows,
    ));
    let _ = writeln!(
        out,
        "Writes: at most {} a second (--write-qps); the largest step writes {} nodes.",
        p.write_qps,
        p.steps.iter().map(|s| s.nodes.len()).max().unwrap_or(0)
    );
    let _ = writeln!(
        out,
        "Outcome: {} after {} of waits and writes (switching taken as instant; analysis passing).",
        p.outcome,
        super::render::age(secs(p.duration_seconds))
    );
    out
}

fn secs(s: f64) -> i64 {
    #[allow(clippy::cast_possible_truncation)]
    let whole = s.round() as i64;
    whole
}
