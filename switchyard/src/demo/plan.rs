//! The demo's MigrationPlan, and which stage `--fail-at` names. Pure: no
//! I/O, so both are tested here.

use std::time::Duration;

use serde_json::json;
use switchyard_crds::{MigrationPlan, NetworkMode};

/// The namespace everything lives in.
pub const NAMESPACE: &str = "demo";
/// The plan's name.
pub const PLAN: &str = "demo-to-iroh";
/// The label the plan selects the fleet by.
pub const LABEL: (&str, &str) = ("app", "storage-node");
/// The stages, in order.
pub const STAGES: [NetworkMode; 3] = [
    NetworkMode::DualPreferLibP2p,
    NetworkMode::DualPreferIroh,
    NetworkMode::IrohOnly,
];
/// Node `i`'s name.
pub fn node_name(i: usize) -> String {
    format!("node-{i:02}")
}

/// How the demo's load grows with the fleet. Every agent shares this
/// machine's cores, so the fleet's application traffic and background
/// work stay about what 30 agents make, whatever `--nodes`; and the
/// canary grows so that its analysis still sees enough DHT operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scale {
    /// Agents.
    pub nodes: usize,
}

/// The fleet size up to which every agent runs at full rate.
const FULL_RATE_UP_TO: usize = 30;

impl Scale {
    /// For `nodes` agents.
    pub fn new(nodes: usize) -> Scale {
        Scale { nodes }
    }

    /// How much slower than a 30-agent fleet each agent works (at least 1).
    fn slowdown(self) -> u32 {
        u32::try_from(self.nodes.div_ceil(FULL_RATE_UP_TO).max(1)).unwrap_or(u32::MAX)
    }

    /// Each application's round (a put and a get): every second up to 30
    /// agents. Past that, slower than in proportion: a DHT operation costs
    /// more requests in a bigger fleet, so the fleet makes 30 rounds a
    /// second at 30 agents and 30 × √(30/n) past them (16 at 100).
    pub fn round(self) -> Duration {
        let ratio = (self.nodes as f64 / FULL_RATE_UP_TO as f64).max(1.0);
        Duration::from_secs_f64(ratio.powf(1.5))
    }

    /// Each agent's DHT routing check: every 5 s up to 30 agents.
    pub fn routing_check(self) -> Duration {
        Duration::from_secs(5) * self.slowdown()
    }

    /// Heartbeats to every peer on both transports: every 2 s, 20 s past
    /// 50 agents (100 agents make 2,475 pairs to 30 agents' 435).
    pub fn heartbeat(self) -> Duration {
        Duration::from_secs(if self.nodes > 50 { 20 } else { 2 })
    }

    /// Each stage's waves, as percentages of the fleet: halves up to 50
    /// agents, quarters past them. Every agent shares this machine's two
    /// cores, and half of 100 agents dropping libp2p at once (each
    /// closing its connections to the 99 others and saying goodbye on
    /// them) put the whole fleet's p95 over the rollback trigger's 2 s in
    /// one release run of 14 (2026-12-02); a bigger fleet is stepped in
    /// smaller waves, as an operator would.
    pub fn waves(self) -> &'static [u8] {
        if self.nodes > 50 {
            &[25, 50, 75, 100]
        } else {
            &[50, 100]
        }
    }

    /// The canaries: the same nodes in every stage, so that `--fail-at`
    /// knows whom to break; two, and one more for each 15 agents past 30.
    pub fn canaries(self) -> Vec<String> {
        let n = (self.nodes / 15).clamp(2, self.nodes.saturating_sub(1).max(1));
        (1..=n).map(node_name).collect()
    }
}

/// The plan: a canary and two or four waves per stage, short soaks, analysis on
/// error rate, p95 latency and DHT lookup success every 2 s, and a
/// fast automatic rollback of the whole plan.
pub fn plan(scale: Scale) -> MigrationPlan {
    let stages: Vec<NetworkMode> = STAGES.to_vec();
    serde_json::from_value(json!({
        "apiVersion": "switchyard.dev/v1alpha1",
        "kind": "MigrationPlan",
        "metadata": {"name": PLAN, "namespace": NAMESPACE},
        "spec": {
            "selector": {"matchLabels": {LABEL.0: LABEL.1}},
            "stages": stages,
            "canary": {"nodes": scale.canaries(), "duration": "3s"},
            "waves": scale.waves(),
            "waveInterval": "1s",
            "maxUnavailable": "50%",
            "progressDeadline": "1m",
            "analysis": {
                "interval": "2s",
                "minSampleSize": 5,
                "inconclusiveLimit": 5,
                "metrics": [
                    {"name": "error-rate", "builtin": "ErrorRate", "max": 0.05},
                    {"name": "p95-ms", "builtin": "LatencyP95", "max": 1000.0},
                    {"name": "dht-success", "builtin": "DhtLookupSuccess", "min": 0.95},
                ],
            },
            // The four triggers with the seed's thresholds, but for the
            // latency bound: a fleet of agents sharing a laptop's cores
            // sees p95s of several hundred milliseconds when the machine
            // is busy, which on a real network would be a regression.
            "rollback": {
                "strategy": "Fast",
                "scope": "Plan",
                "triggers": {
                    "highErrorRate": {},
                    "latencyRegression": {"thresholdMs": 2000},
                    "networkPartition": {},
                    "healthCheckFailure": {},
                },
            },
        },
    }))
    .expect("the demo's plan is a valid MigrationPlan")
}

