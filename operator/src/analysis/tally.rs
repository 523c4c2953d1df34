//! The step's running count: pure. It lives in the subject's status
//! (`status.analysisTally`), so a new leader picks it up where the old one
//! stopped.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use switchyard_crds::{AnalysisTally, Verdict};

/// The tally to count the current step into: `prev` while it belongs to
/// `step` and the same acknowledgement; counting starts over on a new step
/// (the error trigger's clock keeps running across steps) and again once
/// the step's nodes all acknowledged its mode (what was counted while
/// they switched says nothing about it). `prev` is the tally in memory, or
/// the one status holds when this replica has none.
pub(super) fn rebase(
    prev: Option<&AnalysisTally>,
    step: &str,
    acknowledged: Option<Timestamp>,
) -> AnalysisTally {
    let acknowledged_at = acknowledged.map(Time);
    match prev {
        Some(t) if t.step == step && t.acknowledged_at == acknowledged_at => t.clone(),
        _ => AnalysisTally {
            step: step.to_owned(),
            acknowledged_at,
            error_rate_above_since: prev.and_then(|t| t.error_rate_above_since.clone()),
            ..AnalysisTally::default()
        },
    }
}

/// Count one measurement's verdict: the verdict so far, and whether it is
/// still pending. A verdict once a limit is crossed or enough passes came
/// in a row; until then the step waits.
pub(super) fn count(
    t: &mut AnalysisTally,
    a: &switchyard_crds::Analysis,
    now: Verdict,
) -> (Verdict, bool) {
    match now {
        Verdict::Fail => {
            t.failures += 1;
            t.successes = 0;
        }
        Verdict::Inconclusive => {
            t.inconclusives += 1;
            t.successes = 0;
        }
        Verdict::Pass => t.successes += 1,
    }
    if t.failures > a.failure_limit {
        (Verdict::Fail, false)
    } else if t.inconclusives > a.inconclusive_limit {
        (Verdict::Inconclusive, false)
    } else if t.successes >= a.consecutive_successes.max(1) {
        (Verdict::Pass, false)
    } else {
        (now, true)
    }
}

/// The tally in words, for the measurement's message.
pub(super) fn describe(t: &AnalysisTally, a: &switchyard_crds::Analysis) -> String {
    format!(
        "{} failed, {} inconclusive of this step's measurements, limits {} and {}; {} of {} passes in a row",
        t.failures,
        t.inconclusives,
        a.failure_limit,
        a.inconclusive_limit,
        t.successes,
        a.consecutive_successes.max(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_crds::Analysis;

    fn fresh() -> AnalysisTally {
        rebase(None, "Canary stage 0", None)
    }

    #[test]
    fn a_step_passes_after_enough_passes_in_a_row_and_fails_past_the_limit() {
        let a = Analysis {
            consecutive_successes: 3,
            failure_limit: 1,
            inconclusive_limit: 1,
            ..Analysis::default()
        };
        let mut t = fresh();
        use Verdict::*;
        // Pass, Pass, Fail (within the limit: the run starts over), then
        // three passes.
        let seen: Vec<(Verdict, bool)> = [Pass, Pass, Fail, Pass, Pass, Pass]
            .into_iter()
            .map(|v| count(&mut t, &a, v))
            .collect();
        assert_eq!(
            seen,
            [
                (Pass, true),
                (Pass, true),
                (Fail, true),
                (Pass, true),
                (Pass, true),
                (Pass, false)
            ]
        );
        // A second failure crosses failureLimit 1.
        assert_eq!(count(&mut t, &a, Fail), (Fail, false));
        let mut t = fresh();
        assert_eq!(count(&mut t, &a, Inconclusive), (Inconclusive, true));
        assert_eq!(count(&mut t, &a, Inconclusive), (Inconclusive, false));
    }

    #[test]
    fn a_tally_from_status_continues_on_the_same_step_and_starts_over_on_another() {
        let acked: Timestamp = "2026-11-30T10:00:00Z".parse().expect("time");
        let since: Timestamp = "2026-11-30T09:59:00Z".parse().expect("time");
        let stored = AnalysisTally {
            step: "Canary stage 0".into(),
            acknowledged_at: Some(Time(acked)),
            failures: 1,
            inconclusives: 2,
            successes: 0,
            error_rate_above_since: Some(Time(since)),
        };
        // A new leader on the same step and acknowledgement keeps counting.
        assert_eq!(rebase(Some(&stored), "Canary stage 0", Some(acked)), stored);
        // The next step starts over; the error clock keeps running.
        let next = rebase(Some(&stored), "Progressing stage 0 wave 0", None);
        assert_eq!((next.failures, next.inconclusives), (0, 0));
        assert_eq!(next.error_rate_above_since, Some(Time(since)));
        // So does the same step once its nodes acknowledged again.
        let later = acked
            .checked_add(jiff::SignedDuration::from_secs(5))
            .expect("time");
        let reacked = rebase(Some(&stored), "Canary stage 0", Some(later));
        assert_eq!(
            (reacked.failures, reacked.acknowledged_at),
            (0, Some(Time(later)))
        );
    }
}
