//! What `kubectl switchyard` prints, as pure functions of the objects and
//! `now`: the table forms are golden-tested.

use std::fmt::Write as _;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use switchyard_crds::{
    ANNOTATION_STEP, FleetNode, LABEL_PLAN, MigrationPlan, MigrationPlanStatus, NetworkMode,
};

/// A duration as kubectl prints ages: `45s`, `3m12s`, `2h5m`, `3d4h`.
pub fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

fn since(t: Option<&Time>, now: Timestamp) -> String {
    t.map_or_else(
        || "-".to_owned(),
        |t| age(now.duration_since(t.0).as_secs()),
    )
}

/// `[#####---------------]  25%`, `width` marks wide.
pub fn bar(percent: u8, width: usize) -> String {
    let p = usize::from(percent.min(100));
    let done = p * width / 100;
    format!("[{}{}] {p:>3}%", "#".repeat(done), "-".repeat(width - done))
}

/// The ETA as `in 4m10s`, `-` when unknown, `done` once finished.
fn eta(s: &MigrationPlanStatus, now: Timestamp) -> String {
    if s.phase.is_terminal() {
        return "done".into();
    }
    match &s.estimated_completion {
        Some(t) => format!("in {}", age(t.0.duration_since(now).as_secs())),
        None => "-".into(),
    }
}

/// Where the plan is: `stage 2/3 DualPreferIroh, wave 1/4`, or its canary.
fn position(p: &MigrationPlan, s: &MigrationPlanStatus) -> String {
    let stages = p.spec.stages.len();
    let mode = s
        .stage_mode
        .or_else(|| p.spec.stages.get(s.stage as usize).copied())
        .map_or_else(|| "-".to_owned(), |m| m.to_string());
    let stage = format!("stage {}/{stages} {mode}", s.stage + 1);
    match s.wave {
        Some(w) => format!("{stage}, wave {}/{}", w + 1, p.spec.waves.len()),
        None if p.spec.canary.is_some() && !s.phase.is_terminal() => format!("{stage}, canary"),
        None => stage,
    }
}

/// Text tables with columns padded to their widest cell, kubectl style.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let cells: Vec<&str> = cells.collect();
        let last = cells.len().saturating_sub(1);
        for (i, c) in cells.iter().enumerate() {
            if i == last {
                out.push_str(c);
            } else {
                let _ = write!(out, "{c:<w$}   ", w = widths[i]);
            }
        }
        out.push('\n');
    };
    line(&mut out, &mut header.iter().copied());
    for r in rows {
        line(&mut out, &mut r.iter().map(String::as_str));
    }
    out
}

/// `kubectl switchyard status` over several plans: one line each.
pub fn plans_table(plans: &[MigrationPlan], all_namespaces: bool, now: Timestamp) -> String {
    let mut header = vec![
        "NAME", "PHASE", "POSITION", "PROGRESS", "NODES", "BLOCKED", "ETA", "AGE",
    ];
    if all_namespaces {
        header.insert(0, "NAMESPACE");
    }
    let rows: Vec<Vec<String>> = plans
        .iter()
        .map(|p| {
            let s = p.status.clone().unwrap_or_default();
            let mut row = vec![
                p.name_any(),
                format!("{:?}", s.phase),
                position(p, &s),
                format!("{}%", s.progress_percent),
                format!("{}/{}", s.nodes.acknowledged, s.nodes.total),
                s.nodes.blocked.to_string(),
                eta(&s, now),
                since(p.metadata.creation_timestamp.as_ref(), now),
            ];
            if all_namespaces {
                row.insert(0, p.namespace().unwrap_or_default());
            }
            row
        })
        .collect();
    table(&header, &rows)
}

