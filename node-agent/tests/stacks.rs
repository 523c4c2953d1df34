//! Both stacks on real sockets on 127.0.0.1: requests and responses over
//! each, and a peer sending garbage dropped and counted while others carry
//! on.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use libp2p::PeerId;
use switchyard_node_agent::NetworkMode;
use switchyard_node_agent::identity::{Identity, endpoint_to_peer};
use switchyard_node_agent::peers::PeerSynchronizer;
use switchyard_node_agent::stack::iroh_stack::{ALPN, IrohConfig, IrohStack};
use switchyard_node_agent::stack::libp2p_stack::{Libp2pConfig, Libp2pStack};
use switchyard_node_agent::stack::{Handler, StackError, StackStats, Transport};
use switchyard_node_agent::wire::{Envelope, Kind};

const T: Duration = Duration::from_secs(10);

/// Answers with the request's payload, prefixed by who asked and how; a
/// request saying [`HANG`] is never answered.
struct Echo;

const HANG: &[u8] = b"hang";

impl Handler for Echo {
    fn handle(
        &self,
        from: PeerId,
        transport: Transport,
        request: Envelope,
    ) -> BoxFuture<'static, Result<Bytes, String>> {
        Box::pin(async move {
            if request.payload.as_ref() == HANG {
                futures::future::pending::<()>().await;
            }
            let mut out = format!("{}:{}:", transport.as_str(), from).into_bytes();
            out.extend_from_slice(&request.payload);
            Ok(Bytes::from(out))
        })
    }
    fn mode(&self) -> NetworkMode {
        NetworkMode::DualPreferIroh
    }
}

struct Node {
    id: Identity,
    libp2p: Arc<Libp2pStack>,
    iroh: Arc<IrohStack>,
    stats: (Arc<StackStats>, Arc<StackStats>),
    peers: Arc<PeerSynchronizer>,
}

async fn node() -> Node {
    node_with(Libp2pConfig::default(), IrohConfig::default()).await
}

