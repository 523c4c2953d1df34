//! `switchyard demo` as a person runs it: the binary, a small fleet, both
//! ways (a migration that succeeds; `--fail-at` and the automatic
//! rollback), judged by its summary and exit status; and Ctrl-C, after
//! which nothing it started is left.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use switchyard_testbed::serial;

/// A demo of 8 agents ends well within this; a hung one fails the test.
const BOUND: Duration = Duration::from_secs(240);

fn demo(args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("demo")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the demo starts");
    let pid = child.id();
    // A watchdog: a demo past the bound is stopped (SIGTERM, then the
    // test fails on its exit status and output).
    let watchdog = std::thread::spawn(move || {
        let deadline = Instant::now() + BOUND;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            if !alive(pid) {
                return;
            }
        }
        signal(pid, Signal::SIGTERM);
    });
    let out = child.wait_with_output().expect("the demo ran");
    let _ = watchdog.join();
    (out, started.elapsed())
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

fn signal(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(pid), signal);
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The value after `label` on the summary line that starts with it.
fn line<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix(label))
        .map_or("", str::trim)
}

#[test]
fn a_small_fleet_migrates_to_iroh_with_no_failed_operation_and_exits_0() {
    let _heavy = serial::heavy();
    let (out, took) = demo(&["--nodes", "8", "--plain"]);
    let t = text(&out);
    eprintln!("{t}\ntook {took:?}");
    assert!(out.status.success(), "exit {:?}\n{t}", out.status);
    assert_eq!(line(&t, "Result"), "Succeeded, as expected", "{t}");
    assert_eq!(
        line(&t, "Migrated"),
        "8 of 8 nodes on IrohOnly at the end",
        "{t}"
    );
    let workload = line(&t, "Workload");
    assert!(workload.ends_with(", 0 failed"), "{workload}");
    let ops: u64 = workload
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a count of operations");
    assert!(ops > 50, "the workload ran throughout: {workload}");
    assert!(line(&t, "Islands").starts_with("0 of "), "{t}");
    assert_eq!(line(&t, "Rollbacks"), "none", "{t}");
    // The live view showed each stage and the analysis passing.
    for stage in ["1 DualPreferLibP2p", "2 DualPreferIroh", "3 IrohOnly"] {
        assert!(t.contains(stage), "{stage} shown:\n{t}");
    }
    assert!(t.contains("Analysis   Pass: error-rate"), "{t}");
    assert!(t.contains("dashboard   http://127.0.0.1:"), "{t}");
}

#[test]
fn fail_at_breaks_the_canaries_and_the_plan_rolls_back_by_itself_and_exits_0() {
    let _heavy = serial::heavy();
    let (out, took) = demo(&["--nodes", "8", "--plain", "--fail-at", "DualPreferIroh"]);
    let t = text(&out);
    eprintln!("{t}\ntook {took:?}");
    assert!(out.status.success(), "exit {:?}\n{t}", out.status);
    assert_eq!(line(&t, "Result"), "RolledBack, as expected", "{t}");
    assert!(
        t.contains("Fault      all=1 injected into the canaries node-01, node-02 in stage 2"),
        "{t}"
    );
    let rollback = line(&t, "Rollback");
    assert!(
        rollback.contains("scope Plan"),
        "a rollback with its trigger: {t}"
    );
    assert!(
        t.contains("Analysis   Fail:") || !rollback.starts_with("AnalysisFailed"),
        "{t}"
    );
    assert_eq!(
        line(&t, "Migrated"),
        "0 of 8 nodes on IrohOnly at the end",
        "{t}"
    );
    // Failures only while the canaries had no network.
    let workload = line(&t, "Workload");
    let failed_under =
        workload.contains(" 0 failed") || workload.contains("while the fault was injected");
    assert!(failed_under, "{workload}");
}

#[test]
fn a_stage_that_does_not_exist_is_refused_before_anything_starts() {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["demo", "--fail-at", "7"])
        .output()
        .expect("runs");
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("the plan has stages 1 to 3 (DualPreferLibP2p, DualPreferIroh, IrohOnly)"),
        "{t}"
    );
    assert!(!t.contains("starting"), "nothing started: {t}");
}

/// A demo of 4 agents, its output read from a thread until the plan runs
/// (or [`BOUND`] passes); the main thread keeps time.
struct Running {
    child: std::process::Child,
    pid: u32,
    reader: std::thread::JoinHandle<String>,
    /// The plan began within the bound.
    planning: bool,
    /// The operator's pid(s): the demo's children once the plan runs.
    operator: Vec<u32>,
    scratch: PathBuf,
}

fn run_until_plan() -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["demo", "--nodes", "4", "--plain"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the demo starts");
    let pid = child.id();
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if l.starts_with("Plan       Canary") {
                let _ = tx.send(());
            }
            all.push_str(&l);
            all.push('\n');
        }
        all
    });
    let planning = rx.recv_timeout(BOUND).is_ok();
    Running {
        child,
        pid,
        reader,
        planning,
        operator: children(pid),
        scratch: std::env::temp_dir().join(format!("switchyard-demo-{pid}")),
    }
}

/// Whether every pid in `pids` is gone within `within` (a dead child may
/// take a moment to be reaped by init).
fn all_gone(pids: &[u32], within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    !pids.iter().any(|p| alive(*p))
}

#[test]
fn ctrl_c_stops_everything_and_removes_the_scratch_directory() {
    let _heavy = serial::heavy();
    let mut run = run_until_plan();
    let existed = run.scratch.is_dir();
    signal(run.pid, Signal::SIGINT);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = run.child.try_wait().expect("wait") {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = run.child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = run.reader.join().expect("reader");
    assert!(run.planning, "the plan started:\n{out}");
    assert!(existed, "{} existed while it ran", run.scratch.display());
    assert_eq!(status.and_then(|s| s.code()), Some(130), "{out}");
    assert!(
        out.contains("Result     interrupted while the plan was "),
        "{out}"
    );
    assert!(
        !run.operator.is_empty(),
        "the operator ran as a child process"
    );
    assert!(
        all_gone(&run.operator, Duration::from_secs(10)),
        "the operator ({:?}) is gone",
        run.operator
    );
    assert!(!run.scratch.exists(), "{} removed", run.scratch.display());
}

#[test]
fn a_killed_demo_takes_its_operator_with_it() {
    let _heavy = serial::heavy();
    let mut run = run_until_plan();
    // SIGKILL: the demo itself can clean up nothing.
    signal(run.pid, Signal::SIGKILL);
    let _ = run.child.wait();
    let out = run.reader.join().expect("reader");
    assert!(run.planning, "the plan started:\n{out}");
    assert!(
        !run.operator.is_empty(),
        "the operator ran as a child process"
    );
    let gone = all_gone(&run.operator, Duration::from_secs(20));
    // What SIGKILL leaves, the next demo sweeps (see fleet::sweep_stale);
    // here the test removes it.
    let _ = std::fs::remove_dir_all(&run.scratch);
    if !gone {
        for p in &run.operator {
            signal(*p, Signal::SIGKILL);
        }
    }
    assert!(
        gone,
        "the operator ({:?}) ended with the demo",
        run.operator
    );
}

/// The pids whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let stat = std::fs::read_to_string(PathBuf::from(format!("/proc/{p}/stat")))
                .unwrap_or_default();
            // pid (comm) state ppid ...
            stat.rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().nth(1))
                .and_then(|pp| pp.parse::<u32>().ok())
                == Some(pid)
        })
        .collect()
}
