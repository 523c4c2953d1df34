//! iroh and libp2p on a real network: a server and a client node, each
//! on a host of its own (a network namespace on a bridge,
//! `switchyard_testbed::netns`), at 0, 20 and 100 ms round trip and 0 and
//! 1% packet loss each way. Needs root and iproute2 (and iptables where
//! the kernel has no `tc netem`); says why and exits 0 elsewhere.
//!
//! Usage: `cargo bench -p switchyard-node-agent --bench network
//! [-- --samples N --seconds S]`
//!
//! Per transport and network:
//! - first answer from a new client: connection setup plus one round trip
//!   (median of 5 fresh clients);
//! - round trip of 100-byte requests, 8 senders, at least `--samples`
//!   (default 1000) in all: p50, p99;
//! - 1 MiB requests, 1 and 8 in flight, for `--seconds` (default 5): MiB/s,
//!   and how many got no answer within the 30 s request timeout.
//!
//! Delay and loss are on each host's way out: a round trip crosses both.
//! Where the kernel has no netem they come from the testbed's user-space
//! delayer; the "0 ms via the delayer" row shows what the delayer itself
//! costs. Prints a table, then one line of JSON (also written to
//! target/bench/network.json).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use serde_json::{Value, json};
use switchyard_node_agent::NetworkMode;
use switchyard_node_agent::bridge::{Hedge, Node, NodeConfig, PeerAddr};
use switchyard_node_agent::identity::Identity;
use switchyard_node_agent::stack::Transport;
use switchyard_testbed::netns::{Net, Netem};
use switchyard_testbed::stats::Summary;

#[path = "support/mod.rs"]
mod support;

use support::BenchEcho;

const T: Duration = Duration::from_secs(30);

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number, not {v:?}"))
        })
        .unwrap_or(default)
}

/// A node of `mode` on the calling thread's host at `ip`.
async fn node(mode: NetworkMode, ip: std::net::Ipv4Addr) -> Arc<Node> {
    let mut config = NodeConfig {
        request_timeout: T,
        hedge: Hedge::Off,
        ..NodeConfig::default()
    };
    config.libp2p.listen = format!("/ip4/{ip}/tcp/0").parse().expect("multiaddr");
    config.libp2p.request_timeout = T;
    config.iroh.bind = std::net::SocketAddr::from((ip, 0));
    Node::start(Identity::generate(), config, mode, Arc::new(BenchEcho))
        .await
        .expect("node starts")
}

/// One network's shape: round trip added, loss each way.
#[derive(Clone, Copy)]
struct Shape {
    rtt_ms: u32,
    loss_percent: f64,
    /// Through the delayer even at 0 ms and 0% (its own cost).
    shaped: bool,
}

impl Shape {
    fn name(&self) -> String {
        let via = if self.shaped && self.rtt_ms == 0 && self.loss_percent == 0.0 {
            " via the delayer"
        } else {
            ""
        };
        format!("{} ms, {}% loss{via}", self.rtt_ms, self.loss_percent)
    }
}

fn shape(net: &Net, s: Shape) {
    for host in 0..2 {
        let netem = if s.shaped || s.rtt_ms > 0 || s.loss_percent > 0.0 {
            Netem {
                delay_ms: s.rtt_ms / 2,
                jitter_ms: 0,
                loss_percent: s.loss_percent,
                udp_only: false,
            }
        } else {
            Netem::default()
        };
        net.netem(host, netem).expect("shaping the link");
    }
}

fn client_mode(t: Transport) -> NetworkMode {
    match t {
        Transport::LibP2p => NetworkMode::LibP2pOnly,
        Transport::Iroh => NetworkMode::IrohOnly,
    }
}

/// The median time from starting a client to its first answer.
async fn first_answer(t: Transport, ip: std::net::Ipv4Addr, server: &PeerAddr) -> Duration {
    let mut took = Vec::new();
    for _ in 0..5 {
        let client = node(client_mode(t), ip).await;
        let started = Instant::now();
        client
            .request(server, Bytes::from_static(b"hello"))
            .await
            .expect("first request");
        took.push(started.elapsed());
        client.stop().await;
    }
    took.sort();
    took[took.len() / 2]
}

/// p50 and p99 (µs; the maximum below 1,000 samples) of 100-byte round
/// trips from 8 senders, `n` in all.
async fn round_trips(client: &Arc<Node>, server: &PeerAddr, n: usize) -> (f64, f64, usize) {
    let payload = Bytes::from(vec![7u8; 100]);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (client, server, payload) = (client.clone(), server.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            let mut us = Vec::with_capacity(n / 8 + 1);
            for _ in 0..n.div_ceil(8) {
                let started = Instant::now();
                client
                    .request(&server, payload.clone())
                    .await
                    .expect("100-byte request");
                us.push(started.elapsed().as_secs_f64() * 1e6);
            }
            us
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("sender"));
    }
    let s = Summary::of(&all).expect("samples");
    (s.median, s.tail(), s.n)
}