async fn node_with(libp2p: Libp2pConfig, iroh: IrohConfig) -> Node {
    let id = Identity::generate();
    let s1 = Arc::new(StackStats::default());
    let s2 = Arc::new(StackStats::default());
    let peers = Arc::new(PeerSynchronizer::new());
    let libp2p = Libp2pStack::start(&id, libp2p, Arc::new(Echo), s1.clone(), peers.clone())
        .await
        .expect("libp2p starts");
    let iroh = IrohStack::start(&id, iroh, Arc::new(Echo), s2.clone(), peers.clone())
        .await
        .expect("iroh starts");
    Node {
        id,
        libp2p: Arc::new(libp2p),
        iroh: Arc::new(iroh),
        stats: (s1, s2),
        peers,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_round_trip_over_both_stacks_with_one_identity() {
    let (a, b) = (node().await, node().await);
    let req = Envelope::request(
        NetworkMode::DualPreferLibP2p,
        42,
        Bytes::from_static(b"ping"),
    );
    let r = a
        .libp2p
        .request(b.id.peer_id(), b.libp2p.addrs(), req.clone(), T)
        .await
        .expect("libp2p answer");
    assert_eq!(r.kind, Kind::Response);
    assert_eq!(r.request_id, 42);
    assert_eq!(
        r.mode,
        NetworkMode::DualPreferIroh,
        "the peer advertises its mode"
    );
    assert_eq!(r.payload, format!("libp2p:{}:ping", a.id.peer_id()));
    let r = a
        .iroh
        .request(&b.iroh.addr(), &req, T)
        .await
        .expect("iroh answer");
    // The iroh side names the caller by the same PeerId: one identity.
    assert_eq!(r.payload, format!("iroh:{}:ping", a.id.peer_id()));
    assert_eq!(
        endpoint_to_peer(&b.iroh.addr().id).expect("id"),
        b.id.peer_id()
    );
    assert!(b.stats.1.bytes_received.load(Ordering::Relaxed) >= 4);
    a.iroh.stop().await;
    b.iroh.stop().await;
}

/// A mode switch restarts a stack on its configured port: a stack started
/// on the port right after the old one stopped must get it, even with a
/// dial to a peer that never answers, an inbound request its handler never
/// answers, and a request in flight the other way when it stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_restarted_on_its_port_gets_it_whatever_was_in_flight() {
    let (lp, ip) = (
        switchyard_testbed::ports::reserve(),
        switchyard_testbed::ports::reserve(),
    );
    let a = node_with(
        Libp2pConfig {
            listen: format!("/ip4/127.0.0.1/tcp/{}", lp.get())
                .parse()
                .expect("addr"),
            ..Libp2pConfig::default()
        },
        IrohConfig {
            bind: ip.addr(),
            ..IrohConfig::default()
        },
    )
    .await;
    let b = node().await;
    let hang = Envelope::request(NetworkMode::IrohOnly, 1, Bytes::from_static(HANG));
    // b asks a something a never answers, over each stack.
    let b_asks_iroh = {
        let (stack, to, req) = (b.iroh.clone(), a.iroh.addr(), hang.clone());
        tokio::spawn(async move { stack.request(&to, &req, T).await })
    };
    let b_asks_libp2p = {
        let (stack, to, addrs, req) = (
            b.libp2p.clone(),
            a.id.peer_id(),
            a.libp2p.addrs(),
            hang.clone(),
        );
        tokio::spawn(async move { stack.request(to, addrs, req, T).await })
    };
    // a dials a peer that never answers (a socket nobody reads).
    let hole = std::net::UdpSocket::bind("127.0.0.1:0").expect("black hole");
    let nobody = iroh::EndpointAddr::new(Identity::generate().endpoint_id())
        .with_ip_addr(hole.local_addr().expect("hole addr"));
    let a_dials_nobody = {
        let (stack, req) = (a.iroh.clone(), hang.clone());
        tokio::spawn(async move { stack.request(&nobody, &req, T).await })
    };
    // Both of b's requests are being served by a before it stops.
    let deadline = tokio::time::Instant::now() + T;
    while a.iroh.inbound() + a.libp2p.inbound() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a never received both requests (iroh {}, libp2p {})",
            a.iroh.inbound(),
            a.libp2p.inbound()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        !a_dials_nobody.is_finished(),
        "the dial to nobody is still in progress"
    );
    a.iroh.stop().await;
    a.libp2p.stop().await;
    std::net::TcpListener::bind(lp.addr())
        .unwrap_or_else(|e| panic!("the stopped libp2p stack still holds {}: {e}", lp.addr()));
    let again = IrohStack::start(
        &a.id,
        IrohConfig {
            bind: ip.addr(),
            ..IrohConfig::default()
        },
        Arc::new(Echo),
        Arc::new(StackStats::default()),
        Arc::new(PeerSynchronizer::new()),
    )
    .await
    .unwrap_or_else(|e| panic!("a new iroh stack on {}: {e}", ip.addr()));
    let hello = Envelope::request(NetworkMode::IrohOnly, 2, Bytes::from_static(b"hello"));
    let r = b
        .iroh
        .request(&again.addr(), &hello, T)
        .await
        .expect("the new stack answers on the old port");
    assert_eq!(r.payload, format!("iroh:{}:hello", b.id.peer_id()));
    again.stop().await;
    // Everything in flight ended with an error rather than hanging.
    for (what, task) in [
        ("a's dial", a_dials_nobody),
        ("b's iroh request", b_asks_iroh),
    ] {
        let r = tokio::time::timeout(T, task)
            .await
            .expect(what)
            .expect("joined");
        assert!(r.is_err(), "{what} failed: {r:?}");
    }
    let r = tokio::time::timeout(T, b_asks_libp2p)
        .await
        .expect("b's libp2p request")
        .expect("joined");
    assert!(r.is_err(), "b's libp2p request failed: {r:?}");
    b.iroh.stop().await;
    b.libp2p.stop().await;
}

fn ping(request_id: u64) -> Envelope {
    Envelope {
        kind: Kind::Ping,
        mode: NetworkMode::DualPreferIroh,
        request_id,
        payload: Bytes::new(),
    }
}

