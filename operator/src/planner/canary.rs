//! The standalone MigrationCanary's planner: pure, like the plan's. A MigrationCanary is a
//! trial: it moves a few nodes to a mode, waits out its duration, takes the
//! verdict, then returns the nodes to the modes they had and lets go of
//! them. Moving the whole fleet is a MigrationPlan's job; a MigrationCanary owned by
//! a plan is driven by that plan and never reaches this code.
//!
//! Lifecycle: Pending → Running (nodes switching, then the trial) → the
//! verdict → the nodes return → Succeeded (Pass) or RolledBack (Fail or
//! Inconclusive: no data is never success). Invalid when the spec or the
//! fleet does not allow the trial; no FleetNode is touched then.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use switchyard_crds::{
    AnalysisTally, MigrationCanaryPhase, MigrationCanarySpec, MigrationCanaryStatus, NetworkMode,
    Verdict, forms_island, validate,
};

use super::{AnalysisInput, Event, Severity, add, ceil_share, order_key};

/// What the canary planner needs to know about one FleetNode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanaryNode {
    /// FleetNode name.
    pub name: String,
    /// `spec.mode`.
    pub desired: Option<NetworkMode>,
    /// `status.appliedMode`.
    pub applied: Option<NetworkMode>,
    /// Runs the desired mode at the current generation.
    pub acknowledged: bool,
    /// Labelled as this MigrationCanary's.
    pub mine: bool,
    /// The start-mode annotation this MigrationCanary recorded.
    pub start_mode: Option<NetworkMode>,
    /// Who else holds the node (`MigrationPlan p`, `MigrationCanary c`).
    pub held_by: Option<String>,
    /// Whether `spec.selector` picks it.
    pub selected: bool,
}

impl CanaryNode {
    fn mode(&self) -> Option<NetworkMode> {
        self.desired.or(self.applied)
    }

    fn at(&self, mode: NetworkMode) -> bool {
        self.acknowledged && self.desired.unwrap_or(mode) == mode && self.applied == Some(mode)
    }
}

/// Everything one canary step looks at.
#[derive(Debug, Clone)]
pub struct CanaryInput<'a> {
    /// The MigrationCanary's name.
    pub name: &'a str,
    /// Its metadata.generation.
    pub generation: i64,
    /// Its spec.
    pub spec: &'a MigrationCanarySpec,
    /// Its status, if any.
    pub status: Option<&'a MigrationCanaryStatus>,
    /// The FleetNodes it selects or holds.
    pub nodes: &'a [CanaryNode],
    /// Modes (desired and applied) of every other FleetNode in the
    /// namespace: the trial must not make an island with them.
    pub others: &'a [NetworkMode],
    /// The latest analysis verdict, if any.
    pub analysis: Option<&'a AnalysisInput>,
    /// The analysis's running count, to keep in status; `None` keeps the
    /// one status holds.
    pub tally: Option<&'a AnalysisTally>,
    /// The current time.
    pub now: Timestamp,
}

/// One FleetNode write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanaryPatch {
    /// FleetNode name.
    pub node: String,
    /// The new spec.mode.
    pub mode: NetworkMode,
    /// The node's mode before the trial.
    pub start_mode: NetworkMode,
    /// spec.irohShare for load-balancing trials.
    pub iroh_share: Option<u8>,
    /// Keep the node labelled as this MigrationCanary's; `false` lets it go.
    pub hold: bool,
}

/// The canary planner's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryDecision {
    /// The new status.
    pub status: MigrationCanaryStatus,
    /// FleetNode writes.
    pub patches: Vec<CanaryPatch>,
    /// One Event per transition.
    pub events: Vec<Event>,
    /// Reconcile again at this time.
    pub requeue_at: Option<Timestamp>,
}

