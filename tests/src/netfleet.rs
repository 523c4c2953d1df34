//! A fleet on a real network: one `switchyard-node-agent` process per
//! [`Net`] host (its own namespace and address), the in-memory API server
//! and the `switchyard-operator` binary in the root namespace, on the
//! bridge's gateway address. The faults are [`Net`]'s; [`NetFleet::kill`]
//! and [`NetFleet::restart`] stop and start a host's agent (same identity,
//! same ports).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use kube::api::Api;
use switchyard_crds::{FleetNode, MigrationPlan, NetworkMode};

use crate::apiserver::Config;
use crate::cluster::TestCluster;
use crate::netns::Net;
use crate::ports::{self, Port};
use crate::serial;

/// The fleet's namespace.
pub const NS: &str = "fleet";
/// Every agent's ports, the same on every host (each has its own stack).
pub const LIBP2P_PORT: u16 = 4001;
/// iroh's UDP port.
pub const IROH_PORT: u16 = 4002;
/// `/metrics`, `/status`.
pub const HTTP_PORT: u16 = 9090;
/// The workload API.
pub const WORKLOAD_PORT: u16 = 9091;

/// How long the fleet waits for something at start.
const START_WAIT: Duration = Duration::from_secs(120);

/// Processes and network; everything stops when it drops (agents first,
/// then the operator, then the namespaces).
pub struct NetFleet {
    agents: Vec<Option<tokio::process::Child>>,
    operator: tokio::process::Child,
    /// The hosts and their faults.
    pub net: Net,
    /// The cluster (its API server on the bridge's gateway).
    pub c: TestCluster,
    /// FleetNode names, `node-00`..., one per host.
    pub names: Vec<String>,
    /// FleetNodes.
    pub nodes: Api<FleetNode>,
    /// MigrationPlans.
    pub plans: Api<MigrationPlan>,
    /// The operator's HTTP port on 127.0.0.1.
    pub operator_port: u16,
    agent_bin: PathBuf,
    bootstrap: String,
    extra: Vec<String>,
    _operator_port: Port,
    _heavy: serial::Heavy,
}

