//! The TransportBridge: one node with both stacks, routing every request by
//! its NetworkMode and RoutingStrategy, failing over to the other transport
//! when the preferred one fails and both sides' modes allow it, and
//! switching mode live: a stack starts before anything is routed to it; a
//! retiring stack first stops getting new work, then drains, then stops.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use libp2p::{Multiaddr, PeerId};
use switchyard_crds::{NetworkMode, RoutingStrategy};

use crate::identity::{Identity, IdentityError, peer_to_endpoint};
use crate::metrics::NodeMetrics;
use crate::peers::{PeerSynchronizer, PeerView};
use crate::routing::{HedgeBudget, Route, RouteInput};
use crate::stack::iroh_stack::{IrohConfig, IrohStack};
use crate::stack::libp2p_stack::{Libp2pConfig, Libp2pStack};
use crate::stack::{Dedup, Handler, PerTransport, StackError, StackStats, Transport};
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

    /// The addresses as a peer is told them: libp2p multiaddrs without
    /// their `/p2p` part, and iroh's `ip:port`s.
    pub fn advertised(&self) -> (Vec<String>, Vec<String>) {
        let libp2p = self
            .libp2p
            .iter()
            .map(|m| {
                m.iter()
                    .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
                    .collect::<Multiaddr>()
                    .to_string()
            })
            .collect();
        let iroh = self
            .iroh
            .iter()
            .flat_map(|i| i.ip_addrs().map(ToString::to_string))
            .collect();
        (libp2p, iroh)
    }
}

/// Where a peer can be reached, as the transports have learned it
/// (libp2p's identify listen addresses without their `/p2p` part;
/// iroh's advertised and remote sockets); `None` when neither knows.
pub fn view_addr(view: &PeerView) -> Option<PeerAddr> {
    use libp2p::Multiaddr;
    use libp2p::multiaddr::Protocol;
    let libp2p: Vec<Multiaddr> = view
        .libp2p
        .listen
        .iter()
        .filter_map(|a| a.parse().ok())
        .map(|a: Multiaddr| {
            a.into_iter()
                .filter(|p| !matches!(p, Protocol::P2p(_)))
                .collect()
        })
        .collect();
    let iroh: Vec<std::net::SocketAddr> = view
        .iroh
        .listen
        .iter()
        .chain(&view.iroh.addrs)
        .filter_map(|a| a.parse().ok())
        .collect();
    if libp2p.is_empty() && iroh.is_empty() {
        return None;
    }
    // The view already holds the iroh id: no mapping (a curve-point
    // decompression) per peer per round.
    let iroh = (!iroh.is_empty()).then(|| {
        iroh.into_iter()
            .fold(iroh::EndpointAddr::new(view.endpoint), |a, s| {
                a.with_ip_addr(s)
            })
    });
    Some(PeerAddr {
        peer: view.peer,
        libp2p,
        iroh,
    })
}

/// How long a switch spends telling the peers connected on a transport
/// it stops or keeps where it is now ([`Node::tell_peers`]); a stopping
/// stack drains meanwhile.
const FAREWELL_FOR: Duration = Duration::from_secs(1);
/// Such pings in flight at once.
const FAREWELLS_AT_ONCE: usize = 32;

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
    /// The peer's application refused the request (a final answer:
    /// asking again, or over the other transport, gets the same).
    #[error("{peer} refused the request: {reason}")]
    Refused {
        /// The peer.
        peer: PeerId,
        /// Its reason.
        reason: String,
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

/// How the bridge uses the second transport when both sides run both.
///
/// Failover (trying the other transport once the first has failed) always
/// happens; this decides whether the second send may start *before* the
/// first has failed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Hedge {
    /// Only after the first transport failed.
    Off,
    /// Also once the first has not answered within `factor` × the smoothed
    /// round trip to that peer on it, clamped to `min..=max` (`max` when
    /// nothing has been measured yet). The first answer wins.
    Delayed {
        /// Multiple of the smoothed round trip.
        factor: f64,
        /// Shortest delay.
        min: Duration,
        /// Longest delay, and the delay before anything is measured.
        max: Duration,
    },
    /// Send on both at once; the first answer wins.
    Race,
}

impl Default for Hedge {
    fn default() -> Self {
        Hedge::Delayed {
            factor: 3.0,
            min: Duration::from_millis(2),
            max: Duration::from_millis(250),
        }
    }
}

/// Node settings.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// libp2p stack settings.
    pub libp2p: Libp2pConfig,
    /// iroh stack settings.
    pub iroh: IrohConfig,
    /// A strategy overriding the mode's default. Defaults to none: the
    /// mode's own.
    pub strategy: Option<RoutingStrategy>,
    /// Under LoadBalance, the percent of requests sent over iroh first: a
    /// MigrationCanary's A/B share. Defaults to none: 50.
    pub iroh_share: Option<u8>,
    /// The whole budget of one request, retries included. Defaults to
    /// 10 s.
    pub request_timeout: Duration,
    /// How the second transport is used. Defaults to hedged.
    pub hedge: Hedge,
    /// At most this share of requests (0 to 1) is hedged after a delay,
    /// beyond a burst of 3 ([`crate::routing::HedgeBudget`]): when every
    /// request is slow, the node is overloaded, and hedging them all would
    /// double its load. Failing over after a failure is not capped.
    /// Defaults to 0.1.
    pub hedge_budget: f64,
    /// How long after its start a request that failed on every transport
    /// for a transient reason (a peer's stack restarting, a connection
    /// dropped by a mode switch) is sent again. Defaults to 2 s.
    pub retry_for: Duration,
    /// How long a retiring stack waits for its requests, both ways, before
    /// it stops anyway. Defaults to 30 s.
    pub drain_timeout: Duration,
    /// Answer a request that arrives again (a hedge or a retry, on either
    /// transport) from the first arrival instead of running the handler
    /// twice, remembering this many recent requests; 0 turns it off for
    /// handlers that are idempotent anyway. Defaults to 4096.
    pub dedup_window: usize,
    /// When not empty, only these identities may connect, on either
    /// transport; the others are refused at the handshake and counted.
    /// Defaults to empty: anyone.
    pub allowlist: Vec<PeerId>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            libp2p: Libp2pConfig::default(),
            iroh: IrohConfig::default(),
            strategy: None,
            iroh_share: None,
            request_timeout: Duration::from_secs(10),
            hedge: Hedge::default(),
            hedge_budget: 0.1,
            retry_for: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(30),
            dedup_window: 4096,
            allowlist: Vec::new(),
        }
    }
}

