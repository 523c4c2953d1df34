//! Scenario tests of the planner, driven through the simulator.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use switchyard_crds::plan::{GradualRollback, Promote, RollbackRequest};
use switchyard_crds::{
    Analysis, Duration, InconclusiveAction, MigrationPlanSpec, NetworkMode, PlanCanary, PlanPhase,
    RollbackPolicy, RollbackScope, RollbackStrategy, Verdict,
};

use super::sim::Sim;
use super::*;
use NetworkMode::*;

fn spec(stages: &[NetworkMode]) -> MigrationPlanSpec {
    MigrationPlanSpec {
        selector: LabelSelector::default(),
        stages: stages.to_vec(),
        canary: None,
        waves: vec![5, 25, 50, 75, 100],
        wave_interval: Duration::from_secs(300),
        max_unavailable: IntOrString::String("10%".into()),
        progress_deadline: Duration::from_secs(600),
        analysis: None,
        rollback: RollbackPolicy::default(),
        paused: false,
        pause_reason: None,
        promote: None,
        rollback_request: None,
    }
}

fn full() -> MigrationPlanSpec {
    spec(&[DualPreferLibP2p, DualPreferIroh, IrohOnly])
}

fn with_canary(mut s: MigrationPlanSpec, count: u32) -> MigrationPlanSpec {
    s.canary = Some(PlanCanary {
        count: Some(count),
        duration: Duration::from_secs(600),
        ..PlanCanary::default()
    });
    s
}

fn count_mode(sim: &Sim, mode: NetworkMode) -> usize {
    sim.nodes
        .values()
        .filter(|n| n.applied == Some(mode))
        .count()
}

#[test]
fn full_migration_reaches_iroh_only_through_canary_and_waves() {
    let mut sim = Sim::new(with_canary(full(), 2), 40, LibP2pOnly);
    let first = sim.reconcile();
    assert_eq!(sim.phase(), PlanPhase::Canary);
    assert_eq!(first.patches.len(), 2, "only the canaries move first");
    assert!(
        first.patches.iter().all(|p| p.mode == DualPreferLibP2p
            && p.start_mode == LibP2pOnly
            && p.step == "0/canary")
    );
    assert!(matches!(
        first.canary,
        Some(CanaryAction::Ensure { stage: 0, .. })
    ));
    let rounds = sim.drive(60, 2_000, |s| s.phase() == PlanPhase::Succeeded);
    assert!(
        rounds.is_some(),
        "plan finishes; ended in {:?}",
        sim.phase()
    );
    assert_eq!(count_mode(&sim, IrohOnly), 40);
    assert_eq!(sim.status.as_ref().map(|s| s.progress_percent), Some(100));
    assert!(sim.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    }));
}

#[test]
fn waves_are_cumulative_shares_bounded_by_max_unavailable() {
    let mut s = spec(&[DualPreferLibP2p]);
    s.max_unavailable = IntOrString::Int(3);
    let mut sim = Sim::new(s, 100, LibP2pOnly);
    let d = sim.reconcile();
    assert_eq!(
        d.patches.len(),
        3,
        "wave 0 is 5 nodes but only 3 may switch at once"
    );
    sim.ack_all();
    let d = sim.reconcile();
    assert_eq!(d.patches.len(), 2, "the rest of wave 0");
    sim.ack_all();
    sim.reconcile();
    assert_eq!(
        sim.status.as_ref().and_then(|s| s.wave),
        Some(0),
        "soaking wave 0"
    );
    assert_eq!(
        sim.nodes
            .values()
            .filter(|n| n.desired == Some(DualPreferLibP2p))
            .count(),
        5
    );
}

#[test]
fn soak_requeues_at_exactly_its_due_time() {
    let mut sim = Sim::new(spec(&[DualPreferLibP2p]), 20, LibP2pOnly);
    sim.reconcile();
    sim.ack_all();
    sim.advance(7);
    let d = sim.reconcile();
    let acked = sim
        .status
        .as_ref()
        .and_then(|s| s.step_acknowledged_at.clone())
        .map(|t| t.0);
    assert_eq!(acked, Some(sim.now));
    assert_eq!(d.requeue_at, Some(sim.now + SignedDuration::from_secs(300)));
    sim.advance(299);
    let d = sim.reconcile();
    assert!(d.patches.is_empty(), "still soaking");
    sim.advance(1);
    let d = sim.reconcile();
    assert_eq!(sim.status.as_ref().and_then(|s| s.wave), Some(1));
    assert!(!d.patches.is_empty(), "wave 1 starts at the due time");
}

