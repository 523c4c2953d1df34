//! The DHT and the workload API on real agent processes on 127.0.0.1
//! against the in-memory API server: a 30-node DHT formed from one
//! bootstrap peer, 1,000 records put and read back from other nodes,
//! requests between workloads, and bad input over the wire and over the
//! API.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use kube::api::Api;
use libp2p::PeerId;
use switchyard_crds::{FleetNode, NetworkMode};
use switchyard_node_agent::app;
use switchyard_node_agent::bridge::{BridgeError, Node, NodeConfig, PeerAddr};
use switchyard_node_agent::dht::proto::{self, Request};
use switchyard_node_agent::identity::Identity;
use switchyard_node_agent::stack::{Handler, Transport};
use switchyard_node_agent::wire::Envelope;
use switchyard_testbed::apiserver::Config;
use switchyard_testbed::cluster::TestCluster;

mod support;

use support::{Agent, NS, eventually, fleet_node, get, metric, metrics_url};

/// Agent flags for a fast-forming DHT.
/// (The default heartbeats; no probes: thirty debug builds on two cores
/// have little CPU to spare.)
const DHT_ARGS: &[&str] = &[
    "--dht-check-interval",
    "1s",
    "--heartbeat-interval",
    "5s",
    "--probe-rate",
    "0",
];

/// `n` agents, all bootstrapping from the first; with their metrics URLs.
async fn dht_fleet(
    cluster: &TestCluster,
    api: &Api<FleetNode>,
    n: usize,
) -> (Vec<Agent>, Vec<String>) {
    let key = |i: usize| {
        cluster
            .dir
            .join(format!("n{i}.key"))
            .to_string_lossy()
            .into_owned()
    };
    let args = |i: usize| -> Vec<String> {
        let mut a: Vec<String> = DHT_ARGS.iter().map(|s| s.to_string()).collect();
        a.extend(["--identity-file".to_owned(), key(i)]);
        a
    };
    let first_args = args(0);
    let first: Vec<&str> = first_args.iter().map(String::as_str).collect();
    let mut agents = vec![Agent::start_with(cluster, "n0", &[], &first)];
    metrics_url(api, "n0").await;
    let s = fleet_node(api, "n0")
        .await
        .and_then(|n| n.status)
        .expect("status");
    let bootstrap = vec![format!(
        "{}@{}",
        s.identity.expect("identity").peer_id,
        s.addresses.expect("addresses").libp2p[0]
    )];
    for i in 1..n {
        let a = args(i);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        agents.push(Agent::start_with(cluster, &format!("n{i}"), &bootstrap, &a));
    }
    let mut urls = Vec::new();
    for i in 0..n {
        urls.push(metrics_url(api, &format!("n{i}")).await);
    }
    (agents, urls)
}

/// The agent's `/status`, parsed.
async fn status(metrics_url: &str) -> Option<serde_json::Value> {
    let text = get(&metrics_url.replace("/metrics", "/status")).await?;
    serde_json::from_str(&text).ok()
}

