//! Fault-to-rollback times with real parts (see
//! `tests/support/real_fleet.rs`), 20 node-agents each:
//!
//! - through Prometheus and Alertmanager: the shipped libp2p error-rate
//!   rule (windows shrunk to seconds, 1 s scrape and evaluation
//!   intervals), Alertmanager's webhook, the operator's rollback;
//! - through the operator's built-in analysis at several analysis
//!   intervals: how detection latency follows the interval.
//!
//! Usage: `cargo bench -p switchyard-operator --bench alert_rollback [-- --runs N --agents N --intervals 1,2,5]`
//!
//! Prints a table, then one line of JSON (also written to
//! target/bench/alert_rollback.json). Target: fault to first revert ≤ 10 s
//! through Alertmanager.

#[path = "../tests/support/real_fleet.rs"]
mod real_fleet;

use std::time::Duration;

use real_fleet::Measured;

fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Median and worst of first revert and all reverted, as a table row and JSON.
fn summarise(label: &str, rows: &[Measured]) -> serde_json::Value {
    let first: Vec<Duration> = rows.iter().map(|m| m.to_first_revert).collect();
    let all: Vec<Duration> = rows.iter().map(|m| m.to_all_reverted).collect();
    let worst = |v: &[Duration]| v.iter().max().copied().unwrap_or_default();
    println!(
        "{label:<34} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
        median(first.clone()).as_secs_f64(),
        worst(&first).as_secs_f64(),
        median(all.clone()).as_secs_f64(),
        worst(&all).as_secs_f64(),
    );
    serde_json::json!({
        "path": label,
        "to_first_revert_s": first.iter().map(|d| secs(*d)).collect::<Vec<_>>(),
        "to_all_reverted_s": all.iter().map(|d| secs(*d)).collect::<Vec<_>>(),
        "to_firing_s": rows.iter().map(|m| secs(m.to_firing)).collect::<Vec<_>>(),
        "to_webhook_s": rows.iter().map(|m| secs(m.to_webhook)).collect::<Vec<_>>(),
        "triggers": rows.iter().map(|m| m.trigger.clone()).collect::<Vec<_>>(),
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = arg(&args, "--runs")
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let agents: usize = arg(&args, "--agents")
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
        .max(2);
    let intervals: Vec<f64> = arg(&args, "--intervals")
        .unwrap_or("1,2,5")
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut alert_rows = Vec::new();
    for run in 1..=runs {
        match rt.block_on(real_fleet::alert_rollback(agents)) {
            Ok(m) => {
                println!(
                    "alertmanager run {run}: firing {:.2} s, webhook {:.2} s, first revert {:.2} s, all {} reverted {:.2} s ({})",
                    m.to_firing.as_secs_f64(),
                    m.to_webhook.as_secs_f64(),
                    m.to_first_revert.as_secs_f64(),
                    m.agents,
                    m.to_all_reverted.as_secs_f64(),
                    m.trigger
                );
                println!("  evidence: {}", m.reason);
                alert_rows.push(m);
            }
            Err(why) => {
                println!("alertmanager path skipped: {why}");
                break;
            }
        }
    }
    let mut interval_rows = Vec::new();
    for &i in &intervals {
        let interval = Duration::from_secs_f64(i);
        let mut rows = Vec::new();
        for run in 1..=runs {
            let m = rt.block_on(real_fleet::analysis_rollback(agents, interval));
            println!(
                "built-in analysis every {i} s, run {run}: first revert {:.2} s, all reverted {:.2} s ({})",
                m.to_first_revert.as_secs_f64(),
                m.to_all_reverted.as_secs_f64(),
                m.trigger
            );
            rows.push(m);
        }
        interval_rows.push((i, rows));
    }
    println!();
    println!(
        "{:<34} {:>9} {:>9} {:>9} {:>9}",
        "fault to (seconds)", "1st med", "1st worst", "all med", "all worst"
    );
    let mut paths = Vec::new();
    if !alert_rows.is_empty() {
        paths.push(summarise("Prometheus + Alertmanager (1 s)", &alert_rows));
        let firing: Vec<Duration> = alert_rows.iter().map(|m| m.to_firing).collect();
        let webhook: Vec<Duration> = alert_rows.iter().map(|m| m.to_webhook).collect();
        println!(
            "  of which: alert firing at {:.2} s, webhook accepted at {:.2} s (medians)",
            median(firing).as_secs_f64(),
            median(webhook).as_secs_f64()
        );
    }
    for (i, rows) in &interval_rows {
        paths.push(summarise(
            &format!("built-in analysis, interval {i} s"),
            rows,
        ));
    }
    let worst_alert = alert_rows.iter().map(|m| m.to_first_revert).max();
    let json = serde_json::json!({
        "bench": "alert_rollback",
        "agents": agents,
        "runs": runs,
        "paths": paths,
        "target_first_revert_s": 10.0,
        "met": worst_alert.map(|w| w <= Duration::from_secs(10)),
    });
    println!("{json}");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench");
    let _ = std::fs::create_dir_all(dir);
    let _ = std::fs::write(format!("{dir}/alert_rollback.json"), json.to_string());
}