fn analysed(mut s: MigrationPlanSpec) -> MigrationPlanSpec {
    s.analysis = Some(Analysis::default());
    s
}

#[test]
fn analysis_gates_waves_and_stale_verdicts_do_not_count() {
    let mut sim = Sim::new(analysed(spec(&[DualPreferLibP2p])), 20, LibP2pOnly);
    sim.verdict(Verdict::Pass); // before the wave: stale once the wave is acknowledged later
    sim.reconcile();
    sim.advance(10);
    sim.ack_all();
    sim.reconcile();
    sim.advance(400);
    let d = sim.reconcile();
    assert!(d.patches.is_empty(), "no fresh verdict: wait");
    assert_eq!(sim.status.as_ref().and_then(|s| s.wave), Some(0));
    assert_eq!(
        d.requeue_at,
        Some(sim.now + SignedDuration::from_secs(60)),
        "asks again after one analysis interval"
    );
    sim.verdict(Verdict::Pass);
    let d = sim.reconcile();
    assert_eq!(sim.status.as_ref().and_then(|s| s.wave), Some(1));
    assert!(!d.patches.is_empty());
}

#[test]
fn failed_analysis_rolls_back_in_the_safe_order() {
    let mut s = analysed(spec(&[DualPreferIroh, IrohOnly]));
    s.waves = vec![50, 100];
    let mut sim = Sim::new(s, 10, DualPreferLibP2p);
    // Stage 0 completes, stage 1 wave 0 runs.
    sim.drive(400, 200, |s| {
        s.nodes
            .values()
            .filter(|n| n.applied == Some(IrohOnly))
            .count()
            == 5
    });
    assert_eq!(sim.status.as_ref().map(|s| s.stage), Some(1));
    sim.verdict(Verdict::Fail);
    let d = sim.reconcile();
    assert_eq!(sim.phase(), PlanPhase::RollingBack);
    assert!(d.transitions.iter().any(
        |t| matches!(t, Transition::RollbackStarted { trigger, .. } if *trigger == Trigger::AnalysisFailed)
    ));
    sim.analysis = None;
    for _ in 0..50 {
        assert!(!sim.has_island());
        sim.reconcile();
        sim.ack_all();
        sim.advance(5);
    }
    assert_eq!(sim.phase(), PlanPhase::RolledBack);
    assert!(
        sim.nodes
            .values()
            .all(|n| n.applied == Some(DualPreferLibP2p)),
        "every node back where it started"
    );
    let history = &sim.status.as_ref().expect("status").rollback_history;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].nodes, 10);
}

#[test]
fn rollback_from_iroh_only_goes_through_dual_first() {
    let mut s = spec(&[DualPreferLibP2p, IrohOnly]);
    s.waves = vec![100];
    s.max_unavailable = IntOrString::String("100%".into());
    let mut sim = Sim::new(s, 6, LibP2pOnly);
    sim.drive(400, 100, |s| s.phase() == PlanPhase::Succeeded)
        .expect("succeeds");
    sim.spec.rollback_request = Some(RollbackRequest {
        reason: "by hand".into(),
        strategy: None,
    });
    let d = sim.reconcile();
    assert!(
        d.patches.iter().all(|p| p.mode == DualPreferLibP2p),
        "IrohOnly nodes step to dual first: {:?}",
        d.patches
    );
    sim.ack_all();
    let d = sim.reconcile();
    assert!(d.patches.iter().all(|p| p.mode == LibP2pOnly));
    sim.ack_all();
    sim.reconcile();
    assert_eq!(sim.phase(), PlanPhase::RolledBack);
    assert_eq!(
        sim.status
            .as_ref()
            .map(|s| s.rollback_history[0].trigger.clone()),
        Some("Manual".into())
    );
}

