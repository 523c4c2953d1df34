//! The in-memory API server under load: 10,000 FleetNodes and 500
//! concurrent watchers.
//!
//! Usage: `cargo bench -p switchyard-testbed --bench apiserver [-- --objects N --watchers W --updates U]`
//!
//! The server runs as its own process (the `switchyard-testbed apiserver`
//! binary) so its memory is measured alone. Prints a table, then one line
//! of JSON (also written to target/bench/apiserver.json). Targets: list of
//! 10,000 objects ≤ 200 ms; p99 time for one update to reach all 500
//! watchers ≤ 100 ms; server RSS ≤ 300 MiB.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::{Client, CustomResourceExt, ResourceExt};
use switchyard_crds::{FleetNode, FleetNodeSpec, NetworkMode};
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

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
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
    list_ms.sort_by(f64::total_cmp);
    // The same through kube's typed Api::list (adds parsing 10,000 FleetNodes).
    let mut typed_ms = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let l = nodes.list(&ListParams::default()).await?;
        typed_ms.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(l.items.len(), objects);
    }
    typed_ms.sort_by(f64::total_cmp);
    let mut page_ms = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        nodes.list(&ListParams::default().limit(500)).await?;
        page_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    page_ms.sort_by(f64::total_cmp);
    let mut selector_ms = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        nodes.list(&ListParams::default().labels("shard=3")).await?;
        selector_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    selector_ms.sort_by(f64::total_cmp);

    // Watchers, each on its own connection, report when each update lands.
    let rv = nodes
        .list(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let (tx, mut rx) = mpsc::channel::<(usize, Instant)>(watchers * 4);
    let mut tasks = Vec::new();
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(watchers);
    for _ in 0..watchers {
        // A fresh client per watcher: its own HTTP/1.1 connection.
        let kubeconfig = kube::config::Kubeconfig::read_from(&kubeconfig_path)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        let api: Api<FleetNode> = Api::namespaced(Client::try_from(config)?, "default");
        let (tx, ready, rv) = (tx.clone(), ready_tx.clone(), rv.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(s) = api.watch(&WatchParams::default().timeout(290), &rv).await else {
                return;
            };
            let _ = ready.send(()).await;
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
    for _ in 0..watchers {
        ready_rx.recv().await;
    }
    // Let every watch request reach the server's stream loop.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut sent: HashMap<usize, Instant> = HashMap::new();
    let mut arrivals: HashMap<usize, Vec<Instant>> = HashMap::new();
    let mut fanout_ms = Vec::new();
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
        } else {
            eprintln!("update {seq}: only {got}/{watchers} watchers saw it within 10 s");
            fanout_ms.push(f64::INFINITY);
        }
    }
    fanout_ms.sort_by(f64::total_cmp);
    let rss = rss_kib(pid, "VmRSS:");
    let hwm = rss_kib(pid, "VmHWM:");
    for t in tasks {
        t.abort();
    }
    let _ = server.kill().await;
    let _ = std::fs::remove_dir_all(&dir);

    let (list_med, list_p99) = (percentile(&list_ms, 0.5), percentile(&list_ms, 0.99));
    let fan_p50 = percentile(&fanout_ms, 0.5);
    let fan_p99 = percentile(&fanout_ms, 0.99);
    let rss_mib = rss as f64 / 1024.0;
    let hwm_mib = hwm as f64 / 1024.0;
    println!("in-memory API server: {objects} FleetNodes, {watchers} watchers, {updates} updates");
    println!("create {objects} objects (32 in flight)   {create_s:>8.2} s");
    println!(
        "list all {objects} (server answer)     median {list_med:>7.1} ms   p99 {list_p99:>7.1} ms   (target 200 ms)"
    );
    println!(
        "list all, typed via kube Api::list  median {:>7.1} ms",
        percentile(&typed_ms, 0.5)
    );
    println!(
        "list page of 500                      median {:>7.1} ms",
        percentile(&page_ms, 0.5)
    );
    println!(
        "list by label (1/16 of objects)       median {:>7.1} ms",
        percentile(&selector_ms, 0.5)
    );
    println!(
        "update reaches all {watchers} watchers      p50 {fan_p50:>7.1} ms   p99 {fan_p99:>7.1} ms   (target 100 ms)"
    );
    println!(
        "server RSS                            {rss_mib:>7.1} MiB (peak {hwm_mib:.1} MiB, empty {:.1} MiB; target 300 MiB)",
        rss_empty as f64 / 1024.0
    );
    let meets = list_med <= 200.0 && fan_p99 <= 100.0 && hwm_mib <= 300.0;
    println!(
        "{}",
        if meets {
            "meets every target"
        } else {
            "MISSES a target"
        }
    );
    let line = format!(
        r#"{{"benchmark":"apiserver","objects":{objects},"watchers":{watchers},"updates":{updates},"create_s":{create_s:.3},"list_median_ms":{list_med:.2},"list_p99_ms":{list_p99:.2},"list_typed_median_ms":{:.2},"list_page500_median_ms":{:.2},"list_selector_median_ms":{:.2},"fanout_p50_ms":{fan_p50:.2},"fanout_p99_ms":{fan_p99:.2},"rss_mib":{rss_mib:.1},"peak_rss_mib":{hwm_mib:.1},"meets_targets":{meets}}}"#,
        percentile(&typed_ms, 0.5),
        percentile(&page_ms, 0.5),
        percentile(&selector_ms, 0.5)
    );
    println!("{line}");
    let out_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    if std::fs::create_dir_all(&out_dir).is_ok() {
        let _ = std::fs::write(out_dir.join("apiserver.json"), format!("{line}\n"));
    }
    Ok(())
}
