//! `switchyard-testbed`: local infrastructure for Switchyard's tests and demo.
//!
//! `switchyard-testbed apiserver [--port N] [--kubeconfig PATH]
//! [--authorization] [--admission]` serves the
//! in-memory Kubernetes API on 127.0.0.1 and writes a kubeconfig for
//! kubectl and kube-rs.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use switchyard_testbed::apiserver;

#[derive(Parser)]
#[command(name = "switchyard-testbed", about = "Switchyard's local testbed")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve an in-memory Kubernetes API server on 127.0.0.1.
    Apiserver {
        /// Port to listen on (0 picks a free one).
        #[arg(long, env = "SWITCHYARD_APISERVER_PORT", default_value_t = 0)]
        port: u16,
        /// Where to write the kubeconfig.
        #[arg(
            long,
            env = "SWITCHYARD_KUBECONFIG",
            default_value = "switchyard-testbed.kubeconfig"
        )]
        kubeconfig: PathBuf,
        /// Events kept per resource for watch resumption.
        #[arg(long, default_value_t = apiserver::store::DEFAULT_HISTORY)]
        history: usize,
        /// Seconds a past event stays watchable (compaction by age).
        #[arg(long, default_value_t = apiserver::store::DEFAULT_HISTORY_WINDOW.as_secs())]
        history_window_seconds: u64,
        /// Seconds an Event lives after its last write.
        #[arg(long, default_value_t = apiserver::store::DEFAULT_EVENT_TTL.as_secs())]
        event_ttl_seconds: u64,
        /// Authenticate requests by bearer token and authorize them with
        /// RBAC (the written kubeconfig is an administrator's).
        #[arg(long)]
        authorization: bool,
        /// Judge writes with the stored ValidatingAdmissionPolicies (CEL).
        #[arg(long)]
        admission: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    match Cli::parse().command {
        Command::Apiserver {
            port,
            kubeconfig,
            history,
            history_window_seconds,
            event_ttl_seconds,
            authorization,
            admission,
        } => {
            let config = apiserver::Config {
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                history,
                history_window: std::time::Duration::from_secs(history_window_seconds),
                event_ttl: std::time::Duration::from_secs(event_ttl_seconds),
                authorization,
                admission,
                ..apiserver::Config::default()
            };
            apiserver::serve_forever(config, &kubeconfig).await
        }
    }
}
