//! Semantic validation: the rules the CRD schema and its CEL rules cannot
//! express, plus every rule they do express (so a spec that reached the
//! operator some other way is still checked). The operator calls these
//! before acting; each error names the field and says what to change.

use std::collections::BTreeSet;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::analysis::{Analysis, MetricCheck};
use crate::canary::MigrationCanarySpec;
use crate::mode::{NetworkMode, forms_island};
use crate::plan::{MigrationPlanSpec, PlanCanary, RollbackStrategy};

/// One invalid field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `spec.waves[2]`.
    pub field: String,
    /// What is wrong and what to change.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every invalid field of one object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    fn finish(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(self.0))
        }
    }
}

/// The longest MigrationPlan or MigrationCanary name: the operator writes the name
/// as a label value on the FleetNodes it moves.
pub const MAX_NAME: usize = 63;

/// Check a MigrationPlan's or MigrationCanary's name: it must fit a label value.
/// The CRDs refuse longer names at admission; this catches objects stored
/// before that rule was installed, so no node write is ever refused.
pub fn object_name(name: &str) -> Result<(), ValidationErrors> {
    let mut e = Errors::default();
    if name.len() > MAX_NAME {
        e.push(
            "metadata.name",
            format!(
                "at most {MAX_NAME} characters (this one has {}): the operator writes the name as a label value on every FleetNode it moves; recreate it under a shorter name",
                name.len()
            ),
        );
    }
    e.finish()
}

/// Check a MigrationPlan spec on its own (without looking at the fleet).
pub fn plan_spec(spec: &MigrationPlanSpec) -> Result<(), ValidationErrors> {
    let mut errs = Errors::default();
    label_selector(&spec.selector, "spec.selector", &mut errs);
    stages(&spec.stages, &mut errs);
    waves(&spec.waves, &mut errs);
    if let Err(e) = max_unavailable(&spec.max_unavailable, 1) {
        errs.0.push(e);
    }
    if spec.progress_deadline.as_millis() == 0 {
        errs.push("spec.progressDeadline", "must be longer than 0s, e.g. 10m");
    }
    if let Some(canary) = &spec.canary {
        plan_canary(canary, &mut errs);
    }
    if let Some(analysis) = &spec.analysis {
        analysis_block(analysis, "spec.analysis", &mut errs);
    }
    let rb = &spec.rollback;
    if rb.gradual.is_some() && rb.strategy != RollbackStrategy::Gradual {
        errs.push(
            "spec.rollback.gradual",
            "is only used with strategy: Gradual; set the strategy or remove gradual",
        );
    }
    if let Some(g) = &rb.gradual
        && !(1..=100).contains(&g.wave_size)
    {
        errs.push(
            "spec.rollback.gradual.waveSize",
            format!("{} is not a percentage of nodes: use 1 to 100", g.wave_size),
        );
    }
    let t = &rb.triggers;
    if let Some(e) = &t.high_error_rate {
        fraction(
            e.threshold,
            "spec.rollback.triggers.highErrorRate.threshold",
            &mut errs,
        );
    }
    if let Some(p) = &t.network_partition {
        fraction(
            p.risk_above,
            "spec.rollback.triggers.networkPartition.riskAbove",
            &mut errs,
        );
    }
    if let Some(h) = &t.health_check_failure {
        fraction(
            h.min_health_score,
            "spec.rollback.triggers.healthCheckFailure.minHealthScore",
            &mut errs,
        );
    }
    if let Some(l) = &t.latency_regression {
        if l.threshold_ms == 0 {
            errs.push(
                "spec.rollback.triggers.latencyRegression.thresholdMs",
                "must be at least 1 (milliseconds)",
            );
        }
        if !(50.0..=99.9).contains(&l.percentile) {
            errs.push(
                "spec.rollback.triggers.latencyRegression.percentile",
                "must be from 50 to 99.9, e.g. 95",
            );
        }
    }
    for (i, m) in rb.alert_matchers.iter().enumerate() {
        if m.labels.is_empty() {
            errs.push(
                format!("spec.rollback.alertMatchers[{i}].labels"),
                "list at least one label, e.g. alertname: SwitchyardHighErrorRate",
            );
        }
    }
    errs.finish()
}

/// Check a MigrationPlan against the fleet it selects: `selected` names the
/// FleetNodes its selector picks now.
pub fn plan_against_fleet(
    spec: &MigrationPlanSpec,
    selected: &BTreeSet<&str>,
) -> Result<(), ValidationErrors> {
    let mut errs = Errors::default();
    if let Some(c) = &spec.canary {
        canary_size(
            c.nodes.as_deref(),
            c.count,
            c.percent,
            selected,
            "spec.canary",
            &mut errs,
        );
    }
    errs.finish()
}

