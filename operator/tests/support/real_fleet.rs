//! A fleet of real parts for the analysis and rollback system tests
//! (`tests/real_fleet.rs`) and benchmark (`benches/alert_rollback.rs`):
//!
//! - `n` node-agents in this process (the agent's own `run_with`, real
//!   libp2p and iroh on 127.0.0.1, probing each other 10 times a second,
//!   fault injection allowed), attached to FleetNodes labelled
//!   `app=storage` in the in-memory API server;
//! - the operator binary, with the webhook token in a Secret;
//! - with monitoring: Prometheus (Debian's `prometheus`) scraping every
//!   agent's `/metrics` every second and evaluating the repository's own
//!   rule file, its windows shrunk from minutes to seconds, and
//!   Alertmanager (Debian's `prometheus-alertmanager`) routing every alert
//!   to the operator's webhook with the bearer token; the operator queries
//!   that Prometheus for PromQL checks.
//!
//! [`alert_rollback`] is the alerting path: a plan moves the whole fleet to
//! DualPreferLibP2p and waits there; a fault is injected into every agent
//! (half its libp2p sends fail), and the clock runs until every node is
//! back on LibP2pOnly: the fault raises the libp2p error rate →
//! `SwitchyardLibp2pErrorRate` fires → Alertmanager calls the webhook →
//! the plan, which lists that alert in `rollback.alertMatchers`, rolls
//! back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use switchyard_crds::{ANNOTATION_INJECT_FAULTS, FleetNode, MigrationPlan, NetworkMode, PlanPhase};
use switchyard_node_agent::agent::{AgentConfig, run_with};
use switchyard_node_agent::manager::ManagerConfig;
use switchyard_testbed::apiserver::Config;
use switchyard_testbed::cluster::TestCluster;
use switchyard_testbed::{ports, serial};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const NS: &str = "fleet";
const TOKEN: &str = "alert-path-token";
const ALERT: &str = "SwitchyardLibp2pErrorRate";
/// The bound on every wait: a scenario that hangs fails instead.
const WAIT: Duration = Duration::from_secs(90);

/// What one run measured, from the moment the fault was injected.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Agents in the fleet.
    pub agents: usize,
    /// Until Prometheus reported the alert firing (its `/api/v1/alerts`);
    /// `None`: never seen (or not watched: no Prometheus).
    pub to_firing: Option<Duration>,
    /// Until Alertmanager counted a webhook notification delivered (its
    /// own `alertmanager_notifications_total` less the failed ones).
    pub to_delivered: Option<Duration>,
    /// Until the operator had accepted a webhook call.
    pub to_webhook: Option<Duration>,
    /// Until the operator told the first node to go back (its spec.mode).
    pub to_first_revert: Option<Duration>,
    /// Until every node reported running its starting mode again.
    pub to_all_reverted: Duration,
    /// The rollback's recorded trigger and reason.
    pub trigger: String,
    /// The evidence.
    pub reason: String,
}

/// Prometheus and Alertmanager, or why they cannot be used here.
pub fn tools() -> Result<(PathBuf, PathBuf), String> {
    let find = |names: &[&str]| {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
                .find(|p| p.is_file())
        })
    };
    let prometheus = find(&["prometheus"]);
    let alertmanager = find(&["prometheus-alertmanager", "alertmanager"]);
    match (prometheus, alertmanager) {
        (Some(p), Some(a)) => Ok((p, a)),
        _ => Err(
            "needs prometheus and alertmanager on PATH (Debian: apt-get install prometheus prometheus-alertmanager; .ci/run installs them)"
                .into(),
        ),
    }
}

/// The sum of the samples of `metric` in a Prometheus text body whose
/// line contains every one of `labels`; 0 when there is none.
pub fn sample(body: &str, metric: &str, labels: &[&str]) -> f64 {
    body.lines()
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// One HTTP/1.0 exchange on 127.0.0.1: the status code and the body.
pub async fn http(
    port: u16,
    method: &str,
    path: &str,
    form: Option<&str>,
) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let body = form.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.ok()?;
    s.write_all(body.as_bytes()).await.ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, out.split_once("\r\n\r\n")?.1.to_owned()))
}

