//! The libp2p stack: TCP + Noise + Yamux, identify, ping, and
//! request-response on `/switchyard/rpc/1` carrying [`crate::wire`] frames.
//! The swarm runs in its own task; the stack talks to it over channels.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use libp2p::request_response::{
    self, InboundRequestId, OutboundRequestId, ProtocolSupport, ResponseChannel,
};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, DialError, ListenError, NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, allow_block_list, identify, noise, tcp, yamux};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Handler, Inbound, InboundGuard, StackError, StackStats, Transport};
use crate::identity::Identity;
use crate::peers::{PeerEvent, PeerSynchronizer};
use crate::wire::{self, Envelope, Kind};

/// The request-response protocol.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/switchyard/rpc/1");

/// A heartbeat stream's halves, idle between pings.
type HeartbeatStream = (
    futures::io::WriteHalf<libp2p::Stream>,
    futures::io::ReadHalf<libp2p::Stream>,
);

/// Heartbeats: a long-lived stream per peer carrying ping and pong frames.
pub const PING_PROTOCOL: StreamProtocol = StreamProtocol::new("/switchyard/ping/1");

/// Heartbeat streams answered at once, over all peers (each peer keeps
/// one open); more are refused.
const MAX_PING_STREAMS: usize = 4096;

/// libp2p stack settings.
#[derive(Debug, Clone)]
pub struct Libp2pConfig {
    /// Address to listen on.
    pub listen: Multiaddr,
    /// Close connections idle this long.
    pub idle_timeout: Duration,
    /// Largest frame body accepted or sent.
    pub max_frame: usize,
    /// Give up on a request after this long.
    pub request_timeout: Duration,
    /// When not empty, only these peers may connect, either way; others
    /// are refused once the handshake has told who they are.
    pub allowlist: Vec<PeerId>,
    /// The agent version peers see in identify. Defaults to
    /// `switchyard-node-agent/<version>`.
    pub agent_version: String,
}

impl Default for Libp2pConfig {
    fn default() -> Self {
        Libp2pConfig {
            listen: "/ip4/127.0.0.1/tcp/0".parse().expect("a valid multiaddr"),
            idle_timeout: Duration::from_secs(60),
            max_frame: wire::DEFAULT_MAX_FRAME,
            request_timeout: Duration::from_secs(10),
            allowlist: Vec::new(),
            agent_version: concat!("switchyard-node-agent/", env!("CARGO_PKG_VERSION")).into(),
        }
    }
}

/// Frames in and out of request-response streams.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max: usize,
}

fn invalid(e: wire::WireError) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e)
}

/// An inbound request as read: an envelope, or why the frame was
/// rejected. libp2p's request-response drops a request whose read fails
/// without telling the behaviour who sent it, so a malformed frame is
/// passed up as a value and the stack drops and counts the peer itself.
pub type InboundFrame = Result<Envelope, String>;

impl request_response::Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = InboundFrame;
    type Response = Envelope;

    async fn read_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<InboundFrame>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        match wire::read_frame(io, self.max).await {
            Ok(e) if super::is_inbound(e.kind) => Ok(Ok(e)),
            Ok(e) => Ok(Err(wire::WireError::Kind(e.kind as u8).to_string())),
            Err(e) if e.is_malformed() => Ok(Err(e.to_string())),
            Err(e) => Err(invalid(e)),
        }
    }

    async fn read_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Envelope>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        wire::read_frame(io, self.max).await.map_err(invalid)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: InboundFrame,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        let req = req.map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        wire::write_frame(io, &req, self.max).await.map_err(invalid)
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Envelope,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        wire::write_frame(io, &res, self.max).await.map_err(invalid)
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    allow: Toggle<allow_block_list::Behaviour<allow_block_list::AllowedPeers>>,
    rpc: request_response::Behaviour<FrameCodec>,
    identify: identify::Behaviour,
    // No libp2p ping: the PeerManager's heartbeats (on `streams`) are the
    // liveness check, and a second one every 15 s would only cost CPU.
    streams: libp2p_stream::Behaviour,
}

