//! The PeerManager over real transports on 127.0.0.1: bootstrap with a bad
//! entry, failure detection of a paused node and its recovery, redials
//! with growing spacing after a kill and reconnection after a restart, the
//! allowlist on both transports, and a 10-node mesh under random kills.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use libp2p::PeerId;
use switchyard_node_agent::NetworkMode;
use switchyard_node_agent::bridge::{Node, NodeConfig};
use switchyard_node_agent::identity::Identity;
use switchyard_node_agent::manager::{ManagerConfig, PeerManager, PeerState, PeerStatus};
use switchyard_node_agent::stack::{Handler, Transport};
use switchyard_node_agent::wire::Envelope;
use switchyard_testbed::ports;

struct Echo;

impl Handler for Echo {
    fn handle(
        &self,
        _: PeerId,
        _: Transport,
        r: Envelope,
    ) -> BoxFuture<'static, Result<Bytes, String>> {
        Box::pin(async move { Ok(r.payload) })
    }
    fn mode(&self) -> NetworkMode {
        NetworkMode::DualPreferLibP2p
    }
}

/// Await `check` every 20 ms until it holds or `within` passes.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn start(identity: Identity, config: NodeConfig) -> Arc<Node> {
    Node::start(
        identity,
        config,
        NetworkMode::DualPreferLibP2p,
        Arc::new(Echo),
    )
    .await
    .expect("node starts")
}