/// Decide the next step of a standalone MigrationCanary.
pub fn plan_canary(input: &CanaryInput<'_>) -> CanaryDecision {
    let prev = input.status.cloned().unwrap_or_default();
    let mut d = CanaryDecision {
        status: prev.clone(),
        patches: Vec::new(),
        events: Vec::new(),
        requeue_at: None,
    };
    d.status.observed_generation = Some(input.generation);
    if let Some(t) = input.tally {
        d.status.analysis_tally = Some(t.clone());
    }
    step(input, &prev, &mut d);
    d.status.conditions = conditions(&d.status, &prev, input.generation, input.now);
    d
}

/// The decision for a MigrationCanary whose stored object cannot be read (a value
/// of the wrong type, an unknown field): Invalid, naming the field.
pub fn unreadable(
    generation: i64,
    status: Option<&MigrationCanaryStatus>,
    message: String,
    now: Timestamp,
) -> CanaryDecision {
    let prev = status.cloned().unwrap_or_default();
    let mut d = CanaryDecision {
        status: prev.clone(),
        patches: Vec::new(),
        events: Vec::new(),
        requeue_at: None,
    };
    d.status.observed_generation = Some(generation);
    invalid(&mut d, &prev, message);
    d.status.conditions = conditions(&d.status, &prev, generation, now);
    d
}

fn invalid(d: &mut CanaryDecision, prev: &MigrationCanaryStatus, message: String) {
    if prev.phase != MigrationCanaryPhase::Invalid || prev.message.as_deref() != Some(&message) {
        d.events
            .push(Event::warning("CanaryInvalid", message.clone()));
    }
    d.status.phase = MigrationCanaryPhase::Invalid;
    d.status.message = Some(message);
}

fn step(input: &CanaryInput<'_>, prev: &MigrationCanaryStatus, d: &mut CanaryDecision) {
    let spec = input.spec;
    let share = (spec.mode == NetworkMode::DualLoadBalance).then(|| spec.ab_share.unwrap_or(50));
    match prev.phase {
        MigrationCanaryPhase::Succeeded
        | MigrationCanaryPhase::RolledBack
        | MigrationCanaryPhase::Failed => {
            // Finished: let go of any node still labelled (a replica that
            // died between the status and the node writes left it so).
            release(input, d);
            return;
        }
        MigrationCanaryPhase::Running => return running(input, d, share),
        MigrationCanaryPhase::Pending | MigrationCanaryPhase::Invalid => {}
    }
    if let Err(e) = validate::object_name(input.name).and_then(|()| validate::canary_spec(spec)) {
        return invalid(d, prev, e.to_string());
    }
    let selected: Vec<&CanaryNode> = input.nodes.iter().filter(|n| n.selected).collect();
    let names: std::collections::BTreeSet<&str> =
        selected.iter().map(|n| n.name.as_str()).collect();
    if let Err(e) = validate::canary_against_fleet(spec, &names) {
        return invalid(d, prev, e.to_string());
    }
    // The trial mode must talk to every mode in the namespace, or the
    // canaries would be cut off from the rest.
    let present = input.others.iter().copied().chain(
        input
            .nodes
            .iter()
            .flat_map(|n| [n.desired, n.applied])
            .flatten(),
    );
    if let Some(m) = present.clone().find(|m| !m.can_talk(spec.mode)) {
        return invalid(
            d,
            prev,
            format!(
                "spec.mode: {} cannot talk to FleetNodes running {m}; try {} instead, which talks to both",
                spec.mode,
                NetworkMode::dual_toward(spec.mode)
            ),
        );
    }
    debug_assert!(!forms_island(present.chain([spec.mode])));
    let mut available: Vec<&CanaryNode> = selected
        .iter()
        .copied()
        .filter(|n| n.held_by.is_none() && n.applied.is_some())
        .collect();
    available.sort_by_cached_key(|n| (order_key(input.name, &n.name), n.name.clone()));
    let chosen: Vec<&CanaryNode> = match (&spec.nodes, spec.count, spec.percent) {
        (Some(names), _, _) => {
            if let Some(n) = selected
                .iter()
                .find(|n| names.contains(&n.name) && (n.held_by.is_some() || n.applied.is_none()))
            {
                let why = n
                    .held_by
                    .as_ref()
                    .map_or("does not report a mode yet".to_owned(), |h| {
                        format!("is held by {h}")
                    });
                let msg = format!("waiting: FleetNode {} {why}", n.name);
                if prev.message.as_deref() != Some(&msg) {
                    d.events.push(Event::warning("NodeBlocked", msg.clone()));
                }
                d.status.phase = MigrationCanaryPhase::Pending;
                d.status.message = Some(msg);
                return;
            }
            available
                .into_iter()
                .filter(|n| names.contains(&n.name))
                .collect()
        }
        (None, Some(k), _) => available
            .into_iter()
            .take(usize::try_from(k).unwrap_or(usize::MAX))
            .collect(),
        (None, None, Some(p)) => {
            let want = ceil_share(p, selected.len()).max(1);
            available.into_iter().take(want).collect()
        }
        (None, None, None) => Vec::new(),
    };
    if chosen.is_empty() {
        d.status.phase = MigrationCanaryPhase::Pending;
        d.status.message = Some(
            "waiting: no selected FleetNode is free and reporting a mode; the trial starts when one is"
                .into(),
        );
        return;
    }
    d.status.phase = MigrationCanaryPhase::Running;
    d.status.nodes = chosen.iter().map(|n| n.name.clone()).collect();
    d.status.started_at = None;
    d.status.verdict = None;
    d.status.metrics.clear();
    for n in &chosen {
        let start = n.mode().unwrap_or(NetworkMode::LibP2pOnly);
        d.patches.push(CanaryPatch {
            node: n.name.clone(),
            mode: spec.mode,
            start_mode: start,
            iroh_share: share,
            hold: true,
        });
    }
    d.events.push(Event::normal(
        "CanaryStarted",
        format!(
            "{} node(s) switching to {} for {}",
            chosen.len(),
            spec.mode,
            spec.duration
        ),
    ));
    d.status.message = Some(format!(
        "{} node(s) switching to {}",
        chosen.len(),
        spec.mode
    ));
}

