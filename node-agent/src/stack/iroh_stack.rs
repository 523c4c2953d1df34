//! The iroh stack: an Endpoint with relays off and no address lookup
//! (nothing leaves the configured network unless a relay URL is given),
//! ALPN `switchyard/rpc/1`, one bidirectional stream per request carrying
//! one frame each way.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use iroh::endpoint::{
    AfterHandshakeOutcome, Connection, EndpointHooks, Incoming, IncomingAddr, RecvStream,
    SendStream, VarInt, presets,
};
use iroh::{Endpoint, EndpointAddr, EndpointId, RelayMode};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Handler, Inbound, StackError, StackStats, Transport};
use crate::identity::{Identity, endpoint_to_peer, peer_to_endpoint};
use crate::peers::{PeerEvent, PeerSynchronizer};
use crate::wire::{self, Envelope, Kind};

/// The ALPN both sides must offer.
pub const ALPN: &[u8] = b"switchyard/rpc/1";

/// Close code for a peer that sent a malformed frame.
const CLOSE_MALFORMED: u32 = 1;

/// iroh stack settings.
#[derive(Debug, Clone)]
pub struct IrohConfig {
    /// UDP address to bind.
    pub bind: SocketAddr,
    /// A relay to use; none by default.
    pub relay_url: Option<iroh::RelayUrl>,
    /// Largest frame body accepted or sent.
    pub max_frame: usize,
    /// When not empty, only these peers (by their libp2p PeerId; the iroh
    /// id follows) may connect, either way; others are refused once the
    /// TLS handshake has told who they are.
    pub allowlist: Vec<libp2p::PeerId>,
}

impl Default for IrohConfig {
    fn default() -> Self {
        IrohConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            relay_url: None,
            max_frame: wire::DEFAULT_MAX_FRAME,
            allowlist: Vec::new(),
        }
    }
}

/// A running iroh stack.
///
/// Everything that holds the endpoint or one of its connections (and so
/// its UDP socket) is either a task in `tasks` or a request holding one of
/// its tokens: stopping cancels the tasks, and the release that follows
/// waits for all of them before it reports the port free (a stack started
/// on the port waits for that report).
pub struct IrohStack {
    /// Taken when the stack stops.
    endpoint: std::sync::Mutex<Option<Endpoint>>,
    addr: EndpointAddr,
    /// What both directions share: the connection map, the handler, the
    /// stats and the tasks that hold the endpoint.
    serving: Arc<Serving>,
    /// Each peer's heartbeat stream, idle between pings (a ping takes it
    /// out, so one ping per peer runs at a time).
    pings: std::sync::Mutex<HashMap<EndpointId, (SendStream, RecvStream)>>,
}

/// A connection to a peer, and the turn its bulk requests take.
#[derive(Clone)]
struct Peer {
    conn: Connection,
    bulk: Bulk,
}

/// Each peer's one connection (whichever side dialled it; both serve
/// requests on it), or the dial that will give it.
type Conns = Arc<Mutex<HashMap<EndpointId, Slot>>>;

/// A peer's entry in the connection map.
#[derive(Clone)]
enum Slot {
    Open(Peer),
    Dialling(Dialling),
}

/// A dial in flight.
#[derive(Clone)]
struct Dialling {
    /// Its outcome (or the sender gone: the stack stopped) ends the wait.
    outcome: tokio::sync::watch::Receiver<Option<Result<Peer, String>>>,
    /// The peer's [`PeerSynchronizer::iroh_turns`] when it began.
    turns: u64,
    /// Ends it, when it is abandoned.
    abandon: CancellationToken,
}

impl Dialling {
    fn is(&self, other: &Dialling) -> bool {
        self.outcome.same_channel(&other.outcome)
    }
}

/// Which connection, and how many datagrams had come in on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Heard {
    conn: usize,
    datagrams: u64,
}

impl Heard {
    fn of(conn: &Connection) -> Self {
        Heard {
            conn: conn.stable_id(),
            datagrams: conn.stats().udp_rx.datagrams,
        }
    }
}

/// Close code for a connection on which the peer went silent.
const CLOSE_SILENT: u32 = 3;

/// The longest a dial runs. It runs on its own, not in the request that
/// started it: a request that gives up (its deadline, or a hedge that the
/// other transport answered) leaves the dial to finish for the next one.
/// Cancelled with the request, a handshake that takes longer than
/// requests wait was abandoned and begun again by every request; at 100
/// agents under load that was hundreds of handshakes a second, none
/// finished.
const DIAL_FOR: Duration = Duration::from_secs(10);

