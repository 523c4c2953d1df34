#!/usr/bin/env bash
# Takes docs/demo-dashboard.png, the README's picture: the dashboard of
# `switchyard demo` mid-migration (iroh carrying traffic), in Debian's
# Chromium through Playwright (operator/tests/browser; `npm ci` there
# first). Arguments go to the demo, e.g. --nodes 30.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p switchyard
log=$(mktemp)
shot=$(mktemp --suffix .png)
target/debug/switchyard demo --plain "$@" >"$log" 2>&1 &
demo=$!
browser=""
# shellcheck disable=SC2317  # called by the trap
cleanup() {
  if [ -n "$browser" ]; then kill "$browser" 2>/dev/null || true; fi
  kill -INT "$demo" 2>/dev/null || true
  wait "$demo" 2>/dev/null || true
  rm -f "$log" "$shot"
}
trap cleanup EXIT
url=""
for _ in $(seq 600); do
  url=$(sed -n 's/^  dashboard   \(http[^ ]*\)$/\1/p' "$log")
  [ -n "$url" ] && break
  kill -0 "$demo" 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.2
done
[ -n "$url" ] || { echo "the demo printed no dashboard URL" >&2; exit 1; }
node operator/tests/browser/dashboard.mjs "$url" demo/demo-to-iroh "$shot" &
browser=$!
for _ in $(seq 900); do
  if [ -s "$shot" ]; then
    sleep 1  # the file is written whole before Playwright returns
    cp "$shot" docs/demo-dashboard.png
    echo "wrote docs/demo-dashboard.png"
    exit 0
  fi
  kill -0 "$browser" 2>/dev/null || { echo "the browser gave up" >&2; exit 1; }
  sleep 0.2
done
echo "no screenshot within 3 minutes" >&2
exit 1
