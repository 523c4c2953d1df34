//! The node-agent on Kubernetes: registers the node's FleetNode, applies
//! `spec.mode` through the transport's live switch, reports status, serves
//! `/metrics`, `/healthz`, `/readyz` and `/status`, sends probe requests so
//! health metrics exist without application traffic, and shuts down
//! cleanly on SIGTERM.
//!
//! The mode is never defaulted behind the operator's back: at start the
//! agent reads its FleetNode first (retrying while the API server is
//! unreachable) and starts its stacks in the mode found there; only a
//! FleetNode that does not exist yet gets the configured initial mode.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt as _;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use libp2p::PeerId;
use serde_json::json;
use switchyard_crds::{ANNOTATION_INJECT_FAULTS, FleetNode, NetworkMode, RoutingStrategy};

use crate::bridge::{Node, NodeConfig};
use crate::identity::Identity;
use crate::manager::{ManagerConfig, PeerManager, PeerState};
use crate::stack::{Handler, Transport};
use crate::wire::Envelope;

/// What the agent needs to run; see the binary's flags.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The FleetNode's name (the pod's name).
    pub name: String,
    /// The namespace of the FleetNode (the pod's).
    pub namespace: String,
    /// The address peers and the operator reach this pod at.
    pub pod_ip: IpAddr,
    /// The Kubernetes node it runs on, recorded as a label.
    pub node_name: Option<String>,
    /// The mode of a FleetNode this agent creates.
    pub initial_mode: NetworkMode,
    /// Where the identity secret lives: a file.
    pub identity_file: Option<PathBuf>,
    /// Where the identity secret lives: a Kubernetes Secret, created when
    /// missing.
    pub identity_secret: Option<String>,
    /// libp2p TCP port (0: any).
    pub libp2p_port: u16,
    /// iroh UDP port (0: any).
    pub iroh_port: u16,
    /// Address of the HTTP server.
    pub http_addr: SocketAddr,
    /// Bootstrap peers.
    pub bootstrap: Vec<String>,
    /// Connected peers needed for `/readyz`.
    pub min_peers: usize,
    /// Probe requests per second to random known peers (0: none).
    pub probe_rate: f64,
    /// How long SIGTERM may take.
    pub shutdown_timeout: Duration,
    /// Peer management settings (its `bootstrap` is replaced by the one
    /// above).
    pub manager: ManagerConfig,
    /// Transport settings (the listen addresses are replaced by `pod_ip`
    /// and the ports above).
    pub node: NodeConfig,
    /// Honour the FleetNode's `switchyard.dev/inject-faults` annotation.
    pub allow_fault_injection: bool,
}

impl AgentConfig {
    /// The agent of FleetNode `name` in `namespace`, with the defaults:
    /// listening on 0.0.0.0 (libp2p TCP 4001, iroh UDP 4002, HTTP 9090),
    /// creating its FleetNode in LibP2pOnly, an identity in memory only,
    /// no bootstrap peers, ready with 0 peers, 1 probe per second, 10 s to
    /// shut down, no fault injection, and the defaults of
    /// [`ManagerConfig`] and [`NodeConfig`].
    pub fn new(name: impl Into<String>, namespace: impl Into<String>) -> Self {
        AgentConfig {
            name: name.into(),
            namespace: namespace.into(),
            pod_ip: IpAddr::from([0, 0, 0, 0]),
            node_name: None,
            initial_mode: NetworkMode::LibP2pOnly,
            identity_file: None,
            identity_secret: None,
            libp2p_port: 4001,
            iroh_port: 4002,
            http_addr: SocketAddr::from(([0, 0, 0, 0], 9090)),
            bootstrap: Vec::new(),
            min_peers: 0,
            probe_rate: 1.0,
            shutdown_timeout: Duration::from_secs(10),
            manager: ManagerConfig::default(),
            node: NodeConfig::default(),
            allow_fault_injection: false,
        }
    }
}

