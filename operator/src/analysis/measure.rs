//! One measurement of a subject's nodes: scrape each node's `/metrics`
//! (the only I/O here), then fold the samples against the previous scrape
//! into per-cohort windows, purely, with the time passed in.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;

use crate::dashboard::{AnalysisPoint, TransportPoint};
use crate::scrape::{self, NodeSample, ScrapeError, Window};

/// The largest `/metrics` body read from an agent.
pub const MAX_SCRAPE_BODY: usize = 4 * 1024 * 1024;

/// Scrapes in flight at once, per measurement.
const SCRAPES_IN_FLIGHT: usize = 16;

/// A node to scrape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    pub name: String,
    pub url: String,
    /// In the canary cohort (moved by the plan, or a MigrationCanary's trial node);
    /// else the baseline.
    pub canary: bool,
}

/// What one scrape of one node gave.
pub(super) type Scraped = (Target, Result<NodeSample, ScrapeError>);

/// Each node's previous sample and when it was taken.
pub(super) type Previous = HashMap<String, (NodeSample, Timestamp)>;

/// One window's data, per cohort.
#[derive(Debug, Clone)]
pub(super) struct Measurement {
    pub window_start: Timestamp,
    /// Per transport (libp2p, iroh): canary, baseline.
    pub canary: [Window; 2],
    pub baseline: [Window; 2],
    pub partition_risk: Option<f64>,
    /// The highest partition risk any of the subject's nodes reports.
    pub partition_risk_all: Option<f64>,
    pub min_peers: Option<f64>,
    /// The lowest health score of the canary nodes, and of all nodes.
    pub health: Option<f64>,
    pub health_all: Option<f64>,
    /// DHT operations in the window, (all, failed): canary, baseline.
    pub dht: [(f64, f64); 2],
    /// The lowest DHT routing health of the canary nodes.
    pub routing_health: Option<f64>,
    /// Nodes scraped in each cohort.
    pub canary_nodes: usize,
    pub baseline_nodes: usize,
    /// Each canary node's own window, per transport.
    pub per_node: Vec<(String, [Window; 2])>,
    pub scraped: usize,
    pub failed: Vec<String>,
}

impl Measurement {
    /// No scrape data (PromQL checks only).
    pub fn empty(now: Timestamp) -> Measurement {
        Measurement {
            window_start: now,
            canary: Default::default(),
            baseline: Default::default(),
            partition_risk: None,
            partition_risk_all: None,
            min_peers: None,
            health: None,
            health_all: None,
            dht: [(0.0, 0.0); 2],
            routing_health: None,
            canary_nodes: 0,
            baseline_nodes: 0,
            per_node: Vec::new(),
            scraped: 0,
            failed: Vec::new(),
        }
    }
}

impl Measurement {
    /// What the dashboard shows of this measurement, taken at `now`: both
    /// cohorts together, per transport.
    pub fn board_point(&self, now: Timestamp) -> AnalysisPoint {
        let seconds = now.duration_since(self.window_start).as_secs_f64();
        let transport = |i: usize| {
            let mut w = self.canary[i].clone();
            w.add(&self.baseline[i]);
            TransportPoint {
                requests_per_second: if seconds > 0.0 {
                    w.requests / seconds
                } else {
                    0.0
                },
                error_rate: w.error_rate(),
                p50_ms: w.latency_ms(0.50),
                p95_ms: w.latency_ms(0.95),
                p99_ms: w.latency_ms(0.99),
            }
        };
        AnalysisPoint {
            at: now.as_millisecond(),
            libp2p: transport(0),
            iroh: transport(1),
            lowest_health: self.health_all,
            partition_risk: self.partition_risk_all,
            routing_health: self.routing_health,
            canary_nodes: self.canary_nodes,
            baseline_nodes: self.baseline_nodes,
            failed_scrapes: self.failed.len(),
        }
    }
}

/// Scrape every target, a bounded number at once.
pub(super) async fn scrape_all(targets: Vec<Target>, timeout: Duration) -> Vec<Scraped> {
    futures::stream::iter(targets)
        .map(|t| async move {
            let r = scrape::scrape(&t.url, timeout, MAX_SCRAPE_BODY).await;
            (t, r)
        })
        .buffer_unordered(SCRAPES_IN_FLIGHT)
        .collect()
        .await
}

fn lowest(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn highest(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Fold one round of scrapes, taken at `now`, into a measurement against
/// `previous` (which then holds this round's samples). `None` when no node
/// had a previous sample and none failed: the first scrape of a step only
/// sets the starting point.
pub(super) fn fold(
    scraped: Vec<Scraped>,
    previous: &mut Previous,
    now: Timestamp,
) -> Option<Measurement> {
    let mut m = Measurement::empty(now);
    let mut any_window = false;
    for (target, r) in scraped {
        let sample = match r {
            Ok(s) => s,
            Err(e) => {
                m.failed.push(format!("{}: {e}", target.name));
                continue;
            }
        };
        gauges(&mut m, target.canary, &sample);
        if let Some((before, at)) = previous.get(&target.name) {
            any_window = true;
            m.window_start = m.window_start.min(*at);
            windows(&mut m, &target, before, &sample);
        }
        previous.insert(target.name, (sample, now));
    }
    (any_window || !m.failed.is_empty()).then_some(m)
}

/// The gauges of one node's sample: health, partition risk, peers.
fn gauges(m: &mut Measurement, canary: bool, sample: &NodeSample) {
    m.scraped += 1;
    if canary {
        m.canary_nodes += 1;
    } else {
        m.baseline_nodes += 1;
    }
    m.health_all = lowest(m.health_all, sample.health_score);
    m.partition_risk_all = highest(m.partition_risk_all, sample.partition_risk);
    if canary {
        m.health = lowest(m.health, sample.health_score);
        m.routing_health = lowest(m.routing_health, sample.routing_health);
        m.partition_risk = highest(m.partition_risk, sample.partition_risk);
        let peers: f64 = sample.peers.iter().flatten().sum();
        m.min_peers = lowest(m.min_peers, Some(peers));
    }
}

/// The counters between a node's previous sample and this one, added to
/// its cohort.
fn windows(m: &mut Measurement, target: &Target, before: &NodeSample, sample: &NodeSample) {
    let windows: [Window; 2] =
        std::array::from_fn(|i| Window::between(&before.transports[i], &sample.transports[i]));
    for (i, w) in windows.iter().enumerate() {
        if target.canary {
            m.canary[i].add(w);
        } else {
            m.baseline[i].add(w);
        }
    }
    if target.canary {
        m.per_node.push((target.name.clone(), windows));
    }
    let (b, a) = (before.dht, sample.dht);
    // Counters that went down: the agent restarted.
    let d = if a.0 < b.0 {
        a
    } else {
        (a.0 - b.0, (a.1 - b.1).max(0.0))
    };
    let cohort = &mut m.dht[usize::from(!target.canary)];
    cohort.0 += d.0;
    cohort.1 += d.1;
}
