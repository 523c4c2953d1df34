#!/usr/bin/env python3
"""Generate the chart's values.schema.json and README.md from values.yaml
(helm-docs style: a `# -- description` comment above a key documents it).

Types come from the defaults; the tables below name what a default cannot
say: free-form maps and lists, enums, patterns and ranges. Every other map
is closed (additionalProperties: false), so a misspelt key is an error at
install time, not a silently ignored setting.

Usage: gen.py          write both files
       gen.py --check  exit 1, naming the file, when either is stale
"""

import json
import pathlib
import re
import sys

import yaml

CHART = pathlib.Path(__file__).resolve().parent / "switchyard"

# Maps whose keys are the user's (labels, annotations) or Kubernetes'
# (affinity, resources, security contexts): open objects.
FREE_FORM = {
    "commonLabels", "podLabels", "podAnnotations", "annotations", "labels",
    "nodeSelector", "affinity", "resources", "podSecurityContext",
    "containerSecurityContext",
}
STRING_MAPS = {"commonLabels", "podLabels", "podAnnotations", "annotations", "labels", "nodeSelector"}
# Lists: the schema of one item.
LISTS = {
    "imagePullSecrets": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
    "tolerations": {"type": "object"},
    "topologySpreadConstraints": {"type": "object"},
    "extraEnv": {"type": "object", "required": ["name"]},
    "extraArgs": {"type": "string"},
    "headers": {"type": "object", "required": ["name"], "additionalProperties": False, "properties": {
        "name": {"type": "string", "minLength": 1},
        "value": {"type": "string"},
        "secretName": {"type": "string"},
        "secretKey": {"type": "string"},
    }},
}
# By dotted path, or by last key ("*.key").
OVERRIDES = {
    "agents.kind": {"type": "string", "enum": ["StatefulSet", "DaemonSet"]},
    "agents.initialMode": {"type": "string", "enum": ["LibP2pOnly", "DualPreferLibP2p", "DualPreferIroh", "IrohOnly"]},
    "operator.service.type": {"type": "string", "enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
    "operator.writeQps": {"type": "number", "exclusiveMinimum": 0},
    "operator.prometheus.timeout": {"type": "number", "exclusiveMinimum": 0},
    "agents.probeRate": {"type": "number", "minimum": 0},
    "agents.workload.rate": {"type": "number", "exclusiveMinimum": 0},
    "operator.prometheus.auth.type": {"type": "string", "enum": ["none", "basic", "bearer"]},
    "*.pullPolicy": {"type": "string", "enum": ["Always", "IfNotPresent", "Never"]},
    "*.tag": {"type": "string", "description_suffix": ""},
    "*.digest": {"type": "string", "pattern": "^(sha256:[a-f0-9]{64})?$"},
    "*.replicas": {"type": "integer", "minimum": 0},
    "*.minAvailable": {"type": ["integer", "string"]},
    "*.maxUnavailable": {"type": ["integer", "string"]},
}


def override(path):
    if not path:
        return None
    for key in (".".join(path), "*." + path[-1]):
        if key in OVERRIDES:
            return {k: v for k, v in OVERRIDES[key].items() if k != "description_suffix"}
    if path[-1].endswith("Port"):
        return {"type": "integer", "minimum": 1, "maximum": 65535}
    return None


def descriptions(text):
    """Dotted key path -> the `# --` comment above it (continued by
    following `#` lines)."""
    out, stack, pending = {}, [], None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = stripped[4:].strip()
            continue
        if stripped.startswith("#"):
            if pending is not None:
                pending += " " + stripped[1:].strip()
            continue
        m = re.match(r"^( *)([A-Za-z0-9_.]+):", line)
        if not m:
            pending = None
            continue
        depth = len(m.group(1)) // 2
        stack = stack[:depth] + [m.group(2)]
        if pending is not None:
            out[".".join(stack)] = pending
        pending = None
    return out


def schema_of(value, path, docs):
    s = override(path)
    key = path[-1] if path else ""
    if s is None:
        if key in LISTS:
            s = {"type": "array", "items": LISTS[key]}
        elif key in STRING_MAPS:
            s = {"type": "object", "additionalProperties": {"type": "string"}}
        elif key in FREE_FORM:
            s = {"type": "object"}
        elif isinstance(value, dict):
            s = {
                "type": "object",
                "additionalProperties": False,
                "properties": {k: schema_of(v, path + [k], docs) for k, v in value.items()},
            }
        elif isinstance(value, bool):
            s = {"type": "boolean"}
        elif isinstance(value, int):
            s = {"type": "integer"}
        elif isinstance(value, float):
            s = {"type": "number"}
        elif isinstance(value, str):
            s = {"type": "string"}
        elif isinstance(value, list):
            s = {"type": "array"}
        else:
            raise SystemExit(f"values.yaml: {'.'.join(path)}: no schema for {value!r}")
    d = docs.get(".".join(path))
    if d:
        s = {"description": d, **s}
    return s


def rows(value, path, docs):
    """(key, type, default, description) of every documented key."""
    key = ".".join(path)
    if key in docs:
        shown = json.dumps(value) if not isinstance(value, str) else json.dumps(value)
        yield key, type_name(value), shown, docs[key]
        if not (isinstance(value, dict) and path[-1] not in FREE_FORM):
            return
    if isinstance(value, dict):
        for k, v in value.items():
            yield from rows(v, path + [k], docs)


def type_name(v):
    return {bool: "bool", int: "int", float: "float", str: "string", list: "list", dict: "object"}.get(type(v), "")


def generate():
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    docs = descriptions(text)
    schema = {
        "$schema": "https://json-schema.org/draft-07/schema#",
        "title": "Switchyard chart values (generated by charts/gen.py from values.yaml)",
        **schema_of(values, [], docs),
    }
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    lines = [
        f"# {chart['name']}",
        "",
        chart["description"],
        "",
        f"Chart version {chart['version']}, app version {chart['appVersion']}, Kubernetes {chart['kubeVersion']}.",
        "",
        "Generated by `charts/gen.py` from the comments in `values.yaml`; do not edit by hand.",
        "`values.schema.json` is generated beside it: Helm refuses a misspelt or mistyped value.",
        "",
        "## Install",
        "",
        "```sh",
        "helm install switchyard charts/switchyard -n switchyard-system --create-namespace",
        "helm test switchyard -n switchyard-system",
        "```",
        "",
        "## Values",
        "",
        "| Key | Type | Default | Description |",
        "|-----|------|---------|-------------|",
    ]
    for key, typ, default, desc in rows(values, [], docs):
        cell = default.replace("|", "\\|")
        text = desc.replace("|", "\\|")
        lines.append(f"| `{key}` | {typ} | `{cell}` | {text} |")
    readme = "\n".join(lines) + "\n"
    return {
        CHART / "values.schema.json": json.dumps(schema, indent=2) + "\n",
        CHART / "README.md": readme,
    }


def main():
    files = generate()
    if "--check" in sys.argv:
        stale = [str(p) for p, body in files.items() if not p.exists() or p.read_text() != body]
        if stale:
            print(f"stale: {', '.join(stale)}; run python3 charts/gen.py", file=sys.stderr)
            sys.exit(1)
        return
    for p, body in files.items():
        p.write_text(body)
        print(f"wrote {p}")


if __name__ == "__main__":
    main()
