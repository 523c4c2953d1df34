//! Fault-to-rollback time through real Prometheus and Alertmanager: 20
//! node-agents, a fault injected into all of them, the shipped libp2p
//! error-rate rule (windows shrunk to seconds, 1 s scrape and evaluation
//! intervals), Alertmanager's webhook, the operator's rollback. See
//! `tests/support/alert_path.rs`.
//!
//! Usage: `cargo bench -p switchyard-operator --bench alert_rollback [-- --runs N --agents N]`
//!
//! Prints a table, then one line of JSON (also written to
//! target/bench/alert_rollback.json). Target: fault to first revert ≤ 10 s.

#[path = "../tests/support/alert_path.rs"]
mod alert_path;

use std::time::Duration;

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One of a run's times.
type Pick = fn(&alert_path::Measured) -> Duration;

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs = arg(&args, "--runs", 3).max(1);
    let agents = arg(&args, "--agents", 20).max(2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut rows = Vec::new();
    for run in 1..=runs {
        match rt.block_on(alert_path::run(agents)) {
            Ok(m) => {
                println!(
                    "run {run}: firing {:.2} s, webhook {:.2} s, first revert {:.2} s, all {} reverted {:.2} s ({})",
                    m.to_firing.as_secs_f64(),
                    m.to_webhook.as_secs_f64(),
                    m.to_first_revert.as_secs_f64(),
                    m.agents,
                    m.to_all_reverted.as_secs_f64(),
                    m.trigger
                );
                println!("  evidence: {}", m.reason);
                rows.push(m);
            }
            Err(why) => {
                println!("skipped: {why}");
                return;
            }
        }
    }
    let worst = |f: Pick| rows.iter().map(f).max().unwrap_or_default();
    let median = |f: Pick| {
        let mut v: Vec<Duration> = rows.iter().map(f).collect();
        v.sort();
        v[v.len() / 2]
    };
    println!(
        "{:<28} {:>10} {:>10}",
        "from the fault to", "median s", "worst s"
    );
    let lines: [(&str, Pick); 4] = [
        ("alert firing (Prometheus)", |m| m.to_firing),
        ("webhook accepted", |m| m.to_webhook),
        ("first node told to revert", |m| m.to_first_revert),
        ("every node reverted", |m| m.to_all_reverted),
    ];
    for (what, f) in lines {
        println!(
            "{what:<28} {:>10.2} {:>10.2}",
            median(f).as_secs_f64(),
            worst(f).as_secs_f64()
        );
    }
    let json = serde_json::json!({
        "bench": "alert_rollback",
        "agents": agents,
        "runs": runs,
        "to_firing_s": rows.iter().map(|m| secs(m.to_firing)).collect::<Vec<_>>(),
        "to_webhook_s": rows.iter().map(|m| secs(m.to_webhook)).collect::<Vec<_>>(),
        "to_first_revert_s": rows.iter().map(|m| secs(m.to_first_revert)).collect::<Vec<_>>(),
        "to_all_reverted_s": rows.iter().map(|m| secs(m.to_all_reverted)).collect::<Vec<_>>(),
        "target_first_revert_s": 10.0,
        "met": worst(|m| m.to_first_revert) <= Duration::from_secs(10),
    });
    println!("{json}");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench");
    let _ = std::fs::create_dir_all(dir);
    let _ = std::fs::write(format!("{dir}/alert_rollback.json"), json.to_string());
}
