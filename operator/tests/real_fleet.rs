//! Analysis and rollback with real parts (see `support/real_fleet.rs`):
//! node-agents with real transports, the operator binary, and, where
//! Debian's packages are installed, real Prometheus and Alertmanager.
//!
//! - A fault in 20 agents → the shipped libp2p error-rate rule fires →
//!   Alertmanager calls the webhook → the plan rolls every node back.
//! - A canary whose iroh error rate crosses its threshold fails its
//!   analysis (built-in scraping, or a PromQL check through Prometheus)
//!   and only the canary nodes roll back.
//! - A canary with too few requests is inconclusive and the plan pauses.
//!
//! The times are printed; `cargo bench -p switchyard-operator --bench
//! alert_rollback` reports them over several runs.

#[path = "support/real_fleet.rs"]
mod real_fleet;

use std::time::Instant;

use real_fleet::{Fleet, plan};
use serde_json::json;
use switchyard_crds::{NetworkMode, PlanPhase, Verdict};

/// Skip (with what is missing) where Prometheus or Alertmanager is not
/// installed, except in CI, which installs both.
fn or_skip<T>(r: Result<T, String>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(why) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED: {why}");
            None
        }
        Err(why) => panic!("{why}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_in_the_agents_fires_the_alert_and_alertmanager_rolls_the_plan_back() {
    let Some(m) = or_skip(real_fleet::alert_rollback(20).await) else {
        return;
    };
    eprintln!("{m:?}");
    assert_eq!(m.agents, 20);
    assert_eq!(m.trigger, "Alert", "{m:?}");
    assert!(
        m.reason.contains("SwitchyardLibp2pErrorRate"),
        "the evidence names the alert: {}",
        m.reason
    );
    // Every hop of the path was seen: Prometheus reported the alert
    // firing, Alertmanager delivered it to the webhook, the operator
    // accepted it, and it told a node to go back. Each is seen by polling
    // Prometheus, Alertmanager, the operator and the API server in turn,
    // so their order is not asserted; the rollback's trigger and evidence
    // above say what caused it.
    assert!(
        m.to_firing.is_some(),
        "Prometheus never reported the alert firing: {m:?}"
    );
    assert!(
        m.to_delivered.is_some(),
        "Alertmanager never delivered the alert: {m:?}"
    );
    assert!(
        m.to_webhook.is_some(),
        "the operator never accepted a webhook call: {m:?}"
    );
    let first = m.to_first_revert.expect("a first revert was seen");
    assert!(first <= m.to_all_reverted, "{m:?}");
}

/// The canary is node-00 (every agent's bootstrap peer) and node-01, so the
/// canaries talk iroh to each other while the rest reach them over libp2p.
const CANARY: [&str; 2] = ["node-00", "node-01"];

/// Run a canary whose iroh sends fail half the time once it has passed a
/// measurement; the check is `check`. Returns the failed check's result.
async fn a_failing_canary_rolls_back_alone(
    f: &Fleet,
    check: serde_json::Value,
) -> switchyard_crds::plan::MetricResult {
    let p = plan(
        "trial",
        &["DualPreferIroh"],
        "10m",
        json!({
            "canary": {"nodes": CANARY, "duration": "10m", "analysis": {
                "interval": "1s", "minSampleSize": 5, "metrics": [check],
            }},
            "rollback": {"triggers": {}},
        }),
    );
    f.create(&p).await;
    let name = check_name(&p);
    // A passing measurement first: the check works on healthy data.
    f.wait_plan("trial", "a passing measurement of the canary", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.last_analysis.as_ref())
            .is_some_and(|a| {
                a.metrics
                    .iter()
                    .any(|m| m.name == name && m.verdict == Verdict::Pass)
            })
    })
    .await;
    let canary: Vec<String> = CANARY.iter().map(|s| (*s).to_owned()).collect();
    let fault = Instant::now();
    f.inject(&canary, Some("iroh=0.5")).await;
    let p = f
        .wait_plan("trial", "the canary's rollback", |p| {
            p.status
                .as_ref()
                .is_some_and(|s| s.phase == PlanPhase::RolledBack)
        })
        .await;
    eprintln!("fault to RolledBack: {:?}", fault.elapsed());
    let s = p.status.expect("status");
    let record = s.rollback_history.last().expect("a rollback record");
    assert_eq!(record.trigger, "AnalysisFailed", "{record:?}");
    assert_eq!(record.nodes, 2, "only the canary moved: {record:?}");
    let analysis = s
        .last_analysis
        .expect("the failed measurement is in status");
    assert_eq!(analysis.verdict, Verdict::Fail);
    let m = analysis
        .metrics
        .into_iter()
        .find(|m| m.name == name)
        .expect("the check");
    assert_eq!(m.verdict, Verdict::Fail, "{m:?}");
    // Every node ends on LibP2pOnly; the others never moved.
    f.wait_nodes("every node back on LibP2pOnly", |n| {
        n.applied_mode() == Some(NetworkMode::LibP2pOnly)
    })
    .await;
    m
}

