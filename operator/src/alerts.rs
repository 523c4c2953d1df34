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

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use kube::ResourceExt;
use serde::Deserialize;
use subtle::ConstantTimeEq;
use switchyard_crds::{Canary, MigrationPlan};

use crate::context::Analysis;
use crate::planner::{AnalysisInput, Trigger, TriggerInput};

/// The largest webhook body accepted.
pub const MAX_BODY: usize = 1024 * 1024;

/// The label naming the plan an alert is about.
pub const PLAN_LABEL: &str = "switchyard_plan";

#[derive(Debug, Deserialize)]
struct Payload {
    version: String,
    alerts: Vec<Alert>,
}

#[derive(Debug, Deserialize)]
struct Alert {
    status: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    fingerprint: String,
    #[serde(default, rename = "startsAt")]
    starts_at: String,
}

#[derive(Debug, Clone)]
struct Firing {
    labels: BTreeMap<String, String>,
    starts_at: String,
}

/// Firing alerts, the webhook token, and a signal for the controller.
pub struct AlertBook {
    firing: Mutex<HashMap<String, Firing>>,
    token: RwLock<Option<String>>,
    changed: tokio::sync::watch::Sender<u64>,
    requests: prometheus::IntCounterVec,
}

impl AlertBook {
    /// An empty book; `requests` counts webhook calls by outcome.
    pub fn new(requests: prometheus::IntCounterVec) -> Arc<Self> {
        Arc::new(AlertBook {
            firing: Mutex::new(HashMap::new()),
            token: RwLock::new(None),
            changed: tokio::sync::watch::channel(0).0,
            requests,
        })
    }

    /// Set (or clear) the bearer token callers must present.
    pub fn set_token(&self, token: Option<String>) {
        *self.token.write().expect("token lock") = token.filter(|t| !t.is_empty());
    }

    /// Bumped whenever a new alert fires: the controller re-reconciles.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// How many alerts are firing.
    pub fn firing_count(&self) -> usize {
        self.firing.lock().expect("alerts lock").len()
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

    /// Handle one webhook call: the status code and a message.
    pub fn receive(&self, headers: &HeaderMap, body: &[u8]) -> (StatusCode, String) {
        let (code, message) = self.check_and_record(headers, body);
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

    fn check_and_record(&self, headers: &HeaderMap, body: &[u8]) -> (StatusCode, String) {
        let Some(want) = self.token.read().expect("token lock").clone() else {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "no webhook token is configured (--webhook-secret)".into(),
            );
        };
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let Some(given) = given else {
            return (
                StatusCode::UNAUTHORIZED,
                "missing Authorization: Bearer <token>".into(),
            );
        };
        if !bool::from(given.as_bytes().ct_eq(want.as_bytes())) {
            return (StatusCode::UNAUTHORIZED, "wrong token".into());
        }
        if body.len() > MAX_BODY {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body over {MAX_BODY} bytes"),
            );
        }
        let payload: Payload = match serde_json::from_slice(body) {
            Ok(p) => p,
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("not an Alertmanager webhook payload: {e}"),
                );
            }
        };
        if payload.version != "4" {
            return (
                StatusCode::BAD_REQUEST,
                format!(
                    "payload version {:?}; this receiver speaks 4",
                    payload.version
                ),
            );
        }
        let (mut newly_firing, mut resolved) = (0, 0);
        {
            let mut firing = self.firing.lock().expect("alerts lock");
            for a in payload.alerts {
                let key = if a.fingerprint.is_empty() {
                    serde_json::to_string(&a.labels).unwrap_or_default()
                } else {
                    a.fingerprint.clone()
                };
                match a.status.as_str() {
                    "firing" => {
                        let known = firing.contains_key(&key);
                        firing.insert(
                            key,
                            Firing {
                                labels: a.labels,
                                starts_at: a.starts_at,
                            },
                        );
                        newly_firing += usize::from(!known);
                    }
                    "resolved" => {
                        resolved += usize::from(firing.remove(&key).is_some());
                    }
                    other => {
                        return (
                            StatusCode::BAD_REQUEST,
                            format!("alert status {other:?}; expected firing or resolved"),
                        );
                    }
                }
            }
        }
        if newly_firing > 0 || resolved > 0 {
            tracing::info!(newly_firing, resolved, "Alertmanager: alerts changed");
            self.changed.send_modify(|n| *n += 1);
        }
        (StatusCode::OK, "ok".into())
    }
}

/// The axum handler for `POST /webhook/alertmanager`.
pub async fn webhook(
    State(book): State<Arc<AlertBook>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    book.receive(&headers, &body)
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
    fn canary_verdict(&self, canary: &Canary) -> Option<AnalysisInput> {
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
    fn canary_tally(&self, canary: &Canary) -> Option<switchyard_crds::AnalysisTally> {
        self.inner.canary_tally(canary)
    }
    fn start(
        &self,
        stores: crate::context::Stores,
    ) -> Option<futures::future::BoxFuture<'static, ()>> {
        self.inner.start(stores)
    }
}
