//! Ports for tests that must know a port before something binds it (a
//! process started with `--listen 127.0.0.1:PORT`) or that bring a node
//! back on the port it had.
//!
//! The usual trick (bind port 0, read the port, close, hand it on) races
//! with everything else on the machine: the kernel hands the same port to
//! the next `bind(0)` or outbound connection, and a test running beside
//! ours takes it. Ports from [`reserve`] cannot be taken that way:
//!
//! - they lie below the kernel's ephemeral range
//!   (`/proc/sys/net/ipv4/ip_local_port_range`), which is the only range
//!   `bind(0)` and `connect` draw from, so nothing picks them by chance;
//! - among our own tests (other threads, other test binaries, nextest's
//!   processes) a port is claimed by an exclusive lock on a file named for
//!   it, held as long as the [`Port`] lives and released by the kernel if
//!   the process dies.
//!
//! Each port is claimed for TCP and UDP alike, so one [`Port`] serves a
//! libp2p listener and an iroh socket.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// How many ports below the ephemeral range the allocator uses. Wide
/// enough for the largest test fleet many times over, narrow enough to
/// stay clear of well-known services.
const SPAN: u16 = 8_000;

/// A port no one else will be handed while this value lives.
#[derive(Debug)]
pub struct Port {
    port: u16,
    _lock: File,
}

impl Port {
    /// The port number.
    pub fn get(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }
}

/// Claim a port that is free on 127.0.0.1 for both TCP and UDP.
///
/// Panics when every port in the range is taken, which means something
/// leaks ports.
pub fn reserve() -> Port {
    let (low, high) = range();
    let span = u32::from(high - low);
    // Start each call somewhere else so concurrent processes rarely try
    // the same file first.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id()
        .wrapping_mul(7919)
        .wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed).wrapping_mul(104_729));
    let dir = lock_dir();
    for i in 0..span {
        let port = low + u16::try_from((start.wrapping_add(i)) % span).expect("within span");
        let Some(lock) = claim(&dir, port) else {
            continue;
        };
        if free(port) {
            return Port { port, _lock: lock };
        }
    }
    panic!(
        "no free test port in {low}..{high}: every one is locked in {} or bound",
        dir.display()
    );
}

/// The allocator's range: just below the kernel's ephemeral range.
fn range() -> (u16, u16) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let high = ephemeral_low.max(2_048);
    (high.saturating_sub(SPAN).max(1_024), high)
}

fn lock_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("switchyard-test-ports");
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("creating the port lock folder {}: {e}", dir.display()));
    dir
}

/// The port's lock file, locked by us, or None when another holder has it.
fn claim(dir: &std::path::Path, port: u16) -> Option<File> {
    let file = crate::serial::lock_file(&dir.join(port.to_string()));
    file.try_lock().ok().map(|()| file)
}

/// Nobody outside our tests (a service, a leaked process) holds it.
fn free(port: u16) -> bool {
    let at = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpListener::bind(at).is_ok() && UdpSocket::bind(at).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ports_are_distinct_outside_the_ephemeral_range_and_bindable() {
        let (low, high) = range();
        let ports: Vec<Port> = (0..50).map(|_| reserve()).collect();
        let mut seen = std::collections::HashSet::new();
        for p in &ports {
            assert!(
                (low..high).contains(&p.get()),
                "{} in {low}..{high}",
                p.get()
            );
            assert!(seen.insert(p.get()), "{} handed out twice", p.get());
            TcpListener::bind(p.addr()).expect("tcp bind");
            UdpSocket::bind(p.addr()).expect("udp bind");
        }
        // A released port can be claimed again; a held one cannot.
        let held = ports[0].get();
        assert!(claim(&lock_dir(), held).is_none(), "a held port is locked");
        drop(ports);
        assert!(
            claim(&lock_dir(), held).is_some(),
            "a released port is free"
        );
    }
}
