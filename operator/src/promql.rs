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

use serde::Deserialize;

use crate::scrape::ScrapeError;

/// The largest answer read from Prometheus.
pub const MAX_BODY: usize = 1024 * 1024;

/// Where and how to query: one pooled HTTP client (connections and TLS
/// sessions are reused across queries), the base URL, and the headers
/// every query carries.
#[derive(Debug, Clone)]
pub struct Prometheus {
    base: String,
    timeout: Duration,
    client: reqwest::Client,
    headers: reqwest::header::HeaderMap,
}

/// How to reach a Prometheus (or Thanos, Mimir, Cortex) beyond its URL.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// The whole `Authorization` header value, e.g. `Bearer <token>`.
    pub authorization: Option<String>,
    /// A bearer token (sent as `Authorization: Bearer <token>`).
    pub bearer_token: Option<String>,
    /// Basic auth: user name and password.
    pub basic: Option<(String, String)>,
    /// Extra headers, e.g. `X-Scope-OrgID` for a tenant.
    pub headers: Vec<(String, String)>,
    /// PEM CA bundle to trust for https (instead of the system's roots).
    pub ca_pem: Option<Vec<u8>>,
    /// Accept any certificate. For tests only: it gives up what https is for.
    pub insecure_skip_verify: bool,
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

/// The one finite number in a Prometheus instant-query answer (HTTP 200
/// body), or what is wrong with it.
pub fn read_answer(body: &[u8]) -> Result<f64, QueryError> {
    let answer: Answer =
        serde_json::from_slice(body).map_err(|e| QueryError::Malformed(e.to_string()))?;
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

impl Prometheus {
    /// A client for the Prometheus at `base` (e.g. `http://prometheus:9090`;
    /// a path prefix is kept). `authorization` is sent as the whole
    /// `Authorization` header value, e.g. `Bearer <token>`.
    pub fn new(
        base: &str,
        timeout: Duration,
        authorization: Option<&str>,
    ) -> anyhow::Result<Prometheus> {
        let access = Access {
            authorization: authorization.map(str::to_owned),
            ..Access::default()
        };
        Prometheus::with_access(base, timeout, &access)
    }

    /// A client for the Prometheus at `base` (http or https), reached as
    /// `access` says.
    pub fn with_access(
        base: &str,
        timeout: Duration,
        access: &Access,
    ) -> anyhow::Result<Prometheus> {
        anyhow::ensure!(!timeout.is_zero(), "--prometheus-timeout must be above 0");
        // kube's TLS runs on ring; reqwest uses the process-wide provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .pool_max_idle_per_host(4)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = &access.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                anyhow::anyhow!("the Prometheus CA bundle is not PEM certificates: {e}")
            })?;
            anyhow::ensure!(
                !certs.is_empty(),
                "the Prometheus CA bundle holds no certificate"
            );
            builder = builder.tls_certs_only(certs);
        }
        if access.insecure_skip_verify {
            tracing::warn!(
                "Prometheus certificates are not verified (insecure skip verify): for tests only"
            );
            builder = builder.danger_accept_invalid_certs(true);
        }
        let client = builder
            .build()
            .map_err(|e| anyhow::anyhow!("building the Prometheus client: {e}"))?;
        let mut p = Prometheus {
            base: String::new(),
            timeout,
            client,
            headers: reqwest::header::HeaderMap::new(),
        };
        p.base = checked_base(base)?;
        p.headers = headers(access)?;
        Ok(p)
    }

    /// The same client (its pool and trust) for another address, as a
    /// plan's `analysis.prometheus` names it, with that plan's headers and
    /// none of the operator's credentials: a plan's author must not be able
    /// to send them to an address of their choosing.
    ///
    /// `plan` gives the plan's headers and its own credentials (a bearer
    /// token or basic auth, from the Secret the plan names); its trust
    /// settings are the client's and are not read.
    pub fn for_plan(&self, base: &str, plan: &Access) -> anyhow::Result<Prometheus> {
        let access = Access {
            headers: plan.headers.clone(),
            bearer_token: plan.bearer_token.clone(),
            basic: plan.basic.clone(),
            ..Access::default()
        };
        Ok(Prometheus {
            base: checked_base(base)?,
            timeout: self.timeout,
            client: self.client.clone(),
            headers: headers(&access)?,
        })
    }

    /// Run an instant query: its one value.
    pub async fn query(&self, query: &str) -> Result<f64, QueryError> {
        let encoded: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", query)
            .finish();
        let url = format!("{}/api/v1/query?{encoded}", self.base);
        let body = match self.get(&url).await {
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
        read_answer(&body)
    }
}