/// Frames at least this large are bulk: on one connection they are sent
/// one at a time ([`BULK_STREAMS`]).
const BULK_FRAME: usize = 64 * 1024;

/// Bulk frames in flight at once per connection and direction.
///
/// Eight 1 MiB requests written at once on one connection interleave
/// their packets: the receiver wakes eight stream readers per round of
/// packets and each takes the connection's lock, and on two cores that
/// cost a fifth to a half of the throughput of one at a time
/// (docs/benchmarks.md). Taking turns, a frame's turn ends when the peer
/// has acknowledged all of it (or answered), so the next one is already
/// on the wire while the first is being handled. Small frames (pings,
/// ordinary requests) never wait for a turn.
///
/// Turns are taken only on a path whose round trip is under
/// [`BULK_TURN_RTT`]: there a frame's time to its acknowledgement is
/// mostly its own sending, so waiting for it costs little. On a longer
/// path it would allow one frame per round trip, and frames must overlap
/// to fill the path.
const BULK_STREAMS: usize = 1;

/// The longest round trip on which bulk frames take turns.
const BULK_TURN_RTT: Duration = Duration::from_millis(1);

/// The turn bulk frames take on one connection in one direction.
#[derive(Clone)]
struct Bulk(Arc<tokio::sync::Semaphore>);

impl Bulk {
    fn new() -> Self {
        Bulk(Arc::new(tokio::sync::Semaphore::new(BULK_STREAMS)))
    }

    /// A turn for a frame of `len` bytes on `conn`: `None` for a small
    /// one, or on a long path, which do not wait.
    async fn turn(
        &self,
        conn: &Connection,
        len: usize,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if len < BULK_FRAME {
            return None;
        }
        let paths = conn.paths();
        let rtt = paths.iter().find(|p| p.is_selected()).map(|p| p.rtt());
        if rtt.is_none_or(|rtt| rtt >= BULK_TURN_RTT) {
            return None;
        }
        // The semaphore is never closed.
        self.0.clone().acquire_owned().await.ok()
    }
}

/// Write `envelope` on `send` and finish it, in `bulk`'s turn if it is
/// large; then `read` the answer. The turn ends once the peer has
/// acknowledged the whole frame, or the answer came first.
async fn exchange<T>(
    conn: &Connection,
    bulk: &Bulk,
    send: &mut SendStream,
    envelope: &Envelope,
    max_frame: usize,
    read: impl Future<Output = Result<T, StackError>>,
) -> Result<T, StackError> {
    let turn = bulk.turn(conn, envelope.payload.len()).await;
    wire::write_frame(send, envelope, max_frame)
        .await
        .map_err(StackError::from)?;
    let _ = send.finish();
    let Some(turn) = turn else {
        return read.await;
    };
    let mut read = std::pin::pin!(read);
    tokio::select! {
        r = &mut read => r,
        _ = send.stopped() => {
            drop(turn);
            read.await
        }
    }
}

/// How long a stack started on a fixed port waits for an earlier stack of
/// this process to let go of it (its close has its own bound, about 3 s
/// when peers are gone; see [`release`]).
const RELEASE_FOR: Duration = Duration::from_secs(10);

/// How long a restarted stack keeps retrying a bind that fails although no
/// stack of ours is releasing the port (iroh drops some of its tasks'
/// handles a moment after its close returns).
const REBIND_FOR: Duration = Duration::from_millis(500);

/// How long a response waits for the peer to have read it.
const STOPPED_WAIT: Duration = Duration::from_secs(5);

/// The most unread data a peer may send on one connection, over all its
/// streams (QUIC's connection-level flow control; each stream keeps
/// noq's 1.25 MB). Unbounded by default, so eight 1 MiB requests at once
/// queued some 10 MB (the sender's window) in the receiving process and
/// moved half as much as one at a time (docs/benchmarks.md). 4 MiB still
/// allows 40 MB/s per connection at a 100 ms round trip.
const RECEIVE_WINDOW: u32 = 4 * 1024 * 1024;

