//! The PeerSynchronizer: one view of every peer, merging what each
//! transport has seen. The libp2p stack knows a peer by its PeerId, the
//! iroh stack by its EndpointId; both come from the same ed25519 key, so
//! the pure mapping in [`crate::identity`] joins them without a lookup
//! table. The bridge adds what requests teach: the mode a peer advertises,
//! and per-transport latency and success rate.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use switchyard_crds::NetworkMode;

use crate::identity::{endpoint_to_peer, peer_to_endpoint};
use crate::transport::{PerTransport, Transport};

/// What one transport knows of a peer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PathView {
    /// Open connections to the peer on this transport.
    pub connections: u32,
    /// Remote addresses of its connections (for iroh, whose one socket
    /// both dials and listens, that is where it listens).
    pub addrs: Vec<String>,
    /// Where it says it listens (libp2p identify).
    pub listen: Vec<String>,
    /// Smoothed round trip of answered requests.
    pub latency: Option<Duration>,
    /// Smoothed share of requests answered, 0..1.
    pub success_rate: Option<f64>,
    /// When the peer was last connected or answered on this transport.
    pub last_seen: Option<Instant>,
    /// When the peer last sent us a heartbeat on this transport: proof
    /// that it is alive there, so ours can wait.
    pub heard: Option<Instant>,
}

impl PathView {
    /// Whether the peer is connected on this transport now.
    pub fn connected(&self) -> bool {
        self.connections > 0
    }
}

/// One peer, as both transports see it.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerView {
    /// Its libp2p PeerId.
    pub peer: PeerId,
    /// Its iroh EndpointId: the same key.
    pub endpoint: iroh::EndpointId,
    /// The mode it last advertised.
    pub mode: Option<NetworkMode>,
    /// What libp2p knows.
    pub libp2p: PathView,
    /// What iroh knows.
    pub iroh: PathView,
}

impl PeerView {
    /// The view of one transport.
    pub fn path(&self, t: Transport) -> &PathView {
        match t {
            Transport::LibP2p => &self.libp2p,
            Transport::Iroh => &self.iroh,
        }
    }

    fn path_mut(&mut self, t: Transport) -> &mut PathView {
        match t {
            Transport::LibP2p => &mut self.libp2p,
            Transport::Iroh => &mut self.iroh,
        }
    }

    /// Connected on both transports.
    pub fn dual(&self) -> bool {
        self.libp2p.connected() && self.iroh.connected()
    }

    /// Note that the peer advertised `mode`; its iroh id if it started or
    /// stopped running iroh by it.
    fn set_mode(&mut self, mode: NetworkMode) -> Option<iroh::EndpointId> {
        let before = self.mode.replace(mode)?;
        (before.has_iroh() != mode.has_iroh()).then_some(self.endpoint)
    }
}

/// What routing needs to know about a peer; per-transport arrays are
/// indexed libp2p, iroh.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RouteFacts {
    /// The mode it last advertised.
    pub mode: Option<NetworkMode>,
    /// Smoothed round trip per transport.
    pub latency: PerTransport<Option<Duration>>,
    /// Smoothed success rate per transport.
    pub success_rate: PerTransport<Option<f64>>,
    /// When the peer last sent us a heartbeat, per transport.
    pub heard: PerTransport<Option<Instant>>,
    /// Whether a connection to the peer is open, per transport.
    pub connected: PerTransport<bool>,
}

impl RouteFacts {
    /// The smoothed round trip over `t`.
    pub fn latency(&self, t: Transport) -> Option<Duration> {
        self.latency[t]
    }

    /// The smoothed success rate over `t`.
    pub fn success_rate(&self, t: Transport) -> Option<f64> {
        self.success_rate[t]
    }
}

/// What a stack reports about a peer.
#[derive(Debug, Clone)]
pub enum PeerEvent {
    /// A connection opened, from or to `addr`.
    Connected {
        /// The remote address of the connection.
        addr: Option<String>,
    },
    /// A connection closed.
    Disconnected,
    /// The peer said where it listens (libp2p identify).
    ListenAddrs(Vec<String>),
}

/// Counts per transport, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerCounts {
    /// Peers connected over libp2p.
    pub libp2p: usize,
    /// Peers connected over iroh.
    pub iroh: usize,
    /// Peers connected over both.
    pub dual: usize,
}

