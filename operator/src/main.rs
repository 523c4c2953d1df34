//! `switchyard-operator`: reconciles MigrationPlans into per-node
//! NetworkMode changes. Configuration by flag or environment; the cluster
//! from KUBECONFIG or the in-cluster service account.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::Parser;
use switchyard_operator::controller::{self, NoAnalysis, Settings};
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    anyhow::ensure!(
        args.write_qps > 0.0,
        "--write-qps must be above 0, e.g. 200"
    );
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes: set KUBECONFIG or run in a cluster")?;
    let metrics = Metrics::new();
    let ready = Arc::new(AtomicBool::new(false));
    let (addr, server) = http::bind(args.http_addr, metrics.clone(), ready.clone())
        .await
        .with_context(|| format!("binding {}", args.http_addr))?;
    tracing::info!(%addr, "serving /healthz, /readyz, /metrics");
    tokio::spawn(server);
    let settings = Settings {
        write_concurrency: args.write_concurrency,
        write_qps: args.write_qps,
        write_burst: args.write_burst,
    };
    ready.store(true, Ordering::SeqCst);
    controller::run(
        client,
        args.namespace,
        Arc::new(NoAnalysis),
        settings,
        metrics,
    )
    .await;
    Ok(())
}
