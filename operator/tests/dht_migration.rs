//! The fleet's application through a migration, with real parts (see
//! `support/real_fleet.rs`): 30 node-agents in this process form a
//! Kademlia DHT; a workload puts records and reads them back through
//! their workload APIs (one put to four gets, like a key-value store, 60
//! operations a second) while the operator binary moves
//! the fleet LibP2pOnly → DualPreferLibP2p → DualPreferIroh → IrohOnly,
//! and while it rolls the fleet back from DualPreferIroh. No operation may
//! fail, and every node's routing health (seed 001's check, once a second)
//! stays Healthy.

#[path = "support/real_fleet.rs"]
#[allow(dead_code)] // The alerting parts serve the other fleet tests.
mod real_fleet;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Patch, PatchParams};
use real_fleet::{Fleet, plan};
use serde_json::json;
use switchyard_crds::{NetworkMode, PlanPhase};
use tokio::sync::watch;

/// Agents in the fleet.
const AGENTS: usize = 30;
/// Rounds started per second: one put and four gets each.
const ROUNDS_PER_SECOND: u64 = 12;
/// Rounds in flight at most (far above what an unloaded machine needs:
/// rounds take well under a second there).
const MAX_IN_FLIGHT: usize = 64;
/// Operations in a round.
const OPS_PER_ROUND: u64 = 5;

/// What the workload saw.
#[derive(Default)]
struct Load {
    /// Operations in the rounds started.
    offered: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    failures: std::sync::Mutex<Vec<String>>,
}

impl Load {
    fn note(&self, r: Result<(), String>) {
        match r {
            Ok(()) => {
                self.ok.fetch_add(OPS_PER_ROUND, Ordering::Relaxed);
            }
            Err(why) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.failures.lock().expect("failures").push(why);
            }
        }
    }
}

/// Put `key` through `api`.
async fn put(http: &reqwest::Client, api: &str, key: &str) -> Result<(), String> {
    let r = http
        .put(format!("{api}/v1/records/{key}"))
        .body(format!("value of {key}"))
        .send()
        .await
        .map_err(|e| format!("put {key}: {e}"))?;
    if !r.status().is_success() {
        return Err(format!("put {key}: {} {:?}", r.status(), r.text().await));
    }
    Ok(())
}

/// Read `key` back through `api`.
async fn get(http: &reqwest::Client, api: &str, key: &str) -> Result<(), String> {
    let r = http
        .get(format!("{api}/v1/records/{key}"))
        .send()
        .await
        .map_err(|e| format!("get {key}: {e}"))?;
    let status = r.status();
    let body = r.text().await.unwrap_or_default();
    if status.is_success() && body == format!("value of {key}") {
        Ok(())
    } else {
        Err(format!("get {key} through {api}: {status} {body:?}"))
    }
}

/// Keys whose put finished, in order: what later rounds may read.
type Stored = Arc<std::sync::Mutex<Vec<usize>>>;

/// Round `i`, like a key-value store's traffic: put key `i` through one
/// node, read it back through another, and read three keys whose puts
/// had finished (rounds overlap) through three more.
async fn round(
    http: reqwest::Client,
    apis: Vec<String>,
    stored: Stored,
    i: usize,
) -> Result<(), String> {
    let n = apis.len();
    put(&http, &apis[i % n], &format!("load-{i}")).await?;
    let earlier: Vec<usize> = {
        let mut s = stored.lock().expect("stored");
        s.push(i);
        (1..4)
            .map(|j| s[s.len().saturating_sub(1 + j * 5)])
            .collect()
    };
    get(&http, &apis[(i * 7 + 3) % n], &format!("load-{i}")).await?;
    for (j, e) in earlier.into_iter().enumerate() {
        get(&http, &apis[(i * 11 + j) % n], &format!("load-{e}")).await?;
    }
    Ok(())
}

/// Run the workload until `stop`: ROUNDS_PER_SECOND rounds a second, at
/// most MAX_IN_FLIGHT at once.
async fn workload(apis: Vec<String>, load: Arc<Load>, mut stop: watch::Receiver<bool>) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / ROUNDS_PER_SECOND));
    let mut running = futures::stream::FuturesUnordered::new();
    let stored = Stored::default();
    let mut i: usize = 0;
    loop {
        tokio::select! {
            _ = tick.tick(), if running.len() < MAX_IN_FLIGHT => {
                running.push(round(http.clone(), apis.clone(), stored.clone(), i));
                load.offered.fetch_add(OPS_PER_ROUND, Ordering::Relaxed);
                i += 1;
            }
            Some(r) = running.next() => load.note(r),
            _ = stop.changed() => break,
        }
    }
    // Let what started finish.
    while let Some(r) = running.next().await {
        load.note(r);
    }
}

/// Every node's routing health, once a second until `stop`: the lowest
/// seen, and where.
async fn watch_routing(
    urls: Vec<String>,
    lowest: Arc<std::sync::Mutex<(f64, String, u64)>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        // All at once, so a sweep takes one round trip, not thirty.
        let reads = urls.iter().map(|url| async move {
            let port: u16 = url
                .trim_start_matches("http://127.0.0.1:")
                .trim_end_matches("/metrics")
                .parse()
                .expect("a port");
            let (code, body) = real_fleet::http(port, "GET", "/metrics", None).await?;
            (code == 200).then(|| {
                let v = real_fleet::sample(&body, "switchyard_dht_routing_health", &[]);
                (v, url.clone())
            })
        });
        for (v, url) in futures::future::join_all(reads).await.into_iter().flatten() {
            let mut l = lowest.lock().expect("lowest");
            l.2 += 1;
            if v < l.0 {
                l.0 = v;
                l.1 = url;
            }
        }
    }
}