fn check_name(p: &switchyard_crds::MigrationPlan) -> String {
    p.spec
        .canary
        .as_ref()
        .and_then(|c| c.analysis.as_ref())
        .and_then(|a| a.metrics.first())
        .map(|m| m.name.clone())
        .expect("a check")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_whose_scraped_iroh_error_rate_crosses_the_threshold_rolls_back_alone() {
    let f = Fleet::start(6, false).await.expect("fleet");
    let m = a_failing_canary_rolls_back_alone(
        &f,
        json!({"name": "iroh-errors", "builtin": "ErrorRate", "transport": "Iroh", "max": 0.05}),
    )
    .await;
    let v = m.value.expect("a value");
    assert!(v > 0.05, "{m:?}");
    assert_eq!(m.cohort, "canary (2 nodes), iroh");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promql_check_through_prometheus_fails_the_canary_and_only_it_rolls_back() {
    let Some(f) = or_skip(Fleet::start(6, true).await) else {
        return;
    };
    let m = a_failing_canary_rolls_back_alone(
        &f,
        json!({
            "name": "canary-iroh-errors",
            "promql": "sum(rate(switchyard_node_requests_total{transport=\"iroh\",outcome=\"error\",namespace=\"$namespace\",pod=~\"$canary\"}[5s])) / sum(rate(switchyard_node_requests_total{transport=\"iroh\",namespace=\"$namespace\",pod=~\"$canary\"}[5s]))",
            "max": 0.05,
        }),
    )
    .await;
    assert!(m.value.expect("a value") > 0.05, "{m:?}");
    assert_eq!(m.cohort, "prometheus");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_with_too_few_requests_is_inconclusive_and_the_plan_pauses() {
    let f = Fleet::start(4, false).await.expect("fleet");
    let p = plan(
        "starved",
        &["DualPreferIroh"],
        "3s",
        json!({
            // The verdict is taken when the soak ends.
            "canary": {"nodes": CANARY, "duration": "3s", "analysis": {
                "interval": "1s", "minSampleSize": 100000,
                "metrics": [{"name": "iroh-errors", "builtin": "ErrorRate", "transport": "Iroh", "max": 0.05}],
            }},
        }),
    );
    f.create(&p).await;
    let p = f
        .wait_plan("starved", "the pause", |p| {
            p.status
                .as_ref()
                .is_some_and(|s| s.phase == PlanPhase::Paused)
        })
        .await;
    assert!(p.spec.paused, "the operator set spec.paused");
    let a = p
        .status
        .and_then(|s| s.last_analysis)
        .expect("the measurement is in status");
    assert_eq!(a.verdict, Verdict::Inconclusive);
    let m = &a.metrics[0];
    assert_eq!(m.verdict, Verdict::Inconclusive);
    assert!(
        m.reason
            .as_deref()
            .is_some_and(|r| r.contains("fewer than minSampleSize 100000")),
        "{m:?}"
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_in_analysis_rolls_the_whole_fleet_back_after_a_fault() {
    let m = real_fleet::analysis_rollback(10, std::time::Duration::from_secs(1)).await;
    eprintln!("{m:?}");
    assert_eq!(m.trigger, "AnalysisFailed", "{m:?}");
    assert!(m.reason.contains("errors = "), "the evidence: {}", m.reason);
    let first = m.to_first_revert.expect("a first revert was seen");
    assert!(first <= m.to_all_reverted, "{m:?}");
}
