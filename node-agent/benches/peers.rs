//! Peer management with default settings: how fast a paused peer is
//! detected and a restarted one reconnected, and what heartbeats cost.
//!
//! Usage: `cargo bench -p switchyard-node-agent --bench peers [-- --peers N --mesh-mode MODE]`
//! (`SWITCHYARD_PEERS_BENCH_ONLY_COST=1` runs only the mesh; `--mesh-mode
//! LibP2pOnly` or `IrohOnly` splits its cost by transport)
//!
//! Prints a table, then one line of JSON (also written to
//! target/bench/peers.json). Everything runs on 127.0.0.1.
//!
//! - detection: a peer pauses (answers nothing, connections stay open);
//!   time until the manager marks it `Unresponsive`, per transport, and
//!   until it is `Connected` again after it resumes;
//! - reconnection: a peer is killed, stays down 5 s or 30 s, and restarts
//!   with the same identity and ports; time until `Connected` on both;
//! - heartbeat cost: a real mesh of 51 nodes, each in a process of its own
//!   with a PeerManager at the defaults, every node heartbeating the other
//!   50 on both transports and answering theirs, for 30 s: each node's
//!   CPU, and the loopback bytes per node and per peer.
//!
//! Targets: detection ≤ 5 s (seed: 30 s), reconnection ≤ 10 s (seed:
//! 60 s), heartbeat CPU < 1% of a core per node with 50 peers (the worst
//! node), traffic per peer < 1 KB/s.

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
/// The mesh members' mode (`--mesh-mode`): both transports by default; one
/// of the single-transport modes splits the heartbeat cost by transport.
const MESH_MODE_ENV: &str = "SWITCHYARD_PEERS_BENCH_MESH_MODE";

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
    start_in(NetworkMode::DualPreferLibP2p, identity, config).await
}

async fn start_in(mode: NetworkMode, identity: Identity, config: NodeConfig) -> Arc<Node> {
    Node::start(identity, config, mode, Arc::new(Echo))
        .await
        .expect("node starts")
}

/// Bootstrap entries for every transport `a` runs.
fn entries(a: &PeerAddr) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(first) = a.libp2p.first() {
        let libp2p: libp2p::Multiaddr = first
            .iter()
            .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
            .collect();
        out.push(format!("{}@{libp2p}", a.peer));
    }
    if let Some(iroh) = &a.iroh {
        let sock = iroh.ip_addrs().next().expect("socket");
        out.push(format!("{}@{sock}", iroh.id));
    }
    out
}

/// The transports `mode` runs.
fn transports(mode: NetworkMode) -> Vec<Transport> {
    let mut v = Vec::new();
    if mode.has_libp2p() {
        v.push(Transport::LibP2p);
    }
    if mode.has_iroh() {
        v.push(Transport::Iroh);
    }
    v
}

