//! The dual-stack transport's speed, memory and switch safety, with the
//! raw stacks measured in the same run as baselines.
//!
//! Usage: `cargo bench -p switchyard-node-agent --bench transport
//! [-- --requests N --cycle-requests M --only latency|throughput|memory|cycling]`
//!
//! Prints a table, then one line of JSON (also written to
//! target/bench/transport.json). Everything runs on 127.0.0.1.
//!
//! - round trip of 100-byte requests: raw libp2p, raw iroh, the bridge over
//!   each, hedged (LowestLatency with the default hedge) and raced;
//! - throughput of 1 MiB requests with 1 and 8 in flight, per transport;
//! - RSS of a node with both stacks in a process of its own, idle and with
//!   50 peers connected on both transports;
//! - requests from 8 concurrent senders while the server cycles through
//!   every mode: requests lost and time per switch.
//!
//! Targets: 0 lost; bridge p50 ≤ 1.10 × the raw stack; hedged p50 ≤ 1.10 ×
//! the better single transport; idle RSS ≤ 25 MiB; ≤ 200 KiB per peer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use libp2p::{Multiaddr, PeerId};
use serde_json::{Value, json};
use switchyard_node_agent::bridge::{Hedge, Node, NodeConfig, PeerAddr};
use switchyard_node_agent::identity::Identity;
use switchyard_node_agent::peers::PeerSynchronizer;
use switchyard_node_agent::stack::iroh_stack::{IrohConfig, IrohStack};
use switchyard_node_agent::stack::libp2p_stack::{Libp2pConfig, Libp2pStack};
use switchyard_node_agent::stack::{StackStats, Transport};
use switchyard_node_agent::wire::Envelope;
use switchyard_node_agent::{NetworkMode, RoutingStrategy};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[path = "support/mod.rs"]
mod support;

use support::BenchEcho;

const T: Duration = Duration::from_secs(30);
const CHILD_ENV: &str = "SWITCHYARD_TRANSPORT_BENCH_CHILD";

/// The sum of every sample of `metric` whose line contains `filter`.
fn metric_sum(text: &str, metric: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(metric) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy)]
struct Summary {
    p50_us: f64,
    /// The p99, or the maximum with fewer than 1,000 samples.
    p99_us: f64,
    mean_us: f64,
}

fn summarize(v: Vec<Duration>) -> Summary {
    let us: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    let s = switchyard_testbed::stats::Summary::of(&us).expect("samples");
    assert!(
        s.p99.is_some(),
        "{} samples are too few for the p99 this table shows; use --requests 1000 or more",
        s.n
    );
    Summary {
        p50_us: s.median,
        p99_us: s.tail(),
        mean_us: us.iter().sum::<f64>() / us.len() as f64,
    }
}

async fn node(mode: NetworkMode, config: NodeConfig) -> Arc<Node> {
    Node::start(Identity::generate(), config, mode, Arc::new(BenchEcho))
        .await
        .expect("node starts")
}

fn client_config(strategy: Option<RoutingStrategy>, hedge: Hedge) -> NodeConfig {
    NodeConfig {
        strategy,
        hedge,
        request_timeout: T,
        ..NodeConfig::default()
    }
}

struct Raw {
    id: Identity,
    libp2p: Libp2pStack,
    iroh: IrohStack,
}

async fn raw() -> Raw {
    let id = Identity::generate();
    let peers = Arc::new(PeerSynchronizer::new());
    let libp2p = Libp2pStack::start(
        &id,
        Libp2pConfig::default(),
        Arc::new(BenchEcho),
        Arc::new(StackStats::default()),
        peers.clone(),
    )
    .await
    .expect("libp2p");
    let iroh = IrohStack::start(
        &id,
        IrohConfig::default(),
        Arc::new(BenchEcho),
        Arc::new(StackStats::default()),
        peers,
    )
    .await
    .expect("iroh");
    Raw { id, libp2p, iroh }
}

fn row(table: &mut Vec<(String, String, String, String)>, name: &str, s: Summary) {
    table.push((
        name.into(),
        format!("{:.0}", s.p50_us),
        format!("{:.0}", s.p99_us),
        format!("{:.0}", s.mean_us),
    ));
}

type Send1<'a> = Box<dyn Fn() -> BoxFuture<'a, ()> + 'a>;