enum Command {
    Request {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        envelope: Envelope,
        reply: oneshot::Sender<Result<Envelope, StackError>>,
    },
    /// Dial an address whose peer is not known yet; answers with the peer
    /// the handshake found.
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<PeerId, StackError>>,
    },
}

/// A running libp2p stack.
pub struct Libp2pStack {
    commands: mpsc::Sender<Command>,
    listen: Vec<Multiaddr>,
    peer_id: PeerId,
    accepting: Arc<AtomicBool>,
    inbound: Inbound,
    peers: Arc<PeerSynchronizer>,
    /// The swarm's task; taken when the stack stops.
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    control: libp2p_stream::Control,
    stats: Arc<StackStats>,
    /// Each peer's heartbeat stream, idle between pings (a ping takes it
    /// out, so one ping per peer runs at a time).
    pings: std::sync::Mutex<HashMap<PeerId, HeartbeatStream>>,
    max_frame: usize,
    /// Cancelled when the stack stops: ends the heartbeat answerers.
    cancel: CancellationToken,
}

impl Libp2pStack {
    /// Start the swarm, listen, and serve requests with `handler`. The
    /// stack reports its connections to `peers`.
    pub async fn start(
        identity: &Identity,
        config: Libp2pConfig,
        handler: Arc<dyn Handler>,
        stats: Arc<StackStats>,
        peers: Arc<PeerSynchronizer>,
    ) -> Result<Self, StackError> {
        let max = config.max_frame;
        let streams = libp2p_stream::Behaviour::new();
        let mut control = streams.new_control();
        let incoming = control
            .accept(PING_PROTOCOL)
            .map_err(|e| StackError::Start(format!("libp2p heartbeat protocol: {e}")))?;
        let mut swarm = build_swarm(identity, &config, streams)?;
        let listen = listen_on(&mut swarm, &config.listen).await?;
        let peer_id = *swarm.local_peer_id();
        let (commands, rx) = mpsc::channel(1024);
        let accepting = Arc::new(AtomicBool::new(true));
        let inbound = Inbound::default();
        let cancel = CancellationToken::new();
        let stats_for_pings = stats.clone();
        tokio::spawn(
            cancel
                .clone()
                .run_until_cancelled_owned(answer_ping_streams(
                    incoming,
                    handler.clone(),
                    stats.clone(),
                    peers.clone(),
                    max,
                    cancel.clone(),
                )),
        );
        let task = tokio::spawn(run(
            swarm,
            rx,
            Shared {
                handler,
                accepting: accepting.clone(),
                inbound: inbound.clone(),
                stats,
                peers: peers.clone(),
            },
        ));
        Ok(Libp2pStack {
            commands,
            listen,
            peer_id,
            accepting,
            inbound,
            peers,
            task: std::sync::Mutex::new(Some(task)),
            control,
            stats: stats_for_pings,
            pings: std::sync::Mutex::new(HashMap::new()),
            max_frame: max,
            cancel,
        })
    }

    /// The addresses peers dial, each ending in `/p2p/<peer id>`.
    pub fn addrs(&self) -> Vec<Multiaddr> {
        self.listen
            .iter()
            .map(|a| a.clone().with_p2p(self.peer_id).unwrap_or_else(|a| a))
            .collect()
    }

    /// Refuse new inbound requests from now on (the stack is retiring).
    pub fn refuse_inbound(&self) {
        self.accepting.store(false, Ordering::SeqCst);
    }

    /// Inbound requests accepted and not yet answered.
    pub fn inbound(&self) -> usize {
        self.inbound.get()
    }

