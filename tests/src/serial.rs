//! One heavy test at a time, across threads and processes.
//!
//! Tests that start a fleet of real agents, Prometheus and Alertmanager
//! need the machine's cores to answer their probes in time. nextest runs
//! them one at a time through its `heavy` test group
//! (`.config/nextest.toml`); `cargo test` runs a binary's tests on threads
//! of one process and knows no groups, so those tests also take this lock
//! first, which makes both runners behave the same. The lock is an
//! exclusive `flock` on a file in the temporary folder: a crashed test
//! releases it with its process.

use std::fs::{File, OpenOptions};
use std::path::Path;

/// Held while a heavy test runs.
#[derive(Debug)]
pub struct Heavy {
    _lock: File,
}

/// Wait until no other heavy test runs, then hold the lock until the
/// returned value drops. Call it first thing in the test.
pub fn heavy() -> Heavy {
    let path = std::env::temp_dir().join("switchyard-heavy-test.lock");
    let file = lock_file(&path);
    file.lock()
        .unwrap_or_else(|e| panic!("locking {}: {e}", path.display()));
    Heavy { _lock: file }
}

/// Open (creating it if needed) a file used only for its `flock`.
pub(crate) fn lock_file(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening the lock file {}: {e}", path.display()))
}
