//! The built-in analysis: every `spec.analysis.interval`, scrape the
//! `/metrics` of the nodes a plan has moved (the canary cohort) and of the
//! ones it has not (the baseline), compute each check over the window
//! since the previous scrape, and keep a verdict the planner reads.
//!
//! - Fewer requests than `minSampleSize` in the window (or no data, or a
//!   scrape that failed on every node) is Inconclusive, never a pass.
//! - One more failed measurement than `failureLimit` makes the verdict
//!   Fail; one more inconclusive than `inconclusiveLimit` makes it
//!   Inconclusive (the planner pauses, rolls back or goes on, per
//!   `onInconclusive`); `consecutiveSuccesses` passes in a row make it
//!   Pass. Until one of those, each measurement is shown as pending and
//!   the step waits.
//! - Counting starts over whenever the plan moves to another step, and
//!   again once the step's nodes have all acknowledged its mode.
//!
//! The same scrapes drive the rollback triggers over all of a plan's
//! nodes, whatever step it is in (every `TRIGGER_INTERVAL` when the plan
//! has no analysis): HighErrorRate (above the threshold for `for`),
//! LatencyRegression (a percentile, p95 by default), HealthCheckFailure
//! (the lowest agent health score) and NetworkPartition (the highest
//! partition risk).
//!
//! PromQL checks go to the Prometheus the operator was given
//! (`--prometheus-url`); without one they are Inconclusive, with that
//! reason.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use switchyard_crds::plan::{AnalysisResult, MetricResult};
use switchyard_crds::{
    ANNOTATION_START_MODE, BuiltinMetric, FleetNode, LABEL_PLAN, MetricCheck, MigrationPlan,
    PlanPhase, Reference, Verdict,
};

use crate::context::Analysis;
use crate::metrics::Metrics;
use crate::planner::{AnalysisInput, TriggerInput};
use crate::promql::{Placeholders, Prometheus};
use crate::scrape::{self, NodeSample, Window};

/// The largest `/metrics` body read from an agent.
pub const MAX_SCRAPE_BODY: usize = 4 * 1024 * 1024;

/// Verdicts kept per plan, and the plans whose measurement is new.
pub struct ScrapeAnalysis {
    metrics: Metrics,
    prometheus: Option<Arc<Prometheus>>,
    verdicts: Mutex<HashMap<String, AnalysisInput>>,
    triggers: Mutex<HashMap<String, TriggerInput>>,
    /// (namespace, name) of each plan with a new measurement or trigger.
    updated: tokio::sync::mpsc::UnboundedSender<(String, String)>,
    /// The receiving end, until the controller takes it.
    updates: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<(String, String)>>>,
}

/// How often the rollback triggers are measured for a plan without an
/// analysis interval of its own.
pub const TRIGGER_INTERVAL: Duration = Duration::from_secs(5);

impl ScrapeAnalysis {
    /// Start measuring the plans of `namespace` (all when `None`).
    pub fn start(
        client: Client,
        namespace: Option<String>,
        metrics: Metrics,
        prometheus: Option<Prometheus>,
    ) -> Arc<Self> {
        let (updated, updates) = tokio::sync::mpsc::unbounded_channel();
        let me = Arc::new(ScrapeAnalysis {
            metrics,
            prometheus: prometheus.map(Arc::new),
            verdicts: Mutex::new(HashMap::new()),
            triggers: Mutex::new(HashMap::new()),
            updated,
            updates: Mutex::new(Some(updates)),
        });
        tokio::spawn(run(client, namespace, me.clone()));
        me
    }

    /// Keep a plan's latest measurement and have the controller reconcile
    /// that plan, which shows it in status and acts on its verdict.
    fn publish(&self, plan: &MigrationPlan, input: AnalysisInput) {
        self.verdicts
            .lock()
            .expect("verdicts lock")
            .insert(key_of(plan), input);
        self.wake(plan);
    }

    /// Have the controller reconcile `plan`.
    fn wake(&self, plan: &MigrationPlan) {
        let _ = self
            .updated
            .send((plan.namespace().unwrap_or_default(), plan.name_any()));
    }
}

impl Analysis for Arc<ScrapeAnalysis> {
    fn verdict(&self, plan: &MigrationPlan) -> Option<AnalysisInput> {
        self.verdicts
            .lock()
            .expect("verdicts lock")
            .get(&key_of(plan))
            .cloned()
    }
    fn trigger(&self, plan: &MigrationPlan) -> Option<TriggerInput> {
        self.triggers
            .lock()
            .expect("triggers lock")
            .get(&key_of(plan))
            .cloned()
    }
    fn plan_updates(&self) -> Option<futures::stream::BoxStream<'static, (String, String)>> {
        let rx = self.updates.lock().expect("updates lock").take()?;
        Some(tokio_stream::wrappers::UnboundedReceiverStream::new(rx).boxed())
    }
}

