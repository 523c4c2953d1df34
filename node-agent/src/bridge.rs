//! The TransportBridge: one node with both stacks, routing every request by
//! its NetworkMode and RoutingStrategy, failing over to the other transport
//! when the preferred one fails and both sides' modes allow it, and
//! switching mode live: a stack starts before anything is routed to it; a
//! retiring stack first stops getting new work, then drains, then stops.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use libp2p::{Multiaddr, PeerId};
use switchyard_crds::{NetworkMode, RoutingStrategy};

use crate::identity::{Identity, IdentityError, peer_to_endpoint};
use crate::metrics::NodeMetrics;
use crate::stack::iroh_stack::{IrohConfig, IrohStack};
use crate::stack::libp2p_stack::{Libp2pConfig, Libp2pStack};
use crate::stack::{Handler, StackError, StackStats, Transport};
use crate::wire::{Envelope, Kind};

/// Where to reach a peer on each transport.
#[derive(Debug, Clone)]
pub struct PeerAddr {
    /// Its libp2p PeerId (its iroh EndpointId follows from it).
    pub peer: PeerId,
    /// Its libp2p addresses.
    pub libp2p: Vec<Multiaddr>,
    /// Its iroh address.
    pub iroh: Option<iroh::EndpointAddr>,
}

impl PeerAddr {
    /// A peer's addresses; its iroh id is derived from `peer`.
    pub fn new(
        peer: PeerId,
        libp2p: Vec<Multiaddr>,
        iroh_sockets: Vec<SocketAddr>,
    ) -> Result<Self, IdentityError> {
        let iroh = if iroh_sockets.is_empty() {
            None
        } else {
            let mut addr = iroh::EndpointAddr::new(peer_to_endpoint(&peer)?);
            for s in iroh_sockets {
                addr = addr.with_ip_addr(s);
            }
            Some(addr)
        };
        Ok(PeerAddr { peer, libp2p, iroh })
    }
}

/// Why a request failed on every transport it could use.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BridgeError {
    /// No transport both sides run: the modes cannot talk.
    #[error("no common transport: this node runs {local}, peer {peer} {remote}")]
    NoCommonTransport {
        /// This node's mode.
        local: NetworkMode,
        /// The peer.
        peer: PeerId,
        /// What is known of the peer's mode.
        remote: String,
    },
    /// Every transport tried failed; the last error is kept.
    #[error("request to {peer} failed on {tried:?}: {last}")]
    Failed {
        /// The peer.
        peer: PeerId,
        /// The transports tried, in order.
        tried: Vec<Transport>,
        /// The last error.
        last: String,
    },
}

/// Node settings.
#[derive(Debug, Clone, Default)]
pub struct NodeConfig {
    /// libp2p stack settings.
    pub libp2p: Libp2pConfig,
    /// iroh stack settings.
    pub iroh: IrohConfig,
    /// A strategy overriding the mode's default.
    pub strategy: Option<RoutingStrategy>,
    /// Per-attempt timeout.
    pub request_timeout: Option<Duration>,
}

#[derive(Debug, Default, Clone, Copy)]
struct PathStats {
    /// Smoothed round trip, ms.
    latency_ms: Option<f64>,
    /// Smoothed success rate, 0..1.
    success: Option<f64>,
}

#[derive(Debug, Default, Clone)]
struct PeerState {
    mode: Option<NetworkMode>,
    paths: [PathStats; 2],
    /// Answered us on each transport at least once.
    heard: [bool; 2],
}

fn slot(t: Transport) -> usize {
    match t {
        Transport::LibP2p => 0,
        Transport::Iroh => 1,
    }
}

#[derive(Default)]
struct Stacks {
    libp2p: Option<Arc<Libp2pStack>>,
    iroh: Option<Arc<IrohStack>>,
}

/// Serves the application's handler with the node's current mode.
struct Served {
    inner: Arc<dyn Handler>,
    mode: Arc<RwLock<NetworkMode>>,
}

impl Handler for Served {
    fn handle(
        &self,
        from: PeerId,
        transport: Transport,
        request: Envelope,
    ) -> BoxFuture<'static, Result<Bytes, String>> {
        self.inner.handle(from, transport, request)
    }
    fn mode(&self) -> NetworkMode {
        self.mode.read().map_or(NetworkMode::LibP2pOnly, |m| *m)
    }
}

