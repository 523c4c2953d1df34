//! The operator's fuzz targets' seeds and regressions as a plain test:
//! every file in `fuzz/seeds/<target>/` and `fuzz/regressions/<target>/`
//! goes through its parser (`switchyard_operator::fuzzing`), which must
//! not panic. CI runs this on stable; `scripts/fuzz.sh` fuzzes from the
//! same seeds.

use std::path::{Path, PathBuf};

use switchyard_operator::fuzzing;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut out = Vec::new();
    for dir in ["seeds", "regressions"] {
        let Ok(list) = std::fs::read_dir(root.join(dir).join(target)) else {
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
type Parser = fn(&[u8]);

#[test]
fn every_corpus_file_goes_through_its_parser() {
    let targets: [(&str, Parser); 4] = [
        ("metrics_text", fuzzing::metrics_text),
        ("promql_answer", fuzzing::promql_answer),
        ("alert_webhook", fuzzing::alert_webhook),
        ("custom_resource", fuzzing::custom_resource),
    ];
    for (target, run) in targets {
        let files = corpus(target);
        assert!(!files.is_empty(), "no seeds for {target} in fuzz/seeds");
        for (path, bytes) in files {
            let r = std::panic::catch_unwind(|| run(&bytes));
            assert!(r.is_ok(), "{target} panicked on {}", path.display());
        }
    }
}