#[test]
fn gradual_rollback_moves_batches_with_intervals() {
    let mut s = spec(&[DualPreferIroh]);
    s.waves = vec![100];
    s.max_unavailable = IntOrString::String("100%".into());
    s.rollback.strategy = RollbackStrategy::Gradual;
    s.rollback.gradual = Some(GradualRollback {
        wave_size: 25,
        interval: Duration::from_secs(60),
    });
    let mut sim = Sim::new(s, 8, DualPreferLibP2p);
    sim.drive(400, 100, |s| s.phase() == PlanPhase::Succeeded)
        .expect("succeeds");
    sim.spec.rollback_request = Some(RollbackRequest::default());
    let d = sim.reconcile();
    assert_eq!(d.patches.len(), 2, "25% of 8");
    sim.ack_all();
    let d = sim.reconcile();
    assert!(d.patches.is_empty(), "interval after an acknowledged batch");
    assert_eq!(d.requeue_at, Some(sim.now + SignedDuration::from_secs(60)));
    sim.advance(60);
    assert_eq!(sim.reconcile().patches.len(), 2);
}

#[test]
fn wave_scoped_rollback_returns_only_the_failing_wave_and_stops() {
    let mut s = analysed(spec(&[DualPreferIroh]));
    s.waves = vec![20, 60, 100];
    s.rollback.scope = RollbackScope::Wave;
    s.max_unavailable = IntOrString::String("100%".into());
    let mut sim = Sim::new(s, 10, DualPreferLibP2p);
    sim.drive(400, 50, |s| {
        s.status.as_ref().and_then(|st| st.wave) == Some(1)
            && s.unacknowledged() == 0
            && count_mode(s, DualPreferIroh) == 6
    });
    sim.verdict(Verdict::Fail);
    sim.reconcile();
    sim.analysis = None;
    for _ in 0..5 {
        sim.ack_all();
        sim.reconcile();
    }
    assert_eq!(sim.phase(), PlanPhase::Failed);
    assert_eq!(count_mode(&sim, DualPreferIroh), 2, "wave 0 keeps its mode");
    assert_eq!(count_mode(&sim, DualPreferLibP2p), 8);
}

#[test]
fn pause_stops_new_switches_and_resume_restarts_the_soak() {
    let mut sim = Sim::new(spec(&[DualPreferLibP2p]), 40, LibP2pOnly);
    sim.reconcile();
    sim.spec.paused = true;
    let d = sim.reconcile();
    assert_eq!(sim.phase(), PlanPhase::Paused);
    assert!(d.patches.is_empty());
    sim.ack_all();
    sim.advance(1_000);
    assert!(
        sim.reconcile().patches.is_empty(),
        "paused: nothing new starts"
    );
    sim.spec.paused = false;
    let d = sim.reconcile();
    assert!(d.transitions.contains(&Transition::Resumed));
    assert_eq!(sim.phase(), PlanPhase::Progressing);
}

#[test]
fn promote_skips_the_named_step_s_wait_and_no_other() {
    let mut s = with_canary(spec(&[DualPreferLibP2p]), 2);
    s.canary.as_mut().expect("canary").duration = Duration::from_secs(600);
    s.wave_interval = Duration::from_secs(600);
    s.max_unavailable = IntOrString::String("100%".into());
    let mut sim = Sim::new(s, 10, LibP2pOnly);
    sim.reconcile();
    sim.ack_all();
    let d = sim.reconcile();
    assert!(
        d.patches.is_empty(),
        "the canary runs its 10 minutes: {d:?}"
    );
    assert_eq!(sim.phase(), PlanPhase::Canary);
    // A promotion of a later step does not skip this one.
    sim.spec.promote = Some(Promote { step: "0/0".into() });
    assert!(sim.reconcile().patches.is_empty(), "still the canary");
    sim.spec.promote = Some(Promote {
        step: "0/canary".into(),
    });
    let d = sim.reconcile();
    assert!(!d.patches.is_empty(), "the first wave starts at once");
    let wave = sim.status.as_ref().and_then(|s| s.wave);
    assert!(wave.is_some(), "the canary is over");
    sim.ack_all();
    // The stale promotion (of the canary) does not skip the wave's soak.
    assert!(sim.reconcile().patches.is_empty(), "the wave soaks");
    assert_eq!(sim.status.as_ref().and_then(|s| s.wave), wave);
}