async fn latencies(n: usize, out: &mut serde_json::Map<String, Value>) {
    let payload = Bytes::from(vec![7u8; 100]);

    // Raw stacks, no bridge.
    let (a, b) = (raw().await, raw().await);
    let (peer, addrs, iroh_addr) = (b.id.peer_id(), b.libp2p.addrs(), b.iroh.addr());
    // Through the bridge, against one dual-stack server.
    let server = node(NetworkMode::DualPreferLibP2p, NodeConfig::default()).await;
    let addr = server.addr();
    let lowest = Some(RoutingStrategy::LowestLatency);
    let bridge_libp2p = node(NetworkMode::LibP2pOnly, client_config(None, Hedge::Off)).await;
    let bridge_iroh = node(NetworkMode::IrohOnly, client_config(None, Hedge::Off)).await;
    let hedged = node(
        NetworkMode::DualLoadBalance,
        client_config(lowest, Hedge::default()),
    )
    .await;
    let raced = node(
        NetworkMode::DualLoadBalance,
        client_config(lowest, Hedge::Race),
    )
    .await;
    // In an agent the PeerManager heartbeats every peer on both transports
    // every 2 s, and those round trips keep LowestLatency's estimates
    // fresh. These nodes have no manager, so give them the same: without
    // it the first sample of each transport (which pays the connection's
    // handshake) is all LowestLatency knows, and which one it picks is
    // chance.
    for client in [&hedged, &raced] {
        for t in [Transport::LibP2p, Transport::Iroh] {
            for _ in 0..20 {
                client.ping(&addr, t, T).await.expect("warm-up ping");
            }
        }
    }

    let via = |client: &Arc<Node>| -> Send1<'_> {
        let (client, addr, payload) = (client.clone(), addr.clone(), payload.clone());
        Box::new(move || {
            let (client, addr, payload) = (client.clone(), addr.clone(), payload.clone());
            Box::pin(async move {
                client
                    .request(&addr, payload)
                    .await
                    .expect("bridge request");
            })
        })
    };
    let paths: Vec<(&str, Send1<'_>)> = vec![
        (
            "raw_libp2p",
            Box::new(|| {
                let req = Envelope::request(NetworkMode::LibP2pOnly, 1, payload.clone());
                let (stack, addrs) = (&a.libp2p, addrs.clone());
                Box::pin(async move {
                    stack
                        .request(peer, addrs, req, T)
                        .await
                        .expect("raw libp2p");
                })
            }),
        ),
        ("bridge_libp2p", via(&bridge_libp2p)),
        (
            "raw_iroh",
            Box::new(|| {
                let req = Envelope::request(NetworkMode::IrohOnly, 1, payload.clone());
                let (stack, addr) = (&a.iroh, &iroh_addr);
                Box::pin(async move {
                    stack.request(addr, &req, T).await.expect("raw iroh");
                })
            }),
        ),
        ("bridge_iroh", via(&bridge_iroh)),
        ("hedged", via(&hedged)),
        ("raced", via(&raced)),
    ];
    // Warm up, then take the samples in interleaved rounds so drift on a
    // shared machine lands on every path alike.
    for (_, f) in &paths {
        for _ in 0..n / 10 {
            f().await;
        }
    }
    let rounds = 50;
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(n); paths.len()];
    for _ in 0..rounds {
        for (i, (_, f)) in paths.iter().enumerate() {
            for _ in 0..n / rounds {
                let t = Instant::now();
                f().await;
                samples[i].push(t.elapsed());
            }
        }
    }
    let mut sums = std::collections::BTreeMap::new();
    let mut table = Vec::new();
    for ((name, _), v) in paths.iter().zip(samples) {
        let s = summarize(v);
        row(&mut table, name, s);
        out.insert(
            format!("rtt_{name}"),
            json!({"p50_us": s.p50_us, "p99_us": s.p99_us, "mean_us": s.mean_us}),
        );
        sums.insert(*name, s);
    }
    drop(paths);
    println!("\n100-byte request round trip ({n} sequential requests each, interleaved)\n");
    println!("| path | p50 µs | p99 µs | mean µs |");
    println!("|---|---:|---:|---:|");
    for (a, b, c, d) in table {
        println!("| {a} | {b} | {c} | {d} |");
    }
    let total = (n + n / 10) as f64;
    for (name, client) in [("hedged", &hedged), ("raced", &raced)] {
        // Sends per request: what the second transport costs.
        let text = client.metrics().render();
        let per = 1.0 + metric_sum(&text, "switchyard_node_hedged_requests_total", "") / total;
        println!("{name}: {per:.3} sends per request");
        out.insert(format!("{name}_sends_per_request"), json!(per));
    }
    for c in [bridge_libp2p, bridge_iroh, hedged, raced, server] {
        c.stop().await;
    }
    a.iroh.stop().await;
    b.iroh.stop().await;
    a.libp2p.stop().await;
    b.libp2p.stop().await;

    let r = |k: &str| sums[k].p50_us;
    let overhead_libp2p = r("bridge_libp2p") / r("raw_libp2p");
    let overhead_iroh = r("bridge_iroh") / r("raw_iroh");
    let best = r("bridge_libp2p").min(r("bridge_iroh"));
    let hedged_ratio = r("hedged") / best;
    let raced_ratio = r("raced") / best;
    println!(
        "\nbridge/raw p50: libp2p {overhead_libp2p:.3}, iroh {overhead_iroh:.3} (target ≤ 1.10)"
    );
    println!(
        "hedged/best single p50: {hedged_ratio:.3} (target ≤ 1.10); raced/best single: {raced_ratio:.3}"
    );
    out.insert(
        "ratios".into(),
        json!({
            "bridge_over_raw_libp2p": overhead_libp2p,
            "bridge_over_raw_iroh": overhead_iroh,
            "hedged_over_best_single": hedged_ratio,
            "raced_over_best_single": raced_ratio,
        }),
    );
}

