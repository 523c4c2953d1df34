//! The PeerManager: bootstrap, heartbeats, failure detection and
//! reconnection, on both transports.
//!
//! It runs as its own task, apart from the transports. It asks them for
//! heartbeats and dials (each a `Ping` the peer's stack answers itself,
//! dialling first when there is no connection) and takes their answers
//! back as events; callers talk to it over a bounded command channel.
//!
//! Each (peer, transport) pair both sides' modes allow has a state:
//!
//! - `Connected`: the last heartbeat was answered;
//! - `Unresponsive`: the connection has not failed, but
//!   `unresponsive_after` heartbeats in a row went unanswered (a paused or
//!   overloaded peer); heartbeats go on, and one answer brings it back;
//! - `Disconnected`: the connection failed or was refused, or the peer
//!   stayed `Unresponsive` for `disconnect_after`; redialled with
//!   exponential backoff and jitter up to `backoff_max`;
//! - `Failed`: `max_retries` redials failed; redialled every `slow_retry`.
//!
//! A successful heartbeat resets everything. Dials to peers that are not
//! connected share `max_concurrent_dials` permits, so a fleet restarting at
//! once causes no connection storm. Every transition is logged.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::NetworkMode;
use crate::bootstrap::{self, BadEntry, Bootstrap};
use crate::bridge::{Node, PeerAddr, view_addr};
use crate::stack::{PerTransport, StackError, Transport};

mod path;

pub use path::{Beat, Transition};

/// PeerManager settings.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Bootstrap entries (see [`crate::bootstrap`]).
    pub bootstrap: Vec<String>,
    /// The libp2p port dialled on a `dns:` entry's addresses.
    pub dns_libp2p_port: u16,
    /// The iroh port on a `dns:` entry's addresses.
    pub dns_iroh_port: u16,
    /// How often `dns:` entries are resolved again (pods come and go).
    pub dns_refresh: Duration,
    /// Time between heartbeats to a peer, per transport.
    pub heartbeat_interval: Duration,
    /// A heartbeat unanswered this long is a miss. A heartbeat that must
    /// first dial (a new connection's handshake: TCP + Noise + Yamux, or
    /// QUIC + TLS) gets [`DIAL_TIMEOUT_FACTOR`] times as long.
    pub heartbeat_timeout: Duration,
    /// Misses in a row that make a connected peer `Unresponsive`.
    pub unresponsive_after: u32,
    /// How long a peer stays `Unresponsive` before its connection is
    /// given up as dead and redialled (`Disconnected`). Over UDP a stopped
    /// peer and a dead one look alike: this bounds how long it is hoped
    /// the silence is a pause.
    pub disconnect_after: Duration,
    /// The first redial delay.
    pub backoff_initial: Duration,
    /// The longest redial delay.
    pub backoff_max: Duration,
    /// Each delay is spread by up to this share either way (0..1).
    pub jitter: f64,
    /// Redials before a peer is `Failed` and redialled only slowly.
    pub max_retries: u32,
    /// The redial period of a `Failed` peer.
    pub slow_retry: Duration,
    /// Dials in progress at once, over all peers and transports.
    pub max_concurrent_dials: usize,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            bootstrap: Vec::new(),
            dns_libp2p_port: 4001,
            dns_iroh_port: 4002,
            dns_refresh: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(1),
            unresponsive_after: 2,
            disconnect_after: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(8),
            jitter: 0.2,
            max_retries: 10,
            slow_retry: Duration::from_secs(30),
            max_concurrent_dials: 8,
        }
    }
}

impl ManagerConfig {
    /// The redial delay after `attempt` failed redials (from 1), before
    /// jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(20);
        self.backoff_initial
            .saturating_mul(1u32 << doublings)
            .min(self.backoff_max)
    }
}