    /// Dial `addr` (no peer id in it) and return the peer that answered.
    pub async fn dial(&self, addr: Multiaddr, timeout: Duration) -> Result<PeerId, StackError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Dial { addr, reply })
            .await
            .map_err(|_| StackError::Stopped)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(StackError::Stopped),
            Err(_) => Err(StackError::Timeout(timeout)),
        }
    }

    /// Send one request to `peer` (dialling `addrs` if not connected).
    pub async fn request(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        envelope: Envelope,
        timeout: Duration,
    ) -> Result<Envelope, StackError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Request {
                peer,
                addrs,
                envelope,
                reply,
            })
            .await
            .map_err(|_| StackError::Stopped)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(StackError::Stopped),
            Err(_) => Err(StackError::Timeout(timeout)),
        }
    }

    /// A heartbeat to a connected peer: send `ping` (a [`Kind::Ping`]) and
    /// wait for its pong over the peer's long-lived heartbeat stream
    /// (opened on first use). A peer that does not speak the heartbeat
    /// protocol is pinged with a request instead. Dials go through
    /// [`Libp2pStack::request`], which knows the addresses.
    pub async fn ping(
        &self,
        peer: PeerId,
        ping: &Envelope,
        timeout: Duration,
    ) -> Result<Envelope, StackError> {
        let attempt = async {
            let idle = self.pings.lock().expect("pings lock").remove(&peer);
            if let Some((mut send, mut recv)) = idle {
                match super::ping_on(&mut send, &mut recv, ping, self.max_frame).await {
                    Ok(pong) => return Ok(Some((pong, (send, recv)))),
                    // The peer let the stream go (a restarted stack): a
                    // fresh one below, within the same timeout.
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "heartbeat stream gone; opening another")
                    }
                }
            }
            let stream = match self.control.clone().open_stream(peer, PING_PROTOCOL).await {
                Ok(s) => s,
                Err(libp2p_stream::OpenStreamError::UnsupportedProtocol(_)) => return Ok(None),
                Err(e) => return Err(StackError::Connection(format!("{peer}: {e}"))),
            };
            self.stats.heartbeat_streams.fetch_add(1, Ordering::Relaxed);
            let (mut recv, mut send) = futures::AsyncReadExt::split(stream);
            let pong = super::ping_on(&mut send, &mut recv, ping, self.max_frame).await?;
            Ok(Some((pong, (send, recv))))
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(Some((pong, stream)))) => {
                if !self.cancel.is_cancelled() {
                    self.pings.lock().expect("pings lock").insert(peer, stream);
                }
                Ok(pong)
            }
            Ok(Ok(None)) => self.request(peer, Vec::new(), ping.clone(), timeout).await,
            Ok(Err(e)) => Err(e),
            // The stream goes with the attempt: a late pong on it can
            // never be taken for the next one's.
            Err(_) => Err(StackError::Timeout(timeout)),
        }
    }

    /// Stop the swarm and return once it is gone: every connection
    /// closes and the listening port is free.
    pub async fn stop(&self) {
        self.accepting.store(false, Ordering::SeqCst);
        self.cancel.cancel();
        self.pings.lock().expect("pings lock").clear();
        let task = self.task.lock().expect("task lock").take();
        if let Some(task) = task {
            task.abort();
            // Resolves once the aborted task has dropped the swarm.
            let _ = task.await;
        }
        self.peers.transport_down(Transport::LibP2p);
    }
}

impl Drop for Libp2pStack {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.get_mut().expect("task lock").take() {
            task.abort();
        }
    }
}

