//! `kubectl switchyard`: watch and steer migrations from a terminal.
//!
//! The binary `kubectl-switchyard` is a kubectl plugin: once it is on PATH,
//! `kubectl switchyard …` runs it. It reads the kubeconfig as kubectl does
//! (`KUBECONFIG`, `--kubeconfig`, `--context`, the context's namespace or
//! `-n`), and prints tables (the default), JSON or YAML (`-o`).
//!
//! What it prints is [`render`]'s, pure functions of the objects and `now`.

pub mod operator_api;
pub mod preview;
pub mod render;

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use switchyard_crds::plan::RollbackStrategy;
use switchyard_crds::{FleetNode, LABEL_PLAN, MigrationPlan, PlanPhase};

use crate::dashboard::HealthView;

/// Watch and steer Switchyard migrations.
#[derive(Parser, Debug)]
#[command(
    name = "kubectl-switchyard",
    bin_name = "kubectl switchyard",
    version,
    about = "Watch and steer Switchyard migrations (MigrationPlans and their FleetNodes)"
)]
pub struct Cli {
    /// Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The namespace (default: the context's, else "default").
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// Every namespace (status and nodes without a plan name).
    #[arg(short = 'A', long, global = true)]
    pub all_namespaces: bool,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Text for people.
    Table,
    /// The objects as JSON.
    Json,
    /// The objects as YAML.
    Yaml,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// A plan's phase, position, progress and ETA, nodes by mode, blocked
    /// nodes, the last analysis against its thresholds, and rollbacks.
    /// Without PLAN: one line per plan.
    Status {
        /// The MigrationPlan.
        plan: Option<String>,
        /// Redraw on every change (from a watch) until the plan finishes.
        #[arg(short = 'w', long)]
        watch: bool,
    },
    /// Per node: desired and applied mode, acknowledgement, plan and step,
    /// readiness, and the time since its last mode change.
    Nodes {
        /// Only the nodes this MigrationPlan manages.
        plan: Option<String>,
    },
    /// Create a MigrationPlan from a file; with --dry-run, create nothing:
    /// the API server checks it (server-side dry run, admission included)
    /// and the planner previews its schedule over the live fleet.
    Start {
        /// The MigrationPlan's YAML or JSON.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Check and preview only.
        #[arg(long)]
        dry_run: bool,
        /// The operator's FleetNode write rate, for the preview's write times.
        #[arg(long, default_value_t = 200.0)]
        write_qps: f64,
    },
    /// Stop a plan starting new switches (in-flight ones finish).
    Pause {
        /// The MigrationPlan.
        plan: String,
        /// Why; shown in status and in the Paused Event.
        #[arg(long)]
        reason: String,
    },
    /// Let a paused plan go on.
    Resume {
        /// The MigrationPlan.
        plan: String,
    },
    /// Skip the rest of the current step's wait (the canary's duration or
    /// the wave's soak) once you have looked; analysis still gates it.
    Promote {
        /// The MigrationPlan.
        plan: String,
    },
    /// Roll a plan back: every node returns to the mode it had before it.
    Rollback {
        /// The MigrationPlan.
        plan: String,
        /// fast (all at once, in the safe order) or gradual (in batches);
        /// default: the plan's rollback.strategy.
        #[arg(long, value_enum)]
        strategy: Option<StrategyArg>,
        /// Why; recorded in the rollback history and the Event.
        #[arg(long, default_value = "requested with kubectl switchyard rollback")]
        reason: String,
    },
    /// Fleet health from the agents' own reports, worst first: each
    /// transport's score and state, partition risk and DHT routing health,
    /// as the operator's analysis last scraped them (from the operator's
    /// dashboard API: --operator).
    Health {
        /// Only this transport, its worst nodes first.
        #[arg(long, value_enum)]
        transport: Option<TransportArg>,
        /// The operator.
        #[command(flatten)]
        operator: OperatorArgs,
    },
    /// A plan's latest analysis (each check's value against its
    /// threshold), its traffic per transport, and the operator's own
    /// metrics about it (the last two with --operator). Without PLAN:
    /// every plan in the namespace.
    Metrics {
        /// The MigrationPlan.
        plan: Option<String>,
        /// Output format (overrides -o).
        #[arg(long, value_enum)]
        format: Option<MetricsFormat>,
        /// The operator.
        #[command(flatten)]
        operator: OperatorArgs,
    },
}

