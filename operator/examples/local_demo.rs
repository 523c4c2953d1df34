//! A whole migration on an in-memory cluster: the in-memory Kubernetes API
//! server, the Switchyard CRDs, N FleetNodes, the real MigrationPlan
//! controller, and a plan; progress is printed as it happens.
//!
//! Usage:
//!   cargo run -p switchyard-operator --example local_demo -- [--nodes N] [--plan PLAN.yaml]
//!
//! While it runs, `KUBECONFIG=<printed path> kubectl get fnode,mplan -n demo`
//! shows the same objects. The agents here are stand-ins (each acknowledges
//! a mode 50-250 ms after it is set), so a hundred of them fit on a laptop;
//! the API server, the operator's controller and the planner are the real
//! ones. The real `switchyard-node-agent` runs as processes in
//! `node-agent/tests/agent_system.rs` and as a fleet of 20 in
//! `operator/tests/real_fleet.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use switchyard_crds::manifest::{self, Resource};
use switchyard_crds::{FleetNode, MigrationPlan, NetworkMode, PlanPhase, forms_island};
use switchyard_operator::controller::{self, NoAnalysis, Settings};
use switchyard_testbed::apiserver::Config;
use switchyard_testbed::cluster::TestCluster;

async fn simulated_agents(client: Client, ns: String) {
    // A spread of apply times, as real agents would have.
    let delay = |node: &str| {
        Duration::from_millis(50 + switchyard_operator::planner::order_key("agent", node) % 200)
    };
    switchyard_testbed::agents::acknowledge_modes(client, &ns, delay).await;
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let count: usize = flag("--nodes")
        .map(|n| n.parse())
        .transpose()
        .context("--nodes takes a number")?
        .unwrap_or(100);
    let plan_path = flag("--plan").unwrap_or_else(|| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/demo-plan.yaml").to_owned()
    });
    let text =
        std::fs::read_to_string(&plan_path).with_context(|| format!("reading {plan_path}"))?;
    let plan = match manifest::parse(&text) {
        Ok(Resource::MigrationPlan(p)) => *p,
        Ok(_) => bail!("{plan_path} is not a MigrationPlan"),
        Err(e) => bail!("{plan_path}: {e}"),
    };
    let ns = plan.namespace().unwrap_or_else(|| "default".into());

    let cluster = TestCluster::start(Config::default(), "demo").await?;
    println!(
        "in-memory API server on {}; kubectl: KUBECONFIG={} kubectl get fnode,mplan -n {ns}",
        cluster.server.url(),
        cluster.kubeconfig.display()
    );
    let client = cluster.client.clone();
    cluster.namespace(&ns).await?;
    let labels: BTreeMap<String, String> =
        plan.spec.selector.match_labels.clone().unwrap_or_default();
    cluster
        .register_nodes(
            &ns,
            (0..count).map(|i| format!("storage-node-{i}")),
            &labels,
            NetworkMode::LibP2pOnly,
        )
        .await?;
    let nodes: Api<FleetNode> = Api::namespaced(client.clone(), &ns);
    println!("registered {count} FleetNodes in LibP2pOnly");

    tokio::spawn(simulated_agents(client.clone(), ns.clone()));
    tokio::spawn(controller::run(
        client.clone(),
        controller::Wiring {
            namespace: Some(ns.clone()),
            identity: "local-demo".into(),
            analysis: Arc::new(NoAnalysis),
            fence: Arc::new(controller::NoFence),
            settings: Settings::default(),
            metrics: Default::default(),
            notifier: None,
        },
    ));
    let plans: Api<MigrationPlan> = Api::namespaced(client.clone(), &ns);
    plans.create(&PostParams::default(), &plan).await?;
    let name = plan.name_any();
    println!(
        "created MigrationPlan {name}: stages {:?}",
        plan.spec.stages
    );

    let started = Instant::now();
    let mut last = String::new();
    let mut islands = 0;
    let phase = loop {
        let p = plans.get(&name).await?;
        let st = p.status.clone().unwrap_or_default();
        let all = nodes.list(&ListParams::default()).await?;
        islands += usize::from(forms_island(
            all.items
                .iter()
                .flat_map(|n| [n.spec.mode, n.applied_mode()])
                .flatten(),
        ));
        let m = &st.nodes.by_mode;
        let line = format!(
            "{:?} stage {} wave {} | {}% | LibP2pOnly {} DualPreferLibP2p {} DualPreferIroh {} IrohOnly {} | {}",
            st.phase,
            st.stage,
            st.wave.map_or("canary".into(), |w| w.to_string()),
            st.progress_percent,
            m.libp2p_only,
            m.dual_prefer_libp2p,
            m.dual_prefer_iroh,
            m.iroh_only,
            st.message.clone().unwrap_or_default()
        );
        if line != last {
            println!("[{:>5.1}s] {line}", started.elapsed().as_secs_f64());
            last = line;
        }
        if matches!(
            st.phase,
            PlanPhase::Succeeded | PlanPhase::RolledBack | PlanPhase::Failed | PlanPhase::Invalid
        ) {
            break st.phase;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("the plan did not finish in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!(
        "finished {phase:?} in {:.1}s; polls that saw an island: {islands}",
        started.elapsed().as_secs_f64()
    );
    cluster.stop().await;
    Ok(())
}
