//! A plan's rollback triggers over all its nodes: pure, with the time
//! passed in. HighErrorRate's `for` clock lives in the tally, so it
//! survives a failover.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use switchyard_crds::AnalysisTally;
use switchyard_crds::plan::RollbackTriggers;

use super::evaluate::pick;
use super::measure::Measurement;
use crate::planner::{Trigger, TriggerInput};

/// The first trigger that fires over `m`, if any. `min_requests`: the
/// fewest requests a rate is judged on (a handful says nothing).
pub(super) fn check(
    triggers: &RollbackTriggers,
    min_requests: f64,
    tally: &mut AnalysisTally,
    m: &Measurement,
    now: Timestamp,
) -> Option<TriggerInput> {
    let mut all = pick(&m.canary, None);
    all.add(&pick(&m.baseline, None));
    let enough = all.requests >= min_requests;
    if let Some(t) = &triggers.high_error_rate {
        match all.error_rate().filter(|r| enough && *r > t.threshold) {
            Some(rate) => {
                let since = tally.error_rate_above_since.get_or_insert(Time(now)).0;
                let above = now.duration_since(since);
                let hold = SignedDuration::try_from(std::time::Duration::from(t.for_))
                    .unwrap_or(SignedDuration::MAX);
                if above >= hold {
                    return Some(TriggerInput {
                        trigger: Trigger::HighErrorRate,
                        reason: format!(
                            "error rate {:.4} above {} for {:#} ({} of {} requests in the last window)",
                            rate, t.threshold, above, all.errors, all.requests
                        ),
                    });
                }
            }
            None if enough => tally.error_rate_above_since = None,
            None => {}
        }
    }
    if let Some(t) = &triggers.latency_regression
        && enough
        && let Some(ms) = all.latency_ms(t.percentile / 100.0)
        && ms > f64::from(t.threshold_ms)
    {
        return Some(TriggerInput {
            trigger: Trigger::LatencyRegression,
            reason: format!(
                "p{} latency {ms:.1} ms above {} ms ({} requests in the last window)",
                t.percentile, t.threshold_ms, all.requests
            ),
        });
    }
    if let Some(t) = &triggers.health_check_failure
        && let Some(h) = m.health_all
        && h < t.min_health_score
    {
        return Some(TriggerInput {
            trigger: Trigger::HealthCheckFailure,
            reason: format!(
                "lowest agent health score {h:.2} below {} (of {} nodes scraped)",
                t.min_health_score, m.scraped
            ),
        });
    }
    if let Some(t) = &triggers.network_partition
        && let Some(risk) = m.partition_risk_all
        && risk > t.risk_above
    {
        return Some(TriggerInput {
            trigger: Trigger::NetworkPartition,
            reason: format!("partition risk {risk:.2} above {}", t.risk_above),
        });
    }
    None
}

/// Whether `triggers` asks for anything to be measured.
pub(super) fn any(triggers: &RollbackTriggers) -> bool {
    triggers.high_error_rate.is_some()
        || triggers.latency_regression.is_some()
        || triggers.network_partition.is_some()
        || triggers.health_check_failure.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scrape::Window;

    #[test]
    fn a_high_error_rate_fires_only_once_it_has_lasted_for_its_hold_even_across_a_failover() {
        let triggers: RollbackTriggers = serde_json::from_value(serde_json::json!({
            "highErrorRate": {"threshold": 0.1, "for": "30s"}
        }))
        .expect("triggers");
        let t0: Timestamp = "2026-11-30T10:00:00Z".parse().expect("time");
        let at = |s: i64| t0.checked_add(SignedDuration::from_secs(s)).expect("time");
        let mut m = Measurement::empty(t0);
        m.canary[0] = Window {
            requests: 100.0,
            errors: 50.0,
            buckets: Vec::new(),
        };
        let mut tally = AnalysisTally::default();
        assert_eq!(check(&triggers, 20.0, &mut tally, &m, at(0)), None);
        assert_eq!(tally.error_rate_above_since, Some(Time(at(0))));
        // A new leader reads the tally from status: the clock goes on.
        let mut taken_over = tally.clone();
        assert_eq!(check(&triggers, 20.0, &mut taken_over, &m, at(29)), None);
        let fired = check(&triggers, 20.0, &mut taken_over, &m, at(30)).expect("fires");
        assert_eq!(fired.trigger, Trigger::HighErrorRate);
        // A clean window with enough requests stops the clock.
        m.canary[0].errors = 0.0;
        assert_eq!(check(&triggers, 20.0, &mut tally, &m, at(31)), None);
        assert_eq!(tally.error_rate_above_since, None);
    }
}