/// Where the operator's dashboard API is, for `health` and `metrics`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct OperatorArgs {
    /// The operator's HTTP address, e.g. http://127.0.0.1:8080 after
    /// `kubectl port-forward -n switchyard-system deploy/switchyard-operator 8080`.
    #[arg(long = "operator", env = "SWITCHYARD_OPERATOR_URL")]
    pub url: Option<String>,
    /// The operator's dashboard token, needed unless the operator sees
    /// you on 127.0.0.1 (as through a port-forward).
    #[arg(
        long = "operator-token",
        env = "SWITCHYARD_DASHBOARD_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
}

/// `--transport`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TransportArg {
    /// libp2p.
    Libp2p,
    /// iroh.
    Iroh,
}

/// `metrics --format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MetricsFormat {
    /// Text for people.
    Table,
    /// JSON.
    Json,
}

/// `--strategy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StrategyArg {
    /// Every node at once, in the safe order.
    Fast,
    /// In batches, as rollback.gradual says.
    Gradual,
}

/// The instant ages and ETAs are counted from: now, or `SWITCHYARD_NOW`
/// (RFC 3339) for output that must not change between runs (golden tests,
/// documentation).
fn now() -> jiff::Timestamp {
    std::env::var("SWITCHYARD_NOW")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(jiff::Timestamp::now)
}

/// The field manager of the plugin's writes.
const FIELD_MANAGER: &str = "kubectl-switchyard";

/// Run the plugin; the process's exit code.
pub async fn main(cli: Cli) -> anyhow::Result<()> {
    let (client, namespace) = connect(&cli).await?;
    let plans: Api<MigrationPlan> = Api::namespaced(client.clone(), &namespace);
    match &cli.command {
        Command::Status {
            plan: None,
            watch: true,
        } => bail!("-w follows one plan: name it, e.g. kubectl switchyard status PLAN -w"),
        Command::Status {
            plan: None,
            watch: false,
        } => list_plans(&cli, &client, &namespace).await,
        Command::Status {
            plan: Some(name),
            watch: false,
        } => {
            let p = get_plan(&plans, name, &namespace).await?;
            print(cli.output, &p, || render::plan_detail(&p, now()))
        }
        Command::Status {
            plan: Some(name),
            watch: true,
        } => watch_plan(&plans, name, &namespace, cli.output).await,
        Command::Nodes { plan } => list_nodes(&cli, &client, &namespace, plan.as_deref()).await,
        Command::Start {
            file,
            dry_run,
            write_qps,
        } => start(&client, &namespace, file, *dry_run, *write_qps, cli.output).await,
        Command::Pause { plan, reason } => {
            let body = json!({"spec": {"paused": true, "pauseReason": reason}});
            steer(&plans, plan, &namespace, body, "paused").await
        }
        Command::Resume { plan } => {
            let body = json!({"spec": {"paused": false, "pauseReason": null}});
            steer(&plans, plan, &namespace, body, "resumed").await
        }
        Command::Promote { plan } => {
            let p = get_plan(&plans, plan, &namespace).await?;
            let s = p.status.clone().unwrap_or_default();
            if !matches!(s.phase, PlanPhase::Canary | PlanPhase::Progressing) {
                bail!(
                    "MigrationPlan {plan} is {:?}: only a plan in its canary or a wave can be promoted",
                    s.phase
                );
            }
            let step = crate::planner::step_id(s.stage, s.wave);
            let body = json!({"spec": {"promote": {"step": step}}});
            steer(
                &plans,
                plan,
                &namespace,
                body,
                &format!("promoted (step {step})"),
            )
            .await
        }
        Command::Rollback {
            plan,
            strategy,
            reason,
        } => {
            let strategy = strategy.map(|s| match s {
                StrategyArg::Fast => RollbackStrategy::Fast,
                StrategyArg::Gradual => RollbackStrategy::Gradual,
            });
            let body =
                json!({"spec": {"rollbackRequest": {"reason": reason, "strategy": strategy}}});
            steer(&plans, plan, &namespace, body, "rolling back").await
        }
        Command::Health {
            transport,
            operator,
        } => {
            let view: HealthView = operator_api::get(operator, "api/v1/health").await?;
            print(cli.output, &view, || {
                render::health_table(&view, *transport)
            })
        }
        Command::Metrics {
            plan,
            format,
            operator,
        } => metrics(&cli, &plans, &namespace, plan.as_deref(), *format, operator).await,
    }
}