/// The failure rates an `inject-faults` annotation asks for: (libp2p,
/// iroh). Absent means none.
pub fn parse_faults(value: Option<&str>) -> Result<(f64, f64), String> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok((0.0, 0.0));
    };
    let (mut libp2p, mut iroh) = (0.0, 0.0);
    for part in value.split(',') {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            format!("{ANNOTATION_INJECT_FAULTS} entry {part:?} is not <transport>=<rate>, e.g. libp2p=0.5")
        })?;
        let rate: f64 = v
            .trim()
            .parse()
            .ok()
            .filter(|r: &f64| (0.0..=1.0).contains(r))
            .ok_or_else(|| {
                format!("{ANNOTATION_INJECT_FAULTS} rate {v:?} is not a number from 0 to 1")
            })?;
        match k.trim() {
            "libp2p" => libp2p = rate,
            "iroh" => iroh = rate,
            "all" => (libp2p, iroh) = (rate, rate),
            other => {
                return Err(format!(
                    "{ANNOTATION_INJECT_FAULTS} transport {other:?} is not libp2p, iroh or all"
                ));
            }
        }
    }
    Ok((libp2p, iroh))
}

/// Answers probes and application requests alike with their payload.
struct EchoHandler;

impl Handler for EchoHandler {
    fn handle(
        &self,
        _: PeerId,
        _: Transport,
        request: Envelope,
    ) -> BoxFuture<'static, Result<Bytes, String>> {
        Box::pin(async move { Ok(request.payload) })
    }
    fn mode(&self) -> NetworkMode {
        NetworkMode::LibP2pOnly
    }
}

/// The agent's own metrics, in the node's registry.
#[derive(Clone)]
struct AgentMetrics {
    probes: prometheus::IntCounterVec,
    api_errors: prometheus::IntCounter,
    switch_seconds: prometheus::Histogram,
    partition_risk: prometheus::Gauge,
    health_score: prometheus::Gauge,
}

impl AgentMetrics {
    fn new(node: &Node) -> Self {
        let probes = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "switchyard_agent_probes_total",
                "Probe requests to random known peers, by outcome",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let api_errors = prometheus::IntCounter::new(
            "switchyard_agent_api_errors_total",
            "Failed calls to the Kubernetes API",
        )
        .expect("valid metric");
        let switch_seconds = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "switchyard_agent_mode_switch_seconds",
                "Time to apply a new spec.mode",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]),
        )
        .expect("valid metric");
        let partition_risk = prometheus::Gauge::new(
            "switchyard_agent_partition_risk",
            "Share of known peers reachable on no transport both sides allow (0..1)",
        )
        .expect("valid metric");
        let health_score = prometheus::Gauge::new(
            "switchyard_agent_health_score",
            "Share of probes answered over the last 30 s times (1 - partition risk), 0..1",
        )
        .expect("valid metric");
        health_score.set(1.0);
        let r = node.metrics().registry();
        let _ = r.register(Box::new(partition_risk.clone()));
        let _ = r.register(Box::new(health_score.clone()));
        let _ = r.register(Box::new(probes.clone()));
        let _ = r.register(Box::new(api_errors.clone()));
        let _ = r.register(Box::new(switch_seconds.clone()));
        AgentMetrics {
            probes,
            api_errors,
            switch_seconds,
            partition_risk,
            health_score,
        }
    }
}

fn fleet_nodes(client: &kube::Client, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        namespace,
        &ApiResource::erase::<FleetNode>(&()),
    )
}

/// What `spec.mode` says: absent, a mode, or a value this agent does not
/// know (written around validation).
#[derive(Debug, Clone, PartialEq)]
enum Wanted {
    Unset,
    Mode(NetworkMode),
    Unknown(String),
}