/// Start a node again on `port` with the identity it had. The stopped
/// incarnation in this same process lets go of its UDP socket only when
/// its last user is done (a heartbeat still in flight holds it for up to
/// its timeout), which can outlast the stack's own short rebind retry; a
/// restarted pod is a new process and never waits. So retry, bounded.
async fn restart(identity: Identity, port: &ports::Port) -> Arc<Node> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match Node::start(
            identity.clone(),
            on_port(port),
            NetworkMode::DualPreferLibP2p,
            Arc::new(Echo),
        )
        .await
        {
            Ok(node) => return node,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "the node never got its port {} back: {e}",
                    port.get()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn fast() -> ManagerConfig {
    ManagerConfig {
        heartbeat_interval: Duration::from_millis(200),
        heartbeat_timeout: Duration::from_millis(400),
        unresponsive_after: 2,
        disconnect_after: Duration::from_secs(3),
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_secs(2),
        jitter: 0.2,
        ..ManagerConfig::default()
    }
}

fn libp2p_entry(n: &Node) -> String {
    let a = n.addr();
    let addr: libp2p::Multiaddr = a.libp2p[0]
        .iter()
        .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
        .collect();
    format!("{}@{addr}", a.peer)
}

fn iroh_entry(n: &Node) -> String {
    let a = n.addr();
    let iroh = a.iroh.expect("iroh runs");
    let sock = iroh.ip_addrs().next().expect("a socket");
    format!("{}@{sock}", iroh.id)
}

fn state_of(status: &[PeerStatus], peer: &PeerId, t: Transport) -> Option<PeerState> {
    status.iter().find(|s| s.peer == *peer)?.state(t)
}

async fn both_connected(m: &PeerManager, peer: &PeerId) -> bool {
    let s = m.status().await;
    state_of(&s, peer, Transport::LibP2p) == Some(PeerState::Connected)
        && state_of(&s, peer, Transport::Iroh) == Some(PeerState::Connected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_bootstrap_past_a_bad_entry_and_learn_the_other_transport() {
    let (b, c) = (
        start(Identity::generate(), NodeConfig::default()).await,
        start(Identity::generate(), NodeConfig::default()).await,
    );
    let a = start(Identity::generate(), NodeConfig::default()).await;
    let config = ManagerConfig {
        // b by libp2p only, c by iroh only, and one entry that is nonsense.
        bootstrap: vec![
            libp2p_entry(&b),
            "12D3KooWnotapeer@nowhere".into(),
            iroh_entry(&c),
        ],
        ..fast()
    };
    let (ma, bad) = PeerManager::start(a.clone(), config);
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert_eq!(bad[0].index, 1);
    assert!(
        bad[0].reason.contains("\"nowhere\" is neither a multiaddr"),
        "{}",
        bad[0]
    );
    let (mb, _) = PeerManager::start(
        b.clone(),
        ManagerConfig {
            bootstrap: vec![libp2p_entry(&c)],
            ..fast()
        },
    );
    let (mc, _) = PeerManager::start(c.clone(), fast());
    // Each peer is reached on both transports: the one in the entry, and
    // the other learned from the first pong.
    let (bid, cid, aid) = (b.addr().peer, c.addr().peer, a.addr().peer);
    eventually(
        Duration::from_secs(10),
        "a reaches b and c on both",
        || async { both_connected(&ma, &bid).await && both_connected(&ma, &cid).await },
    )
    .await;
    // b and c learned a from its connections (it was in nobody's list).
    eventually(Duration::from_secs(10), "b and c track a", || async {
        both_connected(&mb, &aid).await
            && both_connected(&mb, &cid).await
            && both_connected(&mc, &aid).await
            && both_connected(&mc, &bid).await
    })
    .await;
    let text = a.metrics().render();
    assert!(
        text.contains("switchyard_node_peer_states{state=\"Connected\",transport=\"iroh\"} 2"),
        "{text}"
    );
    for n in [a, b, c] {
        n.stop().await;
    }
}

/// Two LibP2pOnly nodes, `a` bootstrapped with `b`, each with a manager
/// of `config`, once each has the other `Connected` on libp2p.
async fn met_on_libp2p(config: ManagerConfig) -> (Arc<Node>, Arc<Node>, PeerManager, PeerManager) {
    let only_libp2p = || async {
        Node::start(
            Identity::generate(),
            NodeConfig::default(),
            NetworkMode::LibP2pOnly,
            Arc::new(Echo),
        )
        .await
        .expect("node starts")
    };
    let (a, b) = (only_libp2p().await, only_libp2p().await);
    let (ma, _) = PeerManager::start(
        a.clone(),
        ManagerConfig {
            bootstrap: vec![libp2p_entry(&b)],
            ..config.clone()
        },
    );
    let (mb, _) = PeerManager::start(b.clone(), config);
    let (aid, bid) = (a.addr().peer, b.addr().peer);
    eventually(Duration::from_secs(10), "met on libp2p", || async {
        let (sa, sb) = (ma.status().await, mb.status().await);
        state_of(&sa, &bid, Transport::LibP2p) == Some(PeerState::Connected)
            && state_of(&sb, &aid, Transport::LibP2p) == Some(PeerState::Connected)
    })
    .await;
    (a, b, ma, mb)
}

/// `from` asks `to` (as `from`'s manager tracks it) until it is answered
/// over iroh, within 5 s: a first request may go over the libp2p
/// connection while iroh's is made, not one heartbeat interval later.
async fn answered_over_iroh(from: &Node, manager: &PeerManager, to: PeerId) {
    let addr = manager
        .status()
        .await
        .into_iter()
        .find(|s| s.peer == to)
        .expect("tracked")
        .addr;
    eventually(
        Duration::from_secs(5),
        "a request answered over iroh",
        || async {
            let (_, t) = tokio::time::timeout(
                Duration::from_secs(5),
                from.request_via(&addr, Bytes::from_static(b"x")),
            )
            .await
            .expect("within 5 s")
            .expect("answered");
            t == Transport::Iroh
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_meet_on_libp2p_and_then_both_add_iroh_find_each_other_on_iroh() {
    let (a, b, ma, mb) = met_on_libp2p(fast()).await;
    let (aid, bid) = (a.addr().peer, b.addr().peer);
    // Both add iroh: neither advertised an iroh address when they met.
    a.set_mode(NetworkMode::DualPreferIroh).await.expect("a");
    b.set_mode(NetworkMode::DualPreferIroh).await.expect("b");
    eventually(
        Duration::from_secs(10),
        "each finds the other on iroh",
        || async { both_connected(&ma, &bid).await && both_connected(&mb, &aid).await },
    )
    .await;
    answered_over_iroh(&a, &ma, bid).await;
    for n in [a, b] {
        n.stop().await;
    }
}

/// As above, but at a heartbeat interval longer than the test: a node
/// that adds iroh tells the other where it listens at once (a greeting on
/// libp2p), the other's manager tracks that path at once, and a request
/// goes over iroh at once. Waiting for the next heartbeat to ask would
/// take a minute. (The manager's own first beat on the new path waits a
/// random share of the interval, not to dial a whole wave at once.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_adds_a_transport_is_reached_there_without_waiting_for_a_heartbeat() {
    let slow = ManagerConfig {
        heartbeat_interval: Duration::from_secs(60),
        ..fast()
    };
    let (a, b, _ma, mb) = met_on_libp2p(slow).await;
    let aid = a.addr().peer;
    a.set_mode(NetworkMode::DualPreferIroh).await.expect("a");
    // b runs no iroh yet, but knows where a listens on it.
    eventually(
        Duration::from_secs(5),
        "b learns a's iroh address",
        || async { b.peer(&aid).is_some_and(|v| !v.iroh.listen.is_empty()) },
    )
    .await;
    b.set_mode(NetworkMode::DualPreferIroh).await.expect("b");
    eventually(
        Duration::from_secs(5),
        "b's manager tracks a on iroh",
        || async { state_of(&mb.status().await, &aid, Transport::Iroh).is_some() },
    )
    .await;
    answered_over_iroh(&b, &mb, aid).await;
    for n in [a, b] {
        n.stop().await;
    }
}

/// Two nodes heartbeating each other: a heartbeat heard from the peer
/// stands in for one's own, so each pair exchanges about one per interval
/// and transport rather than two. A paused node sends none either, so its
/// peer still finds it `Unresponsive` within the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_heartbeats_are_not_doubled_and_a_paused_peer_is_still_found() {
    let (a, b) = (
        start(Identity::generate(), NodeConfig::default()).await,
        start(Identity::generate(), NodeConfig::default()).await,
    );
    let config = |other: &Node| ManagerConfig {
        bootstrap: vec![libp2p_entry(other), iroh_entry(other)],
        ..fast()
    };
    let c = config(&b);
    let bound =
        (c.heartbeat_interval + c.heartbeat_timeout) * c.unresponsive_after + c.heartbeat_interval;
    let (ma, _) = PeerManager::start(a.clone(), c);
    let (mb, _) = PeerManager::start(b.clone(), config(&a));
    let (aid, bid) = (a.addr().peer, b.addr().peer);
    eventually(Duration::from_secs(10), "connected both ways", || async {
        both_connected(&ma, &bid).await && both_connected(&mb, &aid).await
    })
    .await;
    let answered = |t: Transport| {
        [&a, &b]
            .iter()
            .map(|n| {
                n.stats(t)
                    .heartbeats_answered
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .sum::<u64>()
    };
    let before = [answered(Transport::LibP2p), answered(Transport::Iroh)];
    let window = Duration::from_secs(4);
    tokio::time::sleep(window).await;
    // Both beating regardless would answer 2 per interval per transport
    // (40 here); a loaded machine only makes it fewer.
    let rounds = (window.as_millis() / fast().heartbeat_interval.as_millis()) as u64;
    for (i, t) in [Transport::LibP2p, Transport::Iroh].into_iter().enumerate() {
        let n = answered(t) - before[i];
        eprintln!(
            "{}: {n} heartbeats answered in {window:?} ({rounds} intervals)",
            t.as_str()
        );
        assert!(
            n <= rounds * 3 / 2,
            "{}: {n} heartbeats in {rounds} intervals: both sides beat",
            t.as_str()
        );
    }
    b.pause(true);
    eventually(
        bound + Duration::from_secs(2),
        "paused b detected on both",
        || async {
            let s = ma.status().await;
            state_of(&s, &bid, Transport::LibP2p) == Some(PeerState::Unresponsive)
                && state_of(&s, &bid, Transport::Iroh) == Some(PeerState::Unresponsive)
        },
    )
    .await;
    b.pause(false);
    eventually(Duration::from_secs(5), "recovered on both", || {
        both_connected(&ma, &bid)
    })
    .await;
    ma.stop();
    mb.stop();
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_is_unresponsive_within_the_bound_and_recovers_when_resumed() {
    let (a, b) = (
        start(Identity::generate(), NodeConfig::default()).await,
        start(Identity::generate(), NodeConfig::default()).await,
    );
    let config = ManagerConfig {
        bootstrap: vec![libp2p_entry(&b), iroh_entry(&b)],
        ..fast()
    };
    // Worst case: a beat just answered, then `unresponsive_after` beats
    // each waiting an interval and timing out.
    let bound = (config.heartbeat_interval + config.heartbeat_timeout) * config.unresponsive_after
        + config.heartbeat_interval;
    let (ma, _) = PeerManager::start(a.clone(), config);
    let bid = b.addr().peer;
    eventually(Duration::from_secs(10), "connected", || {
        both_connected(&ma, &bid)
    })
    .await;
    b.pause(true);
    let paused_at = Instant::now();
    eventually(
        bound + Duration::from_secs(2),
        "detected on both",
        || async {
            let s = ma.status().await;
            state_of(&s, &bid, Transport::LibP2p) == Some(PeerState::Unresponsive)
                && state_of(&s, &bid, Transport::Iroh) == Some(PeerState::Unresponsive)
        },
    )
    .await;
    let detected = paused_at.elapsed();
    b.pause(false);
    eventually(Duration::from_secs(5), "recovered on both", || {
        both_connected(&ma, &bid)
    })
    .await;
    eprintln!("paused peer detected in {detected:?} (bound {bound:?})");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_redialled_with_growing_spacing_and_reconnected_after_restart() {
    let b_id = Identity::generate();
    let b_secret = b_id.secret_bytes();
    let a = start(Identity::generate(), NodeConfig::default()).await;
    // b comes back on its ports, so they are reserved for the whole test.
    let b_port = ports::reserve();
    let b = start(b_id, on_port(&b_port)).await;
    let b_addr = b.addr();
    let config = ManagerConfig {
        bootstrap: vec![libp2p_entry(&b), iroh_entry(&b)],
        max_retries: 100,
        // Small enough that doubling shows through the time an iroh dial
        // to a dead port takes to fail (the heartbeat timeout) and a
        // loaded machine's scheduling.
        jitter: 0.1,
        ..fast()
    };
    let (ma, _) = PeerManager::start(a.clone(), config);
    let bid = b_addr.peer;
    eventually(Duration::from_secs(10), "connected", || {
        both_connected(&ma, &bid)
    })
    .await;
    // Kill b: both stacks go.
    b.stop().await;
    drop(b);
    // Wait for five redials on each transport, then check their spacing.
    // iroh first waits out `disconnect_after`: over UDP a dead peer and a
    // paused one look the same for a while.
    eventually(Duration::from_secs(30), "five redials on each", || async {
        let s = ma.status().await;
        let p = s.iter().find(|p| p.peer == bid).expect("tracked");
        [&p.libp2p, &p.iroh]
            .iter()
            .all(|x| x.as_ref().is_some_and(|x| x.redials.len() >= 5))
    })
    .await;
    let s = ma.status().await;
    let p = s.iter().find(|p| p.peer == bid).expect("tracked");
    for (t, path) in [("libp2p", &p.libp2p), ("iroh", &p.iroh)] {
        let path = path.as_ref().expect("tracked");
        assert!(
            matches!(path.state, PeerState::Disconnected),
            "{t}: {:?}",
            path.state
        );
        let gaps: Vec<Duration> = path.redials.windows(2).map(|w| w[1] - w[0]).collect();
        // Doubling with ±10% jitter: each gap exceeds the one before,
        // until the cap.
        for w in gaps.windows(2).take(3) {
            assert!(w[1] > w[0], "{t}: redials spread out: {gaps:?}");
        }
    }
    // Restart b with the same identity on the same ports.
    let restarted_at = Instant::now();
    let b = restart(Identity::from_secret(b_secret), &b_port).await;
    eventually(Duration::from_secs(10), "reconnected on both", || {
        both_connected(&ma, &bid)
    })
    .await;
    eprintln!("reconnected {:?} after the restart", restarted_at.elapsed());
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_listed_identities_connect_on_either_transport() {
    let (friend_id, stranger_id) = (Identity::generate(), Identity::generate());
    let guarded = start(
        Identity::generate(),
        NodeConfig {
            allowlist: vec![friend_id.peer_id()],
            ..NodeConfig::default()
        },
    )
    .await;
    let friend = start(friend_id, NodeConfig::default()).await;
    let stranger = start(stranger_id, NodeConfig::default()).await;
    let to = guarded.addr();
    for t in [Transport::LibP2p, Transport::Iroh] {
        friend
            .ping(&to, t, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("the listed peer is accepted on {t:?}: {e}"));
        let refused = stranger.ping(&to, t, Duration::from_secs(5)).await;
        assert!(refused.is_err(), "the unlisted peer is refused on {t:?}");
    }
    let text = guarded.metrics().render();
    for t in ["libp2p", "iroh"] {
        let line = text
            .lines()
            .find(|l| {
                l.starts_with("switchyard_node_auth_rejections_total")
                    && l.contains(&format!("transport=\"{t}\""))
            })
            .unwrap_or_else(|| panic!("{text}"));
        let n: f64 = line
            .rsplit(' ')
            .next()
            .expect("value")
            .parse()
            .expect("number");
        assert!(n >= 1.0, "{line}");
    }
    // The guarded node keeps no connection to the stranger.
    let view = guarded.peer(&stranger.addr().peer);
    assert!(
        view.as_ref()
            .is_none_or(|v| !v.libp2p.connected() && !v.iroh.connected()),
        "{view:?}"
    );
    for n in [guarded, friend, stranger] {
        n.stop().await;
    }
}

/// A node config listening on `port` for libp2p (TCP) and iroh (UDP).
/// Nodes that a test restarts take a reserved port from the start, as a
/// pod with fixed ports would: nothing else can take it while they are down.
fn on_port(port: &ports::Port) -> NodeConfig {
    let mut config = NodeConfig::default();
    config.libp2p.listen = format!("/ip4/127.0.0.1/tcp/{}", port.get())
        .parse()
        .expect("a valid multiaddr");
    config.iroh.bind = port.addr();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_node_mesh_under_random_kills_and_restarts_ends_fully_connected() {
    // Twenty stacks restarting under chaos: alone on the machine.
    let _heavy = switchyard_testbed::serial::heavy();
    const N: usize = 10;
    let ids: Vec<Identity> = (0..N).map(|_| Identity::generate()).collect();
    let ports: Vec<ports::Port> = (0..N).map(|_| ports::reserve()).collect();
    let mut nodes = Vec::new();
    for (id, port) in ids.iter().zip(&ports) {
        nodes.push(start(id.clone(), on_port(port)).await);
    }
    let addrs: Vec<_> = nodes.iter().map(|n| n.addr()).collect();
    let entries: Vec<String> = nodes.iter().map(|n| libp2p_entry(n)).collect();
    let config = |me: usize| ManagerConfig {
        bootstrap: entries
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != me)
            .map(|(_, e)| e.clone())
            .collect(),
        // Ten nodes of two stacks each share this process's two runtime
        // workers, on a machine that may be busy with other tests: beats
        // every 500 ms with a 1 s timeout (3 s for a dial) leave room for
        // that, where fast()'s 200/400 ms would starve the mesh into
        // endless timeouts and redials.
        heartbeat_interval: Duration::from_millis(500),
        heartbeat_timeout: Duration::from_secs(1),
        backoff_max: Duration::from_secs(1),
        disconnect_after: Duration::from_secs(3),
        max_retries: 6,
        slow_retry: Duration::from_secs(2),
        ..fast()
    };
    let mut running: Vec<Option<(Arc<Node>, PeerManager)>> = nodes
        .into_iter()
        .enumerate()
        .map(|(i, n)| {
            let (m, bad) = PeerManager::start(n.clone(), config(i));
            assert!(bad.is_empty());
            Some((n, m))
        })
        .collect();
    // Chaos for a bounded time: every 250 ms a pseudo-random node dies or
    // comes back (same identity, same ports).
    let mut seed: u64 = 0x5eed_1234_abcd_0001;
    let chaos_until = Instant::now() + Duration::from_secs(5);
    let mut kills = 0;
    while Instant::now() < chaos_until {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let i = (seed >> 33) as usize % N;
        match running[i].take() {
            Some((node, manager)) => {
                manager.stop();
                node.stop().await;
                kills += 1;
            }
            None => {
                let node = restart(ids[i].clone(), &ports[i]).await;
                let (m, _) = PeerManager::start(node.clone(), config(i));
                running[i] = Some((node, m));
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for i in 0..N {
        if running[i].is_none() {
            let node = restart(ids[i].clone(), &ports[i]).await;
            let (m, _) = PeerManager::start(node.clone(), config(i));
            running[i] = Some((node, m));
        }
    }
    assert!(kills >= 5, "the chaos killed nodes ({kills})");
    let settled_at = Instant::now();
    let deadline = settled_at + Duration::from_secs(60);
    loop {
        // Every (node, peer, transport) not connected, with what the
        // node's manager says of it.
        let mut missing = Vec::new();
        for (i, slot) in running.iter().enumerate() {
            let (_, m) = slot.as_ref().expect("running");
            let status = m.status().await;
            for (j, a) in addrs.iter().enumerate() {
                if i == j {
                    continue;
                }
                for t in [Transport::LibP2p, Transport::Iroh] {
                    let path = status
                        .iter()
                        .find(|p| p.peer == a.peer)
                        .and_then(|p| match t {
                            Transport::LibP2p => p.libp2p.as_ref(),
                            Transport::Iroh => p.iroh.as_ref(),
                        });
                    if path.map(|p| p.state) != Some(PeerState::Connected) {
                        missing.push(format!(
                            "{i}->{j} {t:?}: {:?}",
                            path.map(|p| (p.state, p.attempts, p.reason.clone()))
                        ));
                    }
                }
            }
        }
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every pair connected on both transports within 60 s: {missing:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "{kills} kills; fully connected {:?} after the last restart",
        settled_at.elapsed()
    );
    for (node, manager) in running.into_iter().flatten() {
        manager.stop();
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dials_to_many_silent_peers_never_exceed_the_bound() {
    let a = start(Identity::generate(), NodeConfig::default()).await;
    // Twelve iroh peers at UDP ports nobody answers on: each dial hangs
    // until the heartbeat timeout, so the permits are what limits them.
    let mut bootstrap = Vec::new();
    let mut silent_sockets = Vec::new();
    for _ in 0..12 {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        let port = silent.local_addr().expect("addr").port();
        bootstrap.push(format!(
            "{}@127.0.0.1:{port}",
            Identity::generate().endpoint_id()
        ));
        // Kept bound (and silent) until the test ends.
        silent_sockets.push(silent);
    }
    let (m, bad) = PeerManager::start(
        a.clone(),
        ManagerConfig {
            bootstrap,
            max_concurrent_dials: 3,
            ..fast()
        },
    );
    assert!(bad.is_empty(), "{bad:?}");
    eventually(
        Duration::from_secs(10),
        "every peer dialled and failed",
        || async {
            let s = m.status().await;
            s.len() == 12
                && s.iter().all(|p| {
                    p.iroh.as_ref().is_some_and(|x| {
                        x.state == PeerState::Disconnected && x.reason != "not dialled yet"
                    })
                })
        },
    )
    .await;
    assert_eq!(m.peak_dials(), 3, "the bound was reached and held");
    m.stop();
    a.stop().await;
    drop(silent_sockets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_name_bootstraps_peers_whose_identity_is_learned_on_connect() {
    let b = start(Identity::generate(), NodeConfig::default()).await;
    let a = start(Identity::generate(), NodeConfig::default()).await;
    let b_addr = b.addr();
    let libp2p_port = b_addr.libp2p[0]
        .iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .expect("tcp port");
    let iroh_port = b_addr
        .iroh
        .as_ref()
        .and_then(|i| i.ip_addrs().next())
        .expect("iroh")
        .port();
    // `localhost` stands in for a headless Service: it resolves to the
    // address b listens on, and nothing says who is there.
    let (m, bad) = PeerManager::start(
        a.clone(),
        ManagerConfig {
            bootstrap: vec!["dns:localhost".into()],
            dns_libp2p_port: libp2p_port,
            dns_iroh_port: iroh_port,
            ..fast()
        },
    );
    assert!(bad.is_empty(), "{bad:?}");
    eventually(
        Duration::from_secs(10),
        "b found and connected on both",
        || both_connected(&m, &b_addr.peer),
    )
    .await;
    m.stop();
    a.stop().await;
    b.stop().await;
}

/// Each path keeps its own time: a redial comes after its backoff, not at
/// the next heartbeat round. (The manager looks at every peer only once a
/// heartbeat interval; in between it wakes for the paths that are due.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redials_keep_their_backoff_between_heartbeat_rounds() {
    let a = start(Identity::generate(), NodeConfig::default()).await;
    // Reserved and never bound: every dial is refused at once.
    let dead = ports::reserve();
    let ghost = Identity::generate().peer_id();
    let config = ManagerConfig {
        bootstrap: vec![format!("{ghost}@/ip4/127.0.0.1/tcp/{}", dead.addr().port())],
        heartbeat_interval: Duration::from_secs(60),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        jitter: 0.1,
        max_retries: 100,
        ..fast()
    };
    let (ma, _) = PeerManager::start(a.clone(), config);
    // 50 + 100 + 200 + 400 ms of backoff, and the refusals: well inside
    // 10 s, and nowhere near the 60 s heartbeat round.
    eventually(Duration::from_secs(10), "four redials", || async {
        let s = ma.status().await;
        s.iter()
            .find(|p| p.peer == ghost)
            .and_then(|p| p.libp2p.as_ref())
            .is_some_and(|path| path.redials.len() >= 4)
    })
    .await;
    a.stop().await;
}

/// A node that stops a transport (here, a switch to IrohOnly) tells every
/// peer at once, in a beat on the transport it keeps; the peers do not
/// wait for the next heartbeat round (60 s here) to stop sending on, or
/// hedging onto, the transport that is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_a_transport_tells_its_peers_at_once() {
    let slow = ManagerConfig {
        heartbeat_interval: Duration::from_secs(60),
        ..fast()
    };
    let a = start(Identity::generate(), NodeConfig::default()).await;
    let b = start(Identity::generate(), NodeConfig::default()).await;
    // Each knows the other on both transports from the start: at a 60 s
    // interval, addresses learned from pongs would wait for the next round.
    let knowing = |n: &Node| ManagerConfig {
        bootstrap: vec![libp2p_entry(n), iroh_entry(n)],
        ..slow.clone()
    };
    let (ma, _) = PeerManager::start(a.clone(), knowing(&b));
    let (mb, _) = PeerManager::start(b.clone(), knowing(&a));
    let (aid, bid) = (a.addr().peer, b.addr().peer);
    eventually(Duration::from_secs(10), "connected both ways", || async {
        both_connected(&ma, &bid).await && both_connected(&mb, &aid).await
    })
    .await;
    let mode_of_a = || b.peer_facts(&aid).and_then(|f| f.mode);
    assert_eq!(mode_of_a(), Some(NetworkMode::DualPreferLibP2p));
    a.set_mode(NetworkMode::IrohOnly).await.expect("a switches");
    eventually(Duration::from_secs(5), "b hears a's new mode", || async {
        mode_of_a() == Some(NetworkMode::IrohOnly)
    })
    .await;
    for n in [a, b] {
        n.stop().await;
    }
}
