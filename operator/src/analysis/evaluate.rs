//! Every check over one measurement: pure, from a [`Measurement`] and the
//! PromQL answers to a verdict, the per-check results and a summary.

use std::collections::HashMap;

use switchyard_crds::plan::MetricResult;
use switchyard_crds::{BuiltinMetric, MetricCheck, Reference, Verdict};

use super::measure::Measurement;
use crate::scrape::Window;

pub(super) fn pick(windows: &[Window; 2], transport: Option<switchyard_crds::Transport>) -> Window {
    match transport {
        Some(switchyard_crds::Transport::Libp2p) => windows[0].clone(),
        Some(switchyard_crds::Transport::Iroh) => windows[1].clone(),
        None => {
            let mut w = windows[0].clone();
            w.add(&windows[1]);
            w
        }
    }
}

/// Every check over one measurement: the measurement's verdict, the
/// per-check results, and a summary. `promql` holds each PromQL check's
/// value (or why there is none), by check name.
pub(super) fn evaluate(
    checks: &[MetricCheck],
    min_sample: u32,
    m: &Measurement,
    promql: &HashMap<String, Result<f64, String>>,
) -> (Verdict, Vec<MetricResult>, String) {
    let builtins = checks.iter().any(|c| c.builtin.is_some());
    let mut notes = Vec::new();
    if builtins && m.scraped == 0 {
        notes.push(format!(
            "no node could be scraped: {}",
            m.failed
                .first()
                .map_or("no metrics endpoints", String::as_str)
        ));
    } else if builtins && !m.failed.is_empty() {
        notes.push(format!(
            "{} node(s) not scraped, e.g. {}",
            m.failed.len(),
            m.failed[0]
        ));
    }
    let results: Vec<MetricResult> = checks
        .iter()
        .map(|check| {
            let v = value_of(check, min_sample, m, promql);
            judge(check, v, min_sample, m, &mut notes)
        })
        .collect();
    let verdict = if results.iter().any(|r| r.verdict == Verdict::Fail) {
        Verdict::Fail
    } else if results.iter().any(|r| r.verdict == Verdict::Inconclusive)
        || (builtins && m.scraped == 0)
    {
        Verdict::Inconclusive
    } else {
        Verdict::Pass
    };
    let summary = if notes.is_empty() {
        format!("{verdict:?}: every check met its threshold")
    } else {
        format!("{verdict:?}: {}", notes.join("; "))
    };
    (verdict, results, summary)
}

/// One check's value: built in, or its PromQL answer.
fn value_of(
    check: &MetricCheck,
    min_sample: u32,
    m: &Measurement,
    promql: &HashMap<String, Result<f64, String>>,
) -> Value {
    match (check.builtin, &check.promql) {
        (Some(b), _) => builtin(b, check, min_sample, m),
        (None, Some(_)) => match promql.get(&check.name) {
            Some(Ok(v)) => Value {
                value: Some(*v),
                cohort: "prometheus".into(),
                ..Value::default()
            },
            Some(Err(why)) => Value::missing("prometheus", why.clone()),
            None => Value::missing("prometheus", "not queried".into()),
        },
        (None, None) => Value::missing("", "no metric".into()),
    }
}

/// The thresholds a check sets (as text) and whether `value` (against
/// `reference`) breaks one.
fn thresholds(
    check: &MetricCheck,
    value: Option<f64>,
    reference: Option<f64>,
) -> (Vec<String>, bool) {
    let mut threshold = Vec::new();
    let mut failed = false;
    if let Some(max) = check.max {
        threshold.push(format!("<= {max}"));
        failed |= value.is_some_and(|v| v > max);
    }
    if let Some(min) = check.min {
        threshold.push(format!(">= {min}"));
        failed |= value.is_some_and(|v| v < min);
    }
    let against = match check.compare_with.unwrap_or_default() {
        Reference::Baseline => "baseline",
        Reference::Libp2p => "libp2p",
        Reference::Iroh => "iroh",
    };
    if let Some(p) = check.max_increase_percent {
        threshold.push(format!("<= {against} + {p}%"));
        if let (Some(v), Some(b)) = (value, reference)
            && b > 0.0
        {
            failed |= v > b * (1.0 + p / 100.0);
        }
    }
    if let Some(p) = check.max_decrease_percent {
        threshold.push(format!(">= {against} - {p}%"));
        if let (Some(v), Some(b)) = (value, reference) {
            failed |= v < b * (1.0 - p / 100.0);
        }
    }
    (threshold, failed)
}

