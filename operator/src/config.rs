//! The operator's configuration: flags and environment ([`Args`]), checked
//! and defaulted into a [`Config`] that [`crate::run`] runs.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use crate::controller::Settings;
use crate::promql::Prometheus;

#[derive(Parser)]
#[command(
    name = "switchyard-operator",
    about = "Migrates a P2P fleet from libp2p to iroh, one safe step at a time"
)]
pub struct Args {
    /// Namespace to watch; all namespaces when absent.
    #[arg(long, env = "SWITCHYARD_NAMESPACE")]
    pub namespace: Option<String>,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, env = "SWITCHYARD_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// FleetNode writes per second.
    #[arg(long, env = "SWITCHYARD_WRITE_QPS", default_value_t = 200.0)]
    pub write_qps: f64,
    /// FleetNode writes allowed in a burst.
    #[arg(long, env = "SWITCHYARD_WRITE_BURST", default_value_t = 400)]
    pub write_burst: u32,
    /// FleetNode writes in flight at once.
    #[arg(long, env = "SWITCHYARD_WRITE_CONCURRENCY", default_value_t = 32)]
    pub write_concurrency: usize,
    /// Seconds a FleetNode's pod may be missing before plans stop selecting
    /// and waiting for the node (a StatefulSet's pod returning under its
    /// name within this keeps its place).
    #[arg(long, env = "SWITCHYARD_NODE_ABSENCE_GRACE", default_value_t = 300.0)]
    pub node_absence_grace: f64,
    /// Name of the coordination.k8s.io Lease used for leader election.
    #[arg(
        long,
        env = "SWITCHYARD_LEASE_NAME",
        default_value = "switchyard-operator"
    )]
    pub lease_name: String,
    /// Namespace of the Lease (default: the watched namespace, else `default`).
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// This replica's identity in the Lease (default: hostname and pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Seconds a leader holds the Lease without renewing; a standby takes
    /// over within this.
    #[arg(long, env = "SWITCHYARD_LEASE_DURATION", default_value_t = 15)]
    pub lease_duration: u64,
    /// Seconds before expiry at which the leader renews.
    #[arg(long, env = "SWITCHYARD_LEASE_GRACE", default_value_t = 5)]
    pub lease_grace: u64,
    /// Secret (in the Lease's namespace) holding the Alertmanager webhook's
    /// bearer token; without it the webhook answers 503.
    #[arg(long, env = "SWITCHYARD_WEBHOOK_SECRET")]
    pub webhook_secret: Option<String>,
    /// Key of the token in that Secret.
    #[arg(long, env = "SWITCHYARD_WEBHOOK_SECRET_KEY", default_value = "token")]
    pub webhook_secret_key: String,
    /// Create the webhook Secret with a random token when it does not
    /// exist (the chart's default), instead of answering 503 until someone
    /// does. The chart then renders no Secret, so a GitOps tool's render is
    /// the same every time.
    #[arg(
        long,
        env = "SWITCHYARD_WEBHOOK_SECRET_CREATE",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub create_webhook_secret: bool,
    /// ConfigMap (in the Lease's namespace) where every replica records
    /// the alerts it accepts, so the leader acts on them (default: the
    /// Lease's name and `-alerts`).
    #[arg(long, env = "SWITCHYARD_ALERT_CONFIGMAP")]
    pub alert_configmap: Option<String>,
    /// Prometheus for PromQL analysis checks, e.g. http://prometheus:9090;
    /// without it PromQL checks are Inconclusive.
    #[arg(long, env = "SWITCHYARD_PROMETHEUS_URL")]
    pub prometheus_url: Option<String>,
    /// Seconds a PromQL query may take.
    #[arg(long, env = "SWITCHYARD_PROMETHEUS_TIMEOUT", default_value_t = 5.0)]
    pub prometheus_timeout: f64,
    /// The whole Authorization header sent to Prometheus, e.g.
    /// `Bearer <token>` (from a Secret, through the environment).
    #[arg(
        long,
        env = "SWITCHYARD_PROMETHEUS_AUTHORIZATION",
        hide_env_values = true
    )]
    pub prometheus_authorization: Option<String>,
    /// A bearer token for Prometheus (from a Secret, through the
    /// environment).
    #[arg(
        long,
        env = "SWITCHYARD_PROMETHEUS_BEARER_TOKEN",
        hide_env_values = true
    )]
    pub prometheus_bearer_token: Option<String>,
    /// Basic auth user name for Prometheus.
    #[arg(long, env = "SWITCHYARD_PROMETHEUS_USERNAME")]
    pub prometheus_username: Option<String>,
    /// Basic auth password for Prometheus (from a Secret, through the
    /// environment).
    #[arg(long, env = "SWITCHYARD_PROMETHEUS_PASSWORD", hide_env_values = true)]
    pub prometheus_password: Option<String>,
    /// A header every PromQL query carries, as `Name: value` (repeat it),
    /// e.g. `X-Scope-OrgID: tenant-a`. The chart passes its headers as
    /// SWITCHYARD_PROMETHEUS_HEADER_<n>_NAME and _VALUE pairs instead (a
    /// value may come from a Secret).
    #[arg(long = "prometheus-header", value_name = "NAME: VALUE")]
    pub prometheus_headers: Vec<String>,
    /// PEM file of the CAs to trust for an https Prometheus (instead of
    /// the system's roots).
    #[arg(long, env = "SWITCHYARD_PROMETHEUS_CA_FILE")]
    pub prometheus_ca_file: Option<std::path::PathBuf>,
    /// Accept any certificate from Prometheus. For tests only.
    #[arg(
        long,
        env = "SWITCHYARD_PROMETHEUS_INSECURE_SKIP_VERIFY",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub prometheus_insecure_skip_verify: bool,
    /// Let a plan's `analysis.prometheus.secretRef` name a Secret in the
    /// plan's namespace holding that Prometheus's credentials. The operator
    /// then needs `get` on Secrets, and uses only Secrets labelled
    /// `switchyard.dev/prometheus-credentials=true`. Off: such a plan's
    /// PromQL checks are Inconclusive, saying why.
    #[arg(
        long,
        env = "SWITCHYARD_ALLOW_PLAN_CREDENTIALS",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub allow_plan_credentials: bool,
    /// Send plans' phase transitions (started, canary passed, stage
    /// completed, paused, resumed, rollback started and finished,
    /// succeeded, failed) to this webhook URL.
    #[arg(long, env = "SWITCHYARD_NOTIFY_URL", hide_env_values = true)]
    pub notify_url: Option<String>,
    /// The webhook's message shape: generic (JSON) or slack (an incoming
    /// webhook's {"text": ...}).
    #[arg(long, env = "SWITCHYARD_NOTIFY_FORMAT", value_enum, default_value_t = crate::notify::Format::Generic)]
    pub notify_format: crate::notify::Format,
    /// Attempts per notification (1 s, 2 s, 4 s ... apart) before it is
    /// given up and counted as failed.
    #[arg(long, env = "SWITCHYARD_NOTIFY_ATTEMPTS", default_value_t = 5)]
    pub notify_attempts: u32,
    /// Serve the live dashboard (`/`, `/api/v1/...`, `/ws`) on the HTTP
    /// port. It answers clients on 127.0.0.1 (`kubectl port-forward`)
    /// without a token, others only with --dashboard-token.
    #[arg(
        long,
        env = "SWITCHYARD_DASHBOARD",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub dashboard: bool,
    /// A bearer token that lets clients other than 127.0.0.1 see the
    /// dashboard (`Authorization: Bearer <token>`, or open `/?token=<token>`
    /// once in a browser). At least 16 characters.
    #[arg(long, env = "SWITCHYARD_DASHBOARD_TOKEN", hide_env_values = true)]
    pub dashboard_token: Option<String>,
    /// Check an installation and exit (the chart's `helm test`): the
    /// operator at this URL (e.g. http://switchyard-operator:8080) answers
    /// /readyz, and each Switchyard kind can be listed in --namespace (or
    /// all namespaces). Exits non-zero naming every failed check.
    #[arg(long, value_name = "OPERATOR_URL")]
    pub check_install: Option<String>,
}

