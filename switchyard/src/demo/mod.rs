//! `switchyard demo`: a whole migration of a real fleet on one machine.
//!
//! The in-memory API server with the CRDs, N real node-agents carrying a
//! DHT workload, the operator (leader-elected, scraping the agents for its
//! analysis, serving the dashboard), and a MigrationPlan with a canary and
//! three stages. A live view while it runs; a summary and an exit status
//! at the end; everything it started is stopped and removed, on Ctrl-C
//! too. `--fail-at STAGE` breaks that stage's canaries to show the
//! analysis failing and the automatic rollback.

pub mod fleet;
pub mod plan;
pub mod view;
pub mod workload;

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use switchyard_crds::plan::ModeCounts;
use switchyard_crds::{FleetNode, MigrationPlan, MigrationPlanStatus, PlanPhase, forms_island};

use fleet::Fleet;
use view::{Outcome, Snapshot};
use workload::Load;

/// The fault `--fail-at` injects into the canaries: every send they make
/// fails, on both transports (half of them, with a dual mode's second
/// transport taking the request again, moved their error rate by only
/// 4%: a canary that loses its network is what the demo shows).
const FAULT: &str = "all=1";
/// How often the view is refreshed.
const REFRESH: Duration = Duration::from_millis(500);
/// How long the plan may stay Paused before the demo ends the run.
const PAUSED_FOR: Duration = Duration::from_secs(5);
/// After the plan ends, how long the nodes may take to report its last
/// mode.
const SETTLE: Duration = Duration::from_secs(30);

/// `switchyard demo`'s options.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Node-agents in the fleet.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u16).range(3..=200))]
    pub nodes: u16,
    /// Break the canaries of this stage (1 to 3, or its mode, e.g.
    /// DualPreferIroh): every send they make fails, the analysis fails, and the
    /// plan rolls back by itself. The run then succeeds when it ends
    /// RolledBack.
    #[arg(long, value_name = "STAGE", value_parser = plan::fail_at)]
    pub fail_at: Option<usize>,
    /// Print a line at each change instead of redrawing the view (the
    /// default when the output is not a terminal).
    #[arg(long)]
    pub plain: bool,
    /// Give up when the plan has not ended after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Write the fleet's logs (its agents run in this process) to this
    /// file, filtered by RUST_LOG (default: warnings).
    #[arg(long, value_name = "FILE")]
    pub log: Option<std::path::PathBuf>,
}

/// Send this process's logs (its agents') to `path`, filtered by RUST_LOG.
fn log_to(path: &std::path::Path) -> std::io::Result<()> {
    let file = std::fs::File::create(path)?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .init();
    Ok(())
}