/// The state of one peer on one transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerState {
    /// Heartbeats are answered.
    Connected,
    /// The connection failed; redialling with backoff.
    Disconnected,
    /// Connected, but heartbeats go unanswered.
    Unresponsive,
    /// Redials exhausted; redialling slowly.
    Failed,
}

impl PeerState {
    /// Every state.
    pub const ALL: [PeerState; 4] = [
        PeerState::Connected,
        PeerState::Disconnected,
        PeerState::Unresponsive,
        PeerState::Failed,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Connected => "Connected",
            PeerState::Disconnected => "Disconnected",
            PeerState::Unresponsive => "Unresponsive",
            PeerState::Failed => "Failed",
        }
    }
}

/// One peer on one transport.
#[derive(Debug, Clone)]
pub struct PathStatus {
    /// Its state.
    pub state: PeerState,
    /// Since when.
    pub since: Instant,
    /// The last heartbeat round trip.
    pub rtt: Option<Duration>,
    /// Heartbeats missed in a row.
    pub misses: u32,
    /// Redials since the last success.
    pub attempts: u32,
    /// When the recent redials started (the last 32).
    pub redials: Vec<Instant>,
    /// Why it last changed state.
    pub reason: String,
    /// Whether a heartbeat or dial on it has ended yet, answered or not
    /// (or the peer's own heartbeat arrived). A path never tried is
    /// `Disconnected` but says nothing about reachability.
    pub tried: bool,
}

/// One peer, as the manager sees it.
#[derive(Debug, Clone)]
pub struct PeerStatus {
    /// Its id.
    pub peer: PeerId,
    /// Its addresses.
    pub addr: PeerAddr,
    /// Its libp2p state, if both sides may use libp2p.
    pub libp2p: Option<PathStatus>,
    /// Its iroh state, if both sides may use iroh.
    pub iroh: Option<PathStatus>,
}

impl PeerStatus {
    /// The state on `t`, if tracked.
    pub fn state(&self, t: Transport) -> Option<PeerState> {
        match t {
            Transport::LibP2p => self.libp2p.as_ref().map(|p| p.state),
            Transport::Iroh => self.iroh.as_ref().map(|p| p.state),
        }
    }
}

enum Command {
    Status(oneshot::Sender<Vec<PeerStatus>>),
    Add(PeerAddr),
}

/// Dials in progress now, and the most ever at once.
#[derive(Debug, Default)]
struct DialCount {
    now: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
}

/// Counts a dial while it holds a permit.
struct Dialling(Arc<DialCount>);

impl Dialling {
    fn new(count: &Arc<DialCount>) -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        let now = count.now.fetch_add(1, SeqCst) + 1;
        count.peak.fetch_max(now, SeqCst);
        Dialling(count.clone())
    }
}

impl Drop for Dialling {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The peer manager's metrics, registered in the node's registry.
#[derive(Clone)]
struct Metrics {
    states: IntGaugeVec,
    rtt: HistogramVec,
    redials: IntCounterVec,
}

impl Metrics {
    fn new(node: &Node) -> Self {
        let states = IntGaugeVec::new(
            Opts::new(
                "switchyard_node_peer_states",
                "Peers by heartbeat state, per transport",
            ),
            &["transport", "state"],
        )
        .expect("valid metric");
        let rtt = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_node_heartbeat_rtt_seconds",
                "Heartbeat round trips",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
            &["transport"],
        )
        .expect("valid metric");
        let redials = IntCounterVec::new(
            Opts::new(
                "switchyard_node_reconnect_attempts_total",
                "Redials of peers that were not connected",
            ),
            &["transport"],
        )
        .expect("valid metric");
        let registry = node.metrics().registry();
        // A second manager on the same node reuses the first one's series.
        let _ = registry.register(Box::new(states.clone()));
        let _ = registry.register(Box::new(rtt.clone()));
        let _ = registry.register(Box::new(redials.clone()));
        Metrics {
            states,
            rtt,
            redials,
        }
    }
}

