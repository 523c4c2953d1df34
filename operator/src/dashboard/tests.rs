use std::sync::Arc;

use jiff::Timestamp;
use kube::api::DynamicObject;
use serde_json::json;
use switchyard_crds::{FleetNode, NetworkMode};

use super::snapshot::{health_view, plan_view};
use super::*;

fn at(s: &str) -> Timestamp {
    s.parse().expect("timestamp")
}

fn stored(value: serde_json::Value) -> DynamicObject {
    serde_json::from_value(value).expect("a stored object")
}

fn plan(status: serde_json::Value) -> DynamicObject {
    stored(json!({
        "apiVersion": "switchyard.dev/v1alpha1", "kind": "MigrationPlan",
        "metadata": {"name": "to-iroh", "namespace": "fleet"},
        "spec": {
            "selector": {"matchLabels": {"app": "storage"}},
            "stages": ["DualPreferLibP2p", "DualPreferIroh", "IrohOnly"],
            "waves": [25, 50, 100],
            "canary": {"count": 1},
            "paused": true, "pauseReason": "looking at p99",
        },
        "status": status,
    }))
}

#[test]
fn a_plan_shows_where_it_is_its_progress_eta_and_rollbacks() {
    let now = at("2026-12-01T10:00:00Z");
    let p = plan(json!({
        "phase": "Progressing", "stage": 1, "wave": 2, "progressPercent": 55,
        "estimatedCompletion": "2026-12-01T10:04:10Z",
        "nodes": {"total": 20, "acknowledged": 18, "switching": 2, "blocked": 0,
                  "byMode": {"DualPreferLibP2p": 9, "DualPreferIroh": 11}},
        "rollbackHistory": [{"trigger": "HighErrorRate", "reason": "error rate 0.2 above 0.05 for 10s",
                             "scope": "Wave", "nodes": 3, "step": "1/canary"}],
    }));
    let v = plan_view(&p, now);
    assert_eq!(v.invalid, None);
    assert_eq!(
        (v.namespace.as_str(), v.name.as_str()),
        ("fleet", "to-iroh")
    );
    assert_eq!(v.phase, "Progressing");
    assert!(!v.finished);
    assert_eq!(v.stage_mode, Some(NetworkMode::DualPreferIroh));
    assert_eq!((v.stage, v.wave, v.progress_percent), (1, Some(2), 55));
    assert_eq!(v.eta_seconds, Some(250));
    assert!(v.paused);
    assert_eq!(v.pause_reason.as_deref(), Some("looking at p99"));
    assert_eq!(v.nodes.by_mode.get(NetworkMode::DualPreferIroh), 11);
    assert_eq!(v.rollback_history[0].trigger, "HighErrorRate");
    // A finished plan has no ETA left.
    let done = plan_view(
        &plan(json!({"phase": "Succeeded", "estimatedCompletion": "2026-12-01T10:04:10Z"})),
        now,
    );
    assert!(done.finished);
    assert_eq!(done.eta_seconds, None);
}

#[test]
fn a_stored_object_that_is_no_plan_is_shown_invalid_naming_its_field() {
    let mut bad = plan(json!({}));
    bad.data["spec"]["stages"] = json!("IrohOnly");
    let v = plan_view(&bad, at("2026-12-01T10:00:00Z"));
    assert_eq!(v.phase, "Invalid");
    assert!(v.finished);
    let why = v.invalid.expect("invalid");
    assert!(why.contains("stages"), "{why}");
}

fn report(name: &str, score: Option<f64>, risk: Option<f64>, states: [&str; 2]) -> NodeHealth {
    NodeHealth {
        namespace: "fleet".into(),
        name: name.into(),
        at: 0,
        score,
        libp2p: TransportHealth {
            score: score.map(|s| s * 0.9),
            state: Some(states[0].into()),
            peers: Some(3.0),
        },
        iroh: TransportHealth {
            score,
            state: Some(states[1].into()),
            peers: None,
        },
        partition_risk: risk,
        routing_health: Some(2.0),
    }
}