fn wanted(obj: &DynamicObject) -> Wanted {
    match obj.data.pointer("/spec/mode") {
        None | Some(serde_json::Value::Null) => Wanted::Unset,
        Some(serde_json::Value::String(s)) => match s.parse::<NetworkMode>() {
            Ok(m) => Wanted::Mode(m),
            Err(_) => Wanted::Unknown(s.clone()),
        },
        Some(other) => Wanted::Unknown(other.to_string()),
    }
}

/// The watch's retry delays: 0.2 s doubling to 5 s, ±20%. kube's default
/// grows to 30 s, which after a long API outage would leave the agent deaf
/// for up to half a minute after the server is back.
struct WatchBackoff {
    next: Duration,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff {
            next: Duration::from_millis(200),
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        use std::hash::{BuildHasher, Hasher};
        let now = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(5));
        let r = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let unit = (r >> 11) as f64 / (1u64 << 53) as f64;
        Some(now.mul_f64(0.8 + 0.4 * unit))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        *self = WatchBackoff::default();
    }
}

/// Retry `f` with backoff (0.2 s doubling to 5 s) until it succeeds.
async fn retrying<T, F, Fut>(what: &str, metrics: Option<&AgentMetrics>, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut delay = Duration::from_millis(200);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                if let Some(m) = metrics {
                    m.api_errors.inc();
                }
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?delay, "{what}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn load_identity(client: &kube::Client, config: &AgentConfig) -> anyhow::Result<Identity> {
    if let Some(path) = &config.identity_file {
        return Identity::load_or_generate(path)
            .with_context(|| format!("identity file {}", path.display()));
    }
    let Some(name) = &config.identity_secret else {
        tracing::warn!("no --identity-file or --identity-secret: a new identity each start");
        return Ok(Identity::generate());
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &config.namespace);
    if let Some(s) = secrets.get_opt(name).await? {
        let raw = s
            .data
            .as_ref()
            .and_then(|d| d.get("ed25519"))
            .with_context(|| format!("Secret {name} has no key ed25519"))?;
        let secret: [u8; 32] = raw.0.as_slice().try_into().map_err(|_| {
            anyhow::anyhow!(
                "Secret {name} key ed25519 holds {} bytes; it must hold 32",
                raw.0.len()
            )
        })?;
        return Ok(Identity::from_secret(secret));
    }
    let identity = Identity::generate();
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "ed25519".to_owned(),
            k8s_openapi::ByteString(identity.secret_bytes().to_vec()),
        )])),
        type_: Some("Opaque".into()),
        ..Default::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(identity),
        // Another start created it first: use that one.
        Err(kube::Error::Api(e)) if e.code == 409 => Box::pin(load_identity(client, config)).await,
        Err(e) => Err(e).with_context(|| format!("creating Secret {name}")),
    }
}

/// Find or create this agent's FleetNode; the mode to start in.
async fn register(
    client: &kube::Client,
    config: &AgentConfig,
) -> anyhow::Result<(NetworkMode, Option<String>)> {
    let api = fleet_nodes(client, &config.namespace);
    if let Some(existing) = api.get_opt(&config.name).await? {
        return Ok(match wanted(&existing) {
            Wanted::Mode(m) => (m, None),
            Wanted::Unset => (
                existing
                    .data
                    .pointer("/status/appliedMode")
                    .and_then(|v| v.as_str())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(config.initial_mode),
                None,
            ),
            // Keep what it last ran, if it says.
            Wanted::Unknown(v) => (
                existing
                    .data
                    .pointer("/status/appliedMode")
                    .and_then(|v| v.as_str())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(config.initial_mode),
                Some(v),
            ),
        });
    }
    // Labels from the pod, so plans can select by them.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &config.namespace);
    let mut labels = match pods.get_opt(&config.name).await {
        Ok(Some(p)) => p.metadata.labels.unwrap_or_default(),
        _ => BTreeMap::new(),
    };
    if let Some(n) = &config.node_name {
        labels.insert("switchyard.dev/k8s-node".into(), n.clone());
    }
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "switchyard.dev/v1alpha1",
        "kind": "FleetNode",
        "metadata": {"name": config.name, "labels": labels},
        "spec": {"mode": config.initial_mode},
    }))?;
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => Ok((config.initial_mode, None)),
        Err(kube::Error::Api(e)) if e.code == 409 => Box::pin(register(client, config)).await,
        Err(e) => Err(e).context("creating the FleetNode"),
    }
}