fn key_of(plan: &MigrationPlan) -> String {
    format!(
        "{}/{}",
        plan.namespace().unwrap_or_default(),
        plan.name_any()
    )
}

/// What is being counted for one plan.
struct Tracker {
    /// The plan step the counts belong to.
    step: (PlanPhase, u32, Option<u32>),
    /// When the step's nodes all acknowledged, as the plan last said.
    acknowledged: Option<Timestamp>,
    next_due: Instant,
    previous: HashMap<String, (NodeSample, Timestamp)>,
    failures: u32,
    inconclusives: u32,
    /// Passing measurements in a row.
    successes: u32,
    /// Since when the error rate has been above HighErrorRate's threshold.
    errors_above_since: Option<Instant>,
}

async fn run(client: Client, namespace: Option<String>, out: Arc<ScrapeAnalysis>) {
    let plans: Api<MigrationPlan> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut trackers: HashMap<String, Tracker> = HashMap::new();
    // Plans are looked at every 500 ms (new plans, step changes), and
    // sooner when a measurement falls due.
    let mut wake = Instant::now();
    loop {
        tokio::time::sleep_until(wake.into()).await;
        wake = Instant::now() + Duration::from_millis(500);
        // An undecodable plan fails the typed list; the controller reports
        // it Invalid, and analysis waits for the list to decode again.
        let Ok(list) = plans.list(&ListParams::default()).await else {
            continue;
        };
        let mut live = Vec::new();
        for plan in list.items {
            let Some(status) = plan.status.clone() else {
                continue;
            };
            // A canary may have analysis of its own; otherwise the plan's.
            let canary_analysis = (status.phase == PlanPhase::Canary)
                .then(|| plan.spec.canary.as_ref().and_then(|c| c.analysis.clone()))
                .flatten();
            let analysis = canary_analysis.or_else(|| plan.spec.analysis.clone());
            let triggers = &plan.spec.rollback.triggers;
            let any_trigger = triggers.high_error_rate.is_some()
                || triggers.latency_regression.is_some()
                || triggers.network_partition.is_some()
                || triggers.health_check_failure.is_some();
            if analysis.is_none() && !any_trigger {
                continue;
            }
            // The triggers watch a migration "whatever step it is in";
            // once it rolls back or ends there is nothing to start.
            if !matches!(
                status.phase,
                PlanPhase::Canary | PlanPhase::Progressing | PlanPhase::Paused
            ) {
                continue;
            }
            let key = key_of(&plan);
            live.push(key.clone());
            let step = (status.phase, status.stage, status.wave);
            let acknowledged = status.step_acknowledged_at.as_ref().map(|t| t.0);
            let now = Instant::now();
            let tracker = trackers.entry(key.clone()).or_insert_with(|| Tracker {
                step,
                acknowledged,
                next_due: now,
                previous: HashMap::new(),
                failures: 0,
                inconclusives: 0,
                successes: 0,
                errors_above_since: None,
            });
            if tracker.step != step {
                // A new step: the analysis counts start over (the error
                // trigger's clock keeps running across steps).
                tracker.step = step;
                tracker.acknowledged = acknowledged;
                tracker.previous.clear();
                tracker.failures = 0;
                tracker.inconclusives = 0;
                tracker.successes = 0;
            } else if tracker.acknowledged != acknowledged {
                // The step's nodes now all run its mode: what was counted
                // while they were switching says nothing about it (a thin
                // first window would otherwise use up inconclusiveLimit).
                // The samples stay, so the next measurement has a window.
                tracker.acknowledged = acknowledged;
                tracker.failures = 0;
                tracker.inconclusives = 0;
                tracker.successes = 0;
            }
            if now < tracker.next_due {
                continue;
            }
            let interval = analysis
                .as_ref()
                .map_or(TRIGGER_INTERVAL, |a| Duration::from(a.interval))
                .max(Duration::from_millis(200));
            tracker.next_due = now + interval;
            let ns = plan.namespace().unwrap_or_default();
            let nodes: Api<FleetNode> = Api::namespaced(client.clone(), &ns);
            let Ok(nodes) = nodes
                .list(&ListParams::default().labels(&format!("{LABEL_PLAN}={}", plan.name_any())))
                .await
            else {
                continue;
            };
            let timeout = (interval / 2).clamp(Duration::from_millis(200), Duration::from_secs(5));
            let measured = measure(&nodes.items, tracker, timeout).await;
            let promql_only = analysis
                .as_ref()
                .is_some_and(|a| a.metrics.iter().all(|c| c.promql.is_some()))
                && !any_trigger;
            let m = match measured {
                Some(m) => m,
                // Nothing to scrape for: PromQL checks still run.
                None if promql_only => Measurement::empty(),
                None => continue,
            };
            if let Some(t) = check_triggers(&plan, tracker, &m) {
                tracing::warn!(plan = %key, trigger = %t.trigger, reason = %t.reason, "rollback trigger fired");
                out.triggers
                    .lock()
                    .expect("triggers lock")
                    .insert(key.clone(), t);
                out.wake(&plan);
            }
            let Some(analysis) = &analysis else { continue };
            let promql = if analysis.metrics.iter().any(|c| c.promql.is_some()) {
                let (canary, baseline) = nodes.items.iter().partition::<Vec<_>, _>(|n| moved(n));
                let names = |v: Vec<&FleetNode>| v.into_iter().map(ResourceExt::name_any).collect();
                let placeholders = Placeholders {
                    namespace: ns.clone(),
                    plan: plan.name_any(),
                    interval,
                    canary: names(canary),
                    baseline: names(baseline),
                };
                queries(out.prometheus.as_deref(), &analysis.metrics, &placeholders).await
            } else {
                HashMap::new()
            };
            let (verdict_now, metrics, message) =
                evaluate(&analysis.metrics, analysis.min_sample_size, &m, &promql);
            out.metrics
                .analysis_measurements
                .with_label_values(&[key.as_str(), &format!("{verdict_now:?}")])
                .inc();
            for r in &metrics {
                if let Some(v) = r.value {
                    out.metrics
                        .analysis_values
                        .with_label_values(&[key.as_str(), r.name.as_str()])
                        .set(v);
                }
            }
            let (overall, pending) = tally(tracker, analysis, verdict_now);
            let need = analysis.consecutive_successes.max(1);
            let message = format!(
                "{message} ({} failed, {} inconclusive of this step's measurements, limits {} and {}; {} of {need} passes in a row)",
                tracker.failures,
                tracker.inconclusives,
                analysis.failure_limit,
                analysis.inconclusive_limit,
                tracker.successes,
            );
            tracing::info!(plan = %key, verdict = ?overall, pending, %message, "analysis");
            out.publish(
                &plan,
                AnalysisInput {
                    verdict: overall,
                    pending,
                    window_start: m.window_start,
                    result: Some(AnalysisResult {
                        time: Some(Time(Timestamp::now())),
                        verdict: overall,
                        metrics,
                        message: Some(message),
                    }),
                },
            );
        }
        trackers.retain(|k, _| live.contains(k));
        if let Some(due) = trackers.values().map(|t| t.next_due).min() {
            wake = wake.min(due.max(Instant::now() + Duration::from_millis(20)));
        }
        out.triggers
            .lock()
            .expect("triggers lock")
            .retain(|k, _| live.contains(k));
    }
}

