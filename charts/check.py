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

VALUE_SETS = {
    "default": {},
    "no-workload": {"agents": {"workload": {"enabled": False}}},
    "monitoring": {
        "monitoring": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "dashboard": {"enabled": True},
        "networkPolicy": {"enabled": True},
        "admissionPolicy": {"enabled": True},
        "operator": {"prometheus": {
            "url": "http://prometheus-operated.monitoring:9090",
            "authorizationSecret": "prometheus-token",
        }},
        "agents": {"allowFaultInjection": True},
    },
    "daemonset": {"agents": {"kind": "DaemonSet"}},
    "existing-secret": {
        "webhook": {"existingSecret": "alertmanager-token", "secretKey": "bearer"},
        "operator": {"watchNamespace": "fleet", "image": {"tag": "1.2.3"}},
    },
    "no-agents": {"agents": {"enabled": False}},
}

KNOWN_KINDS = {
    "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
    "Deployment", "StatefulSet", "DaemonSet", "Service", "Secret", "ConfigMap",
    "NetworkPolicy", "ServiceMonitor", "PrometheusRule",
    "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
}


def pod_spec(obj):
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
        return obj["spec"]["template"]["spec"]
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
            tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
            if not tag or tag == "latest":
                problems.append(f"{cw}: image {image!r} has no explicit tag")
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
    want_secret = webhook.get("existingSecret") or "switchyard-webhook"
    want_key = webhook.get("secretKey", "token")
    problems = []
    if env.get("SWITCHYARD_WEBHOOK_SECRET") != want_secret:
        problems.append(f"{name}: operator webhook Secret {env.get('SWITCHYARD_WEBHOOK_SECRET')!r}, values say {want_secret!r}")
    if env.get("SWITCHYARD_WEBHOOK_SECRET_KEY") != want_key:
        problems.append(f"{name}: operator webhook Secret key {env.get('SWITCHYARD_WEBHOOK_SECRET_KEY')!r}, values say {want_key!r}")
    return problems


def render(chart, values):
    """(docs, text) of one value set."""
    rendered = chart.render(values, name="switchyard", namespace="switchyard-system")
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


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--render":
        with helm.Chart.load(str(CHART)) as chart:
            _, text = render(chart, VALUE_SETS[sys.argv[2]])
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
    # Severity 1 info, 2 warning, 3 error; warnings fail the check too.
    for values_name, values in VALUE_SETS.items():
        report = helm.lint(str(CHART), values, strict=True, namespace="switchyard-system")
        for m in report.get("messages", []):
            print(f"lint ({values_name}): {json.dumps(m)}")
            if m.get("severity", 0) >= 2:
                problems.append(f"lint ({values_name}): {m.get('path')}: {m.get('error')}")
        for e in report.get("errors", []):
            problems.append(f"lint ({values_name}): {e}")
    with helm.Chart.load(str(CHART)) as chart:
        for name, values in VALUE_SETS.items():
            docs, text = render(chart, values)
            (out / f"{name}.yaml").write_text(text)
            found = check(name, docs) + check_webhook_secret(name, values, docs)
            if values.get("operator", {}).get("watchNamespace"):
                found += [
                    f"{name}: a namespaced install renders {d['kind']}/{d['metadata']['name']}"
                    for d in docs
                    if d["kind"] in ("ClusterRole", "ClusterRoleBinding")
                ]
            problems += found
            kinds = sorted({d["kind"] for d in docs})
            print(f"{name}: {len(docs)} objects ({', '.join(kinds)}); {len(found)} problems")
        # The checks themselves: a value set that breaks each rule must be
        # caught, rule by rule.
        broken = {
            "operator": {"image": {"tag": "latest"}, "resources": {"limits": None}},
            "containerSecurityContext": {"readOnlyRootFilesystem": False},
        }
        rendered = chart.render(broken, name="switchyard", namespace="switchyard-system")
        docs = [
            d
            for path, body in rendered.items()
            if path.endswith(".yaml") and body.strip()
            for d in yaml.safe_load_all(body)
            if d
        ]
        caught = check("broken", docs)
        for needle in ("no explicit tag", "no cpu and memory limits", "not read-only"):
            if not any(needle in p for p in caught):
                problems.append(f"self-test: a broken value set was not caught ({needle})")
        # A chart that forgot to pass the key must be caught too.
        values = VALUE_SETS["existing-secret"]
        docs, _ = render(chart, values)
        for obj in docs:
            if obj["kind"] == "Deployment" and obj["metadata"]["name"].endswith("-operator"):
                c = obj["spec"]["template"]["spec"]["containers"][0]
                c["env"] = [e for e in c["env"] if e["name"] != "SWITCHYARD_WEBHOOK_SECRET_KEY"]
        if not check_webhook_secret("broken", values, docs):
            problems.append("self-test: an operator without the webhook Secret key was not caught")
        print(f"self-test: a broken value set gives {len(caught)} problems, as it should")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
