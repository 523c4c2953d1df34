//! The live dashboard: what a person watching a migration wants on one
//! screen, served by every replica on the operator's HTTP port (`/` a
//! page, `/api/v1/…` JSON, `/ws` pushes; see [`serve`]).
//!
//! Its data:
//! - plans and FleetNodes from watches every replica runs (so a standby
//!   shows them too);
//! - the analysis's scrapes, which only the leader takes: per transport
//!   request rate, error rate and latency per plan, and each scraped
//!   agent's own health report (score and state per transport, partition
//!   risk, DHT routing health);
//! - the fleet by mode over time, sampled from the FleetNode store.
//!
//! The [`Board`] keeps the histories, each bounded; building a
//! [`Snapshot`] from it is pure, with the time passed in.

pub mod serve;
mod snapshot;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use switchyard_crds::FleetNode;
use switchyard_crds::plan::ModeCounts;
use tokio::sync::watch;

pub use snapshot::{
    FleetView, HealthView, PlanView, Snapshot, SubjectHistory, TransportSummary, snapshot,
};

use crate::scrape::NodeSample;

/// Analysis points kept per plan: at the default 30 s interval, two hours.
pub const ANALYSIS_POINTS: usize = 240;
/// Fleet samples kept: at one per [`FLEET_EVERY`], one hour.
pub const FLEET_POINTS: usize = 720;
/// How often the fleet by mode is sampled.
pub const FLEET_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// A node's health report older than this is dropped (the analysis no
/// longer scrapes it).
pub const HEALTH_STALE_MILLIS: i64 = 10 * 60 * 1000;

/// One transport over one analysis window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransportPoint {
    /// Requests the scraped nodes sent per second.
    pub requests_per_second: f64,
    /// Failed share of them; `None` without requests.
    pub error_rate: Option<f64>,
    /// Latency percentiles in milliseconds; `None` without observations.
    pub p50_ms: Option<f64>,
    /// 95th percentile.
    pub p95_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
}

/// One analysis measurement of one plan, over all its scraped nodes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisPoint {
    /// When it was taken, in Unix milliseconds.
    pub at: i64,
    /// The libp2p transport.
    pub libp2p: TransportPoint,
    /// The iroh transport.
    pub iroh: TransportPoint,
    /// The lowest agent health score.
    pub lowest_health: Option<f64>,
    /// The highest partition risk.
    pub partition_risk: Option<f64>,
    /// The lowest DHT routing health of the canary nodes (2 Healthy, 1
    /// Degraded, 0 Failed).
    pub routing_health: Option<f64>,
    /// Nodes scraped in the canary cohort and in the baseline.
    pub canary_nodes: usize,
    /// Baseline nodes scraped.
    pub baseline_nodes: usize,
    /// Scrapes that failed.
    pub failed_scrapes: usize,
}

/// One transport as one agent reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransportHealth {
    /// Seed 001's score, 0-1; `None` while the agent does not know.
    pub score: Option<f64>,
    /// Healthy, Degraded, Unhealthy or Unknown.
    pub state: Option<String>,
    /// Connected peers.
    pub peers: Option<f64>,
}

/// One agent's own health report, from its latest scrape.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeHealth {
    /// The FleetNode's namespace.
    pub namespace: String,
    /// The FleetNode's name.
    pub name: String,
    /// When it was scraped, in Unix milliseconds.
    pub at: i64,
    /// The agent's overall health score, 0-1.
    pub score: Option<f64>,
    /// libp2p.
    pub libp2p: TransportHealth,
    /// iroh.
    pub iroh: TransportHealth,
    /// Share of known peers reachable on no transport both sides allow.
    pub partition_risk: Option<f64>,
    /// DHT routing health (2 Healthy, 1 Degraded, 0 Failed).
    pub routing_health: Option<f64>,
}

impl NodeHealth {
    /// The report in `sample` of node `ns/name`, scraped at `at`.
    pub fn of(ns: &str, name: &str, sample: &NodeSample, at: Timestamp) -> NodeHealth {
        let t = |i: usize| TransportHealth {
            score: sample.transport_scores[i],
            state: sample.transport_states[i].map(str::to_owned),
            peers: sample.peers[i],
        };
        NodeHealth {
            namespace: ns.to_owned(),
            name: name.to_owned(),
            at: at.as_millisecond(),
            score: sample.health_score,
            libp2p: t(0),
            iroh: t(1),
            partition_risk: sample.partition_risk,
            routing_health: sample.routing_health,
        }
    }
}

