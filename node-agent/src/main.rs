//! `switchyard-node-agent`: runs in every fleet pod. Flags, environment
//! (friendly to the downward API: `POD_NAME`, `POD_NAMESPACE`, `POD_IP`,
//! `NODE_NAME`) and an optional YAML file, in that order of precedence;
//! the settings are [`switchyard_node_agent::settings::Settings`].

use clap::Parser;
use switchyard_node_agent::agent;
use switchyard_node_agent::settings::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let config = Settings::parse().resolve()?;
    agent::run(config).await
}
