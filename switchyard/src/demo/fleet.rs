//! The demo's cluster and fleet: the in-memory API server with the CRDs,
//! N real node-agents in this process (the agent's own `run_with`: libp2p
//! and iroh on 127.0.0.1, its DHT, its workload API), and the operator in
//! a process of its own.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use switchyard_crds::{ANNOTATION_INJECT_FAULTS, FleetNode, NetworkMode};
use switchyard_node_agent::agent::{AgentConfig, run_with};
use switchyard_node_agent::identity::Identity;
use switchyard_testbed::apiserver::Config;
use switchyard_testbed::cluster::TestCluster;
use switchyard_testbed::ports;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::plan::{LABEL, NAMESPACE, Scale, node_name};

/// The bound on each wait while the fleet starts.
const START_WAIT: Duration = Duration::from_secs(120);

/// Everything the demo started.
pub struct Fleet {
    /// The in-memory cluster (its scratch directory holds the kubeconfig,
    /// the operator's log and the agents' keys).
    pub cluster: TestCluster,
    /// FleetNodes.
    pub nodes: Api<FleetNode>,
    /// Each agent's workload API.
    pub apis: Vec<SocketAddr>,
    /// The operator's dashboard.
    pub dashboard: String,
    operator: tokio::process::Child,
    agents: Vec<JoinHandle<anyhow::Result<()>>>,
    stop: watch::Sender<bool>,
    /// Ports handed to the operator and the workload APIs, held until the
    /// fleet stops so that nothing else takes them.
    _ports: Vec<ports::Port>,
}

