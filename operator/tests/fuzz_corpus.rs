//! The operator's fuzz targets' seeds and regressions as a plain test:
//! every file in `fuzz/seeds/<target>/` and `fuzz/regressions/<target>/`
//! goes through its parser (`switchyard_operator::fuzzing`), which must
//! not panic. CI runs this on stable; `scripts/fuzz.sh` fuzzes from the
//! same seeds.

use switchyard_operator::fuzzing;
use switchyard_testbed::fuzz_corpus::{Parser, run_all};

#[test]
fn every_corpus_file_goes_through_its_parser() {
    let targets: [(&str, Parser); 4] = [
        ("metrics_text", fuzzing::metrics_text),
        ("promql_answer", fuzzing::promql_answer),
        ("alert_webhook", fuzzing::alert_webhook),
        ("custom_resource", fuzzing::custom_resource),
    ];
    run_all(&targets);
}
