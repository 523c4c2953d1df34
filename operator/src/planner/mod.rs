//! The migration planner: pure decision code. Given a plan's spec and
//! status, the FleetNodes it selects, the latest analysis verdict, a fired
//! rollback trigger and `now`, it returns the new status and the actions
//! that move the fleet one step on. No I/O, no clock, no randomness: the
//! same input always gives the same output, so a restarted operator (or a
//! second replica) recomputes the same decision and never steps a node
//! twice.
//!
//! Safety rules it keeps on every call:
//! - the island invariant, through [`guard::ModeBag`];
//! - at most `maxUnavailable` unacknowledged nodes after its patches;
//! - per-node facts (start mode, the step that moved a node, the owning
//!   plan) go on the FleetNode, never into the plan's status.

pub mod canary;
pub mod event;
pub mod guard;
pub mod owned;
pub mod selection;
pub mod sim;

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use switchyard_crds::plan::{
    AlertAction, AnalysisResult, BlockedNode, ModeCounts, NodeCounts, RollbackRecord,
};
use switchyard_crds::{
    ANNOTATION_STEP, Analysis, AnalysisTally, Duration, FleetNode, InconclusiveAction, LABEL_PLAN,
    MigrationPlanSpec, MigrationPlanStatus, NetworkMode, PlanPhase, RollbackScope,
    RollbackStrategy, Verdict, validate,
};

pub use event::{Event, Severity, Trigger};
use guard::ModeBag;

/// How many blocked nodes the status names; the rest are only counted.
pub const MAX_NAMED_NODES: usize = 10;
/// How many finished rollbacks the status keeps.
pub const MAX_ROLLBACK_HISTORY: usize = 10;

/// What the planner needs to know about one selected FleetNode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// FleetNode name.
    pub name: String,
    /// `spec.mode`.
    pub desired: Option<NetworkMode>,
    /// `status.appliedMode`; `None` until the agent reports.
    pub applied: Option<NetworkMode>,
    /// Observed the current generation and runs the desired mode.
    pub acknowledged: bool,
    /// The plan named by the node's `switchyard.dev/plan` label.
    pub owner: Option<String>,
    /// The `switchyard.dev/start-mode` annotation.
    pub start_mode: Option<NetworkMode>,
    /// The `switchyard.dev/step` annotation.
    pub step: Option<String>,
    /// Who else holds this node (`MigrationPlan old`, `MigrationCanary trial`);
    /// this plan must not touch it.
    pub held_by: Option<String>,
}

impl NodeView {
    /// Read a FleetNode; `held_by` is the other plan holding it, if any.
    pub fn from_fleet_node(node: &FleetNode, held_by: Option<String>) -> Self {
        let labels = node.metadata.labels.as_ref();
        let annotations = node.metadata.annotations.as_ref();
        let owner = labels.and_then(|l| l.get(LABEL_PLAN)).cloned();
        // A plan's node whose start mode cannot be read cannot be rolled
        // back correctly: nobody moves it until a person fixes it.
        let (start_mode, bad_start) = match node.start_mode() {
            Ok(m) => (m, None),
            Err(why) if owner.is_some() => (None, Some(why)),
            Err(_) => (None, None),
        };
        NodeView {
            name: node.metadata.name.clone().unwrap_or_default(),
            desired: node.desired_mode(),
            applied: node.applied_mode(),
            acknowledged: node.acknowledged(),
            owner,
            start_mode,
            step: annotations.and_then(|a| a.get(ANNOTATION_STEP)).cloned(),
            held_by: held_by.or(bad_start),
        }
    }
}

/// The latest analysis for this plan.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalysisInput {
    /// The verdict.
    pub verdict: Verdict,
    /// Start of the window the verdict covers. Only verdicts whose window
    /// starts at or after the current step's acknowledgement count.
    pub window_start: Timestamp,
    /// Details for status.lastAnalysis.
    pub result: Option<AnalysisResult>,
    /// Not a verdict yet: the latest measurement, within failureLimit and
    /// inconclusiveLimit but short of consecutiveSuccesses. The planner
    /// shows it and keeps waiting.
    pub pending: bool,
}

/// A rollback trigger that fired: a metric trigger or a matching alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerInput {
    /// HighErrorRate, LatencyRegression, NetworkPartition,
    /// HealthCheckFailure or Alert.
    pub trigger: Trigger,
    /// Details, e.g. the alert's name and labels.
    pub reason: String,
}

/// Everything one planning step looks at.
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    /// The plan's name.
    pub name: &'a str,
    /// The plan's metadata.generation.
    pub generation: i64,
    /// The plan's spec.
    pub spec: &'a MigrationPlanSpec,
    /// The plan's current status, if any.
    pub status: Option<&'a MigrationPlanStatus>,
    /// The FleetNodes the selector picks, in any order.
    pub nodes: &'a [NodeView],
    /// The rest of the fleet (every other FleetNode of the namespace:
    /// unselected, or other plans' and Canaries'). They never move for
    /// this plan, but no step may cut them off: nobody goes IrohOnly while
    /// one of them runs LibP2pOnly, and the other way round.
    pub outside: &'a [NodeView],
    /// The latest analysis, if any.
    pub analysis: Option<&'a AnalysisInput>,
    /// A fired rollback trigger, if any.
    pub trigger: Option<&'a TriggerInput>,
    /// The analysis's running count, to keep in status (a new leader's
    /// analysis continues from it); `None` keeps the one status holds.
    pub tally: Option<&'a AnalysisTally>,
    /// Whether an alert paused the plan (the paused-by annotation says
    /// `alert`).
    pub paused_by_alert: bool,
    /// The operator's FleetNode write rate (writes a second), for the
    /// ETA; `None` leaves it out.
    pub write_qps: Option<f64>,
    /// The current time.
    pub now: Timestamp,
}

/// Set one FleetNode's desired mode (server-side apply of spec.mode plus the
/// plan label and the start-mode and step annotations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePatch {
    /// FleetNode name.
    pub node: String,
    /// The new spec.mode.
    pub mode: NetworkMode,
    /// The mode the node had when this plan first moved it.
    pub start_mode: NetworkMode,
    /// The step moving it: `<stage>/<wave>`, `<stage>/canary`, `hold`,
    /// `final` or `rollback`.
    pub step: String,
}

/// What to do with the plan's owned MigrationCanary object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CanaryAction {
    /// Create or update the MigrationCanary for this stage.
    Ensure {
        /// Stage index.
        stage: u32,
        /// The stage's mode.
        mode: NetworkMode,
        /// The canary nodes.
        nodes: Vec<String>,
        /// How long it runs.
        duration: Duration,
    },
    /// The stage's canary is over.
    Finish {
        /// Stage index.
        stage: u32,
        /// Its verdict.
        verdict: Verdict,
    },
}

/// A lifecycle transition; the operator records each as an Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The spec is invalid; nothing changes.
    Invalid(String),
    /// Nodes keep the plan from starting or finishing a stage.
    Blocked(String),
    /// A stage's canary started.
    CanaryStarted {
        stage: u32,
        mode: NetworkMode,
        nodes: u32,
    },
    /// A stage's canary passed.
    CanaryPassed { stage: u32 },
    /// A wave started.
    WaveStarted {
        stage: u32,
        wave: u32,
        mode: NetworkMode,
        target: u32,
    },
    /// Every node acknowledged a stage.
    StageCompleted { stage: u32, mode: NetworkMode },
    /// The plan paused.
    Paused(String),
    /// The plan resumed.
    Resumed,
    /// The alerts that paused the plan resolved; it resumes.
    AlertsResolved,
    /// Nodes missed the progress deadline.
    ProgressDeadlineExceeded(String),
    /// A rollback began.
    RollbackStarted { trigger: Trigger, reason: String },
    /// A rollback finished.
    RollbackFinished { nodes: u32 },
    /// Every stage finished.
    Succeeded,
    /// The plan stopped and needs a person.
    Failed(String),
}

