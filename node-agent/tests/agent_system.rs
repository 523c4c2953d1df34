//! The node-agent binary as real processes on 127.0.0.1 against the
//! in-memory API server: registration, live mode changes from the API with
//! no failed probe, an unknown mode written around validation, and a
//! restart that keeps the identity and the mode.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::json;
use switchyard_crds::{FleetNode, NetworkMode};
use switchyard_testbed::apiserver::{ApiServer, Config};
use switchyard_testbed::cluster::TestCluster;

mod support;

use support::{Agent, NS, eventually, fleet_node, get, metric, metrics_url};

/// Every way a log line could carry the 32-byte ed25519 secret: its
/// bytes and its libp2p protobuf encoding (which embeds it), each raw,
/// as hex (either case), base64 (standard and URL-safe, padded or not)
/// and as Rust's byte-list rendering. Named, for the failure message.
fn secret_renderings(secret: &[u8]) -> Vec<(String, Vec<u8>)> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let mut bytes = secret.to_vec();
    let protobuf = libp2p::identity::Keypair::ed25519_from_bytes(&mut bytes)
        .expect("an ed25519 secret")
        .to_protobuf_encoding()
        .expect("encodable");
    let mut out = Vec::new();
    for (what, raw) in [("the key", secret.to_vec()), ("libp2p protobuf", protobuf)] {
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        out.push((format!("{what}, raw bytes"), raw.clone()));
        out.push((format!("{what}, hex"), hex.clone().into_bytes()));
        out.push((format!("{what}, HEX"), hex.to_uppercase().into_bytes()));
        for (name, engine) in [
            ("base64", &STANDARD),
            ("base64 unpadded", &STANDARD_NO_PAD),
            ("base64url", &URL_SAFE),
            ("base64url unpadded", &URL_SAFE_NO_PAD),
        ] {
            out.push((format!("{what}, {name}"), engine.encode(&raw).into_bytes()));
        }
        out.push((
            format!("{what}, byte list"),
            format!("{raw:?}").into_bytes(),
        ));
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn log_of(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
}

/// `n` agents `n0`..: the first, then the others bootstrapping from its
/// reported address. The agents, their metrics URLs, and the bootstrap
/// entry.
async fn fleet(
    cluster: &TestCluster,
    api: &Api<FleetNode>,
    n: usize,
) -> (Vec<Agent>, Vec<String>, Vec<String>) {
    let mut agents = vec![Agent::start(cluster, "n0", &[])];
    metrics_url(api, "n0").await;
    let n0 = fleet_node(api, "n0")
        .await
        .expect("n0")
        .status
        .expect("status");
    let peer = n0.identity.expect("identity").peer_id;
    let bootstrap = vec![format!(
        "{peer}@{}",
        n0.addresses.expect("addresses").libp2p[0]
    )];
    for i in 1..n {
        agents.push(Agent::start(cluster, &format!("n{i}"), &bootstrap));
    }
    let mut urls = Vec::new();
    for i in 0..n {
        urls.push(metrics_url(api, &format!("n{i}")).await);
    }
    (agents, urls, bootstrap)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_agents_register_switch_live_and_keep_their_identity_across_a_restart() {
    let cluster = TestCluster::start(
        Config {
            // So a FleetNode with an unknown spec.mode can be written.
            validate_custom_resources: false,
            ..Config::default()
        },
        "agents",
    )
    .await
    .expect("cluster");
    cluster.namespace(NS).await.expect("namespace");
    let api: Api<FleetNode> = Api::namespaced(cluster.client.clone(), NS);

    let (mut agents, urls, bootstrap) = fleet(&cluster, &api, 5).await;
    for i in 0..5 {
        let name = format!("n{i}");
        let n = fleet_node(&api, &name).await.expect("registered");
        assert_eq!(
            n.spec.mode,
            Some(NetworkMode::LibP2pOnly),
            "the initial mode"
        );
        let s = n.status.expect("status");
        assert_eq!(s.applied_mode, Some(NetworkMode::LibP2pOnly));
        assert!(
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        );
    }
    // Probes flow everywhere before anything switches.
    for url in &urls {
        eventually(Duration::from_secs(30), "probes answered", || async {
            let text = get(url).await?;
            (metric(&text, "switchyard_agent_probes_total", "outcome=\"ok\"") >= 5.0).then_some(())
        })
        .await;
    }

    // Live switches from the API, each acknowledged in status.
    let mut latencies = Vec::new();
    let duals = [
        NetworkMode::DualPreferLibP2p,
        NetworkMode::DualLoadBalance,
        NetworkMode::DualPreferIroh,
    ];
    for k in 0..20 {
        let node = if k % 2 == 0 { "n2" } else { "n3" };
        let mode = duals[(k / 2) % duals.len()];
        let written = Instant::now();
        let after = api
            .patch(
                node,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"mode": mode}})),
            )
            .await
            .expect("spec written");
        let generation = after.metadata.generation.expect("generation");
        eventually(
            Duration::from_secs(10),
            "the switch is acknowledged",
            || async {
                let s = fleet_node(&api, node).await?.status?;
                (s.applied_mode == Some(mode) && s.observed_generation >= Some(generation))
                    .then_some(())
            },
        )
        .await;
        latencies.push(written.elapsed());
    }
    latencies.sort();
    // Twenty switches: a median and a maximum, too few for a p99.
    eprintln!(
        "API write to acknowledgement over {} switches: median {:?}, max {:?}",
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );

    // A strategy override and an A/B share reach the node too.
    api.patch(
        "n3",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"routingStrategy": "PreferIroh", "irohShare": 30}})),
    )
    .await
    .expect("spec written");
    eventually(
        Duration::from_secs(10),
        "the strategy is applied",
        || async {
            let s = fleet_node(&api, "n3").await?.status?;
            (s.applied_strategy == Some(switchyard_crds::RoutingStrategy::PreferIroh)).then_some(())
        },
    )
    .await;

    // An unknown mode, written around validation, changes nothing but a
    // condition saying why.
    // (Read raw: the typed client cannot decode the object any more.)
    let raw: Api<DynamicObject> = Api::namespaced_with(
        cluster.client.clone(),
        NS,
        &ApiResource::erase::<FleetNode>(&()),
    );
    raw.patch(
        "n4",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"mode": "Carrier"}})),
    )
    .await
    .expect("written unvalidated");
    eventually(Duration::from_secs(10), "the agent says why", || async {
        let n = raw.get("n4").await.ok()?;
        let status = n.data.get("status")?;
        let conditions = status.get("conditions")?.as_array()?;
        conditions.iter().find(|c| {
            c["type"] == "ModeApplied"
                && c["status"] == "False"
                && c["reason"] == "UnknownMode"
                && c["message"].as_str().is_some_and(|m| m.contains("Carrier"))
        })?;
        (status["appliedMode"] == "LibP2pOnly").then_some(())
    })
    .await;

    // Let more probes run after all that, then count failures fleet-wide.
    let (answered, _) = probe_counts(&urls).await;
    eventually(Duration::from_secs(10), "more probes answered", || async {
        (probe_counts(&urls).await.0 >= answered + 20.0).then_some(())
    })
    .await;
    let (ok, failed) = probe_counts(&urls).await;
    assert_eq!(
        failed, 0.0,
        "no probe failed across the switches ({ok} answered)"
    );

    // Restart n1: SIGTERM exits 0 in time; the operator changes its mode
    // meanwhile; it comes back with the same identity, straight into it.
    let before = fleet_node(&api, "n1")
        .await
        .expect("n1")
        .status
        .expect("status");
    let n1 = agents.remove(1);
    let exit = n1.terminate(Duration::from_secs(10));
    assert!(exit.success(), "SIGTERM exits 0: {exit:?}");
    api.patch(
        "n1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"mode": "DualPreferLibP2p"}})),
    )
    .await
    .expect("spec written");
    agents.push(Agent::start(&cluster, "n1", &bootstrap));
    let url = eventually(
        Duration::from_secs(30),
        "n1 back in its new mode",
        || async {
            let s = fleet_node(&api, "n1").await?.status?;
            (s.applied_mode == Some(NetworkMode::DualPreferLibP2p)).then_some(s.metrics_endpoint?)
        },
    )
    .await;
    let after = fleet_node(&api, "n1")
        .await
        .expect("n1")
        .status
        .expect("status");
    assert_eq!(
        after.identity, before.identity,
        "same PeerId and EndpointId"
    );
    let text = get(&url).await.expect("metrics");
    assert_eq!(
        metric(&text, "switchyard_node_mode_switches_total", ""),
        0.0,
        "started in the FleetNode's mode, never in a default one: {text}"
    );
    assert!(log_of(&cluster.dir, "n1").contains("starting in the FleetNode's mode"));

    for a in agents {
        let name = a.name.clone();
        let exit = a.terminate(Duration::from_secs(10));
        assert!(exit.success(), "{name}: {exit:?}");
    }
    cluster.stop().await;
}

