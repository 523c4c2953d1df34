#!/usr/bin/env python3
"""Lint and render the Switchyard chart through the Helm SDK (PyPI
helm-python-sdk, no helm binary), for the default values and other value
sets, and check every rendered manifest:

- it parses as YAML into an object of a known kind, with apiVersion, kind
  and metadata.name;
- no RBAC rule uses "*";
- every container has the restricted security context (non-root,
  read-only root filesystem, all capabilities dropped, no privilege
  escalation; seccomp RuntimeDefault on the pod) and resource limits;
- every image has an explicit tag, never "latest";
- the sample workload's script is examples/workload/kv_client.py.

- the operator is told the webhook Secret's name and key, whatever the
  values say (existingSecret with a custom secretKey included).

Writes each value set's manifests to OUT/<set>.yaml (for kubectl), prints a
line per value set and exits non-zero, naming each problem, if any check
fails. Usage: check.py [OUT]

check.py --render SET FILE renders one value set to FILE and nothing else
(for the system tests that run the binaries as the chart configures them).
"""

import json
import pathlib
import sys

import helm_python as helm
import yaml

CHART = pathlib.Path(__file__).resolve().parent / "switchyard"

# Each value set: (release name, values). The release name of "long-name"
# is 49 characters, the longest that leaves Helm room for its own
# "sh.helm.release.v1.<name>.v<N>" Secret.
VALUE_SETS = {
    "default": ("switchyard", {}),
    "no-workload": ("switchyard", {"agents": {"workload": {"enabled": False}}}),
    "monitoring": ("switchyard", {
        "monitoring": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "dashboard": {"enabled": True},
        "networkPolicy": {"enabled": True},
        "admissionPolicy": {"enabled": True},
        "argocd": {"healthChecks": True},
        "operator": {"prometheus": {
            "url": "http://prometheus-operated.monitoring:9090",
            "authorizationSecret": "prometheus-token",
        }},
        "agents": {"allowFaultInjection": True},
    }),
    "daemonset": ("switchyard", {"agents": {"kind": "DaemonSet"}}),
    "existing-secret": ("switchyard", {
        "webhook": {"existingSecret": "alertmanager-token", "secretKey": "bearer"},
        "operator": {"image": {"tag": "1.2.3"}},
    }),
    "namespaced": ("switchyard", {"operator": {"watchNamespace": "fleet"}}),
    "long-name": ("a-release-name-of-forty-nine-characters-for-tests", {
        "commonLabels": {"team": "p2p"},
        "imagePullSecrets": [{"name": "regcred"}],
        "operator": {
            "serviceAccount": {"annotations": {"iam.example/role": "switchyard"}},
            "podAnnotations": {"example/scrape": "true"},
            "priorityClassName": "system-cluster-critical",
            "topologySpreadConstraints": [{
                "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "operator"}},
            }],
            "extraEnv": [{"name": "EXTRA", "value": "1"}],
            "extraArgs": ["--write-concurrency=16"],
        },
        "agents": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}]}]}}}},
    }),
    "digest": ("switchyard", {
        "operator": {"image": {"registry": "registry.example", "tag": "1.10",
                               "digest": "sha256:" + "a" * 64}},
        "agents": {
            "image": {"digest": "sha256:" + "b" * 64},
            "workload": {"image": {"digest": "sha256:" + "c" * 64}},
        },
    }),
    "no-agents": ("switchyard", {"agents": {"enabled": False}}),
    # Prometheus as kube-prometheus-stack and Mimir users run it: https
    # with a CA from a ConfigMap, basic auth and a tenant header.
    "prometheus-tls": ("switchyard", {"operator": {"prometheus": {
        "url": "https://mimir-gateway.monitoring:443/prometheus",
        "auth": {"type": "basic", "secretName": "mimir-credentials"},
        "headers": [{"name": "X-Scope-OrgID", "value": "fleet"},
                    {"name": "X-Api-Key", "secretName": "mimir-credentials", "secretKey": "api-key"}],
        "tls": {"caConfigMap": "monitoring-ca"},
        # Tenants' plans bring their own credentials.
        "allowPlanCredentials": True,
    }}}),
    "admission-off": ("switchyard", {"admissionPolicy": {"enabled": False}}),
    # Phase transitions to a Slack incoming webhook whose URL is a Secret.
    "notifications": ("switchyard", {"notifications": {
        "enabled": True, "format": "slack", "secretName": "slack-hook"}}),
    # The live dashboard open to an Ingress with a token from a Secret.
    "live-dashboard-token": ("switchyard", {"liveDashboard": {
        "tokenSecret": "dashboard-token"}}),
}

KNOWN_KINDS = {
    "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
    "Deployment", "StatefulSet", "DaemonSet", "Service", "Secret", "ConfigMap",
    "NetworkPolicy", "ServiceMonitor", "PrometheusRule",
    "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
    "PodDisruptionBudget", "Pod",
}