/// Wait until every agent's routing health is Healthy with at least
/// `peers` in its table.
async fn until_healthy(urls: &[String], peers: u64, within: Duration) {
    for url in urls {
        eventually(within, "routing health Healthy", || async {
            let s = status(url).await?;
            let dht = &s["dht"];
            (dht["routingHealth"] == "Healthy" && dht["routingTablePeers"].as_u64()? >= peers)
                .then_some(())
        })
        .await;
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_agents_form_a_dht_and_every_record_put_is_read_back_from_another_node() {
    let _heavy = switchyard_testbed::serial::heavy();
    let cluster = TestCluster::start(Config::default(), "dht-formation")
        .await
        .expect("cluster");
    cluster.namespace(NS).await.expect("namespace");
    let api: Api<FleetNode> = Api::namespaced(cluster.client.clone(), NS);
    let n = 30;
    let started = std::time::Instant::now();
    let (agents, urls) = dht_fleet(&cluster, &api, n).await;
    // Every node learns most of the fleet through lookups, starting from
    // one bootstrap peer.
    until_healthy(&urls, 10, Duration::from_secs(120)).await;
    eprintln!("{n} agents up and Healthy in {:?}", started.elapsed());
    let started = std::time::Instant::now();

    let http = client();
    let records = 1000;
    let outcomes: Vec<Result<(), String>> = futures::stream::iter(0..records)
        .map(|i| {
            let (from, to) = (i % n, (i * 7 + 3) % n);
            let to = if to == from { (to + 1) % n } else { to };
            let (put_api, get_api) = (agents[from].api(), agents[to].api());
            let http = http.clone();
            async move {
                let key = format!("record-{i}");
                let value = format!("value {i} from n{from}");
                let r = http
                    .put(format!("{put_api}/v1/records/{key}"))
                    .body(value.clone())
                    .send()
                    .await
                    .map_err(|e| format!("put {key}: {e}"))?;
                if !r.status().is_success() {
                    return Err(format!("put {key}: {} {:?}", r.status(), r.text().await));
                }
                let r = http
                    .get(format!("{get_api}/v1/records/{key}"))
                    .send()
                    .await
                    .map_err(|e| format!("get {key}: {e}"))?;
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                if !status.is_success() || body != value {
                    return Err(format!("get {key} from n{to}: {status} {body:?}"));
                }
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let failed: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {records} records failed, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    eprintln!(
        "{records} records put and read back in {:?}",
        started.elapsed()
    );
    // Each record lives on up to k = 20 of the 30 nodes.
    let mut held = 0.0;
    for url in &urls {
        held += metric(
            &get(url).await.expect("metrics"),
            "switchyard_dht_records",
            "",
        );
    }
    assert!(held >= (records * 10) as f64, "{held} copies held");
    until_healthy(&urls, 10, Duration::from_secs(30)).await;
    for url in &urls {
        let text = get(url).await.expect("metrics");
        assert!(
            metric(
                &text,
                "switchyard_node_protocol_requests_total",
                "protocol=\"/switchyard/kad/1\""
            ) > 0.0,
            "DHT requests are counted by protocol"
        );
    }
    drop(agents);
}

/// Answers nothing useful; the test node only sends.
struct Silent;

impl Handler for Silent {
    fn handle(
        &self,
        _: PeerId,
        _: Transport,
        _: Envelope,
    ) -> BoxFuture<'static, Result<Bytes, String>> {
        Box::pin(async { Err("this node serves nothing".to_owned()) })
    }
    fn mode(&self) -> NetworkMode {
        NetworkMode::LibP2pOnly
    }
}

/// Where an agent is, from its FleetNode.
async fn addr_of(api: &Api<FleetNode>, name: &str) -> PeerAddr {
    let s = fleet_node(api, name)
        .await
        .and_then(|n| n.status)
        .expect("status");
    let peer: PeerId = s
        .identity
        .expect("identity")
        .peer_id
        .parse()
        .expect("peer id");
    let a = s.addresses.expect("addresses");
    PeerAddr::new(
        peer,
        a.libp2p
            .iter()
            .map(|m| m.parse().expect("multiaddr"))
            .collect(),
        a.iroh.iter().map(|s| s.parse().expect("socket")).collect(),
    )
    .expect("an ed25519 peer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_talk_through_their_agents_and_bad_input_gets_a_clear_answer() {
    let cluster = TestCluster::start(Config::default(), "dht-workload")
        .await
        .expect("cluster");
    cluster.namespace(NS).await.expect("namespace");
    let api: Api<FleetNode> = Api::namespaced(cluster.client.clone(), NS);
    let (agents, urls) = dht_fleet(&cluster, &api, 3).await;
    until_healthy(&urls, 2, Duration::from_secs(60)).await;
    let http = client();
    let (a, b) = (&agents[0], &agents[1]);
    let b_peer = addr_of(&api, "n1").await.peer;

    // b's workload serves "echo/1": it long-polls for requests and
    // answers each with "echo: " and the body.
    let serve = {
        let (http, api) = (http.clone(), b.api());
        tokio::spawn(async move {
            loop {
                let r = http
                    .get(format!("{api}/v1/inbound?protocol=echo/1&wait=5"))
                    .send()
                    .await
                    .expect("poll");
                if r.status() == reqwest::StatusCode::NO_CONTENT {
                    continue;
                }
                let id = r.headers()["x-switchyard-request"]
                    .to_str()
                    .expect("id")
                    .to_owned();
                let body = r.bytes().await.expect("body");
                let mut answer = b"echo: ".to_vec();
                answer.extend_from_slice(&body);
                http.post(format!("{api}/v1/inbound/{id}"))
                    .body(answer)
                    .send()
                    .await
                    .expect("answer");
            }
        })
    };
    let send = |peer: String, protocol: &str, body: &'static str| {
        http.post(format!(
            "{}/v1/send?peer={peer}&protocol={protocol}",
            a.api()
        ))
        .body(body)
        .send()
    };
    let answered = eventually(Duration::from_secs(20), "b's workload answers", || async {
        let r = send(b_peer.to_string(), "echo/1", "hello").await.ok()?;
        (r.status() == 200).then_some(r)
    })
    .await;
    assert!(answered.headers().contains_key("x-switchyard-transport"));
    assert_eq!(answered.text().await.expect("body"), "echo: hello");

    // Bad input over the API: each a 4xx or 5xx that says what is wrong.
    let expect = |what: &'static str, status: u16, says: &'static str| {
        move |r: reqwest::Response| async move {
            let got = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            assert_eq!(got, status, "{what}: {body}");
            assert!(body.contains(says), "{what}: {body:?} should say {says:?}");
        }
    };
    expect("a malformed peer id", 400, "not a peer id")(
        send("nope".into(), "echo/1", "x").await.expect("sent"),
    )
    .await;
    expect("an unknown peer", 404, "not a peer this node reaches")(
        send(PeerId::random().to_string(), "echo/1", "x")
            .await
            .expect("sent"),
    )
    .await;
    expect("a bad protocol name", 400, "protocol name")(
        send(b_peer.to_string(), "has space", "x")
            .await
            .expect("sent"),
    )
    .await;
    expect("a reserved protocol", 400, "keeps for itself")(
        send(b_peer.to_string(), "/switchyard/kad/1", "x")
            .await
            .expect("sent"),
    )
    .await;
    expect(
        "a protocol nobody serves",
        502,
        "no workload on this node serves",
    )(
        send(b_peer.to_string(), "nobody/1", "x")
            .await
            .expect("sent"),
    )
    .await;
    // c's workload takes requests on "slow/1" and never answers.
    let c_peer = addr_of(&api, "n2").await.peer;
    let c_api = agents[2].api();
    let taker = {
        let http = http.clone();
        tokio::spawn(async move {
            loop {
                let _ = http
                    .get(format!("{c_api}/v1/inbound?protocol=slow/1&wait=5"))
                    .send()
                    .await;
            }
        })
    };
    let slow = eventually(Duration::from_secs(30), "c serves slow/1", || async {
        let r = send(c_peer.to_string(), "slow/1", "x").await.ok()?;
        let body = r.text().await.ok()?;
        (!body.contains("no workload")).then_some(body)
    })
    .await;
    assert!(slow.contains("did not answer"), "{slow}");
    taker.abort();
    let big = vec![b'x'; 2 * 1024 * 1024];
    // A client of its own: the server refuses the body unread and closes
    // that connection, which a shared pool could hand to the next request.
    let r = client()
        .post(format!("{}/v1/send?peer={b_peer}&protocol=echo/1", a.api()))
        .body(big)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 413, "an oversized body");
    let r = http
        .put(format!("{}/v1/records/big", a.api()))
        .body(vec![b'x'; 65 * 1024])
        .send()
        .await
        .expect("sent");
    let (status, body) = (r.status().as_u16(), r.text().await.unwrap_or_default());
    assert_eq!(status, 413, "an oversized record: {body}");
    assert!(body.contains("over the limit"), "{body}");
    let r = http
        .get(format!("{}/v1/closest/k?count=0", a.api()))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 400);
    let r = http
        .get(format!("{}/v1/inbound?protocol=echo/1&wait=-1", a.api()))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 400);
    let r = http
        .post(format!("{}/v1/inbound/12345", a.api()))
        .body("late")
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 404);
    let r = http
        .get(format!("{}/v1/records/never-put", a.api()))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 404);

    // Bad input over the wire: garbage DHT messages and an oversized
    // record, from a node that is not an agent.
    let stranger = Node::start(
        Identity::generate(),
        NodeConfig::default(),
        NetworkMode::LibP2pOnly,
        Arc::new(Silent),
    )
    .await
    .expect("node");
    let a_addr = addr_of(&api, "n0").await;
    let kad = proto::PROTOCOL;
    let refused = |r: Result<Bytes, BridgeError>| match r {
        Err(BridgeError::Refused { reason, .. }) => reason,
        other => panic!("refused, not {other:?}"),
    };
    let why = refused(
        stranger
            .request(&a_addr, app::encode(kad, b"\x01garbage"))
            .await,
    );
    assert!(why.contains("malformed"), "{why}");
    let why = refused(stranger.request(&a_addr, app::encode(kad, b"\x09")).await);
    assert!(why.contains("version 9"), "{why}");
    let why = refused(stranger.request(&a_addr, Bytes::from_static(b"")).await);
    assert!(why.contains("names no protocol"), "{why}");
    let store = Request::Store {
        key: b"k".to_vec(),
        value: vec![0; 100 * 1024],
        ttl_secs: 60,
    };
    let why = refused(
        stranger
            .request(&a_addr, app::encode(kad, &proto::encode(&store)))
            .await,
    );
    assert!(why.contains("over the limit"), "{why}");
    let text = get(&urls[0]).await.expect("metrics");
    assert!(
        metric(&text, "switchyard_dht_malformed_messages_total", "") >= 3.0,
        "counted"
    );
    // A good request from the same stranger is still answered.
    let ping = stranger
        .request(&a_addr, app::encode(kad, &proto::encode(&Request::Ping)))
        .await
        .expect("a ping is answered");
    assert_eq!(
        proto::decode::<proto::Response>(&ping),
        Ok(proto::Response::Pong)
    );
    // And the node keeps serving its fleet.
    let r = http
        .put(format!("{}/v1/records/after", a.api()))
        .body("still here")
        .send()
        .await
        .expect("put");
    assert!(r.status().is_success());
    let r = http
        .get(format!("{}/v1/records/after", agents[1].api()))
        .send()
        .await
        .expect("get");
    assert_eq!(r.text().await.expect("body"), "still here");
    serve.abort();
    stranger.stop().await;
}

