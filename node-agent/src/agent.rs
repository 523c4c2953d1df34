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
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use switchyard_crds::{ANNOTATION_INJECT_FAULTS, ANNOTATION_POD, FleetNode, NetworkMode};

use crate::bridge::{Node, NodeConfig};
use crate::dht::{Dht, DhtConfig, RoutingHealth};
use crate::health::{self, HealthState, TransportFacts, TransportHealth};
use crate::identity::Identity;
use crate::manager::{ManagerConfig, PeerManager, PeerState};
use crate::stack::Transport;
use crate::workload::{AppHandler, Inbound, WorkloadConfig};

pub mod spec;

use spec::Problem;

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
    /// Keep probing while a workload uses the workload API (by default
    /// probes pause then: the workload's own traffic is measured).
    pub probes_with_workload: bool,
    /// The workload API.
    pub workload: WorkloadConfig,
    /// The DHT.
    pub dht: DhtConfig,
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
    /// no bootstrap peers, ready with 0 peers, 1 probe per second (paused
    /// while a workload uses the workload API), 10 s to shut down, no
    /// fault injection, and the defaults of [`ManagerConfig`],
    /// [`NodeConfig`], [`WorkloadConfig`] (127.0.0.1:9091) and
    /// [`DhtConfig`].
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
            probes_with_workload: false,
            workload: WorkloadConfig::default(),
            dht: DhtConfig::default(),
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

/// The agent's own metrics, in the node's registry.
#[derive(Clone)]
struct AgentMetrics {
    probes: prometheus::IntCounterVec,
    api_errors: prometheus::IntCounter,
    switch_seconds: prometheus::Histogram,
    partition_risk: prometheus::Gauge,
    health_score: prometheus::Gauge,
    transport_score: prometheus::GaugeVec,
    transport_state: prometheus::GaugeVec,
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
        let transport_score = prometheus::GaugeVec::new(
            prometheus::Opts::new(
                "switchyard_transport_health_score",
                "Seed 001's health score per transport: 0.5 success rate + 0.3 latency score + 0.2 connection score, 0..1; absent while unknown",
            ),
            &["transport"],
        )
        .expect("valid metric");
        let transport_state = prometheus::GaugeVec::new(
            prometheus::Opts::new(
                "switchyard_transport_health_state",
                "1 for the transport's health state (Healthy, Degraded, Unhealthy, Unknown), 0 for the others",
            ),
            &["transport", "state"],
        )
        .expect("valid metric");
        let r = node.metrics().registry();
        let _ = r.register(Box::new(transport_score.clone()));
        let _ = r.register(Box::new(transport_state.clone()));
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
            transport_score,
            transport_state,
        }
    }

    /// Export each transport's health.
    fn set_health(&self, t: Transport, h: &TransportHealth) {
        let name = t.as_str();
        match h.score {
            Some(score) => self.transport_score.with_label_values(&[name]).set(score),
            None => {
                let _ = self.transport_score.remove_label_values(&[name]);
            }
        }
        for state in HealthState::ALL {
            let on = if state == h.state { 1.0 } else { 0.0 };
            self.transport_state
                .with_label_values(&[name, state.as_str()])
                .set(on);
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

/// Retry delays against the Kubernetes API: 0.2 s doubling to 5 s, each
/// with up to as much again of jitter, without end. kube's default grows
/// to 30 s, which after a long API outage would leave the agent deaf for
/// up to half a minute after the server is back.
fn api_backoff() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
}

/// [`api_backoff`] for kube's watcher, which resets it after a success.
struct WatchBackoff(backon::ExponentialBackoff);

impl Default for WatchBackoff {
    fn default() -> Self {
        use backon::BackoffBuilder as _;
        WatchBackoff(api_backoff().build())
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        self.0.next()
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        *self = WatchBackoff::default();
    }
}

/// Retry `f` with [`api_backoff`] until it succeeds, counting and logging
/// each failure.
async fn retrying<T, F, Fut>(what: &str, metrics: Option<&AgentMetrics>, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    use backon::Retryable as _;
    let result = f
        .retry(api_backoff())
        .notify(|e: &anyhow::Error, retry_in: Duration| {
            if let Some(m) = metrics {
                m.api_errors.inc();
            }
            tracing::warn!(error = %format!("{e:#}"), ?retry_in, "{what}");
        })
        .await;
    result.expect("retried without end")
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
        // Keep what it last ran when the spec names no mode, or one this
        // agent does not know (reported once the watch delivers it).
        let last = || {
            existing
                .data
                .pointer("/status/appliedMode")
                .and_then(|v| v.as_str())
                .and_then(|s| s.parse().ok())
                .unwrap_or(config.initial_mode)
        };
        return Ok(match spec::spec_mode(&existing) {
            Ok(Some(m)) => (m, None),
            Ok(None) => (last(), None),
            Err(v) => (last(), Some(v)),
        });
    }
    // Labels from the pod, so plans can select by them.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &config.namespace);
    let pod = pods.get_opt(&config.name).await.ok().flatten();
    let mut labels = pod
        .as_ref()
        .and_then(|p| p.metadata.labels.clone())
        .unwrap_or_default();
    if let Some(n) = &config.node_name {
        labels.insert("switchyard.dev/k8s-node".into(), n.clone());
    }
    let owners: Vec<_> = pod.as_ref().and_then(pod_owner).into_iter().collect();
    // Registered from a pod: the operator may check that the pod is there.
    let annotations: BTreeMap<&str, &str> = pod
        .as_ref()
        .map(|_| (ANNOTATION_POD, config.name.as_str()))
        .into_iter()
        .collect();
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "switchyard.dev/v1alpha1",
        "kind": "FleetNode",
        "metadata": {"name": config.name, "labels": labels, "annotations": annotations, "ownerReferences": owners},
        "spec": {"mode": config.initial_mode},
    }))?;
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => Ok((config.initial_mode, None)),
        Err(kube::Error::Api(e)) if e.code == 409 => Box::pin(register(client, config)).await,
        Err(e) => Err(e).context("creating the FleetNode"),
    }
}