/// The merged peer view, shared by both stacks and the bridge.
#[derive(Debug, Default)]
pub struct PeerSynchronizer {
    peers: Mutex<HashMap<PeerId, PeerView>>,
    /// Peers that said where they listen, differently from before, since
    /// the PeerManager last took them: at most one entry per peer.
    moved: Mutex<HashSet<PeerId>>,
    /// Wakes the PeerManager when `moved` gains a peer.
    moved_notify: tokio::sync::Notify,
    /// How many times each peer, by the modes it advertised, started or
    /// stopped running iroh (see [`Self::iroh_turns`]).
    iroh_turns: Mutex<HashMap<iroh::EndpointId, u64>>,
    /// Bumped with every entry of `iroh_turns`.
    iroh_turned: tokio::sync::watch::Sender<u64>,
}

impl PeerSynchronizer {
    /// An empty view.
    pub fn new() -> Self {
        PeerSynchronizer::default()
    }

    fn with<R>(&self, peer: PeerId, f: impl FnOnce(&mut PeerView) -> R) -> Option<R> {
        let mut peers = self.peers.lock().expect("peers lock");
        if let Some(view) = peers.get_mut(&peer) {
            return Some(f(view));
        }
        // Mapping the id decompresses a curve point (tens of µs), so it is
        // done once per peer, not per request. A PeerId that is not
        // ed25519 has no iroh twin; the stacks only admit ed25519 peers.
        let endpoint = peer_to_endpoint(&peer).ok()?;
        let view = peers.entry(peer).or_insert(PeerView {
            peer,
            endpoint,
            mode: None,
            libp2p: PathView::default(),
            iroh: PathView::default(),
        });
        Some(f(view))
    }

    /// A libp2p event about `peer`.
    pub fn libp2p(&self, peer: PeerId, event: PeerEvent) {
        self.apply(Transport::LibP2p, peer, event);
    }

    /// An iroh event about `endpoint`, joined to its PeerId.
    pub fn iroh(&self, endpoint: &iroh::EndpointId, event: PeerEvent) {
        if let Ok(peer) = endpoint_to_peer(endpoint) {
            self.apply(Transport::Iroh, peer, event);
        }
    }

    fn apply(&self, t: Transport, peer: PeerId, event: PeerEvent) {
        // Whether the peer showed an address it had not: a listen address
        // (identify), or a connection from where it listens (iroh; a
        // libp2p connection's remote port is not where the peer listens,
        // and nothing dials it).
        let moved = self.with(peer, |v| {
            let path = v.path_mut(t);
            match event {
                PeerEvent::Connected { addr } => {
                    path.connections += 1;
                    path.last_seen = Some(Instant::now());
                    match addr {
                        Some(a) if !path.addrs.contains(&a) => {
                            path.addrs.push(a);
                            t == Transport::Iroh
                        }
                        _ => false,
                    }
                }
                PeerEvent::Disconnected => {
                    path.connections = path.connections.saturating_sub(1);
                    false
                }
                PeerEvent::ListenAddrs(addrs) => {
                    let moved = path.listen != addrs;
                    path.listen = addrs;
                    moved
                }
            }
        });
        if moved == Some(true) {
            self.moved(peer);
        }
    }

    /// `peer` listens somewhere new: tell the PeerManager.
    fn moved(&self, peer: PeerId) {
        if self.moved.lock().expect("moved lock").insert(peer) {
            self.moved_notify.notify_one();
        }
    }

    /// The peers that said they listen somewhere new since the last call.
    pub fn take_moved(&self) -> Vec<PeerId> {
        self.moved.lock().expect("moved lock").drain().collect()
    }

    /// Returns once a peer has said it listens somewhere new since the
    /// last [`Self::take_moved`] (or at once, if one did before this call
    /// and was not yet waited for).
    pub async fn moved_peers(&self) {
        self.moved_notify.notified().await;
    }

    /// A request to `peer` over `t` finished: answered (`ok`) in `rtt`, or
    /// not. `mode` is what its answer advertised.
    pub fn record(
        &self,
        peer: PeerId,
        t: Transport,
        ok: bool,
        rtt: Duration,
        mode: Option<NetworkMode>,
    ) {
        let turned = self.with(peer, |v| {
            let turned = mode.and_then(|m| v.set_mode(m));
            let path = v.path_mut(t);
            let hit = if ok { 1.0 } else { 0.0 };
            path.success_rate = Some(path.success_rate.map_or(hit, |s| 0.9 * s + 0.1 * hit));
            if ok {
                path.last_seen = Some(Instant::now());
                path.latency = Some(
                    path.latency
                        .map_or(rtt, |l| l.mul_f64(0.8) + rtt.mul_f64(0.2)),
                );
            }
            turned
        });
        self.turned(turned.flatten());
    }

