#!/usr/bin/env bash
# Apply the CRDs and the rendered chart (from charts/check.py) with real
# kubectl, server-side, to the in-memory API server with authentication,
# RBAC and admission on (kubectl as cluster-admin), and read every object
# back. Usage: charts/apply-to-testbed.sh [RENDERED_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
rendered=${1:-target/chart}
work=$(mktemp -d)
kubeconfig="$work/kubeconfig"

cargo build -q -p switchyard-testbed --bin switchyard-testbed
target/debug/switchyard-testbed apiserver --port 0 --kubeconfig "$kubeconfig" \
  --authorization --admission \
  >"$work/apiserver.log" 2>&1 &
server=$!
cleanup() {
  kill -INT "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

for _ in $(seq 1 100); do
  [ -s "$kubeconfig" ] && break
  sleep 0.1
done
if [ ! -s "$kubeconfig" ]; then
  echo "the in-memory API server did not start:" >&2
  cat "$work/apiserver.log" >&2
  exit 1
fi
export KUBECONFIG="$kubeconfig"

kubectl apply --server-side -f crds/
# The release namespace, and the namespace the existing-secret set's
# operator watches (a namespaced install puts its Role there).
for ns in switchyard-system fleet; do
  printf 'apiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n' "$ns" |
    kubectl apply --server-side -f -
done

# The monitoring set's ServiceMonitor and PrometheusRule need the Prometheus
# Operator's kinds: stand-in CRDs that declare them.
kubectl apply --server-side -f charts/testdata/prometheus-operator-kinds.yaml
for _ in $(seq 1 50); do
  kubectl get servicemonitors,prometheusrules -A >/dev/null 2>&1 && break
  sleep 0.1
done

for file in "$rendered"/*.yaml; do
  set=$(basename "$file" .yaml)
  kubectl apply --server-side --field-manager=switchyard-chart-check -f "$file" >/dev/null
  want=$(grep -c '^kind: ' "$file")
  got=$(kubectl get -f "$file" -o name | wc -l)
  if [ "$got" -ne "$want" ]; then
    echo "$set: applied $want objects, read back $got" >&2
    exit 1
  fi
  echo "$set: $want objects applied server-side and read back"
done