/// A uniform fleet of 100 whose nodes acknowledge 30 s after their write
/// (writes at 20 a second), through a canary and three waves in each of
/// three stages: the ETA at 10% progress against the finish. Returns
/// (seconds the ETA predicted from 10%, seconds it took).
fn eta_against_finish(max_unavailable: &str) -> (f64, f64) {
    let mut s = with_canary(spec(&[DualPreferLibP2p, DualPreferIroh, IrohOnly]), 2);
    s.canary.as_mut().expect("canary").duration = Duration::from_secs(60);
    s.waves = vec![25, 50, 100];
    s.wave_interval = Duration::from_secs(120);
    s.max_unavailable = IntOrString::String(max_unavailable.into());
    let mut sim = Sim::new(s, 100, LibP2pOnly);
    let qps = 20.0;
    sim.write_qps = Some(qps);
    let mut due: BTreeMap<String, Timestamp> = BTreeMap::new();
    let mut at_ten = None;
    for _ in 0..20_000 {
        let d = sim.reconcile();
        for (j, p) in d.patches.iter().enumerate() {
            let written = SignedDuration::from_secs_f64(j as f64 / qps);
            due.insert(
                p.node.clone(),
                sim.now + written + SignedDuration::from_secs(30),
            );
        }
        let st = sim.status.clone().expect("status");
        if at_ten.is_none() && st.progress_percent >= 10 {
            let eta = st.estimated_completion.expect("an ETA while progressing").0;
            at_ten = Some((sim.now, eta));
        }
        if sim.phase() == PlanPhase::Succeeded {
            break;
        }
        sim.advance(1);
        let acked: Vec<String> = due
            .iter()
            .filter(|(_, t)| **t <= sim.now)
            .map(|(n, _)| n.clone())
            .collect();
        for n in acked {
            sim.ack(&n);
            due.remove(&n);
        }
    }
    assert_eq!(sim.phase(), PlanPhase::Succeeded);
    let (t10, eta) = at_ten.expect("10% reached");
    (
        eta.duration_since(t10).as_secs_f64(),
        sim.now.duration_since(t10).as_secs_f64(),
    )
}

#[test]
fn the_eta_at_ten_percent_is_within_a_fifth_of_the_finish() {
    for max_unavailable in ["10%", "50%"] {
        let (predicted, actual) = eta_against_finish(max_unavailable);
        let error = (predicted - actual).abs() / actual;
        assert!(
            error <= 0.2,
            "maxUnavailable {max_unavailable}: predicted {predicted:.0} s at 10%, took {actual:.0} s ({:.0}% off)",
            error * 100.0
        );
    }
}

#[test]
fn a_person_s_pause_reason_is_in_the_paused_transition() {
    let mut sim = Sim::new(spec(&[DualPreferLibP2p]), 4, LibP2pOnly);
    sim.reconcile();
    sim.spec.paused = true;
    sim.spec.pause_reason = Some("waiting for the DB window".into());
    let d = sim.reconcile();
    assert!(
        d.transitions.iter().any(|t| matches!(t,
            Transition::Paused(m) if m.contains("(waiting for the DB window)"))),
        "{:?}",
        d.transitions
    );
}

#[test]
fn a_rollback_request_s_strategy_overrides_the_plan_s() {
    let mut s = spec(&[DualPreferIroh]);
    s.waves = vec![100];
    s.max_unavailable = IntOrString::String("100%".into());
    assert_eq!(s.rollback.strategy, RollbackStrategy::Fast);
    let mut sim = Sim::new(s, 8, DualPreferLibP2p);
    sim.drive(400, 100, |s| s.phase() == PlanPhase::Succeeded)
        .expect("succeeds");
    sim.spec.rollback_request = Some(RollbackRequest {
        reason: "p99 too high".into(),
        strategy: Some(RollbackStrategy::Gradual),
    });
    let batch = sim.reconcile().patches.len();
    assert!(
        (1..8).contains(&batch),
        "a gradual batch (the default gradual settings), not all 8 at once: {batch}"
    );
}

/// A one-stage analysed plan over 20 nodes whose first step is acknowledged
/// and has soaked, waiting for a verdict.
fn soaked(on_inconclusive: InconclusiveAction) -> Sim {
    let mut s = analysed(spec(&[DualPreferLibP2p]));
    s.analysis.as_mut().expect("analysis").on_inconclusive = on_inconclusive;
    let mut sim = Sim::new(s, 20, LibP2pOnly);
    sim.reconcile();
    sim.ack_all();
    sim.reconcile();
    sim.advance(300);
    sim
}