/// Check a standalone MigrationCanary spec.
pub fn canary_spec(spec: &MigrationCanarySpec) -> Result<(), ValidationErrors> {
    let mut errs = Errors::default();
    label_selector(&spec.selector, "spec.selector", &mut errs);
    if let Some(b) = &spec.baseline_selector {
        label_selector(b, "spec.baselineSelector", &mut errs);
    }
    canary_choice(
        spec.nodes.as_deref(),
        spec.count,
        spec.percent,
        "spec",
        &mut errs,
    );
    if spec.duration.as_millis() == 0 {
        errs.push("spec.duration", "must be longer than 0s, e.g. 10m");
    }
    if let Some(share) = spec.ab_share
        && share > 100
    {
        errs.push(
            "spec.abShare",
            format!("{share} is not a percentage: use 0 to 100"),
        );
    }
    if let Some(a) = &spec.analysis {
        analysis_block(a, "spec.analysis", &mut errs);
    }
    errs.finish()
}

/// Check a standalone MigrationCanary against the nodes its selector picks.
pub fn canary_against_fleet(
    spec: &MigrationCanarySpec,
    selected: &BTreeSet<&str>,
) -> Result<(), ValidationErrors> {
    let mut errs = Errors::default();
    canary_size(
        spec.nodes.as_deref(),
        spec.count,
        spec.percent,
        selected,
        "spec",
        &mut errs,
    );
    errs.finish()
}

/// Resolve maxUnavailable against `total` nodes: a count, or a percent
/// rounded down but at least 1.
pub fn max_unavailable(value: &IntOrString, total: u32) -> Result<u32, FieldError> {
    let err = |message: String| FieldError {
        field: "spec.maxUnavailable".into(),
        message,
    };
    match value {
        IntOrString::Int(n) if *n >= 1 => Ok(u32::try_from(*n).unwrap_or(u32::MAX)),
        IntOrString::Int(n) => Err(err(format!(
            "{n} would never let a node switch: use at least 1, or a percent such as \"10%\""
        ))),
        IntOrString::String(s) => {
            let pct = s
                .strip_suffix('%')
                .and_then(|p| p.parse::<u32>().ok())
                .ok_or_else(|| err(format!("{s:?} is neither a count nor a percent: write a number such as 5, or a percent such as \"10%\"")))?;
            if !(1..=100).contains(&pct) {
                return Err(err(format!(
                    "{s:?} is out of range: use a percent from 1% to 100% (at least one node must be able to switch)"
                )));
            }
            let n = (u64::from(total) * u64::from(pct) / 100).max(1);
            Ok(u32::try_from(n).unwrap_or(u32::MAX))
        }
    }
}

fn stages(stages: &[NetworkMode], errs: &mut Errors) {
    if stages.is_empty() {
        errs.push(
            "spec.stages",
            "list at least one target mode, e.g. [DualPreferLibP2p, DualPreferIroh, IrohOnly]",
        );
        return;
    }
    if stages.len() > 8 {
        errs.push(
            "spec.stages",
            format!("has {} stages; at most 8 are allowed", stages.len()),
        );
    }
    if forms_island(stages.iter().copied()) {
        errs.push(
            "spec.stages",
            "holds both LibP2pOnly and IrohOnly: nodes in those modes cannot talk, so the fleet would split; \
             go through a Dual mode and stop at one end, e.g. [DualPreferLibP2p, DualPreferIroh, IrohOnly]",
        );
    }
    for (i, pair) in stages.windows(2).enumerate() {
        if pair[0] == pair[1] {
            errs.push(
                format!("spec.stages[{}]", i + 1),
                format!("repeats {} from the stage before it; remove one", pair[1]),
            );
        }
    }
}

fn waves(waves: &[u8], errs: &mut Errors) {
    if waves.is_empty() {
        errs.push(
            "spec.waves",
            "list at least one cumulative percentage ending at 100, e.g. [5, 25, 50, 75, 100]",
        );
        return;
    }
    for (i, &w) in waves.iter().enumerate() {
        if !(1..=100).contains(&w) {
            errs.push(
                format!("spec.waves[{i}]"),
                format!("{w} is not a share of nodes: use a percentage from 1 to 100"),
            );
        }
    }
    for (i, pair) in waves.windows(2).enumerate() {
        if pair[1] <= pair[0] {
            errs.push(
                format!("spec.waves[{}]", i + 1),
                format!("{} does not increase on {}: waves are cumulative shares, e.g. [5, 25, 50, 75, 100]", pair[1], pair[0]),
            );
        }
    }
    if waves.last().copied() != Some(100) {
        errs.push(
            format!("spec.waves[{}]", waves.len() - 1),
            "the last wave must be 100 so every node reaches the stage's mode",
        );
    }
}

