//! The Alertmanager webhook receiver (payload version 4) and the rollback
//! triggers it yields.
//!
//! `POST /webhook/alertmanager` with `Authorization: Bearer <token>`, the
//! token from a Secret (compared in constant time). A firing alert maps to
//! a plan by its `switchyard_plan=<namespace>/<name>` label, or by any of
//! the plan's `spec.rollback.alertMatchers` (every listed label present
//! with that value); the plan then rolls back with trigger `Alert` (or
//! stops in `Failed` when its rollback is not automatic). Notifications
//! repeat: the same alert is recorded once, by fingerprint. A resolved
//! alert is forgotten, which does not resume a plan already rolling back.
//! A plan with `rollback.alertAction: Pause` is paused instead; with
//! `resumeWhenAlertsResolve` the operator resumes it once none of its
//! alerts fires.
//!
//! How an alert flows, with any number of replicas behind one Service:
//! 1. whichever replica Alertmanager reaches checks the call
//!    ([`webhook::parse`]);
//! 2. it stores the call's changes in the alert ConfigMap
//!    ([`record::AlertRecord::store`]) and answers 200 only once the API
//!    server has them (503 otherwise, so Alertmanager retries);
//! 3. every replica watches that ConfigMap and rebuilds its book from it
//!    ([`record::AlertRecord::follow`]); a new or resolved alert wakes the
//!    controller;
//! 4. the leader's plan reconciles read the book ([`AlertAnalysis`]). A
//!    new leader's book is already the ConfigMap's content.
//!
//! A replica is ready (`/readyz`) once its token is loaded and its book
//! has read the ConfigMap: it can accept an alert, leader or not.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use kube::ResourceExt;
use switchyard_crds::{MigrationCanary, MigrationPlan};

use crate::context::Analysis;
use crate::planner::{AnalysisInput, Trigger, TriggerInput};

pub mod record;
pub mod webhook;

pub use record::AlertRecord;
use webhook::Firing;
pub use webhook::MAX_BODY;

/// The label naming the plan an alert is about.
pub const PLAN_LABEL: &str = "switchyard_plan";

/// Firing alerts (as the alert ConfigMap holds them), the webhook token,
/// and a signal for the controller.
pub struct AlertBook {
    firing: Mutex<HashMap<String, Firing>>,
    token: RwLock<Option<String>>,
    /// The token has been read (or no Secret is configured).
    token_loaded: AtomicBool,
    /// The book has read the ConfigMap once.
    synced: AtomicBool,
    record: AlertRecord,
    changed: tokio::sync::watch::Sender<u64>,
    requests: prometheus::IntCounterVec,
}

impl AlertBook {
    /// An empty book kept in `record`; `requests` counts webhook calls by
    /// outcome.
    pub fn new(requests: prometheus::IntCounterVec, record: AlertRecord) -> Arc<Self> {
        Arc::new(AlertBook {
            firing: Mutex::new(HashMap::new()),
            token: RwLock::new(None),
            token_loaded: AtomicBool::new(false),
            synced: AtomicBool::new(false),
            record,
            changed: tokio::sync::watch::channel(0).0,
            requests,
        })
    }

    /// Set (or clear) the bearer token callers must present.
    pub fn set_token(&self, token: Option<String>) {
        *self.token.write().expect("token lock") = token.filter(|t| !t.is_empty());
        self.token_loaded.store(true, Ordering::SeqCst);
    }

    /// Whether this replica can accept an alert: its token is loaded and
    /// its book has read the alert ConfigMap.
    pub fn ready(&self) -> bool {
        self.token_loaded.load(Ordering::SeqCst) && self.synced.load(Ordering::SeqCst)
    }

    fn mark_synced(&self) {
        self.synced.store(true, Ordering::SeqCst);
    }

    /// Bumped whenever an alert fires or resolves: the controller
    /// re-reconciles.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// How many alerts are firing.
    pub fn firing_count(&self) -> usize {
        self.firing.lock().expect("alerts lock").len()
    }

