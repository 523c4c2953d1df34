//! PromQL checks: instant queries against Prometheus's HTTP API
//! (`GET /api/v1/query`), with a timeout, a body limit and an optional
//! `Authorization` header.
//!
//! A query must come back as one number: a scalar, or a vector with one
//! series (aggregate with `sum`, `max`, ... to get there). No series, more
//! than one, NaN, an infinity, an error from Prometheus, a timeout or a
//! body that is not the API's JSON each give an error with a reason; the
//! check is then Inconclusive, never a pass.
//!
//! Before it is sent, a query's placeholders are filled in for the plan it
//! belongs to: `$namespace`, `$plan`, `$interval` (the analysis interval in
//! seconds, e.g. `60s`, for range vectors), and `$canary` / `$baseline`
//! (regular expressions matching the names of the nodes the plan has moved
//! and of those it has not, for `pod=~"$canary"`).

use std::time::Duration;

use hyper::header::HeaderValue;
use serde::Deserialize;

use crate::scrape::{self, ScrapeError};

/// The largest answer read from Prometheus.
pub const MAX_BODY: usize = 1024 * 1024;

/// Where and how to query.
#[derive(Debug, Clone)]
pub struct Prometheus {
    base: String,
    timeout: Duration,
    authorization: Option<HeaderValue>,
}

/// Why a query gave no number.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    /// Prometheus could not be reached, or answered too slowly or too much.
    #[error("Prometheus: {0}")]
    Fetch(String),
    /// Prometheus refused the query.
    #[error("Prometheus refused the query: {0}")]
    Refused(String),
    /// The answer is not the query API's JSON.
    #[error("not a Prometheus query answer: {0}")]
    Malformed(String),
    /// The query matched no series.
    #[error("the query returned no data")]
    NoData,
    /// More than one series.
    #[error("the query returned {0} series; aggregate it to one (e.g. sum(...) or max(...))")]
    TooMany(usize),
    /// NaN or an infinity.
    #[error("the query returned {0}, not a finite number")]
    NotFinite(String),
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum Data {
    Scalar((f64, String)),
    Vector(Vec<Series>),
    Matrix(serde::de::IgnoredAny),
    String(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
struct Series {
    value: (f64, String),
}

/// What a query's placeholders stand for.
#[derive(Debug, Clone, Default)]
pub struct Placeholders {
    /// The plan's namespace.
    pub namespace: String,
    /// The plan's name.
    pub plan: String,
    /// The analysis interval.
    pub interval: Duration,
    /// Names of the nodes the plan has moved.
    pub canary: Vec<String>,
    /// Names of the plan's other nodes.
    pub baseline: Vec<String>,
}

impl Placeholders {
    /// `query` with its placeholders filled in.
    pub fn fill(&self, query: &str) -> String {
        // A regex matching exactly these names; one that matches nothing
        // when there are none.
        let alternation = |names: &[String]| {
            if names.is_empty() {
                "$^".to_owned()
            } else {
                names
                    .iter()
                    .map(|n| regex_escape(n))
                    .collect::<Vec<_>>()
                    .join("|")
            }
        };
        query
            .replace("$namespace", &self.namespace)
            .replace("$plan", &self.plan)
            .replace("$interval", &format!("{}s", self.interval.as_secs().max(1)))
            .replace("$canary", &alternation(&self.canary))
            .replace("$baseline", &alternation(&self.baseline))
    }
}

/// Escape a node name for a PromQL regex inside a double-quoted string
/// (node names are DNS labels, so a `.` is the only character that needs
/// it, escaped twice: once for the regex, once for the string).
fn regex_escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if !c.is_ascii_alphanumeric() && c != '-' && c != '_' {
            out.push_str("\\\\");
        }
        out.push(c);
    }
    out
}

impl Prometheus {
    /// A client for the Prometheus at `base` (e.g. `http://prometheus:9090`;
    /// a path prefix is kept). `authorization` is sent as the whole
    /// `Authorization` header value, e.g. `Bearer <token>`.
    pub fn new(
        base: &str,
        timeout: Duration,
        authorization: Option<&str>,
    ) -> anyhow::Result<Prometheus> {
        let uri: hyper::Uri = base
            .parse()
            .map_err(|e| anyhow::anyhow!("--prometheus-url {base:?} is not a URL: {e}"))?;
        anyhow::ensure!(
            uri.scheme_str() == Some("http") && uri.host().is_some(),
            "--prometheus-url {base:?} must be an http:// URL with a host, e.g. http://prometheus:9090 (put a TLS-terminating proxy in front for https)"
        );
        let authorization = authorization
            .filter(|a| !a.is_empty())
            .map(|a| {
                let mut v = HeaderValue::from_str(a).map_err(|_| {
                    anyhow::anyhow!(
                        "the Prometheus Authorization header has characters a header cannot carry"
                    )
                })?;
                v.set_sensitive(true);
                anyhow::Ok(v)
            })
            .transpose()?;
        anyhow::ensure!(!timeout.is_zero(), "--prometheus-timeout must be above 0");
        Ok(Prometheus {
            base: base.trim_end_matches('/').to_owned(),
            timeout,
            authorization,
        })
    }

