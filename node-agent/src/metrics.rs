//! The node's Prometheus metrics, all in one registry, with a `transport`
//! label where one applies. The health logic reads success rate and mean
//! latency per transport from here too.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use switchyard_crds::NetworkMode;

use crate::stack::{PerTransport, Transport};

/// One transport's series, resolved once so the request path does not
/// look labels up.
#[derive(Clone)]
pub struct TransportMetrics {
    /// Requests answered.
    pub ok: prometheus::IntCounter,
    /// Requests refused by the peer's application.
    pub refused: prometheus::IntCounter,
    /// Requests the peer turned away because the transport was retiring.
    pub retiring: prometheus::IntCounter,
    /// Requests that failed (connection, timeout, protocol).
    pub error: prometheus::IntCounter,
    /// Round trips of answered requests.
    pub latency: prometheus::Histogram,
    /// Payload bytes sent.
    pub bytes_sent: prometheus::IntCounter,
    /// Payload bytes received.
    pub bytes_received: prometheus::IntCounter,
    /// Hedges sent on this transport.
    pub hedges: prometheus::IntCounter,
    /// Connections refused because the peer is not on the allowlist.
    pub rejected: prometheus::IntCounter,
    /// Sends failed on purpose by fault injection.
    pub injected: prometheus::IntCounter,
    /// Malformed frames from peers (each drops its connection).
    pub malformed_frames: prometheus::IntCounter,
    /// Peers' address adverts refused (not JSON, or too big).
    pub bad_adverts: prometheus::IntCounter,
}

