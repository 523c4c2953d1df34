//! The operator as a real process against the in-memory API server, with
//! stand-in agents that acknowledge modes by patching FleetNode status, and
//! a checker that asserts the island invariant on every FleetNode watch
//! event it sees and records every node's sequence of desired modes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use switchyard_crds::{
    FleetNode, LABEL_CANARY, LABEL_PLAN, MigrationCanary, MigrationCanaryPhase, MigrationPlan,
    NetworkMode, PlanPhase, forms_island,
};
use switchyard_testbed::agents::{Ack, agents};
use switchyard_testbed::apiserver::Config;
use switchyard_testbed::cluster::TestCluster;
use switchyard_testbed::{argocd, chart, ports};

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

/// The sum of every series of the operator's metric `name`.
async fn metric_sum(port: u16, name: &str) -> f64 {
    http_get(port, "/metrics")
        .await
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Wait until the operator's metric `name` sums to more than `before`.
async fn wait_metric_above(port: u16, name: &str, before: f64, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric_sum(port, name).await <= before {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A plain HTTP POST on 127.0.0.1: the status code and the body.
async fn http_post(port: u16, path: &str, auth: Option<&str>, body: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connects");
    let auth = auth.map_or(String::new(), |t| format!("Authorization: {t}\r\n"));
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.expect("head");
    // A server refusing an oversized body may close before it is all sent.
    let _ = conn.write_all(body).await;
    let mut out = Vec::new();
    let _ = conn.read_to_end(&mut out).await;
    let out = String::from_utf8_lossy(&out).into_owned();
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |b| b.1).to_owned();
    (code, body)
}

type History = Arc<Mutex<BTreeMap<String, Vec<NetworkMode>>>>;

/// What the island checker has seen, shared with the test.
#[derive(Default)]
struct Checked {
    /// Watch events that showed an island.
    violations: AtomicUsize,
    /// Watch events seen.
    seen: AtomicUsize,
    /// Why the checker's watch ended, if it did: it then sees nothing, so
    /// a test that asserts no islands must fail.
    ended: Mutex<Option<String>>,
}

/// Check the island invariant on every watch event; count violations and
/// record each node's desired modes in order. Any watch error ends it
/// (a watch that restarts may have missed events) and says why.
async fn island_checker(client: Client, checked: Arc<Checked>, history: History) {
    let nodes: Api<FleetNode> = Api::namespaced(client, NS);
    let mut fleet: BTreeMap<String, (Option<NetworkMode>, Option<NetworkMode>)> = BTreeMap::new();
    let mut events = watcher(nodes, watcher::Config::default()).boxed();
    let why = loop {
        let e = match events.try_next().await {
            Ok(Some(e)) => e,
            Ok(None) => break "the watch stream ended".to_owned(),
            Err(e) => break format!("the watch failed: {e}"),
        };
        match e {
            watcher::Event::Apply(n) | watcher::Event::InitApply(n) => {
                if let Some(m) = n.spec.mode {
                    let mut h = history.lock().expect("history");
                    let modes = h.entry(n.name_any()).or_default();
                    if modes.last() != Some(&m) {
                        modes.push(m);
                    }
                }
                fleet.insert(n.name_any(), (n.spec.mode, n.applied_mode()));
            }
            watcher::Event::Delete(n) => {
                fleet.remove(&n.name_any());
            }
            _ => continue,
        }
        checked.seen.fetch_add(1, Ordering::SeqCst);
        if forms_island(fleet.values().flat_map(|(d, a)| [*d, *a]).flatten()) {
            checked.violations.fetch_add(1, Ordering::SeqCst);
        }
    };
    *checked.ended.lock().expect("ended") = Some(why);
}

/// A cluster, a fleet, stand-in agents, the island checker, and the
/// operator processes a test starts.
struct Harness {
    c: TestCluster,
    client: Client,
    checked: Arc<Checked>,
    history: History,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The operators' HTTP ports, reserved until the harness stops.
    ports: Mutex<Vec<ports::Port>>,
}

impl Harness {
    /// `size` FleetNodes `node-00`.. labelled `app=storage`, reporting
    /// LibP2pOnly; agents behave as `behaviour` says.
    async fn start(
        name: &str,
        size: usize,
        config: Config,
        behaviour: impl Fn(&str, NetworkMode) -> Ack + Send + 'static,
    ) -> Harness {
        let c = TestCluster::start(config, &format!("operator-{name}"))
            .await
            .expect("cluster");
        c.namespace(NS).await.expect("namespace");
        let labels: BTreeMap<String, String> = [("app".into(), "storage".into())].into();
        c.register_nodes(
            NS,
            (0..size).map(|i| format!("node-{i:02}")),
            &labels,
            NetworkMode::LibP2pOnly,
        )
        .await
        .expect("nodes");
        let client = c.client.clone();
        let checked = Arc::new(Checked::default());
        let history = History::default();
        let tasks = vec![
            tokio::spawn(island_checker(
                client.clone(),
                checked.clone(),
                history.clone(),
            )),
            tokio::spawn({
                let client = client.clone();
                async move { agents(client, NS, behaviour).await }
            }),
        ];
        Harness {
            c,
            client,
            checked,
            history,
            tasks,
            ports: Mutex::default(),
        }
    }

    /// The operator as a real process; returns it and its HTTP port.
    fn operator(&self, identity: &str, lease_seconds: u64) -> (tokio::process::Child, u16) {
        self.operator_as(identity, lease_seconds, &self.c.kubeconfig)
    }

    /// The operator as a real process with `env` set on top; returns it
    /// and its HTTP port.
    fn operator_with(
        &self,
        identity: &str,
        lease_seconds: u64,
        env: &[(&str, &str)],
    ) -> (tokio::process::Child, u16) {
        self.spawn_operator(identity, lease_seconds, &self.c.kubeconfig, env)
    }

    /// The operator as a real process with the credentials in
    /// `kubeconfig`; returns it and its HTTP port.
    fn operator_as(
        &self,
        identity: &str,
        lease_seconds: u64,
        kubeconfig: &std::path::Path,
    ) -> (tokio::process::Child, u16) {
        self.spawn_operator(identity, lease_seconds, kubeconfig, &[])
    }

    fn spawn_operator(
        &self,
        identity: &str,
        lease_seconds: u64,
        kubeconfig: &std::path::Path,
        env: &[(&str, &str)],
    ) -> (tokio::process::Child, u16) {
        let reserved = ports::reserve();
        let port = reserved.get();
        self.ports.lock().expect("ports").push(reserved);
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard-operator"))
            .env("KUBECONFIG", kubeconfig)
            .env("SWITCHYARD_NAMESPACE", NS)
            .env("SWITCHYARD_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("POD_NAME", identity)
            .env("SWITCHYARD_LEASE_DURATION", lease_seconds.to_string())
            .env("SWITCHYARD_LEASE_GRACE", "2")
            .env("SWITCHYARD_WEBHOOK_SECRET", "switchyard-webhook")
            // SWITCHYARD_TEST_OPERATOR_LOG=debug to see the operator's logs.
            .env(
                "RUST_LOG",
                std::env::var("SWITCHYARD_TEST_OPERATOR_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(env.iter().copied())
            .kill_on_drop(true)
            .spawn()
            .expect("operator starts");
        (child, port)
    }

    fn plans(&self) -> Api<MigrationPlan> {
        Api::namespaced(self.client.clone(), NS)
    }

    fn nodes(&self) -> Api<FleetNode> {
        Api::namespaced(self.client.clone(), NS)
    }

    async fn all_nodes(&self) -> Vec<FleetNode> {
        self.nodes()
            .list(&ListParams::default())
            .await
            .expect("nodes")
            .items
    }

    /// Events about `name`: (reason, note, count). The recorder folds a
    /// repeated Event into one with a series count.
    async fn events_for(&self, name: &str) -> Vec<(String, String, i32)> {
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), NS);
        events
            .list(&ListParams::default())
            .await
            .expect("events")
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .map(|e| {
                let count = e.series.as_ref().map_or(1, |s| s.count);
                (
                    e.reason.unwrap_or_default(),
                    e.note.unwrap_or_default(),
                    count,
                )
            })
            .collect()
    }

    /// Wait for an Event about `name` with `reason` whose note contains
    /// `text` (Events are recorded after the status they follow).
    async fn wait_event(&self, name: &str, reason: &str, text: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let events = self.events_for(name).await;
            if events.iter().any(|e| e.0 == reason && e.1.contains(text)) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no Event {reason} about {name} containing {text:?}: {events:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_for(
        &self,
        plan: &str,
        want: impl Fn(&MigrationPlan) -> bool,
        what: &str,
    ) -> MigrationPlan {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(p) = self.plans().get(plan).await
                && want(&p)
            {
                return p;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {:?}",
                self.plans()
                    .get(plan)
                    .await
                    .ok()
                    .and_then(|p| p.status)
                    .map(|s| (s.phase, s.stage, s.wave, s.message))
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait until `plan` is rolling back or rolled back; the plan and the
    /// rollback's record (in progress, or the latest finished).
    async fn wait_rollback(
        &self,
        plan: &str,
        what: &str,
    ) -> (MigrationPlan, switchyard_crds::plan::RollbackRecord) {
        let p = self
            .wait_for(
                plan,
                |p| {
                    p.status.as_ref().is_some_and(|s| {
                        matches!(s.phase, PlanPhase::RollingBack | PlanPhase::RolledBack)
                    })
                },
                what,
            )
            .await;
        let s = p.status.as_ref().expect("status");
        let record = s
            .rollback
            .clone()
            .or_else(|| s.rollback_history.last().cloned())
            .expect("a rollback record");
        (p, record)
    }

    /// Assert that no watch event the checker saw showed an island, and
    /// that the checker really watched: its watch is still running, it
    /// recorded at least one desired mode (the harness registers nodes
    /// with none, so every one is a write of the operator's), and (once it has
    /// caught up) its last recorded mode of every node is the node's
    /// current `spec.mode`.
    async fn assert_no_islands(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let nodes = self.all_nodes().await;
            let behind: Vec<String> = {
                let h = self.history.lock().expect("history");
                nodes
                    .iter()
                    .filter(|n| {
                        let last = h.get(&n.name_any()).and_then(|m| m.last()).copied();
                        n.spec.mode.is_some() && last != n.spec.mode
                    })
                    .map(ResourceExt::name_any)
                    .collect()
            };
            if let Some(why) = self.checked.ended.lock().expect("ended").clone() {
                panic!("the island checker stopped early, so it saw nothing since: {why}");
            }
            if behind.is_empty() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the island checker never saw the current mode of {behind:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let writes: usize = self
            .history
            .lock()
            .expect("history")
            .values()
            .map(Vec::len)
            .sum();
        assert!(writes > 0, "the island checker saw no node given a mode");
        assert_eq!(
            self.checked.violations.load(Ordering::SeqCst),
            0,
            "a watch event showed an island"
        );
    }

    async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.c.stop().await;
    }
}

fn plan(name: &str, waves: &[u8], wave_interval: &str) -> MigrationPlan {
    serde_json::from_value(json!({
        "apiVersion": "switchyard.dev/v1alpha1",
        "kind": "MigrationPlan",
        "metadata": {"name": name, "namespace": NS},
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

fn phase_is(phase: PlanPhase) -> impl Fn(&MigrationPlan) -> bool {
    move |p| p.status.as_ref().is_some_and(|s| s.phase == phase)
}

fn acks_after(ms: u64) -> impl Fn(&str, NetworkMode) -> Ack + Send + 'static {
    move |_, _| Ack::After(Duration::from_millis(ms))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifty_node_plan_with_a_canary_and_three_stages_completes_without_islands() {
    let fleet_size = 50;
    let h = Harness::start("fifty", fleet_size, Config::default(), acks_after(20)).await;
    let (mut operator, port) = h.operator("only-replica", 15);
    h.plans()
        .create(
            &PostParams::default(),
            &plan("to-iroh", &[25, 50, 100], "0s"),
        )
        .await
        .expect("plan created");
    let done = h
        .wait_for("to-iroh", phase_is(PlanPhase::Succeeded), "Succeeded")
        .await;
    let health = argocd::health("MigrationPlan", &done);
    assert_eq!(health.status, "Healthy", "Argo CD's view: {health:?}");

    let all = h.all_nodes().await;
    assert!(
        all.iter()
            .all(|n| n.applied_mode() == Some(NetworkMode::IrohOnly)),
        "every node runs IrohOnly"
    );
    assert!(
        all.iter()
            .all(|n| n.labels().get(LABEL_PLAN).map(String::as_str) == Some("to-iroh"))
    );
    for r in [
        "CanaryStarted",
        "CanaryPassed",
        "WaveStarted",
        "StageCompleted",
        "Succeeded",
    ] {
        h.wait_event("to-iroh", r, "").await;
    }
    // Each stage's canary is materialised as a MigrationCanary the plan owns.
    let canaries: Api<MigrationCanary> = Api::namespaced(h.client.clone(), NS);
    for stage in 0..3 {
        let c = canaries
            .get(&format!("to-iroh-stage-{stage}"))
            .await
            .expect("an owned MigrationCanary per stage");
        assert!(
            c.owner_references()
                .iter()
                .any(|o| o.kind == "MigrationPlan" && o.name == "to-iroh"),
            "owned by the plan"
        );
        let health = argocd::health("MigrationCanary", &c);
        assert_eq!(health.status, "Healthy", "Argo CD's view: {health:?}");
        let st = c.status.expect("canary status");
        assert_eq!(st.phase, MigrationCanaryPhase::Succeeded, "stage {stage}");
        assert_eq!(st.nodes.len(), 2);
    }
    assert!(
        h.checked.seen.load(Ordering::SeqCst) > fleet_size * 6,
        "the checker saw the migration"
    );
    h.assert_no_islands().await;
    let metrics = http_get(port, "/metrics").await;
    for line in [
        "switchyard_operator_reconciles_total",
        "switchyard_operator_plans{phase=\"Succeeded\"} 1",
        "switchyard_operator_fleetnode_writes_total{outcome=\"ok\"}",
        "switchyard_operator_leader 1",
        "switchyard_operator_plan_nodes{mode=\"IrohOnly\",plan=\"to-iroh\"} 50",
        "switchyard_operator_plan_nodes_desired{mode=\"IrohOnly\",plan=\"to-iroh\"} 50",
        "switchyard_operator_reconcile_duration_seconds_bucket{controller=\"migrationplan\"",
        "switchyard_plan_progress_ratio{plan=\"to-iroh\"} 1",
        "switchyard_plan_eta_seconds{plan=\"to-iroh\"} 0",
        "switchyard_plan_nodes_migrated{plan=\"to-iroh\"} 50",
        "switchyard_plan_velocity_nodes_per_hour{plan=\"to-iroh\"}",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    assert!(http_get(port, "/healthz").await.starts_with("HTTP/1.1 200"));
    assert!(http_get(port, "/readyz").await.starts_with("HTTP/1.1 200"));
    let _ = operator.kill().await;
    h.stop().await;
}

/// Created at generation 1, then one mode change per stage: a node stepped
/// twice would show a higher generation.
async fn assert_each_node_stepped_once_per_stage(h: &Harness) {
    for n in h.all_nodes().await {
        assert_eq!(n.applied_mode(), Some(NetworkMode::IrohOnly));
        assert_eq!(
            n.metadata.generation,
            Some(4),
            "{} was stepped more than once per stage: {:?}",
            n.name_any(),
            h.history.lock().expect("history").get(&n.name_any())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_hands_over_and_no_node_is_stepped_twice() {
    let h = Harness::start("ha", 20, Config::default(), acks_after(50)).await;
    let (mut a, _) = h.operator("replica-a", 5);
    let (mut b, _) = h.operator("replica-b", 5);
    h.plans()
        .create(
            &PostParams::default(),
            &plan("to-iroh", &[25, 50, 75, 100], "1s"),
        )
        .await
        .expect("plan created");
    // Mid-plan: stage 1 under way.
    h.wait_for(
        "to-iroh",
        |p| p.status.as_ref().is_some_and(|s| s.stage >= 1),
        "stage 1",
    )
    .await;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(h.client.clone(), NS);
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
    h.wait_for(
        "to-iroh",
        phase_is(PlanPhase::Succeeded),
        "Succeeded after the handover",
    )
    .await;
    let new_holder = leases
        .get("switchyard-operator")
        .await
        .expect("lease")
        .spec
        .and_then(|s| s.holder_identity)
        .expect("a leader");
    assert_ne!(new_holder, holder, "the standby took over");
    assert_each_node_stepped_once_per_stage(&h).await;
    h.assert_no_islands().await;
    let _ = a.kill().await;
    let _ = b.kill().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_only_operator_mid_wave_steps_no_node_twice() {
    let h = Harness::start("restart", 20, Config::default(), acks_after(50)).await;
    let (mut first, _) = h.operator("only-replica", 5);
    h.plans()
        .create(
            &PostParams::default(),
            &plan("to-iroh", &[25, 50, 75, 100], "1s"),
        )
        .await
        .expect("plan created");
    h.wait_for(
        "to-iroh",
        |p| {
            p.status
                .as_ref()
                .is_some_and(|s| s.stage >= 1 && s.wave.is_some_and(|w| w >= 1))
        },
        "stage 1 past its first wave",
    )
    .await;
    first.kill().await.expect("kill");
    // The same Pod identity comes back, as a restarted container would.
    let (mut second, _) = h.operator("only-replica", 5);
    h.wait_for(
        "to-iroh",
        phase_is(PlanPhase::Succeeded),
        "Succeeded after the restart",
    )
    .await;
    assert_each_node_stepped_once_per_stage(&h).await;
    h.assert_no_islands().await;
    let _ = second.kill().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_new_changes_and_resume_continues_from_the_same_wave() {
    let h = Harness::start("pause", 20, Config::default(), acks_after(50)).await;
    let (mut operator, _) = h.operator("only-replica", 15);
    h.plans()
        .create(
            &PostParams::default(),
            &plan("to-iroh", &[25, 50, 75, 100], "2s"),
        )
        .await
        .expect("plan created");
    h.wait_for(
        "to-iroh",
        |p| {
            p.status.as_ref().is_some_and(|s| {
                s.phase == PlanPhase::Progressing && s.wave.is_some_and(|w| w >= 1)
            })
        },
        "stage 0 past its first wave",
    )
    .await;
    h.plans()
        .patch(
            "to-iroh",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": true}})),
        )
        .await
        .expect("pause");
    let paused = h
        .wait_for(
            "to-iroh",
            |p| {
                p.status.as_ref().is_some_and(|s| {
                    s.phase == PlanPhase::Paused && s.observed_generation == p.metadata.generation
                })
            },
            "Paused",
        )
        .await;
    let at = paused.status.clone().expect("status");
    let generations: BTreeMap<String, Option<i64>> = h
        .all_nodes()
        .await
        .into_iter()
        .map(|n| (n.name_any(), n.metadata.generation))
        .collect();
    // Watch for longer than a wave's soak: a running plan would have
    // started the next wave by then. Nothing may change a node's spec.
    let mut changes = watcher(h.nodes(), watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .boxed();
    let window = tokio::time::timeout(Duration::from_secs(4), async {
        while let Ok(Some(n)) = changes.try_next().await {
            let before = generations.get(&n.name_any()).copied().flatten();
            assert_eq!(
                n.metadata.generation,
                before,
                "{} changed while the plan was paused",
                n.name_any()
            );
        }
    })
    .await;
    assert!(window.is_err(), "the watch ran for the whole window");
    h.plans()
        .patch(
            "to-iroh",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": false}})),
        )
        .await
        .expect("resume");
    let resumed = h
        .wait_for(
            "to-iroh",
            |p| {
                p.status
                    .as_ref()
                    .is_some_and(|s| s.phase != PlanPhase::Paused)
            },
            "resumed",
        )
        .await
        .status
        .expect("status");
    assert_eq!(
        (resumed.stage, resumed.wave),
        (at.stage, at.wave),
        "resume continues from the wave it paused in"
    );
    h.wait_for("to-iroh", phase_is(PlanPhase::Succeeded), "Succeeded")
        .await;
    h.wait_event("to-iroh", "Succeeded", "").await;
    let events = h.events_for("to-iroh").await;
    let mut waves: Vec<&str> = events
        .iter()
        .filter(|e| e.0 == "WaveStarted")
        .map(|e| e.1.as_str())
        .collect();
    let all = waves.len();
    waves.sort_unstable();
    waves.dedup();
    assert_eq!(all, waves.len(), "no wave started twice: {events:?}");
    assert!(
        events
            .iter()
            .filter(|e| e.0 == "WaveStarted")
            .all(|e| e.2 == 1),
        "no WaveStarted Event repeated: {events:?}"
    );
    assert!(events.iter().any(|e| e.0 == "Paused"));
    assert!(events.iter().any(|e| e.0 == "Resumed"));
    assert_each_node_stepped_once_per_stage(&h).await;
    h.assert_no_islands().await;
    let _ = operator.kill().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_rollback_from_the_third_stage_returns_every_node_in_the_safe_order() {
    let h = Harness::start("rollback", 20, Config::default(), acks_after(30)).await;
    let (mut operator, _) = h.operator("only-replica", 15);
    h.plans()
        .create(
            &PostParams::default(),
            &plan("to-iroh", &[50, 100], "500ms"),
        )
        .await
        .expect("plan created");
    // The third stage (IrohOnly) under way, with nodes running it.
    let under_way = h
        .wait_for(
            "to-iroh",
            |p| {
                p.status
                    .as_ref()
                    .is_some_and(|s| s.stage == 2 && s.nodes.by_mode.iroh_only > 0)
            },
            "nodes in IrohOnly in the third stage",
        )
        .await;
    let health = argocd::health("MigrationPlan", &under_way);
    assert_eq!(health.status, "Progressing", "Argo CD's view: {health:?}");
    h.plans()
        .patch(
            "to-iroh",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rollbackRequest": {"reason": "test: roll back"}}})),
        )
        .await
        .expect("rollback requested");
    let done = h
        .wait_for("to-iroh", phase_is(PlanPhase::RolledBack), "RolledBack")
        .await;
    let health = argocd::health("MigrationPlan", &done);
    assert_eq!(health.status, "Degraded", "Argo CD's view: {health:?}");
    for n in h.all_nodes().await {
        assert_eq!(
            n.spec.mode,
            Some(NetworkMode::LibP2pOnly),
            "{}",
            n.name_any()
        );
        assert_eq!(
            n.applied_mode(),
            Some(NetworkMode::LibP2pOnly),
            "{}",
            n.name_any()
        );
    }
    // The safe order: every node's modes after the request only move back
    // toward LibP2pOnly, and none leaves IrohOnly except through a dual mode
    // (a direct IrohOnly -> LibP2pOnly would cut it off in between).
    // Each node's desired modes rise to a peak and then only fall: the
    // rollback never steps a node forward, never skips from IrohOnly
    // straight to LibP2pOnly (cut off in between), and every node moved.
    let rank = |m: &NetworkMode| NetworkMode::ALL.iter().position(|x| x == m);
    // The checker's own watch may trail the plan's status a little.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !h
        .history
        .lock()
        .expect("history")
        .values()
        .all(|m| m.last() == Some(&NetworkMode::LibP2pOnly))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the checker never saw every node back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (node, modes) in h.history.lock().expect("history").iter() {
        let peak = (0..modes.len())
            .max_by_key(|&i| (rank(&modes[i]), i))
            .expect("a mode");
        assert!(
            modes[..=peak].windows(2).all(|w| rank(&w[0]) < rank(&w[1])),
            "{node} went forward out of order: {modes:?}"
        );
        let back = &modes[peak..];
        assert!(
            back.windows(2).all(|w| rank(&w[1]) < rank(&w[0])),
            "{node} went back out of order: {modes:?}"
        );
        assert!(
            back.windows(2)
                .all(|w| !(w[0] == NetworkMode::IrohOnly && w[1] == NetworkMode::LibP2pOnly)),
            "{node} left IrohOnly without a dual hop: {modes:?}"
        );
        assert_eq!(
            back.last(),
            Some(&NetworkMode::LibP2pOnly),
            "{node}: {modes:?}"
        );
    }
    h.assert_no_islands().await;
    let st = done.status.expect("status");
    let last = st.rollback_history.last().expect("a rollback record");
    assert_eq!(last.trigger, "Manual");
    assert_eq!(last.nodes, 20);
    h.wait_event("to-iroh", "RollbackStarted", "Manual").await;
    h.wait_event("to-iroh", "RollbackFinished", "20 node(s)")
        .await;
    let _ = operator.kill().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_never_acknowledges_holds_its_wave_then_trips_the_deadline() {
    let h = Harness::start("deadline", 10, Config::default(), |node: &str, _| {
        if node == "node-03" {
            Ack::Never
        } else {
            Ack::After(Duration::from_millis(30))
        }
    })
    .await;
    let (mut operator, _) = h.operator("only-replica", 15);
    let mut p = plan("to-iroh", &[50, 100], "0s");
    p.spec.canary = Some(
        serde_json::from_value(json!({"nodes": ["node-03"], "duration": "1s"})).expect("canary"),
    );
    p.spec.progress_deadline = "3s".parse().expect("duration");
    p.spec.rollback.on_progress_deadline = true;
    h.plans()
        .create(&PostParams::default(), &p)
        .await
        .expect("plan created");
    let stuck = h
        .wait_for(
            "to-iroh",
            |p| {
                p.status.as_ref().is_some_and(|s| {
                    s.conditions.iter().any(|c| {
                        c.type_ == "Degraded"
                            && c.status == "True"
                            && c.reason == "ProgressDeadlineExceeded"
                    })
                })
            },
            "the progress deadline",
        )
        .await;
    let st = stuck.status.expect("status");
    let degraded = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .expect("Degraded");
    // The condition names the node, both in the status the deadline wrote
    // and in the rollback's after it (its message carries the reason).
    assert!(
        degraded.message.contains("node-03"),
        "the Degraded condition names the node: {st:?}"
    );
    // The failure policy: onProgressDeadline with automatic rollback.
    let rolling = h
        .wait_for(
            "to-iroh",
            |p| {
                p.status.as_ref().is_some_and(|s| {
                    matches!(s.phase, PlanPhase::RollingBack | PlanPhase::RolledBack)
                })
            },
            "the rollback the policy asks for",
        )
        .await;
    assert_eq!(
        rolling
            .status
            .and_then(|s| s.rollback)
            .map(|r| r.trigger)
            .as_deref(),
        Some("ProgressDeadline")
    );
    h.wait_event("to-iroh", "ProgressDeadlineExceeded", "node-03")
        .await;
    // The wave never started: only the canary node was ever moved.
    for n in h.all_nodes().await {
        if n.name_any() != "node-03" {
            assert_eq!(
                n.metadata.generation,
                Some(1),
                "{} moved while the canary was stuck",
                n.name_any()
            );
        }
    }
    h.assert_no_islands().await;
    let _ = operator.kill().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_example_ends_invalid_naming_its_field_and_touches_no_node() {
    // A cluster that does not validate (validation off, or a CRD installed
    // without its schema): the operator is the last line of defence.
    let config = Config {
        validate_custom_resources: false,
        ..Config::default()
    };
    let h = Harness::start("invalid", 0, config, acks_after(10)).await;
    let labels: BTreeMap<String, String> = [("app".into(), "storage-node".into())].into();
    h.c.register_nodes(
        NS,
        (0..4).map(|i| format!("storage-{i}")),
        &labels,
        NetworkMode::LibP2pOnly,
    )
    .await
    .expect("nodes");
    let (mut operator, _) = h.operator("only-replica", 15);
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/invalid");
    let raw = |kind: &str| -> Api<kube::api::DynamicObject> {
        let ar = match kind {
            "MigrationCanary" => kube::api::ApiResource::erase::<MigrationCanary>(&()),
            _ => kube::api::ApiResource::erase::<MigrationPlan>(&()),
        };
        Api::namespaced_with(h.client.clone(), NS, &ar)
    };
    let mut expected = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("examples/invalid")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let text = std::fs::read_to_string(&path).expect("example");
        let field = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect-field: "))
            .expect("an expect-field header")
            .trim()
            .to_owned();
        let mut value: serde_json::Value = serde_saphyr::from_str(&text).expect("YAML");
        value["metadata"]["namespace"] = json!(NS);
        let kind = value["kind"].as_str().unwrap_or_default().to_owned();
        let obj: kube::api::DynamicObject = serde_json::from_value(value).expect("object");
        let name = obj.name_any();
        raw(&kind)
            .create(&PostParams::default(), &obj)
            .await
            .unwrap_or_else(|e| panic!("{}: stored without validation: {e}", path.display()));
        expected.push((kind, name, field));
    }
    assert_eq!(expected.len(), 16, "every example was submitted");
    for (kind, name, field) in &expected {
        let deadline = tokio::time::Instant::now() + WAIT;
        let status = loop {
            let obj = raw(kind).get(name).await.expect("object");
            let status = obj.data.get("status").cloned().unwrap_or_default();
            if status["phase"] == "Invalid" {
                break status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{kind} {name} never became Invalid: {status}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let message = status["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(field.as_str()),
            "{name}: the message names {field}: {message}"
        );
        let conditions = status["conditions"].as_array().cloned().unwrap_or_default();
        assert!(
            conditions
                .iter()
                .any(|c| c["type"] == "Degraded" && c["status"] == "True"),
            "{name}: Degraded: {conditions:?}"
        );
        let reason = if kind == "MigrationCanary" {
            "CanaryInvalid"
        } else {
            "PlanInvalid"
        };
        h.wait_event(name, reason, field).await;
    }
    for n in h.all_nodes().await {
        assert_eq!(n.metadata.generation, Some(1), "{} changed", n.name_any());
        assert_eq!(n.spec.mode, None);
        assert!(
            n.labels().get(LABEL_PLAN).is_none(),
            "{} labelled",
            n.name_any()
        );
    }
    let _ = operator.kill().await;
    h.stop().await;
}

/// Nodes whose pod has been gone past the grace period (marked by the
/// sweep) are not picked by a standalone MigrationCanary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_canary_does_not_pick_nodes_whose_pod_is_gone() {
    let h = Harness::start("canary-absent", 6, Config::default(), acks_after(30)).await;
    // In the order the canary would pick them, so the ones it would take
    // first are the ones whose pod is gone.
    let mut names: Vec<String> = h.all_nodes().await.iter().map(|n| n.name_any()).collect();
    names.sort_by_cached_key(|n| {
        (
            switchyard_operator::planner::order_key("present-only", n),
            n.clone(),
        )
    });
    let nodes: Api<FleetNode> = Api::namespaced(h.client.clone(), NS);
    // Three of six gone: two canaries and a baseline of one remain.
    for gone in &names[..3] {
        let mark = json!({"metadata": {"annotations": {switchyard_crds::ANNOTATION_ABSENT_SINCE: "2026-12-01T00:00:00Z"}}});
        nodes
            .patch(gone, &PatchParams::default(), &Patch::Merge(&mark))
            .await
            .expect("marked absent");
    }
    let (mut operator, _) = h.operator("only-replica", 15);
    let canaries: Api<MigrationCanary> = Api::namespaced(h.client.clone(), NS);
    let canary: MigrationCanary = serde_json::from_value(json!({
        "apiVersion": "switchyard.dev/v1alpha1",
        "kind": "MigrationCanary",
        "metadata": {"name": "present-only", "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": "storage"}},
            "count": 2,
            "mode": "DualPreferIroh",
            "duration": "1s",
        }
    }))
    .expect("canary");
    canaries
        .create(&PostParams::default(), &canary)
        .await
        .expect("canary created");
    let st = eventually("the canary picks its nodes", || async {
        let s = canaries.get("present-only").await.ok()?.status?;
        (s.nodes.len() == 2).then_some(s)
    })
    .await;
    assert!(
        st.nodes.iter().all(|n| names[3..].contains(n)),
        "only nodes whose pod is there: picked {:?}, gone {:?}",
        st.nodes,
        &names[..3]
    );
    let _ = operator.kill().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_canary_tries_its_mode_and_returns_the_nodes() {
    let h = Harness::start("canary", 6, Config::default(), acks_after(30)).await;
    let (mut operator, _) = h.operator("only-replica", 15);
    let canaries: Api<MigrationCanary> = Api::namespaced(h.client.clone(), NS);
    let canary: MigrationCanary = serde_json::from_value(json!({
        "apiVersion": "switchyard.dev/v1alpha1",
        "kind": "MigrationCanary",
        "metadata": {"name": "try-iroh", "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": "storage"}},
            "count": 2,
            "mode": "DualPreferIroh",
            "duration": "1s",
        }
    }))
    .expect("canary");
    canaries
        .create(&PostParams::default(), &canary)
        .await
        .expect("canary created");
    let deadline = tokio::time::Instant::now() + WAIT;
    let done = loop {
        let c = canaries.get("try-iroh").await.expect("canary");
        if c.status
            .as_ref()
            .is_some_and(|s| s.phase == MigrationCanaryPhase::Succeeded)
        {
            break c;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the canary did not finish: {:?}",
            c.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let st = done.status.expect("status");
    assert_eq!(st.nodes.len(), 2);
    assert_eq!(st.verdict, Some(switchyard_crds::Verdict::Pass));
    assert!(st.started_at.is_some());
    // The status is written before the release: wait for the nodes (and
    // for the checker's own watch) to catch up.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let released = h
            .all_nodes()
            .await
            .iter()
            .all(|n| n.labels().get(LABEL_CANARY).is_none());
        let history = h.history.lock().expect("history").clone();
        let returned = st.nodes.iter().all(|name| {
            history.get(name).map(Vec::as_slice)
                == Some(&[NetworkMode::DualPreferIroh, NetworkMode::LibP2pOnly][..])
        });
        if released && returned {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the canary nodes tried the mode, came back and were released: {history:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in h.all_nodes().await {
        assert_eq!(n.applied_mode(), Some(NetworkMode::LibP2pOnly));
        if !st.nodes.contains(&n.name_any()) {
            assert_eq!(n.metadata.generation, Some(1), "the baseline is untouched");
        }
    }
    for r in ["CanaryStarted", "CanaryVerdict", "CanaryFinished"] {
        h.wait_event("try-iroh", r, "").await;
    }
    // A canary whose mode would cut its nodes off is Invalid and moves
    // nothing.
    let mut island = canary.clone();
    island.metadata.name = Some("island".into());
    island.spec.mode = NetworkMode::IrohOnly;
    canaries
        .create(&PostParams::default(), &island)
        .await
        .expect("created");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let c = canaries.get("island").await.expect("canary");
        if let Some(s) = c
            .status
            .as_ref()
            .filter(|s| s.phase == MigrationCanaryPhase::Invalid)
        {
            assert!(
                s.message
                    .as_deref()
                    .unwrap_or_default()
                    .contains("spec.mode"),
                "{s:?}"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{:?}", c.status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.assert_no_islands().await;
    let _ = operator.kill().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_plan_releases_its_nodes_where_they_are() {
    let h = Harness::start("delete", 10, Config::default(), acks_after(30)).await;
    let (mut operator, _) = h.operator("only-replica", 15);
    h.plans()
        .create(&PostParams::default(), &plan("to-iroh", &[50, 100], "30s"))
        .await
        .expect("plan created");
    h.wait_for(
        "to-iroh",
        |p| {
            p.status.as_ref().is_some_and(|s| {
                s.phase == PlanPhase::Progressing && s.nodes.by_mode.dual_prefer_libp2p >= 5
            })
        },
        "the first wave acknowledged",
    )
    .await;
    let modes: BTreeMap<String, Option<NetworkMode>> = h
        .all_nodes()
        .await
        .into_iter()
        .map(|n| (n.name_any(), n.spec.mode))
        .collect();
    h.plans()
        .delete("to-iroh", &DeleteParams::default())
        .await
        .expect("deleted");
    let deadline = tokio::time::Instant::now() + WAIT;
    while h.plans().get_opt("to-iroh").await.expect("get").is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the finalizer never let the plan go"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in h.all_nodes().await {
        assert!(
            n.labels().get(LABEL_PLAN).is_none(),
            "{} released",
            n.name_any()
        );
        assert_eq!(
            n.spec.mode,
            modes.get(&n.name_any()).copied().flatten(),
            "{} kept its mode",
            n.name_any()
        );
    }
    h.assert_no_islands().await;
    let _ = operator.kill().await;
    h.stop().await;
}

/// An Alertmanager (payload version 4) notification.
fn notification(status: &str, alerts: &[(&str, &[(&str, &str)])]) -> Vec<u8> {
    let alerts: Vec<serde_json::Value> = alerts
        .iter()
        .map(|(fingerprint, labels)| {
            let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
            json!({"status": status, "labels": labels, "annotations": {},
                   "startsAt": "2026-11-29T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                   "generatorURL": "", "fingerprint": fingerprint})
        })
        .collect();
    serde_json::to_vec(&json!({
        "version": "4", "groupKey": "{}:{}", "truncatedAlerts": 0, "status": status,
        "receiver": "switchyard", "groupLabels": {}, "commonLabels": {},
        "commonAnnotations": {}, "externalURL": "http://127.0.0.1:9093", "alerts": alerts,
    }))
    .expect("json")
}

/// The webhook's token, `s3cret-token`, in the Secret the operator reads.
async fn webhook_secret(h: &Harness) {
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(h.client.clone(), NS);
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "switchyard-webhook"},
        "data": {"token": "czNjcmV0LXRva2Vu"},
    }))
    .expect("secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_pauses_plans_that_ask_for_it_and_only_the_one_that_says_so_resumes_on_resolve() {
    let h = Harness::start("alert-pause", 10, Config::default(), acks_after(20)).await;
    let cache: BTreeMap<String, String> = [("app".into(), "cache".into())].into();
    h.c.register_nodes(
        NS,
        (0..10).map(|i| format!("cache-{i:02}")),
        &cache,
        NetworkMode::LibP2pOnly,
    )
    .await
    .expect("cache nodes");
    webhook_secret(&h).await;
    let (mut operator, port) = h.operator("only-replica", 15);
    let pausing = |name: &str, app: &str, alert: &str, resume: bool| {
        let mut p = plan(name, &[50, 100], "1s");
        // Stop short of IrohOnly: the island checker sees both groups as
        // one fleet.
        p.spec.stages.pop();
        p.spec.selector =
            serde_json::from_value(json!({"matchLabels": {"app": app}})).expect("selector");
        p.spec.rollback.alert_matchers =
            vec![serde_json::from_value(json!({"labels": {"alertname": alert}})).expect("matcher")];
        p.spec.rollback.alert_action = switchyard_crds::plan::AlertAction::Pause;
        p.spec.rollback.resume_when_alerts_resolve = resume;
        p
    };
    for p in [
        pausing("resumes", "storage", "StorageErrors", true),
        pausing("holds", "cache", "CacheErrors", false),
    ] {
        h.plans()
            .create(&PostParams::default(), &p)
            .await
            .expect("plan created");
    }
    for name in ["resumes", "holds"] {
        h.wait_for(
            name,
            |p| {
                p.status
                    .as_ref()
                    .is_some_and(|s| matches!(s.phase, PlanPhase::Canary | PlanPhase::Progressing))
            },
            "under way",
        )
        .await;
    }
    let alerts: [(&str, &[(&str, &str)]); 2] = [
        ("fp-storage", &[("alertname", "StorageErrors")]),
        ("fp-cache", &[("alertname", "CacheErrors")]),
    ];
    let (path, good) = ("/webhook/alertmanager", Some("Bearer s3cret-token"));
    assert_eq!(
        http_post(port, path, good, &notification("firing", &alerts))
            .await
            .0,
        200
    );
    for name in ["resumes", "holds"] {
        let p = h
            .wait_for(name, phase_is(PlanPhase::Paused), "paused by the alert")
            .await;
        assert!(p.spec.paused, "{name}: spec.paused set");
        let health = argocd::health("MigrationPlan", &p);
        assert_eq!(health.status, "Suspended", "Argo CD's view: {health:?}");
        assert_eq!(
            p.annotations().get(switchyard_crds::ANNOTATION_PAUSED_BY),
            Some(&"alert".to_owned())
        );
        let s = p.status.expect("status");
        assert!(s.rollback.is_none(), "{name}: paused, not rolled back");
        // The Event says which alert, and what happens next.
        h.wait_event(name, "Paused", "Errors firing since").await;
    }
    h.wait_event("resumes", "Paused", "it resumes when the alert resolves")
        .await;
    h.wait_event("holds", "Paused", "set spec.paused to false")
        .await;
    assert_eq!(
        http_post(port, path, good, &notification("resolved", &alerts))
            .await
            .0,
        200
    );
    // The one that asks resumes and finishes; the other stays paused.
    let p = h
        .wait_for(
            "resumes",
            phase_is(PlanPhase::Succeeded),
            "resumed and done",
        )
        .await;
    assert!(!p.spec.paused);
    assert!(
        !p.annotations()
            .contains_key(switchyard_crds::ANNOTATION_PAUSED_BY)
    );
    h.wait_event("resumes", "AlertsResolved", "resolved").await;
    let held = h.plans().get("holds").await.expect("plan");
    assert!(
        held.spec.paused,
        "no resume without resumeWhenAlertsResolve"
    );
    assert_eq!(held.status.map(|s| s.phase), Some(PlanPhase::Paused));
    h.assert_no_islands().await;
    operator.kill().await.expect("kill");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firing_alert_rolls_back_the_matching_plan_and_bad_webhook_calls_change_nothing() {
    let h = Harness::start("alerts", 10, Config::default(), acks_after(20)).await;
    webhook_secret(&h).await;
    let (mut operator, port) = h.operator("only-replica", 15);
    let mut p = plan("guarded", &[50, 100], "30s");
    p.spec.rollback.alert_matchers = vec![
        serde_json::from_value(json!({"labels": {"alertname": "FleetErrors", "fleet": "storage"}}))
            .expect("matcher"),
    ];
    h.plans()
        .create(&PostParams::default(), &p)
        .await
        .expect("plan created");
    h.wait_for(
        "guarded",
        phase_is(PlanPhase::Progressing),
        "the first wave",
    )
    .await;
    let generation_before = h
        .plans()
        .get("guarded")
        .await
        .expect("plan")
        .metadata
        .generation;

    // Bad calls: each refused, nothing recorded.
    let path = "/webhook/alertmanager";
    let hit = notification(
        "firing",
        &[(
            "fp-hit",
            &[
                ("alertname", "FleetErrors"),
                ("fleet", "storage"),
                ("severity", "critical"),
            ],
        )],
    );
    let good = Some("Bearer s3cret-token");
    assert_eq!(http_post(port, path, None, &hit).await.0, 401, "no token");
    assert_eq!(
        http_post(port, path, Some("Bearer wrong"), &hit).await.0,
        401,
        "wrong token"
    );
    assert_eq!(
        http_post(port, path, Some("s3cret-token"), &hit).await.0,
        401,
        "not a bearer token"
    );
    let (code, body) = http_post(port, path, good, b"{not json").await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("not an Alertmanager webhook payload"),
        "{body}"
    );
    let v3 = String::from_utf8(hit.clone())
        .expect("utf8")
        .replace("\"version\":\"4\"", "\"version\":\"3\"");
    assert_eq!(
        http_post(port, path, good, v3.as_bytes()).await.0,
        400,
        "version 3"
    );
    let huge = vec![b' '; 2 * 1024 * 1024];
    assert_eq!(http_post(port, path, good, &huge).await.0, 413, "oversized");
    // An alert no matcher selects is accepted and changes nothing.
    let other = notification("firing", &[("fp-other", &[("alertname", "DiskFull")])]);
    let before = metric_sum(port, "switchyard_operator_reconciles_total").await;
    assert_eq!(http_post(port, path, good, &other).await.0, 200);
    // The new alert wakes the controller: wait for the plan's next
    // reconcile, then check it changed nothing.
    wait_metric_above(
        port,
        "switchyard_operator_reconciles_total",
        before,
        "no reconcile after the alert",
    )
    .await;
    let p = h.plans().get("guarded").await.expect("plan");
    assert_eq!(
        p.status.as_ref().map(|s| s.phase),
        Some(PlanPhase::Progressing)
    );
    assert_eq!(
        p.metadata.generation, generation_before,
        "the spec is untouched"
    );

    // The matching alert: the plan rolls back, recording why.
    let sent = std::time::Instant::now();
    assert_eq!(http_post(port, path, good, &hit).await.0, 200);
    let (_, record) = h.wait_rollback("guarded", "the rollback").await;
    let to_rollback = sent.elapsed();
    assert_eq!(record.trigger, "Alert");
    assert!(record.reason.contains("FleetErrors"), "{}", record.reason);
    eprintln!("webhook to RollingBack: {to_rollback:?}");
    // Repeats are idempotent; resolving does not resume.
    assert_eq!(http_post(port, path, good, &hit).await.0, 200);
    let resolved = notification(
        "resolved",
        &[(
            "fp-hit",
            &[
                ("alertname", "FleetErrors"),
                ("fleet", "storage"),
                ("severity", "critical"),
            ],
        )],
    );
    assert_eq!(http_post(port, path, good, &resolved).await.0, 200);
    let p = h
        .wait_for("guarded", phase_is(PlanPhase::RolledBack), "rolled back")
        .await;
    let s = p.status.expect("status");
    assert_eq!(
        s.rollback_history.len(),
        1,
        "one rollback, not one per notification"
    );
    assert!(
        h.all_nodes()
            .await
            .iter()
            .all(|n| n.spec.mode.is_none_or(|m| m == NetworkMode::LibP2pOnly)),
        "every node back on LibP2pOnly"
    );
    let metrics = http_get(port, "/metrics").await;
    assert!(
        metrics.contains("switchyard_operator_webhook_requests_total{outcome=\"unauthorized\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_operator_webhook_requests_total{outcome=\"bad_request\"} 2")
    );
    h.assert_no_islands().await;
    operator.kill().await.expect("kill");
    h.stop().await;
}

/// Wait until the operator on `port` answers /readyz with 200: its
/// webhook token is loaded and it has read the alert record.
async fn wait_ready(port: u16, who: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !http_get(port, "/readyz").await.starts_with("HTTP/1.1 200") {
        assert!(tokio::time::Instant::now() < deadline, "{who} never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The Lease holder's identity.
async fn lease_holder(h: &Harness) -> String {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(h.client.clone(), NS);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(holder) = leases
            .get_opt("switchyard-operator")
            .await
            .expect("lease")
            .and_then(|l| l.spec?.holder_identity)
        {
            return holder;
        }
        assert!(tokio::time::Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A plan of 10 nodes that rolls back on `alertname=FleetErrors`, under
/// way (its 30 s waves keep it going for the test's length).
async fn guarded_plan(h: &Harness) {
    let mut p = plan("guarded", &[50, 100], "30s");
    p.spec.rollback.alert_matchers = vec![
        serde_json::from_value(json!({"labels": {"alertname": "FleetErrors"}})).expect("matcher"),
    ];
    h.plans()
        .create(&PostParams::default(), &p)
        .await
        .expect("plan created");
    h.wait_for(
        "guarded",
        phase_is(PlanPhase::Progressing),
        "the first wave",
    )
    .await;
}

fn fleet_errors() -> Vec<u8> {
    notification("firing", &[("fp-fleet", &[("alertname", "FleetErrors")])])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_posted_to_the_standby_rolls_the_plan_back() {
    let h = Harness::start("alert-standby", 10, Config::default(), acks_after(20)).await;
    webhook_secret(&h).await;
    let (mut a, port_a) = h.operator("replica-a", 15);
    let (mut b, port_b) = h.operator("replica-b", 15);
    // Both are ready, the standby included: either may take the alert.
    wait_ready(port_a, "replica-a").await;
    wait_ready(port_b, "replica-b").await;
    guarded_plan(&h).await;
    let standby = match lease_holder(&h).await.as_str() {
        "replica-a" => port_b,
        "replica-b" => port_a,
        other => panic!("unexpected holder {other}"),
    };
    let (code, body) = http_post(
        standby,
        "/webhook/alertmanager",
        Some("Bearer s3cret-token"),
        &fleet_errors(),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (_, record) = h
        .wait_rollback("guarded", "the leader acting on the standby's alert")
        .await;
    assert_eq!(record.trigger, "Alert");
    assert!(record.reason.contains("FleetErrors"), "{}", record.reason);
    h.assert_no_islands().await;
    let _ = a.kill().await;
    let _ = b.kill().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_accepted_just_before_the_leader_dies_rolls_the_plan_back_under_the_next() {
    let h = Harness::start("alert-failover", 10, Config::default(), acks_after(20)).await;
    webhook_secret(&h).await;
    let (mut a, port_a) = h.operator("replica-a", 4);
    guarded_plan(&h).await;
    wait_ready(port_a, "replica-a").await;
    let (code, body) = http_post(
        port_a,
        "/webhook/alertmanager",
        Some("Bearer s3cret-token"),
        &fleet_errors(),
    )
    .await;
    // SIGKILL as soon as the alert is accepted: no graceful anything.
    a.kill().await.expect("kill the leader");
    assert_eq!(code, 200, "{body}");
    // The accepted alert is on record in the API, not in a dead process.
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(h.client.clone(), NS);
    let record = cms
        .get("switchyard-operator-alerts")
        .await
        .expect("the alert record");
    assert!(
        record.data.unwrap_or_default().contains_key("fp-fleet"),
        "the alert is recorded by fingerprint"
    );
    // A replica started after the old one died, with an empty memory,
    // takes over and acts on it.
    let (mut b, _) = h.operator("replica-b", 4);
    let (_, record) = h
        .wait_rollback("guarded", "the new leader acting on the alert")
        .await;
    assert_eq!(record.trigger, "Alert");
    assert!(record.reason.contains("FleetErrors"), "{}", record.reason);
    h.wait_for("guarded", phase_is(PlanPhase::RolledBack), "rolled back")
        .await;
    assert_eq!(lease_holder(&h).await, "replica-b");
    h.assert_no_islands().await;
    let _ = b.kill().await;
    h.stop().await;
}

/// The operator container's plain `env` values in the chart rendered
/// with value set `set`.
fn chart_operator_env(set: &str) -> BTreeMap<String, String> {
    let out = std::env::temp_dir().join(format!(
        "switchyard-chart-{}-{set}.yaml",
        std::process::id()
    ));
    let env = chart::operator_env(&chart::render(set, &out));
    let _ = std::fs::remove_file(&out);
    env
}

/// `webhook.existingSecret` with a custom `webhook.secretKey`: the
/// operator, configured by the rendered chart's environment, reads the
/// token under that key and accepts an alert with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_s_existing_webhook_secret_and_custom_key_reach_the_operator() {
    let env = chart_operator_env("existing-secret");
    assert_eq!(
        env.get("SWITCHYARD_WEBHOOK_SECRET").map(String::as_str),
        Some("alertmanager-token")
    );
    assert_eq!(
        env.get("SWITCHYARD_WEBHOOK_SECRET_KEY").map(String::as_str),
        Some("bearer")
    );
    let h = Harness::start("chart-secret", 2, Config::default(), acks_after(20)).await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(h.client.clone(), NS);
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "alertmanager-token"},
        // "bearer": "k3y-from-chart"; "token" holds something else.
        "data": {"bearer": "azN5LWZyb20tY2hhcnQ=", "token": "d3Jvbmc="},
    }))
    .expect("secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret created");
    let (mut operator, port, reserved) = chart_operator(&h, &env, "chart-replica");
    wait_ready(port, "the operator").await;
    let body = notification("resolved", &[("fp-none", &[("alertname", "Nothing")])]);
    let path = "/webhook/alertmanager";
    let (code, text) = http_post(port, path, Some("Bearer k3y-from-chart"), &body).await;
    assert_eq!(
        code, 200,
        "the token under the chart's key is accepted: {text}"
    );
    let (code, _) = http_post(port, path, Some("Bearer wrong"), &body).await;
    assert_eq!(code, 401, "the default key's value is not the token");
    operator.kill().await.expect("kill");
    drop(reserved);
    h.stop().await;
}

/// Poll `f` every 100 ms until it gives a value, for at most `WAIT`.
async fn eventually<T, Fut: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> Fut,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {WAIT:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The operator binary as the chart's environment configures it, on a
/// reserved port of its own, as replica `identity`.
fn chart_operator(
    h: &Harness,
    env: &BTreeMap<String, String>,
    identity: &str,
) -> (tokio::process::Child, u16, ports::Port) {
    let reserved = ports::reserve();
    let port = reserved.get();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard-operator"));
    for (k, v) in env {
        if k.starts_with("SWITCHYARD_") {
            cmd.env(k, v);
        }
    }
    let operator = cmd
        .env("KUBECONFIG", &h.c.kubeconfig)
        .env("SWITCHYARD_NAMESPACE", NS)
        .env("POD_NAMESPACE", NS)
        .env("POD_NAME", identity)
        .env("SWITCHYARD_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("operator starts");
    (operator, port, reserved)
}

/// The chart's defaults render no Secret (so a GitOps render is the same
/// every time): the operator creates the webhook Secret with a random
/// token, once for both replicas, and each accepts an alert with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_chart_s_defaults_the_operator_creates_one_webhook_token_for_both_replicas() {
    let env = chart_operator_env("default");
    assert_eq!(
        env.get("SWITCHYARD_WEBHOOK_SECRET_CREATE")
            .map(String::as_str),
        Some("true"),
        "the default install asks the operator to create the token"
    );
    let name = env
        .get("SWITCHYARD_WEBHOOK_SECRET")
        .expect("the Secret is named")
        .clone();
    let h = Harness::start("chart-token", 2, Config::default(), acks_after(20)).await;
    let (mut a, port_a, ra) = chart_operator(&h, &env, "replica-a");
    let (mut b, port_b, rb) = chart_operator(&h, &env, "replica-b");
    wait_ready(port_a, "replica a").await;
    wait_ready(port_b, "replica b").await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(h.client.clone(), NS);
    let token = eventually("the operator created the webhook Secret", || async {
        let s = secrets.get_opt(&name).await.ok()??;
        let t = s.data?.get("token")?.0.clone();
        String::from_utf8(t).ok()
    })
    .await;
    assert_eq!(token.len(), 64, "256 random bits, hex: {token}");
    assert!(token.bytes().all(|c| c.is_ascii_hexdigit()), "{token}");
    let body = notification("resolved", &[("fp-none", &[("alertname", "Nothing")])]);
    let path = "/webhook/alertmanager";
    let bearer = format!("Bearer {token}");
    for port in [port_a, port_b] {
        eventually("each replica accepts the created token", || async {
            let (code, _) = http_post(port, path, Some(&bearer), &body).await;
            (code == 200).then_some(())
        })
        .await;
        let (code, _) = http_post(port, path, Some("Bearer wrong"), &body).await;
        assert_eq!(code, 401, "only the created token is accepted");
    }
    a.kill().await.expect("kill");
    b.kill().await.expect("kill");
    drop((ra, rb));
    h.stop().await;
}

/// Stand-in agents' `/metrics`: per node, cumulative counters served at
/// `/<node>/metrics`, fed every 100 ms with the traffic `feed(moved)` says
/// (iroh requests, iroh errors, libp2p requests); a node is "moved" while
/// its spec.mode is other than LibP2pOnly. Every answered request is in
/// the histogram's 10 ms bucket.
async fn fake_metrics(
    h: &Harness,
    feed: fn(bool) -> (f64, f64, f64),
) -> (u16, Vec<tokio::task::JoinHandle<()>>) {
    use axum::extract::{Path, State};
    type Counters = Arc<Mutex<BTreeMap<String, [f64; 3]>>>;
    let counters: Counters = Arc::default();
    let app = axum::Router::new()
        .route(
            "/{node}/metrics",
            axum::routing::get(
                |State(c): State<Counters>, Path(node): Path<String>| async move {
                    let [ir, ie, lr] = c
                        .lock()
                        .expect("counters")
                        .get(&node)
                        .copied()
                        .unwrap_or_default();
                    // Every answered request took under 10 ms.
                    let histogram = |transport: &str, answered: f64| {
                        format!(
                            "switchyard_node_request_duration_seconds_bucket{{transport=\"{transport}\",le=\"0.01\"}} {answered}\n\
                             switchyard_node_request_duration_seconds_bucket{{transport=\"{transport}\",le=\"+Inf\"}} {answered}\n\
                             switchyard_node_request_duration_seconds_sum{{transport=\"{transport}\"}} {}\n\
                             switchyard_node_request_duration_seconds_count{{transport=\"{transport}\"}} {answered}\n",
                            answered * 0.005
                        )
                    };
                    format!(
                        "# TYPE switchyard_node_requests_total counter\n\
                     switchyard_node_requests_total{{outcome=\"ok\",transport=\"iroh\"}} {}\n\
                     switchyard_node_requests_total{{outcome=\"error\",transport=\"iroh\"}} {ie}\n\
                     switchyard_node_requests_total{{outcome=\"ok\",transport=\"libp2p\"}} {lr}\n\
                     # TYPE switchyard_node_request_duration_seconds histogram\n{}{}",
                        ir - ie,
                        histogram("iroh", ir - ie),
                        histogram("libp2p", lr),
                    )
                },
            ),
        )
        .with_state(counters.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    for n in h.all_nodes().await {
        let url = format!("http://127.0.0.1:{port}/{}/metrics", n.name_any());
        h.nodes()
            .patch_status(
                &n.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"metricsEndpoint": url}})),
            )
            .await
            .expect("endpoint reported");
    }
    let nodes = h.nodes();
    let traffic = tokio::spawn(async move {
        loop {
            if let Ok(list) = nodes.list(&ListParams::default()).await {
                let mut c = counters.lock().expect("counters");
                for n in list.items {
                    let moved = n.spec.mode.is_some_and(|m| m != NetworkMode::LibP2pOnly);
                    let (ir, ie, lr) = feed(moved);
                    let e = c.entry(n.name_any()).or_default();
                    e[0] += ir;
                    e[1] += ie;
                    e[2] += lr;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (port, vec![server, traffic])
}

fn analysed_plan(name: &str, min_sample: u32) -> MigrationPlan {
    serde_json::from_value(json!({
        "apiVersion": "switchyard.dev/v1alpha1",
        "kind": "MigrationPlan",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": "storage"}},
            "stages": ["DualPreferIroh"],
            "canary": {"count": 2, "duration": "4s"},
            "waves": [100],
            "waveInterval": "1s",
            "maxUnavailable": "50%",
            "analysis": {
                "interval": "1s",
                "minSampleSize": min_sample,
                "metrics": [{"name": "iroh-errors", "builtin": "ErrorRate", "transport": "Iroh", "max": 0.05}],
            },
        }
    }))
    .expect("plan")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_whose_scraped_iroh_error_rate_is_too_high_fails_and_only_it_rolls_back() {
    let h = Harness::start("analysis-fail", 10, Config::default(), acks_after(20)).await;
    // MigrationCanary nodes fail half their iroh requests; the rest use libp2p cleanly.
    let (_port, fakes) = fake_metrics(&h, |moved| {
        if moved {
            (20.0, 10.0, 0.0)
        } else {
            (0.0, 0.0, 20.0)
        }
    })
    .await;
    let (mut operator, port) = h.operator("only-replica", 15);
    h.plans()
        .create(&PostParams::default(), &analysed_plan("errors", 20))
        .await
        .expect("plan created");
    let (p, record) = h
        .wait_rollback("errors", "the canary's failed analysis")
        .await;
    let s = p.status.clone().expect("status");
    assert_eq!(record.trigger, "AnalysisFailed", "{record:?}");
    let analysis = s.last_analysis.expect("the measurement is in status");
    let m = analysis
        .metrics
        .iter()
        .find(|m| m.name == "iroh-errors")
        .expect("the check");
    assert!((m.value.expect("a value") - 0.5).abs() < 0.01, "{m:?}");
    assert_eq!(m.verdict, switchyard_crds::Verdict::Fail);
    // The measurements are in the operator's metrics too.
    let text = http_get(port, "/metrics").await;
    assert!(
        text.contains(
            "switchyard_operator_analysis_measurements_total{plan=\"fleet/errors\",verdict=\"Fail\"}"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "switchyard_operator_analysis_value{check=\"iroh-errors\",plan=\"fleet/errors\"} 0.5"
        ),
        "{text}"
    );
    h.wait_for("errors", phase_is(PlanPhase::RolledBack), "rolled back")
        .await;
    // Only the two canaries were ever moved.
    let moved: Vec<String> = h
        .history
        .lock()
        .expect("history")
        .iter()
        .filter(|(_, modes)| modes.contains(&NetworkMode::DualPreferIroh))
        .map(|(n, _)| n.clone())
        .collect();
    assert_eq!(moved.len(), 2, "only the canaries moved: {moved:?}");
    operator.kill().await.expect("kill");
    for t in fakes {
        t.abort();
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoints_answering_garbage_nan_a_huge_body_or_nothing_make_the_analysis_inconclusive()
 {
    use axum::routing::get;
    let h = Harness::start("analysis-bad", 8, Config::default(), acks_after(20)).await;
    let app = axum::Router::new()
        .route("/garbage", get(|| async { "<html>not metrics</html>" }))
        .route(
            "/nan",
            get(|| async {
                "# TYPE switchyard_node_requests_total counter\n\
                 switchyard_node_requests_total{outcome=\"ok\",transport=\"iroh\"} NaN\n"
            }),
        )
        .route("/huge", get(|| async { vec![b'#'; 8 * 1024 * 1024] }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "too late"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let kinds = ["garbage", "nan", "huge", "slow"];
    for (i, n) in h.all_nodes().await.iter().enumerate() {
        let url = format!("http://127.0.0.1:{port}/{}", kinds[i % kinds.len()]);
        h.nodes()
            .patch_status(
                &n.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"metricsEndpoint": url}})),
            )
            .await
            .expect("endpoint reported");
    }
    let (mut operator, op_port) = h.operator("only-replica", 15);
    h.plans()
        .create(&PostParams::default(), &analysed_plan("blind", 10))
        .await
        .expect("plan created");
    let p = h
        .wait_for("blind", phase_is(PlanPhase::Paused), "the pause")
        .await;
    let analysis = p
        .status
        .and_then(|s| s.last_analysis)
        .expect("the measurement is in status");
    assert_eq!(analysis.verdict, switchyard_crds::Verdict::Inconclusive);
    let message = analysis.message.unwrap_or_default();
    assert!(
        message.contains("no node could be scraped"),
        "the reason: {message}"
    );
    let reasons = [
        "not a node-agent's metrics",
        "invalid value",
        "body larger than",
        "no answer within",
    ];
    assert!(
        reasons.iter().any(|r| message.contains(r)),
        "names what was wrong: {message}"
    );
    // The operator carries on: it answers, and measures again.
    let measurements = "switchyard_operator_analysis_measurements_total";
    let before = metric_sum(op_port, measurements).await;
    assert!(before >= 1.0);
    wait_metric_above(op_port, measurements, before, "no further measurement").await;
    assert!(
        http_get(op_port, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    operator.kill().await.expect("kill");
    server.abort();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_with_too_few_samples_is_inconclusive_and_the_plan_pauses() {
    let h = Harness::start("analysis-few", 10, Config::default(), acks_after(20)).await;
    // One iroh request per 100 ms per canary: far below minSampleSize.
    let (_port, fakes) = fake_metrics(&h, |moved| {
        if moved {
            (1.0, 0.0, 0.0)
        } else {
            (0.0, 0.0, 1.0)
        }
    })
    .await;
    let (mut operator, _) = h.operator("only-replica", 15);
    h.plans()
        .create(&PostParams::default(), &analysed_plan("few", 1000))
        .await
        .expect("plan created");
    let p = h
        .wait_for("few", phase_is(PlanPhase::Paused), "the pause")
        .await;
    assert!(p.spec.paused, "the operator set spec.paused");
    let s = p.status.expect("status");
    let analysis = s.last_analysis.expect("the measurement is in status");
    assert_eq!(analysis.verdict, switchyard_crds::Verdict::Inconclusive);
    assert!(
        analysis
            .message
            .as_deref()
            .is_some_and(|m| m.contains("fewer than minSampleSize 1000")),
        "{analysis:?}"
    );
    operator.kill().await.expect("kill");
    for t in fakes {
        t.abort();
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_error_rate_across_the_plans_nodes_triggers_a_rollback_without_analysis() {
    let h = Harness::start("trigger-errors", 10, Config::default(), acks_after(20)).await;
    // Every node fails a third of its requests, moved or not.
    let (_port, fakes) = fake_metrics(&h, |_| (30.0, 10.0, 0.0)).await;
    let (mut operator, _) = h.operator("only-replica", 15);
    let p: MigrationPlan = serde_json::from_value(json!({
        "apiVersion": "switchyard.dev/v1alpha1",
        "kind": "MigrationPlan",
        "metadata": {"name": "noisy", "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": "storage"}},
            "stages": ["DualPreferLibP2p"],
            "canary": {"count": 2, "duration": "60s"},
            "waves": [100],
            "waveInterval": "60s",
            "rollback": {"triggers": {"highErrorRate": {"threshold": 0.05, "for": "1s"}}},
        }
    }))
    .expect("plan");
    h.plans()
        .create(&PostParams::default(), &p)
        .await
        .expect("plan created");
    let (_, record) = h.wait_rollback("noisy", "the error-rate trigger").await;
    assert_eq!(record.trigger, "HighErrorRate", "{record:?}");
    assert!(record.reason.contains("above 0.05"), "{}", record.reason);
    operator.kill().await.expect("kill");
    for t in fakes {
        t.abort();
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_continues_the_analysis_tally_and_rolls_back_after_the_second_failure_not_the_third()
 {
    let h = Harness::start("tally-failover", 10, Config::default(), acks_after(20)).await;
    // MigrationCanary nodes fail half their iroh requests: every measurement fails.
    let (_port, fakes) = fake_metrics(&h, |moved| {
        if moved {
            (20.0, 10.0, 0.0)
        } else {
            (0.0, 0.0, 20.0)
        }
    })
    .await;
    let (mut first, _) = h.operator("first", 4);
    // failureLimit 1: the second failed measurement rolls back. Three
    // seconds between measurements leave time to kill the leader between
    // the first and the second.
    let mut plan = serde_json::to_value(analysed_plan("tally", 20)).expect("json");
    plan["spec"]["analysis"]["failureLimit"] = json!(1);
    plan["spec"]["analysis"]["interval"] = json!("3s");
    let plan: MigrationPlan = serde_json::from_value(plan).expect("plan");
    h.plans()
        .create(&PostParams::default(), &plan)
        .await
        .expect("plan created");
    let counted = |p: &MigrationPlan| {
        p.status
            .as_ref()
            .and_then(|s| s.analysis_tally.as_ref())
            .map_or(0, |t| t.failures)
    };
    let p = h
        .wait_for("tally", |p| counted(p) >= 1, "the first failure in status")
        .await;
    first.kill().await.expect("kill the leader");
    let s = p.status.expect("status");
    assert_eq!(counted_of(&s), 1, "{s:?}");
    assert_eq!(
        s.phase,
        PlanPhase::Canary,
        "one failure is within the limit"
    );
    let (mut second, port) = h.operator("second", 4);
    let (p, record) = h.wait_rollback("tally", "the second failure").await;
    assert_eq!(record.trigger, "AnalysisFailed", "{record:?}");
    let s = p.status.expect("status");
    let message = s.last_analysis.and_then(|a| a.message).unwrap_or_default();
    assert!(message.contains("(2 failed,"), "{message}");
    // The new leader measured one failure itself; the other it read from
    // status. Without the tally it would have needed two of its own.
    let own = metric_sum(
        port,
        "switchyard_operator_analysis_measurements_total{plan=\"fleet/tally\",verdict=\"Fail\"}",
    )
    .await;
    assert_eq!(own, 1.0, "failed measurements the new leader took");
    second.kill().await.expect("kill");
    for t in fakes {
        t.abort();
    }
    h.stop().await;
}

fn counted_of(s: &switchyard_crds::MigrationPlanStatus) -> u32 {
    s.analysis_tally.as_ref().map_or(0, |t| t.failures)
}

/// `examples/canary.yaml` in the test namespace, its minutes made
/// seconds (a 4 s trial measured every second); the rest as written.
fn example_canary() -> MigrationCanary {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/canary.yaml");
    let text = std::fs::read_to_string(path).expect("examples/canary.yaml");
    let mut value: serde_json::Value = serde_saphyr::from_str(&text).expect("YAML");
    value["metadata"]["namespace"] = json!(NS);
    value["spec"]["duration"] = json!("4s");
    value["spec"]["analysis"]["interval"] = json!("1s");
    serde_json::from_value(value).expect("the example is a MigrationCanary")
}

/// Run the example MigrationCanary over 20 `app=storage-node` nodes, half in
/// zone-a, whose stand-in agents report the traffic `feed` says; returns
/// its final status and how many baseline nodes (zone-a, not on trial) it
/// should have compared against.
async fn example_canary_ends(
    name: &str,
    feed: fn(bool) -> (f64, f64, f64),
) -> (switchyard_crds::MigrationCanaryStatus, usize) {
    let h = Harness::start(name, 0, Config::default(), acks_after(20)).await;
    let zone = |z: &str| -> BTreeMap<String, String> {
        [
            ("app".to_owned(), "storage-node".to_owned()),
            ("topology.kubernetes.io/zone".to_owned(), z.to_owned()),
        ]
        .into()
    };
    for (z, first) in [("zone-a", 0), ("zone-b", 10)] {
        h.c.register_nodes(
            NS,
            (first..first + 10).map(|i| format!("sn-{i:02}")),
            &zone(z),
            NetworkMode::LibP2pOnly,
        )
        .await
        .expect("nodes");
    }
    let (_port, fakes) = fake_metrics(&h, feed).await;
    let (mut operator, _) = h.operator("only-replica", 15);
    let canaries: Api<MigrationCanary> = Api::namespaced(h.client.clone(), NS);
    let canary = example_canary();
    let name = canary.name_any();
    canaries
        .create(&PostParams::default(), &canary)
        .await
        .expect("canary created");
    let deadline = tokio::time::Instant::now() + WAIT;
    let status = loop {
        let c = canaries.get(&name).await.expect("canary");
        if let Some(s) = c.status.filter(|s| {
            matches!(
                s.phase,
                MigrationCanaryPhase::Succeeded
                    | MigrationCanaryPhase::RolledBack
                    | MigrationCanaryPhase::Failed
            )
        }) {
            break s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the example MigrationCanary did not finish: {:?}",
            canaries.get(&name).await.ok().and_then(|c| c.status)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status.nodes.len(), 2, "10% of 20 nodes: {status:?}");
    let baseline = (0..10)
        .map(|i| format!("sn-{i:02}"))
        .filter(|n| !status.nodes.contains(n))
        .count();
    // The nodes are back in LibP2pOnly and released.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let nodes = h.all_nodes().await;
        if nodes.iter().all(|n| {
            n.labels().get(LABEL_CANARY).is_none()
                && n.spec.mode.unwrap_or(NetworkMode::LibP2pOnly) == NetworkMode::LibP2pOnly
        }) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the trial nodes were not returned and released"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.wait_event(&name, "CanaryVerdict", "").await;
    h.assert_no_islands().await;
    operator.kill().await.expect("kill");
    for t in fakes {
        t.abort();
    }
    h.stop().await;
    (status, baseline)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_canary_passes_against_its_zone_a_baseline_when_its_nodes_do_as_well() {
    // Trial nodes send half their requests over iroh; nobody fails.
    let (s, baseline) = example_canary_ends("example-pass", |moved| {
        if moved {
            (10.0, 0.0, 10.0)
        } else {
            (0.0, 0.0, 20.0)
        }
    })
    .await;
    assert_eq!(s.phase, MigrationCanaryPhase::Succeeded, "{s:?}");
    assert_eq!(s.verdict, Some(switchyard_crds::Verdict::Pass));
    let errors = s
        .metrics
        .iter()
        .find(|m| m.name == "error-rate")
        .expect("the error-rate evidence is in status");
    assert_eq!(errors.value, Some(0.0), "{errors:?}");
    // Compared with zone-a only, not with the whole selection.
    assert_eq!(
        errors.cohort,
        format!("canary (2 nodes) vs baseline ({baseline} nodes)")
    );
    let latency = s
        .metrics
        .iter()
        .find(|m| m.name == "latency-p99")
        .expect("latency");
    assert_eq!(
        latency.verdict,
        switchyard_crds::Verdict::Pass,
        "{latency:?}"
    );
    assert!(latency.baseline.is_some(), "{latency:?}");
    let tally = s.analysis_tally.expect("the tally is in status");
    assert!(tally.successes >= 1 && tally.failures == 0, "{tally:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_canary_rolls_back_when_its_nodes_fail_requests() {
    // Trial nodes fail half their iroh requests.
    let (s, baseline) = example_canary_ends("example-fail", |moved| {
        if moved {
            (20.0, 10.0, 0.0)
        } else {
            (0.0, 0.0, 20.0)
        }
    })
    .await;
    assert_eq!(s.phase, MigrationCanaryPhase::RolledBack, "{s:?}");
    assert_eq!(s.verdict, Some(switchyard_crds::Verdict::Fail));
    let health = argocd::health("MigrationCanary", &json!({"metadata": {}, "status": &s}));
    assert_eq!(health.status, "Degraded", "Argo CD's view: {health:?}");
    let errors = s
        .metrics
        .iter()
        .find(|m| m.name == "error-rate")
        .expect("the error-rate evidence is in status");
    assert!(
        (errors.value.expect("a value") - 0.5).abs() < 0.01,
        "{errors:?}"
    );
    assert_eq!(errors.verdict, switchyard_crds::Verdict::Fail);
    assert_eq!(
        errors.cohort,
        format!("canary (2 nodes) vs baseline ({baseline} nodes)")
    );
    assert_eq!(s.analysis_tally.map(|t| t.failures), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_api_error_is_a_warning_event_and_is_not_retried_in_a_hot_loop() {
    let config = Config {
        authorization: true,
        ..Config::default()
    };
    let h = Harness::start("permanent", 4, config, acks_after(20)).await;
    // The operator's identity may do everything it needs except write
    // FleetNodes: the API server refuses every node write with 403.
    let kubeconfig =
        h.c.service_account_kubeconfig(NS, "operator", None)
            .await
            .expect("service account");
    let rbac = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "operator-without-node-writes", "namespace": NS},
        "rules": [
            {"apiGroups": ["switchyard.dev"], "resources": ["migrationplans", "migrationplans/status", "migrationplans/finalizers", "migrationcanaries", "migrationcanaries/status", "migrationcanaries/finalizers"], "verbs": ["*"]},
            {"apiGroups": ["switchyard.dev"], "resources": ["fleetnodes"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["*"]},
            {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["configmaps", "secrets"], "verbs": ["*"]},
        ],
    });
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "operator-without-node-writes", "namespace": NS},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "operator-without-node-writes"},
        "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": NS}],
    });
    let roles: Api<k8s_openapi::api::rbac::v1::Role> = Api::namespaced(h.client.clone(), NS);
    roles
        .create(
            &PostParams::default(),
            &serde_json::from_value(rbac).expect("role"),
        )
        .await
        .expect("role");
    let bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> =
        Api::namespaced(h.client.clone(), NS);
    bindings
        .create(
            &PostParams::default(),
            &serde_json::from_value(binding).expect("binding"),
        )
        .await
        .expect("binding");
    let (mut operator, port) = h.operator_as("only-replica", 15, &kubeconfig);
    let name = "forbidden-writes";
    let mut p = plan(name, &[100], "1s");
    p.spec.canary = None;
    h.plans()
        .create(&PostParams::default(), &p)
        .await
        .expect("plan created");
    h.wait_event(
        name,
        "ReconcileFailed",
        "cannot patch resource \"fleetnodes\" in API group \"switchyard.dev\"",
    )
    .await;
    let errors = "switchyard_operator_reconcile_errors_total";
    let before = metric_sum(port, errors).await;
    assert!(before >= 1.0);
    // Nothing changes the plan now: in four seconds the old 500 ms retry
    // would have failed seven or eight more times.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = metric_sum(port, errors).await;
    assert!(
        after - before <= 1.0,
        "retried {} times without a change",
        after - before
    );
    for n in h.all_nodes().await {
        assert!(n.labels().get(LABEL_PLAN).is_none(), "no node was written");
    }
    operator.kill().await.expect("kill");
    h.stop().await;
}

/// A plan whose name cannot be a label value is refused at admission
/// (the CRD's rule on metadata.name), with a message naming the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_name_too_long_for_a_label_value_is_refused_at_admission() {
    let h = Harness::start("long-name", 2, Config::default(), acks_after(20)).await;
    let name = "a-plan-whose-name-is-far-too-long-to-be-the-label-value-on-its-nodes";
    assert!(name.len() > 63);
    let e = h
        .plans()
        .create(&PostParams::default(), &plan(name, &[100], "1s"))
        .await
        .expect_err("refused");
    let kube::Error::Api(e) = e else {
        panic!("{e:?}")
    };
    assert_eq!(e.code, 422);
    assert!(e.message.contains("at most 63 characters"), "{}", e.message);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_waits_for_unselected_nodes_in_its_namespace_before_going_iroh_only() {
    // 6 storage nodes the plan selects, 4 gateway nodes it does not.
    let h = Harness::start("fleet-wide", 6, Config::default(), acks_after(20)).await;
    let gateway: BTreeMap<String, String> = [("app".into(), "gateway".into())].into();
    h.c.register_nodes(
        NS,
        (0..4).map(|i| format!("gateway-{i}")),
        &gateway,
        NetworkMode::LibP2pOnly,
    )
    .await
    .expect("gateway nodes");
    let (mut operator, _) = h.operator("only-replica", 15);
    let mut storage = plan("storage", &[100], "1s");
    storage.spec.stages = vec![NetworkMode::DualPreferIroh, NetworkMode::IrohOnly];
    storage.spec.canary = None;
    storage.spec.max_unavailable =
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("100%".into());
    h.plans()
        .create(&PostParams::default(), &storage)
        .await
        .expect("plan created");
    let waiting = |p: &MigrationPlan| {
        p.status.as_ref().is_some_and(|s| {
            s.message
                .as_deref()
                .is_some_and(|m| m.contains("4 FleetNode(s) outside this plan run LibP2pOnly"))
        })
    };
    h.wait_for("storage", waiting, "the plan to wait for the gateway nodes")
        .await;
    h.wait_event("storage", "NodeBlocked", "outside this plan")
        .await;
    for n in h.all_nodes().await {
        assert_ne!(n.spec.mode, Some(NetworkMode::IrohOnly), "{}", n.name_any());
    }
    // The gateway team moves its nodes to a dual mode with a plan of its
    // own: then storage finishes.
    let mut gw = plan("gateway", &[100], "1s");
    gw.spec.selector.match_labels = Some([("app".into(), "gateway".into())].into());
    gw.spec.stages = vec![NetworkMode::DualPreferLibP2p];
    gw.spec.canary = None;
    h.plans()
        .create(&PostParams::default(), &gw)
        .await
        .expect("gateway plan created");
    h.wait_for(
        "storage",
        phase_is(PlanPhase::Succeeded),
        "storage to finish",
    )
    .await;
    let iroh = h
        .all_nodes()
        .await
        .iter()
        .filter(|n| n.applied_mode() == Some(NetworkMode::IrohOnly))
        .count();
    assert_eq!(iroh, 6);
    h.assert_no_islands().await;
    operator.kill().await.expect("kill");
    h.stop().await;
}

/// A tenant's plan queries its own Prometheus with credentials from a
/// Secret it names: only once the Secret's owner labels it, and never with
/// the operator's. Real Prometheus behind basic auth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_s_own_prometheus_credentials_come_from_the_labelled_secret_it_names() {
    use k8s_openapi::api::core::v1::Secret;
    use switchyard_operator::promql::{Access, Prometheus};
    let h = Harness::start("plan-credentials", 4, Config::default(), acks_after(20)).await;
    // bcrypt of "prom-s3cret" (cost 4: only a test fixture).
    let hash = "$2b$04$NFL8ZXQ7x6raxtsnFZdwjeeSVDwtJGxDCcazLpDluP..I/Z.JkhVO";
    let prometheus = switchyard_testbed::prometheus::Prometheus::start(
        "plan-credentials",
        &[],
        Some(&format!("basic_auth_users:\n  tenant: '{hash}'\n")),
        false,
    );
    let tenant = Prometheus::with_access(
        &prometheus.url,
        Duration::from_secs(5),
        &Access {
            basic: Some(("tenant".into(), "prom-s3cret".into())),
            ..Access::default()
        },
    )
    .expect("client");
    let deadline = tokio::time::Instant::now() + WAIT;
    while let Err(e) = tenant.query("vector(1)").await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "Prometheus did not answer: {e}; its log: {}",
            prometheus.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), NS);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "tenant-prometheus"},
                "stringData": {"username": "tenant", "password": "prom-s3cret"},
            }))
            .expect("secret"),
        )
        .await
        .expect("secret created");
    // The agents' own metrics: clean traffic (the rollback triggers read them).
    let (_metrics_port, fakes) = fake_metrics(&h, |moved| {
        if moved {
            (20.0, 0.0, 0.0)
        } else {
            (0.0, 0.0, 20.0)
        }
    })
    .await;
    let (mut operator, port) = h.operator_with(
        "only-replica",
        15,
        &[("SWITCHYARD_ALLOW_PLAN_CREDENTIALS", "true")],
    );
    let plan: MigrationPlan = serde_json::from_value(json!({
        "apiVersion": "switchyard.dev/v1alpha1",
        "kind": "MigrationPlan",
        "metadata": {"name": "tenant", "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": "storage"}},
            "stages": ["DualPreferIroh"],
            "canary": {"count": 2, "duration": "2s"},
            "waves": [100],
            "waveInterval": "1s",
            "maxUnavailable": "50%",
            "analysis": {
                "interval": "1s",
                "inconclusiveLimit": 1000,
                "prometheus": {"address": prometheus.url, "secretRef": {"name": "tenant-prometheus"}},
                "metrics": [{"name": "tenant-errors", "promql": "scalar(vector(0.01))", "max": 0.05}],
            },
        }
    }))
    .expect("plan");
    h.plans()
        .create(&PostParams::default(), &plan)
        .await
        .expect("plan created");
    // Without its owner's label the Secret is not used, and status says
    // which label to add; the plan waits in its canary.
    let reason = |p: &MigrationPlan| -> String {
        p.status
            .as_ref()
            .and_then(|s| s.last_analysis.as_ref())
            .and_then(|a| a.metrics.iter().find(|m| m.name == "tenant-errors"))
            .and_then(|m| m.reason.clone())
            .unwrap_or_default()
    };
    let p = h
        .wait_for(
            "tenant",
            |p| reason(p).contains("label it switchyard.dev/prometheus-credentials=true"),
            "an inconclusive measurement naming the label",
        )
        .await;
    assert_eq!(p.status.expect("status").phase, PlanPhase::Canary);
    secrets
        .patch(
            "tenant-prometheus",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"labels": {"switchyard.dev/prometheus-credentials": "true"}}}),
            ),
        )
        .await
        .expect("labelled");
    // Labelled: the plan's queries carry its credentials and pass.
    h.wait_for(
        "tenant",
        phase_is(PlanPhase::Succeeded),
        "the plan succeeds",
    )
    .await;
    let text = http_get(port, "/metrics").await;
    assert!(
        text.contains(
            "switchyard_operator_analysis_value{check=\"tenant-errors\",plan=\"fleet/tenant\"} 0.01"
        ),
        "{text}"
    );
    operator.kill().await.expect("kill");
    for t in fakes {
        t.abort();
    }
    drop(prometheus);
    h.stop().await;
}

/// Phase transitions reach a webhook: in order, each retried after a
/// refusal, without holding the plan up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_s_phase_transitions_reach_the_notification_webhook_despite_refusals() {
    type Got = Arc<Mutex<(u32, Vec<serde_json::Value>)>>;
    let h = Harness::start("notify", 6, Config::default(), acks_after(20)).await;
    let got: Got = Arc::default();
    // Refuses every other call with a 503: each message needs a retry.
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                |axum::extract::State(got): axum::extract::State<Got>,
                 axum::Json(body): axum::Json<serde_json::Value>| async move {
                    let mut g = got.lock().expect("got");
                    g.0 += 1;
                    if g.0 % 2 == 1 {
                        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    g.1.push(body);
                    axum::http::StatusCode::OK
                },
            ),
        )
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let (mut operator, port) = h.operator_with(
        "only-replica",
        15,
        &[("SWITCHYARD_NOTIFY_URL", url.as_str())],
    );
    let mut p = plan("notified", &[100], "0s");
    p.spec.stages = vec![NetworkMode::DualPreferLibP2p];
    h.plans()
        .create(&PostParams::default(), &p)
        .await
        .expect("plan created");
    h.wait_for("notified", phase_is(PlanPhase::Succeeded), "Succeeded")
        .await;
    let want = [
        "CanaryStarted",
        "CanaryPassed",
        "StageCompleted",
        "Succeeded",
    ];
    let deadline = tokio::time::Instant::now() + WAIT;
    let reasons = loop {
        let reasons: Vec<String> = got
            .lock()
            .expect("got")
            .1
            .iter()
            .filter(|b| b["plan"] == "notified" && b["namespace"] == NS)
            .map(|b| b["reason"].as_str().unwrap_or_default().to_owned())
            .collect();
        if reasons.len() >= want.len() {
            break reasons;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "notifications so far: {reasons:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(reasons, want, "every phase transition, in order, once");
    let metrics = http_get(port, "/metrics").await;
    assert!(
        metrics.contains("switchyard_operator_notifications_total{outcome=\"delivered\"} 4"),
        "{metrics}"
    );
    operator.kill().await.expect("kill");
    server.abort();
    h.stop().await;
}
