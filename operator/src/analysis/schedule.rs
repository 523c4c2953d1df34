//! The analysis loop: read the subjects from the controllers' reflector
//! stores (no list request, whatever the fleet size), and measure each one
//! whose interval is due. Everything it decides with is pure and lives in
//! the sibling modules; this is the I/O and the clock.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::ResourceExt;
use switchyard_crds::plan::{AnalysisResult, RollbackTriggers};
use switchyard_crds::{
    ANNOTATION_START_MODE, AnalysisTally, FleetNode, LABEL_PLAN, MetricCheck, MigrationCanary,
    MigrationCanaryPhase, MigrationPlan, PlanPhase,
};
use tokio::time::Instant;

use super::credentials;
use super::measure::{self, Measurement, Previous, Target};
use super::{Key, Kind, Outcome, ScrapeAnalysis, TRIGGER_INTERVAL, evaluate, tally, triggers};
use crate::canary::owned_by_plan;
use crate::context::{Stores, decode};
use crate::dashboard::NodeHealth;
use crate::planner::AnalysisInput;
use crate::planner::selection::matches;
use crate::promql::{Placeholders, Prometheus};

/// How often the stores are looked at for new subjects and step changes
/// (a due measurement wakes the loop sooner).
const LOOK_EVERY: Duration = Duration::from_millis(500);

/// Which nodes are a subject's, and which of them are its canary cohort.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Cohorts {
    /// A plan's nodes (labelled as its); the canary cohort is the nodes it
    /// moved from their start mode.
    Plan,
    /// A MigrationCanary's trial nodes against its baseline: `baselineSelector`, or
    /// else the rest of its selection.
    Canary {
        trial: Vec<String>,
        baseline: LabelSelector,
    },
}

/// One subject as the stores show it now.
#[derive(Debug, Clone)]
pub(super) struct Subject {
    pub key: Key,
    pub analysis: Option<switchyard_crds::Analysis>,
    pub triggers: Option<RollbackTriggers>,
    /// The step being measured, and when its nodes all acknowledged it.
    pub step: String,
    pub acknowledged: Option<Timestamp>,
    /// The tally status holds.
    pub stored: Option<AnalysisTally>,
    pub cohorts: Cohorts,
}

impl Subject {
    fn interval(&self) -> Duration {
        self.analysis
            .as_ref()
            .map_or(TRIGGER_INTERVAL, |a| Duration::from(a.interval))
            .max(Duration::from_millis(200))
    }

    /// Only PromQL checks and no trigger: a measurement needs no scrape.
    fn promql_only(&self) -> bool {
        self.triggers.is_none()
            && self
                .analysis
                .as_ref()
                .is_some_and(|a| a.metrics.iter().all(|c| c.promql.is_some()))
    }

    /// The subject's nodes among `nodes` (its namespace's): the targets to
    /// scrape, and the names of the canary and baseline cohorts.
    fn split(&self, nodes: &[Arc<FleetNode>]) -> (Vec<Target>, Vec<String>, Vec<String>) {
        let (mut targets, mut canary, mut baseline) = (Vec::new(), Vec::new(), Vec::new());
        for n in nodes {
            let name = n.name_any();
            let in_canary = match &self.cohorts {
                Cohorts::Plan if n.labels().get(LABEL_PLAN) != Some(&self.key.name) => continue,
                Cohorts::Plan => moved(n),
                Cohorts::Canary { trial, .. } if trial.contains(&name) => true,
                Cohorts::Canary { baseline, .. } if matches(baseline, n.labels()) => false,
                Cohorts::Canary { .. } => continue,
            };
            if let Some(url) = n.status.as_ref().and_then(|s| s.metrics_endpoint.clone()) {
                targets.push(Target {
                    name: name.clone(),
                    url,
                    canary: in_canary,
                });
            }
            if in_canary {
                &mut canary
            } else {
                &mut baseline
            }
            .push(name);
        }
        (targets, canary, baseline)
    }
}

/// Whether the plan has moved `n` from the mode it started in.
fn moved(n: &FleetNode) -> bool {
    let start = n.annotations().get(ANNOTATION_START_MODE);
    n.spec
        .mode
        .is_some_and(|m| start.is_some_and(|s| s != m.as_str()))
}

/// A plan to measure: one with analysis or a rollback trigger, in a step
/// that migrates (the triggers watch a migration whatever step it is in;
/// once it rolls back or ends there is nothing to start).
pub(super) fn plan_subject(plan: &MigrationPlan) -> Option<Subject> {
    let status = plan.status.as_ref()?;
    if !matches!(
        status.phase,
        PlanPhase::Canary | PlanPhase::Progressing | PlanPhase::Paused
    ) {
        return None;
    }
    // A canary may have analysis of its own; otherwise the plan's.
    let canary_analysis = (status.phase == PlanPhase::Canary)
        .then(|| plan.spec.canary.as_ref().and_then(|c| c.analysis.clone()))
        .flatten();
    let analysis = canary_analysis.or_else(|| plan.spec.analysis.clone());
    let triggers = Some(plan.spec.rollback.triggers.clone()).filter(triggers::any);
    if analysis.is_none() && triggers.is_none() {
        return None;
    }
    let wave = status
        .wave
        .map(|w| format!(" wave {w}"))
        .unwrap_or_default();
    Some(Subject {
        key: Key::of(Kind::Plan, plan),
        analysis,
        triggers,
        step: format!("{:?} stage {}{wave}", status.phase, status.stage),
        acknowledged: status.step_acknowledged_at.as_ref().map(|t| t.0),
        stored: status.analysis_tally.clone(),
        cohorts: Cohorts::Plan,
    })
}

