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