/// `kubectl switchyard status PLAN`: everything about one plan.
pub fn plan_detail(p: &MigrationPlan, now: Timestamp) -> String {
    let s = p.status.clone().unwrap_or_default();
    let mut out = String::new();
    let field = |out: &mut String, k: &str, v: &str| {
        let _ = writeln!(out, "{:<11}{v}", format!("{k}:"));
    };
    field(
        &mut out,
        "Plan",
        &format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()),
    );
    field(
        &mut out,
        "Phase",
        &format!("{:?} ({})", s.phase, position(p, &s)),
    );
    field(
        &mut out,
        "Progress",
        &format!("{}  ETA {}", bar(s.progress_percent, 30), eta(&s, now)),
    );
    let n = &s.nodes;
    field(
        &mut out,
        "Nodes",
        &format!(
            "{} selected: {} acknowledged, {} switching, {} blocked, {} excluded (pod gone)",
            n.total, n.acknowledged, n.switching, n.blocked, n.excluded
        ),
    );
    let m = &n.by_mode;
    field(
        &mut out,
        "By mode",
        &format!(
            "LibP2pOnly {}, DualPreferLibP2p {}, DualLoadBalance {}, DualPreferIroh {}, IrohOnly {}",
            m.libp2p_only,
            m.dual_prefer_libp2p,
            m.dual_load_balance,
            m.dual_prefer_iroh,
            m.iroh_only
        ),
    );
    if p.spec.paused {
        let why = p.spec.pause_reason.as_deref().unwrap_or("no reason given");
        field(&mut out, "Paused", why);
    }
    if let Some(msg) = &s.message {
        field(&mut out, "Message", msg);
    }
    if !s.blocked_nodes.is_empty() {
        field(&mut out, "Blocked", "");
        for b in &s.blocked_nodes {
            let _ = writeln!(out, "  {}: {}", b.name, b.reason);
        }
    }
    if !s.excluded_nodes.is_empty() {
        field(&mut out, "Excluded", &s.excluded_nodes.join(", "));
    }
    analysis(&mut out, &s, now);
    rollbacks(&mut out, &s, now);
    out
}

fn analysis(out: &mut String, s: &MigrationPlanStatus, now: Timestamp) {
    let Some(a) = &s.last_analysis else {
        let _ = writeln!(out, "{:<11}none yet", "Analysis:");
        return;
    };
    let _ = writeln!(
        out,
        "{:<11}{:?}, {} ago",
        "Analysis:",
        a.verdict,
        since(a.time.as_ref(), now)
    );
    let rows: Vec<Vec<String>> = a
        .metrics
        .iter()
        .map(|m| {
            vec![
                format!("  {}", m.name),
                m.value.map_or_else(|| "-".into(), |v| format!("{v:.4}")),
                m.threshold.clone(),
                format!("{:?}", m.verdict),
                m.reason.clone().unwrap_or_else(|| m.cohort.clone()),
            ]
        })
        .collect();
    if !rows.is_empty() {
        out.push_str(&table(
            &[
                "  CHECK",
                "VALUE",
                "THRESHOLD",
                "VERDICT",
                "COHORT OR REASON",
            ],
            &rows,
        ));
    }
}

fn rollbacks(out: &mut String, s: &MigrationPlanStatus, now: Timestamp) {
    let all: Vec<_> = s.rollback_history.iter().chain(s.rollback.iter()).collect();
    if all.is_empty() {
        let _ = writeln!(out, "{:<11}none", "Rollbacks:");
        return;
    }
    let _ = writeln!(out, "{:<11}{}", "Rollbacks:", all.len());
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|r| {
            vec![
                format!("  {}", r.trigger),
                format!("{:?}", r.scope),
                r.nodes.to_string(),
                since(r.started_at.as_ref(), now),
                r.finished_at
                    .as_ref()
                    .map_or_else(|| "in progress".into(), |_| "finished".into()),
                r.reason.clone(),
            ]
        })
        .collect();
    out.push_str(&table(
        &["  TRIGGER", "SCOPE", "NODES", "AGE", "STATE", "REASON"],
        &rows,
    ));
}

