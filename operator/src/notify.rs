//! Notifications: a plan's phase transitions (started, canary passed, stage
//! completed, paused, resumed, rollback started and finished, succeeded,
//! failed) sent to a webhook, as Argo's notifications and Flagger's alert
//! providers do, kept small.
//!
//! Reconciling never waits for them: [`Notifier::send`] puts a message on a
//! bounded queue and returns (a full queue drops it and counts the drop).
//! One task delivers the queue in order, each message with a few retries
//! and a growing backoff, so a slow or absent receiver costs only
//! notifications. What a message says is [`body`], a pure function.

use std::time::Duration;

use serde_json::json;

/// How messages are shaped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A JSON object: plan, namespace, reason, message, severity, time.
    Generic,
    /// A Slack-compatible incoming webhook: `{"text": ...}`.
    Slack,
}

/// One transition of one plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Notification {
    /// The plan's namespace.
    pub namespace: String,
    /// The plan's name.
    pub plan: String,
    /// The Event reason, e.g. `RollbackStarted`.
    pub reason: &'static str,
    /// The Event note.
    pub message: String,
    /// Whether it is a Warning.
    pub warning: bool,
    /// When it happened (RFC 3339).
    pub time: String,
}

/// The Event reasons that are phase transitions worth a message.
pub const REASONS: [&str; 9] = [
    "CanaryStarted",
    "CanaryPassed",
    "StageCompleted",
    "Paused",
    "Resumed",
    "RollbackStarted",
    "RollbackFinished",
    "Succeeded",
    "Failed",
];

/// The request body for `n`.
pub fn body(format: Format, n: &Notification) -> serde_json::Value {
    match format {
        Format::Generic => json!({
            "kind": "MigrationPlan",
            "namespace": n.namespace,
            "plan": n.plan,
            "reason": n.reason,
            "message": n.message,
            "severity": if n.warning { "Warning" } else { "Normal" },
            "time": n.time,
        }),
        Format::Slack => json!({
            "text": format!(
                "{} MigrationPlan {}/{}: {}: {}",
                if n.warning { ":warning:" } else { ":white_check_mark:" },
                n.namespace, n.plan, n.reason, n.message
            ),
        }),
    }
}

/// The wait before retry `attempt` (1-based): 1 s, 2 s, 4 s, ... at most
/// 30 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(5)).min(Duration::from_secs(30))
}

/// Where and how notifications go.
#[derive(Clone, Debug)]
pub struct Target {
    /// The webhook URL (from a Secret).
    pub url: String,
    /// The message shape.
    pub format: Format,
    /// Attempts per message (the first included).
    pub attempts: u32,
}

/// The sending side; cheap to clone.
#[derive(Clone, Debug)]
pub struct Notifier {
    queue: tokio::sync::mpsc::Sender<Notification>,
    metrics: prometheus::IntCounterVec,
}

/// Messages waiting for delivery at most; more are dropped and counted.
const QUEUE: usize = 256;

impl Notifier {
    /// A notifier delivering to `target`, and its delivery task (spawn it).
    /// `outcomes` counts messages by outcome (delivered, failed, dropped).
    pub fn new(
        target: Target,
        outcomes: prometheus::IntCounterVec,
    ) -> anyhow::Result<(Notifier, impl std::future::Future<Output = ()>)> {
        let url = reqwest::Url::parse(&target.url)
            .map_err(|e| anyhow::anyhow!("the notification URL is not a URL: {e}"))?;
        anyhow::ensure!(
            matches!(url.scheme(), "http" | "https"),
            "the notification URL must be http:// or https://"
        );
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| anyhow::anyhow!("building the notification client: {e}"))?;
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        let deliver = deliver(client, url, target, rx, outcomes.clone());
        Ok((
            Notifier {
                queue: tx,
                metrics: outcomes,
            },
            deliver,
        ))
    }

    /// Queue `n` without waiting; a full queue drops it.
    pub fn send(&self, n: Notification) {
        if self.queue.try_send(n).is_err() {
            self.metrics.with_label_values(&["dropped"]).inc();
            tracing::warn!("notification queue full: a notification was dropped");
        }
    }
}

/// Deliver the queue in order until every sender is gone.
async fn deliver(
    client: reqwest::Client,
    url: reqwest::Url,
    target: Target,
    mut rx: tokio::sync::mpsc::Receiver<Notification>,
    outcomes: prometheus::IntCounterVec,
) {
    while let Some(n) = rx.recv().await {
        let payload = body(target.format, &n);
        let mut outcome = "failed";
        for attempt in 1..=target.attempts.max(1) {
            let request = client
                .post(url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(payload.to_string());
            match request.send().await {
                Ok(r) if r.status().is_success() => {
                    outcome = "delivered";
                    break;
                }
                Ok(r) => tracing::warn!(status = %r.status(), attempt, "notification refused"),
                Err(e) => tracing::warn!(error = %e, attempt, "notification not delivered"),
            }
            if attempt < target.attempts {
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
        outcomes.with_label_values(&[outcome]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(warning: bool) -> Notification {
        Notification {
            namespace: "fleet".into(),
            plan: "to-iroh".into(),
            reason: "RollbackStarted",
            message: "AnalysisFailed: iroh-errors 0.31 > 0.05".into(),
            warning,
            time: "2026-12-01T06:00:00Z".into(),
        }
    }

    #[test]
    fn messages_name_the_plan_the_transition_and_why() {
        let g = body(Format::Generic, &n(true));
        assert_eq!(g["plan"], "to-iroh");
        assert_eq!(g["namespace"], "fleet");
        assert_eq!(g["reason"], "RollbackStarted");
        assert_eq!(g["severity"], "Warning");
        let s = body(Format::Slack, &n(true));
        assert_eq!(
            s["text"],
            ":warning: MigrationPlan fleet/to-iroh: RollbackStarted: AnalysisFailed: iroh-errors 0.31 > 0.05"
        );
    }

    #[test]
    fn backoff_doubles_and_stops_growing() {
        let waits: Vec<u64> = (1..=8).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
    }
}
