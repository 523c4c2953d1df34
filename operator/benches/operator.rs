//! The operator as a real process on a 10,000-node fleet (or 100,000 with
//! `--nodes 100000`): how long one plan takes to issue a 25% wave, how
//! many API writes that takes, the operator's peak RSS and CPU time, and
//! how many LIST requests it makes once its stores are synced (the plan
//! has a rollback trigger, so the analysis measures it every 5 s: it must
//! read the stores, not list).
//!
//! Usage: `cargo bench -p switchyard-operator --bench operator [-- --nodes N --qps Q --burst B]`
//!
//! The fleet lives in the in-memory API server in this process; the
//! operator is the `switchyard-operator` binary, leader-elected as in a
//! cluster. No agent acknowledges, so the wave's writes are all there is
//! to see. Prints a table, then one line of JSON (also written to
//! target/bench/operator.json). Targets: the wave is issued within
//! 1.2 × (wave nodes ÷ write QPS) of the plan's creation; RSS ≤ 150 MiB
//! at 10,000 nodes, ≤ 600 MiB at 100,000; no LIST request after sync.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use switchyard_crds::{FleetNode, MigrationPlan, NetworkMode};
use switchyard_testbed::apiserver::Config;
use switchyard_testbed::cluster::TestCluster;

const NS: &str = "bench";

fn arg(args: &[String], name: &str, default: f64) -> f64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (peak RSS in MiB, CPU seconds) of a process, from /proc.
fn proc_usage(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are
    // the 14th and 15th fields overall.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    // USER_HZ is 100 on Linux.
    (hwm_kib / 1024.0, ticks / 100.0)
}