/// A dual-stack node.
pub struct Node {
    identity: Identity,
    config: Mutex<NodeConfig>,
    mode: Arc<RwLock<NetworkMode>>,
    served: Arc<dyn Handler>,
    stacks: RwLock<Stacks>,
    in_flight: [Arc<AtomicUsize>; 2],
    stats: [Arc<StackStats>; 2],
    peers: Mutex<HashMap<PeerId, PeerState>>,
    next_id: AtomicU64,
    turn: AtomicU64,
    switching: tokio::sync::Mutex<()>,
    switches: AtomicU64,
    metrics: NodeMetrics,
}

/// Decrements an in-flight counter when dropped.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Node {
    /// Start a node in `mode`, serving `handler` on the stacks that mode
    /// runs.
    pub async fn start(
        identity: Identity,
        config: NodeConfig,
        mode: NetworkMode,
        handler: Arc<dyn Handler>,
    ) -> Result<Arc<Self>, StackError> {
        let mode_cell = Arc::new(RwLock::new(mode));
        let node = Arc::new(Node {
            identity,
            config: Mutex::new(config),
            served: Arc::new(Served {
                inner: handler,
                mode: mode_cell.clone(),
            }),
            mode: mode_cell,
            stacks: RwLock::new(Stacks::default()),
            in_flight: Default::default(),
            stats: Default::default(),
            peers: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            turn: AtomicU64::new(0),
            switching: tokio::sync::Mutex::new(()),
            switches: AtomicU64::new(0),
            metrics: NodeMetrics::new(),
        });
        node.metrics.set_mode(mode);
        node.ensure_stacks(mode).await?;
        Ok(node)
    }

    /// The node's current mode.
    pub fn mode(&self) -> NetworkMode {
        self.served.mode()
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &NodeMetrics {
        &self.metrics
    }

    /// Mode switches made.
    pub fn switches(&self) -> u64 {
        self.switches.load(Ordering::Relaxed)
    }

    /// Counters of one stack.
    pub fn stats(&self, t: Transport) -> &StackStats {
        &self.stats[slot(t)]
    }

    /// Where peers reach this node now.
    pub fn addr(&self) -> PeerAddr {
        let stacks = self.stacks.read().expect("stacks lock");
        PeerAddr {
            peer: self.identity.peer_id(),
            libp2p: stacks
                .libp2p
                .as_ref()
                .map(|s| s.addrs())
                .unwrap_or_default(),
            iroh: stacks.iroh.as_ref().map(|s| s.addr()),
        }
    }

    /// Start the stacks `mode` needs that are not running. Each binds the
    /// address it had before, so peers' addresses stay valid.
    async fn ensure_stacks(&self, mode: NetworkMode) -> Result<(), StackError> {
        let (need_libp2p, need_iroh) = {
            let s = self.stacks.read().expect("stacks lock");
            (
                mode.has_libp2p() && s.libp2p.is_none(),
                mode.has_iroh() && s.iroh.is_none(),
            )
        };
        let config = self.config.lock().expect("config lock").clone();
        if need_libp2p {
            let stack = Libp2pStack::start(
                &self.identity,
                config.libp2p.clone(),
                self.served.clone(),
                self.stats[0].clone(),
            )
            .await?;
            // Come back on the same port after a later restart.
            if let Some(a) = stack.addrs().first() {
                let mut c = self.config.lock().expect("config lock");
                c.libp2p.listen = a
                    .iter()
                    .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
                    .collect();
            }
            self.stacks.write().expect("stacks lock").libp2p = Some(Arc::new(stack));
        }
        if need_iroh {
            let stack = IrohStack::start(
                &self.identity,
                config.iroh.clone(),
                self.served.clone(),
                self.stats[1].clone(),
            )
            .await?;
            if let Some(s) = stack.addr().ip_addrs().next() {
                self.config.lock().expect("config lock").iroh.bind = *s;
            }
            self.stacks.write().expect("stacks lock").iroh = Some(Arc::new(stack));
        }
        Ok(())
    }

    /// Switch to `mode` without losing a request: start the stacks it
    /// needs, route by it, then retire the stacks it drops (refuse new
    /// inbound work, wait for in-flight requests, stop).
    pub async fn set_mode(&self, mode: NetworkMode) -> Result<(), StackError> {
        let _one_at_a_time = self.switching.lock().await;
        self.ensure_stacks(mode).await?;
        *self.mode.write().expect("mode lock") = mode;
        let (old_libp2p, old_iroh) = {
            let mut s = self.stacks.write().expect("stacks lock");
            (
                if mode.has_libp2p() {
                    None
                } else {
                    s.libp2p.take()
                },
                if mode.has_iroh() { None } else { s.iroh.take() },
            )
        };
        if let Some(stack) = &old_libp2p {
            stack.refuse_inbound();
        }
        if let Some(stack) = &old_iroh {
            stack.refuse_inbound();
        }
        for t in [Transport::LibP2p, Transport::Iroh] {
            let retiring = match t {
                Transport::LibP2p => old_libp2p.is_some(),
                Transport::Iroh => old_iroh.is_some(),
            };
            if !retiring {
                continue;
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while self.in_flight[slot(t)].load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        if let Some(stack) = old_libp2p {
            stack.stop();
        }
        if let Some(stack) = old_iroh {
            stack.stop().await;
        }
        self.switches.fetch_add(1, Ordering::Relaxed);
        self.metrics.mode_switches.inc();
        self.metrics.set_mode(mode);
        Ok(())
    }

    /// The transports to try for `peer`, best first.
    fn route(&self, peer: &PeerAddr) -> Vec<Transport> {
        let local = self.mode();
        let known = self
            .peers
            .lock()
            .expect("peers lock")
            .get(&peer.peer)
            .cloned()
            .unwrap_or_default();
        // What this node runs and has an address for.
        let reachable = |t: Transport| match t {
            Transport::LibP2p => local.has_libp2p() && !peer.libp2p.is_empty(),
            Transport::Iroh => local.has_iroh() && peer.iroh.is_some(),
        };
        // What the peer last said it runs. Advisory: a peer that switched
        // since may run the other, so those come last rather than never.
        let advertised = |t: Transport| match t {
            Transport::LibP2p => known.mode.is_none_or(NetworkMode::has_libp2p),
            Transport::Iroh => known.mode.is_none_or(NetworkMode::has_iroh),
        };
        let strategy = self
            .config
            .lock()
            .expect("config lock")
            .strategy
            .unwrap_or_else(|| local.default_strategy());
        let mut order = match strategy {
            RoutingStrategy::PreferLibP2p => vec![Transport::LibP2p, Transport::Iroh],
            RoutingStrategy::PreferIroh => vec![Transport::Iroh, Transport::LibP2p],
            RoutingStrategy::LoadBalance => {
                if self.turn.fetch_add(1, Ordering::Relaxed).is_multiple_of(2) {
                    vec![Transport::LibP2p, Transport::Iroh]
                } else {
                    vec![Transport::Iroh, Transport::LibP2p]
                }
            }
            RoutingStrategy::LowestLatency => {
                let l = |t: Transport| known.paths[slot(t)].latency_ms.unwrap_or(0.0);
                let mut v = vec![Transport::LibP2p, Transport::Iroh];
                v.sort_by(|a, b| l(*a).total_cmp(&l(*b)));
                v
            }
            RoutingStrategy::HighestSuccessRate => {
                let s = |t: Transport| known.paths[slot(t)].success.unwrap_or(1.0);
                let mut v = vec![Transport::LibP2p, Transport::Iroh];
                v.sort_by(|a, b| s(*b).total_cmp(&s(*a)));
                v
            }
        };
        order.retain(|t| reachable(*t));
        order.sort_by_key(|t| !advertised(*t));
        order
    }

    fn record(
        &self,
        peer: PeerId,
        t: Transport,
        ok: bool,
        rtt: Duration,
        mode: Option<NetworkMode>,
    ) {
        let mut peers = self.peers.lock().expect("peers lock");
        let state = peers.entry(peer).or_default();
        if let Some(m) = mode {
            state.mode = Some(m);
        }
        state.heard[slot(t)] |= ok;
        let path = &mut state.paths[slot(t)];
        let hit = if ok { 1.0 } else { 0.0 };
        path.success = Some(path.success.map_or(hit, |s| 0.9 * s + 0.1 * hit));
        if ok {
            let ms = rtt.as_secs_f64() * 1000.0;
            path.latency_ms = Some(path.latency_ms.map_or(ms, |l| 0.8 * l + 0.2 * ms));
            self.metrics
                .latency
                .with_label_values(&[t.as_str()])
                .observe(rtt.as_secs_f64());
        }
        let count = |i: usize| peers.values().filter(|p| p.heard[i]).count();
        for (i, tr) in [Transport::LibP2p, Transport::Iroh].into_iter().enumerate() {
            self.metrics
                .peers
                .with_label_values(&[tr.as_str()])
                .set(i64::try_from(count(i)).unwrap_or(i64::MAX));
        }
        let dual = peers.values().filter(|p| p.heard[0] && p.heard[1]).count();
        self.metrics
            .dual_peers
            .set(i64::try_from(dual).unwrap_or(i64::MAX));
    }

    /// Send `payload` to `peer` and return its answer, trying the
    /// transports the modes and strategy allow, best first.
    pub async fn request(&self, peer: &PeerAddr, payload: Bytes) -> Result<Bytes, BridgeError> {
        let timeout = self
            .config
            .lock()
            .expect("config lock")
            .request_timeout
            .unwrap_or(Duration::from_secs(10));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let order = self.route(peer);
        if order.is_empty() {
            let remote = self
                .peers
                .lock()
                .expect("peers lock")
                .get(&peer.peer)
                .and_then(|p| p.mode)
                .map_or(
                    "(mode unknown, no address on a common transport)".to_owned(),
                    |m| format!("runs {m}"),
                );
            return Err(BridgeError::NoCommonTransport {
                local: self.mode(),
                peer: peer.peer,
                remote,
            });
        }
        let mut last = String::new();
        let mut tried = Vec::new();
        for t in order {
            let envelope = Envelope::request(self.mode(), id, payload.clone());
            // Take the in-flight slot before looking the stack up, so a
            // switch that retires it waits for this request.
            self.in_flight[slot(t)].fetch_add(1, Ordering::SeqCst);
            let guard = InFlight(self.in_flight[slot(t)].clone());
            let started = Instant::now();
            let result = match t {
                Transport::LibP2p => {
                    let stack = self.stacks.read().expect("stacks lock").libp2p.clone();
                    match stack {
                        Some(s) => {
                            s.request(peer.peer, peer.libp2p.clone(), envelope, timeout)
                                .await
                        }
                        None => Err(StackError::Stopped),
                    }
                }
                Transport::Iroh => {
                    let stack = self.stacks.read().expect("stacks lock").iroh.clone();
                    match (stack, &peer.iroh) {
                        (Some(s), Some(addr)) => s.request(addr, &envelope, timeout).await,
                        _ => Err(StackError::Stopped),
                    }
                }
            };
            drop(guard);
            tried.push(t);
            let label = t.as_str();
            let outcome = match &result {
                Ok(r) if r.kind == Kind::Response => "ok",
                Ok(_) => "refused",
                Err(_) => "error",
            };
            self.metrics
                .requests
                .with_label_values(&[label, outcome])
                .inc();
            if let Ok(r) = &result {
                self.metrics
                    .bytes_sent
                    .with_label_values(&[label])
                    .inc_by(payload.len() as u64);
                self.metrics
                    .bytes_received
                    .with_label_values(&[label])
                    .inc_by(r.payload.len() as u64);
            }
            match result {
                Ok(r) if r.kind == Kind::Response => {
                    self.record(peer.peer, t, true, started.elapsed(), Some(r.mode));
                    return Ok(r.payload);
                }
                Ok(r) => {
                    self.record(peer.peer, t, false, started.elapsed(), Some(r.mode));
                    last = format!("refused: {}", String::from_utf8_lossy(&r.payload));
                }
                Err(e) => {
                    self.record(peer.peer, t, false, started.elapsed(), None);
                    last = e.to_string();
                }
            }
        }
        Err(BridgeError::Failed {
            peer: peer.peer,
            tried,
            last,
        })
    }

    /// Fault injection: stop one stack without changing the mode, as a
    /// crash of that stack would. Requests then fail over to the other.
    pub async fn kill_transport(&self, t: Transport) {
        match t {
            Transport::LibP2p => {
                let stack = self.stacks.write().expect("stacks lock").libp2p.take();
                if let Some(s) = stack {
                    s.stop();
                }
            }
            Transport::Iroh => {
                let stack = self.stacks.write().expect("stacks lock").iroh.take();
                if let Some(s) = stack {
                    s.stop().await;
                }
            }
        }
    }

    /// Stop both stacks.
    pub async fn stop(&self) {
        let (l, i) = {
            let mut s = self.stacks.write().expect("stacks lock");
            (s.libp2p.take(), s.iroh.take())
        };
        if let Some(l) = l {
            l.stop();
        }
        if let Some(i) = i {
            i.stop().await;
        }
    }
}
