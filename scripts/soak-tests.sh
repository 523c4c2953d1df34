#!/usr/bin/env bash
# Run the whole test suite (the README's test command) RUNS times in a row,
# the last LOADED of them beside two CPU hogs, and report each run.
#
#   scripts/soak-tests.sh [RUNS [LOADED]]      # default: 10 runs, 5 loaded
#
# The hogs are two `stress-ng --cpu 1` workers (Debian's stress-ng), or two
# `yes > /dev/null` where stress-ng is missing. Each run's output is kept in
# target/soak/run-N.log. Exits non-zero if any run failed. Runs nothing in
# parallel with itself: on a 2-core machine the hogs are the only load.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${1:-10}
loaded=${2:-$((runs / 2))}
logs=target/soak
mkdir -p "$logs"

hogs=()
stop_hogs() {
  if [ "${#hogs[@]}" -gt 0 ]; then
    kill "${hogs[@]}" 2>/dev/null || true
    wait "${hogs[@]}" 2>/dev/null || true
  fi
  hogs=()
}
start_hogs() {
  for _ in 1 2; do
    if command -v stress-ng >/dev/null 2>&1; then
      stress-ng --cpu 1 --quiet &
    else
      yes >/dev/null &
    fi
    hogs+=("$!")
  done
}
trap stop_hogs EXIT

echo "== building the tests once"
cargo nextest run --workspace --no-run >"$logs/build.log" 2>&1 || {
  tail -n 40 "$logs/build.log"
  exit 1
}

green=0
for i in $(seq 1 "$runs"); do
  load="idle"
  if [ "$i" -gt $((runs - loaded)) ]; then
    start_hogs
    load="2 CPU hogs"
  fi
  began=$(date +%s)
  if cargo nextest run --workspace --no-fail-fast >"$logs/run-$i.log" 2>&1; then
    verdict=green
    green=$((green + 1))
  else
    verdict=RED
  fi
  stop_hogs
  summary=$(grep -E '^ *Summary' "$logs/run-$i.log" | tail -n 1 | sed 's/^ *//')
  printf 'run %2d/%d  %-10s  %-5s  %4ds  %s\n' "$i" "$runs" "$load" "$verdict" \
    $(($(date +%s) - began)) "$summary"
  if [ "$verdict" = RED ]; then
    grep -E '^ *(FAIL|TIMEOUT|SIGSEGV|SIGABRT)' "$logs/run-$i.log" | sed 's/^/    /' || true
  fi
done
echo "soak: $green of $runs runs green ($loaded under load); logs in $logs/"
[ "$green" -eq "$runs" ]
