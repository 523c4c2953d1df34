//! The agent binary's settings. One list, [`Settings`], gives the flags,
//! their environment variables and the YAML file's keys (the flag in
//! camelCase: `--heartbeat-interval` is `heartbeatInterval`). Flags and
//! environment win over the file; what neither sets takes the defaults of
//! [`AgentConfig`]'s parts ([`NodeConfig`], [`ManagerConfig`]), which
//! live in their `Default` impls. [`Settings::resolve`] checks every value
//! and names the setting it refuses.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use libp2p::PeerId;

use crate::NetworkMode;
use crate::agent::AgentConfig;
use crate::bridge::NodeConfig;
use crate::dht::DhtConfig;
use crate::manager::ManagerConfig;
use crate::workload::WorkloadConfig;

/// A duration as a person writes it: `5s`, `250ms`, `1m30s`, `2.5s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub Duration);

impl FromStr for Span {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        static PARSER: jiff::fmt::friendly::SpanParser = jiff::fmt::friendly::SpanParser::new();
        PARSER
            .parse_unsigned_duration(s.trim())
            .map(Span)
            .map_err(|e| format!("{s:?} is not a duration such as 5s, 250ms or 1m30s: {e}"))
    }
}

impl<'de> serde::Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Declares [`Settings`] once: each field becomes an optional flag with
/// its environment variable and an optional key of the file.
macro_rules! settings {
    ($( $(#[$attr:meta])* $field:ident : $ty:ty ),* $(,)?) => {
        /// Every setting of the agent binary; unset ones take the defaults.
        #[derive(clap::Parser, serde::Deserialize, Debug, Default)]
        #[command(
            name = "switchyard-node-agent",
            version,
            about = "Dual-stack (libp2p + iroh) node agent driven by its FleetNode's spec.mode"
        )]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        pub struct Settings {
            $( $(#[$attr])* pub $field: Option<$ty>, )*
        }

        impl Settings {
            /// Each of `self`'s values, else `file`'s.
            fn or(self, file: Settings) -> Settings {
                Settings { $( $field: self.$field.or(file.$field), )* }
            }
        }
    };
}

settings! {
    /// A YAML file with any of these settings, keyed by the flag in
    /// camelCase (`probeRate: 2`, `heartbeatInterval: 5s`); flags and
    /// environment win.
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    #[serde(skip)]
    config: PathBuf,
    /// The FleetNode's name: the pod's name.
    #[arg(long, env = "POD_NAME")]
    name: String,
    /// The pod's namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: String,
    /// The pod's IP, where peers and the operator reach it. Defaults to
    /// 0.0.0.0.
    #[arg(long, env = "POD_IP")]
    pod_ip: IpAddr,
    /// The Kubernetes node the pod runs on.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Mode of a FleetNode this agent creates (an existing one keeps its
    /// own). Defaults to LibP2pOnly.
    #[arg(long, env = "SWITCHYARD_INITIAL_MODE")]
    initial_mode: NetworkMode,
    /// File holding the ed25519 secret (created, mode 0600, when missing).
    #[arg(long, env = "SWITCHYARD_IDENTITY_FILE")]
    identity_file: PathBuf,
    /// Secret holding the ed25519 secret under key `ed25519` (created when
    /// missing).
    #[arg(long, env = "SWITCHYARD_IDENTITY_SECRET")]
    identity_secret: String,
    /// libp2p TCP port; 0 picks one. Defaults to 4001.
    #[arg(long, env = "SWITCHYARD_LIBP2P_PORT")]
    libp2p_port: u16,
    /// iroh UDP port; 0 picks one. Defaults to 4002.
    #[arg(long, env = "SWITCHYARD_IROH_PORT")]
    iroh_port: u16,
    /// Address of /metrics, /healthz, /readyz and /status. Defaults to
    /// 0.0.0.0:9090.
    #[arg(long, env = "SWITCHYARD_HTTP_ADDR")]
    http_addr: SocketAddr,
    /// Bootstrap peers, comma-separated: `<peer id>@<multiaddr>`,
    /// `<endpoint id>@<ip>:<port>` or `dns:<name>`. Defaults to none.
    #[arg(long, env = "SWITCHYARD_BOOTSTRAP", value_delimiter = ',')]
    bootstrap: Vec<String>,
    /// Identities allowed to connect, comma-separated: libp2p peer ids
    /// (12D3KooW…) or iroh endpoint ids. When this or --allowlist-file
    /// names any, every other identity is refused on both transports.
    /// Defaults to none: every identity may connect.
    #[arg(long, env = "SWITCHYARD_ALLOWLIST", value_delimiter = ',')]
    allowlist: Vec<String>,
    /// A file of allowed identities, one per line (`#` starts a comment);
    /// added to --allowlist.
    #[arg(long, env = "SWITCHYARD_ALLOWLIST_FILE")]
    allowlist_file: PathBuf,
    /// Connected peers needed for /readyz. Defaults to 0.
    #[arg(long, env = "SWITCHYARD_MIN_PEERS")]
    min_peers: usize,
    /// Probe requests per second to known peers; 0 for none. Defaults
    /// to 1. Unless set, probes pause while a workload uses the workload
    /// API: its own traffic is measured instead.
    #[arg(long, env = "SWITCHYARD_PROBE_RATE")]
    probe_rate: f64,
    /// Address of the workload API (HTTP/JSON), for the application
    /// container in the pod. Defaults to 127.0.0.1:9091: never the pod
    /// IP unless set so.
    #[arg(long, env = "SWITCHYARD_WORKLOAD_ADDR")]
    workload_addr: SocketAddr,
    /// A Unix socket to serve the workload API on as well (in a volume
    /// shared with the workload). Defaults to none.
    #[arg(long, env = "SWITCHYARD_WORKLOAD_SOCKET")]
    workload_socket: PathBuf,
    /// The largest workload API request body, in bytes. Defaults to
    /// 1048576.
    #[arg(long, env = "SWITCHYARD_WORKLOAD_MAX_BODY")]
    workload_max_body: usize,
    /// Requests from peers per workload protocol that may wait for the
    /// workload; past it, senders are told the node is busy. Defaults to
    /// 64.
    #[arg(long, env = "SWITCHYARD_WORKLOAD_MAX_PENDING")]
    workload_max_pending: usize,
    /// How long a request from a peer waits for the workload's answer
    /// before the sender is told it got none. Defaults to 5s.
    #[arg(long, env = "SWITCHYARD_WORKLOAD_ANSWER_TIMEOUT")]
    workload_answer_timeout: Span,
    /// The largest DHT record value, in bytes. Defaults to 65536.
    #[arg(long, env = "SWITCHYARD_DHT_MAX_RECORD_SIZE")]
    dht_max_record_size: usize,
    /// The most DHT records this node holds. Defaults to 20000.
    #[arg(long, env = "SWITCHYARD_DHT_MAX_RECORDS")]
    dht_max_records: usize,
    /// How long a DHT record lives after it was last stored. Defaults to
    /// 36h.
    #[arg(long, env = "SWITCHYARD_DHT_RECORD_TTL")]
    dht_record_ttl: Span,
    /// How often DHT records are stored again on the closest peers.
    /// Defaults to 1h.
    #[arg(long, env = "SWITCHYARD_DHT_REPUBLISH_INTERVAL")]
    dht_republish_interval: Span,
    /// How often each DHT bucket is refreshed. Defaults to 10m.
    #[arg(long, env = "SWITCHYARD_DHT_REFRESH_INTERVAL")]
    dht_refresh_interval: Span,
    /// How often DHT routing health is checked. Defaults to 30s.
    #[arg(long, env = "SWITCHYARD_DHT_CHECK_INTERVAL")]
    dht_check_interval: Span,
    /// DHT lookups in flight at once; past it, callers wait. Defaults to
    /// 32.
    #[arg(long, env = "SWITCHYARD_DHT_MAX_LOOKUPS")]
    dht_max_lookups: usize,
    /// How long one DHT request may take before its peer counts as failed
    /// for that lookup. Defaults to 2s.
    #[arg(long, env = "SWITCHYARD_DHT_REQUEST_TIMEOUT")]
    dht_request_timeout: Span,
    /// Time between heartbeats to a peer, per transport. Defaults to 5s.
    #[arg(long, env = "SWITCHYARD_HEARTBEAT_INTERVAL")]
    heartbeat_interval: Span,
    /// A heartbeat unanswered this long is a miss (one that must dial
    /// first gets three times as long). Defaults to 1s.
    #[arg(long, env = "SWITCHYARD_HEARTBEAT_TIMEOUT")]
    heartbeat_timeout: Span,
    /// Misses in a row that make a peer Unresponsive. Defaults to 2.
    #[arg(long, env = "SWITCHYARD_HEARTBEAT_MISSES")]
    heartbeat_misses: u32,
    /// How long a peer stays Unresponsive before its connection is given
    /// up and redialled. Defaults to 10s.
    #[arg(long, env = "SWITCHYARD_DISCONNECT_AFTER")]
    disconnect_after: Span,
    /// The first redial delay; it doubles up to --redial-max. Defaults to
    /// 250ms.
    #[arg(long, env = "SWITCHYARD_REDIAL_INITIAL")]
    redial_initial: Span,
    /// The longest redial delay. Defaults to 8s.
    #[arg(long, env = "SWITCHYARD_REDIAL_MAX")]
    redial_max: Span,
    /// Each redial delay is spread by up to this share either way, from
    /// 0 to 1. Defaults to 0.2.
    #[arg(long, env = "SWITCHYARD_REDIAL_JITTER")]
    redial_jitter: f64,
    /// Redials before a peer is Failed and redialled only every
    /// --slow-redial. Defaults to 10.
    #[arg(long, env = "SWITCHYARD_REDIAL_RETRIES")]
    redial_retries: u32,
    /// The redial period of a Failed peer. Defaults to 30s.
    #[arg(long, env = "SWITCHYARD_SLOW_REDIAL")]
    slow_redial: Span,
    /// Dials in progress at once, over all peers and transports. Defaults
    /// to 8.
    #[arg(long, env = "SWITCHYARD_MAX_CONCURRENT_DIALS")]
    max_concurrent_dials: usize,
    /// The whole budget of one request, retries included. Defaults to 10s.
    #[arg(long, env = "SWITCHYARD_REQUEST_TIMEOUT")]
    request_timeout: Span,
    /// The largest frame sent or accepted, in bytes (at most 64 MiB); a
    /// bigger one is refused and its connection dropped. Defaults to
    /// 4194315: 4 MiB of payload and the 11-byte header.
    #[arg(long, env = "SWITCHYARD_MAX_FRAME_SIZE")]
    max_frame_size: usize,
    /// A libp2p connection with nothing in flight is closed after this
    /// long. Defaults to 60s.
    #[arg(long, env = "SWITCHYARD_IDLE_TIMEOUT")]
    idle_timeout: Span,
    /// An iroh relay to use (https://…). Defaults to none: direct
    /// connections only.
    #[arg(long, env = "SWITCHYARD_RELAY_URL")]
    relay_url: String,
    /// The agent version peers see in libp2p's identify. Defaults to
    /// switchyard-node-agent/<version>.
    #[arg(long, env = "SWITCHYARD_LIBP2P_AGENT_VERSION")]
    libp2p_agent_version: String,
    /// How long SIGTERM may take. Defaults to 10s.
    #[arg(long, env = "SWITCHYARD_SHUTDOWN_TIMEOUT")]
    shutdown_timeout: Span,
    /// Honour the FleetNode annotation `switchyard.dev/inject-faults` (for
    /// tests and game days). Defaults to false.
    #[arg(long, env = "SWITCHYARD_ALLOW_FAULT_INJECTION")]
    allow_fault_injection: bool,
}

impl Settings {
    /// These settings over those of their `--config` file (if any),
    /// checked and completed with the defaults.
    pub fn resolve(self) -> anyhow::Result<AgentConfig> {
        let file = match &self.config {
            None => Settings::default(),
            Some(path) => Settings::from_file(path)?,
        };
        self.or(file).into_config()
    }

    /// The settings in YAML text.
    pub fn from_yaml(text: &str) -> Result<Settings, serde_saphyr::Error> {
        serde_saphyr::from_str(text)
    }

    /// The settings in a YAML file.
    pub fn from_file(path: &Path) -> anyhow::Result<Settings> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading --config {}: {e}", path.display()))?;
        Settings::from_yaml(&text).map_err(|e| {
            anyhow::anyhow!(
                "--config {}: {e}; see --help for the settings",
                path.display()
            )
        })
    }

    fn into_config(mut self) -> anyhow::Result<AgentConfig> {
        use anyhow::Context as _;
        let name = self
            .name
            .take()
            .context("no node name: set --name or POD_NAME (the downward API's metadata.name)")?;
        let namespace = self.namespace.take().context(
            "no namespace: set --namespace or POD_NAMESPACE (the downward API's metadata.namespace)",
        )?;
        let mut config = AgentConfig::new(name, namespace);
        set(&mut config.libp2p_port, self.libp2p_port);
        set(&mut config.iroh_port, self.iroh_port);
        set(&mut config.pod_ip, self.pod_ip);
        config.node_name = self.node_name.take();
        set(&mut config.initial_mode, self.initial_mode);
        config.identity_file = self.identity_file.take();
        config.identity_secret = self.identity_secret.take();
        set(&mut config.http_addr, self.http_addr);
        set(&mut config.bootstrap, self.bootstrap.take());
        set(&mut config.min_peers, self.min_peers);
        if let Some(rate) = self.probe_rate {
            anyhow::ensure!(
                rate.is_finite() && rate >= 0.0,
                "--probe-rate must be 0 or more, e.g. 1 (got {rate})"
            );
            config.probe_rate = rate;
            config.probes_with_workload = true;
        }
        set_positive(
            &mut config.shutdown_timeout,
            "--shutdown-timeout",
            self.shutdown_timeout,
        )?;
        set(
            &mut config.allow_fault_injection,
            self.allow_fault_injection,
        );
        config.manager = manager(&self, config.manager, config.libp2p_port, config.iroh_port)?;
        config.workload = workload(&self, config.workload)?;
        config.dht = dht(&self, config.dht)?;
        config.node = node(self, config.node)?;
        Ok(config)
    }
}

/// Replace `slot` when `value` is set.
fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

/// Replace `slot` with `span` when it is set, refusing zero.
fn set_positive(slot: &mut Duration, flag: &str, span: Option<Span>) -> anyhow::Result<()> {
    set(slot, positive(flag, span)?);
    Ok(())
}

/// A duration that must be more than zero.
fn positive(flag: &str, span: Option<Span>) -> anyhow::Result<Option<Duration>> {
    match span {
        Some(Span(d)) if d.is_zero() => {
            anyhow::bail!("{flag} must be more than 0, e.g. 1s")
        }
        other => Ok(other.map(|s| s.0)),
    }
}

fn manager(
    s: &Settings,
    mut m: ManagerConfig,
    libp2p_port: u16,
    iroh_port: u16,
) -> anyhow::Result<ManagerConfig> {
    set_positive(
        &mut m.heartbeat_interval,
        "--heartbeat-interval",
        s.heartbeat_interval,
    )?;
    set_positive(
        &mut m.heartbeat_timeout,
        "--heartbeat-timeout",
        s.heartbeat_timeout,
    )?;
    if let Some(n) = s.heartbeat_misses {
        anyhow::ensure!(n >= 1, "--heartbeat-misses must be 1 or more, e.g. 2");
        m.unresponsive_after = n;
    }
    set_positive(
        &mut m.disconnect_after,
        "--disconnect-after",
        s.disconnect_after,
    )?;
    set_positive(&mut m.backoff_initial, "--redial-initial", s.redial_initial)?;
    set_positive(&mut m.backoff_max, "--redial-max", s.redial_max)?;
    anyhow::ensure!(
        m.backoff_initial <= m.backoff_max,
        "--redial-initial ({:?}) must not be more than --redial-max ({:?})",
        m.backoff_initial,
        m.backoff_max
    );
    if let Some(j) = s.redial_jitter {
        anyhow::ensure!(
            (0.0..1.0).contains(&j),
            "--redial-jitter must be at least 0 and less than 1, e.g. 0.2 (got {j})"
        );
        m.jitter = j;
    }
    set(&mut m.max_retries, s.redial_retries);
    set_positive(&mut m.slow_retry, "--slow-redial", s.slow_redial)?;
    if let Some(n) = s.max_concurrent_dials {
        anyhow::ensure!(n >= 1, "--max-concurrent-dials must be 1 or more, e.g. 8");
        m.max_concurrent_dials = n;
    }
    // A fleet's agents share their ports: `dns:` entries use ours.
    if libp2p_port != 0 {
        m.dns_libp2p_port = libp2p_port;
    }
    if iroh_port != 0 {
        m.dns_iroh_port = iroh_port;
    }
    Ok(m)
}

fn workload(s: &Settings, mut w: WorkloadConfig) -> anyhow::Result<WorkloadConfig> {
    if let Some(a) = s.workload_addr {
        w.listen = Some(a);
    }
    if let Some(p) = &s.workload_socket {
        w.socket = Some(p.clone());
    }
    if let Some(n) = s.workload_max_body {
        anyhow::ensure!(
            (1024..=crate::wire::MAX_FRAME_LIMIT).contains(&n),
            "--workload-max-body must be from 1024 to {} bytes (got {n})",
            crate::wire::MAX_FRAME_LIMIT
        );
        w.max_body = n;
    }
    if let Some(n) = s.workload_max_pending {
        anyhow::ensure!(n >= 1, "--workload-max-pending must be 1 or more, e.g. 64");
        w.max_pending = n;
    }
    set_positive(
        &mut w.answer_timeout,
        "--workload-answer-timeout",
        s.workload_answer_timeout,
    )?;
    Ok(w)
}

fn dht(s: &Settings, mut d: DhtConfig) -> anyhow::Result<DhtConfig> {
    if let Some(n) = s.dht_max_record_size {
        anyhow::ensure!(
            (1..=crate::wire::MAX_FRAME_LIMIT / 2).contains(&n),
            "--dht-max-record-size must be from 1 to {} bytes (got {n})",
            crate::wire::MAX_FRAME_LIMIT / 2
        );
        d.max_record_size = n;
    }
    if let Some(n) = s.dht_max_records {
        anyhow::ensure!(n >= 1, "--dht-max-records must be 1 or more, e.g. 20000");
        d.max_records = n;
    }
    set_positive(&mut d.record_ttl, "--dht-record-ttl", s.dht_record_ttl)?;
    set_positive(
        &mut d.republish_interval,
        "--dht-republish-interval",
        s.dht_republish_interval,
    )?;
    set_positive(
        &mut d.refresh_interval,
        "--dht-refresh-interval",
        s.dht_refresh_interval,
    )?;
    set_positive(
        &mut d.check_interval,
        "--dht-check-interval",
        s.dht_check_interval,
    )?;
    set_positive(
        &mut d.request_timeout,
        "--dht-request-timeout",
        s.dht_request_timeout,
    )?;
    if let Some(n) = s.dht_max_lookups {
        anyhow::ensure!(n >= 1, "--dht-max-lookups must be 1 or more, e.g. 32");
        d.max_lookups = n;
    }
    Ok(d)
}

fn node(s: Settings, mut n: NodeConfig) -> anyhow::Result<NodeConfig> {
    if let Some(t) = positive("--request-timeout", s.request_timeout)? {
        n.request_timeout = t;
        n.libp2p.request_timeout = t;
    }
    if let Some(size) = s.max_frame_size {
        anyhow::ensure!(
            (1024..=crate::wire::MAX_FRAME_LIMIT).contains(&size),
            "--max-frame-size must be from 1024 to {} bytes (got {size})",
            crate::wire::MAX_FRAME_LIMIT
        );
        n.libp2p.max_frame = size;
        n.iroh.max_frame = size;
    }
    set_positive(&mut n.libp2p.idle_timeout, "--idle-timeout", s.idle_timeout)?;
    if let Some(url) = s.relay_url {
        n.iroh.relay_url = Some(url.parse().map_err(|e| {
            anyhow::anyhow!(
                "--relay-url {url:?} is not a URL such as https://relay.example.org: {e}"
            )
        })?);
    }
    if let Some(v) = s.libp2p_agent_version {
        anyhow::ensure!(
            !v.trim().is_empty(),
            "--libp2p-agent-version must not be empty"
        );
        n.libp2p.agent_version = v;
    }
    n.allowlist = allowlist(
        &s.allowlist.unwrap_or_default(),
        s.allowlist_file.as_deref(),
    )?;
    Ok(n)
}

/// The identities of `--allowlist` and `--allowlist-file`.
fn allowlist(listed: &[String], file: Option<&Path>) -> anyhow::Result<Vec<PeerId>> {
    let mut ids = Vec::new();
    for (i, entry) in listed.iter().enumerate() {
        let id = crate::identity::parse_id(entry)
            .map_err(|e| anyhow::anyhow!("--allowlist entry {i}: {e}"))?;
        ids.push(id);
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading --allowlist-file {}: {e}", path.display()))?;
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let id = crate::identity::parse_id(line).map_err(|e| {
                anyhow::anyhow!("--allowlist-file {} line {}: {e}", path.display(), i + 1)
            })?;
            ids.push(id);
        }
    }
    ids.sort();
    ids.dedup();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn parse(args: &[&str]) -> anyhow::Result<AgentConfig> {
        let mut all = vec![
            "switchyard-node-agent",
            "--name",
            "n0",
            "--namespace",
            "fleet",
        ];
        all.extend_from_slice(args);
        Settings::try_parse_from(all)?.resolve()
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!("5s".parse(), Ok(Span(Duration::from_secs(5))));
        assert_eq!("250ms".parse(), Ok(Span(Duration::from_millis(250))));
        assert_eq!("1m30s".parse(), Ok(Span(Duration::from_secs(90))));
        let err = "5 parsecs".parse::<Span>().expect_err("not a duration");
        assert!(err.contains("such as 5s"), "{err}");
    }

    #[test]
    fn unset_settings_take_the_defaults() {
        let c = parse(&[]).expect("valid");
        assert_eq!(
            c.manager.heartbeat_interval,
            ManagerConfig::default().heartbeat_interval
        );
        assert_eq!(
            c.node.request_timeout,
            NodeConfig::default().request_timeout
        );
        assert_eq!(c.libp2p_port, 4001);
        assert!(c.node.allowlist.is_empty());
        assert!(
            c.node
                .libp2p
                .agent_version
                .starts_with("switchyard-node-agent/")
        );
    }

    #[test]
    fn every_knob_reaches_the_config() {
        let a = crate::identity::Identity::generate();
        let b = crate::identity::Identity::generate();
        let c = parse(&[
            "--allowlist",
            &format!("{},{}", a.peer_id(), b.endpoint_id()),
            "--heartbeat-interval=3s",
            "--heartbeat-timeout=500ms",
            "--heartbeat-misses=4",
            "--disconnect-after=20s",
            "--redial-initial=100ms",
            "--redial-max=4s",
            "--redial-jitter=0.1",
            "--redial-retries=3",
            "--slow-redial=1m",
            "--max-concurrent-dials=2",
            "--request-timeout=7s",
            "--max-frame-size=65536",
            "--idle-timeout=90s",
            "--relay-url=https://relay.example.org",
            "--libp2p-agent-version=fleet/7",
            "--shutdown-timeout=15s",
        ])
        .expect("valid");
        let mut want = vec![a.peer_id(), b.peer_id()];
        want.sort();
        assert_eq!(c.node.allowlist, want);
        let m = &c.manager;
        assert_eq!(m.heartbeat_interval, Duration::from_secs(3));
        assert_eq!(m.heartbeat_timeout, Duration::from_millis(500));
        assert_eq!(m.unresponsive_after, 4);
        assert_eq!(m.disconnect_after, Duration::from_secs(20));
        assert_eq!(m.backoff_initial, Duration::from_millis(100));
        assert_eq!(m.backoff_max, Duration::from_secs(4));
        assert_eq!(m.jitter, 0.1);
        assert_eq!(m.max_retries, 3);
        assert_eq!(m.slow_retry, Duration::from_secs(60));
        assert_eq!(m.max_concurrent_dials, 2);
        let n = &c.node;
        assert_eq!(n.request_timeout, Duration::from_secs(7));
        assert_eq!(n.libp2p.request_timeout, Duration::from_secs(7));
        assert_eq!((n.libp2p.max_frame, n.iroh.max_frame), (65536, 65536));
        assert_eq!(n.libp2p.idle_timeout, Duration::from_secs(90));
        assert_eq!(
            n.iroh
                .relay_url
                .as_ref()
                .map(ToString::to_string)
                .as_deref(),
            Some("https://relay.example.org/")
        );
        assert_eq!(n.libp2p.agent_version, "fleet/7");
        assert_eq!(c.shutdown_timeout, Duration::from_secs(15));
    }

    #[test]
    fn each_bad_value_is_refused_naming_its_setting() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--heartbeat-interval=0s"],
                "--heartbeat-interval must be more than 0",
            ),
            (
                &["--heartbeat-timeout=0ms"],
                "--heartbeat-timeout must be more than 0",
            ),
            (
                &["--heartbeat-misses=0"],
                "--heartbeat-misses must be 1 or more",
            ),
            (
                &["--redial-initial=10s", "--redial-max=1s"],
                "--redial-initial",
            ),
            (&["--redial-jitter=1.5"], "--redial-jitter must be"),
            (&["--max-concurrent-dials=0"], "--max-concurrent-dials"),
            (
                &["--request-timeout=0s"],
                "--request-timeout must be more than 0",
            ),
            (&["--max-frame-size=12"], "--max-frame-size must be"),
            (&["--relay-url=not a url"], "--relay-url"),
            (&["--allowlist=12D3KooWnope"], "--allowlist entry 0"),
            (&["--probe-rate=-1"], "--probe-rate must be 0 or more"),
            (&["--libp2p-agent-version= "], "--libp2p-agent-version"),
            (&["--dht-max-records=0"], "--dht-max-records must be"),
            (
                &["--dht-max-record-size=0"],
                "--dht-max-record-size must be",
            ),
            (
                &["--dht-record-ttl=0s"],
                "--dht-record-ttl must be more than 0",
            ),
            (&["--workload-max-body=1"], "--workload-max-body must be"),
            (
                &["--workload-max-pending=0"],
                "--workload-max-pending must be",
            ),
            (
                &["--workload-answer-timeout=0s"],
                "--workload-answer-timeout must be more than 0",
            ),
        ];
        for (args, want) in cases {
            let err = parse(args).expect_err("refused").to_string();
            assert!(err.contains(want), "{args:?}: {err}");
        }
        // A malformed duration is refused by the flag's parser, named.
        let err = Settings::try_parse_from(["a", "--heartbeat-interval", "soon"])
            .expect_err("not a duration")
            .to_string();
        assert!(
            err.contains("--heartbeat-interval") && err.contains("such as 5s"),
            "{err}"
        );
    }

    #[test]
    fn the_file_sets_every_knob_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("switchyard-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let id = crate::identity::Identity::generate();
        let list = dir.join("allow.txt");
        std::fs::write(
            &list,
            format!("# the fleet\n{}  # n1\n\n", id.endpoint_id()),
        )
        .expect("write");
        let file = dir.join("agent.yaml");
        std::fs::write(
            &file,
            format!(
                "podIp: 10.0.0.7\nnodeName: k1\ninitialMode: IrohOnly\nidentityFile: /var/id\n\
                 libp2pPort: 5001\nirohPort: 5002\nhttpAddr: 127.0.0.1:9999\n\
                 bootstrap: [\"dns:fleet\"]\nallowlistFile: {}\nminPeers: 3\nprobeRate: 2\n\
                 heartbeatInterval: 4s\nheartbeatTimeout: 2s\nheartbeatMisses: 3\n\
                 disconnectAfter: 30s\nredialInitial: 1s\nredialMax: 16s\nredialJitter: 0.3\n\
                 redialRetries: 5\nslowRedial: 2m\nmaxConcurrentDials: 4\nrequestTimeout: 3s\n\
                 maxFrameSize: 1048576\nidleTimeout: 2m\nrelayUrl: https://relay.example.org\n\
                 libp2pAgentVersion: fleet/1\nshutdownTimeout: 20s\nallowFaultInjection: true\n\
                 workloadAddr: 127.0.0.1:7000\nworkloadSocket: /run/sy/api.sock\n\
                 workloadMaxBody: 2048\nworkloadMaxPending: 8\nworkloadAnswerTimeout: 2s\n\
                 dhtMaxRecordSize: 1024\ndhtMaxRecords: 100\ndhtRecordTtl: 1h\n\
                 dhtRepublishInterval: 10m\ndhtRefreshInterval: 1m\ndhtCheckInterval: 5s\n\
                 dhtMaxLookups: 4\n",
                list.display()
            ),
        )
        .expect("write");
        let c = parse(&["--config", &file.to_string_lossy(), "--probe-rate", "5"]).expect("valid");
        assert_eq!(c.probe_rate, 5.0, "the flag wins");
        assert_eq!(c.min_peers, 3);
        assert_eq!(c.initial_mode, NetworkMode::IrohOnly);
        assert_eq!(c.node.allowlist, vec![id.peer_id()]);
        assert_eq!(c.manager.heartbeat_interval, Duration::from_secs(4));
        assert_eq!(c.manager.dns_libp2p_port, 5001);
        assert_eq!(c.node.libp2p.max_frame, 1048576);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(20));
        assert!(c.allow_fault_injection);
        assert_eq!(
            c.workload.listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 7000)))
        );
        assert_eq!(c.workload.socket, Some(PathBuf::from("/run/sy/api.sock")));
        assert_eq!((c.workload.max_body, c.workload.max_pending), (2048, 8));
        assert_eq!(c.workload.answer_timeout, Duration::from_secs(2));
        assert_eq!(
            (c.dht.max_record_size, c.dht.max_records, c.dht.max_lookups),
            (1024, 100, 4)
        );
        assert_eq!(c.dht.record_ttl, Duration::from_secs(3600));
        assert_eq!(c.dht.republish_interval, Duration::from_secs(600));
        assert_eq!(c.dht.refresh_interval, Duration::from_secs(60));
        assert_eq!(c.dht.check_interval, Duration::from_secs(5));
        std::fs::write(&file, "probeRate: 2\nprobeRat: 3\n").expect("write");
        let err = parse(&["--config", &file.to_string_lossy()]).expect_err("unknown key");
        assert!(err.to_string().contains("probeRat"), "{err}");
        std::fs::write(&list, "12D3KooWnope\n").expect("write");
        std::fs::write(&file, format!("allowlistFile: {}\n", list.display())).expect("write");
        let err = parse(&["--config", &file.to_string_lossy()]).expect_err("bad id");
        assert!(err.to_string().contains("line 1"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_defaults_help_names_are_the_ones_used() {
        use clap::CommandFactory as _;
        let help = Settings::command().render_long_help().to_string();
        let said = |flag: &str| -> String {
            let after = help.split(&format!("{flag} <")).nth(1).expect(flag);
            let text = after.split("\n      --").next().unwrap_or_default();
            let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
            let d = text.split("Defaults to ").nth(1).expect("a default");
            let word = d.split(' ').next().unwrap_or_default();
            word.trim_end_matches(['.', ':']).to_owned()
        };
        let span = |d: Duration| {
            if d.subsec_millis() != 0 {
                format!("{}ms", d.as_millis())
            } else {
                format!("{}s", d.as_secs())
            }
        };
        let (m, n, a) = (
            ManagerConfig::default(),
            NodeConfig::default(),
            AgentConfig::new("n", "ns"),
        );
        let cases = [
            ("--heartbeat-interval", span(m.heartbeat_interval)),
            ("--heartbeat-timeout", span(m.heartbeat_timeout)),
            ("--heartbeat-misses", m.unresponsive_after.to_string()),
            ("--disconnect-after", span(m.disconnect_after)),
            ("--redial-initial", span(m.backoff_initial)),
            ("--redial-max", span(m.backoff_max)),
            ("--redial-jitter", m.jitter.to_string()),
            ("--redial-retries", m.max_retries.to_string()),
            ("--slow-redial", span(m.slow_retry)),
            ("--max-concurrent-dials", m.max_concurrent_dials.to_string()),
            ("--request-timeout", span(n.request_timeout)),
            ("--max-frame-size", n.libp2p.max_frame.to_string()),
            ("--idle-timeout", span(n.libp2p.idle_timeout)),
            ("--shutdown-timeout", span(a.shutdown_timeout)),
            ("--probe-rate", a.probe_rate.to_string()),
            ("--min-peers", a.min_peers.to_string()),
            ("--libp2p-port", a.libp2p_port.to_string()),
            ("--iroh-port", a.iroh_port.to_string()),
            ("--http-addr", a.http_addr.to_string()),
            (
                "--workload-addr",
                a.workload.listen.map(|l| l.to_string()).unwrap_or_default(),
            ),
            ("--workload-max-body", a.workload.max_body.to_string()),
            ("--workload-max-pending", a.workload.max_pending.to_string()),
            ("--workload-answer-timeout", span(a.workload.answer_timeout)),
            ("--dht-max-record-size", a.dht.max_record_size.to_string()),
            ("--dht-max-records", a.dht.max_records.to_string()),
            (
                "--dht-record-ttl",
                format!("{}h", a.dht.record_ttl.as_secs() / 3600),
            ),
            (
                "--dht-republish-interval",
                format!("{}h", a.dht.republish_interval.as_secs() / 3600),
            ),
            (
                "--dht-refresh-interval",
                format!("{}m", a.dht.refresh_interval.as_secs() / 60),
            ),
            ("--dht-check-interval", span(a.dht.check_interval)),
            ("--dht-max-lookups", a.dht.max_lookups.to_string()),
            ("--dht-request-timeout", span(a.dht.request_timeout)),
        ];
        for (flag, value) in cases {
            assert_eq!(said(flag), value, "{flag}'s help names another default");
        }
    }

    #[test]
    fn help_shows_every_knob() {
        use clap::CommandFactory as _;
        let help = Settings::command().render_long_help().to_string();
        for arg in Settings::command().get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            assert!(
                help.contains(&format!("--{long}")),
                "--{long} missing from --help"
            );
        }
        for knob in [
            "--allowlist",
            "--allowlist-file",
            "--heartbeat-interval",
            "--heartbeat-timeout",
            "--heartbeat-misses",
            "--redial-initial",
            "--redial-max",
            "--redial-jitter",
            "--redial-retries",
            "--slow-redial",
            "--max-concurrent-dials",
            "--request-timeout",
            "--max-frame-size",
            "--idle-timeout",
            "--relay-url",
            "--libp2p-agent-version",
            "--workload-addr",
            "--workload-socket",
            "--dht-max-record-size",
            "--dht-max-records",
        ] {
            assert!(help.contains(knob), "{knob} missing from --help");
        }
    }
}
