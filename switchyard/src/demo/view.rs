//! What the demo shows: a live frame while the plan runs, and the summary
//! at the end, with the verdict behind the exit status. Pure functions of
//! what was observed, so they are tested here.

use std::fmt::Write as _;
use std::time::Duration;

use switchyard_crds::plan::{AnalysisResult, ModeCounts, RollbackRecord};
use switchyard_crds::{NetworkMode, PlanPhase, Verdict};

use super::plan::{STAGES, Scale};
use super::workload::Counts;

/// The modes the demo's fleet passes through, in order (the view's row of
/// counts).
const MODES: [NetworkMode; 4] = [
    NetworkMode::LibP2pOnly,
    NetworkMode::DualPreferLibP2p,
    NetworkMode::DualPreferIroh,
    NetworkMode::IrohOnly,
];

/// Width of a progress bar, in cells.
const BAR: usize = 24;

/// One look at the fleet and the plan.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Since the plan was created.
    pub elapsed: Duration,
    /// The plan's phase.
    pub phase: PlanPhase,
    /// Index of the stage in progress.
    pub stage: usize,
    /// Index of the wave in progress; `None` while the canary runs.
    pub wave: Option<usize>,
    /// Nodes reporting each mode.
    pub by_mode: ModeCounts,
    /// Nodes in the fleet.
    pub total: usize,
    /// The workload so far.
    pub load: Counts,
    /// Workload operations a second, lately.
    pub ops_per_second: f64,
    /// The latest analysis.
    pub analysis: Option<AnalysisResult>,
    /// The plan's message.
    pub message: Option<String>,
    /// The fault injected, if any: what and where.
    pub fault: Option<String>,
}

/// Nodes at or past stage `s` (their mode is that stage's or a later one).
fn reached(s: &Snapshot, stage: usize) -> usize {
    STAGES[stage..]
        .iter()
        .map(|m| s.by_mode.get(*m) as usize)
        .sum()
}

fn bar(done: usize, total: usize) -> String {
    let cells = (done * BAR).checked_div(total).unwrap_or(0).min(BAR);
    format!("[{}{}]", "█".repeat(cells), "░".repeat(BAR - cells))
}

/// Where a stage is: done, its steps so far, or not started.
fn steps(s: &Snapshot, stage: usize) -> String {
    let rolling = matches!(s.phase, PlanPhase::RollingBack | PlanPhase::RolledBack);
    if stage > s.stage || (s.phase == PlanPhase::Pending && stage == 0) {
        return String::new();
    }
    if stage < s.stage || s.phase == PlanPhase::Succeeded {
        return "done".into();
    }
    let here = if rolling { "✗" } else { "▶" };
    match s.wave {
        None => format!("canary {here}"),
        Some(w) => {
            let mut out = String::from("canary ✓");
            let waves = Scale::new(s.total).waves().len();
            for i in 0..=w.min(waves - 1) {
                let mark = if i < w { "✓" } else { here };
                let _ = write!(out, "  wave {}/{waves} {mark}", i + 1);
            }
            out
        }
    }
}

/// The live frame: one line per row.
pub fn frame(s: &Snapshot) -> Vec<String> {
    let mut lines = vec![format!(
        "Plan       {:?}{}   {:>5.1} s",
        s.phase,
        s.message
            .as_deref()
            .map(|m| format!(": {}", shorten(m, 70)))
            .unwrap_or_default(),
        s.elapsed.as_secs_f64()
    )];
    for (i, mode) in STAGES.iter().enumerate() {
        let done = reached(s, i);
        lines.push(format!(
            "  {} {:<17} {} {:>3}/{:<3} {}",
            i + 1,
            format!("{mode:?}"),
            bar(done, s.total),
            done,
            s.total,
            steps(s, i)
        ));
    }
    let modes: Vec<String> = MODES
        .iter()
        .map(|m| format!("{m:?} {}", s.by_mode.get(*m)))
        .collect();
    lines.push(format!("Nodes      {}", modes.join(" · ")));
    lines.push(format!(
        "Workload   {} operations ({:.0}/s), {} failed",
        s.load.ok + s.load.failed,
        s.ops_per_second,
        s.load.failed
    ));
    lines.push(format!("Analysis   {}", analysis(s.analysis.as_ref())));
    if let Some(a) = s.analysis.as_ref().filter(|a| a.verdict != Verdict::Pass) {
        let why = a.message.as_deref().unwrap_or("");
        lines.push(format!("           {}", shorten(why, 110)));
    }
    if let Some(f) = &s.fault {
        lines.push(format!("Fault      {f}"));
    }
    lines
}