/// Percent-encode a form value.
fn form_value(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A PromQL instant query's first value, if the result has one.
pub async fn promql(port: u16, query: &str) -> Option<f64> {
    let (code, body) = http(
        port,
        "POST",
        "/api/v1/query",
        Some(&format!("query={}", form_value(query))),
    )
    .await?;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v.pointer("/data/result/0/value/1")?.as_str()?.parse().ok()
}

/// Poll `f` every 50 ms until it yields, for at most [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "not within {WAIT:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A child process killed when dropped, its output in `dir/<name>.log`.
fn spawn(dir: &Path, name: &str, program: &Path, args: &[String]) -> tokio::process::Child {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log file");
    tokio::process::Command::new(program)
        .args(args)
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()))
}

fn agent_config(dir: &Path, name: &str, bootstrap: Vec<String>, workload: u16) -> AgentConfig {
    AgentConfig {
        name: name.into(),
        namespace: NS.into(),
        pod_ip: [127, 0, 0, 1].into(),
        node_name: None,
        initial_mode: NetworkMode::LibP2pOnly,
        identity_file: Some(dir.join(format!("{name}.key"))),
        identity_secret: None,
        libp2p_port: 0,
        iroh_port: 0,
        http_addr: ([127, 0, 0, 1], 0).into(),
        bootstrap,
        min_peers: 0,
        probe_rate: 10.0,
        probes_with_workload: false,
        workload: switchyard_node_agent::workload::WorkloadConfig {
            listen: Some(([127, 0, 0, 1], workload).into()),
            ..Default::default()
        },
        dht: switchyard_node_agent::dht::DhtConfig {
            // Every 5 s (the default is 30 s): each check is a lookup of 20
            // peers, and thirty agents share two cores.
            check_interval: Duration::from_secs(5),
            // Thirty agents in one process on two loaded cores: a lookup
            // may queue for many seconds, and is slow, not failed.
            lookup_timeout: Duration::from_secs(30),
            ..Default::default()
        },
        shutdown_timeout: Duration::from_secs(3),
        manager: ManagerConfig {
            heartbeat_interval: Duration::from_millis(500),
            ..ManagerConfig::default()
        },
        node: Default::default(),
        allow_fault_injection: true,
    }
}

/// The repository's alert rules with their windows shrunk from minutes to
/// seconds: rates over 5 s, each alert pending for 2 s.
fn test_rules() -> String {
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/switchyard/rules/switchyard-rules.yaml"
    ))
    .expect("the shipped rule file");
    assert!(shipped.contains(ALERT), "the shipped rules name {ALERT}");
    shipped
        .replace("[5m]", "[5s]")
        .replace("for: 5m", "for: 2s")
        .replace("for: 1m", "for: 2s")
}