/// An endpoint bound to `config.bind`, with the allowlist hook and the
/// relay (if any). A fixed port was usually ours a moment ago (a mode
/// switch or a restart of the node): wait for that stack's release, then
/// retry briefly.
async fn bind(
    identity: &Identity,
    config: &IrohConfig,
    stats: &Arc<StackStats>,
) -> Result<Endpoint, StackError> {
    let relay_mode = match &config.relay_url {
        Some(url) => RelayMode::custom([url.clone()]),
        None => RelayMode::Disabled,
    };
    let allow = if config.allowlist.is_empty() {
        None
    } else {
        let mut ids = HashSet::new();
        for p in &config.allowlist {
            ids.insert(
                peer_to_endpoint(p)
                    .map_err(|e| StackError::Start(format!("iroh allowlist entry {p}: {e}")))?,
            );
        }
        Some(Arc::new(ids))
    };
    if config.bind.port() != 0 {
        releasing::wait(config.bind.port(), RELEASE_FOR).await;
    }
    let give_up = Instant::now() + REBIND_FOR;
    loop {
        let mut builder = Endpoint::builder(presets::Minimal);
        if let Some(ids) = &allow {
            builder = builder.hooks(Allowlist {
                ids: ids.clone(),
                stats: stats.clone(),
            });
        }
        let transport = iroh::endpoint::QuicTransportConfig::builder()
            .receive_window(RECEIVE_WINDOW.into())
            .build();
        let bound = builder
            .transport_config(transport)
            .secret_key(identity.iroh_secret())
            .alpns(vec![ALPN.to_vec()])
            .relay_mode(relay_mode.clone())
            .clear_ip_transports()
            .bind_addr(config.bind)
            .map_err(|e| StackError::Start(format!("iroh bind address {}: {e}", config.bind)))?
            .bind()
            .await;
        match bound {
            Ok(endpoint) => return Ok(endpoint),
            Err(e) if config.bind.port() != 0 && Instant::now() < give_up => {
                tracing::debug!(bind = %config.bind, error = %e, "iroh port still held; retrying");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => {
                return Err(StackError::Start(format!(
                    "iroh endpoint on {}: {e}",
                    config.bind
                )));
            }
        }
    }
}

impl IrohStack {
    /// Bind the endpoint and serve requests with `handler`. The stack
    /// reports its connections to `peers`.
    pub async fn start(
        identity: &Identity,
        config: IrohConfig,
        handler: Arc<dyn Handler>,
        stats: Arc<StackStats>,
        peers: Arc<PeerSynchronizer>,
    ) -> Result<Self, StackError> {
        let endpoint = bind(identity, &config, &stats).await?;
        let serving = Arc::new(Serving {
            handler,
            conns: Arc::new(Mutex::new(HashMap::new())),
            accepting: Arc::new(AtomicBool::new(true)),
            inbound: Inbound::default(),
            stats,
            peers,
            max_frame: config.max_frame,
            tasks: TaskTracker::new(),
            cancel: CancellationToken::new(),
        });
        serving.spawn(serve(endpoint.clone(), serving.clone()));
        let mut addr = EndpointAddr::new(endpoint.id());
        for s in endpoint.bound_sockets() {
            addr = addr.with_ip_addr(s);
        }
        Ok(IrohStack {
            endpoint: std::sync::Mutex::new(Some(endpoint)),
            addr,
            serving,
            pings: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Inbound requests accepted and not yet answered.
    pub fn inbound(&self) -> usize {
        self.serving.inbound.get()
    }

    /// This endpoint's id and bound addresses, for peers to dial.
    pub fn addr(&self) -> EndpointAddr {
        self.addr.clone()
    }

    /// Refuse new inbound requests from now on (the stack is retiring).
    pub fn refuse_inbound(&self) {
        self.serving.accepting.store(false, Ordering::SeqCst);
    }

    /// Send one request and wait for its response.
    pub async fn request(
        &self,
        peer: &EndpointAddr,
        envelope: &Envelope,
        timeout: Duration,
    ) -> Result<Envelope, StackError> {
        // Counted by the stop that waits for every holder of the socket.
        let _holding = self.serving.tasks.token();
        let attempt = async {
            let Peer { conn, bulk } = self.connection(peer).await?;
            let (mut send, mut recv) = conn
                .open_bi()
                .await
                .map_err(|e| StackError::Connection(e.to_string()))?;
            let read = async {
                wire::read_frame(&mut recv, self.serving.max_frame)
                    .await
                    .map_err(StackError::from)
            };
            let response = exchange(
                &conn,
                &bulk,
                &mut send,
                envelope,
                self.serving.max_frame,
                read,
            )
            .await?;
            self.serving
                .stats
                .bytes_sent
                .fetch_add(envelope.payload.len() as u64, Ordering::Relaxed);
            self.serving
                .stats
                .bytes_received
                .fetch_add(response.payload.len() as u64, Ordering::Relaxed);
            Ok(response)
        };
        self.within(peer, timeout, attempt).await
    }

    /// Run `attempt` for at most `timeout`. On failure the connection to
    /// `peer` is forgotten, so the next request dials afresh, when it is
    /// closed, or when it timed out and nothing at all came from the peer
    /// meanwhile: a live peer acknowledges what it is sent within a round
    /// trip however busy its handler is, and a peer that restarted without
    /// saying goodbye never will (its new endpoint cannot reset our
    /// connection). A connection that is slow but alive is kept: dropping
    /// it cost a handshake for the next request, when the load that made it
    /// slow was least able to pay for one.
    async fn within<T>(
        &self,
        peer: &EndpointAddr,
        timeout: Duration,
        attempt: impl Future<Output = Result<T, StackError>>,
    ) -> Result<T, StackError> {
        let heard = self.heard(&peer.id).await;
        let result = match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(StackError::Timeout(timeout)),
        };
        if let Err(e) = &result {
            let mut conns = self.serving.conns.lock().await;
            // A dial in flight is left to finish; it has its own bound.
            if let Some(Slot::Open(c)) = conns.get(&peer.id) {
                let silent = matches!(e, StackError::Timeout(_))
                    && heard.is_some_and(|h| h == Heard::of(&c.conn));
                if silent {
                    tracing::debug!(peer = %peer.id.fmt_short(), "nothing from the peer within {timeout:?}; closing its iroh connection");
                    c.conn
                        .close(VarInt::from_u32(CLOSE_SILENT), b"nothing heard from you");
                }
                if silent || c.conn.close_reason().is_some() {
                    conns.remove(&peer.id);
                }
            }
        }
        result
    }

    /// How much has come from `peer` on its connection so far.
    async fn heard(&self, peer: &EndpointId) -> Option<Heard> {
        match self.serving.conns.lock().await.get(peer) {
            Some(Slot::Open(c)) => Some(Heard::of(&c.conn)),
            _ => None,
        }
    }

    /// A heartbeat: send `ping` (a [`Kind::Ping`]) and wait for its pong,
    /// over the peer's long-lived heartbeat stream (opened on first use,
    /// on the connection requests use). A stream per ping costs several
    /// packets more each way than a frame on a stream that stays open.
    pub async fn ping(
        &self,
        peer: &EndpointAddr,
        ping: &Envelope,
        timeout: Duration,
    ) -> Result<Envelope, StackError> {
        let _holding = self.serving.tasks.token();
        let attempt = async {
            let idle = self.pings.lock().expect("pings lock").remove(&peer.id);
            if let Some(mut stream) = idle {
                match super::ping_on(&mut stream.0, &mut stream.1, ping, self.serving.max_frame)
                    .await
                {
                    Ok(pong) => return Ok((pong, stream)),
                    // A stream the peer let go (a restarted stack, an
                    // older peer answering one ping per stream): a fresh
                    // one below, within the same timeout.
                    Err(e) => {
                        tracing::debug!(peer = %peer.id.fmt_short(), error = %e, "heartbeat stream gone; opening another")
                    }
                }
            }
            let conn = self.connection(peer).await?.conn;
            let mut stream = conn
                .open_bi()
                .await
                .map_err(|e| StackError::Connection(e.to_string()))?;
            self.serving
                .stats
                .heartbeat_streams
                .fetch_add(1, Ordering::Relaxed);
            let pong =
                super::ping_on(&mut stream.0, &mut stream.1, ping, self.serving.max_frame).await?;
            Ok((pong, stream))
        };
        // On a timeout the stream is dropped with the attempt: a late pong
        // on it can never be taken for the next one's.
        let (pong, stream) = self.within(peer, timeout, attempt).await?;
        // Idle until the next beat; dropped (and so reset) if the stack
        // stops meanwhile.
        if !self.serving.cancel.is_cancelled() {
            self.pings
                .lock()
                .expect("pings lock")
                .insert(peer.id, stream);
        }
        Ok(pong)
    }

    /// The open connection to `peer`, or the outcome of the one dial to it
    /// in flight (started here if there is none).
    ///
    /// A dial begun before the peer last started or stopped running iroh
    /// (as the modes it advertised say, [`PeerSynchronizer::iroh_turns`])
    /// is abandoned, by whoever notices first: it was aimed at a socket
    /// that has since closed or opened, and QUIC would resend its first
    /// packet only after seconds, if ever. A request that joined it would
    /// wait out its deadline on a peer that is answering on the other
    /// transport, or listening again on this one.
    async fn connection(&self, peer: &EndpointAddr) -> Result<Peer, StackError> {
        let peers = &self.serving.peers;
        let mut turned = peers.iroh_turned();
        let dial = {
            let mut conns = self.serving.conns.lock().await;
            let turns = peers.iroh_turns(&peer.id);
            match conns.get(&peer.id) {
                Some(Slot::Open(c)) if c.conn.close_reason().is_none() => return Ok(c.clone()),
                Some(Slot::Dialling(d)) if d.turns == turns => d.clone(),
                stale => {
                    if let Some(Slot::Dialling(d)) = stale {
                        d.abandon.cancel();
                    }
                    self.dial(&mut conns, peer, turns)?
                }
            }
        };
        let mut outcome = dial.outcome.clone();
        let done = async {
            // The sender goes without an outcome only when the stack stops.
            match outcome.wait_for(Option::is_some).await.as_deref() {
                Ok(Some(Ok(p))) => Ok(p.clone()),
                Ok(Some(Err(e))) => Err(StackError::Connection(e.clone())),
                _ => Err(StackError::Stopped),
            }
        };
        let stale = async {
            // Never ends with an error: the sender lives in `peers`.
            let _ = turned
                .wait_for(|_| peers.iroh_turns(&peer.id) != dial.turns)
                .await;
        };
        tokio::select! {
            done = done => done,
            () = stale => {
                self.abandon(&peer.id, &dial).await;
                Err(StackError::Connection(format!(
                    "dialling {}: abandoned, the peer started or stopped running iroh meanwhile",
                    peer.id.fmt_short()
                )))
            }
        }
    }

    /// End `dial` to `peer`, and take it out of the map if it is still
    /// there.
    async fn abandon(&self, peer: &EndpointId, dial: &Dialling) {
        let mut conns = self.serving.conns.lock().await;
        if let Some(Slot::Dialling(d)) = conns.get(peer)
            && d.is(dial)
        {
            conns.remove(peer);
        }
        dial.abandon.cancel();
    }

    /// Begin a dial to `peer`, whose [`PeerSynchronizer::iroh_turns`] are
    /// `turns`, and put it in `conns`.
    fn dial(
        &self,
        conns: &mut HashMap<EndpointId, Slot>,
        peer: &EndpointAddr,
        turns: u64,
    ) -> Result<Dialling, StackError> {
        let endpoint = self
            .endpoint
            .lock()
            .expect("endpoint lock")
            .clone()
            .ok_or(StackError::Stopped)?;
        let (tx, outcome) = tokio::sync::watch::channel(None);
        let dialling = Dialling {
            outcome,
            turns,
            abandon: self.serving.cancel.child_token(),
        };
        conns.insert(peer.id, Slot::Dialling(dialling.clone()));
        self.serving.stats.dials.fetch_add(1, Ordering::Relaxed);
        let dial = Dial {
            endpoint,
            peer: peer.clone(),
            serving: self.serving.clone(),
            abandon: dialling.abandon.clone(),
        };
        self.serving.tasks.spawn(
            self.serving
                .cancel
                .clone()
                .run_until_cancelled_owned(dial.run(tx)),
        );
        Ok(dialling)
    }

    /// Refuse everything from now on, close every connection and the
    /// endpoint, and release its UDP socket. Returns once the close has
    /// begun (peers are told at once); the rest runs on in the background,
    /// and a stack started on the same port waits for it.
    pub async fn stop(&self) {
        self.serving.accepting.store(false, Ordering::SeqCst);
        self.serving.cancel.cancel();
        self.serving.tasks.close();
        self.serving.conns.lock().await.clear();
        self.pings.lock().expect("pings lock").clear();
        let endpoint = self.endpoint.lock().expect("endpoint lock").take();
        if let Some(endpoint) = endpoint {
            let sockets = self.addr.ip_addrs().copied().collect::<Vec<_>>();
            let done = releasing::begin(&sockets);
            tokio::spawn(release(endpoint, self.serving.tasks.clone(), sockets, done));
        }
        self.serving.peers.transport_down(Transport::Iroh);
    }
}

/// One dial to a peer, run in a task of its own (see [`DIAL_FOR`]).
struct Dial {
    endpoint: Endpoint,
    peer: EndpointAddr,
    serving: Arc<Serving>,
    abandon: CancellationToken,
}

impl Dial {
    /// Dial, put the connection in the map (or take the dial's slot out
    /// of it), then tell everyone waiting.
    async fn run(self, tx: tokio::sync::watch::Sender<Option<Result<Peer, String>>>) {
        let id = self.peer.id;
        tracing::debug!(peer = %id.fmt_short(), "dialling");
        let dialled =
            tokio::time::timeout(DIAL_FOR, self.endpoint.connect(self.peer.clone(), ALPN));
        let Some(dialled) = self.abandon.run_until_cancelled(dialled).await else {
            tracing::debug!(peer = %id.fmt_short(), "dial abandoned");
            let _ = tx.send(Some(Err(format!("dialling {}: abandoned", id.fmt_short()))));
            return;
        };
        let outcome = match dialled {
            Ok(Ok(conn)) => match endpoint_to_peer(&id) {
                Ok(remote) => {
                    let addr = self.peer.ip_addrs().next().map(ToString::to_string);
                    let s = &self.serving;
                    watch(&s.tasks, &s.cancel, &s.peers, &conn, addr);
                    let p = Peer {
                        conn,
                        bulk: Bulk::new(),
                    };
                    s.spawn(serve_streams(s.clone(), p.clone(), remote));
                    Ok(p)
                }
                Err(e) => Err(format!("dialling {}: {e}", id.fmt_short())),
            },
            Ok(Err(e)) => Err(format!("dialling {} at {}: {e}", id.fmt_short(), self.at())),
            Err(_) => Err(format!(
                "dialling {} at {}: no connection after {DIAL_FOR:?}",
                id.fmt_short(),
                self.at()
            )),
        };
        {
            let mut conns = self.serving.conns.lock().await;
            // The slot is still this dial's unless the stack stopped
            // (cleared the map) meanwhile.
            if let Some(Slot::Dialling(d)) = conns.get(&id)
                && d.outcome.same_channel(&tx.subscribe())
            {
                match &outcome {
                    Ok(p) => conns.insert(id, Slot::Open(p.clone())),
                    Err(_) => conns.remove(&id),
                };
            }
        }
        let _ = tx.send(Some(outcome));
    }

    /// The addresses dialled, for an error.
    fn at(&self) -> String {
        let at: Vec<_> = self.peer.ip_addrs().map(ToString::to_string).collect();
        at.join(", ")
    }
}

/// Close `endpoint` to the end, wait for everything that held it or one of
/// its connections (`tasks`, which fail at once when it closes), and wait
/// until the OS has let go of `sockets`; then report the ports free.
///
/// Runs in a task of its own: a close cut short (a dropped future) leaves
/// the socket to iroh's background tasks for as long as they live, which
/// was the cause of "Failed to bind sockets" on a restart.
async fn release(
    endpoint: Endpoint,
    tasks: TaskTracker,
    sockets: Vec<SocketAddr>,
    done: releasing::Done,
) {
    let started = Instant::now();
    // iroh bounds the close itself (about 3 s with dead peers).
    endpoint.close().await;
    drop(endpoint);
    if tokio::time::timeout(RELEASE_FOR, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            held = tasks.len(),
            "iroh tasks still hold the endpoint {RELEASE_FOR:?} after it closed"
        );
    }
    // iroh aborts some of its own tasks without waiting for them: the
    // socket goes when the last one is dropped. The OS knows when.
    for s in &sockets {
        while std::net::UdpSocket::bind(s).is_err() {
            if started.elapsed() >= RELEASE_FOR {
                tracing::warn!(socket = %s, "the closed iroh endpoint still holds its socket");
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    tracing::debug!(elapsed = ?started.elapsed(), "iroh endpoint released");
    drop(done);
}

/// The ports this process's stopped stacks are still releasing.
mod releasing {
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::sync::{LazyLock, Mutex};
    use std::time::Duration;

    use tokio::sync::watch;

    /// Port → a receiver that sees `true` (or its sender gone) once free.
    static PORTS: LazyLock<Mutex<HashMap<u16, watch::Receiver<bool>>>> =
        LazyLock::new(|| Mutex::new(HashMap::new()));

    /// Marks the ports free when dropped.
    pub(super) struct Done {
        ports: Vec<u16>,
        tx: watch::Sender<bool>,
    }

    impl Drop for Done {
        fn drop(&mut self) {
            let _ = self.tx.send(true);
            let mut ports = PORTS.lock().expect("releasing lock");
            for p in &self.ports {
                if ports
                    .get(p)
                    .is_some_and(|rx| rx.same_channel(&self.tx.subscribe()))
                {
                    ports.remove(p);
                }
            }
        }
    }

    /// `sockets` are being released from now until the guard drops.
    pub(super) fn begin(sockets: &[SocketAddr]) -> Done {
        let (tx, rx) = watch::channel(false);
        let ports: Vec<u16> = sockets.iter().map(SocketAddr::port).collect();
        let mut map = PORTS.lock().expect("releasing lock");
        for p in &ports {
            map.insert(*p, rx.clone());
        }
        Done { ports, tx }
    }

    /// Wait (at most `bound`) until no stack of ours is releasing `port`.
    pub(super) async fn wait(port: u16, bound: Duration) {
        let rx = PORTS.lock().expect("releasing lock").get(&port).cloned();
        if let Some(mut rx) = rx
            && tokio::time::timeout(bound, rx.wait_for(|free| *free))
                .await
                .is_err()
        {
            tracing::warn!(
                port,
                "an earlier iroh stack still holds the port after {bound:?}"
            );
        }
    }
}

/// Refuses connections, either way, from identities not on the list.
#[derive(Debug)]
struct Allowlist {
    ids: Arc<HashSet<EndpointId>>,
    stats: Arc<StackStats>,
}

/// Close code for a peer that is not on the allowlist.
const CLOSE_NOT_ALLOWED: u32 = 2;

impl EndpointHooks for Allowlist {
    async fn after_handshake(&self, conn: &Connection) -> AfterHandshakeOutcome {
        let remote = conn.remote_id();
        if self.ids.contains(&remote) {
            return AfterHandshakeOutcome::accept();
        }
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        let peer = endpoint_to_peer(&remote).map_or_else(|_| remote.to_string(), |p| p.to_string());
        tracing::warn!(%peer, "iroh connection refused: not on the allowlist");
        AfterHandshakeOutcome::Reject {
            error_code: VarInt::from_u32(CLOSE_NOT_ALLOWED),
            reason: b"not on the allowlist".to_vec(),
        }
    }
}

/// Report `conn` to the peer view now and when it closes (a stopping
/// stack reports its whole transport down instead).
fn watch(
    tasks: &TaskTracker,
    cancel: &CancellationToken,
    peers: &Arc<PeerSynchronizer>,
    conn: &Connection,
    addr: Option<String>,
) {
    let id = conn.remote_id();
    peers.iroh(&id, PeerEvent::Connected { addr });
    let (peers, conn) = (peers.clone(), conn.clone());
    tasks.spawn(cancel.clone().run_until_cancelled_owned(async move {
        conn.closed().await;
        peers.iroh(&id, PeerEvent::Disconnected);
    }));
}

#[derive(Clone)]
struct Serving {
    handler: Arc<dyn Handler>,
    /// Each peer's connection, or the dial that will give it.
    conns: Conns,
    /// Cleared when the stack retires: inbound requests are refused.
    accepting: Arc<AtomicBool>,
    inbound: Inbound,
    stats: Arc<StackStats>,
    peers: Arc<PeerSynchronizer>,
    max_frame: usize,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

impl Serving {
    /// Run `task` until the stack stops; the stop waits for it.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks
            .spawn(self.cancel.clone().run_until_cancelled_owned(task));
    }
}

/// Inbound connections served at once; more are refused (a peer redials).
/// Each connection's streams are bounded by QUIC's stream limit.
const MAX_INBOUND_CONNECTIONS: usize = 4096;

async fn serve(endpoint: Endpoint, serving: Arc<Serving>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_INBOUND_CONNECTIONS));
    while let Some(incoming) = endpoint.accept().await {
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            serving.stats.overloaded.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "{MAX_INBOUND_CONNECTIONS} iroh connections already served; refusing one"
            );
            incoming.refuse();
            continue;
        };
        let s = serving.clone();
        serving.spawn(async move {
            serve_connection(s, incoming).await;
            drop(permit);
        });
    }
}

/// One inbound connection: each stream it opens is a request, served in
/// a task of its own.
async fn serve_connection(serving: Arc<Serving>, incoming: Incoming) {
    let addr = match incoming.remote_addr() {
        IncomingAddr::Ip(a) => Some(a.to_string()),
        _ => None,
    };
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(?addr, error = %e, "iroh connection not accepted");
            return;
        }
    };
    let Ok(peer) = endpoint_to_peer(&conn.remote_id()) else {
        return;
    };
    watch(&serving.tasks, &serving.cancel, &serving.peers, &conn, addr);
    let p = Peer {
        conn,
        bulk: Bulk::new(),
    };
    {
        // Requests to this peer ride this connection too, unless there is
        // a live one already or a dial to it in flight.
        let mut conns = serving.conns.lock().await;
        let id = p.conn.remote_id();
        let taken = match conns.get(&id) {
            Some(Slot::Open(c)) => c.conn.close_reason().is_none(),
            Some(Slot::Dialling(_)) => true,
            None => false,
        };
        if !taken {
            conns.insert(id, Slot::Open(p.clone()));
        }
    }
    serve_streams(serving, p, peer).await;
}