/// The owner reference that ties a FleetNode's life to its pod's, unless
/// the pod belongs to a StatefulSet: a StatefulSet's pod comes back with
/// the same name (and identity), and its FleetNode, with the plan's record
/// of the node, must survive in between. Any other pod (a DaemonSet's, a
/// Deployment's, a bare pod) never returns under its name, so its FleetNode
/// is garbage-collected with it instead of stalling plans as an orphan.
pub fn pod_owner(
    pod: &Pod,
) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    let from_statefulset = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.kind == "StatefulSet");
    if from_statefulset {
        return None;
    }
    Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: pod.metadata.name.clone()?,
            uid: pod.metadata.uid.clone()?,
            // Blocking the pod's deletion would need pods/finalizers rights,
            // and nothing needs to wait for the FleetNode to go.
            block_owner_deletion: None,
            controller: None,
        },
    )
}

/// The health summary `/status` serves.
/// What `node` knows of transport `t`, for the health model.
fn transport_facts(
    node: &Node,
    peers: &[crate::manager::PeerStatus],
    t: Transport,
) -> TransportFacts {
    let tracked: Vec<_> = peers.iter().filter_map(|p| p.state(t)).collect();
    let m = node.metrics();
    TransportFacts {
        running: t.runs_in(node.mode()),
        success_rate: m.success_rate(t),
        mean_latency: m.mean_latency(t),
        peers: tracked.len(),
        connected: tracked
            .iter()
            .filter(|s| **s == PeerState::Connected)
            .count(),
    }
}