/// The fleet's processes and tasks.
pub struct Fleet {
    /// The in-memory cluster.
    pub c: TestCluster,
    /// The nodes, `node-00`...
    pub names: Vec<String>,
    /// FleetNodes.
    pub nodes: Api<FleetNode>,
    /// MigrationPlans.
    pub plans: Api<MigrationPlan>,
    /// The operator's HTTP port (metrics, webhook).
    pub operator_port: u16,
    /// Prometheus's port, with monitoring.
    pub prometheus_port: Option<u16>,
    /// Alertmanager's port, with monitoring.
    pub alertmanager_port: Option<u16>,
    /// The ports handed to the processes, held until the fleet stops.
    _ports: Vec<ports::Port>,
    /// Each agent's workload API port, held until the fleet stops.
    workload_ports: Vec<ports::Port>,
    /// One fleet at a time on the machine (see `switchyard_testbed::serial`).
    _heavy: serial::Heavy,
    operator: tokio::process::Child,
    monitoring: Vec<tokio::process::Child>,
    agents: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Fleet {
    /// `n` agents and the operator; Prometheus and Alertmanager too when
    /// `monitoring` (`Err` when they are not installed).
    pub async fn start(n: usize, monitoring: bool) -> Result<Fleet, String> {
        Self::start_with(n, monitoring, |_| {}).await
    }

    /// [`Fleet::start`], each agent's settings changed by `tune` first.
    pub async fn start_with(
        n: usize,
        monitoring: bool,
        tune: impl Fn(&mut AgentConfig),
    ) -> Result<Fleet, String> {
        let tools = if monitoring { Some(tools()?) } else { None };
        // Taken before anything starts: twenty agents answering ten probes
        // a second each need the machine's cores to themselves.
        let heavy = serial::heavy();
        let c = TestCluster::start(Config::default(), "real-fleet")
            .await
            .expect("cluster");
        c.namespace(NS).await.expect("namespace");
        // The in-process agents' logs, when asked for (with
        // SWITCHYARD_TEST_KEEP_LOGS, they stay in the cluster's directory).
        if let Ok(filter) = std::env::var("SWITCHYARD_TEST_AGENT_LOG") {
            let file = std::fs::File::create(c.dir.join("agents.log")).expect("agents.log");
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::sync::Mutex::new(file))
                .with_ansi(false)
                .try_init();
        }
        let labels: BTreeMap<String, String> = [("app".into(), "storage".into())].into();
        let names: Vec<String> = (0..n).map(|i| format!("node-{i:02}")).collect();
        c.register_nodes(NS, names.clone(), &labels, NetworkMode::LibP2pOnly)
            .await
            .expect("FleetNodes");
        let nodes: Api<FleetNode> = Api::namespaced(c.client.clone(), NS);
        let plans: Api<MigrationPlan> = Api::namespaced(c.client.clone(), NS);
        let secrets: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(c.client.clone(), NS);
        let secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "switchyard-webhook"},
            "data": {"token": k8s_openapi::ByteString(TOKEN.into())},
        }))
        .expect("secret");
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .expect("webhook secret");

        // The operator (pointed at the Prometheus started below).
        // Processes are told their ports: reserved ones, which nothing
        // else on the machine can take before they bind.
        let reserved: Vec<ports::Port> = (0..if monitoring { 3 } else { 1 })
            .map(|_| ports::reserve())
            .collect();
        let operator_port = reserved[0].get();
        let prometheus_port = reserved.get(1).map(ports::Port::get);
        let alertmanager_port = reserved.get(2).map(ports::Port::get);
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard-operator"));
        cmd.env("KUBECONFIG", &c.kubeconfig)
            .env("SWITCHYARD_NAMESPACE", NS)
            .env("SWITCHYARD_HTTP_ADDR", format!("127.0.0.1:{operator_port}"))
            .env("POD_NAME", "real-fleet")
            .env("SWITCHYARD_WEBHOOK_SECRET", "switchyard-webhook")
            .env("RUST_LOG", "info")
            .stdout(std::fs::File::create(c.dir.join("operator.log")).expect("log"))
            .stderr(std::fs::File::create(c.dir.join("operator.err")).expect("log"))
            .kill_on_drop(true);
        if let Some(port) = prometheus_port {
            cmd.env(
                "SWITCHYARD_PROMETHEUS_URL",
                format!("http://127.0.0.1:{port}"),
            )
            .env("SWITCHYARD_PROMETHEUS_TIMEOUT", "2");
        }
        let operator = cmd.spawn().expect("operator starts");

        // The agents: the first, then the rest bootstrapping from it.
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let workload_ports: Vec<ports::Port> = (0..n).map(|_| ports::reserve()).collect();
        let start_agent = |i: usize, bootstrap: Vec<String>| {
            let mut stop = stop_rx.clone();
            let mut config = agent_config(&c.dir, &names[i], bootstrap, workload_ports[i].get());
            tune(&mut config);
            tokio::spawn(run_with(c.client.clone(), config, async move {
                let _ = stop.wait_for(|s| *s).await;
                Ok(())
            }))
        };
        let mut agents = vec![start_agent(0, Vec::new())];
        let first = eventually("the first agent reports its addresses", || async {
            let s = nodes.get(&names[0]).await.ok()?.status?;
            let addr = s.addresses?.libp2p.first()?.clone();
            Some(format!("{}@{addr}", s.identity?.peer_id))
        })
        .await;
        for i in 1..n {
            agents.push(start_agent(i, vec![first.clone()]));
        }
        let mut targets = Vec::new();
        for name in &names {
            let url = eventually("every agent reports its metrics endpoint", || async {
                nodes.get(name).await.ok()?.status?.metrics_endpoint
            })
            .await;
            let host = url
                .trim_start_matches("http://")
                .trim_end_matches("/metrics")
                .to_owned();
            targets.push(format!(
                "      - targets: ['{host}']\n        labels: {{namespace: {NS}, pod: {name}}}\n"
            ));
        }
        let mut fleet = Fleet {
            c,
            names,
            nodes,
            plans,
            operator_port,
            prometheus_port,
            alertmanager_port,
            _ports: reserved,
            workload_ports,
            _heavy: heavy,
            operator,
            monitoring: Vec::new(),
            agents,
            stop,
        };
        if let (Some((prometheus_bin, alertmanager_bin)), Some(prom_port), Some(am_port)) =
            (tools, prometheus_port, alertmanager_port)
        {
            fleet.monitoring = start_monitoring(
                &fleet.c.dir,
                &prometheus_bin,
                &alertmanager_bin,
                (prom_port, am_port),
                operator_port,
                &targets.concat(),
            )
            .await;
            let n = fleet.names.len() as f64;
            eventually("Prometheus scrapes every agent", || async {
                (promql(prom_port, "sum(up)").await? == n).then_some(())
            })
            .await;
        }
        Ok(fleet)
    }

    /// The base URL of agent `i`'s workload API.
    #[allow(dead_code)] // Only the DHT migration test uses it.
    pub fn workload_api(&self, i: usize) -> String {
        format!("http://{}", self.workload_ports[i].addr())
    }

    /// Create `plan`.
    pub async fn create(&self, plan: &MigrationPlan) {
        self.plans
            .create(&PostParams::default(), plan)
            .await
            .expect("plan created");
    }

    /// Create `plan`, whose first stage is DualPreferLibP2p for the whole
    /// fleet, and wait until every agent runs it.
    async fn move_to_dual_libp2p(&self, plan: &MigrationPlan) {
        self.create(plan).await;
        self.wait_nodes("every agent runs DualPreferLibP2p", |n| {
            n.applied_mode() == Some(NetworkMode::DualPreferLibP2p)
        })
        .await;
    }

    /// Wait until every FleetNode satisfies `want`.
    pub async fn wait_nodes(&self, what: &str, want: impl Fn(&FleetNode) -> bool) {
        eventually(what, || async {
            let list = self.nodes.list(&ListParams::default()).await.ok()?;
            list.items.iter().all(&want).then_some(())
        })
        .await;
    }

    /// Wait until `plan` satisfies `want`; the plan.
    pub async fn wait_plan(
        &self,
        plan: &str,
        what: &str,
        want: impl Fn(&MigrationPlan) -> bool,
    ) -> MigrationPlan {
        eventually(what, || async {
            let p = self.plans.get(plan).await.ok()?;
            want(&p).then_some(p)
        })
        .await
    }

    /// Set (or, with `None`, clear) the fault injected into `names`.
    pub async fn inject(&self, names: &[String], faults: Option<&str>) {
        for name in names {
            self.nodes
                .patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(
                        json!({"metadata": {"annotations": {ANNOTATION_INJECT_FAULTS: faults}}}),
                    ),
                )
                .await
                .expect("fault injected");
        }
    }

    /// Stop everything: the agents drain and stop, the processes are
    /// killed, the cluster's directory is removed (kept, with the logs in
    /// it, when SWITCHYARD_TEST_KEEP_LOGS is set).
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        for a in self.agents.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(10), a).await;
        }
        for p in self.monitoring.iter_mut() {
            let _ = p.kill().await;
        }
        let _ = self.operator.kill().await;
        if std::env::var_os("SWITCHYARD_TEST_KEEP_LOGS").is_some() {
            eprintln!("logs kept in {}", self.c.dir.display());
            self.c.server.stop().await;
        } else {
            self.c.stop().await;
        }
    }
}