fn analysis(a: Option<&AnalysisResult>) -> String {
    let Some(a) = a else {
        return "waiting for the first measurement".into();
    };
    let checks: Vec<String> = a
        .metrics
        .iter()
        .map(|m| {
            let value = m.value.map_or("-".into(), |v| {
                if v.abs() >= 10.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.3}")
                }
            });
            let mark = match m.verdict {
                Verdict::Pass => "✓",
                Verdict::Fail => "✗",
                _ => "?",
            };
            format!("{} {value} ({}) {mark}", m.name, m.threshold)
        })
        .collect();
    format!("{:?}: {}", a.verdict, checks.join(" · "))
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let cut: String = s.chars().take(max - 1).collect();
    format!("{cut}…")
}

/// How a demo run ended.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The plan's last phase.
    pub phase: PlanPhase,
    /// The phase the run should end in: Succeeded, or RolledBack with
    /// `--fail-at`.
    pub expected: PlanPhase,
    /// From the plan's creation to its end.
    pub took: Duration,
    /// Nodes in the fleet.
    pub total: usize,
    /// Nodes reporting each mode at the end.
    pub by_mode: ModeCounts,
    /// The workload.
    pub load: Counts,
    /// Looks at the fleet in which two nodes shared no transport, of all.
    pub islands: (u64, u64),
    /// The plan's rollbacks.
    pub rollbacks: Vec<RollbackRecord>,
    /// Stopped by Ctrl-C (or SIGTERM) before the end.
    pub interrupted: bool,
}

/// The mode every node ends on when a plan ends in `phase`: IrohOnly when
/// it succeeded, LibP2pOnly when it rolled back.
pub fn end_mode(phase: PlanPhase) -> NetworkMode {
    match phase {
        PlanPhase::Succeeded => NetworkMode::IrohOnly,
        _ => NetworkMode::LibP2pOnly,
    }
}

/// Why the run is not the one expected; `Ok` when it is.
pub fn verdict(o: &Outcome) -> Result<(), String> {
    if o.interrupted {
        return Err("interrupted before the plan finished".into());
    }
    if o.phase != o.expected {
        return Err(format!(
            "the plan ended {:?}, expected {:?}",
            o.phase, o.expected
        ));
    }
    let end = end_mode(o.expected);
    let at_end = o.by_mode.get(end) as usize;
    if at_end != o.total {
        return Err(format!("{at_end} of {} nodes ended on {end:?}", o.total));
    }
    let lost = o.load.failed - o.load.failed_under_fault;
    if lost > 0 {
        return Err(format!(
            "{lost} workload operations failed outside an injected fault (the last: {})",
            o.load.last_failure.as_deref().unwrap_or("?")
        ));
    }
    if o.islands.0 > 0 {
        return Err(format!("{} looks at the fleet saw an island", o.islands.0));
    }
    if o.expected == PlanPhase::RolledBack && o.rollbacks.is_empty() {
        return Err("the plan rolled back without a rollback record".into());
    }
    Ok(())
}

