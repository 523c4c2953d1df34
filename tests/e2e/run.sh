#!/usr/bin/env bash
# Switchyard's end-to-end suite on kind: create a cluster from
# kind-config.yaml, build and load the images, install the chart, wait for
# the sample fleet, run a MigrationPlan through canary and waves to
# Succeeded, then roll it back and check every node returns; then inject
# iroh failures into a second plan's canaries and check they roll back by
# themselves. Dumps logs and events on failure; deletes the cluster at the
# end.
#
# Needs docker (with a running daemon), kind, helm and kubectl. Without
# them it says what is missing and exits 0, except where the caller
# promised them: with SWITCHYARD_E2E_REQUIRED=1 (the e2e workflow sets it
# on a runner that installs them) a missing tool fails the run.
set -euo pipefail
cd "$(dirname "$0")/../.."

missing=()
for tool in docker kind helm kubectl; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -eq 0 ] && ! docker info >/dev/null 2>&1; then
  missing+=("a running Docker daemon")
fi
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "${SWITCHYARD_E2E_REQUIRED:-}" = 1 ]; then
    echo "the kind e2e suite must run here (SWITCHYARD_E2E_REQUIRED=1), but it is missing: ${missing[*]}" >&2
    exit 1
  fi
  echo "skipping the kind e2e suite: it needs docker, kind, helm and kubectl (missing: ${missing[*]}); set SWITCHYARD_E2E_REQUIRED=1 to make that an error"
  exit 0
fi

cluster=switchyard-e2e
ns=switchyard-system
tag=e2e
context="kind-$cluster"

dump() {
  echo "== e2e failed; state of the cluster" >&2
  kubectl --context "$context" -n "$ns" get all,fleetnodes,migrationplans,canaries -o wide >&2 || true
  kubectl --context "$context" -n "$ns" get events --sort-by=.lastTimestamp >&2 || true
  kubectl --context "$context" -n "$ns" logs -l app.kubernetes.io/component=operator --tail=200 --prefix >&2 || true
  kubectl --context "$context" -n "$ns" logs -l app.kubernetes.io/component=node-agent --tail=50 --prefix >&2 || true
}
finish() {
  status=$?
  [ "$status" -ne 0 ] && dump
  kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
  exit "$status"
}
trap finish EXIT

kind create cluster --config kind-config.yaml --name "$cluster" --wait 120s
docker build -f docker/operator.Dockerfile -t "switchyard-operator:$tag" .
docker build -f docker/node-agent.Dockerfile -t "switchyard-node-agent:$tag" .
kind load docker-image --name "$cluster" "switchyard-operator:$tag" "switchyard-node-agent:$tag"

kubectl --context "$context" apply --server-side -f crds/
helm --kube-context "$context" install switchyard charts/switchyard \
  --namespace "$ns" --create-namespace \
  --set operator.image.registry= --set operator.image.repository=switchyard-operator --set-string operator.image.tag="$tag" \
  --set agents.image.registry= --set agents.image.repository=switchyard-node-agent --set-string agents.image.tag="$tag" \
  --set agents.replicas=4 --set agents.probeRate=5 --set agents.allowFaultInjection=true \
  --wait --timeout 5m
echo "== helm test: the operator is ready and the CRDs are served"
helm --kube-context "$context" test switchyard --namespace "$ns" --timeout 2m

echo "== waiting for 4 FleetNodes"
for _ in $(seq 1 60); do
  count=$(kubectl --context "$context" -n "$ns" get fleetnodes -o name | wc -l)
  [ "$count" -ge 4 ] && break
  sleep 2
done
[ "$count" -ge 4 ] || { echo "only $count FleetNodes registered" >&2; exit 1; }

echo "== canary, waves, Succeeded"
kubectl --context "$context" apply -f tests/e2e/plan.yaml
kubectl --context "$context" -n "$ns" wait migrationplan/e2e-to-iroh \
  --for=jsonpath='{.status.phase}'=Succeeded --timeout=10m
for node in $(kubectl --context "$context" -n "$ns" get fleetnodes -o name); do
  applied=$(kubectl --context "$context" -n "$ns" get "$node" -o jsonpath='{.status.appliedMode}')
  [ "$applied" = DualPreferIroh ] || { echo "$node runs $applied" >&2; exit 1; }
done

echo "== the sample workload's DHT traffic came through the migration"
for pod in $(kubectl --context "$context" -n "$ns" get pods -l app.kubernetes.io/component=node-agent -o name); do
  last=$(kubectl --context "$context" -n "$ns" logs "$pod" -c workload | grep '"ok"' | tail -n 1)
  echo "$pod: $last"
  python3 -c 'import json,sys; t=json.loads(sys.argv[1]); sys.exit(0 if t["ok"] > 0 and t["failed"] == 0 else 1)' "$last" \
    || { echo "$pod's workload: $last" >&2; exit 1; }
done

echo "== rollback"
kubectl --context "$context" -n "$ns" patch migrationplan e2e-to-iroh --type merge \
  -p '{"spec":{"rollbackRequest":{"reason":"e2e"}}}'
kubectl --context "$context" -n "$ns" wait migrationplan/e2e-to-iroh \
  --for=jsonpath='{.status.phase}'=RolledBack --timeout=10m
for node in $(kubectl --context "$context" -n "$ns" get fleetnodes -o name); do
  applied=$(kubectl --context "$context" -n "$ns" get "$node" -o jsonpath='{.status.appliedMode}')
  [ "$applied" = LibP2pOnly ] || { echo "$node runs $applied after the rollback" >&2; exit 1; }
done

echo "== a fault in the canaries rolls them back"
kubectl --context "$context" -n "$ns" delete migrationplan e2e-to-iroh --wait --timeout=2m
kubectl --context "$context" apply -f tests/e2e/fault-plan.yaml
canaries=()
for _ in $(seq 1 90); do
  mapfile -t canaries < <(kubectl --context "$context" -n "$ns" get fleetnodes \
    -o jsonpath='{range .items[?(@.status.appliedMode=="DualPreferIroh")]}{.metadata.name}{"\n"}{end}')
  [ "${#canaries[@]}" -ge 2 ] && break
  sleep 2
done
[ "${#canaries[@]}" -eq 2 ] || { echo "expected 2 canaries on DualPreferIroh, found ${#canaries[@]}" >&2; exit 1; }
# Let the analysis see healthy iroh traffic first.
kubectl --context "$context" -n "$ns" wait migrationplan/e2e-fault \
  --for=jsonpath='{.status.lastAnalysis.metrics[0].verdict}'=Pass --timeout=3m
for node in "${canaries[@]}"; do
  kubectl --context "$context" -n "$ns" annotate --overwrite fleetnode "$node" \
    switchyard.dev/inject-faults=iroh=0.5
done
kubectl --context "$context" -n "$ns" wait migrationplan/e2e-fault \
  --for=jsonpath='{.status.phase}'=RolledBack --timeout=5m
trigger=$(kubectl --context "$context" -n "$ns" get migrationplan e2e-fault \
  -o jsonpath='{.status.rollbackHistory[*].trigger}')
[ "$trigger" = AnalysisFailed ] || { echo "rolled back by $trigger, not AnalysisFailed" >&2; exit 1; }
for node in $(kubectl --context "$context" -n "$ns" get fleetnodes -o name); do
  applied=$(kubectl --context "$context" -n "$ns" get "$node" -o jsonpath='{.status.appliedMode}')
  [ "$applied" = LibP2pOnly ] || { echo "$node runs $applied after the automatic rollback" >&2; exit 1; }
done
echo "== e2e passed"