/// The Lease used for leader election.
#[derive(Debug, Clone)]
pub struct Lease {
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// This replica's identity in it, also its name on Events.
    pub identity: String,
    /// Seconds a leader holds it without renewing.
    pub duration: u64,
    /// Seconds before expiry at which the leader renews.
    pub grace: u64,
}

/// A checked configuration.
#[derive(Debug)]
pub struct Config {
    /// Namespace to watch; all when `None`.
    pub namespace: Option<String>,
    /// Address for /healthz, /readyz, /metrics and the webhook.
    pub http_addr: SocketAddr,
    /// FleetNode write limits.
    pub settings: Settings,
    /// Leader election.
    pub lease: Lease,
    /// The webhook token's Secret (in the Lease's namespace) and key.
    pub webhook_secret: Option<(String, String)>,
    /// Create that Secret when it is absent.
    pub create_webhook_secret: bool,
    /// The ConfigMap (in the Lease's namespace) that records firing alerts.
    pub alert_configmap: String,
    /// Prometheus for PromQL checks.
    pub prometheus: Option<Prometheus>,
    /// Read a plan's own Prometheus credentials from the Secret it names.
    pub allow_plan_credentials: bool,
    /// Where plans' phase transitions are sent.
    pub notify: Option<crate::notify::Target>,
    /// Serve the dashboard; with a token for clients beyond 127.0.0.1.
    pub dashboard: Option<crate::dashboard::serve::Access>,
}