/// A check's result from its value; why it has no value, or what it
/// breaks, goes to `notes`.
fn judge(
    check: &MetricCheck,
    v: Value,
    min_sample: u32,
    m: &Measurement,
    notes: &mut Vec<String>,
) -> MetricResult {
    let (value, baseline) = (v.value, v.reference);
    let (threshold, failed) = thresholds(check, value, baseline);
    let verdict = match (value, failed) {
        (_, true) => Verdict::Fail,
        (None, false) => Verdict::Inconclusive,
        (Some(_), false) => Verdict::Pass,
    };
    if let Some(why) = &v.why {
        notes.push(format!("{}: {why}", check.name));
    }
    if verdict == Verdict::Fail {
        let worst = check
            .builtin
            .and_then(|b| worst_node(b, check.transport, min_sample, m))
            .map_or(String::new(), |(node, v)| {
                format!(" (worst canary node {node}: {v:.4})")
            });
        notes.push(format!(
            "{} = {} breaks {}{worst}",
            check.name,
            value.map_or("?".into(), |v| format!("{v:.4}")),
            threshold.join(" and ")
        ));
    }
    MetricResult {
        name: check.name.clone(),
        value,
        baseline,
        threshold: threshold.join(", "),
        verdict,
        cohort: v.cohort,
        reason: v.why,
    }
}