    /// The book becomes `firing` (the ConfigMap's content); the
    /// controller is woken if an alert came or went.
    fn replace(&self, firing: HashMap<String, Firing>) {
        let (came, went) = {
            let mut book = self.firing.lock().expect("alerts lock");
            let came = firing.keys().filter(|k| !book.contains_key(*k)).count();
            let went = book.keys().filter(|k| !firing.contains_key(*k)).count();
            *book = firing;
            (came, went)
        };
        if came > 0 || went > 0 {
            tracing::info!(
                newly_firing = came,
                resolved = went,
                "Alertmanager: alerts changed"
            );
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// The firing alert that concerns `plan`, if any.
    pub fn trigger_for(&self, plan: &MigrationPlan) -> Option<TriggerInput> {
        let key = format!(
            "{}/{}",
            plan.namespace().unwrap_or_default(),
            plan.name_any()
        );
        let matchers = &plan.spec.rollback.alert_matchers;
        let firing = self.firing.lock().expect("alerts lock");
        let mut hits: Vec<&Firing> = firing
            .values()
            .filter(|a| {
                a.labels.get(PLAN_LABEL) == Some(&key)
                    || matchers
                        .iter()
                        .any(|m| m.labels.iter().all(|(k, v)| a.labels.get(k) == Some(v)))
            })
            .collect();
        // The earliest first, so the recorded evidence is stable.
        hits.sort_by(|a, b| a.starts_at.cmp(&b.starts_at));
        let a = hits.first()?;
        let labels: Vec<String> = a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        Some(TriggerInput {
            trigger: Trigger::Alert,
            reason: format!(
                "alert {} firing since {} ({})",
                a.labels
                    .get("alertname")
                    .map_or("(unnamed)", String::as_str),
                if a.starts_at.is_empty() {
                    "unknown"
                } else {
                    &a.starts_at
                },
                labels.join(", ")
            ),
        })
    }

    /// Handle one webhook call: check it, store its changes durably, and
    /// answer with the status code and a message.
    pub async fn receive(&self, headers: &HeaderMap, body: &[u8]) -> (StatusCode, String) {
        let token = self.token.read().expect("token lock").clone();
        let (code, message) = match webhook::parse(token.as_deref(), headers, body) {
            Err(refusal) => refusal,
            Ok(changes) => match self.record.store(&changes).await {
                Ok(()) => (StatusCode::OK, "ok".into()),
                Err(e) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "could not record the alerts in ConfigMap {}: {e}; send them again",
                        self.record.name()
                    ),
                ),
            },
        };
        let outcome = match code.as_u16() {
            200 => "ok",
            401 => "unauthorized",
            400 => "bad_request",
            413 => "too_large",
            _ => "unavailable",
        };
        self.requests.with_label_values(&[outcome]).inc();
        if !code.is_success() {
            tracing::warn!(%code, %message, "Alertmanager webhook refused");
        }
        (code, message)
    }
}

/// The axum handler for `POST /webhook/alertmanager`.
pub async fn webhook(
    State(book): State<Arc<AlertBook>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    book.receive(&headers, &body).await
}

/// Analysis whose triggers are firing alerts, on top of another analysis.
pub struct AlertAnalysis<A> {
    /// The verdicts and other triggers.
    pub inner: A,
    /// The alerts.
    pub book: Arc<AlertBook>,
}

impl<A: Analysis> Analysis for AlertAnalysis<A> {
    fn verdict(&self, plan: &MigrationPlan) -> Option<AnalysisInput> {
        self.inner.verdict(plan)
    }
    fn trigger(&self, plan: &MigrationPlan) -> Option<TriggerInput> {
        self.inner
            .trigger(plan)
            .or_else(|| self.book.trigger_for(plan))
    }
    fn canary_verdict(&self, canary: &MigrationCanary) -> Option<AnalysisInput> {
        self.inner.canary_verdict(canary)
    }
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.book.changes())
    }
    fn plan_updates(&self) -> Option<futures::stream::BoxStream<'static, (String, String)>> {
        self.inner.plan_updates()
    }
    fn canary_updates(&self) -> Option<futures::stream::BoxStream<'static, (String, String)>> {
        self.inner.canary_updates()
    }
    fn plan_tally(&self, plan: &MigrationPlan) -> Option<switchyard_crds::AnalysisTally> {
        self.inner.plan_tally(plan)
    }
    fn canary_tally(&self, canary: &MigrationCanary) -> Option<switchyard_crds::AnalysisTally> {
        self.inner.canary_tally(canary)
    }
    fn start(
        &self,
        stores: crate::context::Stores,
    ) -> Option<futures::future::BoxFuture<'static, ()>> {
        self.inner.start(stores)
    }
}
