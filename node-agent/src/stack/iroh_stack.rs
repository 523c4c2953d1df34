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
    AfterHandshakeOutcome, Connection, EndpointHooks, IncomingAddr, VarInt, presets,
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
/// its tokens: stopping cancels the tasks and waits for all of them, so
/// the port is free once [`IrohStack::stop`] returns.
pub struct IrohStack {
    /// Taken when the stack stops.
    endpoint: std::sync::Mutex<Option<Endpoint>>,
    addr: EndpointAddr,
    conns: Mutex<HashMap<EndpointId, Connection>>,
    max_frame: usize,
    /// Cleared when the stack retires: inbound requests are refused.
    accepting: Arc<AtomicBool>,
    inbound: Inbound,
    stats: Arc<StackStats>,
    peers: Arc<PeerSynchronizer>,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

/// How long a restarted stack keeps trying to bind the UDP port its
/// previous incarnation just released.
const REBIND_FOR: Duration = Duration::from_secs(3);

/// How long stopping waits for its tasks and requests to let go of the
/// socket once the endpoint has closed (they fail at once when it does;
/// this only bounds a bug).
const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// How long a response waits for the peer to have read it.
const STOPPED_WAIT: Duration = Duration::from_secs(5);

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
        let relay_mode = match &config.relay_url {
            Some(url) => RelayMode::custom([url.clone()]),
            None => RelayMode::Disabled,
        };
        // A fixed port was usually ours a moment ago (a mode switch
        // restarting the stack): the closed endpoint's socket can take a
        // little while to let go, so retry briefly.
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
        let give_up = Instant::now() + REBIND_FOR;
        let endpoint = loop {
            let mut builder = Endpoint::builder(presets::Minimal);
            if let Some(ids) = &allow {
                builder = builder.hooks(Allowlist {
                    ids: ids.clone(),
                    stats: stats.clone(),
                });
            }
            let bound = builder
                .secret_key(identity.iroh_secret())
                .alpns(vec![ALPN.to_vec()])
                .relay_mode(relay_mode.clone())
                .clear_ip_transports()
                .bind_addr(config.bind)
                .map_err(|e| StackError::Start(format!("iroh bind address {}: {e}", config.bind)))?
                .bind()
                .await;
            match bound {
                Ok(endpoint) => break endpoint,
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
        };
        let accepting = Arc::new(AtomicBool::new(true));
        let inbound = Inbound::default();
        let tasks = TaskTracker::new();
        let cancel = CancellationToken::new();
        let serving = Serving {
            handler,
            accepting: accepting.clone(),
            inbound: inbound.clone(),
            stats: stats.clone(),
            peers: peers.clone(),
            max_frame: config.max_frame,
            tasks: tasks.clone(),
            cancel: cancel.clone(),
        };
        serving.spawn(serve(endpoint.clone(), serving.clone()));
        let mut addr = EndpointAddr::new(endpoint.id());
        for s in endpoint.bound_sockets() {
            addr = addr.with_ip_addr(s);
        }
        Ok(IrohStack {
            endpoint: std::sync::Mutex::new(Some(endpoint)),
            addr,
            conns: Mutex::new(HashMap::new()),
            max_frame: config.max_frame,
            accepting,
            inbound,
            stats,
            peers,
            tasks,
            cancel,
        })
    }

    /// Inbound requests accepted and not yet answered.
    pub fn inbound(&self) -> usize {
        self.inbound.get()
    }

    /// This endpoint's id and bound addresses, for peers to dial.
    pub fn addr(&self) -> EndpointAddr {
        self.addr.clone()
    }

    /// Refuse new inbound requests from now on (the stack is retiring).
    pub fn refuse_inbound(&self) {
        self.accepting.store(false, Ordering::SeqCst);
    }