#[path = "../examples/workload_client.rs"]
mod client;

/// Run the Python example client against `api`; its stdout.
fn python(api: &str, args: &[&str]) -> String {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/workload/kv_client.py"
    );
    let out = std::process::Command::new("python3")
        .arg(script)
        .args(args)
        .env("SWITCHYARD_WORKLOAD_API", api)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "kv_client.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_and_python_example_clients_work_against_real_agents() {
    let cluster = TestCluster::start(Config::default(), "dht-clients")
        .await
        .expect("cluster");
    cluster.namespace(NS).await.expect("namespace");
    let api: Api<FleetNode> = Api::namespaced(cluster.client.clone(), NS);
    let (agents, urls) = dht_fleet(&cluster, &api, 3).await;
    until_healthy(&urls, 2, Duration::from_secs(60)).await;
    let (a, b) = (
        client::Workload::new(agents[0].api()),
        client::Workload::new(agents[1].api()),
    );
    let b_peer = addr_of(&api, "n1").await.peer.to_string();

    // Rust: a record put through one agent is read through another, and a
    // request from a's workload is answered by b's.
    assert!(a.put("from-rust", "hello").await.expect("put") >= 1);
    assert_eq!(
        b.get("from-rust").await.expect("get").as_deref(),
        Some(&b"hello"[..])
    );
    assert_eq!(b.get("never-put").await.expect("get"), None);
    let served = tokio::spawn(async move {
        b.serve("rust/1", |_from, body| {
            [b"rust echo: ".as_slice(), body].concat()
        })
        .await
    });
    let answer = eventually(Duration::from_secs(20), "b serves rust/1", || async {
        a.send(&b_peer, "rust/1", "hi").await.ok()
    })
    .await;
    assert_eq!(answer, b"rust echo: hi");
    let e = a
        .send(&b_peer, "has space", "x")
        .await
        .expect_err("a bad name");
    assert!(e.to_string().starts_with("400"), "{e}");
    served.abort();

    // Python: the same, from the standard library alone.
    let (pa, pb) = (agents[0].api(), agents[2].api());
    let c_peer = addr_of(&api, "n2").await.peer.to_string();
    assert!(
        python(&pa, &["put", "from-python", "hello too"])
            .parse::<u64>()
            .expect("a count")
            >= 1
    );
    assert_eq!(python(&pb, &["get", "from-python"]), "hello too");
    assert_eq!(python(&pb, &["get", "from-rust"]), "hello");
    let listed: serde_json::Value = serde_json::from_str(&python(&pa, &["peers"])).expect("json");
    assert!(listed["peers"].as_array().expect("peers").len() >= 2);
    let closest: serde_json::Value =
        serde_json::from_str(&python(&pa, &["closest", "k"])).expect("json");
    assert!(!closest.as_array().expect("a list").is_empty());
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/workload/kv_client.py"
    );
    let mut server = std::process::Command::new("python3")
        .args([script, "serve", "py/1"])
        .env("SWITCHYARD_WORKLOAD_API", &pb)
        .spawn()
        .expect("python3 serves");
    let answer = eventually(
        Duration::from_secs(20),
        "the Python workload serves py/1",
        || async {
            let out = std::process::Command::new("python3")
                .args([script, "send", &c_peer, "py/1", "hi"])
                .env("SWITCHYARD_WORKLOAD_API", &pa)
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        },
    )
    .await;
    assert_eq!(answer, "echo: hi");
    let _ = server.kill();
    let _ = server.wait();
    drop(agents);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workload_api_is_served_on_a_unix_socket_too() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cluster = TestCluster::start(Config::default(), "dht-socket")
        .await
        .expect("cluster");
    cluster.namespace(NS).await.expect("namespace");
    let api: Api<FleetNode> = Api::namespaced(cluster.client.clone(), NS);
    let socket = cluster.dir.join("workload.sock");
    let key = cluster.dir.join("s0.key");
    let agent = Agent::start_with(
        &cluster,
        "s0",
        &[],
        &[
            "--workload-socket",
            &socket.to_string_lossy(),
            "--identity-file",
            &key.to_string_lossy(),
        ],
    );
    metrics_url(&api, "s0").await;
    let me = addr_of(&api, "s0").await.peer.to_string();
    let body = eventually(Duration::from_secs(20), "the socket answers", || async {
        let mut s = tokio::net::UnixStream::connect(&socket).await.ok()?;
        s.write_all(b"GET /v1/peers HTTP/1.0\r\nHost: agent\r\n\r\n")
            .await
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        Some(out)
    })
    .await;
    assert!(body.starts_with("HTTP/1.0 200"), "{body}");
    assert!(body.contains(&me), "the agent names itself: {body}");
    // And on TCP, as before.
    let r = client()
        .get(format!("{}/v1/peers", agent.api()))
        .send()
        .await
        .expect("tcp");
    assert_eq!(r.status(), 200);
    drop(agent);
}
