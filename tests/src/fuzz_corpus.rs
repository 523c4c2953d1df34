//! The fuzz targets' committed inputs as a plain test: every file in
//! `fuzz/seeds/<target>/` and `fuzz/regressions/<target>/` goes through
//! its parser, which must not panic. node-agent's and operator's
//! `tests/fuzz_corpus.rs` call [`run_all`] with their parsers.

use std::path::{Path, PathBuf};

/// The repository's `fuzz/` folder.
pub fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Every corpus file of `target`: seeds and regressions, sorted.
pub fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for dir in ["seeds", "regressions"] {
        let Ok(list) = std::fs::read_dir(fuzz_dir().join(dir).join(target)) else {
            continue;
        };
        for e in list.flatten() {
            let bytes = std::fs::read(e.path()).expect("read a corpus file");
            out.push((e.path(), bytes));
        }
    }
    out.sort();
    out
}

/// A fuzz target's entry point.
pub type Parser = fn(&[u8]);

/// Run every corpus file of each target through its parser; panics naming
/// the target and file that panicked, or a target without seeds.
pub fn run_all(targets: &[(&str, Parser)]) {
    for &(target, run) in targets {
        let files = corpus(target);
        assert!(!files.is_empty(), "no seeds for {target} in fuzz/seeds");
        for (path, bytes) in files {
            let r = std::panic::catch_unwind(|| run(&bytes));
            assert!(r.is_ok(), "{target} panicked on {}", path.display());
        }
    }
}