#[derive(Default, Clone)]
struct Stacks {
    libp2p: Option<Arc<Libp2pStack>>,
    iroh: Option<Arc<IrohStack>>,
}

/// The failed attempts of a round so far: whether all were transient, and
/// the last reason.
struct Failures {
    transient: bool,
    last: String,
}

impl Default for Failures {
    fn default() -> Self {
        Failures {
            transient: true,
            last: String::new(),
        }
    }
}

/// One request as the bridge tries it: the same id and payload on
/// every transport and round, until one deadline.
#[derive(Clone, Copy)]
struct Try<'a> {
    peer: &'a PeerAddr,
    id: u64,
    payload: &'a Bytes,
    deadline: Instant,
}

/// Why a round got no answer.
struct Miss {
    /// Worth another round.
    transient: bool,
    /// The peer's application refused: final.
    refused: bool,
    /// The last reason.
    last: String,
}

impl Failures {
    /// Note `outcome`; the round's end if it is final (an answer, or a
    /// refusal asking elsewhere would not change).
    fn note(&mut self, outcome: Outcome) -> Option<Result<(Bytes, Transport), Miss>> {
        match outcome {
            Outcome::Answer(body, t) => return Some(Ok((body, t))),
            Outcome::Refused(reason) => {
                return Some(Err(Miss {
                    transient: false,
                    refused: true,
                    last: reason,
                }));
            }
            Outcome::Transient(reason) => self.last = reason,
            Outcome::Failed(reason) => {
                self.transient = false;
                self.last = reason;
            }
        }
        None
    }

    /// The round failed: whether it is worth another, and why.
    fn into_err(self) -> Miss {
        Miss {
            transient: self.transient,
            refused: false,
            last: self.last,
        }
    }
}

/// How one attempt ended.
enum Outcome {
    /// Answered, over this transport.
    Answer(Bytes, Transport),
    /// Refused by the application: final, asking elsewhere gets the same.
    Refused(String),
    /// Worth another try (here later, or on the other transport).
    Transient(String),
    /// Not worth another try on this transport.
    Failed(String),
}

/// Serves the application's handler with the node's current mode.
struct Served {
    inner: Arc<dyn Handler>,
    mode: Arc<RwLock<NetworkMode>>,
    peers: Arc<PeerSynchronizer>,
    advert: RwLock<Bytes>,
    paused: tokio::sync::watch::Receiver<bool>,
}

impl Handler for Served {
    fn handle(
        &self,
        from: PeerId,
        transport: Transport,
        request: Envelope,
    ) -> BoxFuture<'static, Result<Bytes, String>> {
        // Requests advertise the sender's mode too: a peer's capabilities
        // are known from its first request, before this node asks it
        // anything.
        self.peers.advertised(from, request.mode);
        self.inner.handle(from, transport, request)
    }
    fn mode(&self) -> NetworkMode {
        self.mode.read().map_or(NetworkMode::LibP2pOnly, |m| *m)
    }
    fn advert(&self) -> Bytes {
        self.advert.read().map(|a| a.clone()).unwrap_or_default()
    }
    fn paused(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        Some(self.paused.clone())
    }
}

/// A dual-stack node.
pub struct Node {
    identity: Identity,
    config: Mutex<NodeConfig>,
    mode: Arc<RwLock<NetworkMode>>,
    served: Arc<Served>,
    paused: tokio::sync::watch::Sender<bool>,
    /// The mode, each time a switch has ended (its dropped stacks
    /// stopped).
    switched: tokio::sync::watch::Sender<NetworkMode>,
    stacks: RwLock<Stacks>,
    in_flight: PerTransport<Arc<AtomicUsize>>,
    stats: PerTransport<Arc<StackStats>>,
    peers: Arc<PeerSynchronizer>,
    next_id: AtomicU64,
    turn: AtomicU64,
    hedges: Mutex<HedgeBudget>,
    switching: tokio::sync::Mutex<()>,
    switches: AtomicU64,
    metrics: NodeMetrics,
    faults: PerTransport<Fault>,
    /// Where each stack last listened, to return there on a restart.
    bound: Mutex<Bound>,
    /// The paths being connected in the background (see
    /// [`Node::warm_up`]).
    warming: Arc<Mutex<HashSet<(PeerId, Transport)>>>,
}

/// Paths connected in the background at once, at most.
const MAX_WARMING: usize = 32;

/// The addresses the stacks last had.
#[derive(Debug, Clone, Default)]
struct Bound {
    libp2p: Option<Multiaddr>,
    iroh: Option<SocketAddr>,
}

/// Send `envelope` to `peer` over `t` on `stacks` and wait for the answer.
async fn exchange_on(
    stacks: &Stacks,
    peer: &PeerAddr,
    t: Transport,
    envelope: Envelope,
    timeout: Duration,
) -> Result<Envelope, StackError> {
    match (t, &stacks.libp2p, &stacks.iroh, &peer.iroh) {
        (Transport::LibP2p, Some(s), ..) if !peer.libp2p.is_empty() => {
            s.request(peer.peer, peer.libp2p.clone(), envelope, timeout)
                .await
        }
        (Transport::Iroh, _, Some(s), Some(addr)) => s.request(addr, &envelope, timeout).await,
        _ => Err(StackError::Stopped),
    }
}