/// The health summary `/status` serves.
fn status_json(node: &Node, peers: &[crate::manager::PeerStatus]) -> serde_json::Value {
    let m = node.metrics();
    let mut transports = serde_json::Map::new();
    for t in [Transport::LibP2p, Transport::Iroh] {
        let tracked: Vec<_> = peers.iter().filter_map(|p| p.state(t)).collect();
        let connected = tracked
            .iter()
            .filter(|s| **s == PeerState::Connected)
            .count();
        let success = m.success_rate(t);
        let latency = m.mean_latency(t);
        // The seed's weighting: 0.5 success + 0.3 latency + 0.2 connection.
        let latency_score = latency.map(|l| (1.0 - l.as_secs_f64() / 0.5).clamp(0.0, 1.0));
        let connection_score = if tracked.is_empty() {
            None
        } else {
            Some(connected as f64 / tracked.len() as f64)
        };
        let score = 0.5 * success.unwrap_or(1.0)
            + 0.3 * latency_score.unwrap_or(1.0)
            + 0.2 * connection_score.unwrap_or(1.0);
        transports.insert(
            t.as_str().into(),
            json!({
                "peers": tracked.len(),
                "connected": connected,
                "successRate": success,
                "meanLatencyMs": latency.map(|l| l.as_secs_f64() * 1000.0),
                "healthScore": score,
            }),
        );
    }
    json!({
        "mode": node.mode(),
        "transports": transports,
        "partitionRisk": partition_risk(peers),
    })
}

/// The window of the health score's probe success rate, in seconds.
const HEALTH_WINDOW_SECS: usize = 30;

/// The agent's health: the share of its probes answered in the window
/// (1 when it sent none) times the share of known peers it can still
/// reach (1 - partition risk). 1 is healthy, 0 is cut off or failing.
pub fn health_score(probes_ok: f64, probes_failed: f64, partition_risk: f64) -> f64 {
    let sent = probes_ok + probes_failed;
    let answered = if sent > 0.0 { probes_ok / sent } else { 1.0 };
    (answered * (1.0 - partition_risk)).clamp(0.0, 1.0)
}

/// The share of known peers unreachable on every transport both sides
/// allow (0 when there are none).
pub fn partition_risk(peers: &[crate::manager::PeerStatus]) -> f64 {
    let known: Vec<_> = peers
        .iter()
        .filter(|p| p.libp2p.is_some() || p.iroh.is_some())
        .collect();
    if known.is_empty() {
        return 0.0;
    }
    let cut = known
        .iter()
        .filter(|p| {
            [Transport::LibP2p, Transport::Iroh]
                .iter()
                .all(|t| p.state(*t) != Some(PeerState::Connected))
        })
        .count();
    cut as f64 / known.len() as f64
}

struct Shared {
    node: Arc<Node>,
    manager: PeerManager,
    min_peers: usize,
    stopping: AtomicBool,
}

