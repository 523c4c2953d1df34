//! Dual-stack nodes on 127.0.0.1: every pair of modes, failover when one
//! transport dies, and live mode cycling under load with no failed request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use libp2p::PeerId;
use switchyard_node_agent::NetworkMode;
use switchyard_node_agent::bridge::{BridgeError, Hedge, Node, NodeConfig};
use switchyard_node_agent::identity::Identity;
use switchyard_node_agent::stack::{Handler, Transport};
use switchyard_node_agent::wire::Envelope;

struct Echo;

impl Handler for Echo {
    fn handle(
        &self,
        _: PeerId,
        transport: Transport,
        request: Envelope,
    ) -> BoxFuture<'static, Result<Bytes, String>> {
        Box::pin(async move {
            let mut out = transport.as_str().as_bytes().to_vec();
            out.push(b':');
            out.extend_from_slice(&request.payload);
            Ok(Bytes::from(out))
        })
    }
    fn mode(&self) -> NetworkMode {
        // The node answers with its own mode; this is never used.
        NetworkMode::LibP2pOnly
    }
}

async fn node(mode: NetworkMode) -> Arc<Node> {
    let config = NodeConfig {
        request_timeout: Duration::from_secs(5),
        ..NodeConfig::default()
    };
    Node::start(Identity::generate(), config, mode, Arc::new(Echo))
        .await
        .expect("node starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pair_of_modes_talks_or_fails_fast() {
    for a_mode in NetworkMode::ALL {
        for b_mode in NetworkMode::ALL {
            let (a, b) = (node(a_mode).await, node(b_mode).await);
            let started = Instant::now();
            let r = a.request(&b.addr(), Bytes::from_static(b"hi")).await;
            if a_mode.can_talk(b_mode) {
                let body = r.unwrap_or_else(|e| panic!("{a_mode} -> {b_mode}: {e}"));
                assert!(body.ends_with(b":hi"));
            } else {
                let e = r.expect_err("cannot talk");
                assert!(
                    matches!(e, BridgeError::NoCommonTransport { .. }),
                    "{a_mode} -> {b_mode}: {e}"
                );
                assert!(e.to_string().contains(a_mode.as_str()), "{e}");
                assert!(
                    started.elapsed() < Duration::from_secs(1),
                    "fails fast, not by timeout"
                );
            }
            a.stop().await;
            b.stop().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_older_than_a_mode_switch_is_completed_from_the_peer_view() {
    // The DHT's routing table keeps the addresses a peer had when it was
    // learned; `a` knows `b` only on libp2p there, then goes IrohOnly.
    let (a, b) = (
        node(NetworkMode::DualPreferIroh).await,
        node(NetworkMode::DualPreferIroh).await,
    );
    let body = a
        .request(&b.addr(), Bytes::from_static(b"hi"))
        .await
        .expect("dual to dual");
    assert!(body.starts_with(b"iroh:"), "iroh preferred");
    let mut old = b.addr();
    old.iroh = None;
    a.set_mode(NetworkMode::IrohOnly).await.expect("switch");
    let body = a
        .request(&old, Bytes::from_static(b"hi"))
        .await
        .expect("the view knows b's iroh address");
    assert_eq!(&body[..], b"iroh:hi");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_a_transport_tells_its_peers_there_where_it_went() {
    // `b` met `a` on libp2p before `a` ran iroh, so it knows no iroh
    // address of `a`; no heartbeats run.
    let (a, b) = (
        node(NetworkMode::LibP2pOnly).await,
        node(NetworkMode::DualPreferIroh).await,
    );
    let aid = a.addr().peer;
    let mut met = a.addr();
    met.iroh = None;
    let body = b
        .request(&met, Bytes::from_static(b"hi"))
        .await
        .expect("b reaches a on libp2p");
    assert_eq!(&body[..], b"libp2p:hi");
    a.set_mode(NetworkMode::DualPreferLibP2p)
        .await
        .expect("a adds iroh");
    a.set_mode(NetworkMode::IrohOnly)
        .await
        .expect("a drops libp2p");
    // The switch said goodbye on `b`'s libp2p connection before closing
    // it: `b` knows `a`'s new mode and where `a` is on iroh.
    let knows = || {
        b.peer_facts(&aid).and_then(|f| f.mode) == Some(NetworkMode::IrohOnly)
            && b.peer(&aid)
                .and_then(|v| switchyard_node_agent::bridge::view_addr(&v))
                .is_some_and(|v| v.iroh.is_some())
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !knows() {
        assert!(
            Instant::now() < deadline,
            "b never learned a's mode and iroh address: {:?}",
            b.peer(&aid)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (body, t) = b
        .request_via(&met, Bytes::from_static(b"hi"))
        .await
        .expect("b reaches a on iroh with the address it met a by");
    assert_eq!((&body[..], t), (&b"iroh:hi"[..], Transport::Iroh));
    assert_eq!(
        b.metrics().of(Transport::LibP2p).error.get(),
        0,
        "nothing was sent to a's stopped libp2p"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_transport_fails_over_to_the_other() {
    let (a, b) = (
        node(NetworkMode::DualPreferLibP2p).await,
        node(NetworkMode::DualPreferLibP2p).await,
    );
    let addr = b.addr();
    let first = a
        .request(&addr, Bytes::from_static(b"1"))
        .await
        .expect("ok");
    assert_eq!(&first[..], b"libp2p:1", "libp2p preferred");
    // b learned a's mode from the request alone.
    let seen_by_b = b.peer(&a.identity().peer_id()).expect("b knows a");
    assert_eq!(seen_by_b.mode, Some(NetworkMode::DualPreferLibP2p));
    b.kill_transport(Transport::LibP2p).await;
    for i in 0..20u8 {
        let r = a
            .request(&addr, Bytes::from(vec![i]))
            .await
            .expect("fails over");
        assert!(r.starts_with(b"iroh:"));
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_fail_the_given_share_of_sends_and_count_as_errors() {
    let (a, b) = (
        node(NetworkMode::LibP2pOnly).await,
        node(NetworkMode::LibP2pOnly).await,
    );
    let addr = b.addr();
    a.inject_faults(Transport::LibP2p, 0.25);
    let mut failed = 0;
    for i in 0..100u8 {
        match a.request(&addr, Bytes::from(vec![i])).await {
            Ok(_) => {}
            Err(e) => {
                assert!(e.to_string().contains("injected fault"), "{e}");
                failed += 1;
            }
        }
    }
    assert_eq!(failed, 25, "a quarter of the sends, exactly");
    let text = a.metrics().render();
    assert!(
        text.contains("switchyard_node_injected_faults_total{transport=\"libp2p\"} 25"),
        "{text}"
    );
    assert!(
        text.contains("switchyard_node_requests_total{outcome=\"error\",transport=\"libp2p\"} 25"),
        "{text}"
    );
    // With both transports the failed libp2p sends go over iroh instead.
    a.set_mode(NetworkMode::DualPreferLibP2p)
        .await
        .expect("switch");
    b.set_mode(NetworkMode::DualPreferLibP2p)
        .await
        .expect("switch");
    a.inject_faults(Transport::LibP2p, 1.0);
    let addr = b.addr();
    for i in 0..10u8 {
        let r = a
            .request(&addr, Bytes::from(vec![i]))
            .await
            .expect("fails over");
        assert!(r.starts_with(b"iroh:"), "{r:?}");
    }
    a.inject_faults(Transport::LibP2p, 0.0);
    assert_eq!(a.injected_faults(Transport::LibP2p), 0.0);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cycling_every_mode_under_load_fails_no_request() {
    let server = node(NetworkMode::DualPreferLibP2p).await;
    let addr = server.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    for _ in 0..4 {
        let client = node(NetworkMode::DualLoadBalance).await;
        let (stop, sent, addr) = (stop.clone(), sent.clone(), addr.clone());
        senders.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                if let Err(e) = client.request(&addr, Bytes::from_static(b"x")).await {
                    failures.push(e.to_string());
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            client.stop().await;
            failures
        }));
    }
    // Dual modes first so a node never leaves the clients without a
    // common transport; then the single-stack ends, both ways.
    let cycle = [
        NetworkMode::DualLoadBalance,
        NetworkMode::DualPreferIroh,
        NetworkMode::IrohOnly,
        NetworkMode::DualPreferIroh,
        NetworkMode::DualLoadBalance,
        NetworkMode::DualPreferLibP2p,
        NetworkMode::LibP2pOnly,
        NetworkMode::DualPreferLibP2p,
        NetworkMode::IrohOnly,
        NetworkMode::LibP2pOnly,
    ];
    for mode in cycle {
        let before = sent.load(Ordering::Relaxed);
        server.set_mode(mode).await.expect("switch");
        assert_eq!(server.mode(), mode);
        // Let some requests run in each mode.
        let deadline = Instant::now() + Duration::from_secs(10);
        while sent.load(Ordering::Relaxed) < before + 50 {
            assert!(Instant::now() < deadline, "requests stalled in {mode}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let mut failures = Vec::new();
    for s in senders {
        failures.extend(s.await.expect("sender"));
    }
    assert!(sent.load(Ordering::Relaxed) >= 500);
    assert_eq!(failures, Vec::<String>::new(), "no request failed");
    assert_eq!(server.switches(), 10);
    let text = server.metrics().render();
    assert!(
        text.contains("switchyard_node_mode_switches_total 10"),
        "{text}"
    );
    assert!(
        text.contains("switchyard_node_mode{mode=\"LibP2pOnly\"} 1"),
        "{text}"
    );
    server.stop().await;
}

/// Answers over iroh at once and over libp2p after `libp2p_delay`,
/// remembering every (transport, request id) it served.
struct SlowLibp2p {
    libp2p_delay: Duration,
    seen: Arc<std::sync::Mutex<Vec<(Transport, u64)>>>,
}

impl Handler for SlowLibp2p {
    fn handle(
        &self,
        _: PeerId,
        transport: Transport,
        request: Envelope,
    ) -> BoxFuture<'static, Result<Bytes, String>> {
        self.seen
            .lock()
            .expect("seen")
            .push((transport, request.request_id));
        let delay = match transport {
            Transport::LibP2p => self.libp2p_delay,
            Transport::Iroh => Duration::ZERO,
        };
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            Ok(Bytes::from_static(transport.as_str().as_bytes()))
        })
    }
    fn mode(&self) -> NetworkMode {
        NetworkMode::LibP2pOnly
    }
}

/// A server whose libp2p answers take `libp2p_delay`; `dedup_window` as
/// in [`NodeConfig`].
async fn slow_libp2p_server(
    libp2p_delay: Duration,
    dedup_window: usize,
) -> (Arc<Node>, Arc<std::sync::Mutex<Vec<(Transport, u64)>>>) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let handler = SlowLibp2p {
        libp2p_delay,
        seen: seen.clone(),
    };
    let server = Node::start(
        Identity::generate(),
        NodeConfig {
            dedup_window,
            ..NodeConfig::default()
        },
        NetworkMode::DualPreferLibP2p,
        Arc::new(handler),
    )
    .await
    .expect("server starts");
    (server, seen)
}

/// A hedge after 3 × the round trip, within 1 ms and `max` (`max` before
/// anything is measured).
fn hedge_within(max: Duration) -> Hedge {
    Hedge::Delayed {
        factor: 3.0,
        min: Duration::from_millis(1),
        max,
    }
}

async fn client_with(hedge: Hedge) -> Arc<Node> {
    let config = NodeConfig {
        hedge,
        request_timeout: Duration::from_secs(10),
        ..NodeConfig::default()
    };
    Node::start(
        Identity::generate(),
        config,
        NetworkMode::DualPreferLibP2p,
        Arc::new(Echo),
    )
    .await
    .expect("client starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_preferred_transport_is_hedged_onto_the_other_with_the_same_request_id() {
    // The slow path is simulated in the handler, so the server must run it
    // per arrival (no de-duplication) for the hedge to be seen winning.
    // The delay is far beyond the hedge delay, so which answer wins is not
    // a race.
    let (server, seen) = slow_libp2p_server(Duration::from_secs(3), 0).await;
    let hedged = client_with(hedge_within(Duration::from_millis(50))).await;
    let r = hedged
        .request(&server.addr(), Bytes::from_static(b"x"))
        .await
        .expect("answered");
    assert_eq!(&r[..], b"iroh", "the hedge on iroh answered first");
    let text = hedged.metrics().render();
    assert!(
        text.contains("switchyard_node_hedged_requests_total{transport=\"iroh\"} 1"),
        "{text}"
    );
    // The server saw the one request on both transports, with one id.
    let s = seen.lock().expect("seen").clone();
    assert_eq!(s.len(), 2, "{s:?}");
    assert_eq!(s[0].1, s[1].1, "a hedge reuses the request id: {s:?}");
    // The abandoned libp2p attempt counts as slow, so LowestLatency would
    // now pick iroh for this peer.
    let view = hedged.peer(&server.addr().peer).expect("known peer");
    assert!(
        view.libp2p.latency.expect("lower bound recorded") > view.iroh.latency.expect("measured"),
        "{view:?}"
    );
    hedged.stop().await;

    // Without hedging the preferred transport's answer is awaited; racing
    // sends on both at once and the fast one wins.
    for (hedge, winner) in [(Hedge::Off, "libp2p"), (Hedge::Race, "iroh")] {
        let client = client_with(hedge).await;
        let r = client
            .request(&server.addr(), Bytes::from_static(b"x"))
            .await
            .expect("answered");
        assert_eq!(&r[..], winner.as_bytes(), "{hedge:?}");
        client.stop().await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_request_is_slow_only_the_budget_of_them_is_hedged() {
    // Every libp2p answer is slow, as when the node or its machine is
    // overloaded: hedging each request would double the load. The budget
    // starts full (3 hedges) and each request earns a tenth of one, but
    // these 20 start while it is full, so 3 hedge and 17 wait.
    let (server, seen) = slow_libp2p_server(Duration::from_millis(500), 0).await;
    let client = client_with(hedge_within(Duration::from_millis(20))).await;
    let addr = server.addr();
    let answers =
        futures::future::join_all((0..20).map(|_| client.request(&addr, Bytes::from_static(b"x"))))
            .await;
    let by = |t: &str| {
        answers
            .iter()
            .filter(|r| r.as_ref().expect("answered")[..] == *t.as_bytes())
            .count()
    };
    assert_eq!((by("iroh"), by("libp2p")), (3, 17), "{answers:?}");
    let text = client.metrics().render();
    assert!(
        text.contains("switchyard_node_hedged_requests_total{transport=\"iroh\"} 3"),
        "{text}"
    );
    assert_eq!(seen.lock().expect("seen").len(), 20 + 3);
    client.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_in_five_modes_talk_in_every_pair_at_once_and_merge_their_peer_views() {
    let mut nodes = Vec::new();
    for mode in NetworkMode::ALL {
        nodes.push(node(mode).await);
    }
    let addrs: Vec<_> = nodes.iter().map(|n| n.addr()).collect();
    // Every ordered pair, all at once; three requests each so LoadBalance
    // uses both transports.
    let mut pairs = Vec::new();
    for (i, a) in nodes.iter().enumerate() {
        for (j, addr) in addrs.iter().enumerate() {
            if i == j {
                continue;
            }
            let (a, addr) = (a.clone(), addr.clone());
            let b_mode = NetworkMode::ALL[j];
            pairs.push(tokio::spawn(async move {
                let mut results = Vec::new();
                for k in 0..3u8 {
                    let started = Instant::now();
                    let r = a.request(&addr, Bytes::from(vec![k])).await;
                    results.push((r, started.elapsed()));
                }
                (a.mode(), b_mode, results)
            }));
        }
    }
    for p in pairs {
        let (a_mode, b_mode, results) = p.await.expect("pair task");
        for (r, took) in results {
            if a_mode.can_talk(b_mode) {
                r.unwrap_or_else(|e| panic!("{a_mode} -> {b_mode}: {e}"));
            } else {
                let e = r.expect_err("cannot talk");
                assert!(
                    matches!(e, BridgeError::NoCommonTransport { .. }),
                    "{a_mode} -> {b_mode}: {e}"
                );
                assert!(took < Duration::from_secs(1), "fails fast, not by timeout");
            }
        }
    }
    // The load-balancing node reached the other dual nodes on both
    // transports: one peer entry each, joined by the id mapping. Its
    // turn counter is shared by all peers, so under the concurrent load
    // above one peer may have drawn the same transport three times; and a
    // turn whose transport has no connection yet goes over the other
    // while that one is dialled behind it. A few requests to each, then
    // both connections within 5 s.
    let lb = &nodes[2];
    assert_eq!(lb.mode(), NetworkMode::DualLoadBalance);
    for dual in [1, 3] {
        for k in 0..4u8 {
            lb.request(&addrs[dual], Bytes::from(vec![k]))
                .await
                .expect("dual to dual");
        }
    }
    for dual in [&nodes[1], &nodes[3]] {
        let id = dual.identity();
        let both = || lb.peer(&id.peer_id()).is_some_and(|v| v.dual());
        until(Duration::from_secs(5), "each dual peer on both", both).await;
        let view = lb.peer(&id.peer_id()).expect("seen");
        assert_eq!(view.endpoint, id.endpoint_id());
        assert!(view.dual(), "{view:?}");
        assert_eq!(view.mode, Some(dual.mode()));
    }
    // The single-stack nodes appear once, on their one transport.
    let views = lb.peers();
    assert_eq!(views.len(), 4, "one entry per peer: {views:?}");
    let only_libp2p = lb.peer(&nodes[0].identity().peer_id()).expect("seen");
    assert!(only_libp2p.libp2p.connected() && !only_libp2p.iroh.connected());
    let text = lb.metrics().render();
    assert!(
        text.contains("switchyard_node_dual_stack_peers 2"),
        "{text}"
    );
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_arriving_on_both_transports_runs_the_handler_once() {
    // De-duplication on (the default): a raced request reaches the server
    // on both transports and both get the first arrival's answer.
    let (server, seen) = slow_libp2p_server(Duration::ZERO, 4096).await;
    let racer = client_with(Hedge::Race).await;
    for i in 0..20u8 {
        racer
            .request(&server.addr(), Bytes::from(vec![i]))
            .await
            .expect("answered");
    }
    let text = racer.metrics().render();
    // Either transport may go first: libp2p, which the client prefers,
    // unless only iroh has a connection open yet (the warm path).
    let hedged: f64 = text
        .lines()
        .filter(|l| l.starts_with("switchyard_node_hedged_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(hedged, 20.0, "every request was sent twice: {text}");
    let s = seen.lock().expect("seen").clone();
    let mut ids: Vec<u64> = s.iter().map(|(_, id)| *id).collect();
    ids.dedup();
    assert_eq!(s.len(), 20, "the handler ran once per request: {s:?}");
    assert_eq!(ids.len(), 20);
    racer.stop().await;
    server.stop().await;
}

/// Wait until `cond` holds, looking every 10 ms; fail after `within`.
async fn until(within: Duration, what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A client that does not hedge, so which transport answers is the one
/// routed first.
async fn unhedged(mode: NetworkMode) -> Arc<Node> {
    let config = NodeConfig {
        hedge: Hedge::Off,
        ..NodeConfig::default()
    };
    Node::start(Identity::generate(), config, mode, Arc::new(Echo))
        .await
        .expect("client starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balancing_sends_the_configured_share_over_iroh() {
    let server = node(NetworkMode::DualPreferLibP2p).await;
    let client = unhedged(NetworkMode::DualLoadBalance).await;
    client.set_routing(None, Some(20));
    // Both transports connected first: a turn whose transport has no
    // connection yet goes over the other one (the warm path).
    connect_both(&client, &server).await;
    let mut iroh = 0;
    for i in 0..100u8 {
        let r = client
            .request(&server.addr(), Bytes::from(vec![i]))
            .await
            .expect("answered");
        iroh += usize::from(r.starts_with(b"iroh:"));
    }
    assert_eq!(iroh, 20, "20% of requests over iroh");
    assert_eq!(
        client.strategy(),
        switchyard_node_agent::RoutingStrategy::LoadBalance
    );
    client.stop().await;
    server.stop().await;
}

/// Requests from `client` to `server` until `client` holds a connection
/// to it on both transports, within 5 s.
async fn connect_both(client: &Node, server: &Node) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !client.peer(&server.addr().peer).is_some_and(|v| v.dual()) {
        assert!(Instant::now() < deadline, "connected on both within 5 s");
        client
            .request(&server.addr(), Bytes::from_static(b"warm"))
            .await
            .expect("answered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_takes_the_warm_path_and_the_preferred_one_is_connected_behind_it() {
    let server = node(NetworkMode::DualPreferLibP2p).await;
    let client = unhedged(NetworkMode::DualPreferLibP2p).await;
    let to = server.addr();
    let ask = || client.request_via(&to, Bytes::from_static(b"x"));
    let (_, t) = ask().await.expect("answered");
    assert_eq!(t, Transport::LibP2p, "preferred, and nothing is warm yet");
    let id = server.addr().peer;
    assert!(
        client.peer(&id).is_some_and(|v| !v.iroh.connected()),
        "nothing dialled iroh"
    );
    // Now iroh is preferred, but only libp2p has a connection: the request
    // does not wait for an iroh handshake, and iroh is dialled behind it.
    client.set_routing(
        Some(switchyard_node_agent::RoutingStrategy::PreferIroh),
        None,
    );
    let (_, t) = ask().await.expect("answered");
    assert_eq!(t, Transport::LibP2p, "the warm path first");
    let iroh = || client.peer(&id).is_some_and(|v| v.iroh.connected());
    until(
        Duration::from_secs(5),
        "iroh connected behind the request",
        iroh,
    )
    .await;
    let (_, t) = ask().await.expect("answered");
    assert_eq!(
        t,
        Transport::Iroh,
        "the preferred transport once it is warm"
    );
    client.stop().await;
    server.stop().await;
}

/// A node that drops a transport first connects the one it keeps to the
/// peers it reached only over the other: the first request after the
/// switch finds the connection open instead of waiting for a handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_that_drops_a_transport_connects_the_kept_one_first() {
    let server = node(NetworkMode::DualPreferLibP2p).await;
    let client = unhedged(NetworkMode::DualPreferLibP2p).await;
    let to = server.addr();
    let (_, t) = client
        .request_via(&to, Bytes::from_static(b"x"))
        .await
        .expect("answered");
    assert_eq!(t, Transport::LibP2p);
    // A heartbeat over libp2p tells the client where the server listens
    // on iroh too (the PeerManager sends them).
    client
        .ping(&to, Transport::LibP2p, Duration::from_secs(5))
        .await
        .expect("pong");
    let id = to.peer;
    let view = || client.peer(&id).expect("seen");
    assert!(
        view().libp2p.connected() && !view().iroh.connected(),
        "{:?}",
        view()
    );
    client
        .set_mode(NetworkMode::IrohOnly)
        .await
        .expect("switch");
    assert!(view().iroh.connected(), "connected on iroh: {:?}", view());
    assert!(!view().libp2p.connected());
    let back = server.peer(&client.addr().peer).expect("seen");
    assert!(back.iroh.connected(), "the server sees it too: {back:?}");
    let (_, t) = client
        .request_via(&to, Bytes::from_static(b"y"))
        .await
        .expect("answered");
    assert_eq!(t, Transport::Iroh);
    // And back: libp2p is connected before iroh stops.
    client
        .set_mode(NetworkMode::DualPreferIroh)
        .await
        .expect("switch");
    client
        .set_mode(NetworkMode::LibP2pOnly)
        .await
        .expect("switch");
    assert!(
        view().libp2p.connected(),
        "connected on libp2p: {:?}",
        view()
    );
    client.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_s_garbage_frames_show_in_the_node_s_metrics() {
    let target = node(NetworkMode::IrohOnly).await;
    let iroh_addr = target.addr().iroh.expect("an iroh address");
    // A raw iroh endpoint speaking the ALPN but sending nonsense.
    let evil = iroh::Endpoint::builder(iroh::endpoint::presets::Minimal)
        .relay_mode(iroh::RelayMode::Disabled)
        .bind_addr(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("addr")
        .bind()
        .await
        .expect("evil endpoint");
    let conn = evil
        .connect(iroh_addr, switchyard_node_agent::stack::iroh_stack::ALPN)
        .await
        .expect("connects");
    let (mut send, _recv) = conn.open_bi().await.expect("stream");
    send.write_all(&[0, 0, 0, 12, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9])
        .await
        .expect("sent");
    let _ = send.finish();
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
    assert!(closed.is_ok(), "the target dropped the connection");
    let text = target.metrics().render();
    assert!(
        text.contains("switchyard_node_malformed_total{kind=\"frame\",transport=\"iroh\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("switchyard_node_malformed_total{kind=\"advert\",transport=\"iroh\"} 0"),
        "{text}"
    );
    evil.close().await;
    target.stop().await;
}
