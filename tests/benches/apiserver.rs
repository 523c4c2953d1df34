//! The in-memory API server under load: 10,000 FleetNodes and 500
//! concurrent watchers.
//!
//! Usage: `cargo bench -p switchyard-testbed --bench apiserver [-- --objects N --watchers W --updates U]`
//!
//! The server runs as its own process (the `switchyard-testbed apiserver`
//! binary) so its memory is measured alone. Prints a table, then one line
//! of JSON (also written to target/bench/apiserver.json). Targets: list of
//! 10,000 objects ≤ 200 ms (median); every update reaches all 500 watchers
//! within 100 ms (the worst of the updates: 50 updates are too few for a
//! p99); server RSS ≤ 300 MiB. Each single delivery (watchers × updates
//! samples, 25,000 by default) is also reported, with a p99.
//!
//! A watcher whose watch cannot be opened fails the bench.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::{Client, CustomResourceExt, ResourceExt};
use switchyard_crds::{FleetNode, FleetNodeSpec, NetworkMode};
use switchyard_testbed::stats::Summary;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

fn flag(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Median and tail of `samples` as "median X ms   p99|max of N Y ms".
fn line(samples: &[f64]) -> String {
    match Summary::of(samples) {
        Some(s) => format!(
            "median {:>7.1} ms   {} {:>7.1} ms",
            s.median,
            s.tail_label(),
            s.tail()
        ),
        None => "no samples".into(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let objects = flag(&args, "--objects", 10_000);
    let watchers = flag(&args, "--watchers", 500);
    let updates = flag(&args, "--updates", 50);

    let dir =
        std::env::temp_dir().join(format!("switchyard-apiserver-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let kubeconfig_path = dir.join("kubeconfig");
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard-testbed"))
        .args(["apiserver", "--port", "0", "--kubeconfig"])
        .arg(&kubeconfig_path)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = server.id().unwrap_or(0);
    let mut out = BufReader::new(server.stdout.take().expect("stdout")).lines();
    tokio::time::timeout(Duration::from_secs(20), out.next_line()).await??;
    let kubeconfig = kube::config::Kubeconfig::read_from(&kubeconfig_path)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    let client = Client::try_from(config)?;

    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &FleetNode::crd())
        .await?;
    let nodes: Api<FleetNode> = Api::namespaced(client.clone(), "default");
    let rss_empty = rss_kib(pid, "VmRSS:");

    let t = Instant::now();
    stream::iter(0..objects)
        .map(|i| {
            let nodes = nodes.clone();
            async move {
                let mut n = FleetNode::new(
                    &format!("node-{i:05}"),
                    FleetNodeSpec {
                        mode: Some(NetworkMode::LibP2pOnly),
                        ..FleetNodeSpec::default()
                    },
                );
                n.metadata.labels = Some(
                    [
                        ("app".to_owned(), "storage".to_owned()),
                        ("shard".to_owned(), (i % 16).to_string()),
                    ]
                    .into(),
                );
                nodes.create(&PostParams::default(), &n).await.map(|_| ())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
    let create_s = t.elapsed().as_secs_f64();

    // The server's answer, read whole but not parsed into Rust types.
    let mut list_ms = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let req = http::Request::get("/apis/switchyard.dev/v1alpha1/namespaces/default/fleetnodes")
            .body(Vec::new())?;
        let body = client.request_text(req).await?;
        list_ms.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(body.len() > objects * 100);
    }
    // The same through kube's typed Api::list (adds parsing 10,000 FleetNodes).
    let mut typed_ms = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let l = nodes.list(&ListParams::default()).await?;
        typed_ms.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(l.items.len(), objects);
    }
    let mut page_ms = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        nodes.list(&ListParams::default().limit(500)).await?;
        page_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut selector_ms = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        nodes.list(&ListParams::default().labels("shard=3")).await?;
        selector_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }

    // Watchers, each on its own connection, report when each update lands.
    let rv = nodes
        .list(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let (tx, mut rx) = mpsc::channel::<(usize, Instant)>(watchers * 4);
    let mut tasks = Vec::new();
    // Each watcher says whether its watch opened; one that cannot fails
    // the bench instead of leaving it waiting.
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<(), String>>(watchers);
    for _ in 0..watchers {
        // A fresh client per watcher: its own HTTP/1.1 connection.
        let kubeconfig = kube::config::Kubeconfig::read_from(&kubeconfig_path)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        let api: Api<FleetNode> = Api::namespaced(Client::try_from(config)?, "default");
        let (tx, ready, rv) = (tx.clone(), ready_tx.clone(), rv.clone());
        tasks.push(tokio::spawn(async move {
            let s = match api.watch(&WatchParams::default().timeout(290), &rv).await {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready.send(Err(e.to_string())).await;
                    return;
                }
            };
            let _ = ready.send(Ok(())).await;
            let mut s = s.boxed();
            while let Ok(Some(e)) = s.try_next().await {
                if let WatchEvent::Modified(n) = e {
                    let seq = n
                        .labels()
                        .get("seq")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(usize::MAX);
                    if tx.send((seq, Instant::now())).await.is_err() {
                        return;
                    }
                }
            }
        }));
    }
    drop(tx);
    drop(ready_tx);
    for i in 0..watchers {
        match tokio::time::timeout(Duration::from_secs(60), ready_rx.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => anyhow::bail!("a watcher could not open its watch: {e}"),
            Ok(None) => anyhow::bail!("only {i} of {watchers} watchers opened their watch"),
            Err(_) => anyhow::bail!("only {i} of {watchers} watchers opened a watch within 60 s"),
        }
    }
    // Let every watch request reach the server's stream loop.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut sent: HashMap<usize, Instant> = HashMap::new();
    let mut arrivals: HashMap<usize, Vec<Instant>> = HashMap::new();
    let mut fanout_ms = Vec::new();
    let mut delivery_ms = Vec::new();
    for seq in 0..updates {
        let name = format!("node-{:05}", seq % objects.max(1));
        sent.insert(seq, Instant::now());
        nodes
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(
                    serde_json::json!({"metadata": {"labels": {"seq": seq.to_string()}}}),
                ),
            )
            .await?;
        // Wait until every watcher has it, then the next update.
        let deadline = Instant::now() + Duration::from_secs(10);
        while arrivals.get(&seq).map_or(0, Vec::len) < watchers && Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                Ok(Some((s, at))) => arrivals.entry(s).or_default().push(at),
                _ => break,
            }
        }
        let got = arrivals.get(&seq).map_or(0, Vec::len);
        if got == watchers {
            let last = arrivals[&seq]
                .iter()
                .max()
                .copied()
                .unwrap_or_else(Instant::now);
            fanout_ms.push(last.duration_since(sent[&seq]).as_secs_f64() * 1e3);
            delivery_ms.extend(
                arrivals[&seq]
                    .iter()
                    .map(|at| at.duration_since(sent[&seq]).as_secs_f64() * 1e3),
            );
        } else {
            eprintln!("update {seq}: only {got}/{watchers} watchers saw it within 10 s");
            fanout_ms.push(f64::INFINITY);
        }
    }
    let rss = rss_kib(pid, "VmRSS:");
    let hwm = rss_kib(pid, "VmHWM:");
    for t in tasks {
        t.abort();
    }
    let _ = server.kill().await;
    let _ = std::fs::remove_dir_all(&dir);

    let list = Summary::of(&list_ms).expect("list samples");
    let fanout = Summary::of(&fanout_ms).expect("update samples");
    let delivery = Summary::of(&delivery_ms);
    let rss_mib = rss as f64 / 1024.0;
    let hwm_mib = hwm as f64 / 1024.0;
    println!("in-memory API server: {objects} FleetNodes, {watchers} watchers, {updates} updates");
    println!("create {objects} objects (32 in flight)   {create_s:>8.2} s");
    println!(
        "list all {objects} (server answer)     {}   (target: median 200 ms)",
        line(&list_ms)
    );
    println!("list all, typed via kube Api::list  {}", line(&typed_ms));
    println!("list page of 500                      {}", line(&page_ms));
    println!(
        "list by label (1/16 of objects)       {}",
        line(&selector_ms)
    );
    println!(
        "update reaches all {watchers} watchers      {}   (target: {} 100 ms)",
        line(&fanout_ms),
        fanout.tail_label()
    );
    println!(
        "one delivery to one watcher           {}",
        line(&delivery_ms)
    );
    println!(
        "server RSS                            {rss_mib:>7.1} MiB (peak {hwm_mib:.1} MiB, empty {:.1} MiB; target 300 MiB)",
        rss_empty as f64 / 1024.0
    );
    let meets = list.median <= 200.0 && fanout.tail() <= 100.0 && hwm_mib <= 300.0;
    println!(
        "{}",
        if meets {
            "meets every target"
        } else {
            "MISSES a target"
        }
    );
    let summary = |v: &[f64]| Summary::of(v).map(|s| s.json("ms"));
    let line = serde_json::json!({
        "benchmark": "apiserver",
        "objects": objects,
        "watchers": watchers,
        "updates": updates,
        "create_s": create_s,
        "list": list.json("ms"),
        "list_typed": summary(&typed_ms),
        "list_page500": summary(&page_ms),
        "list_selector": summary(&selector_ms),
        "update_to_all_watchers": fanout.json("ms"),
        "single_delivery": delivery.map(|d| d.json("ms")),
        "rss_mib": rss_mib,
        "peak_rss_mib": hwm_mib,
        "meets_targets": meets,
    })
    .to_string();
    println!("{line}");
    let out_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    if std::fs::create_dir_all(&out_dir).is_ok() {
        let _ = std::fs::write(out_dir.join("apiserver.json"), format!("{line}\n"));
    }
    Ok(())
}