/// `kubectl switchyard nodes`: one line per FleetNode.
pub fn nodes_table(nodes: &[FleetNode], now: Timestamp) -> String {
    let mode = |m: Option<NetworkMode>| m.map_or_else(|| "-".to_owned(), |m| m.to_string());
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let ready = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                .map_or_else(|| "Unknown".to_owned(), |c| c.status.clone());
            vec![
                n.name_any(),
                mode(n.desired_mode()),
                mode(n.applied_mode()),
                if n.acknowledged() { "yes" } else { "no" }.to_owned(),
                n.labels()
                    .get(LABEL_PLAN)
                    .cloned()
                    .unwrap_or_else(|| "-".into()),
                n.annotations()
                    .get(ANNOTATION_STEP)
                    .cloned()
                    .unwrap_or_else(|| "-".into()),
                ready,
                since(
                    n.status
                        .as_ref()
                        .and_then(|s| s.last_transition_time.as_ref()),
                    now,
                ),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "DESIRED",
            "APPLIED",
            "ACKNOWLEDGED",
            "PLAN",
            "STEP",
            "READY",
            "SINCE TRANSITION",
        ],
        &rows,
    )
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

fn percent(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{:.1}%", v * 100.0))
}

fn routing(v: Option<f64>) -> &'static str {
    match v {
        Some(v) if v >= 2.0 => "Healthy",
        Some(v) if v >= 1.0 => "Degraded",
        Some(_) => "Failed",
        None => "-",
    }
}

fn transport_cell(t: &crate::dashboard::TransportHealth) -> String {
    format!(
        "{} {}",
        t.state.as_deref().unwrap_or("Unknown"),
        opt(t.score, 2)
    )
}

/// Agents by state and their scores, per transport (only `transport`'s
/// when given).
fn health_summary(
    h: &crate::dashboard::HealthView,
    transport: Option<super::TransportArg>,
) -> String {
    use super::TransportArg;
    let summaries = [
        (TransportArg::Libp2p, "libp2p", &h.libp2p),
        (TransportArg::Iroh, "iroh", &h.iroh),
    ];
    let rows: Vec<Vec<String>> = summaries
        .iter()
        .filter(|(t, _, _)| transport.is_none_or(|want| want == *t))
        .map(|(_, name, s)| {
            vec![
                (*name).to_owned(),
                s.healthy.to_string(),
                s.degraded.to_string(),
                s.unhealthy.to_string(),
                s.unknown.to_string(),
                opt(s.mean_score, 2),
                opt(s.lowest_score, 2),
            ]
        })
        .collect();
    table(
        &[
            "TRANSPORT",
            "HEALTHY",
            "DEGRADED",
            "UNHEALTHY",
            "UNKNOWN",
            "MEAN",
            "LOWEST",
        ],
        &rows,
    )
}

/// `kubectl switchyard health`: per transport, agents by state and their
/// scores; then every reporting agent, worst first (or, with `transport`,
/// worst on that transport first, showing only it).
pub fn health_table(
    h: &crate::dashboard::HealthView,
    transport: Option<super::TransportArg>,
) -> String {
    use super::TransportArg;
    let mut out = String::new();
    if h.reported == 0 {
        out.push_str(
            "No agent has reported yet: the operator's analysis scrapes the agents of running plans (on the leader).\n",
        );
        return out;
    }
    let _ = writeln!(
        out,
        "{} agents reporting; highest partition risk {}\n",
        h.reported,
        percent(h.highest_partition_risk)
    );
    out.push_str(&health_summary(h, transport));
    out.push('\n');
    let mut nodes = h.nodes.clone();
    let pick = |n: &crate::dashboard::NodeHealth| match transport {
        Some(TransportArg::Libp2p) => n.libp2p.score,
        Some(TransportArg::Iroh) => n.iroh.score,
        None => n.score,
    };
    // The view comes worst first overall; per transport, sort again (no
    // data first: unknown is not healthy).
    nodes.sort_by(|a, b| {
        pick(a)
            .unwrap_or(-1.0)
            .total_cmp(&pick(b).unwrap_or(-1.0))
            .then_with(|| a.name.cmp(&b.name))
    });
    let mut header = vec!["NODE", "SCORE"];
    match transport {
        Some(TransportArg::Libp2p) => header.push("LIBP2P"),
        Some(TransportArg::Iroh) => header.push("IROH"),
        None => header.extend(["LIBP2P", "IROH"]),
    }
    header.extend(["PEERS", "PARTITION RISK", "DHT ROUTING"]);
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let mut r = vec![n.name.clone(), opt(n.score, 2)];
            match transport {
                Some(TransportArg::Libp2p) => r.push(transport_cell(&n.libp2p)),
                Some(TransportArg::Iroh) => r.push(transport_cell(&n.iroh)),
                None => r.extend([transport_cell(&n.libp2p), transport_cell(&n.iroh)]),
            }
            let peers = |t: &crate::dashboard::TransportHealth| opt(t.peers, 0);
            r.push(format!("{}/{}", peers(&n.libp2p), peers(&n.iroh)));
            r.push(percent(n.partition_risk));
            r.push(routing(n.routing_health).to_owned());
            r
        })
        .collect();
    out.push_str(&table(&header, &rows));
    out
}