/// Alertmanager, then Prometheus, both ready.
async fn start_monitoring(
    dir: &Path,
    prometheus_bin: &Path,
    alertmanager_bin: &Path,
    (prom_port, am_port): (u16, u16),
    operator_port: u16,
    targets: &str,
) -> Vec<tokio::process::Child> {
    std::fs::write(
        dir.join("alertmanager.yml"),
        format!(
            "route:\n  receiver: switchyard\n  group_by: [alertname]\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\n\
             receivers:\n  - name: switchyard\n    webhook_configs:\n      - url: http://127.0.0.1:{operator_port}/webhook/alertmanager\n        send_resolved: true\n        http_config:\n          authorization:\n            type: Bearer\n            credentials: {TOKEN}\n"
        ),
    )
    .expect("alertmanager config");
    let d = dir.display().to_string();
    let alertmanager = spawn(
        dir,
        "alertmanager",
        alertmanager_bin,
        &[
            format!("--config.file={d}/alertmanager.yml"),
            format!("--storage.path={d}/alertmanager-data"),
            format!("--web.listen-address=127.0.0.1:{am_port}"),
            // No gossip: one instance, and no port of its own.
            "--cluster.listen-address=".into(),
        ],
    );
    std::fs::write(dir.join("rules.yml"), test_rules()).expect("rules");
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
             rule_files: [{d}/rules.yml]\n\
             alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{am_port}']\n\
             scrape_configs:\n  - job_name: switchyard-agents\n    static_configs:\n{targets}"
        ),
    )
    .expect("prometheus config");
    let prometheus = spawn(
        dir,
        "prometheus",
        prometheus_bin,
        &[
            format!("--config.file={d}/prometheus.yml"),
            format!("--storage.tsdb.path={d}/prometheus-data"),
            format!("--web.listen-address=127.0.0.1:{prom_port}"),
        ],
    );
    for (port, what) in [(am_port, "Alertmanager"), (prom_port, "Prometheus")] {
        eventually(&format!("{what} is ready"), || async {
            http(port, "GET", "/-/ready", None)
                .await
                .filter(|(code, _)| *code == 200)
        })
        .await;
    }
    vec![prometheus, alertmanager]
}