/// Fleet-wide probe counts: (answered, failed).
async fn probe_counts(urls: &[String]) -> (f64, f64) {
    let (mut ok, mut failed) = (0.0, 0.0);
    for url in urls {
        let text = get(url).await.expect("metrics");
        ok += metric(&text, "switchyard_agent_probes_total", "outcome=\"ok\"");
        failed += metric(&text, "switchyard_agent_probes_total", "outcome=\"error\"");
    }
    (ok, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_keep_routing_through_a_30_s_api_outage_and_resume_watching() {
    // The API server comes back at its address after a 30 s outage: a
    // reserved port, which nothing else can take while it is down.
    let api_port = switchyard_testbed::ports::reserve();
    let cluster = TestCluster::start(
        Config {
            addr: api_port.addr(),
            ..Config::default()
        },
        "outage",
    )
    .await
    .expect("cluster");
    cluster.namespace(NS).await.expect("namespace");
    let api: Api<FleetNode> = Api::namespaced(cluster.client.clone(), NS);
    let (agents, urls, _) = fleet(&cluster, &api, 3).await;
    for url in &urls {
        eventually(Duration::from_secs(30), "probes answered", || async {
            let text = get(url).await?;
            (metric(&text, "switchyard_agent_probes_total", "outcome=\"ok\"") >= 5.0).then_some(())
        })
        .await;
    }
    // n1 runs a mode of the operator's choosing before the outage.
    api.patch(
        "n1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"mode": "DualPreferLibP2p"}})),
    )
    .await
    .expect("spec written");
    eventually(Duration::from_secs(10), "n1 switched", || async {
        let s = fleet_node(&api, "n1").await?.status?;
        (s.applied_mode == Some(NetworkMode::DualPreferLibP2p)).then_some(())
    })
    .await;

    // The API server goes away for 30 s, every connection with it.
    let TestCluster {
        server,
        client,
        dir,
        kubeconfig,
    } = cluster;
    let (ok_before, _) = probe_counts(&urls).await;
    let app = server.outage().await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let (ok_during, failed) = probe_counts(&urls).await;
    assert_eq!(failed, 0.0, "no probe failed during the outage");
    assert!(
        ok_during >= ok_before + 3.0 * 30.0 * 5.0,
        "the fleet kept routing: {ok_before} -> {ok_during} probes answered"
    );
    let status = get(&urls[1].replace("/metrics", "/status"))
        .await
        .expect("status");
    assert!(status.contains("\"mode\":\"DualPreferLibP2p\""), "{status}");

    // Back: the agents watch again and take a new mode.
    let server = ApiServer::resume(app)
        .await
        .expect("the API server is back");
    let cluster = TestCluster {
        server,
        client,
        dir,
        kubeconfig,
    };
    let back = Instant::now();
    api.patch(
        "n2",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"mode": "DualLoadBalance"}})),
    )
    .await
    .expect("spec written");
    eventually(
        Duration::from_secs(20),
        "n2 switched after the outage",
        || async {
            let s = fleet_node(&api, "n2").await?.status?;
            (s.applied_mode == Some(NetworkMode::DualLoadBalance)).then_some(())
        },
    )
    .await;
    eprintln!(
        "a mode change acknowledged {:?} after the API server returned",
        back.elapsed()
    );
    for a in agents {
        let name = a.name.clone();
        let exit = a.terminate(Duration::from_secs(10));
        assert!(exit.success(), "{name}: {exit:?}");
    }
    cluster.stop().await;
}

