//! Test hosts on a real network: each host a network namespace with its
//! own address on a private bridge, made with iproute2 (`ip netns`, veth
//! pairs, a bridge) as root. The root namespace (the test, the in-memory
//! API server, the operator) sits on the bridge too, at the subnet's `.1`.
//!
//! Faults are real: [`Net::partition`] adds blackhole routes between
//! groups, [`Net::loss`] drops a share of a host's packets at random
//! (nftables), and [`Net::netem`] puts delay, jitter and loss on a host's
//! link: `tc netem` on its way out where the kernel has it, else a
//! user-space delayer on its way in ([`crate::netdelay`]). Both can target UDP only:
//! iroh's path, not libp2p's TCP.
//!
//! Names carry the subnet's reserved port and the owner's pid
//! (`sy<port>p<pid>h<i>` namespaces, `sy<port>v<i>` and `sy<port>br`
//! links), so a later run sweeps what a killed one left ([`sweep`]), and
//! [`Net`]'s `Drop` removes everything, also when a test panics.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use anyhow::{Context as _, bail};

use crate::netdelay::Delayer;
use crate::ports::{self, Port};

/// One host.
#[derive(Debug, Clone)]
pub struct Host {
    /// Its namespace.
    pub ns: String,
    /// Its address on the bridge.
    pub ip: Ipv4Addr,
}

/// Delay, jitter and loss for a host's link: the same settings whether
/// `tc netem` or the user-space delayer applies them.
pub use crate::netdelay::Shape as Netem;

/// A bridge and its hosts.
pub struct Net {
    tag: String,
    bridge: String,
    /// The root namespace's address on the bridge.
    pub gateway: Ipv4Addr,
    /// The hosts, in order.
    pub hosts: Vec<Host>,
    /// Blackhole routes in place: (host, address).
    cut: Mutex<Vec<(usize, Ipv4Addr)>>,
    /// User-space delayers, per host, where the kernel has no netem.
    delayers: Mutex<HashMap<usize, Delayer>>,
    _subnet: Port,
}

/// Run `ip` with `args`; its stdout, or an error with its stderr.
fn ip(args: &[&str]) -> anyhow::Result<String> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Run many `ip` commands in one process (`ip -batch`), in the root
/// namespace.
fn batch(commands: &[String]) -> anyhow::Result<()> {
    batch_in(None, commands)
}

