//! The operator's live dashboard and `kubectl switchyard health` /
//! `metrics`, during a real migration (see `support/real_fleet.rs`): six
//! node-agents, the operator binary with its built-in analysis, a
//! three-stage plan.
//!
//! Debian's Chromium, driven by Playwright (`tests/browser/dashboard.mjs`),
//! watches the page: the plan appears, its progress moves mid-migration,
//! the traffic charts and the agents' health reports fill in from the
//! analysis scrapes, the plan ends Succeeded, and a rollback then shows
//! its trigger and reason and moves the mode counts back, all pushed over
//! `/ws` with one page load and no request beyond the operator. A
//! screenshot is
//! taken mid-migration (`UPDATE_SCREENSHOT=1` copies it to
//! `docs/dashboard.png`).
//!
//! The browser part needs `node`, `/usr/bin/chromium` and `npm ci` in
//! `operator/tests/browser` (`.ci/run` does all three); without them it is
//! skipped with a message, and under `CI` it fails.

#[path = "support/real_fleet.rs"]
#[allow(dead_code)] // The alerting parts serve the other fleet tests.
mod real_fleet;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use real_fleet::{Fleet, NS, plan};
use serde_json::json;
use switchyard_crds::PlanPhase;

const PLAN: &str = "dashboard";

/// Why the browser cannot run here, if it cannot.
fn browser_missing(dir: &Path) -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Some(format!(
            "no Chromium at {chromium} (apt-get install chromium chromium-driver)"
        ));
    }
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        return Some("no node on PATH".into());
    }
    if !dir.join("node_modules/playwright-core").exists() {
        return Some(format!(
            "playwright-core is not installed: run npm ci in {}",
            dir.display()
        ));
    }
    None
}

/// The browser script's output, line by line as it comes.
struct Lines {
    rx: tokio::sync::mpsc::Receiver<String>,
    seen: String,
}

impl Lines {
    fn follow(stdout: tokio::process::ChildStdout) -> Lines {
        use tokio::io::AsyncBufReadExt;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if tx.send(l).await.is_err() {
                    return;
                }
            }
        });
        Lines {
            rx,
            seen: String::new(),
        }
    }

    /// Wait (at most 4 minutes) for a line containing `marker`.
    async fn wait_for(&mut self, marker: &str) {
        let found = tokio::time::timeout(Duration::from_secs(240), async {
            while let Some(l) = self.rx.recv().await {
                self.seen.push_str(&l);
                self.seen.push('\n');
                if l.contains(marker) {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(
            found == Ok(true),
            "the browser never printed {marker:?}:\n{}",
            self.seen
        );
    }

    /// Everything it printed (once it has ended).
    async fn all(&mut self) -> String {
        while let Some(l) = self.rx.recv().await {
            self.seen.push_str(&l);
            self.seen.push('\n');
        }
        std::mem::take(&mut self.seen)
    }
}

/// Run the plugin with `args` against the fleet's cluster; its stdout.
async fn plugin(f: &Fleet, args: &[&str]) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-switchyard"))
        .args(args)
        .args(["-n", NS])
        .env("KUBECONFIG", &f.c.kubeconfig)
        .output()
        .await
        .expect("the plugin runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "kubectl switchyard {args:?}: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_the_plugin_follow_a_real_migration() {
    let browser_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let missing = browser_missing(&browser_dir);
    if let Some(why) = &missing {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI promised the browser test's tools: {why}"
        );
        eprintln!("skipping the browser part: {why}");
    }
    let f = Fleet::start(6, false).await.expect("fleet");
    let base = format!("http://127.0.0.1:{}", f.operator_port);
    f.create(&plan(
        PLAN,
        &["DualPreferLibP2p", "DualPreferIroh", "IrohOnly"],
        "6s",
        json!({
            "waves": [50, 100],
            "waveInterval": "4s",
            "analysis": {
                "interval": "1s",
                "minSampleSize": 5,
                "metrics": [
                    {"name": "errors", "builtin": "ErrorRate", "max": 0.05},
                    {"name": "p95-ms", "builtin": "LatencyP95", "max": 500.0},
                ],
            },
        }),
    ))
    .await;

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let mut browser = missing.is_none().then(|| {
        let mut child = tokio::process::Command::new("node")
            .arg(browser_dir.join("dashboard.mjs"))
            .arg(format!("{base}/"))
            .arg(format!("{NS}/{PLAN}"))
            .arg(&shot)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node starts");
        let lines = Lines::follow(child.stdout.take().expect("stdout"));
        (child, lines)
    });

    // The plugin reads the same data, from the operator's API, while the
    // plan runs.
    let url = format!("--operator={base}");
    let health = real_fleet::eventually("kubectl switchyard health shows reports", || async {
        let out = plugin(&f, &["health", &url]).await;
        out.contains("agents reporting").then_some(out)
    })
    .await;
    assert!(health.contains("TRANSPORT"), "{health}");
    assert!(health.contains("node-0"), "{health}");
    let iroh_only = plugin(&f, &["health", "--transport", "iroh", &url]).await;
    assert!(
        iroh_only.contains("IROH") && !iroh_only.contains("LIBP2P"),
        "{iroh_only}"
    );
    let metrics = real_fleet::eventually("kubectl switchyard metrics shows traffic", || async {
        let out = plugin(&f, &["metrics", PLAN, &url]).await;
        (out.contains("Traffic:") && out.contains("Analysis:  ")).then_some(out)
    })
    .await;
    assert!(
        metrics.contains("switchyard_plan_progress_ratio"),
        "{metrics}"
    );
    let json_out = plugin(&f, &["metrics", PLAN, "--format", "json", &url]).await;
    let parsed: serde_json::Value = serde_json::from_str(&json_out).expect("metrics JSON");
    assert_eq!(parsed["plans"][0]["name"], PLAN, "{json_out}");
    let no_operator = plugin(&f, &["metrics", PLAN]).await;
    assert!(no_operator.contains("--operator"), "{no_operator}");

    let done = f
        .wait_plan(PLAN, "the plan succeeds", |p| {
            p.status.as_ref().map(|s| s.phase) == Some(PlanPhase::Succeeded)
        })
        .await;
    assert_eq!(done.status.expect("status").phase, PlanPhase::Succeeded);
    // Back again, for the page to show a rollback with its trigger, once
    // the page has shown the success.
    if let Some((_, lines)) = &mut browser {
        lines.wait_for("ok: the mode counts moved live").await;
    }
    plugin(
        &f,
        &["rollback", PLAN, "--reason", "browser test: back to libp2p"],
    )
    .await;
    f.wait_plan(PLAN, "the plan rolls back", |p| {
        p.status.as_ref().map(|s| s.phase) == Some(PlanPhase::RolledBack)
    })
    .await;

    if let Some((child, mut lines)) = browser {
        let out = tokio::time::timeout(Duration::from_secs(240), child.wait_with_output())
            .await
            .expect("the browser finishes within 4 minutes")
            .expect("node ran");
        let text = lines.all().await;
        eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "the browser check failed:\n{text}");
        assert!(
            text.contains("ok: the plan reaches Succeeded on the page"),
            "{text}"
        );
        if std::env::var_os("UPDATE_SCREENSHOT").is_some() {
            let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/dashboard.png");
            std::fs::copy(&shot, docs).expect("screenshot copied to docs/");
        }
    }
    f.stop().await;
}