/// Removes the scratch directory however the demo ends (an error, a
/// panic, Ctrl-C); the operator is killed when its handle drops.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run the demo; the exit status says whether it ended as expected.
pub async fn main(args: DemoArgs) -> ExitCode {
    // TestCluster's scratch directory for this process.
    let _scratch =
        Scratch(std::env::temp_dir().join(format!("switchyard-demo-{}", std::process::id())));
    let mut stop = match signals() {
        Ok(rx) => rx,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = &args.log
        && let Err(e) = log_to(path)
    {
        eprintln!("error: --log {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    if let Err(e) = open_files(args.nodes.into()) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    if let Some(note) = unoptimised_note(args.nodes, cfg!(debug_assertions)) {
        eprintln!("{note}");
    }
    let started = Instant::now();
    let say = move |m: &str| println!("[{:>5.1}s] {m}", started.elapsed().as_secs_f64());
    let swept = fleet::sweep_stale(&std::env::temp_dir());
    if swept > 0 {
        say(&format!(
            "removed {swept} scratch directories left by demos that were killed"
        ));
    }
    say(&format!(
        "starting the in-memory API server, {} node-agents and the operator",
        args.nodes
    ));
    let fleet = tokio::select! {
        f = Fleet::start(args.nodes.into(), &say) => f,
        () = interrupted(&mut stop) => {
            eprintln!("interrupted while starting; cleaned up");
            return ExitCode::from(130);
        }
    };
    let fleet = match fleet {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: the demo could not start: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    say(&format!(
        "ready in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    print_access(&fleet);
    let mut demo = Demo::new(fleet, &args);
    let ran = tokio::select! {
        o = demo.run() => Some(o),
        () = interrupted(&mut stop) => None,
    };
    let outcome = match ran {
        Some(o) => o,
        None => Ok(Outcome {
            interrupted: true,
            ..demo.outcome(None).await
        }),
    };
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            eprintln!(
                "error: {e:#}\nthe operator's last log lines:\n{}",
                demo.fleet.operator_log(20)
            );
            demo.stop().await;
            return ExitCode::FAILURE;
        }
    };
    demo.stop().await;
    println!("\n{}", view::summary(&outcome));
    match view::verdict(&outcome) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) if outcome.interrupted => ExitCode::from(130),
        Err(_) => ExitCode::FAILURE,
    }
}

fn print_access(fleet: &Fleet) {
    let kubeconfig = fleet.cluster.kubeconfig.display();
    println!(
        "\n  dashboard   {}\n  kubeconfig  {kubeconfig}\n  try         KUBECONFIG={kubeconfig} kubectl get fnode,mplan -n {ns}\n              KUBECONFIG={kubeconfig} kubectl switchyard status {plan} -n {ns} -w\n",
        fleet.dashboard,
        ns = plan::NAMESPACE,
        plan = plan::PLAN,
    );
}

/// Open files a fleet of `n` agents in one process needs, about: each
/// agent's sockets and a TCP connection to many of the others, both ends
/// of which are in this process (30 agents used 1,265).
fn files_needed(n: u64) -> u64 {
    256 + 3 * n * n / 2
}

/// Nodes past which a dev build's fleet outgrows two cores.
const UNOPTIMISED_NODES: u16 = 50;

/// What to say when `nodes` agents run in an unoptimised build: at 100
/// nodes on two cores its agents are slow enough that the analysis rolls
/// the plan back on p95 latency (2 of 2 dev runs did, 0 of 20 release
/// runs).
fn unoptimised_note(nodes: u16, unoptimised: bool) -> Option<String> {
    (unoptimised && nodes > UNOPTIMISED_NODES).then(|| {
        format!(
            "note: this is an unoptimised (dev) build; past {UNOPTIMISED_NODES} nodes its agents may be too slow for the plan's latency analysis, which then rolls the plan back. For --nodes {nodes} build with --release: cargo run --release -p switchyard -- demo --nodes {nodes}"
        )
    })
}

/// Raise this process's open-file limit to what `n` agents need (up to
/// the hard limit); say what to change when the hard limit is too low.
fn open_files(n: u64) -> Result<(), String> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let need = files_needed(n);
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(|e| format!("reading the open-file limit: {e}"))?;
    if soft >= need {
        return Ok(());
    }
    if hard < need {
        return Err(format!(
            "--nodes {n} needs about {need} open files, and this shell allows {hard} (ulimit -Hn): raise the hard limit or use fewer nodes"
        ));
    }
    setrlimit(Resource::RLIMIT_NOFILE, need, hard)
        .map_err(|e| format!("raising the open-file limit to {need}: {e}"))
}

/// Turns true at SIGINT (Ctrl-C) or SIGTERM. The handlers are in place
/// before anything starts: a signal never kills the demo outright, which
/// would leave the operator's process behind.
fn signals() -> anyhow::Result<tokio::sync::watch::Receiver<bool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        let _ = tx.send(true);
    });
    Ok(rx)
}

