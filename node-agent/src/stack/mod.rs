//! The two transport stacks, each serving the same [`Handler`] with the
//! same [`crate::wire`] envelopes.

pub mod iroh_stack;
pub mod libp2p_stack;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use libp2p::PeerId;

use crate::wire::{Envelope, Kind, WireError};

pub use crate::transport::{PerTransport, Transport};

/// Answers requests arriving on either stack. A hedged request can arrive
/// once per transport with the same request id: implementations are
/// idempotent or de-duplicate by it.
pub trait Handler: Send + Sync + 'static {
    /// Answer `request` from `from` (its libp2p PeerId, on either stack).
    fn handle(
        &self,
        from: PeerId,
        transport: Transport,
        request: Envelope,
    ) -> BoxFuture<'static, Result<Bytes, String>>;
    /// The mode this node advertises in its responses.
    fn mode(&self) -> switchyard_crds::NetworkMode;
    /// What a `Pong` carries: the node's addresses on both transports
    /// ([`Advert`]), so a peer met on one transport learns the other.
    fn advert(&self) -> Bytes {
        Bytes::new()
    }
    /// Whether the node is paused (fault injection): a paused node's
    /// stacks answer nothing until it resumes.
    fn paused(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        None
    }
}

/// Wait while `handler`'s node is paused.
pub(crate) async fn wait_unpaused(handler: &dyn Handler) {
    if let Some(mut rx) = handler.paused() {
        let _ = rx.wait_for(|paused| !paused).await;
    }
}

/// One heartbeat on a heartbeat stream: write `ping`, read its pong.
pub(crate) async fn ping_on<W, R>(
    send: &mut W,
    recv: &mut R,
    ping: &Envelope,
    max: usize,
) -> Result<Envelope, StackError>
where
    W: futures::AsyncWrite + Unpin,
    R: futures::AsyncRead + Unpin,
{
    crate::wire::write_frame(send, ping, max).await?;
    let pong = crate::wire::read_frame(recv, max).await?;
    if pong.kind != Kind::Pong || pong.request_id != ping.request_id {
        return Err(StackError::Protocol(format!(
            "ping {} was answered with {:?} {}",
            ping.request_id, pong.kind, pong.request_id
        )));
    }
    Ok(pong)
}

/// Who answers a heartbeat stream, and for whom.
pub(crate) struct PingAnswerer<'a> {
    pub handler: &'a dyn Handler,
    pub peers: &'a crate::peers::PeerSynchronizer,
    pub stats: &'a StackStats,
    pub peer: PeerId,
    pub transport: Transport,
    pub max: usize,
}

