//! Scraping the agents' `/metrics` for the built-in analysis: fetch with a
//! timeout and a body limit, parse the Prometheus text format (with the
//! `prometheus-parse` crate), keep what analysis needs, and turn two
//! scrapes of a node into the requests, errors and latency histogram of
//! the window between them. Garbage, NaN, an oversized body or a timeout
//! is an error with a reason, never a number.

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The two transports, as the agents label them.
pub const TRANSPORTS: [&str; 2] = ["libp2p", "iroh"];

/// What one scrape of one agent says.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSample {
    /// When it was taken.
    pub at: Instant,
    /// Per transport (libp2p, iroh): cumulative counters and histogram.
    pub transports: [TransportCounters; 2],
    /// The agent's partition-risk gauge.
    pub partition_risk: Option<f64>,
    /// Connected peers per transport.
    pub peers: [Option<f64>; 2],
    /// The agent's health score (0-1).
    pub health_score: Option<f64>,
    /// DHT operations: (all, failed), cumulative.
    pub dht: (f64, f64),
    /// The agent's DHT routing health (2 Healthy, 1 Degraded, 0 Failed).
    pub routing_health: Option<f64>,
    /// Per transport (libp2p, iroh): seed 001's health score, 0-1, when
    /// the agent knows it.
    pub transport_scores: [Option<f64>; 2],
    /// Per transport: the agent's health state (Healthy, Degraded,
    /// Unhealthy or Unknown).
    pub transport_states: [Option<&'static str>; 2],
}

/// The health states an agent reports per transport.
pub const HEALTH_STATES: [&str; 4] = ["Healthy", "Degraded", "Unhealthy", "Unknown"];

/// Cumulative request counters and latency histogram of one transport.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TransportCounters {
    /// Requests sent, every outcome.
    pub requests: f64,
    /// Requests that failed (`outcome="error"`).
    pub errors: f64,
    /// Latency buckets: (upper bound in seconds, cumulative count), ascending.
    pub buckets: Vec<(f64, f64)>,
}

/// Why a scrape gave no usable sample.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScrapeError {
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection or request failed.
    #[error("request failed: {0}")]
    Http(String),
    /// A status other than 200, and the body that came with it.
    #[error("HTTP status {0}")]
    Status(u16, bytes::Bytes),
    /// The body was larger than allowed.
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    /// The body is not the agents' metrics.
    #[error("not a node-agent's metrics: {0}")]
    NotMetrics(String),
    /// A value that is not a finite, non-negative number.
    #[error("invalid value: {0}")]
    Invalid(String),
}

/// Fetch and parse one agent's metrics.
pub async fn scrape(
    url: &str,
    timeout: Duration,
    max_body: usize,
) -> Result<NodeSample, ScrapeError> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| ScrapeError::Http(format!("{url:?} is not a URL: {e}")))?;
    if uri.scheme_str() != Some("http") {
        return Err(ScrapeError::Http(format!(
            "{url:?}: only http:// is scraped"
        )));
    }
    let body = get(uri, None, timeout, max_body).await?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ScrapeError::NotMetrics("the body is not UTF-8".into()))?;
    parse(text)
}

/// GET `uri` (with an `Authorization` header when given): the body of a
/// 200 answer, at most `max_body` bytes, within `timeout`.
pub async fn get(
    uri: hyper::Uri,
    authorization: Option<&hyper::header::HeaderValue>,
    timeout: Duration,
    max_body: usize,
) -> Result<bytes::Bytes, ScrapeError> {
    let fetch = async {
        let client: Client<_, Empty<bytes::Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let mut request = hyper::Request::get(uri);
        if let Some(a) = authorization {
            request = request.header(hyper::header::AUTHORIZATION, a.clone());
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| ScrapeError::Http(e.to_string()))?;
        let response = client
            .request(request)
            .await
            .map_err(|e| ScrapeError::Http(e.to_string()))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    ScrapeError::TooLarge(max_body)
                } else {
                    ScrapeError::Http(e.to_string())
                }
            })?
            .to_bytes();
        if status != hyper::StatusCode::OK {
            return Err(ScrapeError::Status(status.as_u16(), body));
        }
        Ok(body)
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| ScrapeError::Timeout(timeout))?
}

fn transport_index(label: Option<&str>) -> Option<usize> {
    TRANSPORTS.iter().position(|t| Some(*t) == label)
}

