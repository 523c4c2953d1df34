//! A deterministic, in-memory fleet for exercising the planner: FleetNodes
//! with generations, agents that acknowledge (or do not), node churn,
//! analysis verdicts and a clock. It applies a [`Decision`] the way the
//! operator and the API server would (spec.mode bumps the generation; the
//! plan label and annotations do not). Used by the planner's tests, its
//! property tests and its benchmark.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use switchyard_crds::{MigrationPlanSpec, MigrationPlanStatus, NetworkMode, Verdict, forms_island};

use super::{AnalysisInput, Decision, NodeView, PlanInput, TriggerInput, plan};

/// One simulated FleetNode and its agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimNode {
    /// spec.mode.
    pub desired: Option<NetworkMode>,
    /// status.appliedMode.
    pub applied: Option<NetworkMode>,
    /// metadata.generation.
    pub generation: i64,
    /// status.observedGeneration.
    pub observed: i64,
    /// The plan label.
    pub owner: Option<String>,
    /// The start-mode annotation.
    pub start_mode: Option<NetworkMode>,
    /// The step annotation.
    pub step: Option<String>,
    /// Held by another plan.
    pub held_by: Option<String>,
    /// The mode the agent started in (its configuration).
    pub initial: NetworkMode,
}

impl SimNode {
    /// A freshly registered node reporting `mode`.
    pub fn new(mode: NetworkMode) -> Self {
        SimNode {
            desired: None,
            applied: Some(mode),
            generation: 1,
            observed: 1,
            owner: None,
            start_mode: None,
            step: None,
            held_by: None,
            initial: mode,
        }
    }

    /// Whether the agent has acknowledged its spec.
    pub fn acknowledged(&self) -> bool {
        match (self.desired, self.applied) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(d), Some(a)) => self.observed >= self.generation && d == a,
        }
    }
}

/// A plan and its fleet.
#[derive(Debug, Clone)]
pub struct Sim {
    /// The plan's name.
    pub name: String,
    /// The plan's generation.
    pub generation: i64,
    /// The plan's spec.
    pub spec: MigrationPlanSpec,
    /// The plan's status as last written.
    pub status: Option<MigrationPlanStatus>,
    /// The selected FleetNodes by name.
    pub nodes: BTreeMap<String, SimNode>,
    /// The clock.
    pub now: Timestamp,
    /// The analysis the operator would report.
    pub analysis: Option<AnalysisInput>,
    /// A fired trigger.
    pub trigger: Option<TriggerInput>,
    /// Whether an alert paused the plan (the paused-by annotation).
    pub paused_by_alert: bool,
    /// The rest of the fleet: FleetNodes of the namespace this plan does
    /// not select (another team's, another plan's). The plan never moves
    /// them; tests move them, or run a second plan over them.
    pub outside: Vec<NodeView>,
    /// The operator's write rate the planner is told (for its ETA).
    pub write_qps: Option<f64>,
}

impl Sim {
    /// A plan over `nodes` fresh nodes named `node-0000`... in `mode`.
    pub fn new(spec: MigrationPlanSpec, nodes: usize, mode: NetworkMode) -> Self {
        let mut sim = Sim {
            name: "plan".into(),
            generation: 1,
            spec,
            status: None,
            nodes: BTreeMap::new(),
            now: Timestamp::from_second(1_800_000_000).unwrap_or(Timestamp::UNIX_EPOCH),
            analysis: None,
            trigger: None,
            paused_by_alert: false,
            outside: Vec::new(),
            write_qps: None,
        };
        for i in 0..nodes {
            sim.add_node(&format!("node-{i:05}"), mode);
        }
        sim
    }

    /// Register a node reporting `mode`.
    pub fn add_node(&mut self, name: &str, mode: NetworkMode) {
        self.nodes.insert(name.to_owned(), SimNode::new(mode));
    }

    /// The planner's view of the nodes.
    pub fn views(&self) -> Vec<NodeView> {
        self.nodes
            .iter()
            .map(|(name, n)| NodeView {
                name: name.clone(),
                desired: n.desired,
                applied: n.applied,
                acknowledged: n.acknowledged(),
                owner: n.owner.clone(),
                start_mode: n.start_mode,
                step: n.step.clone(),
                held_by: n.held_by.clone(),
            })
            .collect()
    }

