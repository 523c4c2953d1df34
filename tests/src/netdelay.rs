//! Delay, jitter and loss on a host's link in user space, for kernels
//! built without `sch_netem` (as this project's CI machines are).
//!
//! An iptables rule in the host's namespace hands each packet arriving on
//! its link to an NFQUEUE; a thread of the test process, bound to that
//! queue from inside the namespace, holds each packet for its delay and
//! then accepts it, or drops it at the loss rate. The kernel keeps the
//! packet meanwhile; only its metadata crosses to user space.
//!
//! Arriving, not leaving: a packet held on its sender's way out still
//! counts against the sending socket (TCP small queues, a UDP socket's
//! send buffer), which throttles the sender to a trickle at tens of
//! milliseconds; once a packet has crossed into the receiving namespace
//! it belongs to no socket. (netem on a sender's own link has the same
//! trap.)
//!
//! Unlike netem, packets leave in the order they came: a packet never
//! overtakes an earlier one, so jitter never reorders (netem's does,
//! unless told otherwise). The rule uses `--queue-bypass`, so if the
//! thread is gone, packets pass undelayed rather than vanish.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// What to do to the packets arriving at a host.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Shape {
    /// Added one-way delay, milliseconds.
    pub delay_ms: u32,
    /// Each packet's delay is drawn uniformly from `delay ± jitter`.
    pub jitter_ms: u32,
    /// Packets dropped, percent.
    pub loss_percent: f64,
    /// Only UDP (iroh's QUIC), not TCP (libp2p).
    pub udp_only: bool,
}

/// Packets counted by a [`Delayer`].
#[derive(Debug, Default)]
pub struct Counts {
    /// Passed on after their delay.
    pub passed: AtomicU64,
    /// Dropped at the loss rate.
    pub dropped: AtomicU64,
}

/// The most packets held at once; the kernel drops what comes beyond it,
/// as netem does beyond its `limit`.
const MAX_HELD: u32 = 100_000;

/// A running delayer for one namespace; [`Drop`] removes the rule and
/// passes on what it holds.
pub struct Delayer {
    ns: String,
    rule: Vec<String>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
    /// What it has done so far.
    pub counts: Arc<Counts>,
}

/// Why user-space delay does not work here, if it does not.
pub fn unavailable() -> Option<String> {
    match std::process::Command::new("iptables-legacy")
        .arg("--version")
        .output()
    {
        Ok(o) if o.status.success() => None,
        _ => Some("iptables-legacy is missing (apt-get install iptables)".into()),
    }
}

impl Delayer {
    /// Shape what arrives on device `dev` of namespace `ns`, through
    /// NFQUEUE number `queue`.
    pub fn start(ns: &str, dev: &str, queue: u16, shape: Shape) -> anyhow::Result<Delayer> {
        anyhow::ensure!(
            (0.0..=100.0).contains(&shape.loss_percent),
            "loss {}% is not a percentage",
            shape.loss_percent
        );
        anyhow::ensure!(
            shape.jitter_ms <= shape.delay_ms,
            "jitter {} ms above the delay {} ms",
            shape.jitter_ms,
            shape.delay_ms
        );
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let thread = {
            let (ns, stop, counts) = (ns.to_owned(), stop.clone(), counts.clone());
            std::thread::Builder::new()
                .name(format!("delay-{ns}"))
                .spawn(move || run(&ns, queue, shape, &stop, &counts, ready_tx))
                .context("spawning the delayer")?
        };
        let bound = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .context("the delayer did not bind its queue");
        let mut delayer = Delayer {
            ns: ns.to_owned(),
            rule: Vec::new(),
            stop,
            thread: Some(thread),
            counts,
        };
        if let Err(e) = bound.and_then(|r| r) {
            delayer.stop();
            return Err(e);
        }
        let mut rule: Vec<String> = ["INPUT", "-i", dev].map(String::from).to_vec();
        if shape.udp_only {
            rule.extend(["-p", "udp"].map(String::from));
        }
        rule.extend(
            [
                "-j",
                "NFQUEUE",
                "--queue-num",
                &queue.to_string(),
                "--queue-bypass",
            ]
            .map(String::from),
        );
        iptables(ns, "-A", &rule)?;
        delayer.rule = rule;
        Ok(delayer)
    }

    fn stop(&mut self) {
        if !self.rule.is_empty() {
            if let Err(e) = iptables(&self.ns, "-D", &self.rule) {
                eprintln!("removing the delay rule in {}: {e}", self.ns);
            }
            self.rule.clear();
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("the delayer in {}: {e:#}", self.ns),
                Err(_) => eprintln!("the delayer in {} panicked", self.ns),
            }
        }
    }
}

impl Drop for Delayer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn iptables(ns: &str, op: &str, rule: &[String]) -> anyhow::Result<()> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "iptables-legacy", op])
        .args(rule)
        .output()
        .context("running iptables-legacy (apt-get install iptables)")?;
    if !out.status.success() {
        bail!(
            "iptables-legacy {op} {}: {}",
            rule.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Enter namespace `ns` (this thread only) and bind `queue` there.
fn bind(ns: &str, queue: u16) -> anyhow::Result<nfq::Queue> {
    let f = std::fs::File::open(format!("/run/netns/{ns}"))
        .with_context(|| format!("opening namespace {ns}"))?;
    // Only this thread moves; the socket opened next belongs to `ns`.
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
    let mut q = nfq::Queue::open().context("opening a netfilter queue socket")?;
    q.bind(queue).context("binding the queue")?;
    // Metadata only: the verdict needs the packet's id, not its bytes.
    q.set_copy_range(queue, 0)?;
    q.set_queue_max_len(queue, MAX_HELD)?;
    q.set_fail_open(queue, false)?;
    q.set_nonblocking(true);
    Ok(q)
}

/// The delay loop: take what the kernel queued, pass on what is due,
/// sleep until the next is due (at most 1 ms, to see new packets).
fn run(
    ns: &str,
    queue: u16,
    shape: Shape,
    stop: &AtomicBool,
    counts: &Counts,
    ready: std::sync::mpsc::SyncSender<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let mut q = match bind(ns, queue) {
        Ok(q) => {
            let _ = ready.send(Ok(()));
            q
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return Ok(());
        }
    };
    let mut rng = fastrand::Rng::new();
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    let mut last = Instant::now();
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        loop {
            match q.recv() {
                Ok(mut m) => {
                    if shape.loss_percent > 0.0 && rng.f64() * 100.0 < shape.loss_percent {
                        m.set_verdict(nfq::Verdict::Drop);
                        q.verdict(m)?;
                        counts.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let spread = rng.u32(0..=2 * shape.jitter_ms);
                    let ms = (shape.delay_ms + spread).saturating_sub(shape.jitter_ms);
                    let at = (Instant::now() + Duration::from_millis(u64::from(ms))).max(last);
                    last = at;
                    held.push_back((at, m));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("receiving from the queue"),
            }
        }
        let now = Instant::now();
        while let Some((at, _)) = held.front() {
            if *at > now && !stopping {
                break;
            }
            let (_, mut m) = held.pop_front().expect("front");
            m.set_verdict(nfq::Verdict::Accept);
            q.verdict(m)?;
            counts.passed.fetch_add(1, Ordering::Relaxed);
        }
        if stopping {
            return Ok(());
        }
        let next = held
            .front()
            .map_or(Duration::from_millis(1), |(at, _)| {
                at.saturating_duration_since(now)
            })
            .min(Duration::from_millis(1));
        std::thread::sleep(next);
    }
}