fn status_json(node: &Node, dht: &Dht, peers: &[crate::manager::PeerStatus]) -> serde_json::Value {
    let mut transports = serde_json::Map::new();
    for t in Transport::ALL {
        let f = transport_facts(node, peers, t);
        let h = health::transport_health(&f);
        transports.insert(
            t.as_str().into(),
            json!({
                "running": f.running,
                "peers": f.peers,
                "connected": f.connected,
                "successRate": f.success_rate,
                "meanLatencyMs": f.mean_latency.map(|l| l.as_secs_f64() * 1000.0),
                "latencyScore": h.latency_score,
                "connectionScore": h.connection_score,
                "healthScore": h.score,
                "health": h.state.as_str(),
            }),
        );
    }
    json!({
        "mode": node.mode(),
        "transports": transports,
        "partitionRisk": partition_risk(peers),
        "dht": {
            "routingTablePeers": dht.table_len(),
            "records": dht.records(),
            "routingHealth": dht.health(),
        },
    })
}

/// The window of the health score's probe success rate, in seconds.
const HEALTH_WINDOW_SECS: usize = 30;

/// The agent's health: the share of its probes and DHT operations that
/// succeeded in the window (1 when there were none) times the share of
/// known peers it can still reach (1 - partition risk), halved while DHT
/// routing health is Failed. 1 is healthy, 0 is cut off or failing.
pub fn health_score(ok: f64, failed: f64, partition_risk: f64, routing: RoutingHealth) -> f64 {
    let sent = ok + failed;
    let answered = if sent > 0.0 { ok / sent } else { 1.0 };
    let routing = if routing == RoutingHealth::Failed {
        0.5
    } else {
        1.0
    };
    (answered * (1.0 - partition_risk) * routing).clamp(0.0, 1.0)
}

/// The share of known peers unreachable on every transport both sides
/// allow; unknown (`None`) with no known peers. A peer just learned, none
/// of whose paths has been tried yet, is not judged: a node that meets
/// sixty peers at once (a DHT lookup in a big fleet) is not 70% cut off
/// for the seconds its dials take.
pub fn partition_risk(peers: &[crate::manager::PeerStatus]) -> Option<f64> {
    let known: Vec<_> = peers
        .iter()
        .filter(|p| {
            let paths = [p.libp2p.as_ref(), p.iroh.as_ref()];
            paths.iter().flatten().any(|s| s.tried)
        })
        .collect();
    let cut = known
        .iter()
        .filter(|p| {
            Transport::ALL
                .iter()
                .all(|t| p.state(*t) != Some(PeerState::Connected))
        })
        .count();
    health::partition_risk(known.len(), cut)
}