# Kubernetes' limits on generated names: DNS labels (Services, and every
# object here) within 63 characters; a StatefulSet within 52, as its pods'
# controller-revision-hash label is the name and 11 more.
MAX_NAME = 63
MAX_STATEFULSET_NAME = 52


def pod_spec(obj):
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
        return obj["spec"]["template"]["spec"]
    if obj["kind"] == "Pod":
        return obj["spec"]
    return None


def check(name, docs):
    problems = []
    for obj in docs:
        where = f"{name}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        for field in ("apiVersion", "kind", "metadata"):
            if field not in obj:
                problems.append(f"{where}: no {field}")
        if obj.get("kind") not in KNOWN_KINDS:
            problems.append(f"{where}: unexpected kind")
        obj_name = obj.get("metadata", {}).get("name", "")
        limit = MAX_STATEFULSET_NAME if obj.get("kind") == "StatefulSet" else MAX_NAME
        if len(obj_name) > limit:
            problems.append(f"{where}: name is {len(obj_name)} characters, over {limit}")
        if obj.get("kind") in ("Role", "ClusterRole"):
            for rule in obj.get("rules", []):
                for key in ("apiGroups", "resources", "verbs", "resourceNames"):
                    if "*" in rule.get(key, []):
                        problems.append(f"{where}: a rule uses '*' in {key}")
        spec = pod_spec(obj)
        if spec is None:
            continue
        psc = spec.get("securityContext", {})
        if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{where}: pod seccompProfile is not RuntimeDefault")
        if not psc.get("runAsNonRoot"):
            problems.append(f"{where}: pod does not require runAsNonRoot")
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            cw = f"{where} container {c['name']}"
            sc = c.get("securityContext", {})
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{cw}: allowPrivilegeEscalation is not false")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{cw}: root filesystem is not read-only")
            if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{cw}: capabilities are not all dropped")
            limits = c.get("resources", {}).get("limits", {})
            if "cpu" not in limits or "memory" not in limits:
                problems.append(f"{cw}: no cpu and memory limits")
            image = c.get("image", "")
            if "@sha256:" in image:
                continue
            tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
            if not tag or tag == "latest":
                problems.append(f"{cw}: image {image!r} has no explicit tag or digest")
    return problems


def operator_env(docs):
    """The operator container's plain env values, by name."""
    for obj in docs:
        if obj.get("kind") == "Deployment" and obj["metadata"]["name"].endswith("-operator"):
            c = obj["spec"]["template"]["spec"]["containers"][0]
            return {e["name"]: e.get("value") for e in c.get("env", []) if "value" in e}
    return None


def check_webhook_secret(name, values, docs):
    """The operator reads the token from the Secret and key the values name."""
    env = operator_env(docs)
    if env is None:
        return []
    webhook = values.get("webhook", {})
    deployment = next(
        d["metadata"]["name"] for d in docs
        if d.get("kind") == "Deployment" and d["metadata"]["name"].endswith("-operator")
    )
    want_secret = webhook.get("existingSecret") or deployment.removesuffix("-operator") + "-webhook"
    want_key = webhook.get("secretKey", "token")
    want_create = "false" if webhook.get("existingSecret") else "true"
    problems = []
    if env.get("SWITCHYARD_WEBHOOK_SECRET_CREATE") != want_create:
        problems.append(f"{name}: operator creates the webhook Secret: {env.get('SWITCHYARD_WEBHOOK_SECRET_CREATE')!r}, want {want_create!r}")
    if env.get("SWITCHYARD_WEBHOOK_SECRET") != want_secret:
        problems.append(f"{name}: operator webhook Secret {env.get('SWITCHYARD_WEBHOOK_SECRET')!r}, values say {want_secret!r}")
    if env.get("SWITCHYARD_WEBHOOK_SECRET_KEY") != want_key:
        problems.append(f"{name}: operator webhook Secret key {env.get('SWITCHYARD_WEBHOOK_SECRET_KEY')!r}, values say {want_key!r}")
    return problems