/// Send `ping` to `peer` over `t` on `stacks`, dialling if need be, and
/// record in `peers` what came back: whether a pong did, the round trip,
/// and the mode the pong carries.
async fn dial_and_record(
    stacks: &Stacks,
    peers: &PeerSynchronizer,
    peer: &PeerAddr,
    t: Transport,
    ping: Envelope,
    timeout: Duration,
) {
    let started = Instant::now();
    let result = exchange_on(stacks, peer, t, ping, timeout).await;
    let rtt = started.elapsed();
    let mode = result.ok().filter(|r| r.kind == Kind::Pong).map(|r| r.mode);
    peers.record(peer.peer, t, mode.is_some(), rtt, mode);
}

/// Start a stack with `before`, the config of the address it had, so
/// peers' addresses stay valid; `None` when that is the configured one.
/// If that address was only the kernel's pick (`any_port`: the configured
/// port is 0) and something took it meanwhile, any port will do: peers
/// learn the new one from our connections and pongs. A configured port is
/// never given up.
async fn start_where_it_was<C, S, F, Fut>(
    configured: C,
    before: Option<C>,
    any_port: bool,
    start: F,
) -> Result<S, StackError>
where
    F: Fn(C) -> Fut,
    Fut: Future<Output = Result<S, StackError>>,
{
    let Some(before) = before else {
        return start(configured).await;
    };
    match start(before).await {
        Ok(s) => Ok(s),
        Err(e) if any_port => {
            tracing::warn!(error = %e, "a stack cannot return to its port; taking another");
            start(configured).await
        }
        Err(e) => Err(e),
    }
}

/// The TCP port in a multiaddr.
fn port_of_multiaddr(m: &Multiaddr) -> Option<u16> {
    m.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
        _ => None,
    })
}