async fn serve_http(
    addr: SocketAddr,
    shared: Arc<Shared>,
) -> anyhow::Result<(SocketAddr, BoxFuture<'static, ()>)> {
    use axum::routing::get;
    use axum::{Json, Router, http::StatusCode};
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get({
                let s = shared.clone();
                move || async move { s.node.metrics().render() }
            }),
        )
        .route(
            "/readyz",
            get({
                let s = shared.clone();
                move || async move {
                    if s.stopping.load(Ordering::SeqCst) {
                        return (StatusCode::SERVICE_UNAVAILABLE, "stopping".to_owned());
                    }
                    let peers = s.manager.status().await;
                    let connected = peers
                        .iter()
                        .filter(|p| {
                            p.state(Transport::LibP2p) == Some(PeerState::Connected)
                                || p.state(Transport::Iroh) == Some(PeerState::Connected)
                        })
                        .count();
                    let addr = s.node.addr();
                    let mode = s.node.mode();
                    let stacks_up = (!mode.has_libp2p() || !addr.libp2p.is_empty())
                        && (!mode.has_iroh() || addr.iroh.is_some());
                    if !stacks_up {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("the stacks of {mode} are not up"),
                        )
                    } else if connected < s.min_peers {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("{connected} peers connected; {} needed", s.min_peers),
                        )
                    } else {
                        (StatusCode::OK, "ready".to_owned())
                    }
                }
            }),
        )
        .route(
            "/status",
            get({
                let s = shared.clone();
                move || async move {
                    let peers = s.manager.status().await;
                    Json(status_json(&s.node, &peers))
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the HTTP server to {addr}"))?;
    let bound = listener.local_addr()?;
    let server = Box::pin(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((bound, server))
}

fn condition(type_: &str, ok: bool, reason: &str, message: &str, generation: i64) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: Some(generation),
        last_transition_time: Time(jiff_now()),
    }
}

fn jiff_now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

/// What the agent last reported, to patch only on change.
#[derive(Default)]
struct Reported {
    body: Option<serde_json::Value>,
    transition: Option<Time>,
    conditions: Vec<Condition>,
}

/// Build the status and patch it if anything but timestamps changed.
async fn report(
    api: &Api<DynamicObject>,
    config: &AgentConfig,
    node: &Node,
    metrics_url: &str,
    generation: i64,
    problem: Option<&str>,
    reported: &Mutex<Reported>,
) -> anyhow::Result<()> {
    let addr = node.addr();
    let mode = node.mode();
    let (mode_ok, reason, message) = match problem {
        None => (true, "Applied", format!("running {mode}")),
        Some(p) if p.starts_with("spec.mode") => (false, "UnknownMode", p.to_owned()),
        Some(p) if p.starts_with("spec.routingStrategy") => {
            (false, "UnknownStrategy", p.to_owned())
        }
        Some(p) if p.starts_with(ANNOTATION_INJECT_FAULTS) => {
            (false, "BadFaultInjection", p.to_owned())
        }
        Some(p) => (false, "SwitchFailed", p.to_owned()),
    };
    let core = json!({
        "appliedMode": mode,
        "appliedStrategy": node.strategy(),
        "observedGeneration": generation,
        "identity": {
            "peerId": node.identity().peer_id().to_string(),
            "endpointId": node.identity().endpoint_id().to_string(),
        },
        "addresses": {
            "libp2p": addr.libp2p.iter().map(|a| {
                a.iter()
                    .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
                    .collect::<libp2p::Multiaddr>()
                    .to_string()
            }).collect::<Vec<_>>(),
            "iroh": addr.iroh.iter().flat_map(|i| i.ip_addrs().map(ToString::to_string)).collect::<Vec<_>>(),
        },
        "metricsEndpoint": metrics_url,
        "conditionsKey": [mode_ok, reason, &message],
    });
    let (body, changed) = {
        let mut r = reported.lock().expect("reported lock");
        if r.body.as_ref() == Some(&core) {
            return Ok(());
        }
        let mode_changed =
            r.body.as_ref().and_then(|b| b.get("appliedMode")) != core.get("appliedMode");
        if mode_changed || r.transition.is_none() {
            r.transition = Some(Time(jiff_now()));
        }
        let keep = |t: &str, ok: bool| {
            r.conditions
                .iter()
                .find(|c| c.type_ == t && (c.status == "True") == ok)
                .map(|c| c.last_transition_time.clone())
        };
        let mut ready = condition(
            "Ready",
            true,
            "Running",
            &format!("serving in {mode}"),
            generation,
        );
        if let Some(t) = keep("Ready", true) {
            ready.last_transition_time = t;
        }
        let mut applied = condition("ModeApplied", mode_ok, reason, &message, generation);
        if let Some(t) = keep("ModeApplied", mode_ok) {
            applied.last_transition_time = t;
        }
        let mut body = core.clone();
        let obj = body.as_object_mut().expect("an object");
        obj.remove("conditionsKey");
        obj.insert("lastTransitionTime".into(), json!(r.transition));
        obj.insert("conditions".into(), json!([ready, applied]));
        r.conditions = vec![ready, applied];
        (body, core)
    };
    api.patch_status(
        &config.name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": body })),
    )
    .await
    .context("patching the FleetNode status")?;
    reported.lock().expect("reported lock").body = Some(changed);
    Ok(())
}

/// Run the agent until SIGTERM (or SIGINT).
pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes: set KUBECONFIG or run in a cluster")?;
    run_with(client, config, async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        }
        Ok(())
    })
    .await
}