impl Transition {
    /// The Event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Transition::Invalid(_) => "PlanInvalid",
            Transition::Blocked(_) => "NodeBlocked",
            Transition::CanaryStarted { .. } => "CanaryStarted",
            Transition::CanaryPassed { .. } => "CanaryPassed",
            Transition::WaveStarted { .. } => "WaveStarted",
            Transition::StageCompleted { .. } => "StageCompleted",
            Transition::Paused(_) => "Paused",
            Transition::Resumed => "Resumed",
            Transition::AlertsResolved => "AlertsResolved",
            Transition::ProgressDeadlineExceeded(_) => "ProgressDeadlineExceeded",
            Transition::RollbackStarted { .. } => "RollbackStarted",
            Transition::RollbackFinished { .. } => "RollbackFinished",
            Transition::Succeeded => "Succeeded",
            Transition::Failed(_) => "Failed",
        }
    }

    /// Whether the Event is a Warning.
    pub fn is_warning(&self) -> bool {
        matches!(
            self,
            Transition::Invalid(_)
                | Transition::Blocked(_)
                | Transition::ProgressDeadlineExceeded(_)
                | Transition::RollbackStarted { .. }
                | Transition::Failed(_)
        )
    }

    /// The Event message.
    pub fn message(&self) -> String {
        match self {
            Transition::Invalid(m) | Transition::Blocked(m) | Transition::Paused(m) => m.clone(),
            Transition::ProgressDeadlineExceeded(m) | Transition::Failed(m) => m.clone(),
            Transition::CanaryStarted { stage, mode, nodes } => {
                format!("stage {stage}: canary of {nodes} node(s) switching to {mode}")
            }
            Transition::CanaryPassed { stage } => format!("stage {stage}: canary passed"),
            Transition::WaveStarted {
                stage,
                wave,
                mode,
                target,
            } => {
                format!("stage {stage} wave {wave}: bringing {target} node(s) to {mode}")
            }
            Transition::StageCompleted { stage, mode } => {
                format!("stage {stage}: every node runs {mode}")
            }
            Transition::Resumed => "resumed".into(),
            Transition::AlertsResolved => {
                "the alerts that paused the plan resolved; resuming".into()
            }
            Transition::RollbackStarted { trigger, reason } => {
                format!("rollback ({trigger}): {reason}")
            }
            Transition::RollbackFinished { nodes } => {
                format!("rollback finished: {nodes} node(s) returned")
            }
            Transition::Succeeded => "every stage finished".into(),
        }
    }
}

/// The planner's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The plan's new status.
    pub status: MigrationPlanStatus,
    /// FleetNode mode changes, in order.
    pub patches: Vec<NodePatch>,
    /// What to do with the owned MigrationCanary.
    pub canary: Option<CanaryAction>,
    /// Set spec.paused to true.
    pub pause: Option<Pause>,
    /// Set spec.paused to false and drop the paused-by annotation: the
    /// alerts that paused the plan resolved. Nothing else happens in this
    /// decision; the spec change brings the plan back.
    pub resume: bool,
    /// Nodes per desired mode once this decision's writes land (nodes
    /// another plan holds not counted): the `nodes_desired` gauge.
    pub desired: ModeCounts,
    /// Transitions to record as Events.
    pub transitions: Vec<Transition>,
    /// Reconcile again at this time even if nothing changes.
    pub requeue_at: Option<Timestamp>,
}

/// Setting spec.paused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pause {
    /// Why, for the Event and status.
    pub reason: String,
    /// An alert paused it: marked so the plan resumes by itself when the
    /// alerts resolve, if it asks to.
    pub by_alert: bool,
}

/// Decide the next step of one plan.
pub fn plan(input: &PlanInput<'_>) -> Decision {
    if resumes_after_alerts(input) {
        return Decision {
            status: input.status.cloned().unwrap_or_default(),
            patches: Vec::new(),
            canary: None,
            pause: None,
            resume: true,
            desired: desired_counts(input.nodes.iter().map(|v| (v, v.desired.or(v.applied)))),
            transitions: vec![Transition::AlertsResolved],
            requeue_at: None,
        };
    }
    let mut p = Planner::new(input);
    p.run();
    p.finish()
}

/// Paused by alerts that have all resolved, and the plan asks to go on.
fn resumes_after_alerts(input: &PlanInput<'_>) -> bool {
    input.spec.paused
        && input.paused_by_alert
        && input.spec.rollback.resume_when_alerts_resolve
        && input.trigger.is_none()
}

/// Nodes per desired mode (spec.mode, else applied), of those no other
/// plan holds.
fn desired_counts<'a>(
    nodes: impl IntoIterator<Item = (&'a NodeView, Option<NetworkMode>)>,
) -> ModeCounts {
    let mut counts = ModeCounts::default();
    for (v, desired) in nodes {
        if let Some(m) = desired.filter(|_| v.held_by.is_none()) {
            counts.add(m);
        }
    }
    counts
}

/// Where a deleted plan leaves each of its nodes: the mode it has now
/// (deleting a plan is not a rollback; `spec.rollbackRequest` is).
pub fn release_targets(plan: &str, nodes: &[NodeView]) -> Vec<(String, NetworkMode)> {
    nodes
        .iter()
        .filter(|v| v.owner.as_deref() == Some(plan))
        .map(|v| {
            let mode = v.desired.or(v.applied).unwrap_or(NetworkMode::LibP2pOnly);
            (v.name.clone(), mode)
        })
        .collect()
}

/// The decision for a plan whose stored object cannot be read at all (a
/// value of the wrong type, a field the schema does not declare: what an
/// API server without validation lets through): Invalid, with `message`
/// naming the field; no node is touched.
pub fn unreadable(
    name: &str,
    generation: i64,
    status: Option<&MigrationPlanStatus>,
    message: String,
    now: Timestamp,
) -> Decision {
    // Stands in for the spec that could not be read; never planned from.
    let spec: MigrationPlanSpec = serde_json::from_value(serde_json::json!({
        "selector": {},
        "stages": ["DualPreferLibP2p"],
    }))
    .expect("the minimal spec decodes");
    let input = PlanInput {
        name,
        generation,
        spec: &spec,
        status,
        nodes: &[],
        outside: &[],
        analysis: None,
        trigger: None,
        tally: None,
        paused_by_alert: false,
        write_qps: None,
        now,
    };
    let mut p = Planner::new(&input);
    p.mark_invalid(message);
    p.finish()
}

/// A stable, well-spread order of nodes within a plan (FNV-1a of plan and
/// node name), so canaries and early waves do not all come from one
/// StatefulSet's lowest ordinals.
pub fn order_key(plan: &str, node: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in plan.bytes().chain([b'/']).chain(node.bytes()) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

struct Node<'a> {
    view: &'a NodeView,
    /// Effective desired mode (spec.mode, else the applied mode).
    desired: Option<NetworkMode>,
    acked: bool,
    /// Reports a mode and is not held by another plan.
    managed: bool,
    /// Start mode recorded by this plan.
    start: Option<NetworkMode>,
    /// Step annotation recorded by this plan.
    step: Option<&'a str>,
}

enum Gate {
    Pass,
    Fail(String),
    Inconclusive(String),
    Waiting,
}

struct Planner<'a> {
    input: &'a PlanInput<'a>,
    spec: &'a MigrationPlanSpec,
    prev: MigrationPlanStatus,
    st: MigrationPlanStatus,
    nodes: Vec<Node<'a>>,
    bag: ModeBag,
    max_unavailable: usize,
    unacked: usize,
    patches: Vec<NodePatch>,
    canary: Option<CanaryAction>,
    pause: Option<Pause>,
    transitions: Vec<Transition>,
    requeue_at: Option<Timestamp>,
    blocked: BTreeMap<String, String>,
    deadline_exceeded: bool,
    invalid: Option<String>,
    /// A step toward this single-stack mode waits on nodes outside the
    /// plan that run the other one.
    island_wait: Option<NetworkMode>,
    /// What the plan waits on, when it is the rest of the fleet.
    island_msg: Option<String>,
    /// Whether a node outside the plan runs or is told to run
    /// (LibP2pOnly, IrohOnly).
    outside_single: (bool, bool),
}