fn plan_canary(c: &PlanCanary, errs: &mut Errors) {
    canary_choice(c.nodes.as_deref(), c.count, c.percent, "spec.canary", errs);
    if c.duration.as_millis() == 0 {
        errs.push("spec.canary.duration", "must be longer than 0s, e.g. 10m");
    }
    if let Some(a) = &c.analysis {
        analysis_block(a, "spec.canary.analysis", errs);
    }
}

fn canary_choice(
    nodes: Option<&[String]>,
    count: Option<u32>,
    percent: Option<u8>,
    at: &str,
    errs: &mut Errors,
) {
    let set = usize::from(nodes.is_some())
        + usize::from(count.is_some())
        + usize::from(percent.is_some());
    if set != 1 {
        errs.push(at, "set exactly one of nodes, count or percent");
    }
    if let Some(nodes) = nodes {
        if nodes.is_empty() {
            errs.push(
                format!("{at}.nodes"),
                "list at least one FleetNode name, or use count or percent",
            );
        }
        let mut seen = BTreeSet::new();
        for (i, n) in nodes.iter().enumerate() {
            if !seen.insert(n) {
                errs.push(format!("{at}.nodes[{i}]"), format!("{n:?} is listed twice"));
            }
        }
    }
    if count == Some(0) {
        errs.push(format!("{at}.count"), "must be at least 1");
    }
    if let Some(p) = percent
        && !(1..=50).contains(&p)
    {
        errs.push(
                format!("{at}.percent"),
                format!("{p}% leaves no baseline to compare against: a canary can be 1% to 50% of the selected nodes"),
            );
    }
}

fn canary_size(
    nodes: Option<&[String]>,
    count: Option<u32>,
    percent: Option<u8>,
    selected: &BTreeSet<&str>,
    at: &str,
    errs: &mut Errors,
) {
    let total = selected.len();
    if let Some(nodes) = nodes {
        for (i, n) in nodes.iter().enumerate() {
            if !selected.contains(n.as_str()) {
                errs.push(format!("{at}.nodes[{i}]"), format!("{n:?} is not a FleetNode the selector picks; pick one of the selected nodes"));
            }
        }
        if !nodes.is_empty() && nodes.len() >= total {
            errs.push(format!("{at}.nodes"), format!("names {} nodes but the selector picks {total}: leave at least one node as the baseline", nodes.len()));
        }
    }
    if let Some(c) = count
        && usize::try_from(c).unwrap_or(usize::MAX) >= total
    {
        errs.push(format!("{at}.count"), format!("{c} canaries but the selector picks {total} nodes: use fewer than {total} so a baseline remains"));
    }
    if percent.is_some() && total < 2 {
        errs.push(format!("{at}.percent"), format!("the selector picks {total} node(s); a canary needs at least 2 (one canary, one baseline)"));
    }
}

fn analysis_block(a: &Analysis, at: &str, errs: &mut Errors) {
    if a.interval.as_millis() == 0 {
        errs.push(format!("{at}.interval"), "must be longer than 0s, e.g. 1m");
    }
    if a.min_sample_size == 0 {
        errs.push(
            format!("{at}.minSampleSize"),
            "must be at least 1: a measurement of no requests proves nothing",
        );
    }
    if !(1..=100).contains(&a.consecutive_successes) {
        errs.push(
            format!("{at}.consecutiveSuccesses"),
            "must be from 1 to 100: passing measurements in a row a step needs",
        );
    }
    if a.metrics.is_empty() {
        errs.push(
            format!("{at}.metrics"),
            "list at least one check, or omit metrics for the defaults",
        );
    }
    let mut names = BTreeSet::new();
    for (i, m) in a.metrics.iter().enumerate() {
        let field = format!("{at}.metrics[{i}]");
        if !names.insert(m.name.as_str()) {
            errs.push(
                format!("{field}.name"),
                format!(
                    "{:?} is used by an earlier check; names must be unique",
                    m.name
                ),
            );
        }
        metric(m, &field, errs);
    }
}

