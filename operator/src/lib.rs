//! Switchyard's operator: reconciles MigrationPlan and Canary resources into
//! per-node NetworkMode changes. The decisions come from [`planner`], pure
//! code with no Kubernetes I/O; the controllers that apply them arrive with
//! the operator issue.

pub mod planner;