/// Answer the heartbeat streams peers open, each in a task of its own (at
/// most [`MAX_PING_STREAMS`] at once), until the stack stops.
async fn answer_ping_streams(
    mut incoming: libp2p_stream::IncomingStreams,
    handler: Arc<dyn Handler>,
    stats: Arc<StackStats>,
    peers: Arc<PeerSynchronizer>,
    max: usize,
    cancel: CancellationToken,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_PING_STREAMS));
    while let Some((peer, stream)) = incoming.next().await {
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            stats.overloaded.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, "too many heartbeat streams; refusing one");
            continue;
        };
        let (handler, stats, peers) = (handler.clone(), stats.clone(), peers.clone());
        tokio::spawn(cancel.clone().run_until_cancelled_owned(async move {
            let _permit = permit;
            let answerer = super::PingAnswerer {
                handler: &*handler,
                peers: &peers,
                stats: &stats,
                peer,
                transport: Transport::LibP2p,
                max,
            };
            let (mut recv, mut send) = futures::AsyncReadExt::split(stream);
            if answerer.answer(None, &mut recv, &mut send).await.is_err() {
                // Garbage: the stream (and its frames) is dropped.
                tracing::debug!(%peer, "malformed heartbeat frame; dropping the stream");
            }
        }));
    }
}

struct Shared {
    handler: Arc<dyn Handler>,
    accepting: Arc<AtomicBool>,
    inbound: Inbound,
    stats: Arc<StackStats>,
    peers: Arc<PeerSynchronizer>,
}

/// A swarm over TCP + Noise + Yamux with our behaviours.
fn build_swarm(
    identity: &Identity,
    config: &Libp2pConfig,
    streams: libp2p_stream::Behaviour,
) -> Result<libp2p::Swarm<Behaviour>, StackError> {
    let swarm = libp2p::SwarmBuilder::with_existing_identity(identity.libp2p_keypair())
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| StackError::Start(format!("libp2p transport: {e}")))?
        .with_behaviour(|key| Behaviour {
            allow: Toggle::from((!config.allowlist.is_empty()).then(|| {
                let mut allow =
                    allow_block_list::Behaviour::<allow_block_list::AllowedPeers>::default();
                for p in &config.allowlist {
                    allow.allow_peer(*p);
                }
                allow
            })),
            rpc: request_response::Behaviour::with_codec(
                FrameCodec {
                    max: config.max_frame,
                },
                [(PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(config.request_timeout),
            ),
            identify: identify::Behaviour::new(
                identify::Config::new("/switchyard/1".into(), key.public())
                    .with_agent_version(config.agent_version.clone()),
            ),
            streams,
        })
        .map_err(|e| StackError::Start(format!("libp2p behaviour: {e}")))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_timeout))
        .build();
    Ok(swarm)
}

/// Listen on `addr` and wait until the listener has an address peers can
/// dial.
async fn listen_on(
    swarm: &mut libp2p::Swarm<Behaviour>,
    addr: &Multiaddr,
) -> Result<Vec<Multiaddr>, StackError> {
    swarm
        .listen_on(addr.clone())
        .map_err(|e| StackError::Start(format!("libp2p listen on {addr}: {e}")))?;
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::NewListenAddr { address, .. } => return Ok(vec![address]),
            SwarmEvent::ListenerError { error, .. } => {
                return Err(StackError::Start(format!("libp2p listener: {error}")));
            }
            _ => {}
        }
    }
}

/// The swarm's actor: commands from the stack's handle, answers from the
/// handler's tasks, and the swarm's events, one at a time.
struct SwarmLoop {
    swarm: libp2p::Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    shared: Shared,
    /// Outbound requests until their response or failure.
    pending: HashMap<OutboundRequestId, oneshot::Sender<Result<Envelope, StackError>>>,
    /// Accepted inbound requests until their response is sent or fails.
    answering: HashMap<InboundRequestId, InboundGuard>,
    /// Dials to addresses whose peer is unknown, until it is.
    dials: HashMap<ConnectionId, oneshot::Sender<Result<PeerId, StackError>>>,
    /// The handler's answers, from the tasks that ran it.
    done_tx: mpsc::Sender<(ResponseChannel<Envelope>, Envelope)>,
    done_rx: mpsc::Receiver<(ResponseChannel<Envelope>, Envelope)>,
    paused: Option<tokio::sync::watch::Receiver<bool>>,
}

