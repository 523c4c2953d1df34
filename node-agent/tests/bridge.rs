//! Dual-stack nodes on 127.0.0.1: every pair of modes, failover when one
//! transport dies, and live mode cycling under load with no failed request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use libp2p::PeerId;
use switchyard_node_agent::NetworkMode;
use switchyard_node_agent::bridge::{BridgeError, Node, NodeConfig};
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
        request_timeout: Some(Duration::from_secs(5)),
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

// Ignored until fixed (issue 3 is open): on a loaded machine (CI), about
// one request in a few thousand fails during a switch, on both transports
// ("Failed to dial" after the iroh attempt), and locally about one run in
// three stalls ~5 s on an iroh attempt to a just-restarted stack. Run it
// with `cargo nextest run -p switchyard-node-agent --run-ignored all`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a request can fail while a stack restarts under load; see the comment"]
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