/// The summary printed at the end.
pub fn summary(o: &Outcome) -> String {
    let mut out = String::new();
    let result = match verdict(o) {
        _ if o.interrupted => format!("interrupted while the plan was {:?}", o.phase),
        Ok(()) => format!("{:?}, as expected", o.phase),
        Err(why) => format!("{:?}: NOT as expected: {why}", o.phase),
    };
    let _ = writeln!(out, "Result     {result}");
    let _ = writeln!(out, "Duration   {:.1} s", o.took.as_secs_f64());
    let iroh = o.by_mode.get(NetworkMode::IrohOnly);
    let _ = writeln!(
        out,
        "Migrated   {iroh} of {} nodes on IrohOnly at the end",
        o.total
    );
    let total = o.load.ok + o.load.failed;
    let under = if o.load.failed_under_fault > 0 {
        format!(
            " ({} while the fault was injected)",
            o.load.failed_under_fault
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "Workload   {total} operations, {} failed{under}",
        o.load.failed
    );
    let _ = writeln!(
        out,
        "Islands    {} of {} looks at the fleet",
        o.islands.0, o.islands.1
    );
    if o.rollbacks.is_empty() {
        let _ = writeln!(out, "Rollbacks  none");
    }
    for r in &o.rollbacks {
        let _ = writeln!(
            out,
            "Rollback   {}{}: {} nodes, scope {:?}: {}",
            r.trigger,
            r.step
                .as_deref()
                .map(|s| format!(" at {s}"))
                .unwrap_or_default(),
            r.nodes,
            r.scope,
            r.reason
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mid_migration() -> Snapshot {
        Snapshot {
            elapsed: Duration::from_millis(12_300),
            phase: PlanPhase::Progressing,
            stage: 1,
            wave: Some(1),
            by_mode: counts([0, 15, 15, 0]),
            total: 30,
            load: Counts {
                ok: 400,
                failed: 0,
                ..Counts::default()
            },
            ops_per_second: 58.0,
            ..Snapshot::default()
        }
    }

    #[test]
    fn the_frame_shows_each_stage_s_progress_and_steps_nodes_by_mode_and_the_workload() {
        let f = frame(&mid_migration());
        assert!(
            f[0].contains("Progressing") && f[0].contains("12.3 s"),
            "{f:?}"
        );
        // Stage 1: every node is at DualPreferLibP2p or past it.
        assert!(f[1].contains(&format!("[{}]", "█".repeat(BAR))) && f[1].contains("30/30"));
        assert!(f[1].ends_with("done"), "{}", f[1]);
        // Stage 2: half the fleet, canary and the first wave passed.
        assert!(f[2].contains("15/30"), "{}", f[2]);
        assert!(
            f[2].contains("canary ✓  wave 1/2 ✓  wave 2/2 ▶"),
            "{}",
            f[2]
        );
        assert!(
            f[3].contains(" 0/30") && f[3].trim_end().ends_with("0/30"),
            "{}",
            f[3]
        );
        assert!(
            f[4].contains("DualPreferLibP2p 15 · DualPreferIroh 15"),
            "{}",
            f[4]
        );
        assert!(f[5].contains("400 operations (58/s), 0 failed"), "{}", f[5]);
        assert!(f[6].contains("waiting for the first measurement"));
    }

    #[test]
    fn a_rollback_marks_the_step_it_left() {
        let mut s = mid_migration();
        s.phase = PlanPhase::RollingBack;
        s.wave = None;
        s.fault = Some("all=0.5 in node-01, node-02".into());
        let f = frame(&s);
        assert!(f[2].ends_with("canary ✗"), "{}", f[2]);
        assert!(f.last().is_some_and(|l| l.contains("node-01")), "{f:?}");
    }

    /// Counts of LibP2pOnly, DualPreferLibP2p, DualPreferIroh, IrohOnly.
    fn counts(n: [u32; 4]) -> ModeCounts {
        let mut c = ModeCounts::default();
        for (mode, n) in MODES.iter().zip(n) {
            for _ in 0..n {
                c.add(*mode);
            }
        }
        c
    }

    fn ended(phase: PlanPhase, expected: PlanPhase, by_mode: [u32; 4]) -> Outcome {
        Outcome {
            phase,
            expected,
            took: Duration::from_secs(40),
            total: 30,
            by_mode: counts(by_mode),
            islands: (0, 100),
            ..Outcome::default()
        }
    }

    #[test]
    fn success_needs_the_expected_phase_every_node_at_its_end_and_no_lost_operation() {
        let ok = ended(PlanPhase::Succeeded, PlanPhase::Succeeded, [0, 0, 0, 30]);
        assert_eq!(verdict(&ok), Ok(()));
        assert!(summary(&ok).contains("Succeeded, as expected"));
        let wrong = ended(PlanPhase::RolledBack, PlanPhase::Succeeded, [30, 0, 0, 0]);
        assert!(verdict(&wrong).is_err());
        let straggler = ended(PlanPhase::Succeeded, PlanPhase::Succeeded, [0, 0, 1, 29]);
        assert!(
            verdict(&straggler)
                .expect_err("one behind")
                .contains("29 of 30")
        );
        let mut lost = ok.clone();
        lost.load.failed = 2;
        lost.load.last_failure = Some("get demo-1-1: 404".into());
        let why = verdict(&lost).expect_err("lost operations");
        assert!(
            why.contains("2 workload operations") && why.contains("404"),
            "{why}"
        );
        assert!(summary(&lost).contains("NOT as expected"));
        let mut island = ok.clone();
        island.islands = (1, 100);
        assert!(verdict(&island).is_err());
    }

    #[test]
    fn a_failure_run_needs_a_recorded_rollback_and_forgives_failures_under_the_fault() {
        let mut o = ended(PlanPhase::RolledBack, PlanPhase::RolledBack, [30, 0, 0, 0]);
        assert!(verdict(&o).is_err(), "no rollback record");
        o.rollbacks.push(RollbackRecord {
            trigger: "AnalysisFailed".into(),
            reason: "error-rate 0.41 > 0.05".into(),
            nodes: 2,
            step: Some("stage 2 canary".into()),
            ..RollbackRecord::default()
        });
        o.load.failed = 7;
        o.load.failed_under_fault = 7;
        assert_eq!(verdict(&o), Ok(()));
        let text = summary(&o);
        assert!(
            text.contains("7 failed (7 while the fault was injected)"),
            "{text}"
        );
        assert!(
            text.contains("AnalysisFailed at stage 2 canary: 2 nodes"),
            "{text}"
        );
        let mut interrupted = o.clone();
        interrupted.interrupted = true;
        assert!(verdict(&interrupted).is_err());
    }
}