/// A step's name: `STAGE/WAVE`, or `STAGE/canary` while the stage's
/// canary runs (what `spec.promote.step` names).
pub fn step_id(stage: u32, wave: Option<u32>) -> String {
    match wave {
        Some(w) => format!("{stage}/{w}"),
        None => format!("{stage}/canary"),
    }
}

fn ts(t: &Option<Time>) -> Option<Timestamp> {
    t.as_ref().map(|t| t.0)
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    let d = SignedDuration::try_from(d.as_std()).unwrap_or(SignedDuration::MAX);
    t.checked_add(d).unwrap_or(Timestamp::MAX)
}

fn ceil_share(percent: u8, total: usize) -> usize {
    (total * usize::from(percent)).div_ceil(100)
}

impl<'a> Planner<'a> {
    fn new(input: &'a PlanInput<'a>) -> Self {
        let prev = input.status.cloned().unwrap_or_default();
        let mut st = prev.clone();
        st.observed_generation = Some(input.generation);
        if let Some(t) = input.tally {
            st.analysis_tally = Some(t.clone());
        }
        let mut nodes: Vec<Node<'a>> = input
            .nodes
            .iter()
            .map(|v| {
                let mine = v.owner.as_deref() == Some(input.name);
                Node {
                    view: v,
                    desired: v.desired.or(v.applied),
                    acked: v.acknowledged || v.desired.is_none(),
                    managed: v.applied.is_some() && v.held_by.is_none(),
                    start: if mine { v.start_mode } else { None },
                    step: if mine { v.step.as_deref() } else { None },
                }
            })
            .collect();
        nodes.sort_by_cached_key(|n| {
            let view: &'a NodeView = n.view;
            (order_key(input.name, &view.name), view.name.as_str())
        });
        let mut bag = ModeBag::default();
        for n in &nodes {
            if let Some(d) = n.desired {
                bag.add_node(d, n.view.applied);
            }
        }
        let mut outside_single = (false, false);
        for o in input.outside {
            if let Some(d) = o.desired.or(o.applied) {
                bag.add_node(d, o.applied);
            }
            for m in [o.desired, o.applied].into_iter().flatten() {
                outside_single.0 |= m == NetworkMode::LibP2pOnly;
                outside_single.1 |= m == NetworkMode::IrohOnly;
            }
        }
        let managed = nodes.iter().filter(|n| n.managed).count();
        let max_unavailable = validate::max_unavailable(
            &input.spec.max_unavailable,
            u32::try_from(managed).unwrap_or(u32::MAX),
        )
        .map(|m| usize::try_from(m).unwrap_or(usize::MAX))
        .unwrap_or(1);
        let unacked = nodes
            .iter()
            .filter(|n| n.view.held_by.is_none() && !n.acked)
            .count();
        // A node acknowledged since the last decision is progress: the
        // progress deadline starts over.
        let acked_now = nodes.iter().filter(|n| n.managed && n.acked).count();
        if acked_now > usize::try_from(prev.nodes.acknowledged).unwrap_or(usize::MAX) {
            st.last_progress_time = Some(Time(input.now));
        }
        Planner {
            input,
            spec: input.spec,
            prev,
            st,
            nodes,
            bag,
            max_unavailable,
            unacked,
            patches: Vec::new(),
            canary: None,
            pause: None,
            transitions: Vec::new(),
            requeue_at: None,
            blocked: BTreeMap::new(),
            deadline_exceeded: false,
            invalid: None,
            island_wait: None,
            island_msg: None,
            outside_single,
        }
    }

    fn now(&self) -> Timestamp {
        self.input.now
    }

    fn requeue(&mut self, at: Timestamp) {
        self.requeue_at = Some(self.requeue_at.map_or(at, |r| r.min(at)));
    }

    fn stage_mode(&self) -> NetworkMode {
        let s = usize::try_from(self.st.stage).unwrap_or(0);
        self.spec
            .stages
            .get(s)
            .copied()
            .unwrap_or(NetworkMode::LibP2pOnly)
    }

    fn hold_mode(&self) -> Option<NetworkMode> {
        let s = usize::try_from(self.st.stage).unwrap_or(0);
        s.checked_sub(1)
            .and_then(|p| self.spec.stages.get(p).copied())
    }

    fn step_id(&self) -> String {
        step_id(self.st.stage, self.st.wave)
    }

    /// When the current step (`step`) was all acknowledged: now, the first
    /// time, which also folds the time its batches took into the mean
    /// switch time the ETA uses.
    fn acknowledge_step(&mut self, step: &str) -> Timestamp {
        if let Some(t) = ts(&self.st.step_acknowledged_at) {
            return t;
        }
        let now = self.now();
        self.st.step_acknowledged_at = Some(Time(now));
        let switched = self.nodes.iter().filter(|n| n.step == Some(step)).count();
        if let Some(started) = ts(&self.st.step_started_at)
            && switched > 0
        {
            let batches =
                u64::try_from(switched.div_ceil(self.max_unavailable.max(1))).unwrap_or(1);
            let took =
                u64::try_from(now.duration_since(started).as_millis()).unwrap_or(0) / batches;
            // The newest step weighs a third: recent, but not one outlier.
            self.st.mean_switch_millis = Some(match self.st.mean_switch_millis {
                Some(m) => (m * 2 + took) / 3,
                None => took,
            });
        }
        now
    }

    /// Whether a person promoted `step`: its wait (canary duration or wave
    /// soak) is over; analysis still gates it.
    fn promoted(&self, step: &str) -> bool {
        self.spec.promote.as_ref().is_some_and(|p| p.step == step)
    }

    /// Tell node `i` the next mode on its way to `target`, if the guard and
    /// the budget allow. Returns whether a patch was made.
    fn step_toward(&mut self, i: usize, target: NetworkMode, step: &str) -> bool {
        let n = &self.nodes[i];
        let Some(desired) = n.desired.filter(|_| n.managed) else {
            return false;
        };
        let applied = n.view.applied;
        let next = self.bag.next_step(desired, applied, target);
        if next != Some(target) && desired != target && self.outside_opposes(target) {
            self.island_wait = Some(target);
        }
        let Some(next) = next else {
            return false;
        };
        if n.acked && self.unacked >= self.max_unavailable {
            return false;
        }
        let start = n.start.unwrap_or(desired);
        self.bag.apply(desired, applied, next);
        let n = &mut self.nodes[i];
        if n.acked {
            n.acked = false;
            self.unacked += 1;
        }
        n.desired = Some(next);
        n.start = Some(start);
        self.patches.push(NodePatch {
            node: n.view.name.clone(),
            mode: next,
            start_mode: start,
            step: step.to_owned(),
        });
        true
    }

    /// Whether any node outside the plan runs (or is told to run) the
    /// single-stack mode opposite `target`. Counted once per decision, so
    /// a step stays O(1) however large the rest of the fleet is.
    fn outside_opposes(&self, target: NetworkMode) -> bool {
        match target {
            NetworkMode::IrohOnly => self.outside_single.0,
            NetworkMode::LibP2pOnly => self.outside_single.1,
            _ => false,
        }
    }