/// A node config on a reserved port (TCP for libp2p, UDP for iroh): the
/// restarted node comes back on it, and nothing else can take it meanwhile.
fn on_port(port: &switchyard_testbed::ports::Port) -> NodeConfig {
    let mut c = NodeConfig::default();
    c.libp2p.listen = format!("/ip4/127.0.0.1/tcp/{}", port.get())
        .parse()
        .expect("a valid multiaddr");
    c.iroh.bind = port.addr();
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

/// Poll every 10 ms until `node` has answered a heartbeat over `t`.
async fn answered(node: &Node, t: Transport) {
    let give_up = Instant::now() + Duration::from_secs(120);
    while node
        .stats(t)
        .heartbeats_answered
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        assert!(Instant::now() < give_up, "{t:?}: no heartbeat answered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
    let d = ManagerConfig::default();
    println!(
        "\nDetection of a paused peer, default settings (interval {:?}, timeout {:?}, {} misses)\n",
        d.heartbeat_interval, d.heartbeat_timeout, d.unresponsive_after
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
    let b_port = switchyard_testbed::ports::reserve();
    let mut b = start(b_id, on_port(&b_port)).await;
    let b_addr = b.addr();
    let config = defaults(entries(&b_addr));
    let (m, _) = PeerManager::start(a.clone(), config);
    let peer = b_addr.peer;
    for t in [Transport::LibP2p, Transport::Iroh] {
        until(&m, &peer, t, PeerState::Connected).await;
    }
    let d = ManagerConfig::default();
    println!(
        "\nReconnection after a restart (same identity and ports), default settings (backoff {:?} doubling to {:?}, ±{:.0}%)\n",
        d.backoff_initial,
        d.backoff_max,
        d.jitter * 100.0
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
        b = start(Identity::from_secret(secret), on_port(&b_port)).await;
        // Reconnected: the restarted node answered a heartbeat on each
        // transport and the manager has the peer `Connected`. (The state
        // alone is not enough: a peer down for less than an interval may
        // never have left `Connected`.)
        tokio::join!(
            answered(&b, Transport::LibP2p),
            answered(&b, Transport::Iroh)
        );
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

/// A mesh member (its own process): starts a node, prints its bootstrap
/// entries as a JSON line, reads the others' entries (a JSON array) from
/// stdin, starts its manager with the defaults, then answers `status` with
/// how many peers are connected on every transport it runs, until anything
/// else.
async fn child() {
    let mode = std::env::var(MESH_MODE_ENV)
        .ok()
        .and_then(|m| serde_json::from_value(Value::String(m)).ok())
        .unwrap_or(NetworkMode::DualPreferLibP2p);
    let node = start_in(mode, Identity::generate(), NodeConfig::default()).await;
    println!(
        "{}",
        serde_json::to_string(&entries(&node.addr())).expect("json")
    );
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let first = lines.next_line().await.ok().flatten().unwrap_or_default();
    let bootstrap: Vec<String> = serde_json::from_str(&first).unwrap_or_default();
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
                transports(mode)
                    .into_iter()
                    .all(|t| p.state(t) == Some(PeerState::Connected))
            })
            .count();
        println!("{both}");
    }
    m.stop();
    node.stop().await;
}

/// One mesh member seen from the parent.
struct Member {
    child: tokio::process::Child,
    pid: u32,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Member {
    async fn spawn(mode: &str) -> Member {
        let mut child = tokio::process::Command::new(std::env::current_exe().expect("exe"))
            .env(CHILD_ENV, "1")
            .env(MESH_MODE_ENV, mode)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("child starts");
        let pid = child.id().expect("pid");
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Member {
            child,
            pid,
            stdin,
            lines,
        }
    }

    async fn send(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("child's stdin");
    }

    async fn read(&mut self) -> String {
        self.lines
            .next_line()
            .await
            .expect("child's stdout")
            .expect("an answer")
    }
}

/// The real mesh: `peers + 1` nodes, each in its own process with its own
/// PeerManager at the defaults, every node heartbeating every other on
/// both transports and answering theirs. Once all are connected, each
/// process's CPU time and the loopback traffic are read over 30 s.
async fn cost(peers: usize, mode: &str, out: &mut serde_json::Map<String, Value>) {
    let n = peers + 1;
    let mut members = Vec::with_capacity(n);
    let mut all = Vec::with_capacity(n);
    for _ in 0..n {
        let mut m = Member::spawn(mode).await;
        let entries: Vec<String> = serde_json::from_str(&m.read().await).expect("entries");
        all.push(entries);
        members.push(m);
    }
    for (i, m) in members.iter_mut().enumerate() {
        let others: Vec<&String> = all
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .flat_map(|(_, e)| e)
            .collect();
        m.send(&serde_json::to_string(&others).expect("json")).await;
    }
    let give_up = Instant::now() + Duration::from_secs(180);
    for (i, m) in members.iter_mut().enumerate() {
        loop {
            m.send("status").await;
            let connected: usize = m.read().await.parse().expect("count");
            if connected == peers {
                break;
            }
            assert!(
                Instant::now() < give_up,
                "node {i} has only {connected} of {peers} peers connected on both transports"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Steady state: a few heartbeat rounds, then the window.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let window = Duration::from_secs(30);
    let cpu0: Vec<u64> = members.iter().map(|m| cpu_ticks(m.pid)).collect();
    let (lo0, t0) = (loopback_bytes(), Instant::now());
    tokio::time::sleep(window).await;
    let cpu1: Vec<u64> = members.iter().map(|m| cpu_ticks(m.pid)).collect();
    let (lo1, elapsed) = (loopback_bytes(), t0.elapsed());
    // Still a full mesh at the end of the window.
    for (i, m) in members.iter_mut().enumerate() {
        m.send("status").await;
        let connected: usize = m.read().await.parse().expect("count");
        assert_eq!(connected, peers, "node {i} lost peers during the window");
    }
    for mut m in members {
        m.send("quit").await;
        let _ = tokio::time::timeout(Duration::from_secs(10), m.child.wait()).await;
    }
    // Linux reports CPU time in 100 Hz ticks.
    let secs = elapsed.as_secs_f64();
    let mut per_node: Vec<f64> = cpu0
        .iter()
        .zip(&cpu1)
        .map(|(a, b)| (b - a) as f64 / 100.0 / secs * 100.0)
        .collect();
    per_node.sort_by(f64::total_cmp);
    let mean = per_node.iter().sum::<f64>() / n as f64;
    let median = per_node[n / 2];
    let max = per_node[n - 1];
    // Every byte on loopback was sent by one of the nodes.
    let bytes_per_node = (lo1 - lo0) as f64 / n as f64 / secs;
    let bytes_per_peer = bytes_per_node / peers as f64;
    println!(
        "\nHeartbeat cost: a mesh of {n} {mode} nodes, each its own process with a PeerManager at the defaults, every node beating {peers} peers on each transport it runs and answering theirs, {secs:.0} s (CPU in 10 ms ticks)\n"
    );
    println!("| measure | value | target |");
    println!("|---|---:|---:|");
    println!(
        "| CPU per node, mean / median / max of {n} | {mean:.2} / {median:.2} / {max:.2}% of a core | < 1% |"
    );
    println!(
        "| CPU per node per peer (mean) | {:.4}% of a core | – |",
        mean / peers as f64
    );
    println!(
        "| bytes each node sends (loopback, both transports, with headers) | {bytes_per_node:.0} B/s | – |"
    );
    println!("| of which to each peer | {bytes_per_peer:.0} B/s | < 1000 B/s |");
    out.insert(
        "cost".into(),
        json!({
            "nodes": n,
            "mode": mode,
            "peers_per_node": peers,
            "window_s": secs,
            "cpu_percent_of_core_per_node": {"mean": mean, "median": median, "max": max},
            "cpu_percent_of_core_per_peer": mean / peers as f64,
            "bytes_per_node_per_s": bytes_per_node,
            "bytes_per_peer_per_s": bytes_per_peer,
            "meets_target": max < 1.0 && bytes_per_peer < 1000.0,
        }),
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
    let mesh_mode = args
        .iter()
        .position(|a| a == "--mesh-mode")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| "DualPreferLibP2p".into());
    let mut out = serde_json::Map::new();
    rt.block_on(async {
        if std::env::var_os(ONLY_COST_ENV).is_none() {
            detection(&mut out).await;
            reconnection(&mut out).await;
        }
        cost(peers, &mesh_mode, &mut out).await;
    });
    let json = Value::Object(out);
    println!("\n{json}");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench");
    std::fs::create_dir_all(dir)?;
    std::fs::write(format!("{dir}/peers.json"), json.to_string())?;
    Ok(())
}
