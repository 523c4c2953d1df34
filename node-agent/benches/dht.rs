//! The DHT and the workload API: lookup latency over a 100-node fleet in
//! three modes, what the workload API adds to a request, and the memory
//! of an agent holding 100 peers and 10,000 records.
//!
//! Usage: `cargo bench -p switchyard-node-agent --bench dht [-- --nodes N
//! --lookups N --requests N --only lookups|migration|api|memory
//! --memory-mode MODE]`
//!
//! Prints a table, then one line of JSON (also written to
//! target/bench/dht.json). Everything runs on 127.0.0.1.
//!
//! - lookups: N nodes in this process, each a bridge node with the agent's
//!   handler and DHT, their routing tables fed the fleet as the peer view
//!   would be; `--lookups` FIND_NODE lookups of the 20 closest to a random
//!   key from random nodes, one at a time, in LibP2pOnly, DualPreferIroh
//!   and IrohOnly. Target: p99 ≤ 50 ms.
//! - migration: the same fleet moves LibP2pOnly → DualPreferLibP2p →
//!   DualPreferIroh → IrohOnly in waves of a tenth, a wave every 300 ms,
//!   while 16 workers put a record through one random node and get it
//!   through another. Target: 100% of the operations succeed.
//! - api: a request to a peer's workload (which answers through its own
//!   workload API) sent through the sender's workload API, against the
//!   same request sent through the bridge directly. Target: the API adds
//!   ≤ 150 µs at the median.
//! - memory: one agent-like node (both stacks, DHT, workload queues) in a
//!   process of its own, with 100 peers connected and in its table and
//!   10,000 records of 100 bytes stored by them. Target: RSS ≤ 40 MiB.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_node_agent::NetworkMode;
use switchyard_node_agent::app;
use switchyard_node_agent::bridge::{Node, NodeConfig, PeerAddr};
use switchyard_node_agent::dht::proto::{self, Contact, Request, Response};
use switchyard_node_agent::dht::{Dht, DhtConfig};
use switchyard_node_agent::identity::Identity;
use switchyard_node_agent::workload::{self, AppHandler, Inbound, WorkloadConfig};
use switchyard_testbed::stats::Summary;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const CHILD_ENV: &str = "SWITCHYARD_DHT_BENCH_CHILD";

/// A node as the agent builds it: the app handler, the DHT, the inbound
/// queues.
struct Agent {
    node: Arc<Node>,
    dht: Arc<Dht>,
    inbound: Arc<Inbound>,
}

async fn agent(mode: NetworkMode) -> Agent {
    let inbound = Inbound::new(WorkloadConfig::default());
    let handler = AppHandler::new(inbound.clone());
    let node = Node::start(
        Identity::generate(),
        NodeConfig::default(),
        mode,
        handler.clone(),
    )
    .await
    .expect("node starts");
    let dht = Dht::new(node.clone(), DhtConfig::default());
    handler.attach(dht.clone());
    Agent { node, dht, inbound }
}

fn arg(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn lookups(nodes: usize, count: usize, out: &mut serde_json::Map<String, Value>) {
    let fleet: Vec<Agent> =
        futures::future::join_all((0..nodes).map(|_| agent(NetworkMode::DualPreferLibP2p))).await;
    // Every address on both transports, while both run.
    let addrs: Vec<PeerAddr> = fleet.iter().map(|a| a.node.addr()).collect();
    for a in &fleet {
        a.dht.sync(
            addrs
                .iter()
                .filter(|p| p.peer != a.node.identity().peer_id())
                .cloned(),
        );
    }
    let mut rows = serde_json::Map::new();
    for mode in [
        NetworkMode::LibP2pOnly,
        NetworkMode::DualPreferIroh,
        NetworkMode::IrohOnly,
    ] {
        futures::future::join_all(fleet.iter().map(|a| a.node.set_mode(mode))).await;
        // Warm: one lookup from every node opens its connections.
        for a in &fleet {
            let _ = a.dht.closest(b"warm").await;
        }
        let mut samples = Vec::with_capacity(count);
        let mut failed = 0;
        let mut found = 0;
        for i in 0..count {
            let a = &fleet[(i * 37) % nodes];
            let key: [u8; 16] = rand_bytes();
            let started = Instant::now();
            match a.dht.closest(&key).await {
                Ok(peers) => {
                    samples.push(ms(started.elapsed()));
                    found += peers.len();
                }
                Err(_) => failed += 1,
            }
        }
        let s = Summary::of(&samples).expect("samples");
        println!(
            "lookup, closest 20 of {nodes}, {mode:<16} p50 {:>6.2} ms  {} {:>6.2} ms  mean found {:.1}  failed {failed}",
            s.median,
            s.tail_label(),
            s.tail(),
            found as f64 / samples.len().max(1) as f64
        );
        let mut row = s.json("ms");
        row["failed"] = json!(failed);
        row["mean_found"] = json!(found as f64 / samples.len().max(1) as f64);
        rows.insert(mode.to_string(), row);
    }
    out.insert("lookups".into(), Value::Object(rows));
    for a in fleet {
        a.node.stop().await;
    }
}

fn rand_bytes() -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    let mut out = [0u8; 16];
    for chunk in out.chunks_mut(8) {
        let h = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        chunk.copy_from_slice(&h.to_be_bytes());
    }
    out
}