/// Every metric a node exports.
#[derive(Clone)]
pub struct NodeMetrics {
    registry: Registry,
    per_transport: PerTransport<TransportMetrics>,
    /// Requests sent, by transport and outcome (`ok`, `refused`,
    /// `retiring`, `error`).
    pub requests: IntCounterVec,
    /// Round-trip time of answered requests, by transport.
    pub latency: HistogramVec,
    /// Payload bytes sent, by transport.
    pub bytes_sent: IntCounterVec,
    /// Payload bytes received, by transport.
    pub bytes_received: IntCounterVec,
    /// Peers connected on each transport.
    pub peers: IntGaugeVec,
    /// Peers connected on both transports.
    pub dual_peers: IntGauge,
    /// 1 for the current mode, 0 for the others.
    pub mode: IntGaugeVec,
    /// Mode switches made.
    pub mode_switches: prometheus::IntCounter,
    /// Second sends of a request on the other transport because the
    /// first had not answered within the hedge delay, by the transport of
    /// the second send.
    pub hedges: IntCounterVec,
    /// Requests sent again after every transport failed transiently.
    pub retries: prometheus::IntCounter,
    /// Requests sent by application protocol (the probe, the DHT, the
    /// workload's), by protocol, transport and outcome.
    pub protocol_requests: IntCounterVec,
    /// The protocol label values in use, at most [`MAX_PROTOCOL_LABELS`].
    protocols: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

/// Distinct `protocol` label values; past it, a protocol is `other`.
pub const MAX_PROTOCOL_LABELS: usize = 32;

impl NodeMetrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let per_transport = &["transport"];
        let requests = counters(
            r,
            "requests_total",
            "Requests sent, by outcome",
            &["transport", "outcome"],
        );
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_node_request_duration_seconds",
                "Round trip of answered requests",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            per_transport,
        )
        .expect("valid metric");
        register(r, latency.clone());
        let bytes_sent = counters(r, "bytes_sent_total", "Payload bytes sent", per_transport);
        let bytes_received = counters(
            r,
            "bytes_received_total",
            "Payload bytes received",
            per_transport,
        );
        let peers = IntGaugeVec::new(
            Opts::new("switchyard_node_peers", "Peers connected, per transport"),
            per_transport,
        )
        .expect("valid metric");
        register(r, peers.clone());
        let dual_peers = IntGauge::new(
            "switchyard_node_dual_stack_peers",
            "Peers connected on both transports",
        )
        .expect("valid metric");
        register(r, dual_peers.clone());
        let mode = IntGaugeVec::new(
            Opts::new("switchyard_node_mode", "1 for the current NetworkMode"),
            &["mode"],
        )
        .expect("valid metric");
        register(r, mode.clone());
        let mode_switches = counter(r, "mode_switches_total", "Mode switches");
        let hedges = counters(
            r,
            "hedged_requests_total",
            "Requests also sent on the other transport after the hedge delay",
            per_transport,
        );
        let retries = counter(
            r,
            "request_retries_total",
            "Requests sent again after every transport failed transiently",
        );
        let rejected = counters(
            r,
            "auth_rejections_total",
            "Connections refused because the peer is not on the allowlist",
            per_transport,
        );
        let injected = counters(
            r,
            "injected_faults_total",
            "Sends failed on purpose by fault injection (also counted as errors)",
            per_transport,
        );
        let malformed = counters(
            r,
            "malformed_total",
            "Malformed input from peers, dropped: kind frame (a frame or envelope that does not parse; its connection is dropped) or advert (a pong's address advert that is not JSON or too big). DHT messages: switchyard_dht_malformed_messages_total",
            &["transport", "kind"],
        );
        let protocol_requests = counters(
            r,
            "protocol_requests_total",
            "Requests sent, by application protocol, the transport that answered (none when none did) and outcome (ok, refused, error)",
            &["protocol", "transport", "outcome"],
        );
        let resolve = |t: Transport| {
            let l = t.as_str();
            TransportMetrics {
                ok: requests.with_label_values(&[l, "ok"]),
                refused: requests.with_label_values(&[l, "refused"]),
                retiring: requests.with_label_values(&[l, "retiring"]),
                error: requests.with_label_values(&[l, "error"]),
                latency: latency.with_label_values(&[l]),
                bytes_sent: bytes_sent.with_label_values(&[l]),
                bytes_received: bytes_received.with_label_values(&[l]),
                hedges: hedges.with_label_values(&[l]),
                rejected: rejected.with_label_values(&[l]),
                injected: injected.with_label_values(&[l]),
                malformed_frames: malformed.with_label_values(&[l, "frame"]),
                bad_adverts: malformed.with_label_values(&[l, "advert"]),
            }
        };
        NodeMetrics {
            per_transport: PerTransport::from_fn(resolve),
            registry,
            requests,
            latency,
            bytes_sent,
            bytes_received,
            peers,
            dual_peers,
            mode,
            mode_switches,
            hedges,
            retries,
            protocol_requests,
            protocols: Default::default(),
        }
    }

    /// Count a request on `protocol`: answered over `transport`, or not.
    pub fn count_protocol(&self, protocol: &str, transport: Option<Transport>, outcome: &str) {
        let name = {
            let mut seen = self.protocols.lock().expect("protocols lock");
            if seen.contains(protocol) {
                protocol
            } else if seen.len() < MAX_PROTOCOL_LABELS {
                seen.insert(protocol.to_owned());
                protocol
            } else {
                "other"
            }
        };
        let t = transport.map_or("none", Transport::as_str);
        self.protocol_requests
            .with_label_values(&[name, t, outcome])
            .inc();
    }

    /// The registry, for other parts of the agent to add their metrics to.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// One transport's series.
    pub fn of(&self, t: Transport) -> &TransportMetrics {
        &self.per_transport[t]
    }

    /// Show `current` as the mode.
    pub fn set_mode(&self, current: NetworkMode) {
        for m in NetworkMode::ALL {
            self.mode
                .with_label_values(&[m.as_str()])
                .set(i64::from(m == current));
        }
    }

    /// Share of requests over `t` that were answered, if any were sent.
    pub fn success_rate(&self, t: Transport) -> Option<f64> {
        let get = |o: &str| self.requests.with_label_values(&[t.as_str(), o]).get() as f64;
        let (ok, refused, error) = (get("ok"), get("refused"), get("error"));
        let total = ok + refused + error;
        (total > 0.0).then(|| ok / total)
    }

    /// Mean round trip over `t`, if any request was answered.
    pub fn mean_latency(&self, t: Transport) -> Option<std::time::Duration> {
        let h = self.latency.with_label_values(&[t.as_str()]);
        let n = h.get_sample_count();
        (n > 0).then(|| std::time::Duration::from_secs_f64(h.get_sample_sum() / n as f64))
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for NodeMetrics {
    fn default() -> Self {
        NodeMetrics::new()
    }
}

/// Register `metric` in `r`; names are unique by construction.
fn register<M: prometheus::core::Collector + 'static>(r: &Registry, metric: M) {
    r.register(Box::new(metric))
        .expect("metric names are unique");
}

/// A registered counter `switchyard_node_<name>` with `labels`.
fn counters(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(format!("switchyard_node_{name}"), help), labels)
        .expect("valid metric");
    register(r, c.clone());
    c
}

/// A registered counter `switchyard_node_<name>` without labels.
fn counter(r: &Registry, name: &str, help: &str) -> prometheus::IntCounter {
    let c =
        prometheus::IntCounter::new(format!("switchyard_node_{name}"), help).expect("valid metric");
    register(r, c.clone());
    c
}
