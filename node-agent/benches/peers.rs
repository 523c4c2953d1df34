//! Peer management with default settings: how fast a paused peer is
//! detected and a restarted one reconnected, and what heartbeats cost.
//!
//! Usage: `cargo bench -p switchyard-node-agent --bench peers [-- --peers N]`
//!
//! Prints a table, then one line of JSON (also written to
//! target/bench/peers.json). Everything runs on 127.0.0.1.
//!
//! - detection: a peer pauses (answers nothing, connections stay open);
//!   time until the manager marks it `Unresponsive`, per transport, and
//!   until it is `Connected` again after it resumes;
//! - reconnection: a peer is killed, stays down 5 s or 30 s, and restarts
//!   with the same identity and ports; time until `Connected` on both;
//! - heartbeat cost: a node in a process of its own heartbeats 50 peers
//!   on both transports for 30 s: its CPU, and the loopback bytes per peer.
//!
//! Targets: detection ≤ 5 s (seed: 30 s), reconnection ≤ 10 s (seed:
//! 60 s), heartbeat CPU < 1% of a core with 50 peers, traffic per peer
//! < 1 KB/s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use libp2p::PeerId;
use serde_json::{Value, json};
use switchyard_node_agent::NetworkMode;
use switchyard_node_agent::bridge::{Node, NodeConfig, PeerAddr};
use switchyard_node_agent::identity::Identity;
use switchyard_node_agent::manager::{ManagerConfig, PeerManager, PeerState};
use switchyard_node_agent::stack::{Handler, Transport};
use switchyard_node_agent::wire::Envelope;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const CHILD_ENV: &str = "SWITCHYARD_PEERS_BENCH_CHILD";
const ONLY_COST_ENV: &str = "SWITCHYARD_PEERS_BENCH_ONLY_COST";

/// The manager's defaults, except `bootstrap`.
fn defaults(bootstrap: Vec<String>) -> ManagerConfig {
    ManagerConfig {
        bootstrap,
        ..ManagerConfig::default()
    }
}

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

fn entries(a: &PeerAddr) -> Vec<String> {
    let libp2p: libp2p::Multiaddr = a.libp2p[0]
        .iter()
        .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
        .collect();
    let iroh = a.iroh.as_ref().expect("iroh");
    let sock = iroh.ip_addrs().next().expect("socket");
    vec![
        format!("{}@{libp2p}", a.peer),
        format!("{}@{sock}", iroh.id),
    ]
}

fn same_ports(a: &PeerAddr) -> NodeConfig {
    let mut c = NodeConfig::default();
    c.libp2p.listen = a.libp2p[0]
        .iter()
        .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
        .collect();
    c.iroh.bind = *a
        .iroh
        .as_ref()
        .and_then(|i| i.ip_addrs().next())
        .expect("socket");
    c
}

async fn state(m: &PeerManager, peer: &PeerId, t: Transport) -> Option<PeerState> {
    m.status()
        .await
        .into_iter()
        .find(|p| p.peer == *peer)
        .and_then(|p| p.state(t))
}