async fn run(swarm: libp2p::Swarm<Behaviour>, commands: mpsc::Receiver<Command>, shared: Shared) {
    let (done_tx, done_rx) = mpsc::channel(1024);
    let paused = shared.handler.paused();
    SwarmLoop {
        swarm,
        commands,
        shared,
        pending: HashMap::new(),
        answering: HashMap::new(),
        dials: HashMap::new(),
        done_tx,
        done_rx,
        paused,
    }
    .run()
    .await;
}

impl SwarmLoop {
    async fn run(mut self) {
        loop {
            // A paused node (fault injection) does nothing at all, as if
            // its process were stopped: nothing is read, answered or sent.
            if let Some(rx) = &mut self.paused
                && *rx.borrow()
            {
                let _ = rx.wait_for(|p| !p).await;
            }
            tokio::select! {
                // Pausing takes effect at once, not after the next event.
                () = pause_flips(&mut self.paused) => {}
                command = self.commands.recv() => match command {
                    None => return,
                    Some(c) => self.on_command(c),
                },
                Some((channel, response)) = self.done_rx.recv() => {
                    self.count_sent(&response);
                    let _ = self.swarm.behaviour_mut().rpc.send_response(channel, response);
                }
                event = self.swarm.select_next_some() => self.on_event(event),
            }
        }
    }

    fn count_sent(&self, e: &Envelope) {
        let n = e.payload.len() as u64;
        self.shared.stats.bytes_sent.fetch_add(n, Ordering::Relaxed);
    }