/// Rounds of each in-flight count, alternating (1, 8, 1, 8, ...): the
/// machine's drift over the run falls on both alike.
const THROUGHPUT_ROUNDS: usize = 3;

/// Send `total` 1 MiB requests from `client` to `addr`, `in_flight` at
/// once; MiB/s.
async fn pump(client: &Arc<Node>, addr: &PeerAddr, payload: &Bytes, in_flight: usize) -> f64 {
    // 512 MiB each way: long enough (half a second or more) that the
    // start and the end do not decide the rate.
    let total = 512;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..in_flight {
        let (client, addr, payload) = (client.clone(), addr.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..total / in_flight {
                client
                    .request(&addr, payload.clone())
                    .await
                    .expect("1 MiB request");
            }
        }));
    }
    for task in tasks {
        task.await.expect("sender");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

async fn throughput(out: &mut serde_json::Map<String, Value>) {
    let payload = Bytes::from(vec![1u8; 1024 * 1024]);
    let server = node(NetworkMode::DualPreferLibP2p, NodeConfig::default()).await;
    let addr = server.addr();
    println!(
        "\n1 MiB requests (answers are 8 bytes), 512 per round, {THROUGHPUT_ROUNDS} rounds of each in-flight count alternating\n"
    );
    println!(
        "| transport | in flight | MiB/s, median | MiB/s, each round | UDP datagrams dropped (receive buffer full) |"
    );
    println!("|---|---:|---:|---|---:|");
    for (t, mode) in [
        (Transport::LibP2p, NetworkMode::LibP2pOnly),
        (Transport::Iroh, NetworkMode::IrohOnly),
    ] {
        let client = node(mode, client_config(None, Hedge::Off)).await;
        client
            .request(&addr, payload.clone())
            .await
            .expect("warm-up");
        let drops = udp_receive_buffer_errors();
        let mut rounds: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for _ in 0..THROUGHPUT_ROUNDS {
            for (i, in_flight) in [1usize, 8].into_iter().enumerate() {
                rounds[i].push(pump(&client, &addr, &payload, in_flight).await);
            }
        }
        let dropped = udp_receive_buffer_errors() - drops;
        for (i, in_flight) in [1usize, 8].into_iter().enumerate() {
            let each: Vec<String> = rounds[i].iter().map(|r| format!("{r:.0}")).collect();
            let mut sorted = rounds[i].clone();
            sorted.sort_by(f64::total_cmp);
            let median = sorted[sorted.len() / 2];
            println!(
                "| {} | {in_flight} | {median:.0} | {} | {dropped} |",
                t.as_str(),
                each.join(", ")
            );
            out.insert(
                format!("throughput_{}_{in_flight}_mib_s", t.as_str()),
                json!(median),
            );
            out.insert(
                format!("throughput_{}_{in_flight}_rounds_mib_s", t.as_str()),
                json!(rounds[i]),
            );
        }
        client.stop().await;
    }
    server.stop().await;
}

/// The kernel's count of UDP datagrams dropped because a socket's receive
/// buffer was full (`RcvbufErrors` in /proc/net/snmp), machine-wide.
fn udp_receive_buffer_errors() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// The RSS child: one node with both stacks; prints its addresses, then
/// answers `rss` with its resident set in KiB until `quit`.
async fn child() {
    let node = node(NetworkMode::DualLoadBalance, NodeConfig::default()).await;
    let a = node.addr();
    let iroh: Vec<String> = a
        .iroh
        .as_ref()
        .map(|i| i.ip_addrs().map(ToString::to_string).collect())
        .unwrap_or_default();
    let libp2p: Vec<String> = a.libp2p.iter().map(ToString::to_string).collect();
    println!(
        "{}",
        json!({"peer": a.peer.to_string(), "libp2p": libp2p, "iroh": iroh})
    );
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match line.trim() {
            "rss" => println!("{}", rss_kib(std::process::id())),
            // Peers connected on both transports, as the node sees them.
            "dual" => println!(
                "{}",
                node.peers()
                    .iter()
                    .filter(|p| p.libp2p.connected() && p.iroh.connected())
                    .count()
            ),
            _ => break,
        }
    }
    node.stop().await;
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn memory(out: &mut serde_json::Map<String, Value>) {
    let mut child = tokio::process::Command::new(std::env::current_exe().expect("exe"))
        .env(CHILD_ENV, "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("child starts");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines.next_line().await.expect("read").expect("addresses");
    let v: Value = serde_json::from_str(&first).expect("json");
    let peer: PeerId = v["peer"].as_str().expect("peer").parse().expect("peer id");
    let libp2p: Vec<Multiaddr> = v["libp2p"]
        .as_array()
        .expect("libp2p")
        .iter()
        .filter_map(|a| a.as_str()?.parse().ok())
        .collect();
    let iroh: Vec<SocketAddr> = v["iroh"]
        .as_array()
        .expect("iroh")
        .iter()
        .filter_map(|a| a.as_str()?.parse().ok())
        .collect();
    let target = PeerAddr::new(peer, libp2p, iroh).expect("address");
    let mut ask = async |what: &str| {
        stdin
            .write_all(format!("{what}\n").as_bytes())
            .await
            .expect("ask");
        lines
            .next_line()
            .await
            .expect("read")
            .expect("an answer")
            .parse::<u64>()
            .expect("a number")
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = ask("rss").await;
    let peers = 50usize;
    let mut nodes = Vec::new();
    for _ in 0..peers {
        // One request on each transport, so the child holds both.
        let n = node(
            NetworkMode::DualLoadBalance,
            client_config(Some(RoutingStrategy::LoadBalance), Hedge::Off),
        )
        .await;
        for _ in 0..2 {
            n.request(&target, Bytes::from_static(b"hello"))
                .await
                .expect("peer request");
        }
        nodes.push(n);
    }
    // Read the RSS only once the child holds every peer on both
    // transports (its own view, not ours).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let dual = ask("dual").await;
        if dual >= peers as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the child holds only {dual} of {peers} peers on both transports"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let with_peers = ask("rss").await;
    drop(stdin);
    let _ = child.wait().await;
    for n in nodes {
        n.stop().await;
    }
    let per_peer = (with_peers.saturating_sub(idle)) as f64 / peers as f64;
    println!("\nRSS of a node with both stacks (a process of its own)\n");
    println!("| state | RSS MiB | target |");
    println!("|---|---:|---:|");
    println!("| idle | {:.1} | 25.0 |", idle as f64 / 1024.0);
    println!(
        "| {peers} peers on both transports | {:.1} | – |",
        with_peers as f64 / 1024.0
    );
    println!("| per peer | {per_peer:.0} KiB | 200 KiB |");
    out.insert(
        "rss".into(),
        json!({"idle_kib": idle, "with_50_peers_kib": with_peers, "per_peer_kib": per_peer}),
    );
}

async fn cycling(total: u64, out: &mut serde_json::Map<String, Value>) {
    let server = node(NetworkMode::DualPreferLibP2p, NodeConfig::default()).await;
    let addr = server.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    for _ in 0..8 {
        let client = node(
            NetworkMode::DualLoadBalance,
            client_config(None, Hedge::default()),
        )
        .await;
        let (stop, sent, lost, addr) = (stop.clone(), sent.clone(), lost.clone(), addr.clone());
        senders.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            while !stop.load(Ordering::SeqCst) && sent.fetch_add(1, Ordering::SeqCst) < total {
                if let Err(e) = client.request(&addr, Bytes::from_static(b"cycle")).await {
                    lost.fetch_add(1, Ordering::SeqCst);
                    if errors.len() < 5 {
                        errors.push(e.to_string());
                    }
                }
            }
            let text = client.metrics().render();
            client.stop().await;
            (errors, text)
        }));
    }
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
    let started = Instant::now();
    let mut switch_times = Vec::new();
    let mut i = 0;
    while sent.load(Ordering::SeqCst) < total {
        let mode = cycle[i % cycle.len()];
        i += 1;
        let t = Instant::now();
        server.set_mode(mode).await.expect("switch");
        switch_times.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut errors = Vec::new();
    let (mut retries, mut retiring, mut hedges, mut failovers) = (0.0, 0.0, 0.0, 0.0);
    for s in senders {
        let (e, text) = s.await.expect("sender");
        errors.extend(e);
        retries += metric_sum(&text, "switchyard_node_request_retries_total", "");
        retiring += metric_sum(&text, "switchyard_node_requests_total", "retiring");
        failovers += metric_sum(&text, "switchyard_node_requests_total", "error");
        hedges += metric_sum(&text, "switchyard_node_hedged_requests_total", "");
    }
    let elapsed = started.elapsed();
    let done = sent.load(Ordering::SeqCst).min(total);
    let lost = lost.load(Ordering::SeqCst);
    let switches = switch_times.len();
    let switch_ms: Vec<f64> = switch_times.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    let sw = switchyard_testbed::stats::Summary::of(&switch_ms).expect("at least one switch");
    server.stop().await;
    println!("\n{done} requests from 8 senders while the server cycles its mode every 50 ms\n");
    println!("| measure | value | target |");
    println!("|---|---:|---:|");
    println!("| requests lost | {lost} | 0 |");
    println!("| mode switches | {switches} | – |");
    println!(
        "| time per switch median / {} | {:.2} / {:.2} ms | – |",
        sw.tail_label(),
        sw.median,
        sw.tail()
    );
    println!(
        "| requests per second | {:.0} | – |",
        done as f64 / elapsed.as_secs_f64()
    );
    println!(
        "| sends answered Retiring / failed and retried elsewhere | {retiring:.0} / {failovers:.0} | – |"
    );
    println!("| requests sent again after backoff | {retries:.0} | – |");
    println!("| hedges | {hedges:.0} | – |");
    for e in &errors {
        println!("lost: {e}");
    }
    out.insert(
        "cycling".into(),
        json!({
            "requests": done, "lost": lost, "switches": switches,
            "switch_ms": sw.json("ms"),
            "requests_per_s": done as f64 / elapsed.as_secs_f64(),
            "retiring_answers": retiring, "failed_sends": failovers,
            "retries": retries, "hedges": hedges,
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
    let n = arg("--requests", 5000);
    let cycle_requests = arg("--cycle-requests", 100_000) as u64;
    let mut out = serde_json::Map::new();
    // `--only throughput` (or latency, memory, cycling) runs one part.
    let only = std::env::args()
        .skip_while(|a| a != "--only")
        .nth(1)
        .unwrap_or_default();
    let runs = |part: &str| only.is_empty() || only == part;
    rt.block_on(async {
        if runs("latency") {
            latencies(n, &mut out).await;
        }
        if runs("throughput") {
            throughput(&mut out).await;
        }
        if runs("memory") {
            memory(&mut out).await;
        }
        if runs("cycling") {
            cycling(cycle_requests, &mut out).await;
        }
    });
    let json = Value::Object(out);
    println!("\n{json}");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench");
    std::fs::create_dir_all(dir)?;
    std::fs::write(format!("{dir}/transport.json"), json.to_string())?;
    Ok(())
}