/// Poll every 10 ms until `t` reaches `want` for `peer`; the time taken.
async fn until(m: &PeerManager, peer: &PeerId, t: Transport, want: PeerState) -> Duration {
    let started = Instant::now();
    let give_up = started + Duration::from_secs(120);
    while state(m, peer, t).await != Some(want) {
        assert!(Instant::now() < give_up, "{t:?} never reached {want:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

async fn detection(out: &mut serde_json::Map<String, Value>) {
    let (a, b) = (
        start(Identity::generate(), NodeConfig::default()).await,
        start(Identity::generate(), NodeConfig::default()).await,
    );
    let config = defaults(entries(&b.addr()));
    let (m, _) = PeerManager::start(a.clone(), config);
    let peer = b.addr().peer;
    for t in [Transport::LibP2p, Transport::Iroh] {
        until(&m, &peer, t, PeerState::Connected).await;
    }
    println!(
        "\nDetection of a paused peer, default settings (interval 2 s, timeout 1 s, 2 misses)\n"
    );
    println!("| run | libp2p detected s | iroh detected s | recovered after resume s |");
    println!("|---|---:|---:|---:|");
    let mut runs = Vec::new();
    for run in 1..=3 {
        // Let a heartbeat or two pass so each run starts at a random phase.
        tokio::time::sleep(Duration::from_millis(1300 * run)).await;
        b.pause(true);
        let (l, i) = tokio::join!(
            until(&m, &peer, Transport::LibP2p, PeerState::Unresponsive),
            until(&m, &peer, Transport::Iroh, PeerState::Unresponsive)
        );
        b.pause(false);
        let (rl, ri) = tokio::join!(
            until(&m, &peer, Transport::LibP2p, PeerState::Connected),
            until(&m, &peer, Transport::Iroh, PeerState::Connected)
        );
        let recovered = rl.max(ri);
        println!(
            "| {run} | {:.2} | {:.2} | {:.2} |",
            l.as_secs_f64(),
            i.as_secs_f64(),
            recovered.as_secs_f64()
        );
        runs.push(json!({"libp2p_s": l.as_secs_f64(), "iroh_s": i.as_secs_f64(), "recovered_s": recovered.as_secs_f64()}));
    }
    out.insert("detection".into(), Value::Array(runs));
    m.stop();
    a.stop().await;
    b.stop().await;
}

async fn reconnection(out: &mut serde_json::Map<String, Value>) {
    let a = start(Identity::generate(), NodeConfig::default()).await;
    let b_id = Identity::generate();
    let secret = b_id.secret_bytes();
    let mut b = start(b_id, NodeConfig::default()).await;
    let b_addr = b.addr();
    let config = defaults(entries(&b_addr));
    let (m, _) = PeerManager::start(a.clone(), config);
    let peer = b_addr.peer;
    for t in [Transport::LibP2p, Transport::Iroh] {
        until(&m, &peer, t, PeerState::Connected).await;
    }
    println!(
        "\nReconnection after a restart (same identity and ports), default settings (backoff 0.25 s doubling to 8 s, ±20%)\n"
    );
    println!("| down for | reconnected after restart s | redials while down (libp2p / iroh) |");
    println!("|---|---:|---:|");
    let mut runs = Vec::new();
    for down in [Duration::from_secs(5), Duration::from_secs(30)] {
        b.stop().await;
        tokio::time::sleep(down).await;
        let status = m.status().await;
        let redials = status
            .iter()
            .find(|p| p.peer == peer)
            .map(|p| {
                (
                    p.libp2p.as_ref().map_or(0, |x| x.redials.len()),
                    p.iroh.as_ref().map_or(0, |x| x.redials.len()),
                )
            })
            .unwrap_or_default();
        let restarted = Instant::now();
        b = start(Identity::from_secret(secret), same_ports(&b_addr)).await;
        tokio::join!(
            until(&m, &peer, Transport::LibP2p, PeerState::Connected),
            until(&m, &peer, Transport::Iroh, PeerState::Connected)
        );
        let took = restarted.elapsed();
        println!(
            "| {} s | {:.2} | {} / {} |",
            down.as_secs(),
            took.as_secs_f64(),
            redials.0,
            redials.1
        );
        runs.push(json!({"down_s": down.as_secs(), "reconnected_s": took.as_secs_f64()}));
    }
    out.insert("reconnection".into(), Value::Array(runs));
    m.stop();
    a.stop().await;
    b.stop().await;
}

fn cpu_ticks(pid: u32) -> u64 {
    // Fields 14 and 15 of /proc/<pid>/stat: user and system time in ticks.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1;
            let f: Vec<&str> = after.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

fn loopback_bytes() -> u64 {
    std::fs::read_to_string("/proc/net/dev")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.trim_start().starts_with("lo:"))?;
            line.split_once(':')?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// The child: one node and its manager, bootstrapped from the first stdin
/// line (a JSON array); answers `status` with how many peers are connected
/// on both transports.
async fn child() {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let first = lines.next_line().await.ok().flatten().unwrap_or_default();
    let bootstrap: Vec<String> = serde_json::from_str(&first).unwrap_or_default();
    let node = start(Identity::generate(), NodeConfig::default()).await;
    let (m, _) = PeerManager::start(node.clone(), defaults(bootstrap));
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim() != "status" {
            break;
        }
        let both = m
            .status()
            .await
            .iter()
            .filter(|p| {
                p.state(Transport::LibP2p) == Some(PeerState::Connected)
                    && p.state(Transport::Iroh) == Some(PeerState::Connected)
            })
            .count();
        println!("{both}");
    }
    m.stop();
    node.stop().await;
}

async fn cost(peers: usize, out: &mut serde_json::Map<String, Value>) {
    let mut nodes = Vec::new();
    let mut bootstrap = Vec::new();
    for _ in 0..peers {
        let n = start(Identity::generate(), NodeConfig::default()).await;
        bootstrap.extend(entries(&n.addr()));
        nodes.push(n);
    }
    let mut child = tokio::process::Command::new(std::env::current_exe().expect("exe"))
        .env(CHILD_ENV, "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("child starts");
    let pid = child.id().expect("pid");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = serde_json::to_string(&bootstrap).expect("json") + "\n";
    stdin.write_all(line.as_bytes()).await.expect("send");
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        stdin.write_all(b"status\n").await.expect("ask");
        let n: usize = lines
            .next_line()
            .await
            .expect("read")
            .expect("answer")
            .parse()
            .expect("count");
        if n == peers {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "only {n} of {peers} peers connected"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Steady state: measure 10 s of heartbeats.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let window = Duration::from_secs(30);
    let (cpu0, lo0, t0) = (cpu_ticks(pid), loopback_bytes(), Instant::now());
    tokio::time::sleep(window).await;
    let (cpu1, lo1, elapsed) = (cpu_ticks(pid), loopback_bytes(), t0.elapsed());
    drop(stdin);
    let _ = child.wait().await;
    for n in nodes {
        n.stop().await;
    }
    // Linux reports CPU time in 100 Hz ticks.
    let cpu_s = (cpu1 - cpu0) as f64 / 100.0;
    let cpu_pct = cpu_s / elapsed.as_secs_f64() * 100.0;
    let per_peer = (lo1 - lo0) as f64 / peers as f64 / elapsed.as_secs_f64();
    println!(
        "\nHeartbeat cost: one node (its own process) beating {peers} peers on both transports, {:.0} s (CPU in 10 ms ticks)\n",
        elapsed.as_secs_f64()
    );
    println!("| measure | value | target |");
    println!("|---|---:|---:|");
    println!("| CPU of the heartbeating node | {cpu_pct:.2}% of a core | < 1% |");
    println!(
        "| loopback bytes per peer (both ways, both transports, with headers) | {per_peer:.0} B/s | < 1000 B/s |"
    );
    out.insert(
        "cost".into(),
        json!({"peers": peers, "cpu_percent_of_core": cpu_pct, "bytes_per_peer_per_s": per_peer}),
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if std::env::var_os(CHILD_ENV).is_some() {
        rt.block_on(child());
        return Ok(());
    }
    let args: Vec<String> = std::env::args().collect();
    let peers = args
        .iter()
        .position(|a| a == "--peers")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(50);
    let mut out = serde_json::Map::new();
    rt.block_on(async {
        if std::env::var_os(ONLY_COST_ENV).is_none() {
            detection(&mut out).await;
            reconnection(&mut out).await;
        }
        cost(peers, &mut out).await;
    });
    let json = Value::Object(out);
    println!("\n{json}");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench");
    std::fs::create_dir_all(dir)?;
    std::fs::write(format!("{dir}/peers.json"), json.to_string())?;
    Ok(())
}
