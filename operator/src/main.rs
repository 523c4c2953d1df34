//! `switchyard-operator`: reconciles MigrationPlans into per-node
//! NetworkMode changes. Configuration by flag or environment
//! ([`switchyard_operator::config::Args`]); the cluster from KUBECONFIG or
//! the in-cluster service account.

use clap::Parser;
use switchyard_operator::config::{Args, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let args = Args::parse();
    if let Some(url) = &args.check_install {
        return switchyard_operator::check::run(url, args.namespace.as_deref()).await;
    }
    let config = Config::try_from(args)?;
    switchyard_operator::run(config).await
}