impl PingAnswerer<'_> {
    /// Answer `first` (when the caller has read it already) and every ping
    /// after it on the same stream, until the peer finishes the stream
    /// (`Ok`) or sends something that is not a ping (counted; `Err`). A
    /// paused node (fault injection) answers nothing meanwhile.
    pub(crate) async fn answer<R, W>(
        &self,
        mut first: Option<Envelope>,
        recv: &mut R,
        send: &mut W,
    ) -> Result<(), ()>
    where
        R: futures::AsyncRead + Unpin,
        W: futures::AsyncWrite + Unpin,
    {
        loop {
            let ping = match first.take() {
                Some(p) => p,
                None => match crate::wire::read_frame(recv, self.max).await {
                    Ok(p) if p.kind == Kind::Ping => p,
                    Err(e) if !e.is_malformed() => return Ok(()), // finished or gone
                    Ok(_) | Err(_) => {
                        self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                        return Err(());
                    }
                },
            };
            wait_unpaused(self.handler).await;
            hear_ping(self.peers, self.stats, self.peer, self.transport, &ping);
            let pong = pong(&ping, self.handler);
            if crate::wire::write_frame(send, &pong, self.max)
                .await
                .is_err()
            {
                return Ok(());
            }
            self.stats
                .heartbeats_answered
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A node's addresses, as a `Pong` carries them (JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Advert {
    /// libp2p listen addresses.
    #[serde(default)]
    pub libp2p: Vec<String>,
    /// iroh socket addresses.
    #[serde(default)]
    pub iroh: Vec<String>,
}

/// The most addresses an advert may carry per transport.
pub const MAX_ADVERTISED: usize = 16;
/// The longest address an advert may carry, in bytes.
pub const MAX_ADVERTISED_LEN: usize = 256;

impl Advert {
    /// Read a peer's advert, refusing one that is not JSON or carries more
    /// than [`MAX_ADVERTISED`] addresses per transport or an address
    /// longer than [`MAX_ADVERTISED_LEN`]: peers' adverts are kept, so
    /// their size is bounded.
    pub fn parse(bytes: &[u8]) -> Result<Advert, String> {
        let advert: Advert =
            serde_json::from_slice(bytes).map_err(|e| format!("not an address advert: {e}"))?;
        for (name, list) in [("libp2p", &advert.libp2p), ("iroh", &advert.iroh)] {
            if list.len() > MAX_ADVERTISED {
                return Err(format!(
                    "{} {name} addresses, more than {MAX_ADVERTISED}",
                    list.len()
                ));
            }
            if let Some(a) = list.iter().find(|a| a.len() > MAX_ADVERTISED_LEN) {
                return Err(format!(
                    "a {name} address of {} bytes, longer than {MAX_ADVERTISED_LEN}",
                    a.len()
                ));
            }
        }
        Ok(advert)
    }
}

#[cfg(test)]
mod advert_tests {
    use super::*;

    #[test]
    fn adverts_are_read_or_refused_with_the_reason() {
        let ok = br#"{"libp2p":["/ip4/10.0.0.1/tcp/4001"],"iroh":["10.0.0.1:4002"]}"#;
        let a = Advert::parse(ok).expect("a good advert");
        assert_eq!(a.iroh, vec!["10.0.0.1:4002".to_owned()]);
        assert!(
            Advert::parse(b"{not json")
                .unwrap_err()
                .contains("not an address advert")
        );
        let many = serde_json::to_vec(&Advert {
            libp2p: vec!["/ip4/1.2.3.4/tcp/1".into(); MAX_ADVERTISED + 1],
            iroh: Vec::new(),
        })
        .expect("json");
        assert!(
            Advert::parse(&many)
                .unwrap_err()
                .contains("17 libp2p addresses")
        );
        let long = serde_json::to_vec(&Advert {
            libp2p: Vec::new(),
            iroh: vec!["x".repeat(MAX_ADVERTISED_LEN + 1)],
        })
        .expect("json");
        assert!(
            Advert::parse(&long)
                .unwrap_err()
                .contains("longer than 256")
        );
    }
}

#[cfg(test)]
mod ping_tests {
    use super::*;
    use crate::peers::PeerSynchronizer;
    use switchyard_crds::NetworkMode;

    fn ping(payload: Bytes) -> Envelope {
        Envelope {
            kind: Kind::Ping,
            mode: NetworkMode::IrohOnly,
            request_id: 1,
            payload,
        }
    }

    #[test]
    fn a_ping_tells_its_mode_and_round_trip_and_the_addresses_it_brings() {
        let peer = crate::identity::Identity::generate().peer_id();
        let (peers, stats) = (PeerSynchronizer::new(), StackStats::default());
        let hear =
            |payload: Bytes| hear_ping(&peers, &stats, peer, Transport::LibP2p, &ping(payload));
        let iroh = || peers.get(&peer).map(|v| v.iroh.listen);
        // A round trip and a request for addresses are not adverts.
        hear(rtt_payload(Duration::from_millis(3)));
        hear(Bytes::from_static(ASK_ADVERT));
        assert_eq!(iroh(), Some(vec![]));
        let facts = peers.facts(&peer).expect("heard");
        assert_eq!(facts.mode, Some(NetworkMode::IrohOnly));
        assert_eq!(
            facts.latency(Transport::LibP2p),
            Some(Duration::from_millis(3))
        );
        hear(advert_payload(&Advert {
            libp2p: vec![],
            iroh: vec!["127.0.0.1:4000".into()],
        }));
        assert_eq!(iroh(), Some(vec!["127.0.0.1:4000".to_owned()]));
        // A bad advert is counted and dropped; what was known stays.
        hear(advert_payload(&Advert {
            libp2p: vec![],
            iroh: vec!["127.0.0.1:1".into(); MAX_ADVERTISED + 1],
        }));
        hear(Bytes::from_static(b"{not json at all"));
        assert_eq!(stats.bad_adverts.load(Ordering::Relaxed), 2);
        assert_eq!(iroh(), Some(vec!["127.0.0.1:4000".to_owned()]));
    }
}

/// Runs a handler at most once per (peer, request id) among the last
/// `capacity` requests: a hedged or retried request that arrives again
/// (on either transport) gets the first arrival's answer, so handlers need
/// not be idempotent. Requesters start their ids at a random point, so a
/// restarted peer does not collide with its earlier life.
pub struct Dedup {
    inner: Arc<dyn Handler>,
    capacity: usize,
    seen: std::sync::Mutex<DedupState>,
}

type SharedAnswer = futures::future::Shared<BoxFuture<'static, Result<Bytes, String>>>;

#[derive(Default)]
struct DedupState {
    answers: std::collections::HashMap<(PeerId, u64), SharedAnswer>,
    order: std::collections::VecDeque<(PeerId, u64)>,
}

impl Dedup {
    /// Wrap `inner`, remembering the last `capacity` requests.
    pub fn new(inner: Arc<dyn Handler>, capacity: usize) -> Self {
        Dedup {
            inner,
            capacity: capacity.max(1),
            seen: std::sync::Mutex::new(DedupState::default()),
        }
    }
}

impl Handler for Dedup {
    fn handle(
        &self,
        from: PeerId,
        transport: Transport,
        request: Envelope,
    ) -> BoxFuture<'static, Result<Bytes, String>> {
        use futures::FutureExt;
        let key = (from, request.request_id);
        let mut seen = self.seen.lock().expect("dedup lock");
        if let Some(answer) = seen.answers.get(&key) {
            return answer.clone().boxed();
        }
        let answer = self.inner.handle(from, transport, request).shared();
        if seen.order.len() >= self.capacity
            && let Some(old) = seen.order.pop_front()
        {
            seen.answers.remove(&old);
        }
        seen.order.push_back(key);
        seen.answers.insert(key, answer.clone());
        answer.boxed()
    }
    fn mode(&self) -> switchyard_crds::NetworkMode {
        self.inner.mode()
    }
    fn advert(&self) -> Bytes {
        self.inner.advert()
    }
    fn paused(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        self.inner.paused()
    }
}

