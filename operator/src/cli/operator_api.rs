//! What `health` and `metrics` read from the operator itself: its
//! dashboard API (`/api/v1/…`) and its `/metrics`, at `--operator`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, bail};
use kube::ResourceExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use switchyard_crds::MigrationPlan;
use switchyard_crds::plan::AnalysisResult;

use super::OperatorArgs;
use crate::dashboard::{AnalysisPoint, SubjectHistory};

/// What to do when `--operator` is missing.
const NO_OPERATOR: &str = "this reads the operator's own data: forward its port \
    (kubectl port-forward -n switchyard-system deploy/switchyard-operator 8080) and pass \
    --operator http://127.0.0.1:8080, or set SWITCHYARD_OPERATOR_URL";

/// How long one call to the operator may take.
const TIMEOUT: Duration = Duration::from_secs(10);

async fn fetch(op: &OperatorArgs, path: &str) -> anyhow::Result<String> {
    let Some(base) = op.url.as_deref() else {
        bail!("{NO_OPERATOR}");
    };
    let base = base.trim_end_matches('/');
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .context("building the HTTP client")?;
    let mut req = client.get(format!("{base}/{path}"));
    if let Some(t) = &op.token {
        req = req.bearer_auth(t.trim());
    }
    let resp = req.send().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the operator at {base}: {e} (is the port-forward running, and --operator right?)"
        )
    })?;
    let status = resp.status();
    let body = resp
        .text()
        .await
        .with_context(|| format!("reading the operator's answer to /{path}"))?;
    if !status.is_success() {
        bail!(
            "the operator at {base} answered /{path} with {status}: {}",
            body.trim()
        );
    }
    Ok(body)
}

/// GET `path` from the operator as JSON.
pub async fn get<T: DeserializeOwned>(op: &OperatorArgs, path: &str) -> anyhow::Result<T> {
    let body = fetch(op, path).await?;
    serde_json::from_str(&body).with_context(|| {
        format!(
            "the answer to /{path} is not the dashboard's JSON: is --operator a Switchyard operator with its dashboard on?"
        )
    })
}

/// One of the operator's own samples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// One plan's measurements.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanMetrics {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Phase.
    pub phase: String,
    /// The latest analysis, from the plan's status.
    pub last_analysis: Option<AnalysisResult>,
    /// The latest traffic per transport the analysis measured.
    pub traffic: Option<AnalysisPoint>,
    /// The operator's samples about this plan.
    pub operator_metrics: Vec<Sample>,
}

/// What `metrics` prints.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricsReport {
    /// Per plan.
    pub plans: Vec<PlanMetrics>,
    /// Why traffic and the operator's metrics are missing, when they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The samples of the operator's `/metrics` text labelled with plan `ns/name`
/// (or its bare name, as some are); histograms are left out.
pub fn plan_samples(text: &str, ns: &str, name: &str) -> anyhow::Result<Vec<Sample>> {
    use prometheus_parse::Value;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .context("the operator's /metrics is not Prometheus text")?;
    let full = format!("{ns}/{name}");
    let mut out: Vec<Sample> = scrape
        .samples
        .into_iter()
        .filter(|s| matches!(s.labels.get("plan"), Some(p) if p == full || p == name))
        .filter_map(|s| {
            let value = match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
                _ => return None,
            };
            let labels = s
                .labels
                .iter()
                .filter(|(k, _)| k.as_str() != "plan")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            Some(Sample {
                name: s.metric,
                labels,
                value,
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.name, &a.labels).cmp(&(&b.name, &b.labels)));
    Ok(out)
}

/// The report for `plans`: their status, and with `--operator` their
/// traffic and the operator's samples.
pub async fn metrics(plans: &[MigrationPlan], op: &OperatorArgs) -> anyhow::Result<MetricsReport> {
    let (history, text, note) = if op.url.is_some() {
        let history: Vec<SubjectHistory> = get(op, "api/v1/analysis").await?;
        let text = fetch(op, "metrics").await?;
        (history, Some(text), None)
    } else {
        (
            Vec::new(),
            None,
            Some(format!(
                "traffic and the operator's metrics are missing: {NO_OPERATOR}"
            )),
        )
    };
    let mut out = Vec::new();
    for p in plans {
        let (ns, name) = (p.namespace().unwrap_or_default(), p.name_any());
        let full = format!("{ns}/{name}");
        let traffic = history
            .iter()
            .find(|h| h.plan == full)
            .and_then(|h| h.points.last().cloned());
        let operator_metrics = match &text {
            Some(t) => plan_samples(t, &ns, &name)?,
            None => Vec::new(),
        };
        let status = p.status.clone().unwrap_or_default();
        out.push(PlanMetrics {
            namespace: ns,
            name,
            phase: format!("{:?}", status.phase),
            last_analysis: status.last_analysis,
            traffic,
            operator_metrics,
        });
    }
    Ok(MetricsReport { plans: out, note })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_plans_own_samples_are_kept_without_the_plan_label() {
        let text = "\
# TYPE switchyard_plan_progress_ratio gauge
switchyard_plan_progress_ratio{plan=\"to-iroh\"} 0.5
switchyard_plan_progress_ratio{plan=\"other\"} 0.1
# TYPE switchyard_operator_analysis_value gauge
switchyard_operator_analysis_value{check=\"error-rate\",plan=\"fleet/to-iroh\"} 0.01
# TYPE switchyard_operator_leader gauge
switchyard_operator_leader 1
";
        let s = plan_samples(text, "fleet", "to-iroh").expect("parses");
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(s[0].name, "switchyard_operator_analysis_value");
        assert_eq!(
            s[0].labels.get("check").map(String::as_str),
            Some("error-rate")
        );
        assert!(!s[0].labels.contains_key("plan"));
        assert_eq!(
            (s[1].name.as_str(), s[1].value),
            ("switchyard_plan_progress_ratio", 0.5)
        );
    }

    #[tokio::test]
    async fn without_an_operator_address_it_says_how_to_reach_one() {
        let e = get::<serde_json::Value>(&OperatorArgs::default(), "api/v1/health")
            .await
            .expect_err("no address");
        assert!(e.to_string().contains("kubectl port-forward"), "{e}");
        let unreachable = OperatorArgs {
            url: Some("http://127.0.0.1:9".into()),
            token: None,
        };
        let e = get::<serde_json::Value>(&unreachable, "api/v1/health")
            .await
            .expect_err("nothing listens");
        assert!(e.to_string().contains("cannot reach the operator"), "{e}");
    }
}