/// The fleet by applied mode at one time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetPoint {
    /// Unix milliseconds.
    pub at: i64,
    /// Nodes by applied mode (nodes that report none are not counted).
    pub by_mode: ModeCounts,
    /// Nodes that have not acknowledged their spec yet.
    pub switching: u32,
}

impl FleetPoint {
    /// Count `nodes` at `now`.
    pub fn of<'a>(nodes: impl IntoIterator<Item = &'a FleetNode>, now: Timestamp) -> FleetPoint {
        let mut p = FleetPoint {
            at: now.as_millisecond(),
            ..Default::default()
        };
        for n in nodes {
            if let Some(m) = n.applied_mode() {
                p.by_mode.add(m);
            }
            if !n.acknowledged() {
                p.switching += 1;
            }
        }
        p
    }
}

#[derive(Default)]
struct State {
    /// Per plan (`ns/name`), oldest first.
    analysis: BTreeMap<String, VecDeque<AnalysisPoint>>,
    /// Per node (`ns`, `name`).
    health: BTreeMap<(String, String), NodeHealth>,
    fleet: VecDeque<FleetPoint>,
}

/// The dashboard's histories, shared by the analysis (which records into
/// it) and the HTTP handlers (which read it). Every change bumps a
/// version the `/ws` pushes follow.
pub struct Board {
    state: Mutex<State>,
    version: watch::Sender<u64>,
}

impl Default for Board {
    fn default() -> Self {
        Board {
            state: Mutex::default(),
            version: watch::channel(0).0,
        }
    }
}

fn push_bounded<T>(q: &mut VecDeque<T>, item: T, cap: usize) {
    if q.len() >= cap {
        q.pop_front();
    }
    q.push_back(item);
}

impl Board {
    /// An empty board.
    pub fn new() -> Arc<Board> {
        Arc::new(Board::default())
    }

    /// Something changed: wake the `/ws` pushers.
    pub fn touch(&self) {
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// A receiver that sees every [`Board::touch`].
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Record a measurement of plan `subject` (`ns/name`).
    pub fn analysed(&self, subject: &str, point: AnalysisPoint) {
        {
            let mut s = self.state.lock().expect("board lock");
            let q = s.analysis.entry(subject.to_owned()).or_default();
            push_bounded(q, point, ANALYSIS_POINTS);
        }
        self.touch();
    }

    /// Record agents' health reports.
    pub fn reported(&self, reports: impl IntoIterator<Item = NodeHealth>) {
        {
            let mut s = self.state.lock().expect("board lock");
            for r in reports {
                s.health.insert((r.namespace.clone(), r.name.clone()), r);
            }
        }
        self.touch();
    }

    /// Forget the analysis of plans `live` says are gone.
    pub fn retain_subjects(&self, live: impl Fn(&str) -> bool) {
        self.state
            .lock()
            .expect("board lock")
            .analysis
            .retain(|k, _| live(k));
    }

    /// Sample the fleet at `now`, and drop the health reports of nodes
    /// that are gone or no longer scraped.
    pub fn sample_fleet(&self, nodes: &[Arc<FleetNode>], now: Timestamp) {
        let point = FleetPoint::of(nodes.iter().map(|n| n.as_ref()), now);
        {
            let mut s = self.state.lock().expect("board lock");
            let present: std::collections::HashSet<(String, String)> = nodes
                .iter()
                .map(|n| {
                    (
                        n.metadata.namespace.clone().unwrap_or_default(),
                        n.metadata.name.clone().unwrap_or_default(),
                    )
                })
                .collect();
            let oldest = now.as_millisecond() - HEALTH_STALE_MILLIS;
            s.health
                .retain(|k, h| present.contains(k) && h.at >= oldest);
            let changed = s.fleet.back().is_none_or(|last| {
                last.by_mode != point.by_mode || last.switching != point.switching
            });
            push_bounded(&mut s.fleet, point, FLEET_POINTS);
            if !changed {
                return;
            }
        }
        self.touch();
    }

    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.lock().expect("board lock"))
    }
}

#[cfg(test)]
mod tests;