/// Count one measurement into the step's tally: the verdict so far, and
/// whether it is still pending. A verdict once a limit is crossed or
/// enough passes came in a row; until then the step waits.
fn tally(t: &mut Tracker, a: &switchyard_crds::Analysis, now: Verdict) -> (Verdict, bool) {
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

/// Whether the plan has moved `n` from the mode it started in.
fn moved(n: &FleetNode) -> bool {
    let start = n.annotations().get(ANNOTATION_START_MODE);
    n.spec
        .mode
        .is_some_and(|m| start.is_some_and(|s| s != m.as_str()))
}

/// Run the PromQL checks, all at once: each one's value or why not.
async fn queries(
    prometheus: Option<&Prometheus>,
    checks: &[MetricCheck],
    placeholders: &Placeholders,
) -> HashMap<String, Result<f64, String>> {
    let runs = checks.iter().filter_map(|c| {
        let q = c.promql.as_ref()?;
        Some(async move {
            let r = match prometheus {
                None => Err(
                    "no Prometheus is configured: start the operator with --prometheus-url".into(),
                ),
                Some(p) => p
                    .query(&placeholders.fill(q))
                    .await
                    .map_err(|e| e.to_string()),
            };
            (c.name.clone(), r)
        })
    });
    futures::future::join_all(runs).await.into_iter().collect()
}

/// One window's data, per cohort.
struct Measurement {
    window_start: Timestamp,
    /// Per transport, and both: canary, baseline.
    canary: [Window; 2],
    baseline: [Window; 2],
    partition_risk: Option<f64>,
    /// The highest partition risk any of the plan's nodes reports.
    partition_risk_all: Option<f64>,
    min_peers: Option<f64>,
    /// The lowest health score of the moved nodes, and of all nodes.
    health: Option<f64>,
    health_all: Option<f64>,
    /// DHT operations in the window, (all, failed): canary, baseline.
    dht: [(f64, f64); 2],
    /// The lowest DHT routing health of the moved nodes.
    routing_health: Option<f64>,
    /// Nodes scraped in each cohort.
    canary_nodes: usize,
    baseline_nodes: usize,
    /// Each moved node's own window, per transport.
    per_node: Vec<(String, [Window; 2])>,
    scraped: usize,
    failed: Vec<String>,
}

impl Measurement {
    /// No scrape data (PromQL checks only).
    fn empty() -> Measurement {
        Measurement {
            window_start: Timestamp::now(),
            canary: Default::default(),
            baseline: Default::default(),
            partition_risk: None,
            partition_risk_all: None,
            min_peers: None,
            health: None,
            health_all: None,
            dht: [(0.0, 0.0); 2],
            routing_health: None,
            canary_nodes: 0,
            baseline_nodes: 0,
            per_node: Vec::new(),
            scraped: 0,
            failed: Vec::new(),
        }
    }
}

async fn measure(
    nodes: &[FleetNode],
    tracker: &mut Tracker,
    timeout: Duration,
) -> Option<Measurement> {
    let targets: Vec<(String, String, bool)> = nodes
        .iter()
        .filter_map(|n| {
            let url = n.status.as_ref()?.metrics_endpoint.clone()?;
            Some((n.name_any(), url, moved(n)))
        })
        .collect();
    let results: Vec<_> = futures::stream::iter(targets)
        .map(|(name, url, moved)| async move {
            let r = scrape::scrape(&url, timeout, MAX_SCRAPE_BODY).await;
            (name, moved, r)
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let now = Timestamp::now();
    let mut m = Measurement {
        window_start: now,
        ..Measurement::empty()
    };
    let mut any_window = false;
    for (name, moved, r) in results {
        let sample = match r {
            Ok(s) => s,
            Err(e) => {
                m.failed.push(format!("{name}: {e}"));
                continue;
            }
        };
        m.scraped += 1;
        if moved {
            m.canary_nodes += 1;
        } else {
            m.baseline_nodes += 1;
        }
        let lowest = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        m.health_all = lowest(m.health_all, sample.health_score);
        if moved {
            m.health = lowest(m.health, sample.health_score);
            m.routing_health = lowest(m.routing_health, sample.routing_health);
        }
        if let Some(r) = sample.partition_risk {
            m.partition_risk_all = Some(m.partition_risk_all.map_or(r, |a: f64| a.max(r)));
        }
        if moved {
            m.partition_risk = match (m.partition_risk, sample.partition_risk) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            let peers: f64 = sample.peers.iter().flatten().sum();
            m.min_peers = Some(m.min_peers.map_or(peers, |p: f64| p.min(peers)));
        }
        if let Some((before, at)) = tracker.previous.get(&name) {
            any_window = true;
            m.window_start = m.window_start.min(*at);
            let windows: [Window; 2] = std::array::from_fn(|i| {
                Window::between(&before.transports[i], &sample.transports[i])
            });
            for (i, w) in windows.iter().enumerate() {
                if moved {
                    m.canary[i].add(w);
                } else {
                    m.baseline[i].add(w);
                }
            }
            if moved {
                m.per_node.push((name.clone(), windows));
            }
            let (b, a) = (before.dht, sample.dht);
            // Counters that went down: the agent restarted.
            let d = if a.0 < b.0 {
                a
            } else {
                (a.0 - b.0, (a.1 - b.1).max(0.0))
            };
            let cohort = &mut m.dht[usize::from(!moved)];
            cohort.0 += d.0;
            cohort.1 += d.1;
        }
        tracker.previous.insert(name, (sample, now));
    }
    // The first scrape of a step only sets the starting point.
    (any_window || !m.failed.is_empty()).then_some(m)
}

fn pick(windows: &[Window; 2], transport: Option<switchyard_crds::Transport>) -> Window {
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
fn evaluate(
    checks: &[MetricCheck],
    min_sample: u32,
    m: &Measurement,
    promql: &HashMap<String, Result<f64, String>>,
) -> (Verdict, Vec<MetricResult>, String) {
    let mut results = Vec::new();
    let mut notes = Vec::new();
    let builtins = checks.iter().any(|c| c.builtin.is_some());
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
    for check in checks {
        let v = match (check.builtin, &check.promql) {
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
        };
        let (value, baseline) = (v.value, v.reference);
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
        let reference = match check.compare_with.unwrap_or_default() {
            Reference::Baseline => "baseline",
            Reference::Libp2p => "libp2p",
            Reference::Iroh => "iroh",
        };
        if let Some(p) = check.max_increase_percent {
            threshold.push(format!("<= {reference} + {p}%"));
            if let (Some(v), Some(b)) = (value, baseline)
                && b > 0.0
            {
                failed |= v > b * (1.0 + p / 100.0);
            }
        }
        if let Some(p) = check.max_decrease_percent {
            threshold.push(format!(">= {reference} - {p}%"));
            if let (Some(v), Some(b)) = (value, baseline) {
                failed |= v < b * (1.0 - p / 100.0);
            }
        }
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
        results.push(MetricResult {
            name: check.name.clone(),
            value,
            baseline,
            threshold: threshold.join(", "),
            verdict,
            cohort: v.cohort,
            reason: v.why,
        });
    }
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

/// The plan's rollback triggers over all its nodes: the first that fires.
fn check_triggers(
    plan: &MigrationPlan,
    tracker: &mut Tracker,
    m: &Measurement,
) -> Option<TriggerInput> {
    let triggers = &plan.spec.rollback.triggers;
    let mut all = pick(&m.canary, None);
    all.add(&pick(&m.baseline, None));
    // A handful of requests says nothing about a rate.
    let min_requests = plan
        .spec
        .analysis
        .as_ref()
        .map_or(20.0, |a| f64::from(a.min_sample_size));
    let enough = all.requests >= min_requests;
    if let Some(t) = &triggers.high_error_rate {
        match all.error_rate().filter(|r| enough && *r > t.threshold) {
            Some(rate) => {
                let since = *tracker.errors_above_since.get_or_insert_with(Instant::now);
                let hold = Duration::from(t.for_);
                if since.elapsed() >= hold {
                    return Some(TriggerInput {
                        trigger: "HighErrorRate".into(),
                        reason: format!(
                            "error rate {:.4} above {} for {:?} ({} of {} requests in the last window)",
                            rate,
                            t.threshold,
                            since.elapsed(),
                            all.errors,
                            all.requests
                        ),
                    });
                }
            }
            None if enough => tracker.errors_above_since = None,
            None => {}
        }
    }
    if let Some(t) = &triggers.latency_regression
        && enough
        && let Some(ms) = all.latency_ms(t.percentile / 100.0)
        && ms > f64::from(t.threshold_ms)
    {
        return Some(TriggerInput {
            trigger: "LatencyRegression".into(),
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
            trigger: "HealthCheckFailure".into(),
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
            trigger: "NetworkPartition".into(),
            reason: format!("partition risk {risk:.2} above {}", t.risk_above),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_crds::Analysis;

    fn tracker() -> Tracker {
        Tracker {
            step: (PlanPhase::Canary, 0, None),
            acknowledged: None,
            next_due: Instant::now(),
            previous: HashMap::new(),
            failures: 0,
            inconclusives: 0,
            successes: 0,
            errors_above_since: None,
        }
    }

    #[test]
    fn a_step_passes_after_enough_passes_in_a_row_and_fails_past_the_limit() {
        let a = Analysis {
            consecutive_successes: 3,
            failure_limit: 1,
            inconclusive_limit: 1,
            ..Analysis::default()
        };
        let mut t = tracker();
        use Verdict::*;
        // Pass, Pass, Fail (within the limit: the run starts over), then
        // three passes.
        let seen: Vec<(Verdict, bool)> = [Pass, Pass, Fail, Pass, Pass, Pass]
            .into_iter()
            .map(|v| tally(&mut t, &a, v))
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
        assert_eq!(tally(&mut t, &a, Fail), (Fail, false));
        let mut t = tracker();
        assert_eq!(tally(&mut t, &a, Inconclusive), (Inconclusive, true));
        assert_eq!(tally(&mut t, &a, Inconclusive), (Inconclusive, false));
    }

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
            ..Measurement::empty()
        }
    }

    fn check(json: serde_json::Value) -> MetricCheck {
        serde_json::from_value(json).expect("check")
    }

    #[test]
    fn iroh_is_compared_with_libp2p_on_the_same_nodes() {
        // Canary: libp2p answers within 10 ms, iroh within 50 ms.
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