/// Serve each stream `peer` opens on a connection (either side may have
/// dialled it), each in a task of its own, until the connection closes.
async fn serve_streams(serving: Arc<Serving>, p: Peer, peer: libp2p::PeerId) {
    while let Ok((send, recv)) = p.conn.accept_bi().await {
        let s = serving.clone();
        let Peer { conn, bulk } = p.clone();
        serving.spawn(async move { serve_stream(&s, &conn, &bulk, peer, send, recv).await });
    }
}

/// One stream of `peer`'s: a ping or a request, answered on it. Garbage
/// closes the connection.
async fn serve_stream(
    s: &Serving,
    conn: &Connection,
    bulk: &Bulk,
    peer: libp2p::PeerId,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let read = wire::read_frame(&mut recv, s.max_frame).await;
    // A paused node (fault injection) answers nothing.
    super::wait_unpaused(&*s.handler).await;
    let request = match read {
        Ok(r) if r.kind == Kind::Ping => {
            let answerer = super::PingAnswerer {
                handler: &*s.handler,
                peers: &s.peers,
                stats: &s.stats,
                peer,
                transport: Transport::Iroh,
                max: s.max_frame,
            };
            if answerer
                .answer(Some(r), &mut recv, &mut send)
                .await
                .is_err()
            {
                conn.close(VarInt::from_u32(CLOSE_MALFORMED), b"malformed frame");
            }
            return;
        }
        Ok(r) if r.kind == Kind::Request => r,
        Err(e) if !e.is_malformed() => return, // the peer went away
        Ok(_) | Err(_) => {
            // Garbage from this peer: drop the connection.
            s.stats.malformed.fetch_add(1, Ordering::Relaxed);
            conn.close(VarInt::from_u32(CLOSE_MALFORMED), b"malformed frame");
            return;
        }
    };
    s.stats
        .bytes_received
        .fetch_add(request.payload.len() as u64, Ordering::Relaxed);
    // Counted until the answer is delivered, so a retiring stack is not
    // stopped under it.
    let admitted = s.inbound.admit(&s.accepting);
    let response = if admitted.is_some() {
        super::answer(&*s.handler, peer, Transport::Iroh, request).await
    } else {
        super::retiring(
            &request,
            s.handler.mode(),
            "the iroh stack is retiring on this node",
        )
    };
    s.stats
        .bytes_sent
        .fetch_add(response.payload.len() as u64, Ordering::Relaxed);
    let turn = bulk.turn(conn, response.payload.len()).await;
    if wire::write_frame(&mut send, &response, s.max_frame)
        .await
        .is_ok()
    {
        let _ = send.finish();
        // Let the peer read it before the stream goes (a peer that never
        // reads does not hold us forever).
        let _ = tokio::time::timeout(STOPPED_WAIT, send.stopped()).await;
    }
    drop(turn);
    drop(admitted);
}
