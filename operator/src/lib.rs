//! Switchyard's operator: reconciles MigrationPlan and MigrationCanary resources into
//! per-node NetworkMode changes. Decisions come from [`planner`], pure code
//! with no Kubernetes I/O; [`controller`] carries them out.

pub mod alerts;
pub mod analysis;
mod app;
pub mod canary;
pub mod check;
pub mod cli;
pub mod config;
pub mod context;
pub mod controller;
pub mod dashboard;
pub mod fuzzing;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod planner;
mod plans;
pub mod promql;
pub mod ratelimit;
mod reconcile;
pub mod scrape;
pub mod sweep;

pub use app::run;

/// What the `switchyard-operator` binary does with its arguments: log at
/// `RUST_LOG` (default info), then check an installation or run the
/// operator. `switchyard demo` starts the operator through this too.
pub async fn main_with(args: config::Args) -> anyhow::Result<()> {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).init();
    if let Some(url) = &args.check_install {
        return check::run(url, args.namespace.as_deref()).await;
    }
    let config = config::Config::try_from(args)?;
    run(config).await
}