impl Prometheus {
    /// GET `url` with the headers: the body of a 200 answer, at most
    /// [`MAX_BODY`] bytes, within the timeout.
    async fn get(&self, url: &str) -> Result<bytes::Bytes, ScrapeError> {
        let fetch = async {
            let mut response = self
                .client
                .get(url)
                .headers(self.headers.clone())
                .send()
                .await
                .map_err(|e| ScrapeError::Http(error_chain(&e)))?;
            let status = response.status();
            let mut body = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| ScrapeError::Http(error_chain(&e)))?
            {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(ScrapeError::TooLarge(MAX_BODY));
                }
                body.extend_from_slice(&chunk);
            }
            let body = bytes::Bytes::from(body);
            if status != reqwest::StatusCode::OK {
                return Err(ScrapeError::Status(status.as_u16(), body));
            }
            Ok(body)
        };
        tokio::time::timeout(self.timeout, fetch)
            .await
            .map_err(|_| ScrapeError::Timeout(self.timeout))?
    }
}

/// An error with its causes (a TLS failure says why the certificate was
/// refused).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn checked_base(base: &str) -> anyhow::Result<String> {
    let url = reqwest::Url::parse(base)
        .map_err(|e| anyhow::anyhow!("Prometheus URL {base:?} is not a URL: {e}"))?;
    anyhow::ensure!(
        matches!(url.scheme(), "http" | "https") && url.host().is_some(),
        "Prometheus URL {base:?} must be an http:// or https:// URL with a host, e.g. https://prometheus:9090"
    );
    Ok(base.trim_end_matches('/').to_owned())
}

/// The headers every query carries: at most one kind of credentials, then
/// the extra headers. Credentials are marked sensitive (never logged).
fn headers(access: &Access) -> anyhow::Result<reqwest::header::HeaderMap> {
    use base64::Engine as _;
    use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
    let given = [
        access.authorization.is_some(),
        access.bearer_token.is_some(),
        access.basic.is_some(),
    ];
    anyhow::ensure!(
        given.iter().filter(|g| **g).count() <= 1,
        "give Prometheus one kind of credentials: an Authorization header, a bearer token, or basic auth"
    );
    let authorization = match (&access.authorization, &access.bearer_token, &access.basic) {
        (Some(a), _, _) if !a.is_empty() => Some(a.clone()),
        (_, Some(t), _) if !t.is_empty() => Some(format!("Bearer {}", t.trim())),
        (_, _, Some((user, password))) => Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )),
        _ => None,
    };
    let mut map = HeaderMap::new();
    if let Some(a) = authorization {
        let mut v = HeaderValue::from_str(&a).map_err(|_| {
            anyhow::anyhow!(
                "the Prometheus Authorization header has characters a header cannot carry"
            )
        })?;
        v.set_sensitive(true);
        map.insert(AUTHORIZATION, v);
    }
    for (name, value) in &access.headers {
        let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            anyhow::anyhow!("Prometheus header name {name:?} is not a valid header name")
        })?;
        anyhow::ensure!(
            n != AUTHORIZATION,
            "set Prometheus credentials with the authorization, bearer or basic settings, not as header {name:?}"
        );
        let mut v = HeaderValue::from_str(value).map_err(|_| {
            anyhow::anyhow!(
                "the value of Prometheus header {name:?} has characters a header cannot carry"
            )
        })?;
        v.set_sensitive(true);
        map.append(n, v);
    }
    Ok(map)
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