async fn interrupted(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// A run in progress.
struct Demo {
    fleet: Fleet,
    plans: Api<MigrationPlan>,
    load: Arc<Load>,
    stop_load: tokio::sync::watch::Sender<bool>,
    apps: Vec<tokio::task::JoinHandle<()>>,
    fail_at: Option<usize>,
    scale: plan::Scale,
    live: bool,
    timeout: Duration,
    created: Instant,
    islands: (u64, u64),
    fault: Option<String>,
}

impl Demo {
    fn new(fleet: Fleet, args: &DemoArgs) -> Demo {
        let plans = Api::namespaced(fleet.cluster.client.clone(), plan::NAMESPACE);
        let load = Arc::new(Load::default());
        let (stop_load, stop_rx) = tokio::sync::watch::channel(false);
        let scale = plan::Scale::new(fleet.apis.len());
        let apps = workload::start(&fleet.apis, scale.round(), &load, &stop_rx);
        Demo {
            fleet,
            plans,
            load,
            stop_load,
            apps,
            fail_at: args.fail_at,
            scale,
            live: !args.plain && std::io::stdout().is_terminal(),
            timeout: Duration::from_secs(args.timeout),
            created: Instant::now(),
            islands: (0, 0),
            fault: None,
        }
    }

    fn expected(&self) -> PlanPhase {
        if self.fail_at.is_some() {
            PlanPhase::RolledBack
        } else {
            PlanPhase::Succeeded
        }
    }

    /// Create the plan and follow it to its end.
    async fn run(&mut self) -> anyhow::Result<Outcome> {
        self.plans
            .create(&PostParams::default(), &plan::plan(self.scale))
            .await
            .context("creating the MigrationPlan")?;
        self.created = Instant::now();
        let mut printed = 0usize;
        let mut last_key = String::new();
        let mut rates: VecDeque<(Instant, u64)> = VecDeque::new();
        let mut tick = tokio::time::interval(REFRESH);
        let mut paused_since: Option<Instant> = None;
        loop {
            tick.tick().await;
            let status = self.plans.get(plan::PLAN).await?.status.unwrap_or_default();
            let nodes = self.fleet.nodes.list(&ListParams::default()).await?.items;
            self.count_islands(&nodes);
            self.steer_fault(&status, &nodes).await?;
            let snap = self.snapshot(&status, &nodes, &mut rates);
            self.show(&snap, &mut printed, &mut last_key);
            if status.phase.is_terminal() {
                break;
            }
            // The demo resumes nothing: a plan that paused itself (an
            // inconclusive analysis) ends the run, saying why.
            if status.phase == PlanPhase::Paused {
                let paused = *paused_since.get_or_insert_with(Instant::now);
                if paused.elapsed() > PAUSED_FOR {
                    break;
                }
            } else {
                paused_since = None;
            }
            anyhow::ensure!(
                self.created.elapsed() < self.timeout,
                "the plan did not end within {:?} (phase {:?}: {})",
                self.timeout,
                status.phase,
                status.message.unwrap_or_default()
            );
        }
        let end = self.plans.get(plan::PLAN).await?.status.unwrap_or_default();
        if end.phase.is_terminal() {
            self.settle(end.phase).await?;
        }
        Ok(self.outcome(Some(end.phase)).await)
    }

    fn count_islands(&mut self, nodes: &[FleetNode]) {
        let island = forms_island(
            nodes
                .iter()
                .flat_map(|n| [n.spec.mode, n.applied_mode()])
                .flatten(),
        );
        self.islands.0 += u64::from(island);
        self.islands.1 += 1;
    }

    /// With `--fail-at`, break the canaries once they run that stage's
    /// mode; mend them once the plan has rolled back.
    async fn steer_fault(
        &mut self,
        s: &MigrationPlanStatus,
        nodes: &[FleetNode],
    ) -> anyhow::Result<()> {
        let Some(stage) = self.fail_at else {
            return Ok(());
        };
        let canaries = self.scale.canaries();
        if self.fault.is_none() && s.stage as usize == stage && s.wave.is_none() {
            let mode = plan::STAGES[stage];
            let applied = nodes
                .iter()
                .filter(|n| canaries.contains(&n.name_any()) && n.applied_mode() == Some(mode))
                .count();
            if applied == canaries.len() {
                self.load.fault.store(true, Ordering::Relaxed);
                self.fleet.inject(&canaries, Some(FAULT)).await?;
                self.fault = Some(format!(
                    "{FAULT} injected into the canaries {} in stage {} ({mode:?})",
                    canaries.join(", "),
                    stage + 1
                ));
            }
        }
        if self.fault.is_some() && s.phase.is_terminal() {
            self.fleet.inject(&canaries, None).await?;
        }
        Ok(())
    }

    fn snapshot(
        &self,
        s: &MigrationPlanStatus,
        nodes: &[FleetNode],
        rates: &mut VecDeque<(Instant, u64)>,
    ) -> Snapshot {
        let load = self.load.counts();
        let now = Instant::now();
        rates.push_back((now, load.ok + load.failed));
        while rates.len() > 10 {
            rates.pop_front();
        }
        let ops_per_second = match (rates.front(), rates.back()) {
            (Some((t0, n0)), Some((t1, n1))) if t1 > t0 => {
                (n1 - n0) as f64 / (*t1 - *t0).as_secs_f64()
            }
            _ => 0.0,
        };
        Snapshot {
            elapsed: self.created.elapsed(),
            phase: s.phase,
            stage: s.stage as usize,
            wave: s.wave.map(|w| w as usize),
            by_mode: by_mode(nodes),
            total: nodes.len(),
            load,
            ops_per_second,
            analysis: s.last_analysis.clone(),
            message: s.message.clone(),
            fault: self.fault.clone(),
        }
    }

    /// Redraw the view in place on a terminal; elsewhere, print a line
    /// when the plan's step or the nodes' modes change.
    fn show(&self, snap: &Snapshot, printed: &mut usize, last_key: &mut String) {
        let lines = view::frame(snap);
        let mut out = std::io::stdout().lock();
        if self.live {
            if *printed > 0 {
                let _ = write!(out, "\x1b[{printed}F\x1b[J");
            }
            // Lines wider than the terminal are clipped, not wrapped (auto-wrap
            // off while drawing), so the next frame moves up exactly as many
            // lines as this one printed.
            let _ = writeln!(out, "\x1b[?7l{}\x1b[?7h", lines.join("\n"));
            *printed = lines.len();
        } else {
            let key = format!(
                "{:?} {} {:?} {:?} {:?}",
                snap.phase, snap.stage, snap.wave, snap.by_mode, snap.fault
            );
            if key != *last_key {
                let _ = writeln!(out, "{}\n", lines.join("\n"));
                *last_key = key;
            }
        }
        let _ = out.flush();
    }

    /// Wait until every node reports the mode the plan ended on.
    async fn settle(&self, phase: PlanPhase) -> anyhow::Result<()> {
        let end = view::end_mode(phase);
        let deadline = Instant::now() + SETTLE;
        while Instant::now() < deadline {
            let nodes = self.fleet.nodes.list(&ListParams::default()).await?.items;
            if by_mode(&nodes).get(end) as usize == nodes.len() {
                break;
            }
            tokio::time::sleep(REFRESH).await;
        }
        Ok(())
    }

    /// What the run came to: the plan's last phase is `phase`, or what
    /// its status says now.
    async fn outcome(&self, phase: Option<PlanPhase>) -> Outcome {
        let nodes = self
            .fleet
            .nodes
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        let status = self
            .plans
            .get(plan::PLAN)
            .await
            .ok()
            .and_then(|p| p.status)
            .unwrap_or_default();
        Outcome {
            phase: phase.unwrap_or(status.phase),
            expected: self.expected(),
            took: self.created.elapsed(),
            total: nodes.len(),
            by_mode: by_mode(&nodes),
            load: self.load.counts(),
            islands: self.islands,
            rollbacks: status.rollback_history,
            interrupted: false,
        }
    }

    /// Stop the workload, then the fleet.
    async fn stop(self) {
        let _ = self.stop_load.send(true);
        let _ = tokio::time::timeout(
            Duration::from_secs(15),
            futures::future::join_all(self.apps),
        )
        .await;
        self.fleet.stop().await;
    }
}

/// Nodes by the mode they report.
fn by_mode(nodes: &[FleetNode]) -> ModeCounts {
    let mut counts = ModeCounts::default();
    for mode in nodes.iter().filter_map(FleetNode::applied_mode) {
        counts.add(mode);
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dev_build_past_fifty_nodes_says_to_build_with_release() {
        let note = unoptimised_note(100, true).expect("a note at 100 nodes");
        assert!(
            note.contains("cargo run --release -p switchyard -- demo --nodes 100"),
            "{note}"
        );
        assert_eq!(unoptimised_note(50, true), None);
        assert_eq!(unoptimised_note(30, true), None);
        assert_eq!(unoptimised_note(100, false), None);
    }
}