impl TryFrom<Args> for Config {
    type Error = anyhow::Error;

    fn try_from(args: Args) -> anyhow::Result<Config> {
        anyhow::ensure!(
            args.write_qps.is_finite() && args.write_qps > 0.0,
            "--write-qps must be above 0, e.g. 200"
        );
        anyhow::ensure!(
            args.write_concurrency > 0,
            "--write-concurrency must be at least 1, e.g. 32"
        );
        anyhow::ensure!(
            args.node_absence_grace.is_finite() && args.node_absence_grace >= 1.0,
            "--node-absence-grace must be a number of seconds of at least 1, e.g. 300"
        );
        anyhow::ensure!(
            args.lease_grace < args.lease_duration,
            "--lease-grace must be below --lease-duration"
        );
        anyhow::ensure!(
            args.prometheus_timeout.is_finite() && args.prometheus_timeout > 0.0,
            "--prometheus-timeout must be a number of seconds above 0, e.g. 5"
        );
        let notify = notify_target(&args)?;
        anyhow::ensure!(
            !args.create_webhook_secret || args.webhook_secret.is_some(),
            "--create-webhook-secret needs --webhook-secret, the name of the Secret to create"
        );
        let prometheus = args
            .prometheus_url
            .as_deref()
            .map(|url| {
                Prometheus::with_access(
                    url,
                    Duration::from_secs_f64(args.prometheus_timeout),
                    &prometheus_access(&args, std::env::vars())?,
                )
            })
            .transpose()?;
        let dashboard = dashboard_access(&args)?;
        let identity = args.identity.unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "switchyard".into());
            format!("{host}-{}", std::process::id())
        });
        let lease_namespace = args
            .lease_namespace
            .or_else(|| args.namespace.clone())
            .unwrap_or_else(|| "default".into());
        let alert_configmap = args
            .alert_configmap
            .unwrap_or_else(|| format!("{}-alerts", args.lease_name));
        Ok(Config {
            namespace: args.namespace,
            http_addr: args.http_addr,
            settings: Settings {
                write_concurrency: args.write_concurrency,
                write_qps: args.write_qps,
                write_burst: args.write_burst,
                absence_grace: Duration::from_secs_f64(args.node_absence_grace),
            },
            lease: Lease {
                name: args.lease_name,
                namespace: lease_namespace,
                identity,
                duration: args.lease_duration,
                grace: args.lease_grace,
            },
            webhook_secret: args.webhook_secret.map(|s| (s, args.webhook_secret_key)),
            create_webhook_secret: args.create_webhook_secret,
            alert_configmap,
            prometheus,
            allow_plan_credentials: args.allow_plan_credentials,
            notify,
            dashboard,
        })
    }
}