fn running(input: &CanaryInput<'_>, d: &mut CanaryDecision, share: Option<u8>) {
    let spec = input.spec;
    let ours: Vec<&CanaryNode> = input
        .nodes
        .iter()
        .filter(|n| d.status.nodes.contains(&n.name))
        .collect();
    let now = input.now;
    if d.status.verdict.is_none() {
        // Re-issue writes a dead replica may not have made.
        for n in &ours {
            if n.desired != Some(spec.mode) || !n.mine {
                d.patches.push(CanaryPatch {
                    node: n.name.clone(),
                    mode: spec.mode,
                    start_mode: n.start_mode.or(n.mode()).unwrap_or(NetworkMode::LibP2pOnly),
                    iroh_share: share,
                    hold: true,
                });
            }
        }
        if !d.patches.is_empty() || !ours.iter().all(|n| n.at(spec.mode)) {
            d.status.message = Some(format!(
                "{} of {} node(s) run {}",
                ours.iter().filter(|n| n.at(spec.mode)).count(),
                d.status.nodes.len(),
                spec.mode
            ));
            return;
        }
        let started = d.status.started_at.get_or_insert(Time(now)).0;
        let fresh = input.analysis.filter(|a| a.window_start >= started);
        let due = add(started, spec.duration);
        // A failure past failureLimit ends the trial early; a measurement
        // still within the limits does not.
        let early_fail = fresh.is_some_and(|a| a.verdict == Verdict::Fail && !a.pending);
        if now < due && !early_fail {
            d.requeue_at = Some(due);
            d.status.message = Some(format!("trial of {} running until {due}", spec.mode));
            return;
        }
        if let Some(r) = fresh.and_then(|a| a.result.as_ref()) {
            d.status.metrics = r.metrics.clone();
        }
        let verdict = match (&spec.analysis, fresh) {
            (_, Some(a)) if !a.pending => a.verdict,
            (None, _) => Verdict::Pass,
            // No verdict yet, or measurements still short of one (within
            // the limits, not yet enough passes in a row): wait for the
            // next; every one either counts toward a limit or a pass.
            (Some(cfg), _) => {
                d.requeue_at = Some(add(now, cfg.interval));
                d.status.message = Some(match fresh {
                    Some(a) => format!(
                        "trial over: waiting for the analysis verdict ({})",
                        a.result
                            .as_ref()
                            .and_then(|r| r.message.as_deref())
                            .unwrap_or("measuring")
                    ),
                    None => "trial over: waiting for the analysis verdict".into(),
                });
                return;
            }
        };
        d.status.verdict = Some(verdict);
        d.events.push(Event {
            reason: "CanaryVerdict",
            note: format!("verdict {verdict:?}: returning the nodes to their modes"),
            severity: if verdict == Verdict::Pass {
                Severity::Normal
            } else {
                Severity::Warning
            },
        });
    }
    // The verdict is in: return every node to its start mode.
    let mut all_back = true;
    for n in &ours {
        let start = n.start_mode.or(n.mode()).unwrap_or(NetworkMode::LibP2pOnly);
        if n.desired != Some(start) {
            d.patches.push(CanaryPatch {
                node: n.name.clone(),
                mode: start,
                start_mode: start,
                iroh_share: None,
                hold: true,
            });
        }
        all_back &= n.desired == Some(start) && n.at(start);
    }
    if !all_back {
        d.status.message = Some("returning the nodes to their modes".into());
        return;
    }
    let verdict = d.status.verdict.unwrap_or_default();
    d.status.phase = if verdict == Verdict::Pass {
        MigrationCanaryPhase::Succeeded
    } else {
        MigrationCanaryPhase::RolledBack
    };
    d.status.message = Some(format!(
        "verdict {verdict:?}; every node is back in its mode"
    ));
    d.events.push(Event::normal(
        "CanaryFinished",
        format!("verdict {verdict:?}; {} node(s) returned", ours.len()),
    ));
    release(input, d);
}