async fn metrics(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut conn) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return String::new();
    };
    let req = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let mut out = String::new();
    if conn.write_all(req.as_bytes()).await.is_ok() {
        let _ = conn.read_to_string(&mut out).await;
    }
    out
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let nodes = arg(&args, "--nodes", 10_000.0) as usize;
    let qps = arg(&args, "--qps", 200.0);
    let burst = arg(&args, "--burst", 400.0) as u32;
    let wave_percent = 25usize;
    let wave_nodes = (nodes * wave_percent).div_ceil(100);
    let rss_target_mib: f64 = if nodes > 10_000 { 600.0 } else { 150.0 };

    let config = Config {
        history: 4 * nodes,
        ..Config::default()
    };
    let cluster = TestCluster::start(config, "operator-bench").await?;
    cluster.namespace(NS).await?;
    let labels: BTreeMap<String, String> = [("app".into(), "storage".into())].into();
    let t = Instant::now();
    cluster
        .register_nodes(
            NS,
            (0..nodes).map(|i| format!("node-{i:05}")),
            &labels,
            NetworkMode::LibP2pOnly,
        )
        .await?;
    eprintln!(
        "registered {nodes} FleetNodes in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    // Count nodes told to switch, as their watch events arrive. The
    // counter's own first list comes before the baseline below.
    let api: Api<FleetNode> = Api::namespaced(cluster.client.clone(), NS);
    // One message per node at most: a channel that size never blocks.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Instant>(nodes.max(1));
    let (listed_tx, listed) = tokio::sync::oneshot::channel::<()>();
    let counter = tokio::spawn(async move {
        let mut seen = std::collections::HashSet::new();
        let mut listed_tx = Some(listed_tx);
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Ok(Some(e)) = events.try_next().await {
            let n = match e {
                watcher::Event::InitDone => {
                    if let Some(t) = listed_tx.take() {
                        let _ = t.send(());
                    }
                    continue;
                }
                watcher::Event::Apply(n) | watcher::Event::InitApply(n) => n,
                _ => continue,
            };
            if n.spec.mode.is_some()
                && seen.insert(n.metadata.name.clone().unwrap_or_default())
                && tx.send(Instant::now()).await.is_err()
            {
                return;
            }
        }
    });
    listed.await?;

    let reserved = switchyard_testbed::ports::reserve();
    let port = reserved.get();
    let mut operator = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard-operator"))
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env("SWITCHYARD_NAMESPACE", NS)
        .env("SWITCHYARD_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("SWITCHYARD_WRITE_QPS", qps.to_string())
        .env("SWITCHYARD_WRITE_BURST", burst.to_string())
        .env("POD_NAME", "bench")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?;
    let pid = operator.id().unwrap_or(0);
    // The baseline is taken once the operator leads and its stores hold
    // the whole fleet (leading alone comes before the first list).
    let deadline = Instant::now() + Duration::from_secs(120);
    // The sample line, not the HELP text (which also reads "..._synced 1
    // once ...": matching that took the baseline before the first list).
    while !metrics(port)
        .await
        .lines()
        .any(|l| l.trim() == "switchyard_operator_stores_synced 1")
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the operator never led with its stores synced"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (idle_rss, cpu_before) = proc_usage(pid);
    let app = cluster.server.app.clone();
    let lists = || [app.lists_of("fleetnodes"), app.lists_of("migrationplans")];
    let lists_synced = lists();

    let plan: MigrationPlan = serde_json::from_value(json!({
        "apiVersion": "switchyard.dev/v1alpha1",
        "kind": "MigrationPlan",
        "metadata": {"name": "bench", "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": "storage"}},
            "stages": ["DualPreferLibP2p"],
            "waves": [wave_percent, 100],
            "maxUnavailable": format!("{wave_percent}%"),
            "rollback": {"triggers": {"highErrorRate": {"threshold": 0.05, "for": "1m"}}},
        }
    }))?;
    let plans: Api<MigrationPlan> = Api::namespaced(cluster.client.clone(), NS);
    let created = Instant::now();
    plans.create(&PostParams::default(), &plan).await?;
    let mut issued = 0;
    let mut last = created;
    let deadline = created + Duration::from_secs(600);
    while issued < wave_nodes {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(at)) => {
                issued += 1;
                last = at;
            }
            _ => anyhow::bail!("only {issued} of {wave_nodes} nodes were told to switch"),
        }
    }
    let wave_s = last.duration_since(created).as_secs_f64();
    // Anything more written would be a duplicate or the next wave (which
    // must wait for acknowledgements that never come): give it a moment
    // to show up in the metrics.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m = metrics(port).await;
    let node_writes = metric(&m, "switchyard_operator_fleetnode_writes_total");
    let reconciles = metric(&m, "switchyard_operator_reconciles_total");
    let reconcile_s = metric(
        &m,
        "switchyard_operator_reconcile_duration_seconds_sum{controller=\"migrationplan\"}",
    );
    let (peak_rss, cpu_after) = proc_usage(pid);
    let [nodes_after, plans_after] = lists();
    // FleetNode LISTs come in pages of 500: a relist after a watch fell
    // behind is many of them at once. The old analysis listed every plan
    // every 500 ms, and each measured plan's nodes every interval.
    let node_lists = nodes_after - lists_synced[0];
    let plan_lists = plans_after - lists_synced[1];
    let lists_during = node_lists + plan_lists;
    let cpu_s = cpu_after - cpu_before;
    // Nothing beyond the first wave: the next waits for acknowledgements
    // that never come, and no node is written twice.
    let told = rx.len() + issued;
    anyhow::ensure!(
        told == wave_nodes && node_writes == wave_nodes as f64,
        "beyond the first wave: {told} nodes told to switch and {node_writes} FleetNode writes for a wave of {wave_nodes}"
    );
    let _ = operator.kill().await;
    counter.abort();
    drop(reserved);
    cluster.stop().await;

    let target_s = 1.2 * wave_nodes as f64 / qps;
    println!(
        "operator benchmark: {nodes} FleetNodes, one plan, a {wave_percent}% wave, write QPS {qps}, burst {burst}"
    );
    println!(
        "  wave of {wave_nodes} nodes issued in   {wave_s:>8.2} s   (target ≤ {target_s:.2} s)"
    );
    println!(
        "  FleetNode writes              {node_writes:>8.0}     (one per wave node: {wave_nodes})"
    );
    println!("  reconciles                    {reconciles:>8.0}");
    println!("  reconcile time (sum)          {reconcile_s:>8.2} s");
    println!("  operator CPU during the wave  {cpu_s:>8.2} s");
    println!(
        "  operator RSS synced / peak    {idle_rss:>5.1} / {peak_rss:.1} MiB (target ≤ {rss_target_mib} MiB)"
    );
    println!(
        "  LIST requests after sync      {lists_during:>8}     (FleetNodes {node_lists}, MigrationPlans {plan_lists}; over {wave_s:.0} s of analysis every 5 s; target 0)"
    );
    let json = json!({
        "bench": "operator",
        "nodes": nodes,
        "wave_nodes": wave_nodes,
        "write_qps": qps,
        "write_burst": burst,
        "wave_issue_seconds": wave_s,
        "wave_issue_target_seconds": target_s,
        "fleetnode_writes": node_writes,
        "reconciles": reconciles,
        "reconcile_seconds_sum": reconcile_s,
        "operator_cpu_seconds": cpu_s,
        "operator_rss_synced_mib": idle_rss,
        "operator_rss_peak_mib": peak_rss,
        "rss_target_mib": rss_target_mib,
        "list_requests_after_sync": lists_during,
        "fleetnode_list_requests_after_sync": node_lists,
        "migrationplan_list_requests_after_sync": plan_lists,
        "meets_targets": wave_s <= target_s && peak_rss <= rss_target_mib && lists_during == 0,
    });
    println!("{json}");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench");
    std::fs::create_dir_all(dir)?;
    std::fs::write(format!("{dir}/operator.json"), json.to_string())?;
    Ok(())
}