fn checked(name: &str, v: f64) -> Result<f64, ScrapeError> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(ScrapeError::Invalid(format!("{name} is {v}")))
    }
}

/// Parse the Prometheus text format of an agent's `/metrics`.
pub fn parse(text: &str) -> Result<NodeSample, ScrapeError> {
    use prometheus_parse::Value;
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines)
        .map_err(|e| ScrapeError::NotMetrics(e.to_string()))?;
    let mut sample = NodeSample {
        at: Instant::now(),
        transports: Default::default(),
        partition_risk: None,
        peers: [None, None],
        health_score: None,
        dht: (0.0, 0.0),
        routing_health: None,
        transport_scores: [None, None],
        transport_states: [None, None],
    };
    let mut saw_requests = false;
    for s in &scrape.samples {
        let t = transport_index(s.labels.get("transport"));
        match (s.metric.as_str(), &s.value, t) {
            ("switchyard_node_requests_total", Value::Counter(v) | Value::Untyped(v), Some(i)) => {
                let v = checked("switchyard_node_requests_total", *v)?;
                saw_requests = true;
                sample.transports[i].requests += v;
                if s.labels.get("outcome") == Some("error") {
                    sample.transports[i].errors += v;
                }
            }
            ("switchyard_node_request_duration_seconds", Value::Histogram(h), Some(i)) => {
                let mut buckets = Vec::with_capacity(h.len());
                for b in h {
                    let count = checked("a latency bucket", b.count)?;
                    if b.less_than.is_nan() {
                        return Err(ScrapeError::Invalid("a bucket bound is NaN".into()));
                    }
                    buckets.push((b.less_than, count));
                }
                buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                sample.transports[i].buckets = buckets;
            }
            _ => gauge(&mut sample, s, t)?,
        }
    }
    if !saw_requests {
        return Err(ScrapeError::NotMetrics(
            "no switchyard_node_requests_total samples".into(),
        ));
    }
    Ok(sample)
}