    /// Run the planner on the current state without applying anything.
    pub fn decide(&self) -> Decision {
        let views = self.views();
        plan(&PlanInput {
            name: &self.name,
            generation: self.generation,
            spec: &self.spec,
            status: self.status.as_ref(),
            nodes: &views,
            outside: &self.outside,
            analysis: self.analysis.as_ref(),
            trigger: self.trigger.as_ref(),
            tally: None,
            paused_by_alert: self.paused_by_alert,
            write_qps: self.write_qps,
            now: self.now,
        })
    }

    /// Run the planner and apply its decision.
    pub fn reconcile(&mut self) -> Decision {
        let decision = self.decide();
        self.apply(&decision);
        decision
    }

    /// Apply a decision as the operator and API server would.
    pub fn apply(&mut self, decision: &Decision) {
        for p in &decision.patches {
            if let Some(n) = self.nodes.get_mut(&p.node) {
                if n.desired != Some(p.mode) {
                    n.generation += 1;
                }
                n.desired = Some(p.mode);
                n.owner = Some(self.name.clone());
                n.start_mode = Some(p.start_mode);
                n.step = Some(p.step.clone());
            }
        }
        if let Some(pause) = &decision.pause
            && !self.spec.paused
        {
            self.spec.paused = true;
            self.paused_by_alert = pause.by_alert;
            self.generation += 1;
        }
        if decision.resume {
            self.spec.paused = false;
            self.paused_by_alert = false;
            self.generation += 1;
        }
        self.status = Some(decision.status.clone());
    }

    /// The agent of `name` applies its desired mode.
    pub fn ack(&mut self, name: &str) {
        if let Some(n) = self.nodes.get_mut(name) {
            if let Some(d) = n.desired {
                n.applied = Some(d);
            }
            n.observed = n.generation;
        }
    }

    /// Every agent applies its desired mode.
    pub fn ack_all(&mut self) {
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for name in names {
            self.ack(&name);
        }
    }

    /// Move the clock on.
    pub fn advance(&mut self, secs: i64) {
        self.now = self
            .now
            .checked_add(SignedDuration::from_secs(secs))
            .unwrap_or(self.now);
    }

    /// Report a verdict whose window starts now-ish (fresh for any step
    /// acknowledged at or before `now`).
    pub fn verdict(&mut self, verdict: Verdict) {
        self.analysis = Some(AnalysisInput {
            verdict,
            window_start: self.now,
            result: None,
            pending: false,
        });
    }

    /// Nodes that have not acknowledged their spec.
    pub fn unacknowledged(&self) -> usize {
        self.nodes
            .values()
            .filter(|n| n.held_by.is_none() && !n.acknowledged())
            .count()
    }

    /// Whether the fleet, counting desired and applied modes, holds both
    /// single-stack modes.
    pub fn has_island(&self) -> bool {
        let outside = self.outside.iter().flat_map(|o| [o.desired, o.applied]);
        forms_island(
            self.nodes
                .values()
                .flat_map(|n| [n.desired, n.applied])
                .chain(outside)
                .flatten(),
        )
    }

    /// The phase as last written.
    pub fn phase(&self) -> switchyard_crds::PlanPhase {
        self.status.as_ref().map(|s| s.phase).unwrap_or_default()
    }

    /// Reconcile, acknowledge everything and move the clock on `step_secs`,
    /// with a passing verdict, until `done` holds or `max_rounds` pass.
    /// Returns the number of rounds taken, or `None` if `done` never held.
    pub fn drive(
        &mut self,
        step_secs: i64,
        max_rounds: usize,
        done: impl Fn(&Sim) -> bool,
    ) -> Option<usize> {
        for round in 0..max_rounds {
            if done(self) {
                return Some(round);
            }
            self.verdict(Verdict::Pass);
            self.reconcile();
            self.ack_all();
            self.advance(step_secs);
        }
        done(self).then_some(max_rounds)
    }
}