    /// The nodes outside the plan that `target` would be cut off from:
    /// those running (or told to run) the other single-stack mode.
    fn outside_in_the_way(&self, target: NetworkMode) -> Vec<&'a NodeView> {
        let opposite = match target {
            NetworkMode::IrohOnly => NetworkMode::LibP2pOnly,
            NetworkMode::LibP2pOnly => NetworkMode::IrohOnly,
            _ => return Vec::new(),
        };
        let outside: &'a [NodeView] = self.input.outside;
        outside
            .iter()
            .filter(|o| o.desired == Some(opposite) || o.applied == Some(opposite))
            .collect()
    }

    /// A step waits on the rest of the fleet: name the nodes in the way
    /// (status, message, an Event when it starts).
    fn report_island_wait(&mut self) {
        let Some(target) = self.island_wait else {
            return;
        };
        let in_the_way = self.outside_in_the_way(target);
        let Some(first) = in_the_way.first() else {
            return;
        };
        let msg = format!(
            "waiting: {} FleetNode(s) outside this plan run {} (e.g. {}); {target} would cut them off from the fleet. Move them to a dual mode first (their plan, or select them)",
            in_the_way.len(),
            if target == NetworkMode::IrohOnly {
                NetworkMode::LibP2pOnly
            } else {
                NetworkMode::IrohOnly
            },
            first.name
        );
        for o in in_the_way.iter().take(MAX_NAMED_NODES) {
            self.blocked.insert(
                o.name.clone(),
                format!("outside this plan; {target} would cut it off"),
            );
        }
        if self.prev.message.as_deref() != Some(&msg) {
            self.transitions.push(Transition::Blocked(msg.clone()));
        }
        self.island_msg = Some(msg);
    }

    fn budget_left(&self) -> bool {
        self.unacked < self.max_unavailable
    }

    fn run(&mut self) {
        if let Err(e) = validate::object_name(self.input.name) {
            return self.mark_invalid(e.to_string());
        }
        if let Err(e) = validate::plan_spec(self.spec) {
            return self.mark_invalid(e.to_string());
        }
        if self.st.phase == PlanPhase::Invalid {
            self.st.phase = self.resume_phase();
        }
        match self.st.phase {
            PlanPhase::RolledBack => return,
            PlanPhase::RollingBack => return self.rolling_back(),
            _ => {}
        }
        if let Some(req) = &self.spec.rollback_request {
            let reason = if req.reason.is_empty() {
                "requested by spec.rollbackRequest".to_owned()
            } else {
                req.reason.clone()
            };
            return self.begin_rollback(Trigger::Manual, reason, RollbackScope::Plan);
        }
        match self.st.phase {
            PlanPhase::Succeeded => return self.hold_final(),
            PlanPhase::Failed => return,
            _ => {}
        }
        if let Some(t) = self.input.trigger
            && self.st.phase != PlanPhase::Pending
        {
            let (trigger, reason) = (t.trigger, t.reason.clone());
            if trigger == Trigger::Alert && self.spec.rollback.alert_action == AlertAction::Pause {
                // The plan asks alerts to pause it, not to roll it back.
                if !self.spec.paused && self.st.phase != PlanPhase::Paused {
                    let then = if self.spec.rollback.resume_when_alerts_resolve {
                        "it resumes when the alert resolves"
                    } else {
                        "set spec.paused to false to continue"
                    };
                    let reason = format!("{reason}; {then}");
                    self.st.phase = PlanPhase::Paused;
                    self.pause = Some(Pause {
                        reason: reason.clone(),
                        by_alert: true,
                    });
                    self.transitions.push(Transition::Paused(reason));
                }
                return;
            }
            return self.failure(trigger, reason);
        }
        if self.spec.paused {
            if self.st.phase != PlanPhase::Paused {
                self.st.phase = PlanPhase::Paused;
                self.transitions.push(Transition::Paused(match &self.spec.pause_reason {
                    Some(why) => format!(
                        "paused by spec.paused ({why}); in-flight switches finish, nothing new starts"
                    ),
                    None => {
                        "paused by spec.paused; in-flight switches finish, nothing new starts".into()
                    }
                },
                ));
            }
            return;
        }
        if self.st.phase == PlanPhase::Paused {
            self.st.phase = self.resume_phase();
            self.transitions.push(Transition::Resumed);
            // Soak and analysis start over: data from before the pause
            // does not vouch for what happens after it.
            if self.st.step_acknowledged_at.is_some() {
                self.st.step_acknowledged_at = Some(Time(self.now()));
            }
            self.st.last_progress_time = Some(Time(self.now()));
        }
        if self.st.phase == PlanPhase::Pending {
            self.pending();
        }
        // Each pass either stops (waiting) or moves the plan one step on;
        // steps that need no node to move chain within one call.
        let limit = 4 + self.spec.stages.len() * (self.spec.waves.len() + 2);
        for _ in 0..limit {
            let advanced = match self.st.phase {
                PlanPhase::Canary => self.canary_step(),
                PlanPhase::Progressing => self.wave_step(),
                _ => false,
            };
            if !advanced {
                break;
            }
        }
    }

    fn resume_phase(&self) -> PlanPhase {
        if self.st.start_time.is_none() {
            PlanPhase::Pending
        } else if self.st.wave.is_none() && self.spec.canary.is_some() {
            PlanPhase::Canary
        } else {
            PlanPhase::Progressing
        }
    }

    fn mark_invalid(&mut self, message: String) {
        if self.prev.phase != PlanPhase::Invalid || self.prev.message.as_deref() != Some(&message) {
            self.transitions.push(Transition::Invalid(message.clone()));
        }
        self.st.phase = PlanPhase::Invalid;
        self.invalid = Some(message);
    }

    fn pending(&mut self) {
        let reporting = self
            .nodes
            .iter()
            .filter(|n| n.view.applied.is_some())
            .count();
        if reporting == 0 {
            return;
        }
        let held: Vec<(String, String)> = self
            .nodes
            .iter()
            .filter_map(|n| {
                n.view
                    .held_by
                    .as_ref()
                    .map(|p| (n.view.name.clone(), format!("held by {p}")))
            })
            .collect();
        if !held.is_empty() {
            let msg = format!(
                "{} selected node(s) are held by another plan or canary (e.g. {}: {}); this plan starts when they are released",
                held.len(),
                held[0].0,
                held[0].1
            );
            if self.prev.message.as_deref() != Some(&msg) {
                self.transitions.push(Transition::Blocked(msg));
            }
            self.blocked.extend(held);
            return;
        }
        let names: std::collections::BTreeSet<&str> =
            self.nodes.iter().map(|n| n.view.name.as_str()).collect();
        if let Err(e) = validate::plan_against_fleet(self.spec, &names) {
            return self.mark_invalid(e.to_string());
        }
        let first = self.spec.stages[0];
        let mut conflicts = self.nodes.iter().filter_map(|n| {
            [n.desired, n.view.applied]
                .into_iter()
                .flatten()
                .find(|m| !m.can_talk(first))
                .map(|m| (n, m))
        });
        if let Some((n, m)) = conflicts.next() {
            let more = conflicts.count();
            return self.mark_invalid(format!(
                "spec.stages[0]: {first} cannot talk to FleetNode {} running {m}{}; start with a dual stage such as {}",
                n.view.name,
                if more > 0 { format!(" (and {more} more)") } else { String::new() },
                NetworkMode::dual_toward(first),
            ));
        }
        self.st.start_time = Some(Time(self.now()));
        self.enter_stage(0);
    }

    fn enter_stage(&mut self, stage: u32) {
        self.st.stage = stage;
        self.st.stage_mode = Some(self.stage_mode());
        self.st.step_started_at = Some(Time(self.now()));
        self.st.step_acknowledged_at = None;
        self.st.last_progress_time = Some(Time(self.now()));
        if self.spec.canary.is_some() {
            self.st.phase = PlanPhase::Canary;
            self.st.wave = None;
            let nodes = u32::try_from(self.canary_nodes().len()).unwrap_or(u32::MAX);
            self.transitions.push(Transition::CanaryStarted {
                stage,
                mode: self.stage_mode(),
                nodes,
            });
        } else {
            self.start_wave(0);
        }
    }

    fn start_wave(&mut self, wave: u32) {
        self.st.phase = PlanPhase::Progressing;
        self.st.wave = Some(wave);
        self.st.step_started_at = Some(Time(self.now()));
        self.st.step_acknowledged_at = None;
        self.st.last_progress_time = Some(Time(self.now()));
        let target = u32::try_from(self.wave_target(wave)).unwrap_or(u32::MAX);
        self.transitions.push(Transition::WaveStarted {
            stage: self.st.stage,
            wave,
            mode: self.stage_mode(),
            target,
        });
    }

    fn managed_count(&self) -> usize {
        self.nodes.iter().filter(|n| n.managed).count()
    }

    fn wave_target(&self, wave: u32) -> usize {
        let share = self
            .spec
            .waves
            .get(usize::try_from(wave).unwrap_or(usize::MAX))
            .copied()
            .unwrap_or(100);
        ceil_share(share, self.managed_count())
    }

    /// Indices of the canary nodes, in plan order.
    fn canary_nodes(&self) -> Vec<usize> {
        let Some(c) = &self.spec.canary else {
            return Vec::new();
        };
        let managed: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].managed)
            .collect();
        if let Some(names) = &c.nodes {
            return managed
                .into_iter()
                .filter(|&i| names.contains(&self.nodes[i].view.name))
                .collect();
        }
        let total = managed.len();
        let want = match (c.count, c.percent) {
            (Some(k), _) => usize::try_from(k).unwrap_or(usize::MAX),
            (None, Some(p)) => ceil_share(p, total).max(1),
            (None, None) => 0,
        };
        // Always leave a baseline.
        let want = want.min(total.saturating_sub(1));
        managed.into_iter().take(want).collect()
    }

    /// Nodes out of line with the stage: ones that cannot talk to the
    /// stage's mode (a newcomer in the wrong single-stack mode) go toward
    /// it; after stage 0, ones in neither the previous nor this stage's mode
    /// go to the previous one (the barrier's mode).
    fn hold_stragglers(&mut self) {
        let mode = self.stage_mode();
        let hold = self.hold_mode();
        for i in 0..self.nodes.len() {
            if !self.budget_left() {
                return;
            }
            let Some(d) = self.nodes[i].desired.filter(|_| self.nodes[i].managed) else {
                continue;
            };
            if !d.can_talk(mode) {
                self.step_toward(i, mode, "hold");
            } else if let Some(h) = hold.filter(|h| d != *h && d != mode) {
                self.step_toward(i, h, "hold");
            }
        }
    }

    fn at_mode_acked(&self, i: usize, mode: NetworkMode) -> bool {
        let n = &self.nodes[i];
        n.acked && n.desired == Some(mode) && n.view.applied == Some(mode)
    }

    fn analysis_config(&self, canary: bool) -> Option<&'a Analysis> {
        let spec: &'a MigrationPlanSpec = self.spec;
        if canary && let Some(a) = spec.canary.as_ref().and_then(|c| c.analysis.as_ref()) {
            return Some(a);
        }
        spec.analysis.as_ref()
    }

    /// A fresh Fail verdict ends the step at once, before its soak is over.
    fn early_failure(&mut self) -> bool {
        let Some(started) = ts(&self.st.step_started_at) else {
            return false;
        };
        // Every fresh measurement shows in status, also during a soak.
        if let Some(a) = self.input.analysis
            && a.window_start >= started
            && a.result.is_some()
        {
            self.st.last_analysis = a.result.clone();
        }
        match self.input.analysis {
            Some(a) if a.verdict == Verdict::Fail && !a.pending && a.window_start >= started => {
                let msg = a
                    .result
                    .as_ref()
                    .and_then(|r| r.message.clone())
                    .unwrap_or_else(|| "analysis failed".into());
                self.failure(Trigger::AnalysisFailed, msg);
                true
            }
            _ => false,
        }
    }

    /// The verdict for a step acknowledged at `since`.
    fn gate(&mut self, since: Timestamp, canary: bool) -> Gate {
        let Some(cfg) = self.analysis_config(canary) else {
            return Gate::Pass;
        };
        match self.input.analysis {
            Some(a) if a.window_start >= since && a.pending => {
                self.st.last_analysis = a.result.clone();
                self.requeue(add(self.now(), cfg.interval));
                Gate::Waiting
            }
            Some(a) if a.window_start >= since => {
                self.st.last_analysis = a.result.clone();
                let msg = a.result.as_ref().and_then(|r| r.message.clone());
                match a.verdict {
                    Verdict::Pass => Gate::Pass,
                    Verdict::Fail => Gate::Fail(msg.unwrap_or_else(|| "analysis failed".into())),
                    // The plan says to go on without data.
                    Verdict::Inconclusive
                        if cfg.on_inconclusive == InconclusiveAction::Continue =>
                    {
                        Gate::Pass
                    }
                    Verdict::Inconclusive => {
                        Gate::Inconclusive(msg.unwrap_or_else(|| "not enough data to judge".into()))
                    }
                }
            }
            _ => {
                self.requeue(add(self.now(), cfg.interval));
                Gate::Waiting
            }
        }
    }

    /// Handle a gate that is not Pass; returns whether the plan moved on.
    fn gate_blocked(&mut self, gate: Gate) {
        match gate {
            Gate::Pass | Gate::Waiting => {}
            Gate::Fail(msg) => self.failure(Trigger::AnalysisFailed, msg),
            Gate::Inconclusive(msg) => {
                let action = self
                    .analysis_config(self.st.wave.is_none())
                    .map(|a| a.on_inconclusive)
                    .unwrap_or_default();
                match action {
                    InconclusiveAction::Pause => {
                        let reason = format!(
                            "analysis inconclusive ({msg}); set spec.paused to false to try the step again"
                        );
                        self.st.phase = PlanPhase::Paused;
                        self.pause = Some(Pause {
                            reason: reason.clone(),
                            by_alert: false,
                        });
                        self.transitions.push(Transition::Paused(reason));
                    }
                    InconclusiveAction::Rollback => {
                        self.failure(Trigger::AnalysisInconclusive, msg)
                    }
                    // The gate passed it; nothing to do.
                    InconclusiveAction::Continue => {}
                }
            }
        }
    }

    fn canary_step(&mut self) -> bool {
        if self.early_failure() {
            return false;
        }
        let mode = self.stage_mode();
        let chosen = self.canary_nodes();
        let duration = self
            .spec
            .canary
            .as_ref()
            .map(|c| c.duration)
            .unwrap_or_default();
        self.canary = Some(CanaryAction::Ensure {
            stage: self.st.stage,
            mode,
            nodes: chosen
                .iter()
                .map(|&i| self.nodes[i].view.name.clone())
                .collect(),
            duration,
        });
        self.hold_stragglers();
        if chosen.is_empty() {
            self.blocked.insert(
                "spec.canary".into(),
                "none of the canary nodes is selected and reporting; fix spec.canary or the nodes"
                    .into(),
            );
            return false;
        }
        let step = self.step_id();
        for &i in &chosen {
            self.step_toward(i, mode, &step);
        }
        if !chosen.iter().all(|&i| self.at_mode_acked(i, mode)) {
            self.check_deadline(&chosen, mode);
            return false;
        }
        let ack = self.acknowledge_step(&step);
        let due = add(ack, duration);
        if self.now() < due && !self.promoted(&step) {
            self.requeue(due);
            return false;
        }
        match self.gate(ack, true) {
            Gate::Pass => {
                let stage = self.st.stage;
                self.canary = Some(CanaryAction::Finish {
                    stage,
                    verdict: Verdict::Pass,
                });
                self.transitions.push(Transition::CanaryPassed { stage });
                self.start_wave(0);
                true
            }
            other => {
                self.gate_blocked(other);
                false
            }
        }
    }

    fn wave_step(&mut self) -> bool {
        if self.early_failure() {
            return false;
        }
        let mode = self.stage_mode();
        let wave = self.st.wave.unwrap_or(0);
        let target = self.wave_target(wave);
        self.hold_stragglers();
        let step = self.step_id();
        let desired_at_mode = self
            .nodes
            .iter()
            .filter(|n| n.managed && n.desired == Some(mode))
            .count();
        if desired_at_mode < target {
            // MigrationCanary nodes lead, then the plan's stable order.
            let canaries = self.canary_nodes();
            let rest = (0..self.nodes.len()).filter(|i| !canaries.contains(i));
            let order: Vec<usize> = canaries.iter().copied().chain(rest).collect();
            let mut taken = 0;
            for i in order {
                if taken + desired_at_mode >= target || !self.budget_left() {
                    break;
                }
                let n = &self.nodes[i];
                if !n.managed || n.desired == Some(mode) {
                    continue;
                }
                taken += 1;
                self.step_toward(i, mode, &step);
            }
        }
        let members: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].managed && self.nodes[i].desired == Some(mode))
            .collect();
        let acked = members
            .iter()
            .filter(|&&i| self.at_mode_acked(i, mode))
            .count();
        if acked < target || acked < members.len() {
            let pending: Vec<usize> = members
                .into_iter()
                .filter(|&i| !self.at_mode_acked(i, mode))
                .collect();
            self.check_deadline(&pending, mode);
            return false;
        }
        let ack = self.acknowledge_step(&step);
        // A wave that had to switch no node has nothing new to soak. The
        // step annotation on the nodes says whether this wave moved any.
        let switched_something = self.nodes.iter().any(|n| n.step == Some(step.as_str()));
        if switched_something {
            let due = add(ack, self.spec.wave_interval);
            if self.now() < due && !self.promoted(&step) {
                self.requeue(due);
                return false;
            }
            match self.gate(ack, false) {
                Gate::Pass => {}
                other => {
                    self.gate_blocked(other);
                    return false;
                }
            }
        }
        if usize::try_from(wave + 1).unwrap_or(usize::MAX) < self.spec.waves.len() {
            self.start_wave(wave + 1);
            return true;
        }
        // Barrier: every selected node, including ones this plan may not
        // touch, must run the stage's mode before the next stage.
        let laggards: Vec<(String, String)> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| !(n.managed && self.at_mode_acked(*i, mode)))
            .map(|(_, n)| {
                let why = match (&n.view.held_by, n.view.applied) {
                    (Some(p), _) => format!("held by {p}"),
                    (None, None) => "not reporting a mode yet".to_owned(),
                    (None, Some(a)) => format!("runs {a}, stage needs {mode}"),
                };
                (n.view.name.clone(), why)
            })
            .collect();
        if !laggards.is_empty() {
            self.blocked.extend(laggards);
            return false;
        }
        self.transitions.push(Transition::StageCompleted {
            stage: self.st.stage,
            mode,
        });
        if usize::try_from(self.st.stage + 1).unwrap_or(usize::MAX) < self.spec.stages.len() {
            self.enter_stage(self.st.stage + 1);
            true
        } else {
            self.st.phase = PlanPhase::Succeeded;
            self.st.completion_time = Some(Time(self.now()));
            self.transitions.push(Transition::Succeeded);
            false
        }
    }

    /// A succeeded plan keeps newcomers at its final mode.
    fn hold_final(&mut self) {
        let Some(&last) = self.spec.stages.last() else {
            return;
        };
        for i in 0..self.nodes.len() {
            if !self.budget_left() {
                break;
            }
            if self.nodes[i].managed && self.nodes[i].desired != Some(last) {
                self.step_toward(i, last, "final");
            }
        }
    }

    /// The progress deadline: counted from the step's last progress.
    fn check_deadline(&mut self, pending: &[usize], mode: NetworkMode) {
        if !self.patches.is_empty() {
            // Nodes were told to switch just now: that is progress.
            self.requeue(add(self.now(), self.spec.progress_deadline));
            return;
        }
        let Some(since) = ts(&self.st.last_progress_time).or(ts(&self.st.step_started_at)) else {
            return;
        };
        let deadline = add(since, self.spec.progress_deadline);
        if self.now() < deadline {
            self.requeue(deadline);
            return;
        }
        let stuck: Vec<usize> = pending
            .iter()
            .copied()
            .filter(|&i| !self.nodes[i].acked)
            .collect();
        if stuck.is_empty() {
            return;
        }
        self.deadline_exceeded = true;
        for &i in &stuck {
            let n = &self.nodes[i];
            let want = n.desired.unwrap_or(mode);
            self.blocked.insert(
                n.view.name.clone(),
                format!(
                    "has not acknowledged {want} within progressDeadline {}",
                    self.spec.progress_deadline
                ),
            );
        }
        let msg = format!(
            "{} node(s) have not acknowledged within {} (e.g. {})",
            stuck.len(),
            self.spec.progress_deadline,
            self.nodes[stuck[0]].view.name
        );
        if !self.prev.conditions.iter().any(|c| {
            c.type_ == "Degraded" && c.reason == "ProgressDeadlineExceeded" && c.status == "True"
        }) {
            self.transitions
                .push(Transition::ProgressDeadlineExceeded(msg.clone()));
        }
        // A rollback that misses the deadline is reported, not restarted.
        if self.spec.rollback.on_progress_deadline && self.st.phase != PlanPhase::RollingBack {
            self.failure(Trigger::ProgressDeadline, msg);
        }
    }

    /// Something went wrong: roll back if automatic, else stop in Failed.
    fn failure(&mut self, trigger: Trigger, reason: String) {
        if self.st.phase == PlanPhase::Canary {
            self.canary = Some(CanaryAction::Finish {
                stage: self.st.stage,
                verdict: Verdict::Fail,
            });
        }
        if self.spec.rollback.automatic {
            self.begin_rollback(trigger, reason, self.spec.rollback.scope);
        } else {
            let msg = format!(
                "{trigger}: {reason}; automatic rollback is off: fix the cause, or set spec.rollbackRequest to roll back"
            );
            self.st.phase = PlanPhase::Failed;
            self.transitions.push(Transition::Failed(msg));
        }
    }

    fn begin_rollback(&mut self, trigger: Trigger, reason: String, scope: RollbackScope) {
        let step = (scope == RollbackScope::Wave).then(|| self.step_id());
        self.st.rollback = Some(RollbackRecord {
            started_at: Some(Time(self.now())),
            finished_at: None,
            trigger: trigger.as_str().to_owned(),
            reason: reason.clone(),
            scope,
            nodes: 0,
            step,
        });
        self.st.phase = PlanPhase::RollingBack;
        // No batch is out yet: the first one goes at once.
        self.st.step_started_at = None;
        self.st.step_acknowledged_at = None;
        self.st.last_progress_time = Some(Time(self.now()));
        self.transitions
            .push(Transition::RollbackStarted { trigger, reason });
        self.rolling_back();
    }

    /// Where each node must end up in the current rollback.
    ///
    /// Scope Plan: every node this plan manages returns to its start mode
    /// (a node the plan never moved stays where it is). Start modes can
    /// conflict: after a plan reached IrohOnly, newcomers configured
    /// IrohOnly start there, and returning the old nodes to LibP2pOnly
    /// would split the fleet. Then the side that cannot win stops in the
    /// dual mode next to its start mode: the side opposite a node this
    /// rollback does not move, else the side with fewer nodes (IrohOnly on a tie,
    /// LibP2pOnly being the agents' default).
    fn rollback_targets(&self, rec: &RollbackRecord) -> Vec<(usize, NetworkMode)> {
        let mut targets: Vec<(usize, NetworkMode)> = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.managed {
                continue;
            }
            let target = match rec.scope {
                RollbackScope::Plan => n.start.or(n.desired),
                RollbackScope::Wave if n.step.is_some() && n.step == rec.step.as_deref() => {
                    self.hold_mode().or(n.start)
                }
                RollbackScope::Wave => None,
            };
            if let Some(t) = target {
                targets.push((i, t));
            }
        }
        // Nodes this rollback does not move (held by another plan, or
        // outside the failing wave) keep their modes.
        let mut moving = vec![false; self.nodes.len()];
        for t in &targets {
            moving[t.0] = true;
        }
        let fixed = |m: NetworkMode| {
            self.nodes
                .iter()
                .zip(&moving)
                .filter(|(_, moving)| !**moving)
                .any(|(n, _)| n.desired == Some(m) || n.view.applied == Some(m))
        };
        let count = |m: NetworkMode| targets.iter().filter(|t| t.1 == m).count();
        let (libp2p, iroh) = (count(NetworkMode::LibP2pOnly), count(NetworkMode::IrohOnly));
        let loser = if fixed(NetworkMode::IrohOnly) && libp2p > 0 {
            Some(NetworkMode::LibP2pOnly)
        } else if fixed(NetworkMode::LibP2pOnly) && iroh > 0 {
            Some(NetworkMode::IrohOnly)
        } else if libp2p > 0 && iroh > 0 {
            Some(if libp2p >= iroh {
                NetworkMode::IrohOnly
            } else {
                NetworkMode::LibP2pOnly
            })
        } else {
            None
        };
        if let Some(loser) = loser {
            for t in targets.iter_mut().filter(|t| t.1 == loser) {
                t.1 = NetworkMode::dual_toward(loser);
            }
        }
        targets
    }

    fn rolling_back(&mut self) {
        let Some(mut rec) = self.st.rollback.clone() else {
            self.st.phase = PlanPhase::RolledBack;
            return;
        };
        let targets = self.rollback_targets(&rec);
        let pending: Vec<(usize, NetworkMode)> = targets
            .iter()
            .copied()
            .filter(|&(i, t)| !self.at_mode_acked(i, t))
            .collect();
        if pending.is_empty() {
            rec.finished_at = Some(Time(self.now()));
            let nodes = rec.nodes;
            self.st.rollback_history.push(rec);
            let excess = self
                .st
                .rollback_history
                .len()
                .saturating_sub(MAX_ROLLBACK_HISTORY);
            self.st.rollback_history.drain(..excess);
            self.st.rollback = None;
            self.st.completion_time = Some(Time(self.now()));
            self.transitions
                .push(Transition::RollbackFinished { nodes });
            match self.st.rollback_history.last().map(|r| r.scope) {
                Some(RollbackScope::Wave) => {
                    self.st.phase = PlanPhase::Failed;
                    self.transitions.push(Transition::Failed(
                        "the failing wave was rolled back; fix the cause and create a new plan, or set spec.rollbackRequest to roll back every node".into(),
                    ));
                }
                _ => self.st.phase = PlanPhase::RolledBack,
            }
            return;
        }
        let in_flight = pending.iter().any(|&(i, _)| !self.nodes[i].acked);
        let mut batch = usize::MAX;
        let strategy = self
            .spec
            .rollback_request
            .as_ref()
            .and_then(|r| r.strategy)
            .unwrap_or(self.spec.rollback.strategy);
        if strategy == RollbackStrategy::Gradual {
            let g = self.spec.rollback.gradual.clone().unwrap_or_default();
            if in_flight {
                self.check_deadline(
                    &pending.iter().map(|p| p.0).collect::<Vec<_>>(),
                    NetworkMode::LibP2pOnly,
                );
                return;
            }
            if self.st.step_started_at.is_some() {
                // The previous batch is acknowledged: wait out the interval.
                let ack = *ts(&self.st.step_acknowledged_at).get_or_insert(self.now());
                self.st.step_acknowledged_at = Some(Time(ack));
                let due = add(ack, g.interval);
                if self.now() < due {
                    self.requeue(due);
                    return;
                }
            }
            batch = ceil_share(g.wave_size, self.managed_count()).max(1);
        }
        let mut moved = 0;
        let mut moved_now = vec![false; self.nodes.len()];
        for &(i, target) in &pending {
            if moved >= batch || !self.budget_left() {
                break;
            }
            if self.step_toward(i, target, "rollback") {
                moved += 1;
                moved_now[i] = true;
            }
        }
        // Nodes this rollback moved: the ones marked by its step, plus the
        // ones moved now. Counted from the nodes, not added up per call: a
        // reconcile on a store that has not yet seen its own writes
        // re-issues a write (harmless) and must not count the node twice.
        let rolled = self
            .nodes
            .iter()
            .zip(&moved_now)
            .filter(|(n, now)| **now || n.step == Some("rollback"))
            .count();
        rec.nodes = rec.nodes.max(u32::try_from(rolled).unwrap_or(u32::MAX));
        if moved > 0 {
            self.st.step_started_at = Some(Time(self.now()));
            self.st.step_acknowledged_at = None;
        } else {
            // Nothing could move: nodes still switching, or none allowed
            // to. Either way the progress deadline watches them.
            self.check_deadline(
                &pending.iter().map(|p| p.0).collect::<Vec<_>>(),
                NetworkMode::LibP2pOnly,
            );
        }
        self.st.rollback = Some(rec);
    }

    fn finish(mut self) -> Decision {
        let now = self.now();
        self.report_island_wait();
        let mut counts = NodeCounts::default();
        let mut by_mode = ModeCounts::default();
        for n in &self.nodes {
            counts.total += 1;
            if let Some(a) = n.view.applied {
                by_mode.add(a);
            }
            if n.view.held_by.is_some() || n.view.applied.is_none() {
                counts.blocked += 1;
                if !self.blocked.contains_key(&n.view.name) {
                    let why = match &n.view.held_by {
                        Some(p) => format!("held by {p}"),
                        None => "not reporting a mode yet".into(),
                    };
                    self.blocked.insert(n.view.name.clone(), why);
                }
            } else if n.acked {
                counts.acknowledged += 1;
            } else {
                counts.switching += 1;
            }
        }
        counts.by_mode = by_mode;
        let progressed =
            !self.patches.is_empty() || counts.acknowledged > self.prev.nodes.acknowledged;
        if progressed && !self.deadline_exceeded {
            self.st.last_progress_time = Some(Time(now));
        }
        self.st.nodes = counts;
        self.st.blocked_nodes = self
            .blocked
            .iter()
            .take(MAX_NAMED_NODES)
            .map(|(name, reason)| BlockedNode {
                name: name.clone(),
                reason: reason.clone(),
            })
            .collect();
        self.st.progress_percent = self.progress_percent();
        self.st.estimated_completion = self.estimate(now).map(Time);
        self.st.message = Some(self.message());
        self.st.conditions = self.conditions(now);
        Decision {
            // Every patch went through `step_toward`, which updated the
            // node's desired mode.
            desired: desired_counts(self.nodes.iter().map(|n| (n.view, n.desired))),
            status: self.st,
            patches: self.patches,
            canary: self.canary,
            pause: self.pause,
            resume: false,
            transitions: self.transitions,
            requeue_at: self.requeue_at,
        }
    }

    fn progress_percent(&self) -> u8 {
        match self.st.phase {
            PlanPhase::Succeeded => return 100,
            PlanPhase::Pending | PlanPhase::Invalid => return 0,
            _ => {}
        }
        let managed = self.managed_count();
        let stages = self.spec.stages.len();
        if managed == 0 || stages == 0 {
            return self.prev.progress_percent;
        }
        let mode = self.stage_mode();
        let at = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].managed && self.at_mode_acked(i, mode))
            .count();
        let done = usize::try_from(self.st.stage).unwrap_or(0) * managed + at;
        u8::try_from((done * 100 / (managed * stages)).min(100)).unwrap_or(100)
    }

    /// When the plan should finish: now plus the rest of the current step
    /// and every step after it. A step takes its switch time (its nodes in
    /// batches of maxUnavailable at the observed time a batch takes, plus
    /// their writes at the operator's write rate) and then its wait (the
    /// canary's duration or the wave's soak, at least as long as the
    /// analysis needs for its passes in a row).
    fn estimate(&self, now: Timestamp) -> Option<Timestamp> {
        if !matches!(self.st.phase, PlanPhase::Canary | PlanPhase::Progressing) {
            return None;
        }
        let batch_ms = self.st.mean_switch_millis.unwrap_or(0);
        let qps = self.input.write_qps.filter(|q| q.is_finite() && *q > 0.0);
        let switch = |nodes: usize| -> u64 {
            if nodes == 0 {
                return 0;
            }
            let batches = u64::try_from(nodes.div_ceil(self.max_unavailable.max(1))).unwrap_or(0);
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            let writes = qps.map_or(0, |q| (nodes as f64 / q * 1000.0) as u64);
            batches * batch_ms + writes
        };
        let wait = |base: Duration, canary: bool| -> u64 {
            let analysis = self.analysis_config(canary).map_or(0, |a| {
                u64::from(a.consecutive_successes.max(1)) * a.interval.as_millis()
            });
            base.as_millis().max(analysis)
        };
        let canary = self
            .spec
            .canary
            .as_ref()
            .map(|c| (self.canary_nodes().len(), c.duration));
        // The steps of one stage: (nodes it switches, its wait).
        let mut steps: Vec<(usize, u64)> = Vec::new();
        if let Some((n, d)) = canary {
            steps.push((n, wait(d, true)));
        }
        let mut before = canary.map_or(0, |c| c.0);
        for w in 0..self.spec.waves.len() {
            let target = self.wave_target(u32::try_from(w).unwrap_or(u32::MAX));
            let n = target.saturating_sub(before);
            before = before.max(target);
            steps.push((
                n,
                if n > 0 {
                    wait(self.spec.wave_interval, false)
                } else {
                    0
                },
            ));
        }
        let step_ms = |(n, w): (usize, u64)| switch(n) + w;
        // Where in its stage the plan is: index into `steps`.
        let offset = usize::from(canary.is_some());
        let current = match self.st.wave {
            Some(w) => offset + usize::try_from(w).unwrap_or(0),
            None => 0,
        }
        .min(steps.len().saturating_sub(1));
        let mut left = match (ts(&self.st.step_acknowledged_at), steps.get(current)) {
            (Some(ack), Some(&(_, w))) => u64::try_from(
                add(ack, Duration::from_millis(w))
                    .duration_since(now)
                    .as_millis(),
            )
            .unwrap_or(0),
            (None, Some(&(n, w))) => {
                let mode = self.stage_mode();
                let at = (0..self.nodes.len())
                    .filter(|&i| self.nodes[i].managed && self.at_mode_acked(i, mode))
                    .count();
                let want = match self.st.wave {
                    Some(wave) => self.wave_target(wave),
                    None => n,
                };
                switch(want.saturating_sub(at).min(n.max(1))) + w
            }
            _ => 0,
        };
        left += steps
            .iter()
            .skip(current + 1)
            .copied()
            .map(step_ms)
            .sum::<u64>();
        let stage = usize::try_from(self.st.stage).unwrap_or(0);
        let later_stages =
            u64::try_from(self.spec.stages.len().saturating_sub(stage + 1)).unwrap_or(0);
        left += later_stages * steps.iter().copied().map(step_ms).sum::<u64>();
        // Whole seconds: status keeps no more, and a restarted operator
        // must decide the same from what status kept.
        let eta = add(now, Duration::from_millis(left));
        Some(Timestamp::from_second(eta.as_second()).unwrap_or(eta))
    }

    fn message(&self) -> String {
        if let Some(m) = self.invalid.as_ref().or(self.island_msg.as_ref()) {
            return m.clone();
        }
        let mode = self.stage_mode();
        let n = &self.st.nodes;
        match self.st.phase {
            PlanPhase::Pending if n.total == 0 => "no FleetNode matches spec.selector yet".into(),
            PlanPhase::Pending => format!("waiting to start: {} node(s) blocked", n.blocked),
            PlanPhase::Canary => format!(
                "stage {} canary: {} node(s) switching to {mode}",
                self.st.stage, n.switching
            ),
            PlanPhase::Progressing => format!(
                "stage {} ({mode}) wave {}: {} acknowledged, {} switching, {} blocked",
                self.st.stage,
                self.st.wave.unwrap_or(0),
                n.acknowledged,
                n.switching,
                n.blocked
            ),
            PlanPhase::Paused => "paused; set spec.paused to false to continue".into(),
            PlanPhase::RollingBack => match &self.st.rollback {
                Some(r) => format!(
                    "rolling back ({}: {}): {} node(s) switching",
                    r.trigger, r.reason, n.switching
                ),
                None => format!("rolling back: {} node(s) switching", n.switching),
            },
            PlanPhase::RolledBack => "rolled back: every node is back in its starting mode".into(),
            PlanPhase::Succeeded => format!(
                "every node runs {}",
                self.spec.stages.last().copied().unwrap_or(mode)
            ),
            PlanPhase::Failed => {
                "stopped; fix the cause, or set spec.rollbackRequest to roll back".into()
            }
            PlanPhase::Invalid => "invalid spec".into(),
        }
    }

    fn conditions(&self, now: Timestamp) -> Vec<Condition> {
        let phase = self.st.phase;
        let phase_reason = format!("{phase:?}");
        let active = matches!(
            phase,
            PlanPhase::Pending
                | PlanPhase::Canary
                | PlanPhase::Progressing
                | PlanPhase::RollingBack
        );
        let deadline = self.deadline_exceeded;
        // A rollback the deadline started keeps saying so while it runs.
        let deadline_rollback = phase == PlanPhase::RollingBack
            && self
                .st
                .rollback
                .as_ref()
                .is_some_and(|r| Trigger::parse(&r.trigger) == Some(Trigger::ProgressDeadline));
        let degraded_reason = if deadline || deadline_rollback {
            "ProgressDeadlineExceeded".to_owned()
        } else {
            phase_reason.clone()
        };
        let degraded = deadline
            || matches!(
                phase,
                PlanPhase::Failed
                    | PlanPhase::Invalid
                    | PlanPhase::RollingBack
                    | PlanPhase::RolledBack
            );
        let stalled = matches!(phase, PlanPhase::Failed | PlanPhase::Invalid) || deadline;
        let message = self.message();
        let wanted: [(&str, bool, String); 6] = [
            ("Ready", phase == PlanPhase::Succeeded, phase_reason.clone()),
            (
                "Progressing",
                active && !deadline,
                if deadline {
                    "ProgressDeadlineExceeded".into()
                } else if self.island_msg.is_some() {
                    "WaitingForFleet".into()
                } else {
                    phase_reason.clone()
                },
            ),
            ("Degraded", degraded, degraded_reason.clone()),
            ("Paused", phase == PlanPhase::Paused, phase_reason.clone()),
            // kstatus (Flux, kpt, cli-utils) reads these two.
            ("Reconciling", active && !deadline, phase_reason.clone()),
            ("Stalled", stalled, degraded_reason),
        ];
        wanted
            .into_iter()
            .map(|(type_, on, reason)| {
                let status = if on { "True" } else { "False" };
                let since = self
                    .prev
                    .conditions
                    .iter()
                    .find(|c| c.type_ == type_ && c.status == status)
                    .map(|c| c.last_transition_time.clone())
                    .unwrap_or(Time(now));
                Condition {
                    type_: type_.to_owned(),
                    status: status.to_owned(),
                    reason,
                    message: message.clone(),
                    last_transition_time: since,
                    observed_generation: Some(self.input.generation),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