/// Who may see the dashboard, if it is on; or what to fix.
fn dashboard_access(args: &Args) -> anyhow::Result<Option<crate::dashboard::serve::Access>> {
    if !args.dashboard {
        return Ok(None);
    }
    let token = args
        .dashboard_token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty());
    if let Some(t) = token {
        anyhow::ensure!(
            t.len() >= 16 && t.chars().all(|c| c.is_ascii_graphic()),
            "--dashboard-token (SWITCHYARD_DASHBOARD_TOKEN) must be at least 16 printable characters without spaces, e.g. the output of `openssl rand -hex 16`"
        );
    }
    Ok(Some(crate::dashboard::serve::Access {
        token: token.map(str::to_owned),
    }))
}

/// Where notifications go, if `--notify-url` is set; or what to fix.
fn notify_target(args: &Args) -> anyhow::Result<Option<crate::notify::Target>> {
    let Some(url) = args.notify_url.as_deref().filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    anyhow::ensure!(
        reqwest::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https")),
        "--notify-url (SWITCHYARD_NOTIFY_URL) must be an http:// or https:// URL, e.g. https://hooks.slack.com/services/..."
    );
    Ok(Some(crate::notify::Target {
        url: url.to_owned(),
        format: args.notify_format,
        attempts: args.notify_attempts.max(1),
    }))
}