/// The agent on `client` until `stop` completes (the binary: SIGTERM or
/// SIGINT), then a bounded drain and shutdown.
pub async fn run_with(
    client: kube::Client,
    config: AgentConfig,
    stop: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let identity = retrying("loading the identity", None, || {
        load_identity(&client, &config)
    })
    .await;
    tracing::info!(peer = %identity.peer_id(), endpoint = %identity.endpoint_id(), "identity");
    // The mode comes from the FleetNode before any stack starts.
    let (mode, unknown) =
        retrying("reading the FleetNode", None, || register(&client, &config)).await;
    match &unknown {
        None => tracing::info!(%mode, "starting in the FleetNode's mode"),
        Some(v) => {
            tracing::warn!(%mode, "spec.mode {v:?} is not a network mode; starting in the initial mode")
        }
    }
    let mut node_config = config.node.clone();
    node_config.libp2p.listen = libp2p::Multiaddr::empty()
        .with(match config.pod_ip {
            IpAddr::V4(ip) => libp2p::multiaddr::Protocol::Ip4(ip),
            IpAddr::V6(ip) => libp2p::multiaddr::Protocol::Ip6(ip),
        })
        .with(libp2p::multiaddr::Protocol::Tcp(config.libp2p_port));
    node_config.iroh.bind = SocketAddr::new(config.pod_ip, config.iroh_port);
    let node = Node::start(identity, node_config, mode, Arc::new(EchoHandler))
        .await
        .context("starting the transports")?;
    let metrics = AgentMetrics::new(&node);
    let (manager, bad) = PeerManager::start(
        node.clone(),
        ManagerConfig {
            bootstrap: config.bootstrap.clone(),
            ..config.manager.clone()
        },
    );
    for b in bad {
        tracing::warn!("{b}");
    }
    let shared = Arc::new(Shared {
        node: node.clone(),
        manager,
        min_peers: config.min_peers,
        stopping: AtomicBool::new(false),
    });
    let (http_addr, server) = serve_http(config.http_addr, shared.clone()).await?;
    tokio::spawn(server);
    let metrics_url = format!(
        "http://{}/metrics",
        SocketAddr::new(config.pod_ip, http_addr.port())
    );
    tracing::info!(%http_addr, "serving /metrics /healthz /readyz /status");

    let api = fleet_nodes(&client, &config.namespace);
    let reported = Arc::new(Mutex::new(Reported::default()));
    let probe = tokio::spawn(probes(shared.clone(), config.probe_rate, metrics.clone()));
    let risk = {
        let (shared, metrics) = (shared.clone(), metrics.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            // Probe counters a window ago, one entry per second.
            let mut history: std::collections::VecDeque<(f64, f64)> =
                std::collections::VecDeque::new();
            loop {
                tick.tick().await;
                let peers = shared.manager.status().await;
                let risk = partition_risk(&peers);
                metrics.partition_risk.set(risk);
                let now = (
                    metrics.probes.with_label_values(&["ok"]).get() as f64,
                    metrics.probes.with_label_values(&["error"]).get() as f64,
                );
                history.push_back(now);
                if history.len() > HEALTH_WINDOW_SECS {
                    history.pop_front();
                }
                let then = history.front().copied().unwrap_or(now);
                metrics
                    .health_score
                    .set(health_score(now.0 - then.0, now.1 - then.1, risk));
            }
        })
    };

    // Watch only this node's FleetNode; apply each spec.mode.
    let watch = {
        let (api, config, node, reported, metrics) = (
            api.clone(),
            config.clone(),
            node.clone(),
            reported.clone(),
            metrics.clone(),
        );
        async move {
            let mut problem: Option<String>;
            let wc = watcher::Config::default().fields(&format!("metadata.name={}", config.name));
            let mut events = watcher(api.clone(), wc)
                .backoff(WatchBackoff::default())
                .applied_objects()
                .boxed();
            loop {
                let obj = match events.try_next().await {
                    Ok(Some(o)) => o,
                    Ok(None) => return,
                    Err(e) => {
                        metrics.api_errors.inc();
                        tracing::warn!(error = %e, "watching the FleetNode; keeping {}", node.mode());
                        continue;
                    }
                };
                let generation = obj.metadata.generation.unwrap_or(0);
                match wanted(&obj) {
                    Wanted::Mode(m) => {
                        problem = None;
                        if m != node.mode() {
                            let started = Instant::now();
                            match node.set_mode(m).await {
                                Ok(()) => {
                                    metrics
                                        .switch_seconds
                                        .observe(started.elapsed().as_secs_f64());
                                    tracing::info!(mode = %m, took = ?started.elapsed(), "switched mode");
                                }
                                Err(e) => {
                                    problem = Some(format!("switching to {m} failed: {e}"));
                                    tracing::error!(mode = %m, error = %e, "switching mode failed");
                                }
                            }
                        }
                    }
                    Wanted::Unset => problem = None,
                    Wanted::Unknown(v) => {
                        let p = format!(
                            "spec.mode {v:?} is not a network mode; keeping {}",
                            node.mode()
                        );
                        tracing::warn!("{p}");
                        problem = Some(p);
                    }
                }
                // Fault injection, where this agent allows it.
                let faults = obj
                    .annotations()
                    .get(ANNOTATION_INJECT_FAULTS)
                    .map(String::as_str);
                match (config.allow_fault_injection, parse_faults(faults)) {
                    (true, Ok((l, i))) => {
                        node.inject_faults(Transport::LibP2p, l);
                        node.inject_faults(Transport::Iroh, i);
                    }
                    (true, Err(p)) => {
                        tracing::warn!("{p}");
                        problem.get_or_insert(p);
                    }
                    (false, _) if faults.is_some() => {
                        tracing::warn!(
                            "ignoring {ANNOTATION_INJECT_FAULTS}: this agent runs without --allow-fault-injection"
                        );
                    }
                    (false, _) => {}
                }
                // The strategy override and LoadBalance's iroh share.
                let share = obj
                    .data
                    .pointer("/spec/irohShare")
                    .and_then(serde_json::Value::as_u64)
                    .map(|v| u8::try_from(v.min(100)).unwrap_or(100));
                match obj.data.pointer("/spec/routingStrategy") {
                    None | Some(serde_json::Value::Null) => node.set_routing(None, share),
                    Some(v) => match v.as_str().map(str::parse::<RoutingStrategy>) {
                        Some(Ok(st)) => node.set_routing(Some(st), share),
                        _ => {
                            let p = format!(
                                "spec.routingStrategy {v} is not a routing strategy; keeping {}",
                                node.strategy()
                            );
                            tracing::warn!("{p}");
                            problem.get_or_insert(p);
                        }
                    },
                }
                let r = report(
                    &api,
                    &config,
                    &node,
                    &metrics_url,
                    generation,
                    problem.as_deref(),
                    &reported,
                );
                if let Err(e) = r.await {
                    metrics.api_errors.inc();
                    tracing::warn!(error = %format!("{e:#}"), "reporting status; the next change retries");
                    // Force the next event to report again.
                    reported.lock().expect("reported lock").body = None;
                }
            }
        }
    };
    let watch = tokio::spawn(watch);

    stop.await?;
    shared.stopping.store(true, Ordering::SeqCst);
    probe.abort();
    risk.abort();
    watch.abort();
    // Stop accepting (peers are answered Retiring and go elsewhere),
    // drain what is in flight both ways, close both stacks; bounded.
    shared.manager.stop();
    let budget = config.shutdown_timeout;
    match tokio::time::timeout(budget, node.shutdown(budget.mul_f64(0.8))).await {
        Ok(true) => tracing::info!("drained and stopped"),
        Ok(false) => {
            tracing::warn!(
                ?budget,
                "requests still in flight at the deadline; stopped anyway"
            );
        }
        Err(_) => tracing::warn!(?budget, "shutdown took too long; exiting anyway"),
    }
    Ok(())
}