/// A standalone MigrationCanary to measure: one with an `analysis` block whose
/// trial nodes all run the trial mode and that has no verdict yet.
pub(super) fn canary_subject(canary: &MigrationCanary) -> Option<Subject> {
    let status = canary.status.as_ref()?;
    let analysis = canary.spec.analysis.clone()?;
    if owned_by_plan(&canary.metadata)
        || status.phase != MigrationCanaryPhase::Running
        || status.verdict.is_some()
    {
        return None;
    }
    let started = status.started_at.as_ref()?.0;
    Some(Subject {
        key: Key::of(Kind::Canary, canary),
        analysis: Some(analysis),
        triggers: None,
        step: "trial".into(),
        acknowledged: Some(started),
        stored: status.analysis_tally.clone(),
        cohorts: Cohorts::Canary {
            trial: status.nodes.clone(),
            baseline: canary
                .spec
                .baseline_selector
                .clone()
                .unwrap_or_else(|| canary.spec.selector.clone()),
        },
    })
}

/// Every subject the stores hold now.
fn subjects(stores: &Stores) -> Vec<Subject> {
    let plans = stores
        .plans
        .state()
        .into_iter()
        .filter_map(|p| decode::<MigrationPlan>(&p, "MigrationPlan").ok())
        .filter_map(|p| plan_subject(&p));
    let canaries = stores
        .canaries
        .state()
        .into_iter()
        .filter_map(|c| decode::<MigrationCanary>(&c, "MigrationCanary").ok())
        .filter_map(|c| canary_subject(&c));
    plans.chain(canaries).collect()
}

/// What the loop remembers of one subject between measurements.
struct Tracker {
    tally: AnalysisTally,
    next_due: Instant,
    previous: Previous,
}

/// Measure every subject when its interval is due, until the controller
/// stops.
pub(super) async fn run(out: Arc<ScrapeAnalysis>, stores: Stores) {
    let mut trackers: HashMap<Key, Tracker> = HashMap::new();
    let mut wake = Instant::now();
    loop {
        tokio::time::sleep_until(wake).await;
        wake = Instant::now() + LOOK_EVERY;
        // Deciding on a half-filled node store would measure a cohort
        // short of nodes.
        if !stores.ready.all() {
            continue;
        }
        let subjects = subjects(&stores);
        let live: HashSet<Key> = subjects.iter().map(|s| s.key.clone()).collect();
        trackers.retain(|k, _| live.contains(k));
        out.retain(&live);
        for s in subjects {
            let t = trackers.entry(s.key.clone()).or_insert_with(|| Tracker {
                // A new leader (or a new subject) continues from status.
                tally: tally::rebase(s.stored.as_ref(), &s.step, s.acknowledged),
                next_due: Instant::now(),
                previous: Previous::new(),
            });
            t.tally = tally::rebase(Some(&t.tally), &s.step, s.acknowledged);
            if Instant::now() < t.next_due {
                continue;
            }
            t.next_due = Instant::now() + s.interval();
            let nodes: Vec<Arc<FleetNode>> = stores
                .nodes
                .state()
                .into_iter()
                .filter(|n| n.namespace().as_deref() == Some(s.key.ns.as_str()))
                .collect();
            if let Some(outcome) = measure_one(&out, &s, t, &nodes).await {
                out.record(&s.key, outcome);
            }
        }
        if let Some(due) = trackers.values().map(|t| t.next_due).min() {
            wake = wake.min(due.max(Instant::now() + Duration::from_millis(20)));
        }
    }
}