/// [`batch`] in namespace `ns` (`ip -n NS -batch`).
fn batch_in(ns: Option<&str>, commands: &[String]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running ip -batch")?;
    child
        .stdin
        .take()
        .context("ip's stdin")?
        .write_all(commands.join("\n").as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("ip -batch: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Why namespaces cannot be made here, if they cannot: not root, or no
/// working `ip netns` and `tc`.
pub fn unavailable() -> Option<String> {
    if !is_root() {
        return Some("network namespaces need root".into());
    }
    let probe = format!("syprobe{}", std::process::id());
    if let Err(e) = ip(&["netns", "add", &probe]) {
        return Some(format!("ip netns does not work here: {e}"));
    }
    let _ = ip(&["netns", "del", &probe]);
    if run("tc", &["-V"]).is_err() {
        return Some("tc (iproute2) is not installed".into());
    }
    None
}

/// Why `tc netem` (delay, jitter, loss) cannot be used here, if it
/// cannot: a kernel built without `sch_netem` (as this project's CI
/// machines are, seen on 6.18) says "Specified qdisc kind is unknown".
pub fn netem_unavailable() -> Option<String> {
    let probe = format!("synetem{}", std::process::id());
    if let Err(e) = ip(&["netns", "add", &probe]) {
        return Some(format!("ip netns does not work here: {e}"));
    }
    let r = run(
        "tc",
        &[
            "-n", &probe, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms",
        ],
    );
    let _ = ip(&["netns", "del", &probe]);
    r.err().map(|e| format!("tc netem is not available: {e}"))
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Remove namespaces and bridges that a run which has ended left behind
/// (killed before its `Drop` ran).
pub fn sweep() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix("sy") else {
            continue;
        };
        let Some((_, after)) = rest.split_once('p') else {
            continue;
        };
        let Some(pid) = after.split('h').next().and_then(|p| p.parse().ok()) else {
            continue;
        };
        if !alive(pid) {
            let _ = ip(&["netns", "del", name]);
        }
    }
    let Ok(links) = ip(&["-o", "link", "show", "type", "bridge"]) else {
        return;
    };
    for line in links.lines() {
        let Some(name) = line.split(": ").nth(1).map(|n| n.trim()) else {
            continue;
        };
        if !(name.starts_with("sy") && name.ends_with("br")) {
            continue;
        }
        let owner = line
            .split("alias switchyard-test-pid-")
            .nth(1)
            .and_then(|a| a.split_whitespace().next())
            .and_then(|p| p.parse().ok());
        if owner.is_some_and(|pid| !alive(pid)) {
            let _ = ip(&["link", "del", name]);
        }
    }
}

impl Net {
    /// A bridge with `n` hosts on it (at most 250).
    pub fn create(n: usize) -> anyhow::Result<Net> {
        anyhow::ensure!(n <= 250, "at most 250 hosts on one bridge");
        sweep();
        // The reserved port names the subnet, so concurrent tests (and
        // processes) never share one: 10.<high byte>.<low byte>.0/24.
        let subnet = ports::reserve();
        let [hi, lo] = subnet.get().to_be_bytes();
        let tag = format!("sy{}", subnet.get());
        let pid = std::process::id();
        let gateway = Ipv4Addr::new(10, hi, lo, 1);
        let bridge = format!("{tag}br");
        let hosts: Vec<Host> = (0..n)
            .map(|i| Host {
                ns: format!("{tag}p{pid}h{i}"),
                ip: Ipv4Addr::new(10, hi, lo, u8::try_from(i + 2).unwrap_or(u8::MAX)),
            })
            .collect();
        let net = Net {
            tag,
            bridge,
            gateway,
            hosts,
            cut: Mutex::new(Vec::new()),
            delayers: Mutex::new(HashMap::new()),
            _subnet: subnet,
        };
        net.build(pid)?;
        Ok(net)
    }

    fn build(&self, pid: u32) -> anyhow::Result<()> {
        let br = &self.bridge;
        let mut cmds = vec![
            format!("link add {br} type bridge"),
            format!("link set {br} alias switchyard-test-pid-{pid}"),
            format!("addr add {}/24 dev {br}", self.gateway),
            format!("link set {br} up"),
        ];
        for h in &self.hosts {
            cmds.push(format!("netns add {}", h.ns));
        }
        batch(&cmds)?;
        let mut cmds = Vec::new();
        for (i, h) in self.hosts.iter().enumerate() {
            let veth = format!("{}v{i}", self.tag);
            cmds.extend([
                format!("link add {veth} type veth peer name eth0 netns {}", h.ns),
                format!("link set {veth} master {br} up"),
            ]);
        }
        batch(&cmds)?;
        for h in &self.hosts {
            batch_in(
                Some(&h.ns),
                &[
                    format!("addr add {}/24 dev eth0", h.ip),
                    "link set eth0 up".into(),
                    "link set lo up".into(),
                ],
            )?;
        }
        Ok(())
    }

    /// Move the calling thread (only it) into host `i`'s namespace: the
    /// sockets it opens from now on, and the threads it starts, are that
    /// host's. For an in-process peer on a host, e.g. a benchmark's.
    pub fn enter(&self, i: usize) -> anyhow::Result<()> {
        let f = std::fs::File::open(format!("/run/netns/{}", self.hosts[i].ns))
            .with_context(|| format!("opening namespace {}", self.hosts[i].ns))?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
        Ok(())
    }

    /// A command that runs `program` in host `i`'s namespace.
    pub fn command(&self, i: usize, program: &std::path::Path) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.hosts[i].ns])
            .arg(program)
            .kill_on_drop(true);
        cmd
    }

    /// Cut every host of each group off from every host of the others.
    pub fn partition(&self, groups: &[&[usize]]) -> anyhow::Result<()> {
        let mut cut = self.cut.lock().expect("cut lock");
        for (g, group) in groups.iter().enumerate() {
            for &a in *group {
                let mut cmds = Vec::new();
                for (o, other) in groups.iter().enumerate() {
                    if g == o {
                        continue;
                    }
                    for &b in *other {
                        let to = self.hosts[b].ip;
                        cmds.push(format!("route add blackhole {to}/32"));
                        cut.push((a, to));
                    }
                }
                batch_in(Some(&self.hosts[a].ns), &cmds)?;
            }
        }
        Ok(())
    }

    /// Undo every partition.
    pub fn heal(&self) -> anyhow::Result<()> {
        let mut cut = self.cut.lock().expect("cut lock");
        for (i, h) in self.hosts.iter().enumerate() {
            let cmds: Vec<String> = cut
                .iter()
                .filter(|(a, _)| *a == i)
                .map(|(_, to)| format!("route del blackhole {to}/32"))
                .collect();
            if !cmds.is_empty() {
                batch_in(Some(&h.ns), &cmds)?;
            }
        }
        cut.clear();
        Ok(())
    }

    /// Put `netem` on host `i`'s link (replacing what was there); all zero
    /// clears it. With `tc netem` on its way out where the kernel has it,
    /// else in user space on its way in ([`crate::netdelay`]).
    pub fn netem(&self, i: usize, netem: Netem) -> anyhow::Result<()> {
        static KERNEL: OnceLock<bool> = OnceLock::new();
        if *KERNEL.get_or_init(|| netem_unavailable().is_none()) {
            return self.kernel_netem(i, netem);
        }
        let mut delayers = self.delayers.lock().expect("delayers lock");
        delayers.remove(&i);
        if netem.delay_ms == 0 && netem.loss_percent == 0.0 {
            return Ok(());
        }
        let d = Delayer::start(&self.hosts[i].ns, "eth0", 0, netem)?;
        delayers.insert(i, d);
        Ok(())
    }

    /// Packets host `i`'s user-space delayer has passed on and dropped
    /// (`None` without one: no shaping, or `tc netem` does it).
    pub fn shaped(&self, i: usize) -> Option<(u64, u64)> {
        let delayers = self.delayers.lock().expect("delayers lock");
        let c = &delayers.get(&i)?.counts;
        Some((
            c.passed.load(std::sync::atomic::Ordering::Relaxed),
            c.dropped.load(std::sync::atomic::Ordering::Relaxed),
        ))
    }

    fn kernel_netem(&self, i: usize, netem: Netem) -> anyhow::Result<()> {
        let ns = self.hosts[i].ns.as_str();
        let _ = run("tc", &["-n", ns, "qdisc", "del", "dev", "eth0", "root"]);
        if netem == Netem::default()
            || netem
                == (Netem {
                    udp_only: true,
                    ..Netem::default()
                })
        {
            return Ok(());
        }
        let delay = format!("{}ms", netem.delay_ms);
        let jitter = format!("{}ms", netem.jitter_ms);
        let loss = format!("{}%", netem.loss_percent);
        let mut params = vec!["netem", "delay", &delay, &jitter, "loss", &loss];
        // A large queue: netem's default of 1000 packets drops on its own
        // under delay at a high rate.
        params.extend(["limit", "100000"]);
        if !netem.udp_only {
            let mut args = vec!["-n", ns, "qdisc", "add", "dev", "eth0", "root"];
            args.extend(params);
            run("tc", &args)?;
            return Ok(());
        }
        // Everything to band 2 (unchanged); UDP to band 3, behind netem.
        run(
            "tc",
            &[
                "-n", ns, "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "prio", "bands",
                "3", "priomap", "1", "1", "1", "1", "1", "1", "1", "1", "1", "1", "1", "1", "1",
                "1", "1", "1",
            ],
        )?;
        let mut args = vec![
            "-n", ns, "qdisc", "add", "dev", "eth0", "parent", "1:3", "handle", "30:",
        ];
        args.extend(params);
        run("tc", &args)?;
        run(
            "tc",
            &[
                "-n", ns, "filter", "add", "dev", "eth0", "parent", "1:", "protocol", "ip", "prio",
                "1", "u32", "match", "ip", "protocol", "17", "0xff", "flowid", "1:3",
            ],
        )?;
        Ok(())
    }

    /// `delay ± jitter` milliseconds on host `i`.
    pub fn delay(&self, i: usize, delay_ms: u32, jitter_ms: u32) -> anyhow::Result<()> {
        self.netem(
            i,
            Netem {
                delay_ms,
                jitter_ms,
                ..Default::default()
            },
        )
    }

    /// Drop `percent` of host `i`'s packets, each way (both its outgoing
    /// and its incoming), at random; only UDP (iroh) with `udp_only`; 0
    /// clears it. With nftables (`numgen random`), which works where
    /// `tc netem` is missing from the kernel.
    pub fn loss(&self, i: usize, percent: u8, udp_only: bool) -> anyhow::Result<()> {
        let ns = self.hosts[i].ns.as_str();
        let _ = run(
            "ip",
            &[
                "netns",
                "exec",
                ns,
                "nft",
                "delete",
                "table",
                "inet",
                "switchyard",
            ],
        );
        if percent == 0 {
            return Ok(());
        }
        let only = if udp_only { "meta l4proto udp " } else { "" };
        let chance = if percent >= 100 {
            String::new()
        } else {
            format!("numgen random mod 100 < {percent} ")
        };
        let rules = format!(
            "table inet switchyard {{\n\
             chain out {{ type filter hook output priority 0; {only}{chance}drop; }}\n\
             chain in {{ type filter hook input priority 0; {only}{chance}drop; }}\n\
             }}\n"
        );
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running nft (apt-get install nftables)")?;
        child
            .stdin
            .take()
            .context("nft's stdin")?
            .write_all(rules.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("nft: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Delayers first: each removes its rule in its namespace.
        self.delayers.lock().expect("delayers lock").clear();
        // Deleting a namespace deletes its end of the veth, and so the
        // pair; the processes in it were the caller's to kill first.
        let mut cmds: Vec<String> = self
            .hosts
            .iter()
            .map(|h| format!("netns del {}", h.ns))
            .collect();
        cmds.push(format!("link del {}", self.bridge));
        if let Err(e) = batch(&cmds) {
            eprintln!("cleaning up network namespaces: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_reach_each_other_until_partitioned_and_again_once_healed() {
        if let Some(why) = unavailable() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs as root with iproute2: {why}"
            );
            eprintln!("skipping: {why}");
            return;
        }
        let net = Net::create(3).expect("net");
        let ping = |from: usize, to: usize| {
            Command::new("ip")
                .args(["netns", "exec", &net.hosts[from].ns, "ping", "-c1", "-W1"])
                .arg(net.hosts[to].ip.to_string())
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        };
        assert!(ping(0, 1) && ping(1, 2) && ping(2, 0), "a connected bridge");
        net.partition(&[&[0], &[1, 2]]).expect("partition");
        assert!(!ping(0, 1) && !ping(2, 0), "0 is cut off");
        assert!(ping(1, 2), "1 and 2 still talk");
        net.heal().expect("heal");
        assert!(ping(0, 1) && ping(2, 0), "healed");
        // All of host 0's packets lost, then none.
        net.loss(0, 100, false).expect("loss");
        assert!(!ping(0, 1) && !ping(2, 0), "100% loss");
        net.loss(0, 0, false).expect("no loss");
        assert!(ping(0, 1), "loss cleared");
        // 100 ms on host 0's way out: a round trip from it takes longer.
        // With netem where the kernel has it, else in user space.
        if let Some(why) = crate::netdelay::unavailable() {
            assert!(std::env::var_os("CI").is_none(), "CI installs it: {why}");
            eprintln!("not checking delay: {why}");
        } else {
            net.delay(0, 100, 0).expect("delay");
            let started = std::time::Instant::now();
            assert!(ping(0, 1));
            let took = started.elapsed();
            assert!(took >= std::time::Duration::from_millis(100), "{took:?}");
            // Delay only on UDP: ping (ICMP) is not held.
            net.netem(
                0,
                Netem {
                    delay_ms: 300,
                    udp_only: true,
                    ..Netem::default()
                },
            )
            .expect("udp delay");
            let started = std::time::Instant::now();
            assert!(ping(0, 1));
            let took = started.elapsed();
            assert!(took < std::time::Duration::from_millis(300), "{took:?}");
            net.delay(0, 0, 0).expect("cleared");
        }
        let names: Vec<String> = net.hosts.iter().map(|h| h.ns.clone()).collect();
        drop(net);
        let left = ip(&["netns", "list"]).unwrap_or_default();
        for n in names {
            assert!(!left.contains(&n), "{n} was not removed");
        }
    }
}