def check_live_dashboard(name, values, docs):
    """The dashboard is on unless the values turn it off; its token comes
    only from the Secret they name, never as a plain value."""
    for obj in docs:
        if obj.get("kind") == "Deployment" and obj["metadata"]["name"].endswith("-operator"):
            env = {e["name"]: e for e in obj["spec"]["template"]["spec"]["containers"][0].get("env", [])}
            break
    else:
        return []
    live = {"enabled": True, "tokenSecret": "", "tokenKey": "token"} | values.get("liveDashboard", {})
    problems = []
    want = "true" if live["enabled"] else "false"
    if env.get("SWITCHYARD_DASHBOARD", {}).get("value") != want:
        problems.append(f"{name}: SWITCHYARD_DASHBOARD is {env.get('SWITCHYARD_DASHBOARD')!r}, values say {want}")
    token = env.get("SWITCHYARD_DASHBOARD_TOKEN")
    if live["enabled"] and live["tokenSecret"]:
        ref = (token or {}).get("valueFrom", {}).get("secretKeyRef", {})
        if (ref.get("name"), ref.get("key")) != (live["tokenSecret"], live["tokenKey"]):
            problems.append(f"{name}: the dashboard token is not read from Secret {live['tokenSecret']}/{live['tokenKey']}: {token!r}")
    elif token is not None:
        problems.append(f"{name}: a dashboard token is set though the values name no Secret: {token!r}")
    return problems


def check_plan_credentials(name, values, docs):
    """Only allowPlanCredentials lets anyone read Secrets by no name: then
    the operator alone, and it is told so."""
    allowed = bool(values.get("operator", {}).get("prometheus", {}).get("allowPlanCredentials"))
    readers = [
        d["metadata"]["name"] for d in docs
        if d.get("kind") in ("Role", "ClusterRole")
        for rule in d.get("rules", [])
        if "secrets" in rule.get("resources", []) and "get" in rule.get("verbs", [])
        and not rule.get("resourceNames")
    ]
    env = operator_env(docs) or {}
    want = ["true"] if allowed else [None]
    problems = []
    if [env.get("SWITCHYARD_ALLOW_PLAN_CREDENTIALS")] != want:
        problems.append(f"{name}: operator SWITCHYARD_ALLOW_PLAN_CREDENTIALS is {env.get('SWITCHYARD_ALLOW_PLAN_CREDENTIALS')!r}, want {want[0]!r}")
    operator_only = len(readers) == 1 and readers[0].endswith("-operator")
    if allowed and not operator_only:
        problems.append(f"{name}: with allowPlanCredentials only the operator's role may get any Secret; these do: {readers}")
    if not allowed and readers:
        problems.append(f"{name}: without allowPlanCredentials no role may get Secrets by no name; these do: {readers}")
    return problems


def render(chart, values, release="switchyard"):
    """(docs, text) of one value set."""
    rendered = chart.render(values, name=release, namespace="switchyard-system")
    docs = []
    text = []
    for path, body in sorted(rendered.items()):
        if not path.endswith((".yaml", ".yml")) or not body.strip():
            continue
        for doc in yaml.safe_load_all(body):
            if doc:
                docs.append(doc)
        text.append(f"# Source: {path}\n{body.strip()}\n")
    return docs, "---\n".join(text)


def rendered_docs(rendered):
    return [
        d
        for path, body in rendered.items()
        if path.endswith(".yaml") and body.strip()
        for d in yaml.safe_load_all(body)
        if d
    ]


def refused(chart, values, needle):
    """A problem unless rendering `values` fails with a message containing
    `needle` (the schema or a template's `fail`)."""
    try:
        chart.render(values, name="switchyard", namespace="switchyard-system")
    except Exception as e:  # the SDK raises its own error types
        if needle in str(e):
            print(f"refused as it should be: {str(e).splitlines()[0][:160]}")
            return []
        return [f"self-test: {values} was refused, but not for {needle!r}: {e}"]
    return [f"self-test: {values} rendered; it must be refused ({needle!r})"]


