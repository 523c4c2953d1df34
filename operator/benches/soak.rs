//! An hour's soak: 20 node-agent processes, each on a host of its own
//! (network namespaces, `switchyard_testbed::netfleet`), the operator
//! binary and the in-memory API server, with the DHT workload running
//! throughout while plans move the fleet to IrohOnly and roll it back
//! again, over and over.
//!
//! Usage (as root; builds nothing itself, so build the agent first):
//!
//! ```text
//! cargo build --release -p switchyard-node-agent
//! cargo bench -p switchyard-operator --bench soak -- --minutes 60 [--hosts 20]
//! ```
//!
//! Every minute it records the RSS and open file descriptors of every
//! process (each agent, the operator, and this one, which holds the API
//! server and the workload) to `target/bench/soak.json`;
//! `scripts/plot-soak.py` draws them. It fails (exit 1) when any
//! process's RSS or descriptors grew more than 10% from minutes 10–12 to
//! the last three minutes, or when a workload operation failed. CI does
//! not run it.

#[path = "../tests/support/workload.rs"]
#[allow(dead_code)] // `workload` (a new key each round) serves the scenarios.
mod workload;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use switchyard_crds::{MigrationPlan, NetworkMode, PlanPhase};
use switchyard_testbed::netfleet::{self, NS, NetFleet};
use workload::{Load, connected, workload_keys};

/// The growth allowed from the baseline to the end.
const MAX_GROWTH: f64 = 0.10;
/// How long one step of a cycle may take before the soak gives up.
const STEP: Duration = Duration::from_secs(300);

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number, not {v:?}"))
        })
        .unwrap_or(default)
}

/// RSS in KiB and open descriptors of `pid`, if it is alive.
fn usage(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((rss, fds))
}

fn plan(name: &str) -> MigrationPlan {
    serde_json::from_value(json!({
        "apiVersion": "switchyard.dev/v1alpha1", "kind": "MigrationPlan",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": "storage"}},
            "stages": ["DualPreferLibP2p", "DualPreferIroh", "IrohOnly"],
            "waves": [50, 100],
            "waveInterval": "5s",
            "maxUnavailable": "50%",
            // Back in two batches, each stage a step (the default, 10%
            // a minute, takes half an hour from IrohOnly).
            "rollback": {"strategy": "Gradual", "gradual": {"waveSize": 50, "interval": "5s"}},
        },
    }))
    .expect("plan")
}