#[test]
fn malformed_configuration_exits_non_zero_with_a_clear_error() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_switchyard-node-agent"))
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .env("KUBECONFIG", "/nonexistent")
            .args(args)
            .output()
            .expect("runs");
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (status, err) = run(&["--namespace", "fleet"]);
    assert!(!status.success());
    assert!(err.contains("POD_NAME"), "{err}");
    let (status, err) = run(&[
        "--name",
        "n0",
        "--namespace",
        "fleet",
        "--initial-mode",
        "Carrier",
    ]);
    assert!(!status.success());
    assert!(
        err.contains("Carrier") && err.contains("LibP2pOnly"),
        "{err}"
    );
    let dir = std::env::temp_dir().join(format!("switchyard-agent-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("agent.yaml");
    std::fs::write(&file, "probeRate: 2\nprobeRat: 3\n").expect("write");
    let (status, err) = run(&[
        "--name",
        "n0",
        "--namespace",
        "fleet",
        "--config",
        &file.to_string_lossy(),
    ]);
    assert!(!status.success());
    assert!(err.contains("probeRat"), "names the unknown key: {err}");
    std::fs::write(&file, "probeRate: -1\n").expect("write");
    let (status, err) = run(&[
        "--name",
        "n0",
        "--namespace",
        "fleet",
        "--config",
        &file.to_string_lossy(),
    ]);
    assert!(!status.success());
    assert!(err.contains("--probe-rate must be 0 or more"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identity_lives_in_a_secret_created_on_first_start_and_pod_labels_are_copied() {
    let cluster = TestCluster::start(Config::default(), "secret")
        .await
        .expect("cluster");
    cluster.namespace(NS).await.expect("namespace");
    let api: Api<FleetNode> = Api::namespaced(cluster.client.clone(), NS);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(cluster.client.clone(), NS);
    // The pod exists with labels, as on a cluster: the FleetNode gets them.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(cluster.client.clone(), NS);
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "s0", "labels": {"app": "storage", "zone": "a"}},
        "spec": {"containers": [{"name": "agent", "image": "switchyard/node-agent:test"}]},
    }))
    .expect("pod");
    pods.create(&Default::default(), &pod)
        .await
        .expect("pod created");
    let agent = Agent::start_with(&cluster, "s0", &[], &["--identity-secret", "s0-identity"]);
    metrics_url(&api, "s0").await;
    let labels = fleet_node(&api, "s0")
        .await
        .expect("s0")
        .metadata
        .labels
        .unwrap_or_default();
    assert_eq!(
        labels.get("app").map(String::as_str),
        Some("storage"),
        "{labels:?}"
    );
    assert_eq!(labels.get("zone").map(String::as_str), Some("a"));
    let first = fleet_node(&api, "s0")
        .await
        .expect("s0")
        .status
        .expect("status")
        .identity;
    let secret = secrets
        .get("s0-identity")
        .await
        .expect("the Secret was created");
    let key = secret.data.expect("data").remove("ed25519").expect("key");
    assert_eq!(key.0.len(), 32);
    assert!(agent.terminate(Duration::from_secs(10)).success());
    // A new FleetNode name, the same Secret: the same identity.
    let again = Agent::start_with(&cluster, "s1", &[], &["--identity-secret", "s0-identity"]);
    metrics_url(&api, "s1").await;
    let second = fleet_node(&api, "s1")
        .await
        .expect("s1")
        .status
        .expect("status")
        .identity;
    assert_eq!(first, second);
    for agent in ["s0", "s1"] {
        let log = std::fs::read(cluster.dir.join(format!("{agent}.log"))).expect("log");
        assert!(!log.is_empty(), "{agent} logged something");
        if let Some(form) = secret_renderings(&key.0)
            .into_iter()
            .find(|(_, text)| contains(&log, text))
        {
            panic!("{agent} logged the identity secret as {}", form.0);
        }
    }
    assert!(again.terminate(Duration::from_secs(10)).success());
    cluster.stop().await;
}