/// Where a deleted MigrationCanary leaves the nodes it `held` (name, mode now,
/// start mode): back in the start mode, unless that mode would now be cut
/// off from the rest of the namespace (`present`: every other node's
/// modes; a plan moved them on meanwhile); then the trial mode, which
/// talks to both.
pub fn release_targets(
    held: &[(String, NetworkMode, Option<NetworkMode>)],
    present: &[NetworkMode],
) -> Vec<(String, NetworkMode)> {
    held.iter()
        .map(|(name, now, start)| {
            let start = start.unwrap_or(*now);
            let back = if forms_island(present.iter().copied().chain([start])) {
                *now
            } else {
                start
            };
            (name.clone(), back)
        })
        .collect()
}

/// Let go of every node still labelled as this MigrationCanary's.
fn release(input: &CanaryInput<'_>, d: &mut CanaryDecision) {
    for n in input.nodes.iter().filter(|n| n.mine) {
        d.patches.push(CanaryPatch {
            node: n.name.clone(),
            mode: n.mode().unwrap_or(NetworkMode::LibP2pOnly),
            start_mode: n.start_mode.or(n.mode()).unwrap_or(NetworkMode::LibP2pOnly),
            iroh_share: None,
            hold: false,
        });
    }
}

fn conditions(
    st: &MigrationCanaryStatus,
    prev: &MigrationCanaryStatus,
    generation: i64,
    now: Timestamp,
) -> Vec<Condition> {
    let phase = st.phase;
    let reason = format!("{phase:?}");
    let message = st.message.clone().unwrap_or_default();
    let wanted = [
        ("Ready", phase == MigrationCanaryPhase::Succeeded),
        (
            "Progressing",
            matches!(
                phase,
                MigrationCanaryPhase::Pending | MigrationCanaryPhase::Running
            ),
        ),
        (
            "Degraded",
            matches!(
                phase,
                MigrationCanaryPhase::Failed
                    | MigrationCanaryPhase::RolledBack
                    | MigrationCanaryPhase::Invalid
            ),
        ),
    ];
    wanted
        .into_iter()
        .map(|(type_, on)| {
            let status = if on { "True" } else { "False" };
            let since = prev
                .conditions
                .iter()
                .find(|c| c.type_ == type_ && c.status == status)
                .map_or(Time(now), |c| c.last_transition_time.clone());
            Condition {
                type_: type_.to_owned(),
                status: status.to_owned(),
                reason: reason.clone(),
                message: message.clone(),
                last_transition_time: since,
                observed_generation: Some(generation),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mode: &str, extra: serde_json::Value) -> MigrationCanarySpec {
        let mut v = serde_json::json!({
            "selector": {"matchLabels": {"app": "storage"}},
            "count": 2,
            "mode": mode,
            "duration": "10s",
        });
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            for (k, x) in e {
                o.insert(k.clone(), x.clone());
            }
        }
        serde_json::from_value(v).expect("spec")
    }

    fn fleet(n: usize) -> Vec<CanaryNode> {
        (0..n)
            .map(|i| CanaryNode {
                name: format!("node-{i}"),
                desired: None,
                applied: Some(NetworkMode::LibP2pOnly),
                acknowledged: true,
                mine: false,
                start_mode: None,
                held_by: None,
                selected: true,
            })
            .collect()
    }

    /// Carry out a decision's writes, the agents acknowledging at once.
    fn apply(nodes: &mut [CanaryNode], d: &CanaryDecision) {
        for p in &d.patches {
            let n = nodes.iter_mut().find(|n| n.name == p.node).expect("node");
            n.desired = Some(p.mode);
            n.applied = Some(p.mode);
            n.acknowledged = true;
            n.mine = p.hold;
            n.start_mode = p.hold.then_some(p.start_mode);
        }
    }

    fn step(
        spec: &MigrationCanarySpec,
        status: Option<&MigrationCanaryStatus>,
        nodes: &[CanaryNode],
        analysis: Option<&AnalysisInput>,
        now: Timestamp,
    ) -> CanaryDecision {
        plan_canary(&CanaryInput {
            name: "trial",
            generation: 1,
            spec,
            status,
            nodes,
            others: &[],
            analysis,
            tally: None,
            now,
        })
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("time")
    }

    #[test]
    fn a_trial_runs_its_duration_then_returns_and_releases_its_nodes() {
        let spec = spec("DualPreferIroh", serde_json::json!({}));
        let mut nodes = fleet(6);
        let d = step(&spec, None, &nodes, None, at(0));
        assert_eq!(d.status.phase, MigrationCanaryPhase::Running);
        assert_eq!(d.patches.len(), 2);
        assert!(
            d.patches
                .iter()
                .all(|p| p.hold && p.mode == NetworkMode::DualPreferIroh)
        );
        assert_eq!(d.events[0].reason, "CanaryStarted");
        apply(&mut nodes, &d);
        // Acknowledged: the trial clock starts, due in exactly 10s.
        let d = step(&spec, Some(&d.status), &nodes, None, at(1));
        assert_eq!(d.status.started_at, Some(Time(at(1))));
        assert_eq!(d.requeue_at, Some(at(11)));
        assert!(d.patches.is_empty());
        // Due: no analysis configured, so Pass; the nodes go back.
        let d = step(&spec, Some(&d.status), &nodes, None, at(11));
        assert_eq!(d.status.verdict, Some(Verdict::Pass));
        assert_eq!(d.status.phase, MigrationCanaryPhase::Running);
        assert!(
            d.patches
                .iter()
                .all(|p| p.mode == NetworkMode::LibP2pOnly && p.hold)
        );
        apply(&mut nodes, &d);
        let d = step(&spec, Some(&d.status), &nodes, None, at(12));
        assert_eq!(d.status.phase, MigrationCanaryPhase::Succeeded);
        assert_eq!(d.patches.len(), 2, "both released");
        assert!(d.patches.iter().all(|p| !p.hold));
        apply(&mut nodes, &d);
        // Finished: nothing more to do, and a repeat changes nothing.
        let again = step(&spec, Some(&d.status), &nodes, None, at(13));
        assert!(again.patches.is_empty());
        assert_eq!(again.status.phase, MigrationCanaryPhase::Succeeded);
    }

    #[test]
    fn a_mode_that_would_cut_the_canaries_off_is_invalid_and_moves_nothing() {
        let spec = spec("IrohOnly", serde_json::json!({}));
        let d = step(&spec, None, &fleet(6), None, at(0));
        assert_eq!(d.status.phase, MigrationCanaryPhase::Invalid);
        assert!(d.patches.is_empty());
        let msg = d.status.message.clone().unwrap_or_default();
        assert!(msg.starts_with("spec.mode"), "{msg}");
        assert!(
            msg.contains("DualPreferIroh"),
            "names a mode that works: {msg}"
        );
        assert_eq!(d.events[0].reason, "CanaryInvalid");
        // Reported once, not on every reconcile.
        let again = step(&spec, Some(&d.status), &fleet(6), None, at(1));
        assert!(again.events.is_empty());
    }

    #[test]
    fn a_named_node_held_by_a_plan_keeps_the_trial_pending() {
        let spec = spec(
            "DualPreferLibP2p",
            serde_json::json!({"count": null, "nodes": ["node-1"]}),
        );
        let mut nodes = fleet(4);
        nodes[1].held_by = Some("MigrationPlan to-iroh".into());
        let d = step(&spec, None, &nodes, None, at(0));
        assert_eq!(d.status.phase, MigrationCanaryPhase::Pending);
        assert!(d.patches.is_empty());
        assert!(
            d.status
                .message
                .as_deref()
                .is_some_and(|m| m.contains("node-1") && m.contains("to-iroh"))
        );
    }

    #[test]
    fn a_fresh_fail_verdict_ends_the_trial_early_and_rolls_back() {
        let spec = spec(
            "DualLoadBalance",
            serde_json::json!({"abShare": 30, "analysis": {"interval": "5s"}}),
        );
        let mut nodes = fleet(6);
        let d = step(&spec, None, &nodes, None, at(0));
        assert!(d.patches.iter().all(|p| p.iroh_share == Some(30)));
        apply(&mut nodes, &d);
        let d = step(&spec, Some(&d.status), &nodes, None, at(1));
        // No verdict yet and one is configured: wait for it.
        let stale = AnalysisInput {
            verdict: Verdict::Fail,
            window_start: at(0),
            result: None,
            pending: false,
        };
        let waiting = step(&spec, Some(&d.status), &nodes, Some(&stale), at(2));
        assert_eq!(
            waiting.status.verdict, None,
            "a verdict from before the trial does not count"
        );
        let fail = AnalysisInput {
            window_start: at(1),
            ..stale
        };
        let d = step(&spec, Some(&waiting.status), &nodes, Some(&fail), at(3));
        assert_eq!(d.status.verdict, Some(Verdict::Fail));
        apply(&mut nodes, &d);
        let d = step(&spec, Some(&d.status), &nodes, Some(&fail), at(4));
        assert_eq!(d.status.phase, MigrationCanaryPhase::RolledBack);
        assert!(
            d.status
                .conditions
                .iter()
                .any(|c| c.type_ == "Degraded" && c.status == "True")
        );
    }

    #[test]
    fn a_finished_trial_releases_nodes_a_dead_replica_left_labelled() {
        let spec = spec("DualPreferIroh", serde_json::json!({}));
        let mut nodes = fleet(4);
        nodes[2].mine = true;
        nodes[2].start_mode = Some(NetworkMode::LibP2pOnly);
        let status = MigrationCanaryStatus {
            phase: MigrationCanaryPhase::Succeeded,
            ..MigrationCanaryStatus::default()
        };
        let d = step(&spec, Some(&status), &nodes, None, at(0));
        assert_eq!(d.patches.len(), 1);
        assert_eq!(d.patches[0].node, "node-2");
        assert!(!d.patches[0].hold);
    }
}