/// `metrics`: the plans' analysis, traffic and the operator's samples.
async fn metrics(
    cli: &Cli,
    plans: &Api<MigrationPlan>,
    namespace: &str,
    plan: Option<&str>,
    format: Option<MetricsFormat>,
    operator: &OperatorArgs,
) -> anyhow::Result<()> {
    let output = match format {
        Some(MetricsFormat::Table) => Output::Table,
        Some(MetricsFormat::Json) => Output::Json,
        None => cli.output,
    };
    let chosen = match plan {
        Some(name) => vec![get_plan(plans, name, namespace).await?],
        None => {
            plans
                .list(&ListParams::default())
                .await
                .map_err(|e| explain(e, "list MigrationPlans", namespace))?
                .items
        }
    };
    if chosen.is_empty() {
        bail!("no MigrationPlans in namespace {namespace}: name one, or use -n")
    }
    let report = operator_api::metrics(&chosen, operator).await?;
    print(output, &report, || render::metrics_table(&report))
}

/// The client and namespace the flags and kubeconfig give.
async fn connect(cli: &Cli) -> anyhow::Result<(Client, String)> {
    let options = kube::config::KubeConfigOptions {
        context: cli.context.clone(),
        ..Default::default()
    };
    let config = match &cli.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading --kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &options).await
        }
        None => kube::Config::from_kubeconfig(&options).await,
    }
    .context("loading the kubeconfig (set KUBECONFIG or --kubeconfig, and --context if needed)")?;
    let namespace = cli
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).context("building the Kubernetes client")?;
    Ok((client, namespace))
}

fn scope(cli: &Cli, namespace: &str) -> String {
    if cli.all_namespaces {
        "any namespace".into()
    } else {
        format!("namespace {namespace}")
    }
}

/// A plan by name, or an error that says what to do.
async fn get_plan(
    plans: &Api<MigrationPlan>,
    name: &str,
    namespace: &str,
) -> anyhow::Result<MigrationPlan> {
    match plans.get(name).await {
        Ok(p) => Ok(p),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let names: Vec<String> = plans
                .list(&ListParams::default())
                .await
                .map(|l| l.items.iter().map(ResourceExt::name_any).collect())
                .unwrap_or_default();
            if names.is_empty() {
                bail!(
                    "no MigrationPlan {name:?} in namespace {namespace}, and none other there; pick another namespace with -n, or list every plan with `kubectl switchyard status -A`"
                )
            }
            bail!(
                "no MigrationPlan {name:?} in namespace {namespace}; there: {}",
                names.join(", ")
            )
        }
        Err(e) => Err(explain(e, &format!("get MigrationPlan {name}"), namespace)),
    }
}

/// An API error as a sentence about what to do.
fn explain(e: kube::Error, what: &str, namespace: &str) -> anyhow::Error {
    match e {
        kube::Error::Api(s) if s.code == 403 => anyhow::anyhow!(
            "not allowed to {what} in namespace {namespace}: {} (ask for RBAC that grants it, or use another --context)",
            s.message
        ),
        kube::Error::Api(s) if s.code == 401 => anyhow::anyhow!(
            "the API server did not accept your credentials ({}); refresh them in the kubeconfig",
            s.message
        ),
        kube::Error::Api(s) if s.code == 404 && s.message.contains("the server could not find") => {
            anyhow::anyhow!(
                "the cluster does not serve MigrationPlans: install Switchyard's CRDs (helm install, or kubectl apply -f crds/)"
            )
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) => anyhow::anyhow!(
            "cannot reach the API server to {what}: {e} (is the cluster up, and the kubeconfig's server right?)"
        ),
        e => anyhow::anyhow!("{what}: {e}"),
    }
}

/// Print `value` as the output format asks; `table` for people.
fn print<T: serde::Serialize>(
    output: Output,
    value: &T,
    table: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    match output {
        Output::Table => print!("{}", table()),
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Yaml => print!(
            "{}",
            serde_saphyr::to_string(value).context("writing YAML")?
        ),
    }
    Ok(())
}

/// Merge-patch a plan's spec, after checking it exists.
async fn steer(
    plans: &Api<MigrationPlan>,
    name: &str,
    namespace: &str,
    body: serde_json::Value,
    done: &str,
) -> anyhow::Result<()> {
    get_plan(plans, name, namespace).await?;
    plans
        .patch(
            name,
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PatchParams::default()
            },
            &Patch::Merge(body),
        )
        .await
        .map_err(|e| explain(e, &format!("patch MigrationPlan {name}"), namespace))?;
    println!("migrationplan.switchyard.dev/{name} {done}");
    Ok(())
}