#[test]
fn inconclusive_analysis_pauses_the_plan() {
    let mut sim = soaked(InconclusiveAction::Pause);
    sim.verdict(Verdict::Inconclusive);
    let d = sim.reconcile();
    assert!(d.pause.is_some(), "the operator is told to set spec.paused");
    assert_eq!(sim.phase(), PlanPhase::Paused);
    assert!(sim.spec.paused);
}

#[test]
fn continue_on_inconclusive_lets_the_step_pass_and_a_pending_measurement_waits() {
    let mut sim = soaked(InconclusiveAction::Continue);
    let step = |sim: &Sim| {
        let s = sim.status.as_ref().expect("status");
        (s.phase, s.stage, s.wave)
    };
    let before = step(&sim);
    // A measurement within the limits is shown but decides nothing.
    sim.verdict(Verdict::Fail);
    sim.analysis.as_mut().expect("verdict").pending = true;
    let d = sim.reconcile();
    assert_eq!(step(&sim), before, "{:?}", d.transitions);
    assert!(d.patches.is_empty());
    sim.verdict(Verdict::Inconclusive);
    let d = sim.reconcile();
    assert!(d.pause.is_none(), "Continue does not pause");
    assert_ne!(step(&sim), before, "the step passed");
    assert!(!d.patches.is_empty(), "the next nodes move");
}

#[test]
fn rollback_on_inconclusive_rolls_back() {
    let mut sim = soaked(InconclusiveAction::Rollback);
    sim.verdict(Verdict::Inconclusive);
    sim.reconcile();
    assert_eq!(sim.phase(), PlanPhase::RollingBack);
    assert_eq!(
        sim.status
            .as_ref()
            .and_then(|s| s.rollback.as_ref())
            .map(|r| r.trigger.as_str()),
        Some("AnalysisInconclusive")
    );
}

#[test]
fn invalid_spec_touches_nothing_and_a_fix_resumes() {
    let mut s = spec(&[DualPreferLibP2p]);
    s.waves = vec![50, 25, 100];
    let mut sim = Sim::new(s, 10, LibP2pOnly);
    let d = sim.reconcile();
    assert_eq!(sim.phase(), PlanPhase::Invalid);
    assert!(d.patches.is_empty());
    assert!(matches!(&d.transitions[..], [Transition::Invalid(m)] if m.contains("spec.waves[1]")));
    assert!(
        sim.reconcile().transitions.is_empty(),
        "reported once, not on every reconcile"
    );
    sim.spec.waves = vec![50, 100];
    let d = sim.reconcile();
    assert_eq!(sim.phase(), PlanPhase::Progressing);
    assert_eq!(d.patches.len(), 1);
}

#[test]
fn first_stage_that_cannot_talk_to_the_fleet_is_invalid() {
    let mut sim = Sim::new(spec(&[IrohOnly]), 5, DualPreferIroh);
    sim.add_node("legacy", LibP2pOnly);
    let d = sim.reconcile();
    assert_eq!(sim.phase(), PlanPhase::Invalid);
    assert!(d.patches.is_empty());
    let msg = sim
        .status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default();
    assert!(
        msg.contains("legacy") && msg.contains("spec.stages[0]"),
        "{msg}"
    );
}

#[test]
fn a_node_held_by_an_older_plan_blocks_the_later_plan() {
    let mut sim = Sim::new(spec(&[DualPreferLibP2p]), 5, LibP2pOnly);
    if let Some(n) = sim.nodes.get_mut("node-00002") {
        n.held_by = Some("older".into());
    }
    let d = sim.reconcile();
    assert_eq!(sim.phase(), PlanPhase::Pending);
    assert!(d.patches.is_empty());
    let st = sim.status.clone().expect("status");
    assert_eq!(st.blocked_nodes[0].name, "node-00002");
    assert!(st.blocked_nodes[0].reason.contains("older"));
}