struct Shared {
    node: Arc<Node>,
    manager: Arc<PeerManager>,
    dht: Arc<Dht>,
    inbound: Arc<Inbound>,
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
                    Json(status_json(&s.node, &s.dht, &peers))
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

/// The `ModeApplied` condition's status, reason and message.
type Verdict = (bool, &'static str, String);

/// What the agent last reported, to patch only on change.
#[derive(Default)]
struct Reported {
    /// The status without its timestamps and conditions, and the
    /// `ModeApplied` verdict.
    body: Option<(serde_json::Value, Verdict)>,
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
    problem: Option<&Problem>,
    reported: &Mutex<Reported>,
) -> anyhow::Result<()> {
    let mode = node.mode();
    let verdict: Verdict = match problem {
        None => (true, "Applied", format!("running {mode}")),
        Some(p) => (false, p.reason(), p.to_string()),
    };
    let core = status_core(node, metrics_url, generation);
    let body = {
        let mut r = reported.lock().expect("reported lock");
        let last = r.body.as_ref();
        if last.is_some_and(|(b, v)| *b == core && *v == verdict) {
            return Ok(());
        }
        let mode_changed = last.and_then(|(b, _)| b.get("appliedMode")) != core.get("appliedMode");
        if mode_changed || r.transition.is_none() {
            r.transition = Some(Time(jiff_now()));
        }
        let conditions = conditions(&r.conditions, mode, &verdict, generation);
        let mut body = core.clone();
        let obj = body.as_object_mut().expect("an object");
        obj.insert("lastTransitionTime".into(), json!(r.transition));
        obj.insert("conditions".into(), json!(conditions));
        r.conditions = conditions;
        body
    };
    api.patch_status(
        &config.name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": body })),
    )
    .await
    .context("patching the FleetNode status")?;
    reported.lock().expect("reported lock").body = Some((core, verdict));
    Ok(())
}

/// The status but for its timestamps and conditions.
fn status_core(node: &Node, metrics_url: &str, generation: i64) -> serde_json::Value {
    let addr = node.addr();
    json!({
        "appliedMode": node.mode(),
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
    })
}

/// `Ready` and `ModeApplied`, each keeping its transition time from
/// `before` while its status is unchanged.
fn conditions(
    before: &[Condition],
    mode: NetworkMode,
    verdict: &Verdict,
    generation: i64,
) -> Vec<Condition> {
    let keep = |mut c: Condition| {
        if let Some(old) = before
            .iter()
            .find(|o| o.type_ == c.type_ && o.status == c.status)
        {
            c.last_transition_time = old.last_transition_time.clone();
        }
        c
    };
    let (ok, reason, message) = verdict;
    vec![
        keep(condition(
            "Ready",
            true,
            "Running",
            &format!("serving in {mode}"),
            generation,
        )),
        keep(condition("ModeApplied", *ok, reason, message, generation)),
    ]
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
        Some(v) => tracing::warn!("spec.mode {v} is not a network mode; starting in {mode}"),
    }
    let inbound = Inbound::new(config.workload.clone());
    let handler = AppHandler::new(inbound.clone());
    let node = start_node(&config, identity, mode, handler.clone()).await?;
    let dht = Dht::new(node.clone(), config.dht.clone());
    handler.attach(dht.clone());
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
        manager: Arc::new(manager),
        dht,
        inbound,
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
    let mut tasks = start_dht(&shared, &config.workload).await?;
    tasks.push(tokio::spawn(probes(
        shared.clone(),
        config.probe_rate,
        config.probes_with_workload,
        metrics.clone(),
    )));
    tasks.push(tokio::spawn(track_health(shared.clone(), metrics.clone())));

    let watch = tokio::spawn(watch_spec(
        api,
        config.clone(),
        node.clone(),
        reported,
        metrics.clone(),
        metrics_url,
    ));

    stop.await?;
    shared.stopping.store(true, Ordering::SeqCst);
    for t in tasks {
        t.abort();
    }
    watch.abort();
    shared.manager.stop();
    shut_down(&node, config.shutdown_timeout).await;
    Ok(())
}

/// The node on the pod's address and the configured ports.
async fn start_node(
    config: &AgentConfig,
    identity: Identity,
    mode: NetworkMode,
    handler: Arc<AppHandler>,
) -> anyhow::Result<Arc<Node>> {
    let mut node_config = config.node.clone();
    node_config.libp2p.listen = libp2p::Multiaddr::empty()
        .with(match config.pod_ip {
            IpAddr::V4(ip) => libp2p::multiaddr::Protocol::Ip4(ip),
            IpAddr::V6(ip) => libp2p::multiaddr::Protocol::Ip6(ip),
        })
        .with(libp2p::multiaddr::Protocol::Tcp(config.libp2p_port));
    node_config.iroh.bind = SocketAddr::new(config.pod_ip, config.iroh_port);
    Node::start(identity, node_config, mode, handler)
        .await
        .context("starting the transports")
}

/// The DHT's upkeep and the workload API; their tasks.
async fn start_dht(
    shared: &Arc<Shared>,
    config: &WorkloadConfig,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    use crate::dht::maintain;
    let dht = &shared.dht;
    let mut tasks = vec![
        tokio::spawn(maintain::follow(dht.clone(), shared.manager.clone())),
        tokio::spawn(maintain::check(dht.clone())),
        tokio::spawn(maintain::upkeep(dht.clone())),
    ];
    let api = crate::workload::Api {
        node: shared.node.clone(),
        dht: dht.clone(),
        inbound: shared.inbound.clone(),
    };
    let (addr, servers) = crate::workload::serve(api, config).await?;
    tracing::info!(tcp = ?addr, socket = ?config.socket, "serving the workload API");
    tasks.extend(servers.into_iter().map(tokio::spawn));
    Ok(tasks)
}

/// Stop accepting (peers are answered Retiring and go elsewhere), drain
/// what is in flight both ways, close both stacks; within `budget`.
async fn shut_down(node: &Node, budget: Duration) {
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
}

/// Every second: the partition risk, and the health score over the last
/// [`HEALTH_WINDOW_SECS`] of probes.
async fn track_health(shared: Arc<Shared>, metrics: AgentMetrics) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // Probe counters a window ago, one entry per second.
    let mut history = std::collections::VecDeque::with_capacity(HEALTH_WINDOW_SECS + 1);
    loop {
        tick.tick().await;
        let peers = shared.manager.status().await;
        for t in Transport::ALL {
            let h = health::transport_health(&transport_facts(&shared.node, &peers, t));
            metrics.set_health(t, &h);
        }
        // With no peers known there is no risk to measure: the gauge (read
        // by alert rules, where NaN would never fire) says 0.
        let risk = partition_risk(&peers).unwrap_or(0.0);
        metrics.partition_risk.set(risk);
        let (dht_ok, dht_failed) = shared.dht.operations();
        let now = (
            metrics.probes.with_label_values(&["ok"]).get() as f64 + dht_ok as f64,
            metrics.probes.with_label_values(&["error"]).get() as f64 + dht_failed as f64,
        );
        history.push_back(now);
        if history.len() > HEALTH_WINDOW_SECS {
            history.pop_front();
        }
        let then = history.front().copied().unwrap_or(now);
        metrics.health_score.set(health_score(
            now.0 - then.0,
            now.1 - then.1,
            risk,
            shared.dht.health(),
        ));
    }
}