    fn count_received(&self, e: &Envelope) {
        let n = e.payload.len() as u64;
        self.shared
            .stats
            .bytes_received
            .fetch_add(n, Ordering::Relaxed);
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Request {
                peer,
                addrs,
                envelope,
                reply,
            } => {
                self.count_sent(&envelope);
                let rpc = &mut self.swarm.behaviour_mut().rpc;
                let id = rpc.send_request_with_addresses(&peer, Ok(envelope), addrs);
                self.pending.insert(id, reply);
            }
            Command::Dial { addr, reply } => {
                let opts = DialOpts::unknown_peer_id().address(addr).build();
                let id = opts.connection_id();
                match self.swarm.dial(opts) {
                    Ok(()) => {
                        self.dials.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(StackError::Connection(e.to_string())));
                    }
                }
            }
        }
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        let (stats, peers) = (&self.shared.stats, &self.shared.peers);
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                connection_id,
                ..
            } => {
                if let Some(reply) = self.dials.remove(&connection_id) {
                    let _ = reply.send(Ok(peer_id));
                }
                let addr = Some(endpoint.get_remote_address().to_string());
                peers.libp2p(peer_id, PeerEvent::Connected { addr });
            }
            SwarmEvent::ConnectionClosed { peer_id, .. } => {
                peers.libp2p(peer_id, PeerEvent::Disconnected);
            }
            SwarmEvent::IncomingConnectionError {
                error: ListenError::Denied { cause },
                send_back_addr,
                ..
            } => {
                stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(from = %send_back_addr, reason = %cause, "libp2p connection refused: not on the allowlist");
            }
            SwarmEvent::OutgoingConnectionError {
                error,
                peer_id,
                connection_id,
            } => self.on_dial_error(error, peer_id, connection_id),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                let addrs = info.listen_addrs.iter().map(ToString::to_string).collect();
                peers.libp2p(peer_id, PeerEvent::ListenAddrs(addrs));
            }
            SwarmEvent::Behaviour(BehaviourEvent::Rpc(e)) => self.on_rpc(e),
            _ => {}
        }
    }

    fn on_dial_error(&mut self, error: DialError, peer: Option<PeerId>, id: ConnectionId) {
        if let DialError::Denied { cause } = &error {
            self.shared.stats.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(?peer, reason = %cause, "libp2p connection refused: not on the allowlist");
        }
        if let Some(reply) = self.dials.remove(&id) {
            let err = match &error {
                DialError::Denied { cause } => StackError::NotAllowed(cause.to_string()),
                other => StackError::Connection(other.to_string()),
            };
            let _ = reply.send(Err(err));
        }
    }

    fn on_rpc(&mut self, event: request_response::Event<InboundFrame, Envelope>) {
        use request_response::{Event, Message};
        match event {
            Event::Message { peer, message, .. } => match message {
                Message::Request {
                    request_id,
                    request,
                    channel,
                } => self.on_request(peer, request_id, request, channel),
                Message::Response {
                    request_id,
                    response,
                } => {
                    self.count_received(&response);
                    if let Some(reply) = self.pending.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            Event::OutboundFailure {
                request_id,
                error,
                peer,
                ..
            } => {
                let err = match error {
                    request_response::OutboundFailure::Timeout => {
                        StackError::Timeout(Duration::ZERO)
                    }
                    request_response::OutboundFailure::Io(e)
                        if e.kind() == std::io::ErrorKind::InvalidData =>
                    {
                        StackError::Protocol(format!("{peer}: {e}"))
                    }
                    other => StackError::Connection(format!("{peer}: {other}")),
                };
                if let Some(reply) = self.pending.remove(&request_id) {
                    let _ = reply.send(Err(err));
                }
            }
            Event::InboundFailure {
                peer,
                error,
                request_id,
                ..
            } => {
                self.answering.remove(&request_id);
                if let request_response::InboundFailure::Io(e) = &error
                    && e.kind() == std::io::ErrorKind::InvalidData
                {
                    self.drop_malformed(peer);
                }
            }
            Event::ResponseSent { request_id, .. } => {
                self.answering.remove(&request_id);
            }
        }
    }

    /// Garbage from `peer`: count it and drop the peer.
    fn drop_malformed(&mut self, peer: PeerId) {
        self.shared.stats.malformed.fetch_add(1, Ordering::Relaxed);
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    /// A heartbeat is answered here and now; any other request by the
    /// handler in a task of its own (or `Retiring` while the stack
    /// retires), whose answer comes back through `done_tx`.
    fn on_request(
        &mut self,
        peer: PeerId,
        request_id: InboundRequestId,
        request: Result<Envelope, String>,
        channel: ResponseChannel<Envelope>,
    ) {
        let s = &self.shared;
        let request = match request {
            Ok(r) => r,
            Err(reason) => {
                // The dropped channel answers nothing.
                tracing::debug!(%peer, %reason, "malformed libp2p frame; dropping the peer");
                self.drop_malformed(peer);
                return;
            }
        };
        if request.kind == Kind::Ping {
            super::hear_ping(&s.peers, &s.stats, peer, Transport::LibP2p, &request);
            let pong = super::pong(&request, &*s.handler);
            if self
                .swarm
                .behaviour_mut()
                .rpc
                .send_response(channel, pong)
                .is_ok()
            {
                self.shared
                    .stats
                    .heartbeats_answered
                    .fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        self.count_received(&request);
        let admitted = s.inbound.admit(&s.accepting);
        let open = admitted.is_some();
        if let Some(guard) = admitted {
            self.answering.insert(request_id, guard);
        }
        let (handler, done) = (self.shared.handler.clone(), self.done_tx.clone());
        tokio::spawn(async move {
            let response = if open {
                super::answer(&*handler, peer, Transport::LibP2p, request).await
            } else {
                super::retiring(
                    &request,
                    handler.mode(),
                    "the libp2p stack is retiring on this node",
                )
            };
            let _ = done.send((channel, response)).await;
        });
    }
}

/// Resolves when `paused` changes; never without one.
async fn pause_flips(paused: &mut Option<tokio::sync::watch::Receiver<bool>>) {
    match paused {
        Some(rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}