/// Probe requests at `rate` per second to random known peers.
/// Probes in flight at once, at most.
const MAX_PROBES_IN_FLIGHT: usize = 64;

async fn probes(shared: Arc<Shared>, rate: f64, metrics: AgentMetrics) {
    if rate <= 0.0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    // Probes waiting on slow peers hold their permits: past the bound the
    // loop waits for one instead of piling up tasks.
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_PROBES_IN_FLIGHT));
    let mut turn: usize = 0;
    loop {
        tick.tick().await;
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let peers = shared.manager.status().await;
        let reachable: Vec<_> = peers
            .iter()
            .filter(|p| {
                p.state(Transport::LibP2p) == Some(PeerState::Connected)
                    || p.state(Transport::Iroh) == Some(PeerState::Connected)
            })
            .collect();
        if reachable.is_empty() {
            continue;
        }
        turn = turn.wrapping_add(1);
        let target = reachable[turn % reachable.len()].addr.clone();
        let node = shared.node.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let outcome = match node.request(&target, Bytes::from_static(b"probe")).await {
                Ok(_) => "ok",
                Err(e) => {
                    tracing::warn!(peer = %target.peer, error = %e, "probe failed");
                    "error"
                }
            };
            metrics.probes.with_label_values(&[outcome]).inc();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::{health_score, parse_faults};

    #[test]
    fn health_is_answered_probes_times_reachable_peers() {
        assert_eq!(health_score(0.0, 0.0, 0.0), 1.0);
        assert_eq!(health_score(30.0, 10.0, 0.0), 0.75);
        assert_eq!(health_score(30.0, 10.0, 0.5), 0.375);
        assert_eq!(health_score(0.0, 5.0, 0.0), 0.0);
        assert_eq!(health_score(0.0, 0.0, 1.0), 0.0);
    }

    #[test]
    fn fault_annotations_parse_or_say_what_to_change() {
        assert_eq!(parse_faults(None), Ok((0.0, 0.0)));
        assert_eq!(parse_faults(Some(" ")), Ok((0.0, 0.0)));
        assert_eq!(parse_faults(Some("libp2p=0.5")), Ok((0.5, 0.0)));
        assert_eq!(parse_faults(Some("iroh=1, libp2p=0.25")), Ok((0.25, 1.0)));
        assert_eq!(parse_faults(Some("all=0.1")), Ok((0.1, 0.1)));
        for (bad, says) in [
            ("libp2p", "is not <transport>=<rate>"),
            ("libp2p=2", "from 0 to 1"),
            ("libp2p=NaN", "from 0 to 1"),
            ("quic=0.5", "is not libp2p, iroh or all"),
        ] {
            let e = parse_faults(Some(bad)).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