/// The fleet of AGENTS, every agent Healthy; their metrics URLs.
async fn fleet() -> (Fleet, Vec<String>) {
    let f = Fleet::start_with(AGENTS, false, |c| {
        // The default heartbeats (5 s, not the harness's 500 ms): thirty
        // agents on two cores need the CPU for the workload.
        c.manager.heartbeat_interval = Duration::from_secs(5);
    })
    .await
    .expect("fleet");
    let urls = healthy_fleet(&f).await;
    (f, urls)
}

/// Every agent's metrics URL, once its routing health is Healthy.
async fn healthy_fleet(f: &Fleet) -> Vec<String> {
    let mut urls = Vec::new();
    for name in &f.names {
        let url = real_fleet::eventually("every agent reports its metrics", || async {
            f.nodes.get(name).await.ok()?.status?.metrics_endpoint
        })
        .await;
        let port: u16 = url
            .trim_start_matches("http://127.0.0.1:")
            .trim_end_matches("/metrics")
            .parse()
            .expect("a port");
        real_fleet::eventually("every agent's routing health is Healthy", || async {
            let (_, body) = real_fleet::http(port, "GET", "/metrics", None).await?;
            (real_fleet::sample(&body, "switchyard_dht_routing_health", &[]) == 2.0).then_some(())
        })
        .await;
        urls.push(url);
    }
    urls
}

/// The fleet under load from `start` until `done` resolves; what the load
/// and the routing watch saw.
async fn under_load<F: std::future::Future<Output = ()>>(
    f: &Fleet,
    urls: Vec<String>,
    done: F,
) -> (Arc<Load>, (f64, String, u64), Duration) {
    let apis: Vec<String> = (0..f.names.len()).map(|i| f.workload_api(i)).collect();
    let load = Arc::new(Load::default());
    let lowest = Arc::new(std::sync::Mutex::new((2.0, String::new(), 0)));
    let (stop, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let w = tokio::spawn(workload(apis, load.clone(), stop_rx.clone()));
    let r = tokio::spawn(watch_routing(urls, lowest.clone(), stop_rx));
    done.await;
    let _ = stop.send(true);
    let _ = w.await;
    let _ = r.await;
    let took = started.elapsed();
    let l = lowest.lock().expect("lowest").clone();
    (load, l, took)
}

fn check(load: &Load, lowest: &(f64, String, u64), took: Duration) {
    let (ok, failed) = (
        load.ok.load(Ordering::Relaxed),
        load.failed.load(Ordering::Relaxed),
    );
    let offered = load.offered.load(Ordering::Relaxed);
    let rate = offered as f64 / took.as_secs_f64();
    eprintln!(
        "{offered} operations started in {took:?} ({rate:.1}/s), {ok} succeeded ({:.1}/s), {failed} rounds failed; lowest routing health {lowest:?}",
        ok as f64 / took.as_secs_f64()
    );
    let failures = load.failures.lock().expect("failures");
    assert_eq!(
        failed,
        0,
        "failed operations, e.g. {:?}",
        &failures[..failures.len().min(5)]
    );
    // The load put on the fleet (on a loaded machine the last rounds
    // finish after the migration does).
    assert!(rate >= 50.0, "{rate:.1} operations a second, fewer than 50");
    assert_eq!(ok, offered, "every operation started finished");
    assert_eq!(lowest.0, 2.0, "routing health left Healthy on {}", lowest.1);
    // Read from every node every few seconds (on a loaded machine a sweep
    // of 30 outlasts its 1 s tick), so the watch saw it.
    let reads = lowest.2 as f64 / AGENTS as f64;
    assert!(
        reads >= took.as_secs_f64() / 6.0,
        "{reads:.0} reads of each node's routing health in {took:?}"
    );
}

/// Stages through the whole fleet, a canary then two waves each.
fn forward(name: &str) -> switchyard_crds::MigrationPlan {
    plan(
        name,
        &["DualPreferLibP2p", "DualPreferIroh", "IrohOnly"],
        "3s",
        json!({"waves": [50, 100], "waveInterval": "3s", "progressDeadline": "2m"}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_loses_no_operation_while_the_fleet_migrates_to_iroh() {
    let (f, urls) = fleet().await;
    let (load, lowest, took) = under_load(&f, urls, async {
        f.create(&forward("dht-forward")).await;
        f.wait_plan("dht-forward", "the plan succeeds", |p| {
            p.status.as_ref().map(|s| s.phase) == Some(PlanPhase::Succeeded)
        })
        .await;
        f.wait_nodes("every agent runs IrohOnly", |n| {
            n.applied_mode() == Some(NetworkMode::IrohOnly)
        })
        .await;
    })
    .await;
    check(&load, &lowest, took);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_loses_no_operation_while_the_fleet_rolls_back_from_dual_prefer_iroh() {
    let (f, urls) = fleet().await;
    let (load, lowest, took) = under_load(&f, urls, async {
        f.create(&forward("dht-back")).await;
        f.wait_nodes("every agent runs DualPreferIroh", |n| {
            n.applied_mode() == Some(NetworkMode::DualPreferIroh)
        })
        .await;
        f.plans
            .patch(
                "dht-back",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"rollbackRequest": {"reason": "a test of rollback under load"}}})),
            )
            .await
            .expect("rollback requested");
        f.wait_nodes("every agent is back on LibP2pOnly", |n| {
            n.applied_mode() == Some(NetworkMode::LibP2pOnly)
        })
        .await;
    })
    .await;
    check(&load, &lowest, took);
    f.stop().await;
}