/// Injected failures on one transport: `rate` of sends fail, spread
/// evenly (every send adds `rate` to `debt`; a send fails whenever the
/// debt reaches 1), so a rate is exact over any run of sends. The rate is
/// an atomic (f64 bits) so a send with no fault injected takes no lock.
#[derive(Default)]
struct Fault {
    rate: AtomicU64,
    debt: Mutex<f64>,
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
        let peers = Arc::new(PeerSynchronizer::new());
        let handler: Arc<dyn Handler> = match config.dedup_window {
            0 => handler,
            n => Arc::new(Dedup::new(handler, n)),
        };
        // Request ids start at a random point, so peers that de-duplicate
        // by id do not mistake this node's requests for those of an
        // earlier run.
        let first_id = {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        };
        let (paused, paused_rx) = tokio::sync::watch::channel(false);
        let node = Arc::new(Node {
            paused,
            switched: tokio::sync::watch::Sender::new(mode),
            identity,
            hedges: Mutex::new(HedgeBudget::new(config.hedge_budget)),
            config: Mutex::new(config),
            served: Arc::new(Served {
                inner: handler,
                mode: mode_cell.clone(),
                peers: peers.clone(),
                advert: RwLock::new(Bytes::new()),
                paused: paused_rx,
            }),
            mode: mode_cell,
            stacks: RwLock::new(Stacks::default()),
            in_flight: Default::default(),
            stats: Default::default(),
            peers,
            next_id: AtomicU64::new(first_id),
            turn: AtomicU64::new(0),
            switching: tokio::sync::Mutex::new(()),
            switches: AtomicU64::new(0),
            metrics: NodeMetrics::new(),
            faults: Default::default(),
            bound: Mutex::default(),
            warming: Arc::default(),
        });
        node.metrics.set_mode(mode);
        node.ensure_stacks(mode).await?;
        Ok(node)
    }

    /// The node's current mode.
    pub fn mode(&self) -> NetworkMode {
        self.served.mode()
    }

    /// Override the mode's routing strategy (`None`: the mode's default)
    /// and set LoadBalance's iroh share (`None`: 50%). Takes effect with
    /// the next request.
    pub fn set_routing(&self, strategy: Option<RoutingStrategy>, iroh_share: Option<u8>) {
        let mut c = self.config.lock().expect("config lock");
        c.strategy = strategy;
        c.iroh_share = iroh_share.map(|s| s.min(100));
    }

    /// The strategy in effect: the override, or the mode's default.
    pub fn strategy(&self) -> RoutingStrategy {
        self.config
            .lock()
            .expect("config lock")
            .strategy
            .unwrap_or_else(|| self.mode().default_strategy())
    }

    /// The node's identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The node's metrics, with the peer gauges brought up to date.
    pub fn metrics(&self) -> &NodeMetrics {
        let c = self.peers.counts();
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        for (t, n) in [(Transport::LibP2p, c.libp2p), (Transport::Iroh, c.iroh)] {
            self.metrics
                .peers
                .with_label_values(&[t.as_str()])
                .set(gauge(n));
        }
        self.metrics.dual_peers.set(gauge(c.dual));
        for t in [Transport::LibP2p, Transport::Iroh] {
            let (stats, m) = (&self.stats[t], self.metrics.of(t));
            for (seen, counter) in [
                (&stats.rejected, &m.rejected),
                (&stats.malformed, &m.malformed_frames),
                (&stats.bad_adverts, &m.bad_adverts),
            ] {
                let seen = seen.load(Ordering::Relaxed);
                counter.inc_by(seen.saturating_sub(counter.get()));
            }
        }
        &self.metrics
    }

    /// Every peer as both transports see it.
    pub fn peers(&self) -> Vec<PeerView> {
        self.peers.all()
    }

    /// What routing knows of a peer (its advertised mode, latency and
    /// success per transport), without copying its addresses.
    pub fn peer_facts(&self, peer: &PeerId) -> Option<crate::peers::RouteFacts> {
        self.peers.facts(peer)
    }

    /// One peer as both transports see it.
    pub fn peer(&self, peer: &PeerId) -> Option<PeerView> {
        self.peers.get(peer)
    }

    /// The peers that said they listen somewhere new since the last call
    /// (see [`PeerSynchronizer::take_moved`]).
    pub fn take_moved_peers(&self) -> Vec<PeerId> {
        self.peers.take_moved()
    }

    /// Returns once a peer has said it listens somewhere new.
    pub async fn moved_peers(&self) {
        self.peers.moved_peers().await;
    }

    /// Mode switches made.
    pub fn switches(&self) -> u64 {
        self.switches.load(Ordering::Relaxed)
    }

    /// Counters of one stack.
    pub fn stats(&self, t: Transport) -> &StackStats {
        &self.stats[t]
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
        let mut config = self.config.lock().expect("config lock").clone();
        config.libp2p.allowlist.clone_from(&config.allowlist);
        config.iroh.allowlist.clone_from(&config.allowlist);
        let bound = self.bound.lock().expect("bound lock").clone();
        if need_libp2p {
            let configured = config.libp2p;
            let any_port = port_of_multiaddr(&configured.listen) == Some(0);
            let before = bound
                .libp2p
                .filter(|l| *l != configured.listen)
                .map(|listen| Libp2pConfig {
                    listen,
                    ..configured.clone()
                });
            let stack = start_where_it_was(configured, before, any_port, |c| {
                Libp2pStack::start(
                    &self.identity,
                    c,
                    self.served.clone(),
                    self.stats[Transport::LibP2p].clone(),
                    self.peers.clone(),
                )
            })
            .await?;
            if let Some(a) = stack.addrs().first() {
                self.bound.lock().expect("bound lock").libp2p = Some(
                    a.iter()
                        .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
                        .collect(),
                );
            }
            self.stacks.write().expect("stacks lock").libp2p = Some(Arc::new(stack));
        }
        if need_iroh {
            let configured = config.iroh;
            let any_port = configured.bind.port() == 0;
            let before = bound
                .iroh
                .filter(|b| *b != configured.bind)
                .map(|bind| IrohConfig {
                    bind,
                    ..configured.clone()
                });
            let stack = start_where_it_was(configured, before, any_port, |c| {
                IrohStack::start(
                    &self.identity,
                    c,
                    self.served.clone(),
                    self.stats[Transport::Iroh].clone(),
                    self.peers.clone(),
                )
            })
            .await?;
            if let Some(s) = stack.addr().ip_addrs().next() {
                self.bound.lock().expect("bound lock").iroh = Some(*s);
            }
            self.stacks.write().expect("stacks lock").iroh = Some(Arc::new(stack));
        }
        self.refresh_advert();
        Ok(())
    }

    /// Put the current addresses in what pongs carry.
    fn refresh_advert(&self) {
        *self.served.advert.write().expect("advert lock") = self.advert();
    }

    /// Where this node is now, as a pong, a farewell or a greeting tells
    /// it.
    fn advert(&self) -> Bytes {
        let (libp2p, iroh) = self.addr().advertised();
        crate::stack::advert_payload(&crate::stack::Advert { libp2p, iroh })
    }

    /// Fault injection: a paused node answers nothing, on either stack,
    /// until resumed, as if its process were stopped (connections stay
    /// open).
    pub fn pause(&self, paused: bool) {
        let _ = self.paused.send(paused);
    }

    /// Fault injection: fail `rate` (0 to 1, clamped) of this node's
    /// outbound sends over `t` before they leave, as errors that are not
    /// retried on that transport (the other one, where the mode has it,
    /// still takes the request). 0 turns it off.
    pub fn inject_faults(&self, t: Transport, rate: f64) {
        let rate = if rate.is_finite() {
            rate.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let f = &self.faults[t];
        let mut debt = f.debt.lock().expect("fault lock");
        let old = f.rate.swap(rate.to_bits(), Ordering::Relaxed);
        if f64::from_bits(old) != rate {
            tracing::warn!(transport = t.as_str(), rate, "fault injection");
        }
        *debt = 0.0;
    }

    /// The injected failure rate on `t`.
    pub fn injected_faults(&self, t: Transport) -> f64 {
        f64::from_bits(self.faults[t].rate.load(Ordering::Relaxed))
    }

    /// Whether this send over `t` is to fail by fault injection.
    fn fault_hits(&self, t: Transport) -> bool {
        let rate = self.injected_faults(t);
        if rate <= 0.0 {
            return false;
        }
        let mut debt = self.faults[t].debt.lock().expect("fault lock");
        *debt += rate;
        if *debt >= 1.0 {
            *debt -= 1.0;
            return true;
        }
        false
    }

    /// Switch to `mode` without losing a request: start the stacks it
    /// needs, route by it, then retire the stacks it drops: refuse new
    /// inbound work (as `Retiring`, which the requester takes elsewhere),
    /// wait until the requests it carries both ways are answered, stop.
    pub async fn set_mode(&self, mode: NetworkMode) -> Result<(), StackError> {
        let _one_at_a_time = self.switching.lock().await;
        let before = self.mode();
        self.ensure_stacks(mode).await?;
        for keep in Transport::ALL {
            let stop = keep.other();
            let stops = stop.runs_in(before) && !stop.runs_in(mode);
            if stops && keep.runs_in(before) && keep.runs_in(mode) {
                self.connect_ahead(keep).await;
            }
        }
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
        let drain_for = self.config.lock().expect("config lock").drain_timeout;
        let deadline = Instant::now() + drain_for;
        let busy = || {
            old_libp2p.as_ref().is_some_and(|s| {
                s.inbound() > 0 || self.in_flight[Transport::LibP2p].load(Ordering::SeqCst) > 0
            }) || old_iroh.as_ref().is_some_and(|s| {
                s.inbound() > 0 || self.in_flight[Transport::Iroh].load(Ordering::SeqCst) > 0
            })
        };
        let drain = async {
            while busy() {
                if Instant::now() >= deadline {
                    tracing::warn!(?drain_for, "retiring stack still busy; stopping it anyway");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        tokio::join!(
            drain,
            self.tell_peers(mode, old_libp2p.as_deref(), old_iroh.as_deref())
        );
        if let Some(stack) = old_libp2p {
            stack.stop().await;
        }
        if let Some(stack) = old_iroh {
            stack.stop().await;
        }
        self.refresh_advert();
        // A transport this switch started: tell the peers connected on the
        // one it kept where it listens. Otherwise they learn it at their
        // next heartbeat that asks (a heartbeat interval, 20 s in a big
        // fleet, and as long again before their manager dials it), and
        // the next stage of a migration begins before any of them has
        // used the new transport.
        let (greet_libp2p, greet_iroh) = {
            let s = self.stacks.read().expect("stacks lock");
            (
                s.libp2p
                    .clone()
                    .filter(|_| mode.has_iroh() && !before.has_iroh()),
                s.iroh
                    .clone()
                    .filter(|_| mode.has_libp2p() && !before.has_libp2p()),
            )
        };
        self.tell_peers(mode, greet_libp2p.as_deref(), greet_iroh.as_deref())
            .await;
        self.switches.fetch_add(1, Ordering::Relaxed);
        self.metrics.mode_switches.inc();
        self.metrics.set_mode(mode);
        self.switched.send_replace(mode);
        Ok(())
    }

    /// Before a switch stops a transport: connect `keep`, the one it
    /// keeps, to every peer that is connected only on the other and runs
    /// `keep` (a ping that dials), while the other still carries requests.
    /// Otherwise the first request to each of them after the switch waits
    /// for a handshake, and a node going IrohOnly in a busy fleet has
    /// dozens to make at once: at 100 nodes on two cores that put a
    /// canary's p95 over a second. Bounded like the farewell
    /// ([`FAREWELL_FOR`], [`FAREWELLS_AT_ONCE`]); a dial not done by then
    /// goes on in the background. Skipped while paused.
    async fn connect_ahead(&self, keep: Transport) {
        if *self.paused.borrow() {
            return;
        }
        let stacks = self.stacks.read().expect("stacks lock").clone();
        let targets: Vec<PeerAddr> = self
            .peers
            .all()
            .iter()
            .filter(|v| v.path(keep.other()).connected() && !v.path(keep).connected())
            .filter(|v| v.mode.is_none_or(|m| keep.runs_in(m)))
            .filter_map(view_addr)
            .filter(|a| match keep {
                Transport::LibP2p => !a.libp2p.is_empty(),
                Transport::Iroh => a.iroh.is_some(),
            })
            .collect();
        if targets.is_empty() {
            return;
        }
        tracing::debug!(
            peers = targets.len(),
            transport = keep.as_str(),
            "connecting ahead of a switch"
        );
        let pings = targets.iter().map(|peer| {
            dial_and_record(
                &stacks,
                &self.peers,
                peer,
                keep,
                self.bare_ping(),
                FAREWELL_FOR,
            )
        });
        let all = futures::stream::iter(pings).for_each_concurrent(FAREWELLS_AT_ONCE, |f| f);
        let _ = tokio::time::timeout(FAREWELL_FOR, all).await;
    }

    /// Tell every peer connected on `libp2p` or `iroh`, on that
    /// connection, this node's new `mode` and where to reach it now: a
    /// ping carrying this node's advert.
    ///
    /// On a stack a switch stops (its farewell, sent while the
    /// connections are still open): otherwise a peer learns both only at
    /// its next exchange with this node, and until then sends on (or
    /// hedges onto) the stopped transport, each send failing; or, if it
    /// never learned this node's address on the kept transport, has no
    /// other way to reach it. On a stack a switch keeps, when it started
    /// the other: the peers learn the new transport's address at once.
    ///
    /// Bounded by [`FAREWELL_FOR`], and skipped while paused (a paused
    /// node sends nothing).
    async fn tell_peers(
        &self,
        mode: NetworkMode,
        libp2p: Option<&Libp2pStack>,
        iroh: Option<&IrohStack>,
    ) {
        if (libp2p.is_none() && iroh.is_none()) || *self.paused.borrow() {
            return;
        }
        let payload = self.advert();
        let ping = || Envelope {
            kind: Kind::Ping,
            mode,
            request_id: self.next_id.fetch_add(1, Ordering::Relaxed),
            payload: payload.clone(),
        };
        let mut sends: Vec<BoxFuture<'_, ()>> = Vec::new();
        for view in self.peers.all() {
            if let Some(s) = libp2p
                && view.libp2p.connected()
            {
                let envelope = ping();
                sends.push(Box::pin(async move {
                    let _ = s.ping(view.peer, &envelope, FAREWELL_FOR).await;
                }));
            }
            if let Some(s) = iroh
                && view.iroh.connected()
                && let Some(addr) = view_addr(&view).and_then(|a| a.iroh)
            {
                let envelope = ping();
                sends.push(Box::pin(async move {
                    let _ = s.request(&addr, &envelope, FAREWELL_FOR).await;
                }));
            }
        }
        let all = futures::stream::iter(sends).for_each_concurrent(FAREWELLS_AT_ONCE, |f| f);
        let _ = tokio::time::timeout(FAREWELL_FOR, all).await;
    }

    /// Sees the mode each time a switch has ended.
    pub fn switches_watch(&self) -> tokio::sync::watch::Receiver<NetworkMode> {
        self.switched.subscribe()
    }

    /// The transports to try for `peer`, best first.
    fn route(&self, peer: &PeerAddr, strategy: Option<RoutingStrategy>, iroh_share: u8) -> Route {
        let facts = self.peers.facts(&peer.peer).unwrap_or_default();
        crate::routing::route(&RouteInput {
            local: self.mode(),
            addressed: PerTransport::new(!peer.libp2p.is_empty(), peer.iroh.is_some()),
            facts: &facts,
            strategy,
            iroh_share,
            turn: self.turn.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// When to send on the second transport if the first (`t`) has not
    /// answered.
    fn hedge_delay(&self, hedge: Hedge, peer: &PeerId, t: Transport) -> Option<Duration> {
        match hedge {
            Hedge::Off => None,
            Hedge::Race => Some(Duration::ZERO),
            Hedge::Delayed { factor, min, max } => Some(
                self.peers
                    .facts(peer)
                    .and_then(|f| f.latency(t))
                    .map_or(max, |l| l.mul_f64(factor).clamp(min, max)),
            ),
        }
    }

    /// Send `payload` to `peer` and return its answer, trying the
    /// transports the modes and strategy allow, best first: hedged onto
    /// the second when the first is slow, failed over to it when the first
    /// fails, and sent again with backoff while every failure is transient
    /// (a stack restarting during a mode switch).
    pub async fn request(&self, peer: &PeerAddr, payload: Bytes) -> Result<Bytes, BridgeError> {
        self.request_via(peer, payload).await.map(|(body, _)| body)
    }

    /// [`Node::request`], also saying which transport carried the answer.
    pub async fn request_via(
        &self,
        peer: &PeerAddr,
        payload: Bytes,
    ) -> Result<(Bytes, Transport), BridgeError> {
        let completed = self.complete(peer);
        let peer = completed.as_ref().unwrap_or(peer);
        let (timeout, retry_for, hedge, strategy, iroh_share) = {
            let c = self.config.lock().expect("config lock");
            (
                c.request_timeout,
                c.retry_for,
                c.hedge,
                c.strategy,
                c.iroh_share.unwrap_or(50),
            )
        };
        let started = Instant::now();
        let deadline = started + timeout;
        // One id for every send of this request, so the answering side can
        // tell a hedge or a retry from a new request.
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.hedges.lock().expect("hedge budget lock").earn();
        let mut backoff = Duration::from_millis(10);
        let mut tried = Vec::new();
        let mut last;
        loop {
            let route = self.route(peer, strategy, iroh_share);
            if let Some(t) = route.warm {
                self.warm_up(peer, t, timeout);
            }
            if route.order.is_empty() {
                if tried.is_empty() {
                    return Err(self.no_common_transport(peer));
                }
                last = format!("this node switched to {} meanwhile", self.mode());
                break;
            }
            let req = Try {
                peer,
                id,
                payload: &payload,
                deadline,
            };
            let failure = match self.round(&req, route, hedge, &mut tried).await {
                Ok(body) => return Ok(body),
                Err(f) => f,
            };
            if failure.refused {
                return Err(BridgeError::Refused {
                    peer: peer.peer,
                    reason: failure.last,
                });
            }
            let transient = failure.transient;
            last = failure.last;
            let now = Instant::now();
            if !transient || now + backoff >= deadline || now - started >= retry_for {
                break;
            }
            self.metrics.retries.inc();
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
        Err(BridgeError::Failed {
            peer: peer.peer,
            tried,
            last,
        })
    }

    /// `peer` with the addresses it lacks filled in from the peer view,
    /// if the view knows more. A caller's copy can be older than a mode
    /// switch: the DHT's routing table follows the view once a second, so
    /// right after a peer added iroh its entry may still have no iroh
    /// address, and a node that has just gone IrohOnly would find "no
    /// common transport" with a peer it is connected to on iroh.
    fn complete(&self, peer: &PeerAddr) -> Option<PeerAddr> {
        if !peer.libp2p.is_empty() && peer.iroh.is_some() {
            return None;
        }
        let known = view_addr(&self.peers.get(&peer.peer)?)?;
        let libp2p = peer.libp2p.is_empty() && !known.libp2p.is_empty();
        let iroh = peer.iroh.is_none() && known.iroh.is_some();
        if !libp2p && !iroh {
            return None;
        }
        let mut out = peer.clone();
        if libp2p {
            out.libp2p = known.libp2p;
        }
        if iroh {
            out.iroh = known.iroh;
        }
        Some(out)
    }

    fn no_common_transport(&self, peer: &PeerAddr) -> BridgeError {
        let remote = self.peers.facts(&peer.peer).and_then(|p| p.mode).map_or(
            "(mode unknown, no address on a common transport)".to_owned(),
            |m| format!("runs {m}"),
        );
        BridgeError::NoCommonTransport {
            local: self.mode(),
            peer: peer.peer,
            remote,
        }
    }

    /// One try over the route: the first transport, the second once the
    /// hedge delay passes or the first fails. `Err((transient, reason))`
    /// when no answer came.
    async fn round(
        &self,
        req: &Try<'_>,
        route: Route,
        hedge: Hedge,
        tried: &mut Vec<Transport>,
    ) -> Result<(Bytes, Transport), Miss> {
        let mut rest = route.order.into_iter();
        let Some((first, _)) = rest.next() else {
            return Err(Miss {
                transient: false,
                refused: false,
                last: "no transport".into(),
            });
        };
        let delay = if route.race {
            Some(Duration::ZERO)
        } else {
            self.hedge_delay(hedge, &req.peer.peer, first)
        };
        match delay {
            Some(delay) if rest.as_slice().first().is_some_and(|n| n.1) => {
                self.hedged(req, first, rest, delay, tried).await
            }
            _ => {
                // One transport at a time: no concurrency to manage.
                let mut failures = Failures::default();
                for t in std::iter::once(first).chain(rest.map(|(t, _)| t)) {
                    tried.push(t);
                    if let Some(end) = failures.note(self.send(req, t).await) {
                        return end;
                    }
                }
                Err(failures.into_err())
            }
        }
    }

    /// [`Self::round`] with a second transport to hedge onto: `first`
    /// now, the next of `rest` after `delay` (at once when zero) or as
    /// soon as one fails.
    async fn hedged(
        &self,
        req: &Try<'_>,
        first: Transport,
        mut rest: std::vec::IntoIter<(Transport, bool)>,
        delay: Duration,
        tried: &mut Vec<Transport>,
    ) -> Result<(Bytes, Transport), Miss> {
        let mut running = FuturesUnordered::new();
        // When each running attempt started, to credit a loser below.
        let mut started: Vec<(Transport, Instant)> = Vec::with_capacity(2);
        macro_rules! launch {
            ($t:expr) => {{
                let t = $t;
                tried.push(t);
                started.push((t, Instant::now()));
                running.push(self.attempt(req, t));
            }};
        }
        launch!(first);
        let mut hedge_at = Some(Instant::now() + delay);
        if delay.is_zero()
            && let Some((t, _)) = rest.next()
        {
            // Race: both at once (a zero-length timer would still wait for
            // the timer wheel's next millisecond tick).
            self.metrics.of(t).hedges.inc();
            launch!(t);
            hedge_at = None;
        }
        let mut failures = Failures::default();
        loop {
            // Hedge only onto a transport the peer is believed to run.
            let next_hedge = hedge_at.filter(|_| rest.as_slice().first().is_some_and(|n| n.1));
            tokio::select! {
                done = running.next() => {
                    let Some((t, outcome)) = done else { break };
                    started.retain(|(s, _)| *s != t);
                    if let Some(end) = failures.note(outcome) {
                        if end.is_ok() {
                            // A transport that lost the race took at least
                            // this long: say so, or a path that always
                            // loses would never look slow to LowestLatency.
                            for (loser, at) in started {
                                self.peers.lower_bound(req.peer.peer, loser, at.elapsed());
                            }
                        }
                        return end;
                    }
                    // Fail over now.
                    if let Some((t, _)) = rest.next() {
                        launch!(t);
                    } else if running.is_empty() {
                        break;
                    }
                }
                () = tokio::time::sleep_until(next_hedge.unwrap_or(req.deadline).into()), if next_hedge.is_some() => {
                    hedge_at = None;
                    // Over budget, the request waits for its first
                    // transport (and fails over if that fails).
                    if self.hedges.lock().expect("hedge budget lock").spend()
                        && let Some((t, _)) = rest.next()
                    {
                        self.metrics.of(t).hedges.inc();
                        launch!(t);
                    }
                }
            }
        }
        Err(failures.into_err())
    }

    /// One envelope to `peer` over `t` and its answer, on whichever stack
    /// runs now (`Stopped` when that stack does not, or the peer has no
    /// address on it).
    async fn exchange(
        &self,
        peer: &PeerAddr,
        t: Transport,
        envelope: Envelope,
        timeout: Duration,
    ) -> Result<Envelope, StackError> {
        let stacks = self.stacks.read().expect("stacks lock").clone();
        exchange_on(&stacks, peer, t, envelope, timeout).await
    }

    /// A ping with nothing in it, in this node's mode.
    fn bare_ping(&self) -> Envelope {
        Envelope {
            kind: Kind::Ping,
            mode: self.mode(),
            request_id: self.next_id.fetch_add(1, Ordering::Relaxed),
            payload: Bytes::new(),
        }
    }

    /// Connect `peer` on `t` in the background, with a ping that dials
    /// first: a request went over the other transport because `t`, which
    /// the strategy put first, had no connection (see [`Route::warm`]),
    /// and the next request should find it open. At most one per peer and
    /// transport, and [`MAX_WARMING`] in all; each within `timeout`.
    fn warm_up(&self, peer: &PeerAddr, t: Transport, timeout: Duration) {
        // A paused node sends nothing of its own (see `heartbeat`).
        if *self.paused.borrow() {
            return;
        }
        {
            let mut warming = self.warming.lock().expect("warming lock");
            if warming.len() >= MAX_WARMING || !warming.insert((peer.peer, t)) {
                return;
            }
        }
        tracing::debug!(peer = %peer.peer, transport = t.as_str(), "sent on the warm path; connecting the preferred one");
        let ping = self.bare_ping();
        let stacks = self.stacks.read().expect("stacks lock").clone();
        let (peers, peer, warming) = (self.peers.clone(), peer.clone(), self.warming.clone());
        tokio::spawn(async move {
            dial_and_record(&stacks, &peers, &peer, t, ping, timeout).await;
            warming
                .lock()
                .expect("warming lock")
                .remove(&(peer.peer, t));
        });
    }

    /// [`Self::send`], saying over which transport (one future type for
    /// every attempt a hedged round runs).
    async fn attempt(&self, req: &Try<'_>, t: Transport) -> (Transport, Outcome) {
        (t, self.send(req, t).await)
    }

    /// One send of `req` over `t`, counted and recorded.
    async fn send(&self, req: &Try<'_>, t: Transport) -> Outcome {
        let Try {
            peer,
            id,
            payload,
            deadline,
        } = *req;
        if self.fault_hits(t) {
            let m = self.metrics.of(t);
            m.injected.inc();
            m.error.inc();
            self.peers.record(peer.peer, t, false, Duration::ZERO, None);
            return Outcome::Failed(format!("{}: injected fault", t.as_str()));
        }
        let envelope = Envelope::request(self.mode(), id, payload.clone());
        let timeout = deadline.saturating_duration_since(Instant::now());
        // Take the in-flight slot before looking the stack up, so a switch
        // that retires it waits for this request.
        let guard = InFlight(self.in_flight[t].clone());
        self.in_flight[t].fetch_add(1, Ordering::SeqCst);
        let started = Instant::now();
        let result = self.exchange(peer, t, envelope, timeout).await;
        drop(guard);
        let rtt = started.elapsed();
        let label = t.as_str();
        let m = self.metrics.of(t);
        match result {
            Ok(r) => {
                m.bytes_sent.inc_by(payload.len() as u64);
                m.bytes_received.inc_by(r.payload.len() as u64);
                let answered = r.kind == Kind::Response;
                self.peers.record(peer.peer, t, answered, rtt, Some(r.mode));
                let reason = || String::from_utf8_lossy(&r.payload).into_owned();
                match r.kind {
                    Kind::Response => {
                        m.ok.inc();
                        m.latency.observe(rtt.as_secs_f64());
                        Outcome::Answer(r.payload, t)
                    }
                    Kind::Retiring => {
                        m.retiring.inc();
                        Outcome::Transient(format!("{label}: {}", reason()))
                    }
                    Kind::Refused | Kind::Request | Kind::Ping | Kind::Pong => {
                        m.refused.inc();
                        Outcome::Refused(reason())
                    }
                }
            }
            Err(e) => {
                m.error.inc();
                self.peers.record(peer.peer, t, false, rtt, None);
                // Who sent it (many agents share a demo's log), in which
                // mode, and what it believed of the peer.
                tracing::debug!(
                    from = %self.identity().peer_id(),
                    mode = %self.mode(),
                    peer = %peer.peer,
                    peer_mode = ?self.peers.facts(&peer.peer).and_then(|f| f.mode),
                    peer_iroh_known = peer.iroh.is_some(),
                    transport = label,
                    ?rtt,
                    error = %e,
                    "request failed"
                );
                let reason = format!("{label}: {e}");
                if e.is_transient() {
                    Outcome::Transient(reason)
                } else {
                    Outcome::Failed(reason)
                }
            }
        }
    }

    /// One heartbeat to `peer` over `t`: a `Ping` the peer's stack answers
    /// itself (dialling first if there is no connection), asking for its
    /// addresses on both transports. Returns the round trip, which also
    /// feeds the peer view and LowestLatency.
    pub async fn ping(
        &self,
        peer: &PeerAddr,
        t: Transport,
        timeout: Duration,
    ) -> Result<Duration, StackError> {
        self.heartbeat(peer, t, timeout, true).await
    }

    /// [`Node::ping`], asking for the peer's addresses only if `advert`.
    pub async fn heartbeat(
        &self,
        peer: &PeerAddr,
        t: Transport,
        timeout: Duration,
        advert: bool,
    ) -> Result<Duration, StackError> {
        // A paused node (fault injection) sends nothing either: its
        // heartbeats would tell peers that it is alive.
        if *self.paused.borrow() {
            tokio::time::sleep(timeout).await;
            return Err(StackError::Timeout(timeout));
        }
        let envelope = Envelope {
            kind: Kind::Ping,
            mode: self.mode(),
            request_id: self.next_id.fetch_add(1, Ordering::Relaxed),
            payload: if advert {
                Bytes::from_static(crate::stack::ASK_ADVERT)
            } else {
                // Our round trip on this path, for the peer, which skips
                // its heartbeats while it hears ours.
                self.peers
                    .facts(&peer.peer)
                    .and_then(|f| f.latency(t))
                    .map(crate::stack::rtt_payload)
                    .unwrap_or_default()
            },
        };
        let started = Instant::now();
        // On a live libp2p connection a heartbeat rides the peer's
        // long-lived heartbeat stream: a request would open a stream and
        // negotiate its protocol for every beat. A dial, or a question for
        // addresses, goes as a request, which carries the addresses. On
        // iroh a heartbeat is a request: a QUIC stream costs nothing to
        // open, and the beats stand in for iroh's own keep-alives.
        let libp2p = match t {
            Transport::LibP2p if !advert => self.stacks.read().expect("stacks lock").libp2p.clone(),
            _ => None,
        };
        let result = match libp2p {
            Some(s) => s.ping(peer.peer, &envelope, timeout).await,
            None => self.exchange(peer, t, envelope, timeout).await,
        };
        let rtt = started.elapsed();
        match result {
            Ok(r) if r.kind == Kind::Pong => {
                self.peers.record(peer.peer, t, true, rtt, Some(r.mode));
                if !r.payload.is_empty() {
                    match crate::stack::Advert::parse(&r.payload) {
                        Ok(advert) => {
                            self.peers
                                .advertised_addrs(peer.peer, advert.libp2p, advert.iroh);
                        }
                        Err(why) => {
                            // Counted and dropped: nothing of it is kept.
                            self.stats[t].bad_adverts.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(peer = %peer.peer, transport = t.as_str(), %why, "bad address advert dropped");
                        }
                    }
                }
                Ok(rtt)
            }
            Ok(r) => Err(StackError::Protocol(format!(
                "a ping was answered with {:?}",
                r.kind
            ))),
            Err(e) => {
                self.peers.record(peer.peer, t, false, rtt, None);
                Err(e)
            }
        }
    }

    /// Dial a libp2p address whose peer is not known yet (a DNS name's
    /// address) and return the peer found there.
    pub async fn dial_libp2p(
        &self,
        addr: Multiaddr,
        timeout: Duration,
    ) -> Result<PeerId, StackError> {
        let stack = self.stacks.read().expect("stacks lock").libp2p.clone();
        match stack {
            Some(s) => s.dial(addr, timeout).await,
            None => Err(StackError::Stopped),
        }
    }

    /// Fault injection: stop one stack without changing the mode, as a
    /// crash of that stack would. Requests then fail over to the other.
    pub async fn kill_transport(&self, t: Transport) {
        match t {
            Transport::LibP2p => {
                let stack = self.stacks.write().expect("stacks lock").libp2p.take();
                if let Some(s) = stack {
                    s.stop().await;
                }
            }
            Transport::Iroh => {
                let stack = self.stacks.write().expect("stacks lock").iroh.take();
                if let Some(s) = stack {
                    s.stop().await;
                }
            }
        }
        self.refresh_advert();
    }

    /// Stop gracefully within `within`: answer new inbound requests
    /// `Retiring` (peers take them elsewhere), wait for the requests in
    /// flight both ways, then stop both stacks. True when everything
    /// drained in time.
    pub async fn shutdown(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let (l, i) = {
            let s = self.stacks.read().expect("stacks lock");
            (s.libp2p.clone(), s.iroh.clone())
        };
        if let Some(l) = &l {
            l.refuse_inbound();
        }
        if let Some(i) = &i {
            i.refuse_inbound();
        }
        let busy = || {
            l.as_ref().is_some_and(|s| s.inbound() > 0)
                || i.as_ref().is_some_and(|s| s.inbound() > 0)
                || self
                    .in_flight
                    .iter()
                    .any(|(_, c)| c.load(Ordering::SeqCst) > 0)
        };
        let mut drained = true;
        while busy() {
            if Instant::now() >= deadline {
                drained = false;
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.stop().await;
        drained
    }

    /// Stop both stacks.
    pub async fn stop(&self) {
        let (l, i) = {
            let mut s = self.stacks.write().expect("stacks lock");
            (s.libp2p.take(), s.iroh.take())
        };
        if let Some(l) = l {
            l.stop().await;
        }
        if let Some(i) = i {
            i.stop().await;
        }
    }
}
