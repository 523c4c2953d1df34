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