async fn migration(nodes: usize, out: &mut serde_json::Map<String, Value>) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let fleet: Arc<Vec<Agent>> = Arc::new(
        futures::future::join_all((0..nodes).map(|_| agent(NetworkMode::DualPreferLibP2p))).await,
    );
    let addrs: Vec<PeerAddr> = fleet.iter().map(|a| a.node.addr()).collect();
    for a in fleet.iter() {
        a.dht.sync(
            addrs
                .iter()
                .filter(|p| p.peer != a.node.identity().peer_id())
                .cloned(),
        );
    }
    futures::future::join_all(
        fleet
            .iter()
            .map(|a| a.node.set_mode(NetworkMode::LibP2pOnly)),
    )
    .await;
    let (ok, failed, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let workers: Vec<_> = (0..16)
        .map(|w| {
            let (fleet, ok, failed, stop) =
                (fleet.clone(), ok.clone(), failed.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = w;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("migration-{i}").into_bytes();
                    let (from, to) = ((i * 13) % fleet.len(), (i * 29 + 7) % fleet.len());
                    let value = bytes::Bytes::from(format!("value {i}"));
                    let put = fleet[from].dht.put(key.clone().into(), value.clone()).await;
                    let got = fleet[to].dht.get(&key).await;
                    match (put, got) {
                        (Ok(_), Ok(Some(v))) if v == value => {
                            ok.fetch_add(2, Ordering::Relaxed);
                        }
                        (p, g) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            eprintln!("failed: put {:?} get {:?}", p.err(), g.map(|v| v.is_some()));
                        }
                    }
                    i += 16;
                }
            })
        })
        .collect();
    let started = Instant::now();
    let wave = nodes.div_ceil(10);
    for mode in [
        NetworkMode::DualPreferLibP2p,
        NetworkMode::DualPreferIroh,
        NetworkMode::IrohOnly,
    ] {
        for chunk in fleet.chunks(wave) {
            futures::future::join_all(chunk.iter().map(|a| a.node.set_mode(mode))).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    futures::future::join_all(workers).await;
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!(
        "migration of {nodes} nodes in waves of {wave} over {:.1} s: {ok} puts and gets succeeded, {failed} pairs failed ({:.3}% success)",
        took.as_secs_f64(),
        100.0 * ok as f64 / (ok + 2 * failed).max(1) as f64
    );
    out.insert(
        "migration".into(),
        json!({"nodes": nodes, "seconds": took.as_secs_f64(), "ok": ok, "failed_pairs": failed}),
    );
    for a in fleet.iter() {
        a.node.stop().await;
    }
}

async fn api(requests: usize, out: &mut serde_json::Map<String, Value>) {
    let (a, b) = (
        agent(NetworkMode::LibP2pOnly).await,
        agent(NetworkMode::LibP2pOnly).await,
    );
    let (a_addr, b_addr) = (a.node.addr(), b.node.addr());
    a.dht.sync([b_addr.clone()]);
    b.dht.sync([a_addr]);
    let config = WorkloadConfig {
        listen: Some(([127, 0, 0, 1], 0).into()),
        ..WorkloadConfig::default()
    };
    let serve = |x: &Agent| workload::Api {
        node: x.node.clone(),
        dht: x.dht.clone(),
        inbound: x.inbound.clone(),
    };
    let (a_api, servers_a) = workload::serve(serve(&a), &config).await.expect("serve a");
    let (b_api, servers_b) = workload::serve(serve(&b), &config).await.expect("serve b");
    let tasks: Vec<_> = servers_a
        .into_iter()
        .chain(servers_b)
        .map(tokio::spawn)
        .collect();
    let (a_api, b_api) = (a_api.expect("tcp"), b_api.expect("tcp"));
    let http = reqwest::Client::new();
    // b's workload answers every request on bench/1 with its body.
    let answerer = {
        let http = http.clone();
        tokio::spawn(async move {
            loop {
                let Ok(r) = http
                    .get(format!("http://{b_api}/v1/inbound?protocol=bench/1&wait=5"))
                    .send()
                    .await
                else {
                    continue;
                };
                if r.status() != 200 {
                    continue;
                }
                let id = r.headers()["x-switchyard-request"]
                    .to_str()
                    .expect("id")
                    .to_owned();
                let body = r.bytes().await.expect("body");
                let _ = http
                    .post(format!("http://{b_api}/v1/inbound/{id}"))
                    .body(body)
                    .send()
                    .await;
            }
        })
    };
    let body = vec![b'x'; 100];
    let peer = b_addr.peer.to_string();
    let via_api = |http: reqwest::Client, body: Vec<u8>| {
        let url = format!("http://{a_api}/v1/send?peer={peer}&protocol=bench/1");
        async move {
            let r = http.post(url).body(body).send().await.expect("send");
            assert_eq!(r.status(), 200, "{:?}", r.text().await);
            let _ = r.bytes().await;
        }
    };
    // Warm both paths (and let b's workload register its protocol).
    let started = Instant::now();
    while app::request(&a.node, &b_addr, "bench/1", &body)
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "b's workload never served bench/1"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..100 {
        via_api(http.clone(), body.clone()).await;
    }
    let mut bridge = Vec::with_capacity(requests);
    let mut through_api = Vec::with_capacity(requests);
    // Interleaved, so both see the same machine.
    for _ in 0..requests {
        let t = Instant::now();
        app::request(&a.node, &b_addr, "bench/1", &body)
            .await
            .expect("bridge request");
        bridge.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        via_api(http.clone(), body.clone()).await;
        through_api.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let (b_s, a_s) = (
        Summary::of(&bridge).expect("samples"),
        Summary::of(&through_api).expect("samples"),
    );
    println!(
        "request to a peer's workload, 100 B: bridge p50 {:.0} µs {} {:.0} µs; workload API p50 {:.0} µs {} {:.0} µs; the API adds {:.0} µs at the median",
        b_s.median,
        b_s.tail_label(),
        b_s.tail(),
        a_s.median,
        a_s.tail_label(),
        a_s.tail(),
        a_s.median - b_s.median
    );
    out.insert(
        "api".into(),
        json!({"bridge": b_s.json("us"), "workload_api": a_s.json("us"), "added_median_us": a_s.median - b_s.median}),
    );
    answerer.abort();
    for t in tasks {
        t.abort();
    }
    a.node.stop().await;
    b.node.stop().await;
}

/// The memory child: one agent-like node; prints its address, takes the
/// peers' contacts (one JSON line), then answers `rss`, `anon`, `records`
/// and `peers` until `quit`.
async fn child() {
    let a = agent(memory_mode()).await;
    println!(
        "{}",
        serde_json::to_string(&Contact::of(&a.node.addr())).expect("json")
    );
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match line.trim() {
            "rss" => println!("{}", status_kib("VmRSS:")),
            "anon" => println!("{}", status_kib("RssAnon:")),
            "records" => println!("{}", a.dht.records()),
            "peers" => println!(
                "{}",
                a.node
                    .peers()
                    .iter()
                    .filter(|p| p.libp2p.connected() || p.iroh.connected())
                    .count()
            ),
            l if l.starts_with('[') => {
                let contacts: Vec<Contact> = serde_json::from_str(l).expect("contacts");
                a.dht.sync(contacts.iter().filter_map(|c| c.to_addr().ok()));
                println!("{}", a.dht.table_len());
            }
            _ => break,
        }
    }
    a.node.stop().await;
}

/// The mode of the memory run (`--memory-mode`, default
/// DualLoadBalance: connections on both transports).
fn memory_mode() -> NetworkMode {
    arg("--memory-mode")
        .map(|m| m.parse().expect("--memory-mode: a network mode"))
        .unwrap_or(NetworkMode::DualLoadBalance)
}

/// A KiB figure of this process's `/proc/self/status`: `VmRSS:` (all
/// resident pages) or `RssAnon:` (the heap and stacks, without the
/// binary's and libraries' mapped pages).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn memory(peers: usize, records: usize, out: &mut serde_json::Map<String, Value>) {
    let mode = memory_mode();
    let mut child = tokio::process::Command::new(std::env::current_exe().expect("exe"))
        .args(std::env::args().skip(1))
        .env(CHILD_ENV, "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("child starts");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines.next_line().await.expect("read").expect("contact");
    let target = serde_json::from_str::<Contact>(&first)
        .expect("json")
        .to_addr()
        .expect("address");
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
    let idle = ask("rss").await;
    let fleet: Vec<Agent> = futures::future::join_all((0..peers).map(|_| agent(mode))).await;
    let contacts: Vec<Contact> = fleet.iter().map(|a| Contact::of(&a.node.addr())).collect();
    let in_table = ask(&serde_json::to_string(&contacts).expect("json")).await;
    // Each peer stores records on the node, connecting on both
    // transports (DualLoadBalance spreads requests over the two).
    let per_peer = records / peers;
    futures::future::join_all(fleet.iter().enumerate().map(|(i, a)| {
        let target = target.clone();
        async move {
            for j in 0..per_peer {
                let store = Request::Store {
                    key: format!("record-{i}-{j}").into_bytes(),
                    value: vec![b'v'; 100],
                    ttl_secs: 3600,
                };
                let r = app::request(&a.node, &target, proto::PROTOCOL, &proto::encode(&store))
                    .await
                    .expect("stored");
                assert_eq!(proto::decode::<Response>(&r.0), Ok(Response::Stored));
            }
        }
    }))
    .await;
    let held = ask("records").await;
    let connected = ask("peers").await;
    let full = ask("rss").await;
    let anon = ask("anon").await;
    println!(
        "RSS in {mode}: idle {:.1} MiB; with {connected} peers connected ({in_table} in its table) and {held} records of 100 B: {:.1} MiB ({:.1} MiB anonymous, the rest the binary's and libraries' pages)",
        idle as f64 / 1024.0,
        full as f64 / 1024.0,
        anon as f64 / 1024.0
    );
    out.insert(
        "memory".into(),
        json!({"mode": mode.to_string(), "idle_kib": idle, "peers": connected, "table": in_table, "records": held, "rss_kib": full, "anon_kib": anon}),
    );
    let _ = stdin.write_all(b"quit\n").await;
    for a in fleet {
        a.node.stop().await;
    }
    let _ = child.wait().await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::var_os(CHILD_ENV).is_some() {
        child().await;
        return;
    }
    // reqwest wants a crypto provider even for plain HTTP (see the
    // workload_client example).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let nodes: usize = arg("--nodes").and_then(|v| v.parse().ok()).unwrap_or(100);
    let count: usize = arg("--lookups")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let requests: usize = arg("--requests")
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let only = arg("--only");
    let run = |part: &str| only.as_deref().is_none_or(|o| o == part);
    let mut out = serde_json::Map::new();
    if run("lookups") {
        lookups(nodes, count, &mut out).await;
    }
    if run("migration") {
        migration(nodes, &mut out).await;
    }
    if run("api") {
        api(requests, &mut out).await;
    }
    if run("memory") {
        memory(100, 10_000, &mut out).await;
    }
    let line = Value::Object(out).to_string();
    println!("{line}");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench");
    let _ = std::fs::create_dir_all(dir);
    let _ = std::fs::write(format!("{dir}/dht.json"), line);
}