#[test]
fn a_node_that_never_acknowledges_is_reported_after_the_deadline() {
    let mut s = spec(&[DualPreferLibP2p]);
    s.waves = vec![100];
    s.max_unavailable = IntOrString::String("100%".into());
    let mut sim = Sim::new(s, 10, LibP2pOnly);
    sim.reconcile();
    let stuck = "node-00003";
    for _ in 0..12 {
        let names: Vec<String> = sim.nodes.keys().filter(|n| *n != stuck).cloned().collect();
        for n in names {
            sim.ack(&n);
        }
        sim.advance(60);
        sim.reconcile();
    }
    let st = sim.status.clone().expect("status");
    assert_eq!(st.phase, PlanPhase::Progressing);
    assert!(
        st.blocked_nodes
            .iter()
            .any(|b| b.name == stuck && b.reason.contains("progressDeadline")),
        "{:?}",
        st.blocked_nodes
    );
    assert!(st.conditions.iter().any(|c| c.type_ == "Degraded"
        && c.status == "True"
        && c.reason == "ProgressDeadlineExceeded"));
    sim.ack(stuck);
    sim.reconcile();
    assert!(sim.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Degraded" && c.status == "False")
    }));
}

#[test]
fn newcomers_join_at_the_held_mode_and_after_success_at_the_final_mode() {
    let mut s = spec(&[DualPreferLibP2p, DualPreferIroh]);
    s.waves = vec![100];
    let mut sim = Sim::new(s, 10, LibP2pOnly);
    sim.drive(400, 100, |s| {
        s.status.as_ref().is_some_and(|st| st.stage == 1)
    });
    sim.add_node("late", LibP2pOnly);
    let d = sim.reconcile();
    let late = d
        .patches
        .iter()
        .find(|p| p.node == "late")
        .expect("the newcomer is moved");
    assert_eq!(
        (late.mode, late.start_mode, late.step.as_str()),
        (DualPreferLibP2p, LibP2pOnly, "hold")
    );
    sim.drive(400, 100, |s| s.phase() == PlanPhase::Succeeded)
        .expect("succeeds");
    sim.add_node("later", LibP2pOnly);
    let d = sim.reconcile();
    assert_eq!(
        d.patches.iter().find(|p| p.node == "later").map(|p| p.mode),
        Some(DualPreferIroh)
    );
    assert_eq!(sim.phase(), PlanPhase::Succeeded);
}

#[test]
fn a_vanished_node_does_not_hold_the_plan_back() {
    let mut s = spec(&[DualPreferLibP2p]);
    s.waves = vec![100];
    let mut sim = Sim::new(s, 4, LibP2pOnly);
    sim.reconcile();
    sim.nodes.remove("node-00001");
    sim.ack_all();
    sim.drive(400, 20, |s| s.phase() == PlanPhase::Succeeded)
        .expect("succeeds without the vanished node");
}

#[test]
fn the_same_input_gives_the_same_decision() {
    let mut sim = Sim::new(with_canary(analysed(full()), 3), 200, LibP2pOnly);
    for _ in 0..30 {
        let a = sim.decide();
        let b = sim.decide();
        assert_eq!(a, b);
        sim.apply(&a);
        sim.verdict(Verdict::Pass);
        sim.ack_all();
        sim.advance(200);
    }
}

#[test]
fn status_of_a_ten_thousand_node_plan_stays_small() {
    let mut sim = Sim::new(with_canary(analysed(full()), 10), 10_000, LibP2pOnly);
    sim.drive(120, 40, |_| false);
    // Make every node blocked or stuck so the status names as many as it can.
    sim.advance(100_000);
    let d = sim.reconcile();
    let bytes = serde_json::to_vec(&d.status)
        .expect("status serialises")
        .len();
    assert!(bytes < 16 * 1024, "status is {bytes} bytes");
    assert!(d.status.blocked_nodes.len() <= MAX_NAMED_NODES);
}

#[test]
fn rollback_with_conflicting_start_modes_parks_the_minority_in_dual() {
    // The fleet went dual; then newcomers registered IrohOnly. Returning
    // the old nodes to LibP2pOnly next to them would split the fleet.
    let mut s = spec(&[DualPreferIroh]);
    s.waves = vec![100];
    s.max_unavailable = IntOrString::String("100%".into());
    let mut sim = Sim::new(s, 6, LibP2pOnly);
    sim.drive(400, 100, |s| s.phase() == PlanPhase::Succeeded)
        .expect("succeeds");
    sim.add_node("new-a", IrohOnly);
    sim.add_node("new-b", IrohOnly);
    sim.spec.rollback_request = Some(RollbackRequest::default());
    for _ in 0..10 {
        sim.reconcile();
        assert!(!sim.has_island());
        sim.ack_all();
    }
    assert_eq!(sim.phase(), PlanPhase::RolledBack);
    assert_eq!(
        count_mode(&sim, LibP2pOnly),
        6,
        "the majority returns to its start mode"
    );
    assert_eq!(
        sim.nodes["new-a"].applied,
        Some(DualPreferIroh),
        "the newcomers stop next to theirs"
    );
}

