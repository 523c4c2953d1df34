//! Switchyard's Kubernetes API: group `switchyard.dev`, version `v1alpha1`.
//!
//! - [`FleetNode`]: one per node-agent; spec is the operator's, status the agent's.
//! - [`MigrationPlan`]: moves selected nodes through stages of [`NetworkMode`]s.
//! - [`MigrationCanary`]: a trial of one mode on a few nodes.
//!
//! [`validate`] holds the semantic checks the schema cannot express;
//! [`manifest`] reads user YAML with errors that name the field;
//! [`crdgen`] renders the CRD YAML checked in under `crds/`.
#![warn(missing_docs)]
// kube's `printcolumn(...)` repeats `type_ = ...` once per column, which
// clippy mistakes for a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

pub mod analysis;
pub mod canary;
pub mod crdgen;
pub mod duration;
pub mod fleet_node;
pub mod manifest;
pub mod mode;
pub mod plan;
pub mod validate;

pub use analysis::{
    Analysis, AnalysisTally, BuiltinMetric, InconclusiveAction, MetricCheck, Reference, Transport,
};
pub use canary::{
    MigrationCanary, MigrationCanaryPhase, MigrationCanarySpec, MigrationCanaryStatus,
};
pub use duration::Duration;
pub use fleet_node::{FleetNode, FleetNodeSpec, FleetNodeStatus, NodeAddresses, NodeIdentity};
pub use mode::{NetworkMode, RoutingStrategy, forms_island};
pub use plan::{
    MigrationPlan, MigrationPlanSpec, MigrationPlanStatus, PlanCanary, PlanPhase, RollbackPolicy,
    RollbackScope, RollbackStrategy, Verdict,
};

/// The API group.
pub const GROUP: &str = "switchyard.dev";
/// The API version.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of every Switchyard object: `<GROUP>/<VERSION>`.
pub const API_VERSION: &str = "switchyard.dev/v1alpha1";

/// Label on a FleetNode naming the MigrationPlan that manages it.
pub const LABEL_PLAN: &str = "switchyard.dev/plan";
/// Annotation on a FleetNode: the mode it had when its plan first moved it;
/// a rollback returns it there.
pub const ANNOTATION_START_MODE: &str = "switchyard.dev/start-mode";
/// Annotation on a FleetNode: the plan step that last moved it, as
/// `<stage>/<wave>`, `<stage>/canary` or `rollback`.
pub const ANNOTATION_STEP: &str = "switchyard.dev/step";
/// Annotation on a FleetNode, for tests and game days: failures its agent
/// injects into its own outbound sends, as `libp2p=<0-1>,iroh=<0-1>` (or
/// `all=<0-1>`). Honoured only by agents started with
/// `--allow-fault-injection`; removing it ends the faults.
pub const ANNOTATION_INJECT_FAULTS: &str = "switchyard.dev/inject-faults";
/// On a FleetNode an agent registered from inside a pod: the pod's name.
/// Only such nodes are checked for a pod that has gone away.
pub const ANNOTATION_POD: &str = "switchyard.dev/pod";

/// On a FleetNode whose pod (see [`ANNOTATION_POD`]) has been missing
/// longer than the operator's grace period: since when (RFC 3339). Plans
/// neither select nor wait for such a node, and count it in
/// `status.nodes.excluded`. The operator removes it when the pod is back
/// (a StatefulSet's pod returns under its name).
pub const ANNOTATION_ABSENT_SINCE: &str = "switchyard.dev/absent-since";

/// Annotation on a MigrationPlan the operator paused for a firing alert
/// (value `alert`): with `rollback.resumeWhenAlertsResolve` the operator
/// resumes it once no matching alert fires. A pause set by a person has
/// no such annotation and is never lifted by the operator.
pub const ANNOTATION_PAUSED_BY: &str = "switchyard.dev/paused-by";
/// Label on a FleetNode naming the standalone MigrationCanary trying a mode on it.
pub const LABEL_CANARY: &str = "switchyard.dev/canary";
/// Finalizer on MigrationPlans and standalone Canaries: the operator
/// releases their FleetNodes before the object goes away.
pub const FINALIZER: &str = "switchyard.dev/release-nodes";
/// The field manager standalone Canaries use for their FleetNode writes
/// (distinct from the plans', so neither removes the other's fields).
pub const CANARY_FIELD_MANAGER: &str = "switchyard-canary";
/// The field manager the operator uses for server-side apply.
pub const FIELD_MANAGER: &str = "switchyard-operator";