/// Watch only this node's FleetNode; apply each spec and report.
async fn watch_spec(
    api: Api<DynamicObject>,
    config: AgentConfig,
    node: Arc<Node>,
    reported: Arc<Mutex<Reported>>,
    metrics: AgentMetrics,
    metrics_url: String,
) {
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
        let problem = apply(&node, &obj, config.allow_fault_injection, &metrics).await;
        let generation = obj.metadata.generation.unwrap_or(0);
        let r = report(
            &api,
            &config,
            &node,
            &metrics_url,
            generation,
            problem.as_ref(),
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

/// Carry out what `obj` asks of `node` ([`spec::apply_spec`] decides);
/// the problem to report, if any.
async fn apply(
    node: &Node,
    obj: &DynamicObject,
    allow_fault_injection: bool,
    metrics: &AgentMetrics,
) -> Option<Problem> {
    let current = spec::Current {
        mode: node.mode(),
        strategy: node.strategy(),
        allow_fault_injection,
    };
    let applied = spec::apply_spec(obj, &current);
    if let Some(p) = &applied.problem {
        tracing::warn!("{p}");
    }
    let mut switch_failed = None;
    if let Some(m) = applied.mode {
        let started = Instant::now();
        match node.set_mode(m).await {
            Ok(()) => {
                metrics
                    .switch_seconds
                    .observe(started.elapsed().as_secs_f64());
                tracing::info!(mode = %m, took = ?started.elapsed(), "switched mode");
            }
            Err(e) => {
                tracing::error!(mode = %m, error = %e, "switching mode failed");
                switch_failed = Some(Problem::SwitchFailed {
                    to: m,
                    error: e.to_string(),
                });
            }
        }
    }
    if let Some((libp2p, iroh)) = applied.faults {
        node.inject_faults(Transport::LibP2p, libp2p);
        node.inject_faults(Transport::Iroh, iroh);
    }
    if applied.faults_ignored {
        tracing::warn!(
            "ignoring {ANNOTATION_INJECT_FAULTS}: this agent runs without --allow-fault-injection"
        );
    }
    if let Some(r) = applied.routing {
        node.set_routing(r.strategy, r.iroh_share);
    }
    switch_failed.or(applied.problem)
}

/// Probe requests at `rate` per second to random known peers.
/// Probes in flight at once, at most.
const MAX_PROBES_IN_FLIGHT: usize = 64;

async fn probes(shared: Arc<Shared>, rate: f64, with_workload: bool, metrics: AgentMetrics) {
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
        if !with_workload && shared.inbound.active(Instant::now()) {
            continue;
        }
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
            let outcome =
                match crate::app::request(&node, &target, crate::app::PROBE, b"probe").await {
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
    use super::{RoutingHealth, health_score, parse_faults, partition_risk, pod_owner};

    #[test]
    fn peers_not_tried_yet_count_neither_as_reachable_nor_as_cut() {
        use crate::manager::Beat;
        use crate::manager::{PathStatus, PeerStatus};
        let now = std::time::Instant::now();
        let config = crate::manager::ManagerConfig::default();
        let peer = |path: PathStatus| PeerStatus {
            peer: crate::identity::Identity::generate().peer_id(),
            addr: crate::bridge::PeerAddr {
                peer: crate::identity::Identity::generate().peer_id(),
                libp2p: Vec::new(),
                iroh: None,
            },
            libp2p: Some(path),
            iroh: None,
        };
        let fresh = PathStatus::new(now);
        let up = fresh
            .on_beat(
                &Beat::Answered(std::time::Duration::from_millis(2)),
                now,
                &config,
            )
            .status;
        let down = fresh
            .on_beat(&Beat::Failed("refused".into()), now, &config)
            .status;
        // Two connected, one failed, and sixty just learned: 1 in 3 is cut.
        let mut peers = vec![peer(up.clone()), peer(up), peer(down)];
        peers.extend((0..60).map(|_| peer(fresh.clone())));
        let risk = partition_risk(&peers).expect("known peers");
        assert!((risk - 1.0 / 3.0).abs() < 1e-9, "{risk}");
        // Only peers never tried: nothing is known yet.
        assert_eq!(partition_risk(&peers[3..]), None);
    }

    #[test]
    fn a_fleet_node_lives_with_its_pod_unless_a_statefulset_brings_the_pod_back() {
        let pod = |owner: Option<(&str, bool)>| -> k8s_openapi::api::core::v1::Pod {
            let owners: Vec<_> = owner
                .map(|(kind, controller)| {
                    serde_json::json!({"apiVersion": "apps/v1", "kind": kind, "name": "fleet", "uid": "u-1", "controller": controller})
                })
                .into_iter()
                .collect();
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "agent-x7k2p", "uid": "pod-uid", "ownerReferences": owners}
            }))
            .expect("pod")
        };
        for owner in [
            None,
            Some(("DaemonSet", true)),
            Some(("ReplicaSet", true)),
            Some(("StatefulSet", false)),
        ] {
            let r = pod_owner(&pod(owner)).expect("owned by its pod");
            assert_eq!(
                (r.kind.as_str(), r.name.as_str(), r.uid.as_str()),
                ("Pod", "agent-x7k2p", "pod-uid"),
                "{owner:?}"
            );
            assert_eq!(
                r.block_owner_deletion, None,
                "no pods/finalizers right needed"
            );
        }
        assert_eq!(pod_owner(&pod(Some(("StatefulSet", true)))), None);
    }

    #[test]
    fn health_is_answered_probes_times_reachable_peers() {
        let ok = RoutingHealth::Healthy;
        assert_eq!(health_score(0.0, 0.0, 0.0, ok), 1.0);
        assert_eq!(health_score(30.0, 10.0, 0.0, ok), 0.75);
        assert_eq!(health_score(30.0, 10.0, 0.5, ok), 0.375);
        assert_eq!(health_score(0.0, 5.0, 0.0, ok), 0.0);
        assert_eq!(health_score(0.0, 0.0, 1.0, ok), 0.0);
        assert_eq!(health_score(30.0, 10.0, 0.0, RoutingHealth::Degraded), 0.75);
        assert_eq!(health_score(30.0, 10.0, 0.0, RoutingHealth::Failed), 0.375);
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