/// Counters a stack keeps; the metrics read them.
#[derive(Debug, Default)]
pub struct StackStats {
    /// Payload bytes sent.
    pub bytes_sent: AtomicU64,
    /// Payload bytes received.
    pub bytes_received: AtomicU64,
    /// Malformed frames received (each drops its connection).
    pub malformed: AtomicU64,
    /// Connections refused because the peer is not on the allowlist.
    pub rejected: AtomicU64,
    /// Heartbeat streams this stack opened (one per peer while its
    /// connection lasts).
    pub heartbeat_streams: AtomicU64,
    /// Peers' heartbeats this stack answered.
    pub heartbeats_answered: AtomicU64,
    /// Address adverts from peers' pongs refused (not JSON, or too big).
    pub bad_adverts: AtomicU64,
    /// Connections or heartbeat streams refused because the most the
    /// stack serves at once were already being served.
    pub overloaded: AtomicU64,
    /// Dials this stack began (the iroh stack counts them: one per peer
    /// while the connection lasts, and none to a peer that dialled it).
    pub dials: AtomicU64,
}

/// Why a stack could not do something.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StackError {
    /// The stack could not start.
    #[error("starting: {0}")]
    Start(String),
    /// No connection to the peer.
    #[error("connection: {0}")]
    Connection(String),
    /// The peer sent something malformed, or the frame was too large.
    #[error("protocol: {0}")]
    Protocol(String),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The stack is stopped.
    #[error("the stack is stopped")]
    Stopped,
    /// The peer is not on this node's allowlist.
    #[error("{0} is not on the allowlist")]
    NotAllowed(String),
}

impl StackError {
    /// Whether trying again (here or on the other transport) may work: the
    /// connection or the stack went away, as during a peer's mode switch.
    /// Protocol errors and timeouts are final.
    pub fn is_transient(&self) -> bool {
        matches!(self, StackError::Connection(_) | StackError::Stopped)
    }
}

impl From<WireError> for StackError {
    fn from(e: WireError) -> Self {
        if e.is_malformed() {
            StackError::Protocol(e.to_string())
        } else {
            StackError::Connection(e.to_string())
        }
    }
}

/// Inbound requests a stack has accepted and not yet answered; a retiring
/// stack is stopped only once this reaches zero.
#[derive(Debug, Default, Clone)]
pub struct Inbound(Arc<AtomicUsize>);

