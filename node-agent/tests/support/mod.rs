//! What the agent-process tests share: an agent process on 127.0.0.1
//! against the in-memory API server, killed when dropped, with its
//! workload API on a reserved port; and small HTTP helpers.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kube::api::Api;
use switchyard_crds::FleetNode;
use switchyard_testbed::cluster::TestCluster;
use switchyard_testbed::ports::{self, Port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The namespace of the test fleets.
pub const NS: &str = "fleet";

/// An agent process, killed if the test ends early.
pub struct Agent {
    pub name: String,
    pub child: Child,
    /// The workload API's port, held while the agent lives.
    pub workload: Port,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    pub fn start(cluster: &TestCluster, name: &str, bootstrap: &[String]) -> Agent {
        let key = cluster.dir.join(format!("{name}.key"));
        Self::start_with(
            cluster,
            name,
            bootstrap,
            &["--identity-file", &key.to_string_lossy()],
        )
    }

    pub fn start_with(
        cluster: &TestCluster,
        name: &str,
        bootstrap: &[String],
        extra: &[&str],
    ) -> Agent {
        let log = std::fs::File::create(cluster.dir.join(format!("{name}.log"))).expect("log");
        let workload = ports::reserve();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard-node-agent"));
        cmd.env("KUBECONFIG", &cluster.kubeconfig)
            .env("RUST_LOG", "info,switchyard_node_agent=debug")
            .args(["--name", name, "--namespace", NS, "--pod-ip", "127.0.0.1"])
            .args(["--libp2p-port", "0", "--iroh-port", "0"])
            .args(["--http-addr", "127.0.0.1:0"])
            .args(["--workload-addr", &workload.addr().to_string()]);
        // Fast probes and heartbeats, unless the test says otherwise.
        for (flag, value) in [("--probe-rate", "10"), ("--heartbeat-interval", "500ms")] {
            if !extra.contains(&flag) {
                cmd.args([flag, value]);
            }
        }
        cmd.args(extra)
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log));
        if !bootstrap.is_empty() {
            cmd.arg("--bootstrap").arg(bootstrap.join(","));
        }
        Agent {
            name: name.into(),
            child: cmd.spawn().expect("agent starts"),
            workload,
        }
    }

    /// SIGTERM, and the exit status within `bound`.
    pub fn terminate(mut self, bound: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + bound;
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {bound:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        // Fine-grained: the switch latency is measured through this.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// GET a URL of the form http://127.0.0.1:PORT/path (HTTP/1.0, no deps).
pub async fn get(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/')?;
    let mut s = tokio::net::TcpStream::connect(host).await.ok()?;
    s.write_all(format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    Some(buf.split_once("\r\n\r\n")?.1.to_owned())
}

pub fn metric(text: &str, name: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub async fn fleet_node(api: &Api<FleetNode>, name: &str) -> Option<FleetNode> {
    api.get_opt(name).await.ok().flatten()
}

/// The node's metrics URL, once it has reported one.
pub async fn metrics_url(api: &Api<FleetNode>, name: &str) -> String {
    eventually(
        Duration::from_secs(30),
        "the agent reports its status",
        || async { fleet_node(api, name).await?.status?.metrics_endpoint },
    )
    .await
}

impl Agent {
    /// The base URL of its workload API.
    pub fn api(&self) -> String {
        format!("http://{}", self.workload.addr())
    }
}