/// Credentials, headers and trust for Prometheus, from the flags and the
/// chart's numbered header variables in `env`.
fn prometheus_access(
    args: &Args,
    env: impl Iterator<Item = (String, String)>,
) -> anyhow::Result<crate::promql::Access> {
    let mut headers = Vec::new();
    for h in &args.prometheus_headers {
        let (name, value) = h.split_once(':').ok_or_else(|| {
            anyhow::anyhow!(
                "--prometheus-header {h:?} must be `Name: value`, e.g. `X-Scope-OrgID: tenant-a`"
            )
        })?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let env: std::collections::BTreeMap<String, String> = env
        .filter(|(k, _)| k.starts_with("SWITCHYARD_PROMETHEUS_HEADER_"))
        .collect();
    for (k, name) in &env {
        let Some(n) = k
            .strip_prefix("SWITCHYARD_PROMETHEUS_HEADER_")
            .and_then(|r| r.strip_suffix("_NAME"))
        else {
            continue;
        };
        let value = env
            .get(&format!("SWITCHYARD_PROMETHEUS_HEADER_{n}_VALUE"))
            .ok_or_else(|| {
                anyhow::anyhow!("{k} is set but SWITCHYARD_PROMETHEUS_HEADER_{n}_VALUE is not")
            })?;
        headers.push((name.clone(), value.clone()));
    }
    let basic = match (&args.prometheus_username, &args.prometheus_password) {
        (Some(u), Some(p)) => Some((u.clone(), p.clone())),
        (None, None) => None,
        _ => anyhow::bail!(
            "Prometheus basic auth needs both --prometheus-username and --prometheus-password"
        ),
    };
    let ca_pem = args
        .prometheus_ca_file
        .as_ref()
        .map(|f| {
            std::fs::read(f)
                .map_err(|e| anyhow::anyhow!("reading --prometheus-ca-file {}: {e}", f.display()))
        })
        .transpose()?;
    Ok(crate::promql::Access {
        authorization: args
            .prometheus_authorization
            .clone()
            .filter(|a| !a.is_empty()),
        bearer_token: args
            .prometheus_bearer_token
            .clone()
            .filter(|t| !t.is_empty()),
        basic,
        headers,
        ca_pem,
        insecure_skip_verify: args.prometheus_insecure_skip_verify,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> anyhow::Result<Config> {
        let args = Args::try_parse_from([&["switchyard-operator"], args].concat())?;
        Config::try_from(args)
    }

    #[test]
    fn prometheus_headers_and_credentials_come_from_flags_and_the_chart_s_numbered_variables() {
        let args = |a: &[&str]| {
            Args::try_parse_from([&["switchyard-operator"], a].concat()).expect("args")
        };
        let env = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<Vec<_>>()
                .into_iter()
        };
        let a = args(&[
            "--prometheus-header",
            "X-Scope-OrgID: tenant-a",
            "--prometheus-username",
            "u",
            "--prometheus-password",
            "p",
        ]);
        let access = prometheus_access(
            &a,
            env(&[
                ("SWITCHYARD_PROMETHEUS_HEADER_0_NAME", "X-Api-Key"),
                ("SWITCHYARD_PROMETHEUS_HEADER_0_VALUE", "k3y"),
                ("UNRELATED", "x"),
            ]),
        )
        .expect("access");
        assert_eq!(
            access.headers,
            [
                ("X-Scope-OrgID".into(), "tenant-a".into()),
                ("X-Api-Key".into(), "k3y".into())
            ]
        );
        assert_eq!(access.basic, Some(("u".into(), "p".into())));
        let e = prometheus_access(&args(&["--prometheus-header", "no colon"]), env(&[]))
            .expect_err("refused");
        assert!(e.to_string().contains("must be `Name: value`"), "{e}");
        let e = prometheus_access(
            &args(&[]),
            env(&[("SWITCHYARD_PROMETHEUS_HEADER_3_NAME", "X")]),
        )
        .expect_err("refused");
        assert!(
            e.to_string()
                .contains("SWITCHYARD_PROMETHEUS_HEADER_3_VALUE"),
            "{e}"
        );
        let e = prometheus_access(&args(&["--prometheus-username", "u"]), env(&[]))
            .expect_err("refused");
        assert!(e.to_string().contains("needs both"), "{e}");
        let e = config(&[
            "--prometheus-url",
            "http://p:9090",
            "--prometheus-bearer-token",
            "t",
            "--prometheus-username",
            "u",
            "--prometheus-password",
            "p",
        ])
        .expect_err("refused");
        assert!(e.to_string().contains("one kind of credentials"), "{e}");
        let e = config(&["--prometheus-url", "ftp://p"]).expect_err("refused");
        assert!(e.to_string().contains("http:// or https://"), "{e}");
    }

    #[test]
    fn defaults_are_filled_in_and_bad_values_say_what_to_change() {
        let c = config(&["--namespace", "p2p", "--identity", "op-0"]).expect("config");
        assert_eq!(c.lease.namespace, "p2p", "the Lease lives beside the fleet");
        assert_eq!(c.lease.identity, "op-0");
        assert_eq!(c.settings.write_qps, 200.0);
        assert_eq!(c.alert_configmap, "switchyard-operator-alerts");
        let e = config(&["--write-qps", "0"]).expect_err("refused");
        assert!(e.to_string().contains("--write-qps must be above 0"), "{e}");
        let e = config(&["--lease-duration", "5", "--lease-grace", "5"]).expect_err("refused");
        assert!(e.to_string().contains("--lease-grace"), "{e}");
        let e = config(&["--prometheus-url", "not a url"]).expect_err("refused");
        assert!(!e.to_string().is_empty());
        let e = config(&["--notify-url", "ftp://hooks"]).expect_err("refused");
        assert!(e.to_string().contains("--notify-url"), "{e}");
        let c = config(&[
            "--notify-url",
            "https://hooks.example/x",
            "--notify-format",
            "slack",
        ])
        .expect("config");
        let t = c.notify.expect("notifications on");
        assert_eq!(t.format, crate::notify::Format::Slack);
        assert_eq!(t.attempts, 5);
        assert!(config(&[]).expect("config").notify.is_none());
    }
}
