//! The built-in analysis: every `spec.analysis.interval`, scrape the
//! `/metrics` of a subject's canary cohort and of its baseline, compute
//! each check over the window since the previous scrape, and keep a
//! verdict the planner reads. The subjects are MigrationPlans (the nodes
//! the plan has moved against the ones it has not) and standalone Canaries
//! with an `analysis` block (the trial nodes against `baselineSelector`,
//! else the rest of the selection).
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
//!   again once the step's nodes have all acknowledged its mode. The count
//!   is kept in the subject's status (`analysisTally`), so a new leader
//!   continues it.
//!
//! The same scrapes drive a plan's rollback triggers over all its nodes,
//! whatever step it is in (every `TRIGGER_INTERVAL` when the plan has no
//! analysis): HighErrorRate (above the threshold for `for`),
//! LatencyRegression (a percentile, p95 by default), HealthCheckFailure
//! (the lowest agent health score) and NetworkPartition (the highest
//! partition risk).
//!
//! PromQL checks go to the Prometheus the operator was given
//! (`--prometheus-url`); without one they are Inconclusive, with that
//! reason.
//!
//! Layout: [`schedule`] is the loop (reads the controllers' reflector
//! stores, never lists; scrapes what is due); [`measure`] scrapes and folds
//! samples into windows; [`evaluate`], [`tally`] and [`triggers`] are pure,
//! with the time passed in.

mod credentials;
mod dirty;
mod evaluate;
mod measure;
mod schedule;
mod tally;
mod triggers;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use kube::ResourceExt;
use switchyard_crds::{AnalysisTally, MigrationCanary, MigrationPlan};

pub use measure::MAX_SCRAPE_BODY;

use crate::context::{Analysis, Stores};
use crate::dashboard::Board;
use crate::metrics::Metrics;
use crate::planner::{AnalysisInput, TriggerInput};
use crate::promql::Prometheus;

/// How often the rollback triggers are measured for a plan without an
/// analysis interval of its own.
pub const TRIGGER_INTERVAL: Duration = Duration::from_secs(5);

/// What an analysis is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Kind {
    Plan,
    Canary,
}

/// One subject: kind, namespace, name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Key {
    pub kind: Kind,
    pub ns: String,
    pub name: String,
}

impl Key {
    fn of<K: kube::Resource>(kind: Kind, obj: &K) -> Key {
        Key {
            kind,
            ns: obj.namespace().unwrap_or_default(),
            name: obj.name_any(),
        }
    }

    /// The subject as the operator's metrics label it: `ns/name` for a
    /// plan, `ns/Canary/name` for a MigrationCanary.
    fn label(&self) -> String {
        match self.kind {
            Kind::Plan => format!("{}/{}", self.ns, self.name),
            Kind::Canary => format!("{}/Canary/{}", self.ns, self.name),
        }
    }
}

/// The latest of what the analysis found for one subject.
#[derive(Debug, Clone, Default, PartialEq)]
struct Outcome {
    verdict: Option<AnalysisInput>,
    trigger: Option<TriggerInput>,
    tally: Option<AnalysisTally>,
}

/// Verdicts, triggers and tallies per subject, and which subjects have
/// news for their controller.
pub struct ScrapeAnalysis {
    metrics: Metrics,
    prometheus: Option<Arc<Prometheus>>,
    /// Reads the Secrets plans name for their own Prometheus credentials;
    /// `None` unless the operator was installed to allow that.
    plan_secrets: Option<kube::Client>,
    outcomes: Mutex<HashMap<Key, Outcome>>,
    /// Plans and Canaries whose outcome changed: bounded by the number of
    /// subjects, however often they change.
    plans_dirty: Arc<dirty::Dirty>,
    canaries_dirty: Arc<dirty::Dirty>,
    /// Where the dashboard reads each plan's measurements and the agents'
    /// health reports.
    board: Arc<Board>,
}

impl ScrapeAnalysis {
    /// An analysis that starts measuring when the controller hands it its
    /// stores ([`Analysis::start`]).
    /// With `plan_secrets`, a plan's `analysis.prometheus.secretRef` is
    /// read with that client. Every measurement goes to `board` too.
    pub fn new(
        metrics: Metrics,
        prometheus: Option<Prometheus>,
        plan_secrets: Option<kube::Client>,
        board: Arc<Board>,
    ) -> Arc<Self> {
        Arc::new(ScrapeAnalysis {
            metrics,
            prometheus: prometheus.map(Arc::new),
            plan_secrets,
            outcomes: Mutex::new(HashMap::new()),
            plans_dirty: Arc::default(),
            canaries_dirty: Arc::default(),
            board,
        })
    }

    /// Keep a subject's latest outcome; when it changed, have the
    /// subject's controller reconcile it, which shows it in status and acts
    /// on it. A trigger once fired stays until the subject is no longer
    /// analysed.
    fn record(&self, key: &Key, mut outcome: Outcome) {
        let changed = {
            let mut all = self.outcomes.lock().expect("outcomes lock");
            let old = all.entry(key.clone()).or_default();
            outcome.trigger = outcome.trigger.or_else(|| old.trigger.clone());
            outcome.verdict = outcome.verdict.or_else(|| old.verdict.clone());
            let changed = *old != outcome;
            *old = outcome;
            changed
        };
        if changed {
            self.dirty(key.kind).mark(key.ns.clone(), key.name.clone());
        }
    }

    /// Forget every subject not in `live`.
    fn retain(&self, live: &std::collections::HashSet<Key>) {
        self.outcomes
            .lock()
            .expect("outcomes lock")
            .retain(|k, _| live.contains(k));
        let plans: std::collections::HashSet<String> = live
            .iter()
            .filter(|k| k.kind == Kind::Plan)
            .map(Key::label)
            .collect();
        self.board.retain_subjects(|s| plans.contains(s));
    }

    fn dirty(&self, kind: Kind) -> &Arc<dirty::Dirty> {
        match kind {
            Kind::Plan => &self.plans_dirty,
            Kind::Canary => &self.canaries_dirty,
        }
    }

    fn outcome(&self, key: &Key) -> Option<Outcome> {
        self.outcomes
            .lock()
            .expect("outcomes lock")
            .get(key)
            .cloned()
    }
}

impl Analysis for Arc<ScrapeAnalysis> {
    fn verdict(&self, plan: &MigrationPlan) -> Option<AnalysisInput> {
        self.outcome(&Key::of(Kind::Plan, plan))?.verdict
    }
    fn trigger(&self, plan: &MigrationPlan) -> Option<TriggerInput> {
        self.outcome(&Key::of(Kind::Plan, plan))?.trigger
    }
    fn canary_verdict(&self, canary: &MigrationCanary) -> Option<AnalysisInput> {
        self.outcome(&Key::of(Kind::Canary, canary))?.verdict
    }
    fn plan_tally(&self, plan: &MigrationPlan) -> Option<AnalysisTally> {
        self.outcome(&Key::of(Kind::Plan, plan))?.tally
    }
    fn canary_tally(&self, canary: &MigrationCanary) -> Option<AnalysisTally> {
        self.outcome(&Key::of(Kind::Canary, canary))?.tally
    }
    fn plan_updates(&self) -> Option<BoxStream<'static, (String, String)>> {
        self.plans_dirty.stream()
    }
    fn canary_updates(&self) -> Option<BoxStream<'static, (String, String)>> {
        self.canaries_dirty.stream()
    }
    fn start(&self, stores: Stores) -> Option<BoxFuture<'static, ()>> {
        Some(schedule::run(self.clone(), stores).boxed())
    }
}