/// One measurement of `s`: scrape, fold, triggers, checks, tally. `None`
/// when there is nothing to judge yet (the first scrape of a step only
/// sets the starting point).
async fn measure_one(
    out: &ScrapeAnalysis,
    s: &Subject,
    t: &mut Tracker,
    nodes: &[Arc<FleetNode>],
) -> Option<Outcome> {
    let interval = s.interval();
    let (targets, canary, baseline) = s.split(nodes);
    let timeout = (interval / 2).clamp(Duration::from_millis(200), Duration::from_secs(5));
    let scraped = measure::scrape_all(targets, timeout).await;
    let now = Timestamp::now();
    let m = match measure::fold(scraped, &mut t.previous, now) {
        Some(m) => m,
        // Nothing to scrape for: PromQL checks still run.
        None if s.promql_only() => Measurement::empty(now),
        None => return None,
    };
    out.board.reported(
        t.previous
            .iter()
            .filter(|(_, (_, at))| *at == now)
            .map(|(name, (sample, at))| NodeHealth::of(&s.key.ns, name, sample, *at)),
    );
    if s.key.kind == Kind::Plan {
        out.board.analysed(&s.key.label(), m.board_point(now));
    }
    let trigger = s.triggers.as_ref().and_then(|tr| {
        let min_requests = s
            .analysis
            .as_ref()
            .map_or(20.0, |a| f64::from(a.min_sample_size));
        triggers::check(tr, min_requests, &mut t.tally, &m, now)
    });
    if let Some(tr) = &trigger {
        tracing::warn!(subject = %s.key.label(), trigger = %tr.trigger, reason = %tr.reason, "rollback trigger fired");
    }
    let verdict = match &s.analysis {
        Some(a) => {
            let placeholders = Placeholders {
                namespace: s.key.ns.clone(),
                plan: s.key.name.clone(),
                interval,
                canary,
                baseline,
            };
            let prometheus = prometheus_for(out, &s.key.ns, a.prometheus.as_ref()).await;
            let promql = queries(prometheus, &a.metrics, &placeholders).await;
            Some(judge(out, s, a, &mut t.tally, &m, &promql, now))
        }
        None => None,
    };
    Some(Outcome {
        verdict,
        trigger,
        tally: Some(t.tally.clone()),
    })
}

/// The checks over `m`, counted into the tally, as the planner reads them;
/// recorded in the operator's metrics too.
fn judge(
    out: &ScrapeAnalysis,
    s: &Subject,
    a: &switchyard_crds::Analysis,
    tally: &mut AnalysisTally,
    m: &Measurement,
    promql: &HashMap<String, Result<f64, String>>,
    now: Timestamp,
) -> AnalysisInput {
    let label = s.key.label();
    let (verdict_now, metrics, message) =
        evaluate::evaluate(&a.metrics, a.min_sample_size, m, promql);
    out.metrics
        .analysis_measurements
        .with_label_values(&[label.as_str(), &format!("{verdict_now:?}")])
        .inc();
    for r in &metrics {
        if let Some(v) = r.value {
            out.metrics
                .analysis_values
                .with_label_values(&[label.as_str(), r.name.as_str()])
                .set(v);
        }
    }
    let (overall, pending) = tally::count(tally, a, verdict_now);
    let message = format!("{message} ({})", tally::describe(tally, a));
    tracing::info!(subject = %label, verdict = ?overall, pending, %message, "analysis");
    AnalysisInput {
        verdict: overall,
        pending,
        window_start: m.window_start,
        result: Some(AnalysisResult {
            time: Some(Time(now)),
            verdict: overall,
            metrics,
            message: Some(message),
        }),
    }
}

/// The Prometheus a plan's checks query: its own `analysis.prometheus`
/// (on the operator's client, without the operator's credentials, with
/// the plan's own from the Secret it names), else the operator's; or why
/// there is none.
async fn prometheus_for<'a>(
    out: &'a ScrapeAnalysis,
    ns: &str,
    plan: Option<&switchyard_crds::analysis::PrometheusOverride>,
) -> Result<std::borrow::Cow<'a, Prometheus>, String> {
    let operator = out.prometheus.as_deref();
    let Some(o) = plan else {
        return operator.map(std::borrow::Cow::Borrowed).ok_or_else(|| {
            "no Prometheus is configured: start the operator with --prometheus-url, or set the plan's analysis.prometheus".into()
        });
    };
    let mut access = match &o.secret_ref {
        Some(r) => credentials::fetch(out.plan_secrets.as_ref(), ns, &r.name).await?,
        None => crate::promql::Access::default(),
    };
    access.headers = o
        .headers
        .iter()
        .map(|h| (h.name.clone(), h.value.clone()))
        .collect();
    match operator {
        Some(p) => p.for_plan(&o.address, &access),
        None => Prometheus::with_access(&o.address, Duration::from_secs(5), &access),
    }
    .map(std::borrow::Cow::Owned)
    .map_err(|e| format!("analysis.prometheus: {e}"))
}

/// Run the PromQL checks, all at once: each one's value or why not.
async fn queries(
    prometheus: Result<std::borrow::Cow<'_, Prometheus>, String>,
    checks: &[MetricCheck],
    placeholders: &Placeholders,
) -> HashMap<String, Result<f64, String>> {
    let prometheus = &prometheus;
    let runs = checks.iter().filter_map(|c| {
        let q = c.promql.as_ref()?;
        Some(async move {
            let r = match prometheus {
                Err(why) => Err(why.clone()),
                Ok(p) => p
                    .query(&placeholders.fill(q))
                    .await
                    .map_err(|e| e.to_string()),
            };
            (c.name.clone(), r)
        })
    });
    futures::future::join_all(runs).await.into_iter().collect()
}