impl Fleet {
    /// Start the cluster, `n` agents and the operator; `say` hears how far
    /// it got.
    pub async fn start(n: usize, say: &dyn Fn(&str)) -> anyhow::Result<Fleet> {
        let cluster = TestCluster::start(Config::default(), "demo").await?;
        cluster.namespace(NAMESPACE).await?;
        let names: Vec<String> = (0..n).map(node_name).collect();
        let labels: BTreeMap<String, String> = [(LABEL.0.into(), LABEL.1.into())].into();
        cluster
            .register_nodes(NAMESPACE, names.clone(), &labels, NetworkMode::LibP2pOnly)
            .await?;
        let nodes: Api<FleetNode> = Api::namespaced(cluster.client.clone(), NAMESPACE);
        say(&format!(
            "API server up, {n} FleetNodes registered in LibP2pOnly"
        ));

        let operator_port = ports::reserve();
        let operator = start_operator(&cluster, operator_port.addr())?;
        let dashboard = format!("http://{}/", operator_port.addr());

        let (stop, stop_rx) = watch::channel(false);
        let workload_ports: Vec<ports::Port> = (0..n).map(|_| ports::reserve()).collect();
        let apis: Vec<SocketAddr> = workload_ports.iter().map(ports::Port::addr).collect();
        let libp2p_ports: Vec<ports::Port> = (0..n).map(|_| ports::reserve()).collect();
        let peers = bootstrap_list(&cluster.dir, &names, &libp2p_ports)?;
        let start_agent = |i: usize| {
            let mut stop = stop_rx.clone();
            let others = peers
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| p.clone())
                .collect();
            let config = agent_config(
                &cluster.dir,
                &names[i],
                others,
                libp2p_ports[i].addr().port(),
                apis[i],
                Scale::new(n),
            );
            tokio::spawn(run_with(cluster.client.clone(), config, async move {
                let _ = stop.wait_for(|s| *s).await;
                Ok(())
            }))
        };
        let agents = (0..n).map(start_agent).collect();
        let mut ports = workload_ports;
        ports.extend(libp2p_ports);
        ports.push(operator_port);
        let fleet = Fleet {
            cluster,
            nodes,
            apis,
            dashboard,
            operator,
            agents,
            stop,
            _ports: ports,
        };
        fleet.await_ready(n, say).await?;
        Ok(fleet)
    }

    /// Wait until every agent reports its endpoints and its DHT routing is
    /// Healthy, and the operator serves its dashboard.
    async fn await_ready(&self, n: usize, say: &dyn Fn(&str)) -> anyhow::Result<()> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        let endpoints = wait("every agent to report its metrics endpoint", || async {
            let list = self.nodes.list(&ListParams::default()).await.ok()?;
            let urls: Vec<String> = list
                .items
                .iter()
                .filter_map(|n| n.status.as_ref()?.metrics_endpoint.clone())
                .collect();
            (urls.len() == n).then_some(urls)
        })
        .await?;
        say(&format!(
            "{n} node-agents up; waiting until each is connected to all {} others and its DHT routing is Healthy",
            n - 1
        ));
        // A plan started earlier would see partition risk and a low health
        // score that are only the fleet still meeting itself, and its
        // first minute would be the fleet's meshing: the agents heartbeat
        // every peer they learn of, and at 100 agents the ~5,000 libp2p
        // handshakes that takes (Noise's key exchanges) ate the two cores
        // while the canaries were analysed.
        let mesh = (n - 1) as f64;
        wait(
            "every agent to be connected to every other and its DHT routing Healthy",
            || async {
                for url in &endpoints {
                    let body = http.get(url).send().await.ok()?.text().await.ok()?;
                    let health = sample(&body, "switchyard_dht_routing_health")?;
                    let risk = sample(&body, "switchyard_agent_partition_risk")?;
                    let peers = sample(&body, LIBP2P_PEERS)?;
                    if health < 2.0 || risk > 0.0 || peers < mesh {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await?;
        wait("the operator to serve its dashboard", || async {
            let r = http.get(&self.dashboard).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await
    }

    /// Set, or with `None` clear, the fault injected into `names` (the
    /// agents' `switchyard.dev/inject-faults` annotation).
    pub async fn inject(&self, names: &[String], faults: Option<&str>) -> anyhow::Result<()> {
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
                .with_context(|| format!("injecting a fault into {name}"))?;
        }
        Ok(())
    }

    /// The operator's log so far, its last `lines` lines.
    pub fn operator_log(&self, lines: usize) -> String {
        let text =
            std::fs::read_to_string(self.cluster.dir.join("operator.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Stop the agents and the operator, and remove the scratch directory.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        let _ = self.operator.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.operator.wait()).await;
        let agents = futures::future::join_all(self.agents.iter_mut());
        if tokio::time::timeout(Duration::from_secs(10), agents)
            .await
            .is_err()
        {
            for a in &self.agents {
                a.abort();
            }
        }
        self.cluster.stop().await;
    }
}

/// Remove the scratch directories of demos that were killed (SIGKILL
/// leaves a demo no chance to clean up; its operator ends with it, see
/// `DEMO_PID_ENV`): each `switchyard-demo-<pid>` in `tmp` whose process
/// is gone. A pid reused since only keeps its directory. How many went.
pub fn sweep_stale(tmp: &std::path::Path) -> usize {
    let Ok(dir) = std::fs::read_dir(tmp) else {
        return 0;
    };
    let me = std::process::id();
    dir.filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("switchyard-demo-"))
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|pid| {
                    pid != me && !std::path::Path::new(&format!("/proc/{pid}")).exists()
                })
        })
        .filter(|e| std::fs::remove_dir_all(e.path()).is_ok())
        .count()
}

/// The operator: this same executable, `switchyard operator`, which runs
/// what `switchyard-operator` runs, with the built-in analysis, the Lease
/// and the dashboard on `addr`.
fn start_operator(
    cluster: &TestCluster,
    addr: SocketAddr,
) -> anyhow::Result<tokio::process::Child> {
    let exe = std::env::current_exe().context("finding this executable to start the operator")?;
    let log = std::fs::File::create(cluster.dir.join("operator.log"))?;
    tokio::process::Command::new(exe)
        .arg("operator")
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env("SWITCHYARD_NAMESPACE", NAMESPACE)
        .env("POD_NAMESPACE", NAMESPACE)
        .env("POD_NAME", "switchyard-demo-operator")
        .env("SWITCHYARD_HTTP_ADDR", addr.to_string())
        .env("SWITCHYARD_DASHBOARD", "true")
        .env("RUST_LOG", "info")
        .env(crate::DEMO_PID_ENV, std::process::id().to_string())
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting the operator")
}

/// Every agent's libp2p bootstrap entry, `<peer id>@<address>`: each
/// agent is given all the others, as a headless Service's DNS name gives a
/// real fleet's agents every pod. The identities are made here (each
/// agent loads its own from the same file), the ports reserved.
fn bootstrap_list(
    dir: &std::path::Path,
    names: &[String],
    ports: &[ports::Port],
) -> anyhow::Result<Vec<String>> {
    names
        .iter()
        .zip(ports)
        .map(|(name, port)| {
            let id = Identity::load_or_generate(&dir.join(format!("{name}.key")))
                .with_context(|| format!("making {name}'s identity"))?;
            // For reading `--log`: the agents' logs name peers by id.
            tracing::info!(node = %name, peer = %id.peer_id(), "identity");
            Ok(format!(
                "{}@/ip4/127.0.0.1/tcp/{}",
                id.peer_id(),
                port.addr().port()
            ))
        })
        .collect()
}

fn agent_config(
    dir: &std::path::Path,
    name: &str,
    bootstrap: Vec<String>,
    libp2p_port: u16,
    workload: SocketAddr,
    scale: Scale,
) -> AgentConfig {
    let mut c = AgentConfig::new(name, NAMESPACE);
    c.pod_ip = [127, 0, 0, 1].into();
    c.identity_file = Some(dir.join(format!("{name}.key")));
    c.libp2p_port = libp2p_port;
    c.iroh_port = 0;
    c.http_addr = ([127, 0, 0, 1], 0).into();
    c.bootstrap = bootstrap;
    c.probe_rate = 2.0;
    c.workload.listen = Some(workload);
    // The routing check more often than the default 30 s, so that the
    // analysis sees it; a lookup on a busy laptop is slow, not failed.
    c.dht.check_interval = scale.routing_check();
    c.dht.lookup_timeout = Duration::from_secs(30);
    c.shutdown_timeout = Duration::from_secs(3);
    c.manager.heartbeat_interval = scale.heartbeat();
    c.allow_fault_injection = true;
    c
}

/// The agents' gauge of peers connected over libp2p (all there is before
/// the plan starts).
const LIBP2P_PEERS: &str = "switchyard_node_peers{transport=\"libp2p\"}";

/// The sum of a metric's samples in a Prometheus text body.
fn sample(body: &str, metric: &str) -> Option<f64> {
    let values: Vec<f64> = body
        .lines()
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Poll `f` every 200 ms until it yields, for at most [`START_WAIT`].
async fn wait<T, F, Fut>(what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + START_WAIT;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("gave up after {START_WAIT:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_scratch_directories_of_dead_demos_are_swept() {
        let tmp =
            std::env::temp_dir().join(format!("switchyard-sweep-test-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).expect("scratch");
        // Above pid_max no process can ever run.
        let max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(4_194_304);
        let dead = tmp.join(format!("switchyard-demo-{}", max + 1));
        let mine = tmp.join(format!("switchyard-demo-{}", std::process::id()));
        let init = tmp.join("switchyard-demo-1");
        let other = tmp.join("switchyard-demo-notes");
        for d in [&dead, &mine, &init, &other] {
            std::fs::create_dir_all(d.join("inside")).expect("dir");
        }
        assert_eq!(sweep_stale(&tmp), 1);
        assert!(!dead.exists(), "a dead demo's directory is removed");
        for kept in [&mine, &init, &other] {
            assert!(kept.exists(), "{} kept", kept.display());
        }
        std::fs::remove_dir_all(&tmp).expect("cleanup");
    }
}