/// A plan over the whole fleet: `stages`, a canary of 2 for
/// `canary_duration`, then one wave of everything, then a 10-minute wait
/// before the next stage; `extra` is merged into its spec.
pub fn plan(
    name: &str,
    stages: &[&str],
    canary_duration: &str,
    extra: serde_json::Value,
) -> MigrationPlan {
    let mut spec = json!({
        "selector": {"matchLabels": {"app": "storage"}},
        "stages": stages,
        "canary": {"count": 2, "duration": canary_duration},
        "waves": [100],
        "waveInterval": "10m",
        "maxUnavailable": "100%",
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(json!({
        "apiVersion": "switchyard.dev/v1alpha1",
        "kind": "MigrationPlan",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }))
    .expect("plan")
}

/// The alerting path with `n` agents, timed from the fault.
pub async fn alert_rollback(n: usize) -> Result<Measured, String> {
    let f = Fleet::start(n, true).await?;
    let prom_port = f.prometheus_port.expect("monitoring");
    let p = plan(
        "alerted",
        &["DualPreferLibP2p", "DualPreferIroh"],
        "1s",
        json!({"rollback": {
            "triggers": {},
            "alertMatchers": [{"labels": {"alertname": ALERT, "namespace": NS}}],
        }}),
    );
    f.move_to_dual_libp2p(&p).await;
    // libp2p traffic in the rule's window, and the plan waiting.
    eventually("Prometheus sees the agents' libp2p traffic", || async {
        let rate = promql(
            prom_port,
            "sum(rate(switchyard_node_requests_total{transport=\"libp2p\",outcome=\"ok\"}[5s]))",
        )
        .await?;
        (rate > 0.0).then_some(())
    })
    .await;
    let phase = f
        .plans
        .get("alerted")
        .await
        .expect("plan")
        .status
        .map(|s| s.phase);
    assert_eq!(
        phase,
        Some(PlanPhase::Progressing),
        "waiting out the wave interval before the fault"
    );

    // The fault.
    let fault = Instant::now();
    f.inject(&f.names, Some("libp2p=0.5")).await;
    eprintln!("fault injected into {n} agents in {:?}", fault.elapsed());
    let am_port = f.alertmanager_port.expect("monitoring");
    let (t, all) = watch_rollback(&f, fault, Some((prom_port, am_port))).await;
    let m = t.measured(&f, "alerted", all).await;
    f.stop().await;
    Ok(m)
}

/// Times from a fault until the rollback's milestones; `None`: not seen.
#[derive(Default)]
struct Timeline {
    firing: Option<Duration>,
    delivered: Option<Duration>,
    webhook: Option<Duration>,
    first: Option<Duration>,
}

impl Timeline {
    /// With the rollback's record from `plan`.
    async fn measured(&self, f: &Fleet, plan: &str, all: Duration) -> Measured {
        let record = eventually("the rollback's record", || async {
            let p = f.plans.get(plan).await.ok()?;
            let s = p.status.as_ref()?;
            s.rollback
                .clone()
                .or_else(|| s.rollback_history.last().cloned())
        })
        .await;
        Measured {
            agents: f.names.len(),
            to_firing: self.firing,
            to_delivered: self.delivered,
            to_webhook: self.webhook,
            to_first_revert: self.first,
            to_all_reverted: all,
            trigger: record.trigger,
            reason: record.reason,
        }
    }
}

/// Poll every 20 ms from `fault` until every node is back on LibP2pOnly,
/// noting (with `monitoring`: Prometheus's and Alertmanager's ports) when
/// the alert fired, Alertmanager delivered it, the operator accepted a
/// webhook call, and the first node was told to revert. Returns the
/// milestones seen and the time until all reverted.
async fn watch_rollback(
    f: &Fleet,
    fault: Instant,
    monitoring: Option<(u16, u16)>,
) -> (Timeline, Duration) {
    let mut t = Timeline::default();
    loop {
        let now = fault.elapsed();
        assert!(
            now < WAIT,
            "no full rollback within {WAIT:?}: firing {:?}, delivered {:?}, webhook {:?}, first revert {:?}; logs in {}",
            t.firing,
            t.delivered,
            t.webhook,
            t.first,
            f.c.dir.display()
        );
        if let Some((prom, am)) = monitoring {
            t.observe_alerting(f, prom, am, fault).await;
        }
        let list = f.nodes.list(&ListParams::default()).await.expect("nodes");
        if t.first.is_none()
            && list
                .items
                .iter()
                .any(|n| n.spec.mode == Some(NetworkMode::LibP2pOnly))
        {
            t.first = Some(now);
        }
        if list.items.iter().all(|n| {
            n.spec.mode == Some(NetworkMode::LibP2pOnly)
                && n.applied_mode() == Some(NetworkMode::LibP2pOnly)
        }) {
            // Milestones not seen yet may still have happened (one poll
            // round trails the next): one last look at each.
            if let Some((prom, am)) = monitoring {
                t.observe_alerting(f, prom, am, fault).await;
            }
            return (t, now);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Timeline {
    /// Note each alerting milestone (time since `fault`) the first time it
    /// is seen.
    async fn observe_alerting(&mut self, f: &Fleet, prom: u16, am: u16, fault: Instant) {
        if self.firing.is_none()
            && let Some((200, body)) = http(prom, "GET", "/api/v1/alerts", None).await
            && firing(&body, ALERT)
        {
            self.firing = Some(fault.elapsed());
        }
        if self.delivered.is_none()
            && let Some((200, body)) = http(am, "GET", "/metrics", None).await
        {
            let webhook = ["integration=\"webhook\""];
            let sent = sample(&body, "alertmanager_notifications_total", &webhook);
            let failed = sample(&body, "alertmanager_notifications_failed_total", &webhook);
            if sent - failed >= 1.0 {
                self.delivered = Some(fault.elapsed());
            }
        }
        if self.webhook.is_none()
            && let Some((200, body)) = http(f.operator_port, "GET", "/metrics", None).await
            && sample(
                &body,
                "switchyard_operator_webhook_requests_total",
                &["outcome=\"ok\""],
            ) >= 1.0
        {
            self.webhook = Some(fault.elapsed());
        }
    }
}

/// Prometheus's `/api/v1/alerts` body lists `alert` in state firing.
fn firing(body: &str, alert: &str) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        return false;
    };
    v["data"]["alerts"].as_array().is_some_and(|alerts| {
        alerts
            .iter()
            .any(|a| a["labels"]["alertname"] == alert && a["state"] == "firing")
    })
}

/// The built-in analysis path with `n` agents, timed from the fault: the
/// whole fleet on DualPreferLibP2p, analysed every `interval` (error rate
/// at most 5%, at least 20 requests), then half of every agent's libp2p
/// sends fail.
pub async fn analysis_rollback(n: usize, interval: Duration) -> Measured {
    let f = Fleet::start(n, false).await.expect("fleet");
    let p = plan(
        "analysed",
        &["DualPreferLibP2p", "DualPreferIroh"],
        "1s",
        json!({
            "analysis": {
                "interval": format!("{}ms", interval.as_millis()),
                "minSampleSize": 20,
                "metrics": [{"name": "errors", "builtin": "ErrorRate", "max": 0.05}],
            },
            "rollback": {"triggers": {}},
        }),
    );
    f.move_to_dual_libp2p(&p).await;
    // The wave has passed its analysis; the plan waits for the next stage.
    let passed = f
        .wait_plan("analysed", "the wave's passing analysis", |p| {
            p.status.as_ref().is_some_and(|s| {
                s.phase == PlanPhase::Progressing
                    && s.wave.is_some()
                    && s.last_analysis
                        .as_ref()
                        .is_some_and(|a| a.verdict == switchyard_crds::Verdict::Pass)
            })
        })
        .await;
    // The first scrape of a new step only sets its starting point: wait
    // for a measurement within the waiting step, then inject the fault
    // right after it (the slowest phase: a whole interval to the next).
    let measured_at = |p: &MigrationPlan| {
        p.status
            .as_ref()
            .and_then(|s| s.last_analysis.as_ref())
            .and_then(|a| a.time.clone())
    };
    let first = measured_at(&passed);
    f.wait_plan("analysed", "a measurement in the waiting step", |p| {
        let s = p.status.as_ref();
        measured_at(p) != first
            && s.and_then(|s| s.step_started_at.as_ref()).map(|t| t.0) < measured_at(p).map(|t| t.0)
    })
    .await;
    let fault = Instant::now();
    f.inject(&f.names, Some("libp2p=0.5")).await;
    let (t, all) = watch_rollback(&f, fault, None).await;
    let m = t.measured(&f, "analysed", all).await;
    f.stop().await;
    m
}