/// The gauges and DHT counters of one sample into `sample`.
fn gauge(
    sample: &mut NodeSample,
    s: &prometheus_parse::Sample,
    t: Option<usize>,
) -> Result<(), ScrapeError> {
    use prometheus_parse::Value;
    match (s.metric.as_str(), &s.value, t) {
        ("switchyard_agent_partition_risk", Value::Gauge(v) | Value::Untyped(v), _) => {
            sample.partition_risk = Some(checked("switchyard_agent_partition_risk", *v)?);
        }
        ("switchyard_agent_health_score", Value::Gauge(v) | Value::Untyped(v), _) => {
            let v = checked("switchyard_agent_health_score", *v)?;
            if v > 1.0 {
                return Err(ScrapeError::Invalid(format!(
                    "switchyard_agent_health_score is {v}, above 1"
                )));
            }
            sample.health_score = Some(v);
        }
        ("switchyard_dht_lookups_total", Value::Counter(v) | Value::Untyped(v), _) => {
            let v = checked("switchyard_dht_lookups_total", *v)?;
            sample.dht.0 += v;
            if s.labels.get("outcome") == Some("error") {
                sample.dht.1 += v;
            }
        }
        ("switchyard_dht_routing_health", Value::Gauge(v) | Value::Untyped(v), _) => {
            let v = checked("switchyard_dht_routing_health", *v)?;
            if v > 2.0 {
                return Err(ScrapeError::Invalid(format!(
                    "switchyard_dht_routing_health is {v}, above 2"
                )));
            }
            sample.routing_health = Some(v);
        }
        ("switchyard_node_peers", Value::Gauge(v) | Value::Untyped(v), Some(i)) => {
            sample.peers[i] = Some(checked("switchyard_node_peers", *v)?);
        }
        ("switchyard_transport_health_score", Value::Gauge(v) | Value::Untyped(v), Some(i)) => {
            let v = checked("switchyard_transport_health_score", *v)?;
            if v > 1.0 {
                return Err(ScrapeError::Invalid(format!(
                    "switchyard_transport_health_score is {v}, above 1"
                )));
            }
            sample.transport_scores[i] = Some(v);
        }
        ("switchyard_transport_health_state", Value::Gauge(v) | Value::Untyped(v), Some(i)) => {
            let on = checked("switchyard_transport_health_state", *v)? >= 1.0;
            let state = s.labels.get("state").unwrap_or_default();
            let known = HEALTH_STATES.iter().find(|k| **k == state).ok_or_else(|| {
                ScrapeError::Invalid(format!(
                    "switchyard_transport_health_state has an unknown state {state:?}"
                ))
            })?;
            if on {
                sample.transport_states[i] = Some(known);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Requests, errors and latency histogram over a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    /// Requests in the window.
    pub requests: f64,
    /// Failed requests in the window.
    pub errors: f64,
    /// Latency buckets over the window: (upper bound s, cumulative count).
    pub buckets: Vec<(f64, f64)>,
}

impl Window {
    /// What happened on one transport between two scrapes of one node. A
    /// counter that went down means the agent restarted: the new value is
    /// the whole window.
    pub fn between(before: &TransportCounters, after: &TransportCounters) -> Window {
        let reset = after.requests < before.requests;
        let d = |a: f64, b: f64| if reset { a } else { (a - b).max(0.0) };
        let buckets = after
            .buckets
            .iter()
            .map(|(le, c)| {
                let prev = before
                    .buckets
                    .iter()
                    .find(|(l, _)| l == le)
                    .map_or(0.0, |(_, c)| *c);
                (*le, d(*c, prev))
            })
            .collect();
        Window {
            requests: d(after.requests, before.requests),
            errors: d(after.errors, before.errors),
            buckets,
        }
    }

    /// Add another window (another node, or the other transport).
    pub fn add(&mut self, other: &Window) {
        self.requests += other.requests;
        self.errors += other.errors;
        for (le, c) in &other.buckets {
            match self.buckets.iter_mut().find(|(l, _)| l == le) {
                Some(b) => b.1 += c,
                None => self.buckets.push((*le, *c)),
            }
        }
        self.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }

    /// Failed share of requests, if there were any.
    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0.0).then(|| self.errors / self.requests)
    }

    /// The `q` quantile of latency in milliseconds, interpolated within
    /// its bucket as Prometheus' `histogram_quantile` does; `None` without
    /// observations.
    pub fn latency_ms(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total;
        let mut lower = (0.0, 0.0);
        for &(le, count) in &self.buckets {
            if count >= rank {
                if le.is_infinite() {
                    // Beyond the last finite bound: report that bound.
                    return Some(lower.0 * 1000.0);
                }
                let in_bucket = count - lower.1;
                let fraction = if in_bucket > 0.0 {
                    (rank - lower.1) / in_bucket
                } else {
                    1.0
                };
                return Some((lower.0 + (le - lower.0) * fraction) * 1000.0);
            }
            lower = (le, count);
        }
        Some(lower.0 * 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGENT: &str = r#"# HELP switchyard_node_requests_total Requests sent, by outcome
# TYPE switchyard_node_requests_total counter
switchyard_node_requests_total{outcome="ok",transport="iroh"} 90
switchyard_node_requests_total{outcome="error",transport="iroh"} 10
switchyard_node_requests_total{outcome="ok",transport="libp2p"} 200
# HELP switchyard_node_request_duration_seconds Round trip of answered requests
# TYPE switchyard_node_request_duration_seconds histogram
switchyard_node_request_duration_seconds_bucket{transport="iroh",le="0.001"} 50
switchyard_node_request_duration_seconds_bucket{transport="iroh",le="0.01"} 80
switchyard_node_request_duration_seconds_bucket{transport="iroh",le="0.1"} 90
switchyard_node_request_duration_seconds_bucket{transport="iroh",le="+Inf"} 90
switchyard_node_request_duration_seconds_sum{transport="iroh"} 0.5
switchyard_node_request_duration_seconds_count{transport="iroh"} 90
# HELP switchyard_agent_partition_risk risk
# TYPE switchyard_agent_partition_risk gauge
switchyard_agent_partition_risk 0.25
# HELP switchyard_node_peers peers
# TYPE switchyard_node_peers gauge
switchyard_node_peers{transport="iroh"} 4
# TYPE switchyard_dht_lookups_total counter
switchyard_dht_lookups_total{kind="get",outcome="ok",transport="iroh"} 40
switchyard_dht_lookups_total{kind="get",outcome="not_found",transport="iroh"} 5
switchyard_dht_lookups_total{kind="put",outcome="error",transport="none"} 3
# TYPE switchyard_dht_routing_health gauge
switchyard_dht_routing_health 2
# TYPE switchyard_transport_health_score gauge
switchyard_transport_health_score{transport="libp2p"} 0.9
# TYPE switchyard_transport_health_state gauge
switchyard_transport_health_state{state="Healthy",transport="libp2p"} 1
switchyard_transport_health_state{state="Degraded",transport="libp2p"} 0
switchyard_transport_health_state{state="Healthy",transport="iroh"} 0
switchyard_transport_health_state{state="Unknown",transport="iroh"} 1
"#;

    #[test]
    fn an_agents_metrics_parse_into_counters_histograms_and_gauges() {
        let s = parse(AGENT).expect("parses");
        let iroh = &s.transports[1];
        assert_eq!((iroh.requests, iroh.errors), (100.0, 10.0));
        assert_eq!(iroh.buckets.len(), 4);
        assert_eq!(s.transports[0].requests, 200.0);
        assert_eq!(s.partition_risk, Some(0.25));
        assert_eq!(s.peers, [None, Some(4.0)]);
        assert_eq!(s.dht, (48.0, 3.0));
        assert_eq!(s.routing_health, Some(2.0));
        assert_eq!(s.transport_scores, [Some(0.9), None]);
        assert_eq!(s.transport_states, [Some("Healthy"), Some("Unknown")]);
    }

    #[test]
    fn garbage_and_nan_are_errors_with_a_reason() {
        let e = parse("<html>hello</html>\nnot metrics at all").expect_err("garbage");
        assert!(matches!(e, ScrapeError::NotMetrics(_)), "{e}");
        let nan = AGENT.replace(
            "{outcome=\"error\",transport=\"iroh\"} 10",
            "{outcome=\"error\",transport=\"iroh\"} NaN",
        );
        let e = parse(&nan).expect_err("NaN");
        assert!(e.to_string().contains("NaN"), "{e}");
        let negative = AGENT.replace("partition_risk 0.25", "partition_risk -1");
        assert!(matches!(parse(&negative), Err(ScrapeError::Invalid(_))));
        let health = AGENT.replace("routing_health 2", "routing_health 7");
        let e = parse(&health).expect_err("out of range");
        assert!(e.to_string().contains("above 2"), "{e}");
        let score = AGENT.replace("} 0.9", "} 1.5");
        let e = parse(&score).expect_err("score above 1");
        assert!(e.to_string().contains("above 1"), "{e}");
        let state = AGENT.replace("state=\"Unknown\"", "state=\"Splendid\"");
        let e = parse(&state).expect_err("unknown state");
        assert!(e.to_string().contains("Splendid"), "{e}");
    }

    #[test]
    fn windows_take_deltas_and_survive_a_restart() {
        let before = parse(AGENT).expect("parses").transports[1].clone();
        let mut after = before.clone();
        after.requests += 50.0;
        after.errors += 5.0;
        for b in &mut after.buckets {
            b.1 += 45.0;
        }
        let w = Window::between(&before, &after);
        assert_eq!((w.requests, w.errors), (50.0, 5.0));
        assert_eq!(w.error_rate(), Some(0.1));
        // The agent restarted: its counters start again from zero.
        let restarted = TransportCounters {
            requests: 7.0,
            errors: 1.0,
            buckets: vec![(0.001, 7.0), (f64::INFINITY, 7.0)],
        };
        let w = Window::between(&before, &restarted);
        assert_eq!((w.requests, w.errors), (7.0, 1.0));
    }

    #[test]
    fn quantiles_interpolate_within_buckets_like_prometheus() {
        let w = Window {
            requests: 100.0,
            errors: 0.0,
            buckets: vec![
                (0.001, 50.0),
                (0.01, 90.0),
                (0.1, 100.0),
                (f64::INFINITY, 100.0),
            ],
        };
        // p50 sits at the top of the first bucket; p95 halfway into the third.
        assert!((w.latency_ms(0.5).expect("p50") - 1.0).abs() < 1e-9);
        assert!((w.latency_ms(0.95).expect("p95") - 55.0).abs() < 1e-9);
        let mut merged = w.clone();
        merged.add(&w);
        assert_eq!(merged.requests, 200.0);
        assert!((merged.latency_ms(0.95).expect("p95") - 55.0).abs() < 1e-9);
        assert_eq!(Window::default().latency_ms(0.95), None);
    }
}
