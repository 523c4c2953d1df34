//! `switchyard-operator`: reconciles MigrationPlans into per-node
//! NetworkMode changes. Configuration by flag or environment
//! ([`switchyard_operator::config::Args`]); the cluster from KUBECONFIG or
//! the in-cluster service account.

use clap::Parser;
use switchyard_operator::config::Args;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    switchyard_operator::main_with(Args::parse()).await
}