/// `status` without a plan: one line per plan.
async fn list_plans(cli: &Cli, client: &Client, namespace: &str) -> anyhow::Result<()> {
    let list = if cli.all_namespaces {
        Api::<MigrationPlan>::all(client.clone())
            .list(&ListParams::default())
            .await
    } else {
        Api::<MigrationPlan>::namespaced(client.clone(), namespace)
            .list(&ListParams::default())
            .await
    }
    .map_err(|e| explain(e, "list MigrationPlans", namespace))?;
    let mut items = list.items;
    items.sort_by_key(|p| (p.namespace(), p.name_any()));
    if cli.output == Output::Table && items.is_empty() {
        println!("No MigrationPlans in {}.", scope(cli, namespace));
        return Ok(());
    }
    print(cli.output, &items, || {
        render::plans_table(&items, cli.all_namespaces, now())
    })
}

/// `nodes [PLAN]`.
async fn list_nodes(
    cli: &Cli,
    client: &Client,
    namespace: &str,
    plan: Option<&str>,
) -> anyhow::Result<()> {
    let api: Api<FleetNode> = if cli.all_namespaces && plan.is_none() {
        Api::all(client.clone())
    } else {
        Api::namespaced(client.clone(), namespace)
    };
    let lp = match plan {
        Some(name) => {
            get_plan(&Api::namespaced(client.clone(), namespace), name, namespace).await?;
            ListParams::default().labels(&format!("{LABEL_PLAN}={name}"))
        }
        None => ListParams::default(),
    };
    let mut items = api
        .list(&lp)
        .await
        .map_err(|e| explain(e, "list FleetNodes", namespace))?
        .items;
    items.sort_by_key(|n| (n.namespace(), n.name_any()));
    print(cli.output, &items, || render::nodes_table(&items, now()))
}

/// `start -f FILE [--dry-run]`.
async fn start(
    client: &Client,
    namespace: &str,
    file: &std::path::Path,
    dry_run: bool,
    write_qps: f64,
    output: Output,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        write_qps.is_finite() && write_qps > 0.0,
        "--write-qps must be above 0, e.g. 200"
    );
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut plan: MigrationPlan = serde_saphyr::from_str(&text).with_context(|| {
        format!(
            "{} is not a MigrationPlan (apiVersion switchyard.dev/v1alpha1)",
            file.display()
        )
    })?;
    let ns = plan.namespace().unwrap_or_else(|| namespace.to_owned());
    plan.metadata.namespace = Some(ns.clone());
    let name = plan.name_any();
    let plans: Api<MigrationPlan> = Api::namespaced(client.clone(), &ns);
    let pp = kube::api::PostParams {
        dry_run,
        field_manager: Some(FIELD_MANAGER.into()),
    };
    let created = plans.create(&pp, &plan).await.map_err(|e| match e {
        kube::Error::Api(s) if s.code == 409 => anyhow::anyhow!(
            "MigrationPlan {name} already exists in namespace {ns}: follow it with `kubectl switchyard status {name} -n {ns} -w`, or delete it first"
        ),
        kube::Error::Api(s) if s.code == 422 || s.code == 400 => {
            anyhow::anyhow!("the API server refuses MigrationPlan {name}: {}", s.message)
        }
        e => explain(e, &format!("create MigrationPlan {name}"), &ns),
    })?;
    if !dry_run {
        println!(
            "migrationplan.switchyard.dev/{name} created; follow it with `kubectl switchyard status {name} -n {ns} -w`"
        );
        return Ok(());
    }
    let fleet = Api::<FleetNode>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .map_err(|e| explain(e, "list FleetNodes", &ns))?
        .items;
    let p = preview::preview(&created, &fleet, write_qps, now());
    print(output, &p, || {
        format!(
            "Server-side dry run: accepted (nothing was created).\n{}",
            preview::render(&created, &p)
        )
    })
}

/// `status PLAN -w`: redraw from a watch on the plan until it finishes.
async fn watch_plan(
    plans: &Api<MigrationPlan>,
    name: &str,
    namespace: &str,
    output: Output,
) -> anyhow::Result<()> {
    get_plan(plans, name, namespace).await?;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher(plans.clone(), config)
        .applied_objects()
        .map_err(|e| anyhow::anyhow!("watching MigrationPlan {name}: {e}"))
        .boxed();
    while let Some(p) = stream.try_next().await? {
        if tty && output == Output::Table {
            // Clear the screen and draw from the top, as `watch` does.
            print!("\x1b[2J\x1b[H");
        } else if output == Output::Table {
            println!("---");
        }
        print(output, &p, || render::plan_detail(&p, now()))?;
        if p.status.as_ref().is_some_and(|s| s.phase.is_terminal()) {
            return Ok(());
        }
    }
    bail!("the watch on MigrationPlan {name} ended")
}