/// The moved node with the highest value of a windowed metric (error
/// rate, a latency percentile), among those with enough requests.
fn worst_node(
    metric: BuiltinMetric,
    transport: Option<switchyard_crds::Transport>,
    min_sample: u32,
    m: &Measurement,
) -> Option<(String, f64)> {
    let f = |w: &Window| match metric {
        BuiltinMetric::ErrorRate => w.error_rate(),
        BuiltinMetric::LatencyP50 => w.latency_ms(0.5),
        BuiltinMetric::LatencyP95 => w.latency_ms(0.95),
        BuiltinMetric::LatencyP99 => w.latency_ms(0.99),
        _ => None,
    };
    // A node's own sample is smaller than the cohort's: a tenth of it.
    let floor = f64::from(min_sample) / 10.0;
    m.per_node
        .iter()
        .filter_map(|(name, windows)| {
            let w = pick(windows, transport);
            (w.requests >= floor).then(|| Some((name.clone(), f(&w)?)))?
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

/// One check's value, what it is compared with, whose data it is, and why
/// there is no value when there is none.
#[derive(Default)]
struct Value {
    value: Option<f64>,
    reference: Option<f64>,
    cohort: String,
    why: Option<String>,
}

impl Value {
    fn missing(cohort: &str, why: String) -> Value {
        Value {
            cohort: cohort.into(),
            why: Some(why),
            ..Value::default()
        }
    }
}

/// A built-in metric on the canary cohort, and what it is compared with:
/// the baseline cohort, or the other transport on the same nodes.
fn builtin(metric: BuiltinMetric, check: &MetricCheck, min_sample: u32, m: &Measurement) -> Value {
    let transport = check.transport;
    let canary = pick(&m.canary, transport);
    let on = |t: Option<switchyard_crds::Transport>| match t {
        Some(switchyard_crds::Transport::Libp2p) => ", libp2p",
        Some(switchyard_crds::Transport::Iroh) => ", iroh",
        None => "",
    };
    let canary_cohort = format!("canary ({} nodes){}", m.canary_nodes, on(transport));
    let (reference, reference_cohort) = match check.compare_with.unwrap_or_default() {
        Reference::Baseline => (
            pick(&m.baseline, transport),
            format!("baseline ({} nodes){}", m.baseline_nodes, on(transport)),
        ),
        Reference::Libp2p => (m.canary[0].clone(), "libp2p on the same nodes".into()),
        Reference::Iroh => (m.canary[1].clone(), "iroh on the same nodes".into()),
    };
    let relative = check.max_increase_percent.is_some() || check.max_decrease_percent.is_some();
    let cohort = if relative {
        format!("{canary_cohort} vs {reference_cohort}")
    } else {
        canary_cohort.clone()
    };
    let enough = |w: &Window| w.requests >= f64::from(min_sample);
    let gauge = |v: Option<f64>, what: &str| match v {
        Some(v) => Value {
            value: Some(v),
            cohort: canary_cohort.clone(),
            ..Value::default()
        },
        None => Value::missing(&canary_cohort, format!("no agent reported its {what}")),
    };
    let windowed = |f: &dyn Fn(&Window) -> Option<f64>| {
        if !enough(&canary) {
            return Value::missing(
                &cohort,
                format!(
                    "{} requests in the window, fewer than minSampleSize {min_sample}",
                    canary.requests
                ),
            );
        }
        let r = enough(&reference).then(|| f(&reference)).flatten();
        if relative && r.is_none() {
            return Value {
                value: f(&canary),
                cohort: cohort.clone(),
                why: Some(format!(
                    "{reference_cohort}: {} requests, fewer than minSampleSize {min_sample}; the relative threshold is not applied",
                    reference.requests
                )),
                ..Value::default()
            };
        }
        Value {
            value: f(&canary),
            reference: r,
            cohort: cohort.clone(),
            why: None,
        }
    };
    match metric {
        BuiltinMetric::ErrorRate => windowed(&|w: &Window| w.error_rate()),
        BuiltinMetric::LatencyP50 => windowed(&|w: &Window| w.latency_ms(0.5)),
        BuiltinMetric::LatencyP95 => windowed(&|w: &Window| w.latency_ms(0.95)),
        BuiltinMetric::LatencyP99 => windowed(&|w: &Window| w.latency_ms(0.99)),
        BuiltinMetric::PartitionRisk => gauge(m.partition_risk, "partition risk"),
        BuiltinMetric::PeerCount => gauge(m.min_peers, "peers"),
        BuiltinMetric::HealthScore => gauge(m.health, "health score"),
        BuiltinMetric::RoutingHealth => gauge(m.routing_health, "DHT routing health"),
        BuiltinMetric::DhtLookupSuccess => dht_success(check, min_sample, m, &canary_cohort),
    }
}

/// The share of the canary's DHT operations that succeeded, and the
/// baseline's for a relative threshold; each needs minSampleSize
/// operations.
fn dht_success(check: &MetricCheck, min_sample: u32, m: &Measurement, cohort: &str) -> Value {
    let rate = |(all, failed): (f64, f64)| {
        (all >= f64::from(min_sample) && all > 0.0).then(|| (all - failed) / all)
    };
    let [canary, baseline] = m.dht;
    let Some(value) = rate(canary) else {
        return Value::missing(
            cohort,
            format!(
                "{} DHT operations in the window, fewer than minSampleSize {min_sample}",
                canary.0
            ),
        );
    };
    let relative = check.max_increase_percent.is_some() || check.max_decrease_percent.is_some();
    Value {
        value: Some(value),
        reference: rate(baseline),
        cohort: if relative {
            format!("{cohort} vs baseline ({} nodes)", m.baseline_nodes)
        } else {
            cohort.to_owned()
        },
        why: (relative && rate(baseline).is_none()).then(|| {
            format!(
                "baseline: {} DHT operations, fewer than minSampleSize {min_sample}; the relative threshold is not applied",
                baseline.0
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;

    fn window(requests: f64, errors: f64, p95_bucket: f64) -> Window {
        // Every request in one latency bucket.
        Window {
            requests,
            errors,
            buckets: vec![
                (p95_bucket, requests - errors),
                (f64::INFINITY, requests - errors),
            ],
        }
    }

    fn measurement(canary: [Window; 2], baseline: [Window; 2]) -> Measurement {
        Measurement {
            canary,
            baseline,
            canary_nodes: 2,
            baseline_nodes: 8,
            scraped: 10,
            ..Measurement::empty(Timestamp::UNIX_EPOCH)
        }
    }

    fn check(json: serde_json::Value) -> MetricCheck {
        serde_json::from_value(json).expect("check")
    }

    #[test]
    fn iroh_is_compared_with_libp2p_on_the_same_nodes() {
        // MigrationCanary: libp2p answers within 10 ms, iroh within 50 ms.
        let m = measurement(
            [window(100.0, 0.0, 0.01), window(100.0, 0.0, 0.05)],
            [window(100.0, 0.0, 0.05), Window::default()],
        );
        let slower = check(serde_json::json!({
            "name": "iroh-vs-libp2p", "builtin": "LatencyP95", "transport": "Iroh",
            "compareWith": "Libp2p", "maxIncreasePercent": 50,
        }));
        let (v, results, _) = evaluate(&[slower], 20, &m, &HashMap::new());
        assert_eq!(v, Verdict::Fail, "{results:?}");
        let r = &results[0];
        assert_eq!(
            r.cohort,
            "canary (2 nodes), iroh vs libp2p on the same nodes"
        );
        assert_eq!(r.threshold, "<= libp2p + 50%");
        assert!(r.value.expect("value") > r.baseline.expect("libp2p") * 1.5);
        // Against the baseline cohort (libp2p at 50 ms) the same canary
        // iroh latency is fine.
        let baseline = check(serde_json::json!({
            "name": "iroh-vs-baseline", "builtin": "LatencyP95", "transport": "Iroh",
            "maxIncreasePercent": 50,
        }));
        let m = measurement(
            [window(100.0, 0.0, 0.01), window(100.0, 0.0, 0.05)],
            [Window::default(), window(100.0, 0.0, 0.05)],
        );
        let (v, results, _) = evaluate(&[baseline], 20, &m, &HashMap::new());
        assert_eq!(v, Verdict::Pass, "{results:?}");
        assert_eq!(
            results[0].cohort,
            "canary (2 nodes), iroh vs baseline (8 nodes), iroh"
        );
    }

    #[test]
    fn a_failed_error_rate_names_the_worst_canary_node() {
        let mut m = measurement(
            [window(100.0, 30.0, 0.01), Window::default()],
            [Window::default(), Window::default()],
        );
        m.per_node = vec![
            (
                "node-a".into(),
                [window(50.0, 5.0, 0.01), Window::default()],
            ),
            (
                "node-b".into(),
                [window(50.0, 25.0, 0.01), Window::default()],
            ),
        ];
        let errors =
            check(serde_json::json!({"name": "errors", "builtin": "ErrorRate", "max": 0.05}));
        let (v, _, summary) = evaluate(&[errors], 20, &m, &HashMap::new());
        assert_eq!(v, Verdict::Fail);
        assert!(
            summary.contains("errors = 0.3000 breaks <= 0.05 (worst canary node node-b: 0.5000)"),
            "{summary}"
        );
    }

    #[test]
    fn dht_checks_gate_on_lookup_success_and_routing_health() {
        let mut m = measurement(Default::default(), Default::default());
        let checks = [
            check(serde_json::json!({"name": "dht", "builtin": "DhtLookupSuccess", "min": 0.99})),
            check(serde_json::json!({"name": "routing", "builtin": "RoutingHealth", "min": 2})),
        ];
        // No data yet: inconclusive, saying why.
        let (v, results, _) = evaluate(&checks, 20, &m, &HashMap::new());
        assert_eq!(v, Verdict::Inconclusive);
        assert_eq!(
            results[0].reason.as_deref(),
            Some("0 DHT operations in the window, fewer than minSampleSize 20")
        );
        assert_eq!(
            results[1].reason.as_deref(),
            Some("no agent reported its DHT routing health")
        );
        m.dht = [(100.0, 0.0), (400.0, 0.0)];
        m.routing_health = Some(2.0);
        let (v, _, summary) = evaluate(&checks, 20, &m, &HashMap::new());
        assert_eq!(v, Verdict::Pass, "{summary}");
        // 3 failed lookups in 100, and one node Degraded: both fail.
        m.dht = [(100.0, 3.0), (400.0, 0.0)];
        m.routing_health = Some(1.0);
        let (v, results, summary) = evaluate(&checks, 20, &m, &HashMap::new());
        assert_eq!(v, Verdict::Fail);
        assert_eq!(results[0].value, Some(0.97));
        assert_eq!(results[0].verdict, Verdict::Fail);
        assert_eq!(results[1].verdict, Verdict::Fail);
        assert!(summary.contains("dht = 0.9700 breaks >= 0.99"), "{summary}");
        // Relative to the baseline cohort.
        let relative = check(serde_json::json!({
            "name": "dht-vs-baseline", "builtin": "DhtLookupSuccess", "maxDecreasePercent": 1
        }));
        let (v, results, _) = evaluate(&[relative], 20, &m, &HashMap::new());
        assert_eq!(v, Verdict::Fail);
        assert_eq!(results[0].baseline, Some(1.0));
    }

    #[test]
    fn missing_data_is_inconclusive_with_its_reason() {
        let m = measurement(
            [window(3.0, 0.0, 0.01), Window::default()],
            [Window::default(), Window::default()],
        );
        let checks = [
            check(serde_json::json!({"name": "errors", "builtin": "ErrorRate", "max": 0.05})),
            check(serde_json::json!({"name": "health", "builtin": "HealthScore", "min": 0.5})),
            check(serde_json::json!({"name": "custom", "promql": "up", "max": 1})),
        ];
        let promql = HashMap::from([(
            "custom".to_owned(),
            Err("the query returned no data".to_owned()),
        )]);
        let (v, results, summary) = evaluate(&checks, 20, &m, &promql);
        assert_eq!(v, Verdict::Inconclusive);
        let reasons: Vec<&str> = results.iter().filter_map(|r| r.reason.as_deref()).collect();
        assert_eq!(
            reasons,
            [
                "3 requests in the window, fewer than minSampleSize 20",
                "no agent reported its health score",
                "the query returned no data",
            ]
        );
        assert!(
            summary.contains("custom: the query returned no data"),
            "{summary}"
        );
        assert_eq!(results[2].cohort, "prometheus");
    }
}
