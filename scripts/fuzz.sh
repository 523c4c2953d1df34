#!/usr/bin/env bash
# Fuzz every parser of untrusted input (fuzz/fuzz_targets) for SECONDS each
# (default 60), one after the other, with cargo-fuzz and the nightly
# toolchain. Each target starts from fuzz/seeds/<target> (committed) and
# grows fuzz/corpus/<target> (not committed). A crash stops the run and
# leaves its input in fuzz/artifacts/<target>/: fix the parser, then copy
# the input to fuzz/regressions/<target>/ so the plain test suite
# (tests/fuzz_corpus.rs in node-agent and operator) keeps it fixed.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"
shift || true
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "needs cargo-fuzz and a nightly toolchain:" >&2
    echo "  rustup toolchain install nightly && cargo install cargo-fuzz --locked" >&2
    exit 2
fi
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
# The project's lock file, so the fuzzers build what the tests test.
cp ../Cargo.lock Cargo.lock
cargo +nightly fuzz build -O
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    echo "== $t: ${seconds}s"
    cargo +nightly fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        2>&1 | grep -E "^(#[0-9]+ +DONE|Done|stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+==|SUMMARY|artifact_prefix|Test unit written)" || true
    if ls "artifacts/$t"/crash-* "artifacts/$t"/oom-* "artifacts/$t"/timeout-* >/dev/null 2>&1; then
        echo "$t: found a failing input in fuzz/artifacts/$t" >&2
        exit 1
    fi
done
echo "all ${#targets[@]} targets ran ${seconds}s each without a finding"