    /// Run an instant query: its one value.
    pub async fn query(&self, query: &str) -> Result<f64, QueryError> {
        let encoded: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", query)
            .finish();
        let uri: hyper::Uri = format!("{}/api/v1/query?{encoded}", self.base)
            .parse()
            .map_err(|e| QueryError::Fetch(format!("building the query URL: {e}")))?;
        let body = match scrape::get(uri, self.authorization.as_ref(), self.timeout, MAX_BODY).await
        {
            Ok(b) => b,
            // Prometheus explains a bad query in a 400 or 422 JSON body.
            Err(ScrapeError::Status(code, body)) => {
                return Err(match serde_json::from_slice::<Answer>(&body) {
                    Ok(a) if a.error.is_some() => QueryError::Refused(format!(
                        "{} ({})",
                        a.error.unwrap_or_default(),
                        a.error_type.unwrap_or_else(|| format!("HTTP {code}"))
                    )),
                    _ => QueryError::Fetch(format!("HTTP status {code}")),
                });
            }
            Err(e) => return Err(QueryError::Fetch(e.to_string())),
        };
        let answer: Answer =
            serde_json::from_slice(&body).map_err(|e| QueryError::Malformed(e.to_string()))?;
        if answer.status != "success" {
            return Err(QueryError::Refused(
                answer
                    .error
                    .unwrap_or_else(|| format!("status {:?}", answer.status)),
            ));
        }
        let text = match answer.data {
            Some(Data::Scalar((_, v))) => v,
            Some(Data::Vector(series)) => match series.len() {
                0 => return Err(QueryError::NoData),
                1 => series
                    .into_iter()
                    .next()
                    .map(|s| s.value.1)
                    .unwrap_or_default(),
                n => return Err(QueryError::TooMany(n)),
            },
            Some(Data::Matrix(_)) => {
                return Err(QueryError::Malformed(
                    "a range vector; use an instant vector, e.g. wrap it in rate(...)".into(),
                ));
            }
            Some(Data::String(_)) => {
                return Err(QueryError::Malformed("a string, not a number".into()));
            }
            None => return Err(QueryError::Malformed("no data".into())),
        };
        let v: f64 = text
            .parse()
            .map_err(|_| QueryError::Malformed(format!("the value {text:?} is not a number")))?;
        if v.is_finite() {
            Ok(v)
        } else {
            Err(QueryError::NotFinite(text))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_fill_in_the_plan_and_its_cohorts() {
        let p = Placeholders {
            namespace: "fleet".into(),
            plan: "p".into(),
            interval: Duration::from_secs(30),
            canary: vec!["node-01".into(), "node.02".into()],
            baseline: vec![],
        };
        assert_eq!(
            p.fill(
                r#"sum(rate(x{namespace="$namespace",pod=~"$canary"}[$interval])) > on() $plan"#
            ),
            r#"sum(rate(x{namespace="fleet",pod=~"node-01|node\\.02"}[30s])) > on() p"#
        );
        assert_eq!(p.fill(r#"{pod=~"$baseline"}"#), r#"{pod=~"$^"}"#);
    }

    #[test]
    fn a_bad_url_or_header_is_refused_with_what_to_change() {
        let e = Prometheus::new("prometheus:9090", Duration::from_secs(1), None)
            .expect_err("no scheme");
        assert!(e.to_string().contains("http://"), "{e}");
        let e = Prometheus::new(
            "http://prometheus:9090",
            Duration::from_secs(1),
            Some("Bearer a\nb"),
        )
        .expect_err("newline");
        assert!(e.to_string().contains("Authorization"), "{e}");
        Prometheus::new(
            "http://prometheus:9090/prefix/",
            Duration::from_secs(1),
            None,
        )
        .expect("a path prefix is fine");
    }
}