    /// `peer` sent us a heartbeat over `t`, saying it runs `mode` and, if
    /// it has measured one, the path's round trip (the same both ways).
    pub fn heard(&self, peer: PeerId, t: Transport, mode: NetworkMode, rtt: Option<Duration>) {
        let turned = self.with(peer, |v| {
            let turned = v.set_mode(mode);
            let path = v.path_mut(t);
            let now = Instant::now();
            path.heard = Some(now);
            path.last_seen = Some(now);
            if let Some(rtt) = rtt {
                path.latency = Some(
                    path.latency
                        .map_or(rtt, |l| l.mul_f64(0.8) + rtt.mul_f64(0.2)),
                );
            }
            turned
        });
        self.turned(turned.flatten());
    }

    /// `peer` said it runs `mode` (in a request it sent).
    pub fn advertised(&self, peer: PeerId, mode: NetworkMode) {
        let turned = self.with(peer, |v| v.set_mode(mode));
        self.turned(turned.flatten());
    }

    /// The peer with iroh id `endpoint` started or stopped running iroh.
    fn turned(&self, endpoint: Option<iroh::EndpointId>) {
        let Some(endpoint) = endpoint else { return };
        *self
            .iroh_turns
            .lock()
            .expect("iroh turns lock")
            .entry(endpoint)
            .or_default() += 1;
        self.iroh_turned.send_modify(|n| *n += 1);
    }

    /// How many times the peer with iroh id `endpoint` was seen to start or
    /// stop running iroh (a mode it advertised had iroh and the one before
    /// had not, or the other way round). A dial begun before the latest
    /// such turn was aimed at a socket that has since closed or opened:
    /// not worth waiting for (see the iroh stack's `connection`).
    pub fn iroh_turns(&self, endpoint: &iroh::EndpointId) -> u64 {
        self.iroh_turns
            .lock()
            .expect("iroh turns lock")
            .get(endpoint)
            .copied()
            .unwrap_or(0)
    }

    /// Changes whenever any peer's [`Self::iroh_turns`] does.
    pub fn iroh_turned(&self) -> tokio::sync::watch::Receiver<u64> {
        self.iroh_turned.subscribe()
    }

    /// `peer` said where it listens on both transports (in a pong).
    pub fn advertised_addrs(&self, peer: PeerId, libp2p: Vec<String>, iroh: Vec<String>) {
        let moved = self.with(peer, |v| {
            let moved = v.libp2p.listen != libp2p || v.iroh.listen != iroh;
            v.libp2p.listen = libp2p;
            v.iroh.listen = iroh;
            moved
        });
        if moved == Some(true) {
            self.moved(peer);
        }
    }

    /// A request to `peer` over `t` was abandoned after `waited` because
    /// the other transport answered first: its round trip is at least
    /// that. Counts as a latency sample, not as a failure.
    pub fn lower_bound(&self, peer: PeerId, t: Transport, waited: Duration) {
        self.with(peer, |v| {
            let path = v.path_mut(t);
            path.latency = Some(
                path.latency
                    .map_or(waited, |l| l.max(l.mul_f64(0.8) + waited.mul_f64(0.2))),
            );
        });
    }

    /// What routing needs about `peer`, without copying its addresses.
    pub fn facts(&self, peer: &PeerId) -> Option<RouteFacts> {
        let peers = self.peers.lock().expect("peers lock");
        let v = peers.get(peer)?;
        Some(RouteFacts {
            mode: v.mode,
            latency: PerTransport::new(v.libp2p.latency, v.iroh.latency),
            success_rate: PerTransport::new(v.libp2p.success_rate, v.iroh.success_rate),
            heard: PerTransport::new(v.libp2p.heard, v.iroh.heard),
            connected: PerTransport::new(v.libp2p.connected(), v.iroh.connected()),
        })
    }

    /// One peer's view.
    pub fn get(&self, peer: &PeerId) -> Option<PeerView> {
        self.peers.lock().expect("peers lock").get(peer).cloned()
    }