/// Poll `f` every 100 ms until it gives `Some`, for at most `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < until,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl NetFleet {
    /// `n` hosts with an agent each (`agent_bin`, with `extra` flags),
    /// and `operator_bin` leading.
    pub async fn start(
        n: usize,
        agent_bin: &Path,
        operator_bin: &Path,
        extra: &[&str],
    ) -> anyhow::Result<NetFleet> {
        anyhow::ensure!(
            agent_bin.exists(),
            "no node-agent binary at {}: cargo build -p switchyard-node-agent",
            agent_bin.display()
        );
        let heavy = serial::heavy();
        let net = Net::create(n)?;
        let c = TestCluster::start(
            Config {
                addr: SocketAddr::from((net.gateway, 0)),
                ..Config::default()
            },
            "netfleet",
        )
        .await?;
        c.namespace(NS).await?;
        let names: Vec<String> = (0..n).map(|i| format!("node-{i:02}")).collect();
        let labels: BTreeMap<String, String> = [("app".into(), "storage".into())].into();
        c.register_nodes(NS, names.clone(), &labels, NetworkMode::LibP2pOnly)
            .await?;
        let reserved = ports::reserve();
        let operator = tokio::process::Command::new(operator_bin)
            .env("KUBECONFIG", &c.kubeconfig)
            .env("SWITCHYARD_NAMESPACE", NS)
            .env(
                "SWITCHYARD_HTTP_ADDR",
                format!("127.0.0.1:{}", reserved.get()),
            )
            .env("POD_NAME", "netfleet")
            .env("RUST_LOG", "info")
            .stdout(std::fs::File::create(c.dir.join("operator.log"))?)
            .stderr(std::fs::File::create(c.dir.join("operator.err"))?)
            .kill_on_drop(true)
            .spawn()
            .context("starting the operator")?;
        let mut fleet = NetFleet {
            agents: (0..n).map(|_| None).collect(),
            operator,
            net,
            nodes: Api::namespaced(c.client.clone(), NS),
            plans: Api::namespaced(c.client.clone(), NS),
            c,
            names,
            operator_port: reserved.get(),
            agent_bin: agent_bin.to_owned(),
            bootstrap: String::new(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            _operator_port: reserved,
            _heavy: heavy,
        };
        fleet.start_agents().await?;
        Ok(fleet)
    }

    async fn start_agents(&mut self) -> anyhow::Result<()> {
        self.restart(0)?;
        let nodes = self.nodes.clone();
        let first = self.names[0].clone();
        let peer = eventually(
            "the first agent reports its identity",
            START_WAIT,
            || async {
                nodes
                    .get(&first)
                    .await
                    .ok()?
                    .status?
                    .identity
                    .map(|i| i.peer_id)
            },
        )
        .await?;
        self.bootstrap = format!("{peer}@/ip4/{}/tcp/{LIBP2P_PORT}", self.net.hosts[0].ip);
        for i in 1..self.names.len() {
            self.restart(i)?;
        }
        for name in &self.names {
            eventually(
                "every agent reports its metrics endpoint",
                START_WAIT,
                || async { nodes.get(name).await.ok()?.status?.metrics_endpoint },
            )
            .await?;
        }
        Ok(())
    }

    /// Start host `i`'s agent (again): same identity file, same ports.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let ip = self.net.hosts[i].ip;
        let name = &self.names[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.c.dir.join(format!("{name}.log")))?;
        let mut cmd = self.net.command(i, &self.agent_bin);
        cmd.args(["--name", name, "--namespace", NS])
            .args(["--pod-ip", &ip.to_string()])
            .args(["--libp2p-port", &LIBP2P_PORT.to_string()])
            .args(["--iroh-port", &IROH_PORT.to_string()])
            .args(["--http-addr", &format!("{ip}:{HTTP_PORT}")])
            .args(["--workload-addr", &format!("{ip}:{WORKLOAD_PORT}")])
            .arg("--identity-file")
            .arg(self.c.dir.join(format!("{name}.key")))
            .args(&self.extra)
            .env("KUBECONFIG", &self.c.kubeconfig)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone()?)
            .stderr(log);
        if !self.bootstrap.is_empty() {
            cmd.args(["--bootstrap", &self.bootstrap]);
        }
        self.agents[i] = Some(cmd.spawn().context("starting an agent")?);
        Ok(())
    }

    /// Every running process: each agent by its node name, and the
    /// operator.
    pub fn pids(&self) -> Vec<(String, u32)> {
        let mut out: Vec<(String, u32)> = self
            .names
            .iter()
            .zip(&self.agents)
            .filter_map(|(n, a)| Some((n.clone(), a.as_ref()?.id()?)))
            .collect();
        if let Some(pid) = self.operator.id() {
            out.push(("operator".into(), pid));
        }
        out
    }

    /// Kill host `i`'s agent (SIGKILL: no goodbye to its peers).
    pub async fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.agents[i].take() {
            let _ = child.kill().await;
        }
    }

    /// Wait (at most `within`) until every FleetNode satisfies `want`.
    pub async fn wait_nodes(
        &self,
        what: &str,
        within: Duration,
        want: impl Fn(&FleetNode) -> bool,
    ) -> anyhow::Result<()> {
        eventually(what, within, || async {
            let list = self.nodes.list(&Default::default()).await.ok()?;
            list.items.iter().all(&want).then_some(())
        })
        .await
    }

    /// Agent `i`'s workload API.
    pub fn workload_api(&self, i: usize) -> String {
        format!("http://{}:{WORKLOAD_PORT}", self.net.hosts[i].ip)
    }

    /// Agent `i`'s `/metrics`.
    pub fn metrics_url(&self, i: usize) -> String {
        format!("http://{}:{HTTP_PORT}/metrics", self.net.hosts[i].ip)
    }

    /// Stop everything and remove the scratch directory (kept with the
    /// logs when SWITCHYARD_TEST_KEEP_LOGS is set).
    pub async fn stop(mut self) {
        for i in 0..self.agents.len() {
            self.kill(i).await;
        }
        let _ = self.operator.kill().await;
        let c = self.c;
        if std::env::var_os("SWITCHYARD_TEST_KEEP_LOGS").is_none() {
            c.stop().await;
        } else {
            eprintln!("logs kept in {}", c.dir.display());
            c.server.stop().await;
        }
    }
}