def self_tests(chart):
    """The checks and the schema themselves: each broken input is caught."""
    problems = []
    broken = {
        "operator": {"image": {"tag": "latest"}, "resources": {"limits": None}},
        "containerSecurityContext": {"readOnlyRootFilesystem": False},
    }
    caught = check("broken", rendered_docs(
        chart.render(broken, name="switchyard", namespace="switchyard-system")))
    for needle in ("no explicit tag", "no cpu and memory limits", "not read-only"):
        if not any(needle in p for p in caught):
            problems.append(f"self-test: a broken value set was not caught ({needle})")
    print(f"self-test: a broken value set gives {len(caught)} problems, as it should")
    # A chart that forgot to pass the key must be caught too.
    _, values = VALUE_SETS["existing-secret"]
    docs, _ = render(chart, values)
    for obj in docs:
        if obj["kind"] == "Deployment" and obj["metadata"]["name"].endswith("-operator"):
            c = obj["spec"]["template"]["spec"]["containers"][0]
            c["env"] = [e for e in c["env"] if e["name"] != "SWITCHYARD_WEBHOOK_SECRET_KEY"]
    if not check_webhook_secret("broken", values, docs):
        problems.append("self-test: an operator without the webhook Secret key was not caught")
    # A name over the limit is caught.
    long = [{"kind": "Service", "apiVersion": "v1", "metadata": {"name": "x" * 53}},
            {"kind": "Role", "apiVersion": "v1", "metadata": {"name": "x" * 64}}]
    if [p for p in check("long", long) if "over" in p] != ["long: Role/" + "x" * 64 + ": name is 64 characters, over 63"]:
        problems.append("self-test: a 64-character name was not caught, or a 53-character Service was")
    # The schema refuses a misspelt key, a numeric tag and a bad digest;
    # the templates refuse a pod label that would change a selector.
    problems += refused(chart, {"operatr": {"replicas": 3}}, "operatr")
    problems += refused(chart, {"operator": {"replicas": 3, "replica": 2}}, "replica")
    problems += refused(chart, {"operator": {"image": {"tag": 1.10}}}, "tag")
    problems += refused(chart, {"agents": {"image": {"digest": "latest"}}}, "digest")
    problems += refused(chart, {"agents": {"kind": "Deployment"}}, "kind")
    problems += refused(
        chart, {"operator": {"podLabels": {"app.kubernetes.io/component": "x"}}},
        "which the pods' selector owns")
    problems += refused(
        chart, {"commonLabels": {"app.kubernetes.io/part-of": "x"}},
        "which the chart sets on every object")
    return problems


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--render":
        release, values = VALUE_SETS[sys.argv[2]]
        with helm.Chart.load(str(CHART)) as chart:
            _, text = render(chart, values, release)
        pathlib.Path(sys.argv[3]).write_text(text)
        return
    out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/chart")
    out.mkdir(parents=True, exist_ok=True)
    problems = []
    # The sample workload the chart ships is the example readers copy.
    example = CHART.parent.parent / "examples" / "workload" / "kv_client.py"
    shipped = CHART / "files" / "kv_client.py"
    if example.read_bytes() != shipped.read_bytes():
        problems.append(f"{shipped} differs from {example}: cp {example} {shipped}")
    # The chart README and values schema are generated from values.yaml.
    problems += generated_files_problems()
    # Severity 1 info, 2 warning, 3 error; warnings fail the check too.
    for values_name, (_, values) in VALUE_SETS.items():
        report = helm.lint(str(CHART), values, strict=True, namespace="switchyard-system")
        for m in report.get("messages", []):
            print(f"lint ({values_name}): {json.dumps(m)}")
            if m.get("severity", 0) >= 2:
                problems.append(f"lint ({values_name}): {m.get('path')}: {m.get('error')}")
        for e in report.get("errors", []):
            problems.append(f"lint ({values_name}): {e}")
    with helm.Chart.load(str(CHART)) as chart:
        for name, (release, values) in VALUE_SETS.items():
            docs, text = render(chart, values, release)
            # GitOps tools render on every sync: the output must not change.
            _, again = render(chart, values, release)
            found = [] if again == text else [f"{name}: two renders differ (randomness or lookup in a template)"]
            (out / f"{name}.yaml").write_text(text)
            found += check(name, docs) + check_webhook_secret(name, values, docs)
            found += check_plan_credentials(name, values, docs)
            found += check_live_dashboard(name, values, docs)
            if values.get("operator", {}).get("watchNamespace"):
                found += [
                    f"{name}: a namespaced install renders {d['kind']}/{d['metadata']['name']}"
                    for d in docs
                    if d["kind"] in ("ClusterRole", "ClusterRoleBinding")
                ]
            problems += found
            kinds = sorted({d["kind"] for d in docs})
            longest = max(len(d["metadata"]["name"]) for d in docs)
            print(f"{name}: {len(docs)} objects ({', '.join(kinds)}); longest name {longest}; {len(found)} problems")
        problems += self_tests(chart)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        sys.exit(1)


def generated_files_problems():
    import subprocess
    here = pathlib.Path(__file__).resolve().parent
    problems = []
    for gen in ("gen.py", "dashboard.py"):
        r = subprocess.run([sys.executable, str(here / gen), "--check"], capture_output=True, text=True)
        if r.returncode != 0:
            problems.append(f"generated chart files: {r.stderr.strip() or r.stdout.strip()}")
    return problems + dashboard_metric_problems(here.parent)


def dashboard_metric_problems(repo):
    """Every metric the Grafana dashboard queries is one the code exports."""
    import re
    board = json.loads((CHART / "dashboards" / "switchyard.json").read_text())
    wanted = {
        re.sub(r"_(bucket|sum|count)$", "", m)
        for p in board["panels"] for t in p["targets"]
        for m in re.findall(r"switchyard_[a-z0-9_]+", t["expr"])
    }
    source = "".join(
        f.read_text() for d in ("operator/src", "node-agent/src") for f in (repo / d).rglob("*.rs")
    )
    return [f"dashboard queries {m}, which no code exports" for m in sorted(wanted) if f'"{m}"' not in source]


if __name__ == "__main__":
    main()