    /// Every peer, ordered by PeerId.
    pub fn all(&self) -> Vec<PeerView> {
        let mut v: Vec<_> = self
            .peers
            .lock()
            .expect("peers lock")
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|p| p.peer.to_bytes());
        v
    }

    /// Connected peers per transport.
    pub fn counts(&self) -> PeerCounts {
        let peers = self.peers.lock().expect("peers lock");
        let mut c = PeerCounts::default();
        for p in peers.values() {
            c.libp2p += usize::from(p.libp2p.connected());
            c.iroh += usize::from(p.iroh.connected());
            c.dual += usize::from(p.dual());
        }
        c
    }

    /// Every connection on `t` is gone (the stack stopped).
    pub fn transport_down(&self, t: Transport) {
        for v in self.peers.lock().expect("peers lock").values_mut() {
            v.path_mut(t).connections = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    #[test]
    fn both_transports_land_on_one_peer_through_the_id_mapping() {
        let sync = PeerSynchronizer::new();
        let id = Identity::generate();
        sync.libp2p(
            id.peer_id(),
            PeerEvent::Connected {
                addr: Some("/ip4/127.0.0.1/tcp/1".into()),
            },
        );
        sync.iroh(
            &id.endpoint_id(),
            PeerEvent::Connected {
                addr: Some("127.0.0.1:2".into()),
            },
        );
        sync.record(
            id.peer_id(),
            Transport::Iroh,
            true,
            Duration::from_millis(2),
            Some(NetworkMode::DualPreferIroh),
        );
        let all = sync.all();
        assert_eq!(all.len(), 1, "one peer, not one per transport");
        let v = &all[0];
        assert_eq!(v.endpoint, id.endpoint_id());
        assert!(v.dual());
        assert_eq!(v.mode, Some(NetworkMode::DualPreferIroh));
        assert_eq!(v.iroh.latency, Some(Duration::from_millis(2)));
        assert_eq!(
            sync.counts(),
            PeerCounts {
                libp2p: 1,
                iroh: 1,
                dual: 1
            }
        );
        sync.libp2p(id.peer_id(), PeerEvent::Disconnected);
        assert_eq!(sync.counts().dual, 0);
        sync.transport_down(Transport::Iroh);
        assert_eq!(sync.counts().iroh, 0);
    }

    #[tokio::test]
    async fn a_peer_that_says_it_listens_somewhere_new_is_handed_on_once() {
        let sync = PeerSynchronizer::new();
        let (a, b) = (
            Identity::generate().peer_id(),
            Identity::generate().peer_id(),
        );
        let at = |s: &str| vec![s.to_string()];
        sync.advertised_addrs(a, at("/ip4/127.0.0.1/tcp/1"), Vec::new());
        sync.advertised_addrs(a, at("/ip4/127.0.0.1/tcp/1"), at("127.0.0.1:2"));
        sync.libp2p(b, PeerEvent::ListenAddrs(at("/ip4/127.0.0.1/tcp/3")));
        tokio::time::timeout(Duration::from_secs(1), sync.moved_peers())
            .await
            .expect("woken");
        let mut moved = sync.take_moved();
        moved.sort();
        let mut both = vec![a, b];
        both.sort();
        assert_eq!(moved, both, "each peer once, however often it moved");
        // The same addresses again, a heartbeat's connection, a known
        // iroh socket: nothing new.
        sync.advertised_addrs(a, at("/ip4/127.0.0.1/tcp/1"), at("127.0.0.1:2"));
        sync.libp2p(b, PeerEvent::ListenAddrs(at("/ip4/127.0.0.1/tcp/3")));
        sync.libp2p(b, PeerEvent::Connected { addr: None });
        assert!(sync.take_moved().is_empty());
        // A connection from a new iroh socket is news.
        let c = Identity::generate();
        sync.iroh(
            &c.endpoint_id(),
            PeerEvent::Connected {
                addr: Some("127.0.0.1:4".into()),
            },
        );
        assert_eq!(sync.take_moved(), vec![c.peer_id()]);
    }

    #[test]
    fn a_peer_turns_iroh_on_or_off_only_by_a_mode_change_that_adds_or_drops_it() {
        let sync = PeerSynchronizer::new();
        let id = Identity::generate();
        let (peer, endpoint) = (id.peer_id(), id.endpoint_id());
        let turned = sync.iroh_turned();
        let steps = [
            // The first mode heard is no turn: nothing was known before.
            (NetworkMode::LibP2pOnly, 0),
            (NetworkMode::LibP2pOnly, 0),
            (NetworkMode::DualPreferLibP2p, 1),
            (NetworkMode::IrohOnly, 1),
            (NetworkMode::DualLoadBalance, 1),
            (NetworkMode::LibP2pOnly, 2),
        ];
        for (i, (mode, turns)) in steps.into_iter().enumerate() {
            // Each way the peer's mode is learnt counts.
            match i % 3 {
                0 => sync.advertised(peer, mode),
                1 => sync.record(peer, Transport::LibP2p, true, Duration::ZERO, Some(mode)),
                _ => sync.heard(peer, Transport::LibP2p, mode, None),
            }
            assert_eq!(sync.iroh_turns(&endpoint), turns, "after {mode}");
        }
        assert_eq!(*turned.borrow(), 2, "every turn wakes whoever watches");
        let other = Identity::generate().endpoint_id();
        assert_eq!(sync.iroh_turns(&other), 0);
    }
}
