//! `switchyard-node-agent`: runs in every fleet pod. Flags, environment
//! (friendly to the downward API: `POD_NAME`, `POD_NAMESPACE`, `POD_IP`,
//! `NODE_NAME`) and an optional YAML file, in that order of precedence.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use serde::Deserialize;
use switchyard_node_agent::NetworkMode;
use switchyard_node_agent::agent::{self, AgentConfig};
use switchyard_node_agent::manager::ManagerConfig;

#[derive(Parser, Debug)]
#[command(
    name = "switchyard-node-agent",
    about = "Dual-stack (libp2p + iroh) node agent driven by its FleetNode's spec.mode"
)]
struct Args {
    /// A YAML file with any of the settings below (flag names in
    /// camelCase, e.g. `probeRate: 2`); flags and environment win.
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    /// The FleetNode's name: the pod's name.
    #[arg(long, env = "POD_NAME")]
    name: Option<String>,
    /// The pod's namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: Option<String>,
    /// The pod's IP, where peers and the operator reach it.
    #[arg(long, env = "POD_IP")]
    pod_ip: Option<IpAddr>,
    /// The Kubernetes node the pod runs on.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Mode of a FleetNode this agent creates (an existing one keeps its own).
    #[arg(long, env = "SWITCHYARD_INITIAL_MODE")]
    initial_mode: Option<NetworkMode>,
    /// File holding the ed25519 secret (created, mode 0600, when missing).
    #[arg(long, env = "SWITCHYARD_IDENTITY_FILE")]
    identity_file: Option<PathBuf>,
    /// Secret holding the ed25519 secret under key `ed25519` (created when missing).
    #[arg(long, env = "SWITCHYARD_IDENTITY_SECRET")]
    identity_secret: Option<String>,
    /// libp2p TCP port (default 4001; 0 picks one).
    #[arg(long, env = "SWITCHYARD_LIBP2P_PORT")]
    libp2p_port: Option<u16>,
    /// iroh UDP port (default 4002; 0 picks one).
    #[arg(long, env = "SWITCHYARD_IROH_PORT")]
    iroh_port: Option<u16>,
    /// Address of /metrics, /healthz, /readyz, /status (default 0.0.0.0:9090).
    #[arg(long, env = "SWITCHYARD_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    /// Bootstrap peers, comma-separated: `<peer id>@<multiaddr>`,
    /// `<endpoint id>@<ip>:<port>` or `dns:<name>`.
    #[arg(long, env = "SWITCHYARD_BOOTSTRAP", value_delimiter = ',')]
    bootstrap: Option<Vec<String>>,
    /// Connected peers needed for /readyz (default 0).
    #[arg(long, env = "SWITCHYARD_MIN_PEERS")]
    min_peers: Option<usize>,
    /// Probe requests per second to known peers (default 1; 0 for none).
    #[arg(long, env = "SWITCHYARD_PROBE_RATE")]
    probe_rate: Option<f64>,
    /// Heartbeat interval in milliseconds (default 5000).
    #[arg(long, env = "SWITCHYARD_HEARTBEAT_MS")]
    heartbeat_ms: Option<u64>,
    /// Seconds SIGTERM may take (default 10).
    #[arg(long, env = "SWITCHYARD_SHUTDOWN_SECONDS")]
    shutdown_seconds: Option<u64>,
    /// Honour the FleetNode annotation `switchyard.dev/inject-faults`
    /// (for tests and game days; off by default).
    #[arg(long, env = "SWITCHYARD_ALLOW_FAULT_INJECTION")]
    allow_fault_injection: Option<bool>,
}

/// The same settings from a file.
#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileConfig {
    name: Option<String>,
    namespace: Option<String>,
    pod_ip: Option<IpAddr>,
    node_name: Option<String>,
    initial_mode: Option<NetworkMode>,
    identity_file: Option<PathBuf>,
    identity_secret: Option<String>,
    libp2p_port: Option<u16>,
    iroh_port: Option<u16>,
    http_addr: Option<SocketAddr>,
    bootstrap: Option<Vec<String>>,
    min_peers: Option<usize>,
    probe_rate: Option<f64>,
    heartbeat_ms: Option<u64>,
    shutdown_seconds: Option<u64>,
    allow_fault_injection: Option<bool>,
}

fn settings(args: Args) -> anyhow::Result<AgentConfig> {
    let file: FileConfig = match &args.config {
        None => FileConfig::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading --config {}", path.display()))?;
            serde_saphyr::from_str(&text).map_err(|e| {
                anyhow::anyhow!(
                    "--config {}: {e}; see --help for the settings",
                    path.display()
                )
            })?
        }
    };
    let name = args
        .name
        .or(file.name)
        .context("no node name: set --name or POD_NAME (the downward API's metadata.name)")?;
    let namespace = args.namespace.or(file.namespace).context(
        "no namespace: set --namespace or POD_NAMESPACE (the downward API's metadata.namespace)",
    )?;
    let probe_rate = args.probe_rate.or(file.probe_rate).unwrap_or(1.0);
    anyhow::ensure!(
        probe_rate.is_finite() && probe_rate >= 0.0,
        "--probe-rate must be 0 or more, e.g. 1"
    );
    let heartbeat = Duration::from_millis(args.heartbeat_ms.or(file.heartbeat_ms).unwrap_or(5000));
    let libp2p_port = args.libp2p_port.or(file.libp2p_port).unwrap_or(4001);
    let iroh_port = args.iroh_port.or(file.iroh_port).unwrap_or(4002);
    anyhow::ensure!(
        heartbeat >= Duration::from_millis(50),
        "--heartbeat-ms must be at least 50"
    );
    Ok(AgentConfig {
        name,
        namespace,
        pod_ip: args
            .pod_ip
            .or(file.pod_ip)
            .unwrap_or(IpAddr::from([0, 0, 0, 0])),
        node_name: args.node_name.or(file.node_name),
        initial_mode: args
            .initial_mode
            .or(file.initial_mode)
            .unwrap_or(NetworkMode::LibP2pOnly),
        identity_file: args.identity_file.or(file.identity_file),
        identity_secret: args.identity_secret.or(file.identity_secret),
        libp2p_port,
        iroh_port,
        http_addr: args
            .http_addr
            .or(file.http_addr)
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 9090))),
        bootstrap: args.bootstrap.or(file.bootstrap).unwrap_or_default(),
        min_peers: args.min_peers.or(file.min_peers).unwrap_or(0),
        probe_rate,
        shutdown_timeout: Duration::from_secs(
            args.shutdown_seconds
                .or(file.shutdown_seconds)
                .unwrap_or(10),
        ),
        allow_fault_injection: args
            .allow_fault_injection
            .or(file.allow_fault_injection)
            .unwrap_or(false),
        manager: ManagerConfig {
            heartbeat_interval: heartbeat,
            // A fleet's agents share their ports: `dns:` entries use ours.
            dns_libp2p_port: if libp2p_port == 0 { 4001 } else { libp2p_port },
            dns_iroh_port: if iroh_port == 0 { 4002 } else { iroh_port },
            ..ManagerConfig::default()
        },
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let config = settings(Args::parse())?;
    agent::run(config).await
}