/// `kubectl switchyard metrics`: per plan, its latest analysis, traffic
/// per transport, and the operator's samples about it.
pub fn metrics_table(report: &super::operator_api::MetricsReport) -> String {
    let mut out = String::new();
    for p in &report.plans {
        let _ = writeln!(out, "Plan:      {}/{} ({})", p.namespace, p.name, p.phase);
        match &p.last_analysis {
            Some(a) => {
                let _ = writeln!(out, "Analysis:  {:?}", a.verdict);
                let rows: Vec<Vec<String>> = a
                    .metrics
                    .iter()
                    .map(|m| {
                        vec![
                            format!("  {}", m.name),
                            opt(m.value, 4),
                            opt(m.baseline, 4),
                            m.threshold.clone(),
                            format!("{:?}", m.verdict),
                        ]
                    })
                    .collect();
                out.push_str(&table(
                    &["  CHECK", "VALUE", "BASELINE", "THRESHOLD", "VERDICT"],
                    &rows,
                ));
            }
            None => out.push_str("Analysis:  none yet\n"),
        }
        if let Some(t) = &p.traffic {
            out.push_str("Traffic:   (latest measurement, all scraped nodes)\n");
            let row = |name: &str, x: &crate::dashboard::TransportPoint| {
                vec![
                    format!("  {name}"),
                    format!("{:.1}", x.requests_per_second),
                    percent(x.error_rate),
                    opt(x.p50_ms, 2),
                    opt(x.p95_ms, 2),
                    opt(x.p99_ms, 2),
                ]
            };
            out.push_str(&table(
                &[
                    "  TRANSPORT",
                    "REQ/S",
                    "ERRORS",
                    "P50 MS",
                    "P95 MS",
                    "P99 MS",
                ],
                &[row("libp2p", &t.libp2p), row("iroh", &t.iroh)],
            ));
        }
        if !p.operator_metrics.is_empty() {
            out.push_str("Operator:\n");
            let rows: Vec<Vec<String>> = p
                .operator_metrics
                .iter()
                .map(|s| {
                    let labels: Vec<String> =
                        s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    vec![
                        format!("  {}", s.name),
                        labels.join(","),
                        format!("{}", s.value),
                    ]
                })
                .collect();
            out.push_str(&table(&["  METRIC", "LABELS", "VALUE"], &rows));
        }
        out.push('\n');
    }
    if let Some(note) = &report.note {
        let _ = writeln!(out, "Note: {note}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_kubectl_prints_them() {
        assert_eq!(age(-3), "0s");
        assert_eq!(age(45), "45s");
        assert_eq!(age(192), "3m12s");
        assert_eq!(age(7500), "2h5m");
        assert_eq!(age(273_600), "3d4h");
    }

    #[test]
    fn a_bar_fills_in_proportion_and_never_overflows() {
        assert_eq!(bar(0, 10), "[----------]   0%");
        assert_eq!(bar(25, 10), "[##--------]  25%");
        assert_eq!(bar(100, 10), "[##########] 100%");
        assert_eq!(bar(250, 10), "[##########] 100%");
    }
}