/// A running peer manager.
pub struct PeerManager {
    commands: mpsc::Sender<Command>,
    dialling: Arc<DialCount>,
    task: tokio::task::JoinHandle<()>,
    dns: Option<tokio::task::JoinHandle<()>>,
}

impl PeerManager {
    /// Start managing `node`'s peers. The bootstrap entries that could not
    /// be used are returned (and logged); the others are dialled.
    pub fn start(node: Arc<Node>, config: ManagerConfig) -> (Self, Vec<BadEntry>) {
        let (entries, bad) = bootstrap::parse(&config.bootstrap);
        for b in &bad {
            tracing::warn!("{b}; skipped");
        }
        let (commands, rx) = mpsc::channel(256);
        let mut initial = Vec::new();
        let mut names = Vec::new();
        for e in entries {
            match e {
                Bootstrap::Libp2p { peer, addr } => {
                    if let Ok(a) = PeerAddr::new(peer, vec![addr], vec![]) {
                        initial.push(a);
                    }
                }
                Bootstrap::Iroh { peer, addr } => {
                    if let Ok(a) = PeerAddr::new(peer, vec![], vec![addr]) {
                        initial.push(a);
                    }
                }
                Bootstrap::Dns { name } => names.push(name),
            }
        }
        let dns = (!names.is_empty()).then(|| {
            tokio::spawn(resolve_names(
                node.clone(),
                config.clone(),
                names,
                commands.clone(),
            ))
        });
        let metrics = Metrics::new(&node);
        let dialling = Arc::new(DialCount::default());
        let task = tokio::spawn(run(node, config, metrics, initial, rx, dialling.clone()));
        (
            PeerManager {
                commands,
                dialling,
                task,
                dns,
            },
            bad,
        )
    }

