//! Seed 001's health model, per transport, as pure functions of what the
//! node has measured. No data reads as [`HealthState::Unknown`], never as
//! healthy.
//!
//! - **Score** (0 to 1): 0.5 × success rate + 0.3 × latency score + 0.2 ×
//!   connection score, where the latency score falls linearly from 1 at
//!   0 ms to 0 at [`LATENCY_ZERO_AT`] and the connection score is the
//!   share of tracked peers connected on the transport. A part with no
//!   data (no requests sent yet, no peers tracked) is left out and the
//!   others are weighed among themselves; with no part at all the score
//!   is unknown.
//! - **State**: `Healthy` from [`HEALTHY_AT`], `Degraded` from
//!   [`DEGRADED_AT`], `Unhealthy` below, and `Unhealthy` whatever the
//!   score when peers are tracked on the transport but none is connected
//!   (no path works, however good the last measurements were).
//!   `Unknown` when the node does not run the transport or has no data.
//! - **Partition risk** (0 to 1): the share of known peers this node
//!   reaches on no transport; unknown with no known peers. The seed
//!   alerts at 0.7.

use std::time::Duration;

/// A latency at or beyond this scores 0 (the seed's iroh latency alert:
/// p95 over 500 ms).
pub const LATENCY_ZERO_AT: Duration = Duration::from_millis(500);
/// The lowest score that is `Healthy`.
pub const HEALTHY_AT: f64 = 0.8;
/// The lowest score that is `Degraded`.
pub const DEGRADED_AT: f64 = 0.5;

/// The weights of success rate, latency and connections.
const WEIGHTS: [f64; 3] = [0.5, 0.3, 0.2];

/// A transport's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HealthState {
    /// Score at or above [`HEALTHY_AT`].
    Healthy,
    /// Score at or above [`DEGRADED_AT`].
    Degraded,
    /// Score below [`DEGRADED_AT`], or no tracked peer connected.
    Unhealthy,
    /// Not running here, or nothing measured yet.
    Unknown,
}

impl HealthState {
    /// Every state.
    pub const ALL: [HealthState; 4] = [
        HealthState::Healthy,
        HealthState::Degraded,
        HealthState::Unhealthy,
        HealthState::Unknown,
    ];

    /// The name in metrics and `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Healthy => "Healthy",
            HealthState::Degraded => "Degraded",
            HealthState::Unhealthy => "Unhealthy",
            HealthState::Unknown => "Unknown",
        }
    }
}

/// What the node knows of one transport.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TransportFacts {
    /// The node's mode runs it.
    pub running: bool,
    /// Share of requests sent over it that were answered, if any were sent.
    pub success_rate: Option<f64>,
    /// Mean round trip over it, if measured.
    pub mean_latency: Option<Duration>,
    /// Peers tracked on it.
    pub peers: usize,
    /// Of those, connected.
    pub connected: usize,
}

/// A transport's health and its parts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TransportHealth {
    /// The weighted score, if anything was measured.
    pub score: Option<f64>,
    /// Its state.
    pub state: HealthState,
    /// The latency part, 0 to 1.
    pub latency_score: Option<f64>,
    /// The connection part, 0 to 1.
    pub connection_score: Option<f64>,
}

/// A transport's health from what the node knows of it.
pub fn transport_health(f: &TransportFacts) -> TransportHealth {
    let latency_score = f
        .mean_latency
        .map(|l| (1.0 - l.as_secs_f64() / LATENCY_ZERO_AT.as_secs_f64()).clamp(0.0, 1.0));
    let connection_score = (f.peers > 0).then(|| f.connected.min(f.peers) as f64 / f.peers as f64);
    let parts = [
        f.success_rate.map(|s| s.clamp(0.0, 1.0)),
        latency_score,
        connection_score,
    ];
    let (sum, weight) = parts
        .iter()
        .zip(WEIGHTS)
        .filter_map(|(p, w)| p.map(|p| (p * w, w)))
        .fold((0.0, 0.0), |(s, t), (p, w)| (s + p, t + w));
    let score = (f.running && weight > 0.0).then(|| sum / weight);
    let state = match score {
        None => HealthState::Unknown,
        Some(_) if f.peers > 0 && f.connected == 0 => HealthState::Unhealthy,
        Some(s) if s >= HEALTHY_AT => HealthState::Healthy,
        Some(s) if s >= DEGRADED_AT => HealthState::Degraded,
        Some(_) => HealthState::Unhealthy,
    };
    TransportHealth {
        score,
        state,
        latency_score,
        connection_score,
    }
}