impl Inbound {
    /// Requests accepted and not yet answered.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    /// Count one request until the guard drops, if `accepting` still
    /// holds once it is counted (so a retiring stack, which clears
    /// `accepting` and then waits for zero, never misses one).
    pub(crate) fn admit(&self, accepting: &std::sync::atomic::AtomicBool) -> Option<InboundGuard> {
        self.0.fetch_add(1, Ordering::SeqCst);
        let guard = InboundGuard(self.0.clone());
        accepting.load(Ordering::SeqCst).then_some(guard)
    }
}

/// Uncounts an inbound request when dropped.
#[derive(Debug)]
pub(crate) struct InboundGuard(Arc<AtomicUsize>);

impl Drop for InboundGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether an inbound frame is one a stack serves: a request, or a ping.
pub(crate) fn is_inbound(kind: Kind) -> bool {
    matches!(kind, Kind::Request | Kind::Ping)
}

/// A ping with this payload asks for the answerer's [`Advert`].
pub const ASK_ADVERT: &[u8] = b"advert";

/// A ping's payload carrying the sender's last round trip on this path
/// (microseconds, 8 bytes big-endian): the answerer, which skips its own
/// heartbeats while it hears ours, learns the latency without measuring.
pub fn rtt_payload(rtt: Duration) -> Bytes {
    let micros = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
    Bytes::copy_from_slice(&micros.to_be_bytes())
}

/// The round trip a ping carries, if it carries one.
pub(crate) fn ping_rtt(ping: &Envelope) -> Option<Duration> {
    let bytes: [u8; 8] = ping.payload.as_ref().try_into().ok()?;
    Some(Duration::from_micros(u64::from_be_bytes(bytes)))
}

/// A ping's payload carrying the sender's [`Advert`]: JSON, so it starts
/// with `{` and is longer than a round trip's 8 bytes. A node sends one
/// on each connection of a transport it stops (`Node::set_mode`), so its
/// peers learn at once both its new mode and where to reach it now.
pub fn advert_payload(advert: &Advert) -> Bytes {
    Bytes::from(serde_json::to_vec(advert).unwrap_or_default())
}

/// The advert a ping carries, if it carries one.
fn ping_advert(ping: &Envelope) -> Option<&[u8]> {
    let p = ping.payload.as_ref();
    (p.len() > 8 && p.first() == Some(&b'{')).then_some(p)
}

/// What a ping from `peer` over `t` tells: that the peer is alive there,
/// its mode, the path's round trip if it measured one, and its addresses
/// if it brings them. A bad advert is counted and dropped, the rest kept.
pub(crate) fn hear_ping(
    peers: &crate::peers::PeerSynchronizer,
    stats: &StackStats,
    peer: PeerId,
    t: Transport,
    ping: &Envelope,
) {
    peers.heard(peer, t, ping.mode, ping_rtt(ping));
    if let Some(bytes) = ping_advert(ping) {
        match Advert::parse(bytes) {
            Ok(a) => peers.advertised_addrs(peer, a.libp2p, a.iroh),
            Err(why) => {
                stats.bad_adverts.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, transport = t.as_str(), %why, "bad address advert in a ping dropped");
            }
        }
    }
}

/// The stack's own answer to a ping.
pub(crate) fn pong(ping: &Envelope, handler: &dyn Handler) -> Envelope {
    Envelope {
        kind: Kind::Pong,
        mode: handler.mode(),
        request_id: ping.request_id,
        // Addresses only when asked (on a new connection): most heartbeats
        // carry nothing.
        payload: if ping.payload.as_ref() == ASK_ADVERT {
            handler.advert()
        } else {
            Bytes::new()
        },
    }
}

/// The answer of a retiring stack to `request`, sent by a node in `mode`.
pub fn retiring(request: &Envelope, mode: switchyard_crds::NetworkMode, reason: &str) -> Envelope {
    Envelope {
        kind: Kind::Retiring,
        mode,
        request_id: request.request_id,
        payload: Bytes::copy_from_slice(reason.as_bytes()),
    }
}

/// Run the handler and wrap its answer.
pub(crate) async fn answer(
    handler: &dyn Handler,
    from: PeerId,
    transport: Transport,
    request: Envelope,
) -> Envelope {
    let id = request.request_id;
    let mode = handler.mode();
    match handler.handle(from, transport, request).await {
        Ok(payload) => Envelope {
            kind: Kind::Response,
            mode,
            request_id: id,
            payload,
        },
        Err(reason) => Envelope {
            kind: Kind::Refused,
            mode,
            request_id: id,
            payload: Bytes::from(reason.into_bytes()),
        },
    }
}