    /// Every tracked peer's state.
    pub async fn status(&self) -> Vec<PeerStatus> {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Status(tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// The most dials that were ever in progress at once.
    pub fn peak_dials(&self) -> usize {
        self.dialling.peak.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Track a peer learned elsewhere.
    pub async fn add_peer(&self, addr: PeerAddr) {
        let _ = self.commands.send(Command::Add(addr)).await;
    }

    /// Stop the manager (the node keeps running).
    pub fn stop(&self) {
        self.task.abort();
        if let Some(d) = &self.dns {
            d.abort();
        }
    }
}

impl Drop for PeerManager {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Path {
    status: PathStatus,
    next_at: Instant,
    /// The time this path waits for in the manager's queue, if it does.
    queued: Option<Instant>,
    busy: bool,
    /// Dialled at least once: later dials are redials.
    dialled: bool,
    /// This node switched modes: beat now, even if the peer beat us
    /// lately, so that the peer learns the new mode from the ping.
    announce: bool,
}

impl Path {
    fn new(now: Instant) -> Self {
        Path {
            status: PathStatus::new(now),
            next_at: now,
            queued: None,
            busy: false,
            dialled: false,
            announce: false,
        }
    }

    /// Take `step`'s status (logging a change of state) and schedule the
    /// next beat or redial.
    fn apply(&mut self, peer: &PeerId, t: Transport, step: Transition, now: Instant, jitter: f64) {
        let (from, to) = (self.status.state, step.status.state);
        if from != to {
            let reason = &step.status.reason;
            tracing::info!(%peer, transport = t.as_str(), from = from.as_str(), to = to.as_str(), %reason, "peer state");
        }
        self.status = step.status;
        let delay = if step.jitter {
            jittered(step.next_in, jitter)
        } else {
            step.next_in
        };
        self.next_at = now + delay;
    }
}

struct Tracked {
    addr: PeerAddr,
    paths: PerTransport<Option<Path>>,
}

type Beating = BoxFuture<'static, (PeerId, Transport, Result<Duration, StackError>)>;

fn jittered(d: Duration, jitter: f64) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    // A fresh random 64-bit value per call; no RNG dependency needed.
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let unit = (r >> 11) as f64 / (1u64 << 53) as f64; // 0..1
    d.mul_f64(1.0 + jitter.clamp(0.0, 1.0) * (2.0 * unit - 1.0))
}

/// Add what the transports have learned (identify's listen addresses,
/// iroh's remote sockets) and the peers that connected to us.
fn learn(node: &Node, peers: &mut HashMap<PeerId, Tracked>) {
    let me = node.identity().peer_id();
    for view in node.peers() {
        if view.peer == me {
            continue;
        }
        if let Some(addr) = view_addr(&view) {
            merge(peers, addr);
        }
    }
}

/// How long the beats announcing a mode switch are spread over, so that
/// a wave of nodes switching at once does not ping the whole fleet in the
/// same instant.
const ANNOUNCE_WITHIN: Duration = Duration::from_secs(1);

/// A path's place in the manager's queue: when, whose, which transport.
type Due = Reverse<(Instant, PeerId, Transport)>;

/// Track `found`, or add the addresses it brings; whether anything was
/// new.
fn merge(peers: &mut HashMap<PeerId, Tracked>, found: PeerAddr) -> bool {
    let mut changed = !peers.contains_key(&found.peer);
    let tracked = peers.entry(found.peer).or_insert_with(|| Tracked {
        addr: PeerAddr {
            peer: found.peer,
            libp2p: Vec::new(),
            iroh: None,
        },
        paths: PerTransport::default(),
    });
    for a in found.libp2p {
        if !tracked.addr.libp2p.contains(&a) {
            tracked.addr.libp2p.push(a);
            changed = true;
        }
    }
    match (&mut tracked.addr.iroh, found.iroh) {
        (None, Some(i)) => {
            tracked.addr.iroh = Some(i);
            changed = true;
        }
        (Some(mine), Some(i)) => {
            for s in i.ip_addrs() {
                if !mine.ip_addrs().any(|m| m == s) {
                    *mine = mine.clone().with_ip_addr(*s);
                    changed = true;
                }
            }
        }
        _ => {}
    }
    changed
}

/// How many heartbeat timeouts a dial may take. A handshake is several
/// round trips plus key exchanges: on a loaded machine it can take longer
/// than one heartbeat's round trip on a live connection, and a dial cut
/// off at the heartbeat timeout is started over from nothing, so a node
/// under load would redial forever without ever connecting.
const DIAL_TIMEOUT_FACTOR: u32 = 3;

/// How many heartbeat intervals a peer's heartbeat stands in for ours.
/// Above 1, so that of two peers the one that hears the other stops; a
/// silent peer is then noticed this much later than with ours alone.
const LISTEN_FACTOR: f64 = 1.5;

async fn run(
    node: Arc<Node>,
    config: ManagerConfig,
    metrics: Metrics,
    initial: Vec<PeerAddr>,
    commands: mpsc::Receiver<Command>,
    dialling: Arc<DialCount>,
) {
    let mut peers = HashMap::new();
    for a in initial {
        merge(&mut peers, a);
    }
    let dials = Arc::new(Semaphore::new(config.max_concurrent_dials.max(1)));
    Manager {
        switches: node.switches_watch(),
        node,
        config,
        metrics,
        commands,
        dialling,
        dials,
        peers,
        beats: FuturesUnordered::new(),
        due: BinaryHeap::new(),
        scan: true,
        scanned_mode: None,
        learned_at: Instant::now(),
        published: PerTransport::new([-1i64; 4], [-1i64; 4]),
    }
    .run()
    .await;
}

/// What is known of one peer this round.
struct Seen {
    /// This node's mode.
    local: NetworkMode,
    /// The peer's, if it has said.
    remote: Option<NetworkMode>,
    /// The peer runs a transport we both have, but its address on it is
    /// unknown.
    missing: bool,
    /// When the peer's own heartbeat last arrived, per transport.
    heard: PerTransport<Option<Instant>>,
}

/// The manager's actor: each round it starts the heartbeats and dials
/// that are due, then waits for a command, a heartbeat's result, or the
/// next due time. The decisions are [`PathStatus`]'s.
struct Manager {
    node: Arc<Node>,
    config: ManagerConfig,
    metrics: Metrics,
    commands: mpsc::Receiver<Command>,
    dialling: Arc<DialCount>,
    /// Permits for dials in progress.
    dials: Arc<Semaphore>,
    peers: HashMap<PeerId, Tracked>,
    /// Heartbeats and dials in flight, at most one per path.
    beats: FuturesUnordered<Beating>,
    /// Waiting paths, earliest first; an entry whose time is no longer
    /// its path's `queued` is stale and skipped.
    due: BinaryHeap<Due>,
    /// Look at every peer on the next round: one was added, or changed.
    scan: bool,
    /// Wakes the manager when this node has switched modes.
    switches: tokio::sync::watch::Receiver<NetworkMode>,
    /// This node's mode at the last look at every peer: a switch makes
    /// paths usable or not.
    scanned_mode: Option<NetworkMode>,
    /// When the peer view is next read for new peers.
    learned_at: Instant,
    /// The state gauges as last set.
    published: PerTransport<[i64; 4]>,
}

impl Manager {
    async fn run(mut self) {
        loop {
            let next_due = self.start_due(Instant::now());
            self.publish_states();
            tokio::select! {
                command = self.commands.recv() => match command {
                    None => return,
                    Some(Command::Add(addr)) => self.scan |= merge(&mut self.peers, addr),
                    Some(Command::Status(reply)) => {
                        let _ = reply.send(self.status());
                    }
                },
                Some((peer, t, result)) = self.beats.next() => {
                    let now = Instant::now();
                    self.on_beat(peer, t, result, now);
                    // The answer may say the peer runs another transport
                    // now: look at both of its paths.
                    self.look(peer, self.node.mode(), now);
                }
                // The node switched modes: the next round looks at every
                // peer (and announces a dropped transport).
                Ok(()) = self.switches.changed() => {}
                // A peer said where it listens now (a greeting, a
                // farewell, a pong's advert): use it at once, not at the
                // next read of the peer view, a heartbeat interval away.
                () = self.node.moved_peers() => self.moved(Instant::now()),
                () = tokio::time::sleep_until(next_due.into()) => {}
            }
        }
    }

    /// Start every heartbeat or dial that is due at `now`; when the next
    /// one is.
    ///
    /// Only the paths whose time has come are looked at, from the queue;
    /// every peer only once a heartbeat interval (reading the peer view
    /// for new ones), after a peer was added or changed, and after this
    /// node switched modes. Looking at every peer after every beat made a
    /// fleet of n agents cost n² per interval each: a fifth of two cores
    /// at 100 agents doing nothing else.
    fn start_due(&mut self, now: Instant) -> Instant {
        let local = self.node.mode();
        if now >= self.learned_at {
            learn(&self.node, &mut self.peers);
            self.learned_at = now + self.config.heartbeat_interval;
            self.scan = true;
        }
        if let Some(before) = self.scanned_mode
            && ((before.has_libp2p() && !local.has_libp2p())
                || (before.has_iroh() && !local.has_iroh()))
        {
            self.announce(now);
        }
        if self.scan || self.scanned_mode != Some(local) {
            self.scan = false;
            self.scanned_mode = Some(local);
            let ids: Vec<PeerId> = self.peers.keys().copied().collect();
            for id in ids {
                self.look(id, local, now);
            }
        }
        while let Some(Reverse((at, id, t))) = self.due.peek().copied()
            && at <= now
        {
            self.due.pop();
            let Some(path) = self.peers.get_mut(&id).and_then(|p| p.paths[t].as_mut()) else {
                continue;
            };
            if path.queued != Some(at) {
                continue;
            }
            path.queued = None;
            if let Some(seen) = self.seen(&id, local) {
                self.consider_queued(id, t, &seen, now);
            }
        }
        self.due
            .peek()
            .map_or(self.learned_at, |Reverse((at, ..))| {
                (*at).min(self.learned_at)
            })
    }

    /// Take the new addresses of the peers that said they moved, and look
    /// at each whose addresses grew.
    fn moved(&mut self, now: Instant) {
        let (me, local) = (self.node.identity().peer_id(), self.node.mode());
        for id in self.node.take_moved_peers() {
            if id == me {
                continue;
            }
            if let Some(addr) = self.node.peer(&id).as_ref().and_then(view_addr)
                && merge(&mut self.peers, addr)
            {
                self.look(id, local, now);
            }
        }
    }

    /// This node switched to a mode without a transport it ran: every
    /// peer it is connected to hears the new mode within
    /// [`ANNOUNCE_WITHIN`], from a beat on each path the mode keeps (a
    /// ping carries the sender's mode). Until a peer hears it, the peer
    /// still sends on, or hedges onto, the transport this node stopped,
    /// and each such send fails. At 100 nodes, waiting for the next
    /// heartbeat left that for up to 20 s per peer.
    fn announce(&mut self, now: Instant) {
        for tracked in self.peers.values_mut() {
            for t in Transport::ALL {
                if let Some(path) = tracked.paths[t].as_mut()
                    && path.status.connected()
                {
                    path.announce = true;
                    let at = now + jittered(ANNOUNCE_WITHIN / 2, 1.0);
                    path.next_at = path.next_at.min(at);
                }
            }
        }
    }

    /// Look at both of `id`'s paths now, this node running `local`.
    fn look(&mut self, id: PeerId, local: NetworkMode, now: Instant) {
        let Some(seen) = self.seen(&id, local) else {
            return;
        };
        for t in Transport::ALL {
            self.consider_queued(id, t, &seen, now);
        }
    }

    /// What is known of `id` this round, if it is tracked.
    fn seen(&self, id: &PeerId, local: NetworkMode) -> Option<Seen> {
        let tracked = self.peers.get(id)?;
        let facts = self.node.peer_facts(id);
        let remote = facts.as_ref().and_then(|f| f.mode);
        // A peer that now runs a transport we both have, but whose
        // address on it we never learned (it switched modes after we
        // met): ask again, or we would never use that transport.
        let missing = remote.is_some_and(|m| {
            (m.has_iroh() && local.has_iroh() && tracked.addr.iroh.is_none())
                || (m.has_libp2p() && local.has_libp2p() && tracked.addr.libp2p.is_empty())
        });
        Some(Seen {
            local,
            remote,
            missing,
            heard: facts.map(|f| f.heard).unwrap_or_default(),
        })
    }

    /// [`Self::consider`], queueing the path for when it is next due.
    fn consider_queued(&mut self, id: PeerId, t: Transport, seen: &Seen, now: Instant) {
        let Some(at) = self.consider(id, t, seen, now) else {
            return;
        };
        if let Some(path) = self.peers.get_mut(&id).and_then(|p| p.paths[t].as_mut())
            && path.queued != Some(at)
        {
            path.queued = Some(at);
            self.due.push(Reverse((at, id, t)));
        }
    }

    /// One path at `now`: forget it when it is no longer usable, start its
    /// heartbeat (or dial) when due, or let the peer's own heartbeat stand
    /// in for it; when it is next due, if it waits.
    fn consider(&mut self, id: PeerId, t: Transport, seen: &Seen, now: Instant) -> Option<Instant> {
        let tracked = self.peers.get_mut(&id)?;
        if !usable(&tracked.addr, t, seen.local, seen.remote) {
            tracked.paths[t] = None;
            return None;
        }
        // A peer this node already reaches on the other transport: the
        // first beat on this one waits a random share of an interval, as
        // beats do. A wave of nodes adding iroh at once would otherwise
        // have every pair handshake in the same second (at 100 agents in
        // one process, 4,950 handshakes that starved everything else).
        let reachable = tracked.paths[t.other()]
            .as_ref()
            .is_some_and(|p| p.status.connected());
        let spread = self.config.heartbeat_interval / 2;
        let path = tracked.paths[t].get_or_insert_with(|| {
            let mut path = Path::new(now);
            if reachable {
                path.next_at = now + jittered(spread, 1.0);
            }
            path
        });
        if path.busy {
            return None;
        }
        if path.next_at > now {
            return Some(path.next_at);
        }
        // The peer's own heartbeat reached us lately: it is alive on this
        // path, and ours would only repeat that. Waiting half an interval
        // longer than the peer's pace leaves the beating to one side of
        // each pair (in a mesh, half the heartbeats); if the peer falls
        // silent, ours resume.
        let listen_for = self.config.heartbeat_interval.mul_f64(LISTEN_FACTOR);
        if !seen.missing
            && !path.announce
            && let Some(heard) = seen.heard[t]
            && let Some(step) = path.status.on_heard(heard, now, listen_for)
        {
            path.apply(&id, t, step, now, self.config.jitter);
            return Some(path.next_at);
        }
        let dial = !path.status.connected();
        path.busy = true;
        if dial && path.dialled {
            path.status = path.status.on_redial(now);
            self.metrics.redials.with_label_values(&[t.as_str()]).inc();
        }
        path.dialled = true;
        path.announce = false;
        // Cloned only for a beat: this runs for every path at every wake.
        let addr = tracked.addr.clone();
        self.beat(id, t, addr, dial, seen.missing);
        None
    }

    /// Send a heartbeat to `peer` over `t` (a dial first, if `dial`).
    fn beat(&mut self, peer: PeerId, t: Transport, addr: PeerAddr, dial: bool, missing: bool) {
        let (node, dials, dialling) =
            (self.node.clone(), self.dials.clone(), self.dialling.clone());
        let timeout = if dial {
            self.config.heartbeat_timeout * DIAL_TIMEOUT_FACTOR
        } else {
            self.config.heartbeat_timeout
        };
        self.beats.push(Box::pin(async move {
            // Dials share the permits; heartbeats on live connections do
            // not wait for them.
            let _permit = if dial {
                let permit = dials.acquire_owned().await.ok();
                Some((permit, Dialling::new(&dialling)))
            } else {
                None
            };
            // A new connection asks for the peer's addresses on both
            // transports, as does a beat to a peer with an address
            // missing; other beats carry nothing.
            let result = node.heartbeat(&addr, t, timeout, dial || missing).await;
            (peer, t, result)
        }));
    }

    /// A heartbeat's result, into its path's state.
    fn on_beat(
        &mut self,
        peer: PeerId,
        t: Transport,
        result: Result<Duration, StackError>,
        now: Instant,
    ) {
        let Some(path) = self.peers.get_mut(&peer).and_then(|p| p.paths[t].as_mut()) else {
            return;
        };
        path.busy = false;
        let beat = match result {
            Ok(rtt) => {
                self.metrics
                    .rtt
                    .with_label_values(&[t.as_str()])
                    .observe(rtt.as_secs_f64());
                Beat::Answered(rtt)
            }
            Err(StackError::Timeout(_)) => Beat::Unanswered,
            Err(e) => Beat::Failed(e.to_string()),
        };
        let step = path.status.on_beat(&beat, now, &self.config);
        path.apply(&peer, t, step, now, self.config.jitter);
    }

    /// Every peer and its paths, ordered by id.
    fn status(&self) -> Vec<PeerStatus> {
        let mut out: Vec<PeerStatus> = self
            .peers
            .values()
            .map(|t| PeerStatus {
                peer: t.addr.peer,
                addr: t.addr.clone(),
                libp2p: t.paths.libp2p.as_ref().map(|p| p.status.clone()),
                iroh: t.paths.iroh.as_ref().map(|p| p.status.clone()),
            })
            .collect();
        // The key once per peer, not once per comparison.
        out.sort_by_cached_key(|p| p.peer.to_bytes());
        out
    }

    /// The state gauges, from the states just seen; the label lookups
    /// only after a change.
    fn publish_states(&mut self) {
        let mut counts = PerTransport::new([0i64; 4], [0i64; 4]);
        for tracked in self.peers.values() {
            for t in Transport::ALL {
                if let Some(p) = &tracked.paths[t] {
                    counts[t][p.status.state as usize] += 1;
                }
            }
        }
        if counts == self.published {
            return;
        }
        self.published = counts;
        for t in Transport::ALL {
            for s in PeerState::ALL {
                self.metrics
                    .states
                    .with_label_values(&[t.as_str(), s.as_str()])
                    .set(counts[t][s as usize]);
            }
        }
    }
}

/// Whether `t` can carry heartbeats to a peer at `addr`: this node runs
/// it, the peer's address on it is known, and the peer (if its mode is
/// known) runs it too.
fn usable(addr: &PeerAddr, t: Transport, local: NetworkMode, remote: Option<NetworkMode>) -> bool {
    match t {
        Transport::LibP2p => {
            local.has_libp2p() && !addr.libp2p.is_empty() && remote.is_none_or(|m| m.has_libp2p())
        }
        Transport::Iroh => {
            local.has_iroh() && addr.iroh.is_some() && remote.is_none_or(|m| m.has_iroh())
        }
    }
}

/// Resolve `dns:` entries now and every `dns_refresh`; dial each new
/// address over libp2p to learn who is there, and hand the peer over.
async fn resolve_names(
    node: Arc<Node>,
    config: ManagerConfig,
    names: Vec<String>,
    commands: mpsc::Sender<Command>,
) {
    let mut known: HashMap<std::net::IpAddr, PeerId> = HashMap::new();
    let me = node.identity().peer_id();
    loop {
        for name in &names {
            let addrs = match tokio::net::lookup_host((name.as_str(), config.dns_libp2p_port)).await
            {
                Ok(a) => a.collect::<Vec<_>>(),
                Err(e) => {
                    tracing::warn!(%name, error = %e, "bootstrap name does not resolve");
                    continue;
                }
            };
            for sock in addrs {
                if known.contains_key(&sock.ip()) {
                    continue;
                }
                let proto = match sock.ip() {
                    std::net::IpAddr::V4(ip) => Protocol::Ip4(ip),
                    std::net::IpAddr::V6(ip) => Protocol::Ip6(ip),
                };
                let addr: Multiaddr = Multiaddr::empty()
                    .with(proto)
                    .with(Protocol::Tcp(config.dns_libp2p_port));
                match node
                    .dial_libp2p(addr.clone(), config.heartbeat_timeout * DIAL_TIMEOUT_FACTOR)
                    .await
                {
                    Ok(peer) if peer == me => {
                        known.insert(sock.ip(), peer);
                    }
                    Ok(peer) => {
                        known.insert(sock.ip(), peer);
                        let iroh = SocketAddr::new(sock.ip(), config.dns_iroh_port);
                        if let Ok(found) = PeerAddr::new(peer, vec![addr], vec![iroh]) {
                            tracing::info!(%name, %peer, ip = %sock.ip(), "bootstrap name resolved to a peer");
                            if commands.send(Command::Add(found)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::debug!(%name, ip = %sock.ip(), error = %e, "bootstrap address did not answer");
                    }
                }
            }
        }
        tokio::time::sleep(config.dns_refresh).await;
    }
}