    /// Send one request and wait for its response.
    pub async fn request(
        &self,
        peer: &EndpointAddr,
        envelope: &Envelope,
        timeout: Duration,
    ) -> Result<Envelope, StackError> {
        // Counted by the stop that waits for every holder of the socket.
        let _holding = self.tasks.token();
        let attempt = async {
            let conn = self.connection(peer).await?;
            let (mut send, mut recv) = conn
                .open_bi()
                .await
                .map_err(|e| StackError::Connection(e.to_string()))?;
            wire::write_frame(&mut send, envelope, self.max_frame)
                .await
                .map_err(StackError::from)?;
            let _ = send.finish();
            self.stats
                .bytes_sent
                .fetch_add(envelope.payload.len() as u64, Ordering::Relaxed);
            let response = wire::read_frame(&mut recv, self.max_frame)
                .await
                .map_err(StackError::from)?;
            self.stats
                .bytes_received
                .fetch_add(response.payload.len() as u64, Ordering::Relaxed);
            Ok(response)
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                // A broken connection is dialled afresh next time.
                self.conns.lock().await.remove(&peer.id);
                Err(e)
            }
            Err(_) => {
                // No answer over this connection: it may be stale (the
                // peer restarted and never said goodbye); the next
                // request dials afresh.
                self.conns.lock().await.remove(&peer.id);
                Err(StackError::Timeout(timeout))
            }
        }
    }

    async fn connection(&self, peer: &EndpointAddr) -> Result<Connection, StackError> {
        if let Some(c) = self.conns.lock().await.get(&peer.id)
            && c.close_reason().is_none()
        {
            return Ok(c.clone());
        }
        let endpoint = self
            .endpoint
            .lock()
            .expect("endpoint lock")
            .clone()
            .ok_or(StackError::Stopped)?;
        // Dial without holding the map: a dial to a peer that does not
        // answer must not hold up requests to every other peer.
        let conn = endpoint.connect(peer.clone(), ALPN).await.map_err(|e| {
            StackError::Connection(format!("dialling {}: {e}", peer.id.fmt_short()))
        })?;
        let addr = peer.ip_addrs().next().map(ToString::to_string);
        watch(&self.tasks, &self.cancel, &self.peers, &conn, addr);
        let mut conns = self.conns.lock().await;
        match conns.get(&peer.id) {
            // Another request dialled first: share its connection.
            Some(c) if c.close_reason().is_none() => Ok(c.clone()),
            _ => {
                conns.insert(peer.id, conn.clone());
                Ok(conn)
            }
        }
    }

    /// Close every connection and the endpoint, and return once nothing
    /// holds its UDP socket any more: a stack started on the same port
    /// right after binds it.
    pub async fn stop(&self) {
        self.accepting.store(false, Ordering::SeqCst);
        self.cancel.cancel();
        self.tasks.close();
        self.conns.lock().await.clear();
        let endpoint = self.endpoint.lock().expect("endpoint lock").take();
        if let Some(endpoint) = endpoint {
            // Closed to the end in a task of its own: a close cut short
            // (this future dropped) would leave the socket to iroh's
            // background tasks, held for as long as they live. iroh bounds
            // the close itself (about 3 s when peers are gone).
            let closing = tokio::spawn(async move { endpoint.close().await });
            if let Err(e) = closing.await {
                tracing::warn!(error = %e, "closing the iroh endpoint failed");
            }
        }
        if tokio::time::timeout(RELEASE_WAIT, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                held = self.tasks.len(),
                "iroh tasks still hold the socket {RELEASE_WAIT:?} after the endpoint closed"
            );
        }
        self.peers.transport_down(Transport::Iroh);
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

async fn serve(endpoint: Endpoint, serving: Serving) {
    let serving = Arc::new(serving);
    while let Some(incoming) = endpoint.accept().await {
        let serving = serving.clone();
        serving.clone().spawn(async move {
            let addr = match incoming.remote_addr() {
                IncomingAddr::Ip(a) => Some(a.to_string()),
                _ => None,
            };
            let Ok(conn) = incoming.await else { return };
            let Ok(peer) = endpoint_to_peer(&conn.remote_id()) else {
                return;
            };
            watch(&serving.tasks, &serving.cancel, &serving.peers, &conn, addr);
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let serving = serving.clone();
                let conn = conn.clone();
                serving.clone().spawn(async move {
                    let s = &*serving;
                    let read = wire::read_frame(&mut recv, s.max_frame).await;
                    // A paused node (fault injection) answers nothing.
                    super::wait_unpaused(&*s.handler).await;
                    let request = match read {
                        Ok(r) if r.kind == Kind::Ping => {
                            let pong = super::pong(&r, &*s.handler);
                            if wire::write_frame(&mut send, &pong, s.max_frame)
                                .await
                                .is_ok()
                            {
                                let _ = send.finish();
                                let _ = tokio::time::timeout(STOPPED_WAIT, send.stopped()).await;
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
                    // Counted until the answer is delivered, so a retiring
                    // stack is not stopped under it.
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
                    if wire::write_frame(&mut send, &response, s.max_frame)
                        .await
                        .is_ok()
                    {
                        let _ = send.finish();
                        // Let the peer read it before the stream goes (a
                        // peer that never reads does not hold us forever).
                        let _ = tokio::time::timeout(STOPPED_WAIT, send.stopped()).await;
                    }
                    drop(admitted);
                });
            }
        });
    }
}
