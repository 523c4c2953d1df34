//! `switchyard-operator`: reconciles MigrationPlans into per-node
//! NetworkMode changes. Configuration by flag or environment; the cluster
//! from KUBECONFIG or the in-cluster service account.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::Parser;
use switchyard_operator::alerts::{AlertAnalysis, AlertBook};
use switchyard_operator::analysis::ScrapeAnalysis;
use switchyard_operator::controller::{self, LeaseFence, Settings};
use switchyard_operator::{http, metrics::Metrics};

#[derive(Parser)]
#[command(
    name = "switchyard-operator",
    about = "Migrates a P2P fleet from libp2p to iroh, one safe step at a time"
)]
struct Args {
    /// Namespace to watch; all namespaces when absent.
    #[arg(long, env = "SWITCHYARD_NAMESPACE")]
    namespace: Option<String>,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, env = "SWITCHYARD_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// FleetNode writes per second.
    #[arg(long, env = "SWITCHYARD_WRITE_QPS", default_value_t = 200.0)]
    write_qps: f64,
    /// FleetNode writes allowed in a burst.
    #[arg(long, env = "SWITCHYARD_WRITE_BURST", default_value_t = 400)]
    write_burst: u32,
    /// FleetNode writes in flight at once.
    #[arg(long, env = "SWITCHYARD_WRITE_CONCURRENCY", default_value_t = 32)]
    write_concurrency: usize,
    /// Name of the coordination.k8s.io Lease used for leader election.
    #[arg(
        long,
        env = "SWITCHYARD_LEASE_NAME",
        default_value = "switchyard-operator"
    )]
    lease_name: String,
    /// Namespace of the Lease (default: the watched namespace, else `default`).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// This replica's identity in the Lease (default: hostname and pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a leader holds the Lease without renewing; a standby takes
    /// over within this.
    #[arg(long, env = "SWITCHYARD_LEASE_DURATION", default_value_t = 15)]
    lease_duration: u64,
    /// Seconds before expiry at which the leader renews.
    #[arg(long, env = "SWITCHYARD_LEASE_GRACE", default_value_t = 5)]
    lease_grace: u64,
    /// Secret (in the Lease's namespace) holding the Alertmanager webhook's
    /// bearer token; without it the webhook answers 503.
    #[arg(long, env = "SWITCHYARD_WEBHOOK_SECRET")]
    webhook_secret: Option<String>,
    /// Key of the token in that Secret.
    #[arg(long, env = "SWITCHYARD_WEBHOOK_SECRET_KEY", default_value = "token")]
    webhook_secret_key: String,
    /// Prometheus for PromQL analysis checks, e.g. http://prometheus:9090;
    /// without it PromQL checks are Inconclusive.
    #[arg(long, env = "SWITCHYARD_PROMETHEUS_URL")]
    prometheus_url: Option<String>,
    /// Seconds a PromQL query may take.
    #[arg(long, env = "SWITCHYARD_PROMETHEUS_TIMEOUT", default_value_t = 5.0)]
    prometheus_timeout: f64,
    /// The whole Authorization header sent to Prometheus, e.g.
    /// `Bearer <token>` (from a Secret, through the environment).
    #[arg(
        long,
        env = "SWITCHYARD_PROMETHEUS_AUTHORIZATION",
        hide_env_values = true
    )]
    prometheus_authorization: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let args = Args::parse();
    anyhow::ensure!(
        args.write_qps > 0.0,
        "--write-qps must be above 0, e.g. 200"
    );
    anyhow::ensure!(
        args.lease_grace < args.lease_duration,
        "--lease-grace must be below --lease-duration"
    );
    anyhow::ensure!(
        args.prometheus_timeout.is_finite() && args.prometheus_timeout > 0.0,
        "--prometheus-timeout must be a number of seconds above 0, e.g. 5"
    );
    let prometheus = args
        .prometheus_url
        .as_deref()
        .map(|url| {
            switchyard_operator::promql::Prometheus::new(
                url,
                std::time::Duration::from_secs_f64(args.prometheus_timeout),
                args.prometheus_authorization.as_deref(),
            )
        })
        .transpose()?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes: set KUBECONFIG or run in a cluster")?;
    let metrics = Metrics::new();
    let ready = Arc::new(AtomicBool::new(false));
    let book = AlertBook::new(metrics.webhook_requests.clone());
    let (addr, server) = http::bind(args.http_addr, metrics.clone(), ready.clone(), book.clone())
        .await
        .with_context(|| format!("binding {}", args.http_addr))?;
    tracing::info!(%addr, "serving /healthz, /readyz, /metrics");
    tokio::spawn(server);
    ready.store(true, Ordering::SeqCst);

    // Leader election: only the leader runs the controller, so only the
    // leader writes. A replica that loses the Lease exits, and its restart
    // comes back as a standby.
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "switchyard".into());
        format!("{host}-{}", std::process::id())
    });
    let lease_ns = args
        .lease_namespace
        .clone()
        .or_else(|| args.namespace.clone())
        .unwrap_or_else(|| "default".into());
    let lease = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&lease_ns)
        .with_identity(&identity)
        .with_duration(args.lease_duration)
        .with_grace(args.lease_grace)
        .build()
        .await
        .with_context(|| format!("setting up Lease {lease_ns}/{}", args.lease_name))?;
    if let Some(name) = args.webhook_secret.clone() {
        tokio::spawn(load_token(
            kube::Api::namespaced(client.clone(), &lease_ns),
            name,
            args.webhook_secret_key.clone(),
            book.clone(),
        ));
    }
    let (mut leader, _lease_task) = lease.watch().await;
    tracing::info!(%identity, lease = %args.lease_name, "waiting for leadership");
    while !*leader.borrow_and_update() {
        leader
            .changed()
            .await
            .context("the Lease watcher stopped")?;
    }
    tracing::info!(%identity, "leading");
    metrics.leader.set(1);
    let settings = Settings {
        write_concurrency: args.write_concurrency,
        write_qps: args.write_qps,
        write_burst: args.write_burst,
    };
    // Re-check the Lease before every write batch; stop writing a second
    // before it would lapse.
    let fence = LeaseFence {
        api: kube::Api::namespaced(client.clone(), &lease_ns),
        name: args.lease_name.clone(),
        identity: identity.clone(),
        margin: std::time::Duration::from_secs(1),
    };
    let analysis = Arc::new(AlertAnalysis {
        // Built-in analysis from the agents' scraped metrics (and PromQL);
        // each new measurement has its plan reconciled.
        inner: ScrapeAnalysis::new(metrics.clone(), prometheus),
        book,
    });
    let run = controller::run(
        client,
        args.namespace,
        analysis,
        settings,
        metrics.clone(),
        Arc::new(fence),
    );
    let lost = async {
        loop {
            if leader.changed().await.is_err() || !*leader.borrow() {
                return;
            }
        }
    };
    tokio::select! {
        _ = run => Ok(()),
        _ = lost => {
            metrics.leader.set(0);
            anyhow::bail!("lost the Lease {lease_ns}/{}; exiting so a restart rejoins as a standby", args.lease_name)
        }
    }
}

/// Keep the webhook token current: read the Secret now and every 10 s (a
/// rotated token takes effect within that).
async fn load_token(
    secrets: kube::Api<k8s_openapi::api::core::v1::Secret>,
    name: String,
    key: String,
    book: Arc<AlertBook>,
) {
    let mut warned = false;
    loop {
        match secrets.get_opt(&name).await {
            Ok(Some(s)) => {
                let token = s
                    .data
                    .as_ref()
                    .and_then(|d| d.get(&key))
                    .and_then(|v| String::from_utf8(v.0.clone()).ok())
                    .map(|t| t.trim().to_owned());
                if token.is_none() && !warned {
                    tracing::warn!(secret = %name, %key, "the webhook Secret has no such key; the webhook answers 503");
                    warned = true;
                }
                book.set_token(token);
            }
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