/// MiB/s of 1 MiB requests, `in_flight` at once, for `secs` (a request
/// under way then may finish late), and how many failed (no answer within
/// the 30 s timeout).
async fn throughput(
    client: &Arc<Node>,
    server: &PeerAddr,
    in_flight: usize,
    secs: u64,
) -> (f64, u64) {
    let payload = Bytes::from(vec![1u8; 1024 * 1024]);
    let until = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..in_flight {
        let (client, server, payload) = (client.clone(), server.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            let (mut done, mut failed) = (0u64, 0u64);
            while Instant::now() < until {
                match client.request(&server, payload.clone()).await {
                    Ok(_) => done += 1,
                    Err(_) => failed += 1,
                }
            }
            (done, failed)
        }));
    }
    let (mut done, mut failed) = (0, 0);
    for t in tasks {
        let (d, f) = t.await.expect("sender");
        done += d;
        failed += f;
    }
    (done as f64 / started.elapsed().as_secs_f64(), failed)
}

/// A thread in host `i`'s namespace running `f` on a runtime of its own.
fn on_host<T: Send + 'static>(
    net: &Arc<Net>,
    i: usize,
    f: impl FnOnce(Arc<Net>) -> BoxFuture<'static, T> + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let net = net.clone();
    std::thread::spawn(move || {
        net.enter(i).expect("entering the host's namespace");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(f(net))
    })
}

/// Every shape and transport, measured from the client's host.
async fn measure_all(
    net: Arc<Net>,
    shapes: Vec<Shape>,
    client_ip: std::net::Ipv4Addr,
    server_addr: PeerAddr,
    samples: usize,
    secs: u64,
) -> (Vec<String>, serde_json::Map<String, Value>) {
    let mut rows = Vec::new();
    let mut out = serde_json::Map::new();
    for s in shapes {
        shape(&net, s);
        for t in Transport::ALL {
            let first = first_answer(t, client_ip, &server_addr).await;
            let client = node(client_mode(t), client_ip).await;
            client
                .request(&server_addr, Bytes::from_static(b"warm"))
                .await
                .expect("warm-up");
            let (p50, p99, n) = round_trips(&client, &server_addr, samples).await;
            let (one, failed_one) = throughput(&client, &server_addr, 1, secs).await;
            let (eight, failed_eight) = throughput(&client, &server_addr, 8, secs).await;
            let failed = failed_one + failed_eight;
            client.stop().await;
            let row = format!(
                "| {} | {} | {:.1} | {:.2} | {:.2} | {n} | {one:.1} | {eight:.1} | {failed} |",
                s.name(),
                t.as_str(),
                first.as_secs_f64() * 1e3,
                p50 / 1e3,
                p99 / 1e3,
            );
            println!("{row}");
            rows.push(row);
            out.insert(
                format!("{} {}", s.name(), t.as_str()),
                json!({
                    "rtt_ms": s.rtt_ms, "loss_percent": s.loss_percent,
                    "transport": t.as_str(),
                    "first_answer_ms": first.as_secs_f64() * 1e3,
                    "p50_ms": p50 / 1e3, "p99_ms": p99 / 1e3, "samples": n,
                    "mib_s_1_in_flight": one, "mib_s_8_in_flight": eight,
                    "failed_1_mib_requests": failed,
                }),
            );
        }
    }
    shape(
        &net,
        Shape {
            rtt_ms: 0,
            loss_percent: 0.0,
            shaped: false,
        },
    );
    (rows, out)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Some(why) =
        switchyard_testbed::netns::unavailable().or_else(switchyard_testbed::netdelay::unavailable)
    {
        println!("skipped: {why}");
        return Ok(());
    }
    let samples = arg("--samples", 1000);
    let secs = arg("--seconds", 5) as u64;
    let net = Arc::new(Net::create(2)?);
    let (server_ip, client_ip) = (net.hosts[0].ip, net.hosts[1].ip);
    let (addr_tx, addr_rx) = std::sync::mpsc::sync_channel(1);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = on_host(&net, 0, move |_| {
        Box::pin(async move {
            let server = node(NetworkMode::DualPreferLibP2p, server_ip).await;
            addr_tx.send(server.addr()).expect("address");
            let _ = stop_rx.await;
            server.stop().await;
        })
    });
    let server_addr = addr_rx.recv()?;
    let shapes = [
        (0, 0.0, false),
        (0, 0.0, true),
        (0, 1.0, true),
        (20, 0.0, true),
        (20, 1.0, true),
        (100, 0.0, true),
        (100, 1.0, true),
    ]
    .map(|(rtt_ms, loss_percent, shaped)| Shape {
        rtt_ms,
        loss_percent,
        shaped,
    });
    let client = on_host(&net, 1, move |net| {
        Box::pin(measure_all(
            net,
            shapes.to_vec(),
            client_ip,
            server_addr,
            samples,
            secs,
        ))
    });
    println!(
        "| network (added round trip, loss each way) | transport | first answer, ms | p50, ms | p99, ms | samples | MiB/s, 1 in flight | MiB/s, 8 in flight | 1 MiB requests failed |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    let (_, out) = client.join().map_err(|_| "the client thread panicked")?;
    let _ = stop_tx.send(());
    server.join().map_err(|_| "the server thread panicked")?;
    let json = Value::Object(out);
    println!("\n{json}");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench");
    std::fs::create_dir_all(dir)?;
    std::fs::write(format!("{dir}/network.json"), json.to_string())?;
    Ok(())
}