/// The stage index (0-based) `--fail-at` names: its number (1 to 3) or
/// its mode, e.g. `2` or `DualPreferIroh`.
pub fn fail_at(arg: &str) -> Result<usize, String> {
    let names: Vec<String> = STAGES.iter().map(|m| format!("{m:?}")).collect();
    let arg = arg.trim();
    if let Ok(n) = arg.parse::<usize>() {
        return (1..=STAGES.len())
            .contains(&n)
            .then(|| n - 1)
            .ok_or_else(|| {
                format!(
                    "--fail-at {n}: the plan has stages 1 to {} ({})",
                    STAGES.len(),
                    names.join(", ")
                )
            });
    }
    names
        .iter()
        .position(|n| n.eq_ignore_ascii_case(arg))
        .ok_or_else(|| {
            format!(
                "--fail-at {arg:?}: name a stage by number (1 to {}) or mode ({})",
                STAGES.len(),
                names.join(", ")
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_has_three_stages_a_canary_and_analysis_on_the_three_measures() {
        let p = plan(Scale::new(30));
        assert_eq!(p.spec.stages, STAGES.to_vec());
        let analysis = p.spec.analysis.as_ref().expect("analysis");
        let names: Vec<&str> = analysis.metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["error-rate", "p95-ms", "dht-success"]);
        let canary = p.spec.canary.as_ref().expect("canary");
        assert_eq!(canary.nodes, Some(vec!["node-01".into(), "node-02".into()]));
        let triggers = &p.spec.rollback.triggers;
        assert!(triggers.high_error_rate.is_some() && triggers.network_partition.is_some());
        assert!(triggers.health_check_failure.is_some());
        let latency = triggers
            .latency_regression
            .as_ref()
            .expect("latency trigger");
        assert_eq!(latency.threshold_ms, 2000);
    }

    #[test]
    fn a_bigger_fleet_works_slower_per_agent_and_has_a_bigger_canary() {
        let small = Scale::new(8);
        assert_eq!(small.round(), Duration::from_secs(1));
        assert_eq!(small.routing_check(), Duration::from_secs(5));
        assert_eq!(small.canaries(), ["node-01", "node-02"]);
        let thirty = Scale::new(30);
        assert_eq!(
            (thirty.round(), thirty.canaries().len()),
            (Duration::from_secs(1), 2)
        );
        assert_eq!(plan(thirty).spec.waves, [50, 100]);
        let hundred = Scale::new(100);
        assert_eq!(plan(hundred).spec.waves, [25, 50, 75, 100]);
        // The fleet's rounds a second fall from 30 to 30 × √(30/100).
        let rounds = 100.0 / hundred.round().as_secs_f64();
        assert!((rounds - 30.0 * (0.3f64).sqrt()).abs() < 1e-6, "{rounds}");
        assert_eq!(hundred.routing_check(), Duration::from_secs(20));
        assert_eq!(hundred.heartbeat(), Duration::from_secs(20));
        let canaries = hundred.canaries();
        assert_eq!(
            (canaries.len(), canaries[0].as_str(), canaries[5].as_str()),
            (6, "node-01", "node-06")
        );
        assert_eq!(Scale::new(3).canaries(), ["node-01", "node-02"]);
    }

    #[test]
    fn a_stage_is_named_by_number_or_mode_and_anything_else_says_what_is_valid() {
        assert_eq!(fail_at("1"), Ok(0));
        assert_eq!(fail_at("3"), Ok(2));
        assert_eq!(fail_at("dualpreferiroh"), Ok(1));
        assert_eq!(fail_at("IrohOnly"), Ok(2));
        let zero = fail_at("0").expect_err("no stage 0");
        assert!(zero.contains("1 to 3"), "{zero}");
        let other = fail_at("LibP2pOnly").expect_err("not a stage");
        assert!(
            other.contains("DualPreferLibP2p, DualPreferIroh, IrohOnly"),
            "{other}"
        );
    }
}
