//! The MigrationPlan controller against the in-memory API server, with a
//! test agent that acknowledges modes by patching FleetNode status, and a
//! checker that asserts the island invariant on every FleetNode watch
//! event it sees.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use switchyard_crds::{
    FleetNode, FleetNodeSpec, MigrationPlan, NetworkMode, PlanPhase, forms_island,
};
use switchyard_testbed::apiserver::{ApiServer, Config};

const NS: &str = "fleet";
const WAIT: Duration = Duration::from_secs(60);

/// A plain HTTP GET on 127.0.0.1, retried until the port answers.
async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut conn) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let req =
                format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
            if conn.write_all(req.as_bytes()).await.is_ok() {
                let mut out = String::new();
                if conn.read_to_string(&mut out).await.is_ok() {
                    return out;
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing answers on port {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn client_for(server: &ApiServer) -> Client {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&server.kubeconfig()).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

/// Acknowledge every mode change after `delay`, as a node-agent would.
async fn test_agent(client: Client, delay: Duration) {
    switchyard_testbed::agents::acknowledge_modes(client, NS, move |_| delay).await;
}

/// Check the island invariant on every watch event; count violations.
async fn island_checker(client: Client, violations: Arc<AtomicUsize>, seen: Arc<AtomicUsize>) {
    let nodes: Api<FleetNode> = Api::namespaced(client, NS);
    let mut fleet: BTreeMap<String, (Option<NetworkMode>, Option<NetworkMode>)> = BTreeMap::new();
    let mut events = watcher(nodes, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Ok(Some(e)) = events.try_next().await {
        match e {
            watcher::Event::Apply(n) | watcher::Event::InitApply(n) => {
                fleet.insert(n.name_any(), (n.spec.mode, n.applied_mode()));
            }
            watcher::Event::Delete(n) => {
                fleet.remove(&n.name_any());
            }
            _ => continue,
        }
        seen.fetch_add(1, Ordering::SeqCst);
        if forms_island(fleet.values().flat_map(|(d, a)| [*d, *a]).flatten()) {
            violations.fetch_add(1, Ordering::SeqCst);
        }
    }
}

struct Cluster {
    server: ApiServer,
    client: Client,
    dir: std::path::PathBuf,
    kubeconfig: std::path::PathBuf,
}

/// The in-memory API server with the CRDs, a namespace and `size` FleetNodes
/// reporting LibP2pOnly.
async fn cluster(size: usize, name: &str) -> Cluster {
    let server = ApiServer::start(Config::default()).await.expect("server");
    let client = client_for(&server).await;
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> = Api::all(client.clone());
    for crd in switchyard_crds::crdgen::crds() {
        crds.create(&PostParams::default(), &crd)
            .await
            .expect("CRD");
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(NS.into()),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            },
        )
        .await
        .expect("namespace");
    let nodes: Api<FleetNode> = Api::namespaced(client.clone(), NS);
    for i in 0..size {
        let mut n = FleetNode::new(&format!("node-{i:02}"), FleetNodeSpec::default());
        n.metadata.labels = Some([("app".to_owned(), "storage".to_owned())].into());
        nodes
            .create(&PostParams::default(), &n)
            .await
            .expect("node");
        nodes
            .patch_status(
                &n.name_any(),
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"status": {"appliedMode": "LibP2pOnly", "observedGeneration": 1}}),
                ),
            )
            .await
            .expect("node status");
    }
    let dir =
        std::env::temp_dir().join(format!("switchyard-operator-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let kubeconfig = server
        .write_kubeconfig(&dir.join("kubeconfig"))
        .expect("kubeconfig");
    Cluster {
        server,
        client,
        dir,
        kubeconfig,
    }
}

/// The operator as a real process; returns it and its HTTP port.
fn spawn_operator(c: &Cluster, identity: &str, lease_seconds: u64) -> (tokio::process::Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard-operator"))
        .env("KUBECONFIG", &c.kubeconfig)
        .env("SWITCHYARD_NAMESPACE", NS)
        .env("SWITCHYARD_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("POD_NAME", identity)
        .env("SWITCHYARD_LEASE_DURATION", lease_seconds.to_string())
        .env("SWITCHYARD_LEASE_GRACE", "2")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("operator starts");
    (child, port)
}

fn plan(waves: &[u8], wave_interval: &str) -> MigrationPlan {
    serde_json::from_value(json!({
        "apiVersion": "switchyard.dev/v1alpha1",
        "kind": "MigrationPlan",
        "metadata": {"name": "to-iroh", "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": "storage"}},
            "stages": ["DualPreferLibP2p", "DualPreferIroh", "IrohOnly"],
            "canary": {"count": 2, "duration": "1s"},
            "waves": waves,
            "waveInterval": wave_interval,
            "maxUnavailable": "20%",
        }
    }))
    .expect("plan")
}

async fn wait_for_phase(
    plans: &Api<MigrationPlan>,
    want: impl Fn(&MigrationPlan) -> bool,
    what: &str,
) -> MigrationPlan {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let p = plans.get("to-iroh").await.expect("plan");
        if want(&p) {
            return p;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {:?}",
            p.status.as_ref().map(|s| (s.phase, s.message.clone()))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn succeeded(p: &MigrationPlan) -> bool {
    p.status
        .as_ref()
        .is_some_and(|s| s.phase == PlanPhase::Succeeded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifty_node_plan_with_a_canary_and_three_stages_completes_without_islands() {
    let fleet_size = 50;
    let c = cluster(fleet_size, "fifty").await;
    let client = c.client.clone();
    let violations = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(AtomicUsize::new(0));
    let checker = tokio::spawn(island_checker(
        client.clone(),
        violations.clone(),
        seen.clone(),
    ));
    let agent = tokio::spawn(test_agent(client.clone(), Duration::from_millis(20)));
    let (mut operator, port) = spawn_operator(&c, "only-replica", 15);

    let plans: Api<MigrationPlan> = Api::namespaced(client.clone(), NS);
    plans
        .create(&PostParams::default(), &plan(&[25, 50, 100], "0s"))
        .await
        .expect("plan created");
    wait_for_phase(&plans, succeeded, "Succeeded").await;

    let nodes: Api<FleetNode> = Api::namespaced(client.clone(), NS);
    let all = nodes.list(&ListParams::default()).await.expect("nodes");
    assert!(
        all.items
            .iter()
            .all(|n| n.applied_mode() == Some(NetworkMode::IrohOnly)),
        "every node runs IrohOnly"
    );
    assert!(all.items.iter().all(|n| {
        n.labels()
            .get(switchyard_crds::LABEL_PLAN)
            .map(String::as_str)
            == Some("to-iroh")
    }));
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), NS);
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    for r in [
        "CanaryStarted",
        "CanaryPassed",
        "WaveStarted",
        "StageCompleted",
        "Succeeded",
    ] {
        assert!(reasons.iter().any(|x| x == r), "an Event {r}: {reasons:?}");
    }
    assert!(
        seen.load(Ordering::SeqCst) > fleet_size * 6,
        "the checker saw the migration"
    );
    assert_eq!(
        violations.load(Ordering::SeqCst),
        0,
        "no watch event showed an island"
    );
    let metrics = http_get(port, "/metrics").await;
    assert!(
        metrics.contains("switchyard_operator_reconciles_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_operator_plans{phase=\"Succeeded\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_operator_fleetnode_writes_total{outcome=\"ok\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_operator_leader 1"),
        "{metrics}"
    );
    assert!(http_get(port, "/healthz").await.starts_with("HTTP/1.1 200"));
    assert!(http_get(port, "/readyz").await.starts_with("HTTP/1.1 200"));
    let _ = operator.kill().await;
    agent.abort();
    checker.abort();
    let _ = std::fs::remove_dir_all(&c.dir);
    c.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_hands_over_and_no_node_is_stepped_twice() {
    let fleet_size = 20;
    let c = cluster(fleet_size, "ha").await;
    let client = c.client.clone();
    let violations = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(AtomicUsize::new(0));
    let checker = tokio::spawn(island_checker(
        client.clone(),
        violations.clone(),
        seen.clone(),
    ));
    let agent = tokio::spawn(test_agent(client.clone(), Duration::from_millis(50)));
    let (mut a, _) = spawn_operator(&c, "replica-a", 5);
    let (mut b, _) = spawn_operator(&c, "replica-b", 5);

    let plans: Api<MigrationPlan> = Api::namespaced(client.clone(), NS);
    plans
        .create(&PostParams::default(), &plan(&[25, 50, 75, 100], "1s"))
        .await
        .expect("plan created");
    // Mid-plan: stage 1 under way.
    wait_for_phase(
        &plans,
        |p| p.status.as_ref().is_some_and(|s| s.stage >= 1),
        "stage 1",
    )
    .await;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), NS);
    let holder = leases
        .get("switchyard-operator")
        .await
        .expect("lease")
        .spec
        .and_then(|s| s.holder_identity)
        .expect("a leader");
    // SIGKILL: no graceful release, the standby must wait the Lease out.
    match holder.as_str() {
        "replica-a" => a.kill().await.expect("kill a"),
        "replica-b" => b.kill().await.expect("kill b"),
        other => panic!("unexpected holder {other}"),
    }
    wait_for_phase(&plans, succeeded, "Succeeded after the handover").await;
    let new_holder = leases
        .get("switchyard-operator")
        .await
        .expect("lease")
        .spec
        .and_then(|s| s.holder_identity)
        .expect("a leader");
    assert_ne!(new_holder, holder, "the standby took over");

    let nodes: Api<FleetNode> = Api::namespaced(client.clone(), NS);
    for n in nodes
        .list(&ListParams::default())
        .await
        .expect("nodes")
        .items
    {
        assert_eq!(n.applied_mode(), Some(NetworkMode::IrohOnly));
        // Created at 1, then one mode change per stage: a node stepped
        // twice would show a higher generation.
        assert_eq!(
            n.metadata.generation,
            Some(4),
            "{} was stepped more than once per stage",
            n.name_any()
        );
    }
    assert_eq!(
        violations.load(Ordering::SeqCst),
        0,
        "no watch event showed an island"
    );
    let _ = a.kill().await;
    let _ = b.kill().await;
    agent.abort();
    checker.abort();
    let _ = std::fs::remove_dir_all(&c.dir);
    c.server.stop().await;
}
