//! The operator's Prometheus metrics, served on `/metrics`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the operator exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles by outcome (`ok`, `error`).
    pub reconciles: IntCounterVec,
    /// Reconcile duration.
    pub reconcile_seconds: HistogramVec,
    /// Reconcile errors by kind.
    pub errors: IntCounterVec,
    /// Plans by phase.
    pub plans: IntGaugeVec,
    /// Nodes by applied mode, per plan.
    pub nodes: IntGaugeVec,
    /// Nodes by desired mode (spec.mode), per plan.
    pub nodes_desired: IntGaugeVec,
    /// Standalone and owned Canaries by phase.
    pub canaries: IntGaugeVec,
    /// Rollbacks started, by trigger.
    pub rollbacks: IntCounterVec,
    /// FleetNode mode writes issued.
    pub node_writes: IntCounterVec,
    /// 1 while this replica holds the leader Lease.
    pub leader: prometheus::IntGauge,
    /// 1 once the leader's node, plan and MigrationCanary stores hold their first
    /// complete list.
    pub stores_synced: prometheus::IntGauge,
    /// Alertmanager webhook calls by outcome (`ok`, `unauthorized`,
    /// `bad_request`, `too_large`, `unavailable`).
    pub webhook_requests: IntCounterVec,
    /// The latest value of each analysis check, per plan.
    pub analysis_values: prometheus::GaugeVec,
    /// Analysis measurements by plan and verdict.
    pub analysis_measurements: IntCounterVec,
    /// Each plan's progress, ETA and velocity.
    pub progress: Progress,
    /// Notifications by outcome (delivered, failed, dropped).
    pub notifications: IntCounterVec,
}

/// Each plan's progress, ETA and velocity, by plan name.
#[derive(Clone)]
pub struct Progress {
    /// Share of the plan's node-steps done, 0 to 1.
    pub ratio: prometheus::GaugeVec,
    /// Seconds until the ETA (0 once the plan has ended).
    pub eta_seconds: prometheus::GaugeVec,
    /// Node-steps acknowledged per hour since the plan started.
    pub velocity: prometheus::GaugeVec,
    /// Nodes running the plan's final mode.
    pub migrated: IntGaugeVec,
    /// Nodes returned by finished rollbacks.
    pub rolled_back: IntCounterVec,
}

impl Progress {
    fn new(registry: &Registry) -> Progress {
        let gauge = |name: &str, help: &str| {
            let g =
                prometheus::GaugeVec::new(Opts::new(name, help), &["plan"]).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("metric names are unique");
            g
        };
        let migrated = IntGaugeVec::new(
            Opts::new(
                "switchyard_plan_nodes_migrated",
                "Nodes of the plan running its final mode",
            ),
            &["plan"],
        )
        .expect("valid metric");
        let rolled_back = IntCounterVec::new(
            Opts::new(
                "switchyard_plan_nodes_rolled_back_total",
                "Nodes the plan's finished rollbacks returned",
            ),
            &["plan"],
        )
        .expect("valid metric");
        for c in [
            Box::new(migrated.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(rolled_back.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Progress {
            ratio: gauge(
                "switchyard_plan_progress_ratio",
                "Share of the plan's node-steps done (0 to 1)",
            ),
            eta_seconds: gauge(
                "switchyard_plan_eta_seconds",
                "Seconds until the plan's estimated completion (0 once it has ended)",
            ),
            velocity: gauge(
                "switchyard_plan_velocity_nodes_per_hour",
                "Node-steps acknowledged per hour since the plan started",
            ),
            migrated,
            rolled_back,
        }
    }

    /// Forget a deleted plan.
    pub fn remove(&self, plan: &str) {
        let _ = self.ratio.remove_label_values(&[plan]);
        let _ = self.eta_seconds.remove_label_values(&[plan]);
        let _ = self.velocity.remove_label_values(&[plan]);
        let _ = self.migrated.remove_label_values(&[plan]);
        let _ = self.rolled_back.remove_label_values(&[plan]);
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "switchyard_operator_reconciles_total",
                "Reconciles by outcome",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let reconcile_seconds = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_operator_reconcile_duration_seconds",
                "Time per reconcile",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["controller"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "switchyard_operator_reconcile_errors_total",
                "Reconcile errors by kind",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let plans = IntGaugeVec::new(
            Opts::new("switchyard_operator_plans", "MigrationPlans by phase"),
            &["phase"],
        )
        .expect("valid metric");
        let nodes = IntGaugeVec::new(
            Opts::new(
                "switchyard_operator_plan_nodes",
                "Selected nodes by applied mode",
            ),
            &["plan", "mode"],
        )
        .expect("valid metric");
        let nodes_desired = IntGaugeVec::new(
            Opts::new(
                "switchyard_operator_plan_nodes_desired",
                "Selected nodes by desired mode (spec.mode)",
            ),
            &["plan", "mode"],
        )
        .expect("valid metric");
        let canaries = IntGaugeVec::new(
            Opts::new("switchyard_operator_canaries", "Canaries by phase"),
            &["phase"],
        )
        .expect("valid metric");
        let rollbacks = IntCounterVec::new(
            Opts::new(
                "switchyard_operator_rollbacks_total",
                "Rollbacks started, by trigger",
            ),
            &["trigger"],
        )
        .expect("valid metric");
        let node_writes = IntCounterVec::new(
            Opts::new(
                "switchyard_operator_fleetnode_writes_total",
                "FleetNode mode writes by outcome",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let leader =
            prometheus::IntGauge::new("switchyard_operator_leader", "1 while this replica leads")
                .expect("valid metric");
        let stores_synced = prometheus::IntGauge::new(
            "switchyard_operator_stores_synced",
            "1 once the node, plan and MigrationCanary stores hold their first complete list",
        )
        .expect("valid metric");
        let webhook_requests = IntCounterVec::new(
            Opts::new(
                "switchyard_operator_webhook_requests_total",
                "Alertmanager webhook calls by outcome",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let analysis_values = prometheus::GaugeVec::new(
            Opts::new(
                "switchyard_operator_analysis_value",
                "Latest value of each analysis check (canary cohort)",
            ),
            &["plan", "check"],
        )
        .expect("valid metric");
        let analysis_measurements = IntCounterVec::new(
            Opts::new(
                "switchyard_operator_analysis_measurements_total",
                "Analysis measurements by verdict",
            ),
            &["plan", "verdict"],
        )
        .expect("valid metric");
        for c in [
            Box::new(leader.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(stores_synced.clone()),
            Box::new(reconciles.clone()),
            Box::new(reconcile_seconds.clone()),
            Box::new(errors.clone()),
            Box::new(plans.clone()),
            Box::new(nodes.clone()),
            Box::new(nodes_desired.clone()),
            Box::new(canaries.clone()),
            Box::new(rollbacks.clone()),
            Box::new(node_writes.clone()),
            Box::new(webhook_requests.clone()),
            Box::new(analysis_values.clone()),
            Box::new(analysis_measurements.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        let progress = Progress::new(&registry);
        let notifications = IntCounterVec::new(
            Opts::new(
                "switchyard_operator_notifications_total",
                "Notifications by outcome (delivered, failed, dropped)",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(notifications.clone()))
            .expect("metric names are unique");
        Metrics {
            registry,
            reconciles,
            reconcile_seconds,
            errors,
            plans,
            nodes,
            nodes_desired,
            canaries,
            rollbacks,
            node_writes,
            leader,
            stores_synced,
            webhook_requests,
            analysis_values,
            analysis_measurements,
            progress,
            notifications,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