#[test]
fn a_newcomer_that_cannot_talk_to_the_stage_is_healed_first() {
    let mut s = spec(&[IrohOnly]);
    s.waves = vec![50, 100];
    s.max_unavailable = IntOrString::String("100%".into());
    let mut sim = Sim::new(s, 4, DualPreferIroh);
    sim.reconcile();
    sim.ack_all();
    sim.add_node("misconfigured", LibP2pOnly);
    let d = sim.reconcile();
    let healed = d
        .patches
        .iter()
        .find(|p| p.node == "misconfigured")
        .expect("moved at once");
    assert_eq!(
        (healed.mode, healed.step.as_str()),
        (DualPreferIroh, "hold")
    );
    sim.ack_all();
    sim.drive(400, 50, |s| s.phase() == PlanPhase::Succeeded)
        .expect("succeeds");
    assert_eq!(count_mode(&sim, IrohOnly), 5);
}

#[test]
fn a_plans_node_with_an_unreadable_start_mode_is_held_with_the_reason() {
    let node = |labels: serde_json::Value, start: &str| -> FleetNode {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "switchyard.dev/v1alpha1",
            "kind": "FleetNode",
            "metadata": {
                "name": "n0",
                "labels": labels,
                "annotations": {switchyard_crds::ANNOTATION_START_MODE: start},
            },
            "spec": {"mode": "DualPreferLibP2p"},
        }))
        .expect("node")
    };
    let ours =
        NodeView::from_fleet_node(&node(serde_json::json!({LABEL_PLAN: "p"}), "Carrier"), None);
    let why = ours.held_by.expect("held");
    assert!(
        why.contains("\"Carrier\"") && why.contains("LibP2pOnly"),
        "{why}"
    );
    assert!(why.contains("remove it"), "says what to do: {why}");
    assert_eq!(ours.start_mode, None);
    // A node no plan owns: a plan adopting it writes its own start mode.
    let free = NodeView::from_fleet_node(&node(serde_json::json!({}), "Carrier"), None);
    assert_eq!(free.held_by, None);
    let fine = NodeView::from_fleet_node(
        &node(serde_json::json!({LABEL_PLAN: "p"}), "IrohOnly"),
        None,
    );
    assert_eq!((fine.start_mode, fine.held_by), (Some(IrohOnly), None));
    // Another plan's hold is kept as it is.
    let both = NodeView::from_fleet_node(
        &node(serde_json::json!({LABEL_PLAN: "p"}), "Carrier"),
        Some("MigrationPlan other".into()),
    );
    assert_eq!(both.held_by.as_deref(), Some("MigrationPlan other"));
}

#[test]
fn an_alert_pauses_a_plan_that_asks_for_it_and_it_resumes_when_the_alert_resolves() {
    for resume in [true, false] {
        let mut s = full();
        s.rollback.alert_action = switchyard_crds::plan::AlertAction::Pause;
        s.rollback.resume_when_alerts_resolve = resume;
        let mut sim = Sim::new(s, 20, LibP2pOnly);
        sim.reconcile();
        sim.ack_all();
        sim.trigger = Some(TriggerInput {
            trigger: Trigger::Alert,
            reason: "SwitchyardHighErrorRate".into(),
        });
        let d = sim.reconcile();
        let pause = d.pause.expect("the alert pauses the plan");
        assert!(pause.by_alert, "{pause:?}");
        assert!(sim.spec.paused && sim.paused_by_alert);
        assert_eq!(sim.phase(), PlanPhase::Paused);
        // While the alert fires, nothing resumes.
        assert!(!sim.reconcile().resume);
        sim.trigger = None;
        let d = sim.reconcile();
        assert_eq!(d.resume, resume, "resume when resolved: {resume}");
        assert_eq!(sim.spec.paused, !resume);
        if resume {
            assert_eq!(d.transitions, [Transition::AlertsResolved]);
            assert!(d.patches.is_empty(), "the spec change brings the plan back");
            sim.reconcile();
            assert_ne!(sim.phase(), PlanPhase::Paused);
        }
    }
    // Paused by hand: an alert resolving does not resume it.
    let mut s = full();
    s.rollback.resume_when_alerts_resolve = true;
    let mut sim = Sim::new(s, 20, LibP2pOnly);
    sim.spec.paused = true;
    assert!(!sim.reconcile().resume);
}

