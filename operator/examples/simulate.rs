//! Run a MigrationPlan manifest through the planner against a simulated
//! fleet, in virtual time, and print what the operator would do.
//!
//! Usage:
//!   cargo run -p switchyard-operator --example simulate -- [PLAN.yaml] [--nodes N] [--fail-stage S]
//!
//! PLAN.yaml defaults to examples/migrationplan.yaml. --fail-stage makes
//! analysis fail once stage S starts, to show an automatic rollback.
//! Agents acknowledge each mode change 5 s after it; analysis passes
//! otherwise. This is the planner alone: no API server, no agents (the
//! local testbed replaces it with a whole in-memory cluster).

use anyhow::{Context, bail};
use switchyard_crds::manifest::{self, Resource};
use switchyard_crds::{NetworkMode, PlanPhase, Verdict};
use switchyard_operator::planner::sim::Sim;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let path = args
        .first()
        .filter(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../examples/migrationplan.yaml"
            )
            .to_owned()
        });
    let nodes: usize = flag("--nodes")
        .map(|n| n.parse())
        .transpose()
        .context("--nodes takes a number")?
        .unwrap_or(50);
    let fail_stage: Option<u32> = flag("--fail-stage")
        .map(|n| n.parse())
        .transpose()
        .context("--fail-stage takes a stage index")?;

    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let plan = match manifest::parse(&text) {
        Ok(Resource::MigrationPlan(p)) => p,
        Ok(_) => bail!("{path} is not a MigrationPlan"),
        Err(e) => bail!("{path}: {e}"),
    };
    let name = plan.metadata.name.clone().unwrap_or_else(|| "plan".into());
    println!(
        "simulating MigrationPlan {name} over {nodes} LibP2pOnly nodes: stages {:?}",
        plan.spec.stages
    );

    let mut sim = Sim::new(plan.spec, nodes, NetworkMode::LibP2pOnly);
    sim.name = name;
    let start = sim.now;
    let mut failed = false;
    let mut islands = 0usize;
    for _ in 0..100_000 {
        let stage = sim.status.as_ref().map(|s| s.stage);
        if !failed
            && fail_stage.is_some()
            && stage == fail_stage
            && sim.phase() != PlanPhase::Pending
        {
            sim.verdict(Verdict::Fail);
            failed = true;
        } else if sim.phase() != PlanPhase::RollingBack {
            sim.verdict(Verdict::Pass);
        }
        let d = sim.reconcile();
        let elapsed = sim.now.duration_since(start);
        for t in &d.transitions {
            let level = if t.is_warning() { "Warning" } else { "Normal" };
            println!(
                "[{:>5}s] {level:<7} {:<24} {}",
                elapsed.as_secs(),
                t.reason(),
                t.message()
            );
        }
        if !d.patches.is_empty() {
            let mut by_mode = std::collections::BTreeMap::new();
            for p in &d.patches {
                *by_mode.entry(p.mode.as_str()).or_insert(0) += 1;
            }
            println!(
                "[{:>5}s]         set spec.mode: {by_mode:?}",
                elapsed.as_secs()
            );
        }
        if matches!(
            sim.phase(),
            PlanPhase::Succeeded | PlanPhase::RolledBack | PlanPhase::Failed | PlanPhase::Invalid
        ) {
            break;
        }
        islands += usize::from(sim.has_island());
        // Agents take 5 s to apply, and their acknowledgement triggers the
        // next reconcile (a watch event); with nothing in flight, time
        // jumps to the next due step.
        sim.advance(5);
        sim.ack_all();
        if d.patches.is_empty() {
            let next = d
                .requeue_at
                .map(|t| t.duration_since(sim.now).as_secs())
                .unwrap_or(0)
                .clamp(1, 3_600);
            sim.advance(next);
        }
        if sim.phase() == PlanPhase::RollingBack {
            sim.analysis = None;
        }
    }
    let st = sim.status.clone().unwrap_or_default();
    let counts = &st.nodes.by_mode;
    println!(
        "finished {:?} after {} virtual minutes: LibP2pOnly {} DualPreferLibP2p {} DualLoadBalance {} DualPreferIroh {} IrohOnly {}; reconciles that left an island: {islands}",
        st.phase,
        sim.now.duration_since(start).as_secs() / 60,
        counts.libp2p_only,
        counts.dual_prefer_libp2p,
        counts.dual_load_balance,
        counts.dual_prefer_iroh,
        counts.iroh_only
    );
    Ok(())
}