/// One cycle: a plan takes the fleet to IrohOnly; a Gradual rollback
/// brings it back to LibP2pOnly; the plan is deleted.
async fn cycle(f: &NetFleet, k: u64) -> Result<(), String> {
    let name = format!("soak-{k}");
    f.plans
        .create(&PostParams::default(), &plan(&name))
        .await
        .map_err(|e| format!("creating {name}: {e}"))?;
    netfleet::eventually("the plan succeeds", STEP, || async {
        let p = f.plans.get(&name).await.ok()?;
        (p.status?.phase == PlanPhase::Succeeded).then_some(())
    })
    .await
    .map_err(|e| e.to_string())?;
    let patch = json!({"spec": {"rollbackRequest": {"strategy": "Gradual", "reason": "soak"}}});
    f.plans
        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(|e| format!("rolling {name} back: {e}"))?;
    if let Err(e) = f
        .wait_nodes("every node is back on LibP2pOnly", STEP, |n| {
            n.applied_mode() == Some(NetworkMode::LibP2pOnly) && n.acknowledged()
        })
        .await
    {
        let status = f.plans.get(&name).await.ok().and_then(|p| p.status);
        let modes: Vec<String> = f
            .nodes
            .list(&Default::default())
            .await
            .map(|l| {
                l.items
                    .iter()
                    .map(|n| format!("{:?}/{}", n.applied_mode(), n.acknowledged()))
                    .collect()
            })
            .unwrap_or_default();
        return Err(format!("{e}: nodes {modes:?}; plan {status:?}"));
    }
    f.plans
        .delete(&name, &DeleteParams::default())
        .await
        .map_err(|e| format!("deleting {name}: {e}"))?;
    netfleet::eventually("the plan is gone", STEP, || async {
        f.plans.get_opt(&name).await.ok()?.is_none().then_some(())
    })
    .await
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// Growth of each series from minutes 10–12 to the last three.
fn growth(samples: &[Value], minutes: u64) -> Vec<(String, &'static str, f64, f64)> {
    let mut out = Vec::new();
    if minutes < 15 {
        return out;
    }
    let mean = |proc_: &str, what: &str, from: u64, to: u64| -> Option<f64> {
        let v: Vec<f64> = samples
            .iter()
            .filter(|s| (from..=to).contains(&s["minute"].as_u64().unwrap_or(0)))
            .filter_map(|s| s["processes"][proc_][what].as_f64())
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let names: Vec<String> = samples
        .last()
        .and_then(|s| s["processes"].as_object())
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    for p in names {
        for what in ["rss_kib", "fds"] {
            if let (Some(base), Some(end)) =
                (mean(&p, what, 10, 12), mean(&p, what, minutes - 2, minutes))
            {
                out.push((p.clone(), what, base, end));
            }
        }
    }
    out
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Some(why) = switchyard_testbed::netns::unavailable() {
        println!("skipped: {why}");
        return Ok(());
    }
    let minutes = arg("--minutes", 60);
    let hosts = arg("--hosts", 20) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(soak(minutes, hosts));
    let (samples, failures) = result?;
    let json = json!({"minutes": minutes, "hosts": hosts, "samples": samples});
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench");
    std::fs::create_dir_all(dir)?;
    std::fs::write(format!("{dir}/soak.json"), json.to_string())?;
    let mut bad = failures;
    println!("\n| process | measure | minutes 10–12 | last 3 minutes | growth |");
    println!("|---|---|---:|---:|---:|");
    for (p, what, base, end) in growth(&samples, minutes) {
        let g = if base > 0.0 { end / base - 1.0 } else { 0.0 };
        println!(
            "| {p} | {what} | {base:.0} | {end:.0} | {:+.1}% |",
            g * 100.0
        );
        if g > MAX_GROWTH {
            bad.push(format!("{p}'s {what} grew {:.1}%", g * 100.0));
        }
    }
    println!("\nwritten to {dir}/soak.json");
    if bad.is_empty() {
        println!("soak passed");
        Ok(())
    } else {
        for b in &bad {
            eprintln!("soak failed: {b}");
        }
        std::process::exit(1);
    }
}

async fn soak(
    minutes: u64,
    hosts: usize,
) -> Result<(Vec<Value>, Vec<String>), Box<dyn std::error::Error>> {
    let operator = std::path::PathBuf::from(env!("CARGO_BIN_EXE_switchyard-operator"));
    let agent = operator.with_file_name("switchyard-node-agent");
    let f = NetFleet::start(
        hosts,
        &agent,
        &operator,
        &["--heartbeat-interval", "1s", "--probe-rate", "2"],
    )
    .await?;
    f.wait_nodes("every agent runs", STEP, |n| {
        n.applied_mode() == Some(NetworkMode::LibP2pOnly) && n.acknowledged()
    })
    .await?;
    // The workload starts on a connected fleet (a put before the DHT
    // knows any peer stores only where it was made).
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let urls: Vec<String> = (0..hosts).map(|i| f.metrics_url(i)).collect();
    netfleet::eventually("the fleet is fully connected", STEP, || {
        connected(urls.clone(), http.clone())
    })
    .await?;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let load = Arc::new(Load::default());
    let apis: Vec<String> = (0..hosts).map(|i| f.workload_api(i)).collect();
    let running = tokio::spawn(workload_keys(apis, load.clone(), stop_rx, 1000));
    let started = Instant::now();
    let until = started + Duration::from_secs(minutes * 60);
    let mut samples = Vec::new();
    let mut failures = Vec::new();
    let mut next_sample = started;
    let mut cycles = 0u64;
    let me = std::process::id();
    let record = |samples: &mut Vec<Value>, cycles: u64| {
        let mut procs = BTreeMap::new();
        for (name, pid) in f.pids().into_iter().chain([("soak".to_owned(), me)]) {
            if let Some((rss, fds)) = usage(pid) {
                procs.insert(name, json!({"rss_kib": rss, "fds": fds}));
            }
        }
        let minute = started.elapsed().as_secs() / 60;
        let ok = load.ok.load(Ordering::Relaxed);
        let failed = load.failed.load(Ordering::Relaxed);
        println!(
            "minute {minute}: {cycles} cycles, workload {ok} ok, {failed} failed, operator {:?}",
            procs.get("operator")
        );
        samples.push(json!({
            "minute": minute, "cycles": cycles,
            "workload_ok": ok, "workload_failed": failed,
            "processes": procs,
        }));
    };
    while Instant::now() < until {
        if Instant::now() >= next_sample {
            record(&mut samples, cycles);
            next_sample += Duration::from_secs(60);
        }
        // A cycle takes about a minute; samples are taken between them
        // (a minute's sample may come a cycle late).
        if let Err(e) = cycle(&f, cycles).await {
            failures.push(format!("cycle {cycles}: {e}"));
            break;
        }
        cycles += 1;
    }
    record(&mut samples, cycles);
    let _ = stop.send(true);
    running.await?;
    let failed = load.failed.load(Ordering::Relaxed);
    println!(
        "\n{cycles} cycles in {:.1} minutes; workload {} ok, {failed} failed",
        started.elapsed().as_secs_f64() / 60.0,
        load.ok.load(Ordering::Relaxed)
    );
    if failed > 0 {
        failures.push(format!(
            "{failed} workload operations failed, the last: {}",
            load.last_failure.lock().expect("failure")
        ));
    }
    f.stop().await;
    Ok((samples, failures))
}