#[test]
fn the_desired_gauge_counts_the_modes_after_the_decisions_writes() {
    // maxUnavailable 10% of 20: both canaries move at once.
    let mut sim = Sim::new(with_canary(full(), 2), 20, LibP2pOnly);
    let d = sim.reconcile();
    assert_eq!(d.patches.len(), 2);
    assert_eq!(d.desired.get(DualPreferLibP2p), 2, "the two canaries");
    assert_eq!(d.desired.get(LibP2pOnly), 18);
    // A node another plan holds is that plan's to count.
    let mut views = sim.views();
    views[0].held_by = Some("MigrationPlan other".into());
    let counts = desired_counts(views.iter().map(|v| (v, v.desired.or(v.applied))));
    assert_eq!(
        counts.get(LibP2pOnly) + counts.get(DualPreferLibP2p),
        19,
        "{counts:?}"
    );
}

#[test]
fn no_node_goes_iroh_only_while_a_node_outside_the_plan_runs_libp2p_only() {
    let mut sim = Sim::new(spec(&[DualPreferIroh, IrohOnly]), 10, LibP2pOnly);
    sim.spec.waves = vec![100];
    sim.spec.max_unavailable = IntOrString::String("100%".into());
    // Another team's node in the same namespace, not selected.
    let gateway = NodeView {
        name: "gateway-0".into(),
        desired: Some(LibP2pOnly),
        applied: Some(LibP2pOnly),
        acknowledged: true,
        owner: None,
        start_mode: None,
        step: None,
        held_by: None,
    };
    sim.outside = vec![gateway.clone()];
    let mut blocked_events = 0;
    for _ in 0..20 {
        let d = sim.reconcile();
        blocked_events += d
            .transitions
            .iter()
            .filter(|t| matches!(t, Transition::Blocked(m) if m.contains("gateway-0")))
            .count();
        sim.ack_all();
        sim.advance(600);
        assert!(!sim.has_island());
    }
    assert_eq!(count_mode(&sim, IrohOnly), 0, "{:?}", sim.nodes);
    assert_eq!(count_mode(&sim, DualPreferIroh), 10);
    let st = sim.status.clone().expect("status");
    assert!(
        st.message.as_deref().is_some_and(
            |m| m.contains("1 FleetNode(s) outside this plan run LibP2pOnly (e.g. gateway-0)")
        ),
        "{:?}",
        st.message
    );
    assert!(st.blocked_nodes.iter().any(|b| b.name == "gateway-0"));
    assert_eq!(blocked_events, 1, "one Event when the wait starts");
    let progressing = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Progressing")
        .expect("condition");
    assert_eq!(progressing.reason, "WaitingForFleet");
    // Once the gateway goes dual, the plan finishes.
    sim.outside[0].desired = Some(DualPreferLibP2p);
    sim.outside[0].applied = Some(DualPreferLibP2p);
    let rounds = sim.drive(600, 50, |s| s.phase() == PlanPhase::Succeeded);
    assert!(rounds.is_some(), "{:?}", sim.status);
    assert_eq!(count_mode(&sim, IrohOnly), 10);
}

#[test]
fn a_name_too_long_for_a_label_value_is_invalid_and_touches_no_node() {
    let mut sim = Sim::new(full(), 4, LibP2pOnly);
    sim.name = "p".repeat(64);
    let d = sim.decide();
    assert_eq!(d.status.phase, PlanPhase::Invalid);
    assert!(d.patches.is_empty(), "no node is written");
    let message = d.status.message.unwrap_or_default();
    assert!(
        message.contains("metadata.name: at most 63 characters"),
        "{message}"
    );
    sim.name = "p".repeat(63);
    assert_ne!(sim.decide().status.phase, PlanPhase::Invalid);
}