/// Heartbeats ride one long-lived stream per peer on each transport (a
/// stream per ping costs several packets more), each pong answers its own
/// ping, and a peer whose stack restarted gets a fresh stream within the
/// same heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_ride_one_stream_per_peer_and_survive_a_peer_restart() {
    let a = node().await;
    let ip = switchyard_testbed::ports::reserve();
    let b_iroh = IrohConfig {
        bind: ip.addr(),
        ..IrohConfig::default()
    };
    let b = node_with(Libp2pConfig::default(), b_iroh.clone()).await;
    // libp2p heartbeats ride the connection a request (a dial) made.
    let hello = Envelope::request(NetworkMode::IrohOnly, 1, Bytes::from_static(b"hi"));
    a.libp2p
        .request(b.id.peer_id(), b.libp2p.addrs(), hello, T)
        .await
        .expect("connected");
    for i in 0..20 {
        let pong = a
            .iroh
            .ping(&b.iroh.addr(), &ping(100 + i), T)
            .await
            .expect("iroh pong");
        assert_eq!((pong.kind, pong.request_id), (Kind::Pong, 100 + i));
        let pong = a
            .libp2p
            .ping(b.id.peer_id(), &ping(200 + i), T)
            .await
            .expect("libp2p pong");
        assert_eq!((pong.kind, pong.request_id), (Kind::Pong, 200 + i));
    }
    let streams = |n: &Node| {
        (
            n.stats.0.heartbeat_streams.load(Ordering::Relaxed),
            n.stats.1.heartbeat_streams.load(Ordering::Relaxed),
        )
    };
    assert_eq!(
        streams(&a),
        (1, 1),
        "20 heartbeats, one stream on each transport"
    );
    // b's iroh stack restarts on its port: a's idle stream is dead, and
    // the next heartbeat redials and opens another.
    b.iroh.stop().await;
    let b2 = IrohStack::start(
        &b.id,
        b_iroh,
        Arc::new(Echo),
        Arc::new(StackStats::default()),
        Arc::new(PeerSynchronizer::new()),
    )
    .await
    .expect("b's iroh stack again");
    let pong = a
        .iroh
        .ping(&b2.addr(), &ping(300), T)
        .await
        .expect("pong after the restart");
    assert_eq!(pong.request_id, 300);
    assert_eq!(streams(&a).1, 2, "a fresh stream after the restart");
    a.iroh.stop().await;
    b2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retiring_stack_refuses_cleanly() {
    let (a, b) = (node().await, node().await);
    b.iroh.refuse_inbound();
    b.libp2p.refuse_inbound();
    let req = Envelope::request(NetworkMode::IrohOnly, 7, Bytes::from_static(b"x"));
    let r = a
        .iroh
        .request(&b.iroh.addr(), &req, T)
        .await
        .expect("answered");
    assert_eq!(r.kind, Kind::Retiring);
    assert!(String::from_utf8_lossy(&r.payload).contains("retiring"));
    let r = a
        .libp2p
        .request(b.id.peer_id(), b.libp2p.addrs(), req, T)
        .await
        .expect("answered");
    assert_eq!(r.kind, Kind::Retiring);
    a.iroh.stop().await;
    b.iroh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_iroh_peer_sending_garbage_or_oversized_frames_is_dropped_and_counted_and_others_carry_on()
 {
    let (good, target) = (node().await, node().await);
    // A raw iroh endpoint speaking the ALPN but sending nonsense.
    let evil = iroh::Endpoint::builder(iroh::endpoint::presets::Minimal)
        .relay_mode(iroh::RelayMode::Disabled)
        .bind_addr(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("addr")
        .bind()
        .await
        .expect("evil endpoint");
    let conn = evil
        .connect(target.iroh.addr(), ALPN)
        .await
        .expect("connects");
    let (mut send, _recv) = conn.open_bi().await.expect("stream");
    send.write_all(&[0, 0, 0, 12, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9])
        .await
        .expect("sent");
    let _ = send.finish();
    let closed = tokio::time::timeout(T, conn.closed()).await;
    assert!(closed.is_ok(), "the target dropped the connection");
    assert_eq!(target.stats.1.malformed.load(Ordering::Relaxed), 1);
    // A frame announcing 1 GiB is refused before a byte of it is read.
    let conn = evil
        .connect(target.iroh.addr(), ALPN)
        .await
        .expect("connects again");
    let (mut send, _recv) = conn.open_bi().await.expect("stream");
    send.write_all(&[0x40, 0, 0, 0, 1, 0, 0])
        .await
        .expect("sent");
    let closed = tokio::time::timeout(T, conn.closed()).await;
    assert!(closed.is_ok(), "the target dropped the connection again");
    assert_eq!(target.stats.1.malformed.load(Ordering::Relaxed), 2);
    let req = Envelope::request(NetworkMode::IrohOnly, 1, Bytes::from_static(b"still here"));
    let r = good
        .iroh
        .request(&target.iroh.addr(), &req, T)
        .await
        .expect("the good peer is served");
    assert_eq!(r.kind, Kind::Response);
    evil.close().await;
    good.iroh.stop().await;
    target.iroh.stop().await;
}

/// Writes its "requests" as raw bytes: whatever garbage the test picks.
#[derive(Clone, Default)]
struct RawCodec;

impl libp2p::request_response::Codec for RawCodec {
    type Protocol = libp2p::StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<R>(&mut self, _: &Self::Protocol, _: &mut R) -> std::io::Result<Vec<u8>>
    where
        R: futures::AsyncRead + Unpin + Send,
    {
        Ok(Vec::new())
    }

    async fn read_response<R>(&mut self, _: &Self::Protocol, io: &mut R) -> std::io::Result<Vec<u8>>
    where
        R: futures::AsyncRead + Unpin + Send,
    {
        let mut buf = Vec::new();
        futures::AsyncReadExt::read_to_end(io, &mut buf).await?;
        Ok(buf)
    }

    async fn write_request<W>(
        &mut self,
        _: &Self::Protocol,
        io: &mut W,
        req: Vec<u8>,
    ) -> std::io::Result<()>
    where
        W: futures::AsyncWrite + Unpin + Send,
    {
        futures::AsyncWriteExt::write_all(io, &req).await?;
        futures::AsyncWriteExt::close(io).await
    }

    async fn write_response<W>(
        &mut self,
        _: &Self::Protocol,
        _: &mut W,
        _: Vec<u8>,
    ) -> std::io::Result<()>
    where
        W: futures::AsyncWrite + Unpin + Send,
    {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_libp2p_peer_sending_garbage_or_oversized_frames_is_dropped_and_counted() {
    use futures::StreamExt;
    use libp2p::request_response::{self, ProtocolSupport};
    use libp2p::swarm::SwarmEvent;
    use switchyard_node_agent::stack::libp2p_stack::PROTOCOL;

    let (good, target) = (node().await, node().await);
    let mut evil = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .expect("transport")
        .with_behaviour(|_| {
            request_response::Behaviour::with_codec(
                RawCodec,
                [(PROTOCOL, ProtocolSupport::Outbound)],
                request_response::Config::default(),
            )
        })
        .expect("behaviour")
        .build();
    let frames = [
        // A body of 12 bytes of version 9: garbage.
        vec![0, 0, 0, 12, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9],
        // A frame announcing 1 GiB: refused before it is read.
        vec![0x40, 0, 0, 0, 1, 0, 0],
    ];
    for (n, frame) in frames.into_iter().enumerate() {
        evil.behaviour_mut().send_request_with_addresses(
            &target.id.peer_id(),
            frame,
            target.libp2p.addrs(),
        );
        // The target drops the connection: the evil request fails.
        let failed = tokio::time::timeout(T, async {
            loop {
                if let SwarmEvent::Behaviour(request_response::Event::OutboundFailure { .. }) =
                    evil.select_next_some().await
                {
                    break;
                }
            }
        })
        .await;
        assert!(failed.is_ok(), "frame {n}: the target dropped the peer");
        assert_eq!(
            target.stats.0.malformed.load(Ordering::Relaxed),
            n as u64 + 1,
            "frame {n} counted"
        );
    }
    let req = Envelope::request(
        NetworkMode::LibP2pOnly,
        1,
        Bytes::from_static(b"still here"),
    );
    let r = good
        .libp2p
        .request(target.id.peer_id(), target.libp2p.addrs(), req, T)
        .await
        .expect("the good peer is served");
    assert_eq!(r.kind, Kind::Response);
    good.iroh.stop().await;
    target.iroh.stop().await;
}

/// One iroh connection per pair of peers: dialled once however many
/// requests want it at once, even when all of them give up before the
/// handshake ends; kept when a request times out on a peer that is alive
/// (it acknowledges what it is sent); and used both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iroh_peers_share_one_connection_dialled_once() {
    let (a, b) = (node().await, node().await);
    let dials = |n: &Node| n.stats.1.dials.load(Ordering::Relaxed);
    let req = |id: u64, body: &'static [u8]| {
        Envelope::request(NetworkMode::IrohOnly, id, Bytes::from_static(body))
    };
    // Twenty requests give up at once: each is polled once (which begins
    // or joins the dial) and dropped. Whether one got its answer within
    // that poll does not matter (on a loaded machine the thread can be
    // preempted long enough for the whole exchange on loopback).
    for i in 0..20 {
        let to = b.iroh.addr();
        let _ = a.iroh.request(&to, &req(i, b"x"), T).now_or_never();
    }
    // Their dial went on without them: the next request rides it.
    let r = a
        .iroh
        .request(&b.iroh.addr(), &req(100, b"hi"), T)
        .await
        .expect("answer");
    assert_eq!(r.payload, format!("iroh:{}:hi", a.id.peer_id()));
    assert_eq!(dials(&a), 1, "one dial for 21 requests");
    // b is alive but never answers this one: a timeout, and the
    // connection stays.
    let hung = a
        .iroh
        .request(&b.iroh.addr(), &req(101, HANG), Duration::from_millis(300))
        .await;
    assert!(matches!(hung, Err(StackError::Timeout(_))), "{hung:?}");
    a.iroh
        .request(&b.iroh.addr(), &req(102, b"again"), T)
        .await
        .expect("answer after a timeout");
    assert_eq!(dials(&a), 1, "kept after a timeout on a live peer");
    // b asks a on the connection a dialled.
    let r = b
        .iroh
        .request(&a.iroh.addr(), &req(103, b"back"), T)
        .await
        .expect("b's answer");
    assert_eq!(r.payload, format!("iroh:{}:back", b.id.peer_id()));
    assert_eq!(dials(&b), 0, "b rides a's connection");
    a.iroh.stop().await;
    b.iroh.stop().await;
}

/// A dial to a peer whose iroh is down gets no answer, and QUIC sends its
/// first packet again only after seconds. Once the peer is known to have
/// stopped or started iroh since the dial began (the modes it
/// advertises), whoever waits on that dial hears so at once, and the next
/// request dials afresh rather than joining it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_begun_before_the_peer_turned_iroh_off_or_on_is_not_waited_for() {
    let ip = switchyard_testbed::ports::reserve();
    let bind = IrohConfig {
        bind: ip.addr(),
        ..IrohConfig::default()
    };
    let (a, b) = (
        node().await,
        node_with(Libp2pConfig::default(), bind.clone()).await,
    );
    let (to, b_id) = (b.iroh.addr(), b.id.peer_id());
    let dials = || a.stats.1.dials.load(Ordering::Relaxed);
    let hello = |id| Envelope::request(NetworkMode::IrohOnly, id, Bytes::from_static(b"hello"));
    a.peers.advertised(b_id, NetworkMode::DualPreferIroh);
    b.iroh.stop().await;
    // a dials b, not knowing yet that b's iroh is gone.
    let waiting = {
        let (stack, to, req) = (a.iroh.clone(), to.clone(), hello(1));
        tokio::spawn(async move { stack.request(&to, &req, T).await })
    };
    let deadline = tokio::time::Instant::now() + T;
    while dials() < 1 {
        assert!(tokio::time::Instant::now() < deadline, "a never dialled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // b says (over libp2p, say) that it runs no iroh.
    a.peers.advertised(b_id, NetworkMode::LibP2pOnly);
    let r = tokio::time::timeout(T, waiting)
        .await
        .expect("the waiting request ends")
        .expect("joined");
    match r {
        Err(StackError::Connection(e)) => assert!(e.contains("abandoned"), "{e}"),
        other => panic!("the request waiting on the dial hears it was abandoned: {other:?}"),
    }
    // A request that gives up leaves its dial (to b's closed socket)
    // running, for the next request to ride.
    let gave_up = a
        .iroh
        .request(&to, &hello(2), Duration::from_millis(200))
        .await;
    assert!(
        matches!(gave_up, Err(StackError::Timeout(_))),
        "{gave_up:?}"
    );
    assert_eq!(dials(), 2);
    // b runs iroh again on its port, and says so.
    let again = IrohStack::start(
        &b.id,
        bind,
        Arc::new(Echo),
        Arc::new(StackStats::default()),
        Arc::new(PeerSynchronizer::new()),
    )
    .await
    .expect("b's iroh again");
    a.peers.advertised(b_id, NetworkMode::DualPreferIroh);
    let r = a.iroh.request(&to, &hello(3), T).await.expect("b answers");
    assert_eq!(r.payload, format!("iroh:{}:hello", a.id.peer_id()));
    assert_eq!(
        dials(),
        3,
        "a dialled afresh rather than ride the stale dial"
    );
    again.stop().await;
    for n in [a, b] {
        n.iroh.stop().await;
        n.libp2p.stop().await;
    }
}