#[test]
fn health_lists_the_unknown_and_the_worst_first_and_counts_each_state() {
    let reports = vec![
        report("good", Some(0.95), Some(0.0), ["Healthy", "Healthy"]),
        report("risky", Some(0.95), Some(0.5), ["Healthy", "Degraded"]),
        report("bad", Some(0.4), Some(0.1), ["Unhealthy", "Unhealthy"]),
        report("silent", None, None, ["Unknown", "Unknown"]),
    ];
    let h = health_view(&reports);
    let order: Vec<&str> = h.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(order, ["silent", "bad", "risky", "good"]);
    assert_eq!(h.reported, 4);
    assert_eq!(
        (
            h.iroh.healthy,
            h.iroh.degraded,
            h.iroh.unhealthy,
            h.iroh.unknown
        ),
        (1, 1, 1, 1)
    );
    assert_eq!(h.libp2p.healthy, 2);
    assert_eq!(h.highest_partition_risk, Some(0.5));
    let mean = h.iroh.mean_score.expect("mean");
    assert!((mean - (0.95 + 0.95 + 0.4) / 3.0).abs() < 1e-9, "{mean}");
    assert_eq!(h.iroh.lowest_score, Some(0.4));
    // No reports: nothing is known, nothing is healthy.
    let empty = health_view(&[]);
    assert_eq!((empty.reported, empty.iroh.mean_score), (0, None));
}

fn node(name: &str, desired: NetworkMode, applied: Option<NetworkMode>) -> Arc<FleetNode> {
    let mut n = FleetNode::new(name, Default::default());
    n.metadata.namespace = Some("fleet".into());
    n.metadata.generation = Some(1);
    n.spec.mode = Some(desired);
    n.status = applied.map(|m| switchyard_crds::FleetNodeStatus {
        applied_mode: Some(m),
        observed_generation: Some(1),
        ..Default::default()
    });
    Arc::new(n)
}

#[test]
fn histories_are_bounded_and_the_fleet_pushes_only_when_it_changed() {
    let board = Board::default();
    let mut version = board.subscribe();
    for i in 0..ANALYSIS_POINTS + 10 {
        board.analysed(
            "fleet/to-iroh",
            AnalysisPoint {
                at: i as i64,
                ..Default::default()
            },
        );
    }
    let kept = board.read(|s| s.analysis["fleet/to-iroh"].clone());
    assert_eq!(kept.len(), ANALYSIS_POINTS);
    assert_eq!(kept.front().map(|p| p.at), Some(10), "the oldest went");
    assert!(version.has_changed().expect("open"));
    version.borrow_and_update();

    let nodes = vec![
        node("a", NetworkMode::IrohOnly, Some(NetworkMode::IrohOnly)),
        node(
            "b",
            NetworkMode::IrohOnly,
            Some(NetworkMode::DualPreferIroh),
        ),
        node("c", NetworkMode::IrohOnly, None),
    ];
    let t0 = at("2026-12-01T10:00:00Z");
    board.sample_fleet(&nodes, t0);
    assert!(version.has_changed().expect("open"), "the first sample");
    version.borrow_and_update();
    for i in 1..=FLEET_POINTS as i64 + 5 {
        board.sample_fleet(&nodes, t0 + jiff::SignedDuration::from_secs(5 * i));
    }
    assert!(
        !version.has_changed().expect("open"),
        "an unchanged fleet wakes nobody"
    );
    let fleet = board.read(|s| s.fleet.clone());
    assert_eq!(fleet.len(), FLEET_POINTS);
    let last = fleet.back().expect("a point");
    assert_eq!(last.by_mode.get(NetworkMode::IrohOnly), 1);
    assert_eq!(last.by_mode.get(NetworkMode::DualPreferIroh), 1);
    assert_eq!(last.switching, 2, "b runs another mode; c reports none");

    // Reports of nodes that are gone, or that nobody scrapes any more, go.
    let mut fresh = report("a", Some(0.9), None, ["Healthy", "Healthy"]);
    fresh.at = t0.as_millisecond();
    let mut gone = report("zz", Some(0.9), None, ["Healthy", "Healthy"]);
    gone.at = t0.as_millisecond();
    let mut stale = report("b", Some(0.9), None, ["Healthy", "Healthy"]);
    stale.at = t0.as_millisecond() - HEALTH_STALE_MILLIS - 1;
    board.reported([fresh, gone, stale]);
    board.sample_fleet(&nodes, t0);
    let names: Vec<String> = board.read(|s| s.health.values().map(|h| h.name.clone()).collect());
    assert_eq!(names, ["a"]);

    board.retain_subjects(|s| s != "fleet/to-iroh");
    assert!(board.read(|s| s.analysis.is_empty()));
}
