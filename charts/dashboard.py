#!/usr/bin/env python3
"""Write the chart's Grafana dashboard, charts/switchyard/dashboards/switchyard.json.

Every panel queries the `$datasource` variable; agent metrics are filtered by
`$namespace` (the label a ServiceMonitor adds) and plan metrics by `$plan`.
`python3 charts/dashboard.py --check` fails when the file is not what this
script writes (charts/check.py runs it).
"""

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "switchyard" / "dashboards" / "switchyard.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
NS = 'namespace=~"$namespace"'
PLAN = 'plan=~"$plan"'


def panel(title, exprs, x, y, w=12, h=8, kind="timeseries", unit=None, legend=None):
    """One panel; `exprs` are (query, legend) pairs."""
    p = {
        "type": kind,
        "title": title,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DS, "expr": q, "legendFormat": lf}
            for i, (q, lf) in enumerate(exprs)
        ],
    }
    if unit:
        p["fieldConfig"] = {"defaults": {"unit": unit}, "overrides": []}
    return p


def variable(name, label, query):
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": name},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "current": {"selected": True, "text": "All", "value": "$__all"},
        "allValue": ".*",
    }


def dashboard():
    q = lambda p, by="transport": (  # noqa: E731
        f"histogram_quantile({p}, sum by ({by}, le) "
        f"(rate(switchyard_node_request_duration_seconds_bucket{{{NS}}}[5m])))"
    )
    panels = [
        # Migration: where each plan is and when it ends.
        panel("Plan progress", [(f"switchyard_plan_progress_ratio{{{PLAN}}}", "{{plan}}")],
              0, 0, 6, 6, "stat", "percentunit"),
        panel("ETA", [(f"switchyard_plan_eta_seconds{{{PLAN}}}", "{{plan}}")],
              6, 0, 6, 6, "stat", "s"),
        panel("Velocity (node-steps per hour)",
              [(f"switchyard_plan_velocity_nodes_per_hour{{{PLAN}}}", "{{plan}}")],
              12, 0, 6, 6, "stat"),
        panel("Nodes migrated and rolled back",
              [(f"switchyard_plan_nodes_migrated{{{PLAN}}}", "{{plan}} migrated"),
               (f"switchyard_plan_nodes_rolled_back_total{{{PLAN}}}", "{{plan}} rolled back")],
              18, 0, 6, 6, "stat"),
        panel("Plans by phase", [("sum by (phase) (switchyard_operator_plans)", "{{phase}}")], 0, 6),
        panel("Rollbacks by trigger",
              [("sum by (trigger) (increase(switchyard_operator_rollbacks_total[1h]))", "{{trigger}}")],
              12, 6),
        # The fleet's traffic, per transport.
        panel("Requests by transport and outcome",
              [(f"sum by (transport, outcome) (rate(switchyard_node_requests_total{{{NS}}}[1m]))",
                "{{transport}} {{outcome}}")], 0, 14, unit="reqps"),
        panel("Error rate by transport",
              [(f'sum by (transport) (rate(switchyard_node_requests_total{{{NS},outcome="error"}}[5m]))'
                f" / sum by (transport) (rate(switchyard_node_requests_total{{{NS}}}[5m]))",
                "{{transport}}")], 12, 14, unit="percentunit"),
        panel("Latency p50 / p99 by transport",
              [(q(0.5), "{{transport}} p50"), (q(0.99), "{{transport}} p99")], 0, 22, unit="s"),
        panel("Nodes by mode", [(f"sum by (mode) (switchyard_node_mode{{{NS}}})", "{{mode}}")], 12, 22),
        # Health as the agents see it.
        panel("Health score (lowest and mean)",
              [(f"min(switchyard_agent_health_score{{{NS}}})", "lowest"),
               (f"avg(switchyard_agent_health_score{{{NS}}})", "mean")], 0, 30),
        panel("Partition risk (max)", [(f"max(switchyard_agent_partition_risk{{{NS}}})", "max")], 12, 30),
        panel("Peers by heartbeat state",
              [(f"sum by (transport, state) (switchyard_node_peer_states{{{NS}}})", "{{transport}} {{state}}")],
              0, 38),
        panel("DHT routing health (lowest: 2 Healthy, 1 Degraded, 0 Failed)",
              [(f"min(switchyard_dht_routing_health{{{NS}}})", "lowest")], 12, 38),
    ]
    for i, p in enumerate(panels, start=1):
        p["id"] = i
    return {
        "title": "Switchyard",
        "uid": "switchyard",
        "schemaVersion": 39,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "10s",
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource",
             "query": "prometheus", "current": {}},
            variable("namespace", "Namespace", "label_values(switchyard_node_mode, namespace)"),
            variable("plan", "Plan", "label_values(switchyard_plan_progress_ratio, plan)"),
        ]},
        "panels": panels,
    }


def main():
    text = json.dumps(dashboard(), indent=2) + "\n"
    if sys.argv[1:] == ["--check"]:
        if OUT.read_text() != text:
            sys.exit(f"{OUT} is stale: run python3 charts/dashboard.py")
        return
    OUT.write_text(text)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
