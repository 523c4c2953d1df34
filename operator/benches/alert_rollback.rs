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

/// Seconds with millisecond precision; JSON null for a milestone never seen.
fn secs(d: Option<Duration>) -> serde_json::Value {
    d.map_or(serde_json::Value::Null, |d| {
        ((d.as_secs_f64() * 1000.0).round() / 1000.0).into()
    })
}

/// "1.23 s", or "not observed".
fn shown(d: Option<Duration>) -> String {
    d.map_or("not observed".into(), |d| {
        format!("{:.2} s", d.as_secs_f64())
    })
}

/// The median of the milestones, or None when any run did not see it: a
/// milestone missed in one run has no honest median.
fn median(v: &[Option<Duration>]) -> Option<Duration> {
    let mut seen: Vec<Duration> = v.iter().copied().collect::<Option<_>>()?;
    seen.sort();
    seen.get(seen.len() / 2).copied()
}

/// The worst of the milestones, or None when any run did not see it.
fn worst(v: &[Option<Duration>]) -> Option<Duration> {
    v.iter()
        .copied()
        .collect::<Option<Vec<_>>>()?
        .into_iter()
        .max()
}

/// Median and worst of first revert and all reverted, as a table row and JSON.
fn summarise(label: &str, rows: &[Measured]) -> serde_json::Value {
    let first: Vec<Option<Duration>> = rows.iter().map(|m| m.to_first_revert).collect();
    let all: Vec<Option<Duration>> = rows.iter().map(|m| Some(m.to_all_reverted)).collect();
    println!(
        "{label:<34} {:>12} {:>12} {:>12} {:>12}",
        shown(median(&first)),
        shown(worst(&first)),
        shown(median(&all)),
        shown(worst(&all)),
    );
    let list =
        |f: fn(&Measured) -> Option<Duration>| rows.iter().map(|m| secs(f(m))).collect::<Vec<_>>();
    serde_json::json!({
        "path": label,
        "to_first_revert_s": list(|m| m.to_first_revert),
        "to_all_reverted_s": list(|m| Some(m.to_all_reverted)),
        "to_firing_s": list(|m| m.to_firing),
        "to_delivered_s": list(|m| m.to_delivered),
        "to_webhook_s": list(|m| m.to_webhook),
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
                    "alertmanager run {run}: firing {}, delivered {}, webhook {}, first revert {}, all {} reverted {} ({})",
                    shown(m.to_firing),
                    shown(m.to_delivered),
                    shown(m.to_webhook),
                    shown(m.to_first_revert),
                    m.agents,
                    shown(Some(m.to_all_reverted)),
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
                "built-in analysis every {i} s, run {run}: first revert {}, all reverted {} ({})",
                shown(m.to_first_revert),
                shown(Some(m.to_all_reverted)),
                m.trigger
            );
            rows.push(m);
        }
        interval_rows.push((i, rows));
    }
    println!();
    println!(
        "{:<34} {:>12} {:>12} {:>12} {:>12}",
        "fault to (seconds)", "1st med", "1st worst", "all med", "all worst"
    );
    let mut paths = Vec::new();
    if !alert_rows.is_empty() {
        paths.push(summarise("Prometheus + Alertmanager (1 s)", &alert_rows));
        let of = |f: fn(&Measured) -> Option<Duration>| {
            shown(median(&alert_rows.iter().map(f).collect::<Vec<_>>()))
        };
        println!(
            "  of which (medians): alert firing {}, delivered by Alertmanager {}, webhook accepted {}",
            of(|m| m.to_firing),
            of(|m| m.to_delivered),
            of(|m| m.to_webhook)
        );
    }
    for (i, rows) in &interval_rows {
        paths.push(summarise(
            &format!("built-in analysis, interval {i} s"),
            rows,
        ));
    }
    let worst_alert = (!alert_rows.is_empty())
        .then(|| {
            worst(
                &alert_rows
                    .iter()
                    .map(|m| m.to_first_revert)
                    .collect::<Vec<_>>(),
            )
        })
        .flatten();
    let json = serde_json::json!({
        "bench": "alert_rollback",
        "agents": agents,
        "runs": runs,
        "paths": paths,
        "target_first_revert_s": 10.0,
        // null: no Alertmanager run, or a run that never saw a revert.
        "met": worst_alert.map(|w| w <= Duration::from_secs(10)),
    });
    println!("{json}");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench");
    let _ = std::fs::create_dir_all(dir);
    let _ = std::fs::write(format!("{dir}/alert_rollback.json"), json.to_string());
}