/// `a` allows only `b` (named by its iroh endpoint id, to use both forms
/// with the file), `c` is refused by `a` on both transports while `b`
/// connects on both; `a`'s metrics count the refusals per transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_an_allowlist_refuses_an_unlisted_peer_on_both_transports() {
    use switchyard_node_agent::identity::Identity;
    let cluster = TestCluster::start(Config::default(), "allowlist")
        .await
        .expect("cluster");
    cluster.namespace(NS).await.expect("namespace");
    let api: Api<FleetNode> = Api::namespaced(cluster.client.clone(), NS);
    let key = |name: &str| cluster.dir.join(format!("{name}.key"));
    let id = |name: &str| Identity::load_or_generate(&key(name)).expect("identity");
    let b = id("b");
    let list = cluster.dir.join("allowed.txt");
    std::fs::write(
        &list,
        format!("# the only peer a talks to\n{}\n", b.endpoint_id()),
    )
    .expect("allowlist file");
    let dual = ["--initial-mode", "DualPreferLibP2p"];
    let agent = |name: &str, bootstrap: &[String], extra: &[&str]| {
        let key = key(name);
        let mut args = vec!["--identity-file", key.to_str().expect("utf-8")];
        args.extend_from_slice(&dual);
        args.extend_from_slice(extra);
        Agent::start_with(&cluster, name, bootstrap, &args)
    };
    let _a = agent(
        "a",
        &[],
        &["--allowlist-file", list.to_str().expect("utf-8")],
    );
    let a_url = metrics_url(&api, "a").await;
    let status = fleet_node(&api, "a")
        .await
        .expect("a")
        .status
        .expect("status");
    let ids = status.identity.expect("identity");
    let addrs = status.addresses.expect("addresses");
    let bootstrap = vec![
        format!("{}@{}", ids.peer_id, addrs.libp2p[0]),
        format!("{}@{}", ids.endpoint_id, addrs.iroh[0]),
    ];
    let _b = agent("b", &bootstrap, &[]);
    let _c = agent("c", &bootstrap, &[]);
    let b_url = metrics_url(&api, "b").await;
    let c_url = metrics_url(&api, "c").await;
    let connected = |text: &str, t: &str| -> f64 {
        let transport = format!("transport=\"{t}\"");
        text.lines()
            .filter(|l| l.starts_with("switchyard_node_peer_states{"))
            .filter(|l| l.contains(&transport) && l.contains("state=\"Connected\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    eventually(
        Duration::from_secs(30),
        "a refuses c on both transports, and a and b connect on both",
        || async {
            let a = get(&a_url).await?;
            let b = get(&b_url).await?;
            let refused = |t: &str| {
                metric(
                    &a,
                    "switchyard_node_auth_rejections_total",
                    &format!("transport=\"{t}\""),
                )
            };
            (refused("libp2p") >= 1.0
                && refused("iroh") >= 1.0
                && ["libp2p", "iroh"]
                    .iter()
                    .all(|t| connected(&b, t) >= 1.0 && connected(&a, t) >= 1.0))
            .then_some(())
        },
    )
    .await;
    // c, refused on both, holds no connection; a holds b alone.
    let a = get(&a_url).await.expect("a's metrics");
    let c = get(&c_url).await.expect("c's metrics");
    for t in ["libp2p", "iroh"] {
        assert_eq!(connected(&c, t), 0.0, "c connected on {t}:\n{c}");
        assert_eq!(connected(&a, t), 1.0, "a's peers on {t}:\n{a}");
    }
}