/// The share of `known` peers reachable on no transport (`cut` of them);
/// unknown with none known.
pub fn partition_risk(known: usize, cut: usize) -> Option<f64> {
    (known > 0).then(|| cut.min(known) as f64 / known as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn facts(
        success: Option<f64>,
        latency: Option<Duration>,
        peers: usize,
        connected: usize,
    ) -> TransportFacts {
        TransportFacts {
            running: true,
            success_rate: success,
            mean_latency: latency,
            peers,
            connected,
        }
    }

    #[test]
    fn the_score_is_the_seeds_weighting() {
        // 0.5 × 0.9 + 0.3 × (1 − 100/500) + 0.2 × 3/4
        let h = transport_health(&facts(Some(0.9), Some(100 * MS), 4, 3));
        let want = 0.5 * 0.9 + 0.3 * 0.8 + 0.2 * 0.75;
        assert!((h.score.expect("score") - want).abs() < 1e-12, "{h:?}");
        assert_eq!(h.state, HealthState::Healthy);
        assert_eq!(h.latency_score, Some(0.8));
        assert_eq!(h.connection_score, Some(0.75));
        let slow = transport_health(&facts(Some(1.0), Some(900 * MS), 4, 4));
        assert_eq!(slow.latency_score, Some(0.0), "beyond the bound scores 0");
        assert!((slow.score.expect("score") - 0.7).abs() < 1e-12);
        assert_eq!(slow.state, HealthState::Degraded);
        let failing = transport_health(&facts(Some(0.2), Some(400 * MS), 4, 2));
        assert_eq!(failing.state, HealthState::Unhealthy);
    }

    #[test]
    fn no_data_is_unknown_not_healthy() {
        let h = transport_health(&facts(None, None, 0, 0));
        assert_eq!((h.score, h.state), (None, HealthState::Unknown));
        let idle = TransportFacts {
            running: false,
            ..facts(Some(1.0), Some(MS), 3, 3)
        };
        assert_eq!(
            transport_health(&idle).state,
            HealthState::Unknown,
            "not running here"
        );
        assert_eq!(partition_risk(0, 0), None);
    }

    #[test]
    fn missing_parts_are_left_out_and_the_rest_weighed_among_themselves() {
        // Peers connected but no request sent yet: latency and connections.
        let h = transport_health(&facts(None, Some(250 * MS), 2, 2));
        let want = (0.3 * 0.5 + 0.2 * 1.0) / 0.5;
        assert!((h.score.expect("score") - want).abs() < 1e-12, "{h:?}");
        // Only one transport has data: the other stays unknown.
        let only = transport_health(&facts(Some(1.0), None, 0, 0));
        assert_eq!((only.score, only.state), (Some(1.0), HealthState::Healthy));
    }

    #[test]
    fn all_peers_lost_is_unhealthy_whatever_the_last_measurements() {
        let h = transport_health(&facts(Some(1.0), Some(MS), 5, 0));
        assert!(
            h.score.expect("score") >= DEGRADED_AT,
            "the score alone: {h:?}"
        );
        assert_eq!(h.state, HealthState::Unhealthy);
        assert_eq!(partition_risk(5, 5), Some(1.0));
        assert_eq!(partition_risk(4, 1), Some(0.25));
    }
}
