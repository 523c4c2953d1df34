//! The operator process: serve HTTP, elect a leader, and (as the leader)
//! run the controllers and the analysis until the Lease is lost.

use std::sync::Arc;

use anyhow::Context;
use k8s_openapi::api::core::v1::Secret;

use crate::alerts::{AlertAnalysis, AlertBook, AlertRecord};
use crate::analysis::ScrapeAnalysis;
use crate::config::Config;
use crate::controller::{self, LeaseFence, Wiring};
use crate::dashboard::{self, Board};
use crate::http;
use crate::metrics::Metrics;

/// Run the operator with `config` until it loses the Lease (an error, so
/// a restart rejoins as a standby) or is told to stop.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes: set KUBECONFIG or run in a cluster")?;
    let metrics = Metrics::new();
    let record = AlertRecord::new(
        kube::Api::namespaced(client.clone(), &config.lease.namespace),
        config.alert_configmap.clone(),
    );
    let book = AlertBook::new(metrics.webhook_requests.clone(), record.clone());
    let board = Board::new();
    let dashboard = config.dashboard.clone().map(|access| {
        let (d, watch) = dashboard::serve::start(
            client.clone(),
            config.namespace.as_deref(),
            board.clone(),
            metrics.leader.clone(),
            access,
        );
        tokio::spawn(watch);
        d
    });
    serve(&config, &metrics, &book, dashboard).await?;
    // Every replica follows the alert record, so any of them can accept
    // an alert and a new leader starts from it.
    tokio::spawn(record.follow(book.clone()));
    match config.webhook_secret.clone() {
        Some((name, key)) => {
            tokio::spawn(load_token(
                kube::Api::namespaced(client.clone(), &config.lease.namespace),
                name,
                key,
                config.create_webhook_secret,
                book.clone(),
            ));
        }
        None => book.set_token(None),
    }
    // Only the leader runs the controllers, so only the leader writes.
    let lease = &config.lease;
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &lease.name)
        .with_namespace(&lease.namespace)
        .with_identity(&lease.identity)
        .with_duration(lease.duration)
        .with_grace(lease.grace)
        .build()
        .await
        .with_context(|| format!("setting up Lease {}/{}", lease.namespace, lease.name))?;
    let (mut leader, _lease_task) = manager.watch().await;
    tracing::info!(identity = %lease.identity, lease = %lease.name, "waiting for leadership");
    while !*leader.borrow_and_update() {
        leader
            .changed()
            .await
            .context("the Lease watcher stopped")?;
    }
    tracing::info!(identity = %lease.identity, "leading");
    metrics.leader.set(1);
    let lost = async {
        loop {
            if leader.changed().await.is_err() || !*leader.borrow() {
                return;
            }
        }
    };
    let lease = config.lease.clone();
    tokio::select! {
        _ = controller::run(client.clone(), wiring(client, config, metrics.clone(), book, board)) => Ok(()),
        _ = lost => {
            metrics.leader.set(0);
            anyhow::bail!("lost the Lease {}/{}; exiting so a restart rejoins as a standby", lease.namespace, lease.name)
        }
    }
}

/// Serve /healthz, /readyz, /metrics, the webhook and the dashboard.
async fn serve(
    config: &Config,
    metrics: &Metrics,
    book: &Arc<AlertBook>,
    dashboard: Option<Arc<dashboard::serve::Dashboard>>,
) -> anyhow::Result<()> {
    let on = dashboard.is_some();
    let (addr, server) = http::bind(config.http_addr, metrics.clone(), book.clone(), dashboard)
        .await
        .with_context(|| format!("binding {}", config.http_addr))?;
    tracing::info!(%addr, "serving /healthz, /readyz, /metrics");
    if on {
        tracing::info!(url = %format!("http://{addr}/"), "serving the dashboard");
    }
    tokio::spawn(server);
    Ok(())
}

/// The leader's controllers: fenced by the Lease (checked before every
/// write batch; writing stops a second before it would lapse), with the
/// built-in analysis (scraped agent metrics and PromQL) under the alerts.
fn wiring(
    client: kube::Client,
    config: Config,
    metrics: Metrics,
    book: Arc<AlertBook>,
    board: Arc<Board>,
) -> Wiring {
    // Only with the opt-in may the analysis read the Secrets plans name.
    let plan_secrets = config.allow_plan_credentials.then(|| client.clone());
    let fence = LeaseFence {
        api: kube::Api::namespaced(client, &config.lease.namespace),
        name: config.lease.name.clone(),
        identity: config.lease.identity.clone(),
        margin: std::time::Duration::from_secs(1),
    };
    let notifier = config.notify.and_then(|target| {
        match crate::notify::Notifier::new(target, metrics.notifications.clone()) {
            Ok((notifier, deliver)) => {
                tokio::spawn(deliver);
                Some(notifier)
            }
            Err(e) => {
                tracing::error!(error = %e, "notifications are off");
                None
            }
        }
    });
    Wiring {
        notifier,
        namespace: config.namespace,
        identity: config.lease.identity,
        analysis: Arc::new(AlertAnalysis {
            inner: ScrapeAnalysis::new(metrics.clone(), config.prometheus, plan_secrets, board),
            book,
        }),
        fence: Arc::new(fence),
        settings: config.settings,
        metrics,
    }
}

/// Keep the webhook token current: read the Secret now and every 10 s (a
/// rotated token takes effect within that). With `create`, an absent
/// Secret is created with a random token (by whichever replica gets there
/// first; the others read it).
async fn load_token(
    secrets: kube::Api<Secret>,
    name: String,
    key: String,
    create: bool,
    book: Arc<AlertBook>,
) {
    let mut warned = false;
    loop {
        match secrets.get_opt(&name).await {
            Ok(Some(s)) => {
                let token = token_of(&s, &key);
                if token.is_none() && !warned {
                    tracing::warn!(secret = %name, %key, "the webhook Secret has no such key; the webhook answers 503");
                    warned = true;
                }
                book.set_token(token);
            }
            Ok(None) if create => match create_token(&secrets, &name, &key).await {
                Ok(()) => continue,
                Err(e) => tracing::warn!(secret = %name, error = %e, "creating the webhook Secret"),
            },
            Ok(None) => {
                if !warned {
                    tracing::warn!(secret = %name, "the webhook Secret does not exist; the webhook answers 503");
                    warned = true;
                }
                book.set_token(None);
            }
            // Keep the last token through API hiccups.
            Err(e) => tracing::warn!(secret = %name, error = %e, "reading the webhook Secret"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    }
}

/// The token under `key`, trimmed; `None` when absent or not UTF-8.
fn token_of(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
        .map(|t| t.trim().to_owned())
}

/// Create the webhook Secret with 256 random bits, hex-encoded. Another
/// replica having created it first (409) is success: the caller reads it.
async fn create_token(secrets: &kube::Api<Secret>, name: &str, key: &str) -> anyhow::Result<()> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for the token: {e}"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_owned(),
                    "switchyard-operator".to_owned(),
                )]
                .into(),
            ),
            annotations: Some(
                [(
                    "switchyard.dev/purpose".to_owned(),
                    "Bearer token of the operator's Alertmanager webhook; give Alertmanager a copy"
                        .to_owned(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        string_data: Some([(key.to_owned(), token)].into()),
        ..Default::default()
    };
    match secrets
        .create(&kube::api::PostParams::default(), &secret)
        .await
    {
        Ok(_) => {
            tracing::info!(secret = %name, %key, "created the webhook Secret with a random token");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