fn metric(m: &MetricCheck, at: &str, errs: &mut Errors) {
    let valid_name = !m.name.is_empty()
        && m.name.len() <= 63
        && m.name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !m.name.starts_with('-')
        && !m.name.ends_with('-');
    if !valid_name {
        errs.push(
            format!("{at}.name"),
            format!(
                "{:?} is not a valid name: use lowercase letters, digits and '-', e.g. error-rate",
                m.name
            ),
        );
    }
    match (&m.builtin, &m.promql) {
        (Some(_), Some(_)) | (None, None) => {
            errs.push(at.to_owned(), "set exactly one of builtin or promql")
        }
        (None, Some(q)) if q.trim().is_empty() => errs.push(
            format!("{at}.promql"),
            "is empty; write a PromQL expression returning one value",
        ),
        _ => {}
    }
    if m.compare_with.is_some() && m.builtin.is_none() {
        errs.push(
            at.to_owned(),
            "compareWith applies to builtin metrics; a PromQL check states its comparison in its query",
        );
    }
    if m.max.is_none()
        && m.min.is_none()
        && m.max_increase_percent.is_none()
        && m.max_decrease_percent.is_none()
    {
        errs.push(
            at.to_owned(),
            "set at least one threshold: max, min, maxIncreasePercent or maxDecreasePercent",
        );
    }
    if let (Some(min), Some(max)) = (m.min, m.max)
        && min > max
    {
        errs.push(
            format!("{at}.min"),
            format!("{min} is above max {max}; no value could pass"),
        );
    }
    for (value, name, hi) in [
        (m.max_increase_percent, "maxIncreasePercent", 10_000.0),
        (m.max_decrease_percent, "maxDecreasePercent", 100.0),
    ] {
        if let Some(v) = value
            && !(0.0..=hi).contains(&v)
        {
            errs.push(
                format!("{at}.{name}"),
                format!("{v} is out of range: use 0 to {hi}"),
            );
        }
    }
    for (value, name) in [(m.max, "max"), (m.min, "min")] {
        if value.is_some_and(|v| !v.is_finite()) {
            errs.push(format!("{at}.{name}"), "must be a finite number");
        }
    }
}

fn fraction(v: f64, field: &str, errs: &mut Errors) {
    if !(0.0..=1.0).contains(&v) {
        errs.push(
            field,
            format!("{v} is not a fraction: use a value from 0 to 1 (0.05 means 5%)"),
        );
    }
}

/// Label keys and values follow Kubernetes' rules; operators are In, NotIn,
/// Exists, DoesNotExist.
fn label_selector(sel: &LabelSelector, at: &str, errs: &mut Errors) {
    for (k, v) in sel.match_labels.iter().flatten() {
        if let Err(m) = label_key(k) {
            errs.push(format!("{at}.matchLabels"), format!("key {k:?}: {m}"));
        }
        if let Err(m) = label_value(v) {
            errs.push(format!("{at}.matchLabels.{k}"), format!("value {v:?}: {m}"));
        }
    }
    for (i, r) in sel.match_expressions.iter().flatten().enumerate() {
        let field = format!("{at}.matchExpressions[{i}]");
        if let Err(m) = label_key(&r.key) {
            errs.push(format!("{field}.key"), format!("{:?}: {m}", r.key));
        }
        let values = r.values.as_deref().unwrap_or_default();
        match r.operator.as_str() {
            "In" | "NotIn" => {
                if values.is_empty() {
                    errs.push(
                        format!("{field}.values"),
                        format!("operator {} needs at least one value", r.operator),
                    );
                }
                for v in values {
                    if let Err(m) = label_value(v) {
                        errs.push(format!("{field}.values"), format!("{v:?}: {m}"));
                    }
                }
            }
            "Exists" | "DoesNotExist" => {
                if !values.is_empty() {
                    errs.push(
                        format!("{field}.values"),
                        format!("operator {} takes no values; remove them", r.operator),
                    );
                }
            }
            other => errs.push(
                format!("{field}.operator"),
                format!("{other:?} is not an operator: use In, NotIn, Exists or DoesNotExist"),
            ),
        }
    }
}

fn label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn label_key(k: &str) -> Result<(), &'static str> {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix {
        let ok = !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                let b = part.as_bytes();
                !b.is_empty()
                    && b[0].is_ascii_alphanumeric()
                    && b[b.len() - 1].is_ascii_alphanumeric()
                    && b.iter()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            });
        if !ok {
            return Err("the prefix must be a DNS subdomain such as example.com");
        }
    }
    if label_name(name) {
        Ok(())
    } else {
        Err(
            "a label name is 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
        )
    }
}

fn label_value(v: &str) -> Result<(), &'static str> {
    if v.is_empty() || label_name(v) {
        Ok(())
    } else {
        Err(
            "a label value is at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
        )
    }
}
