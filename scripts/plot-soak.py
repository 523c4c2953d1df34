#!/usr/bin/env python3
"""Draw the soak's curves: RSS and open file descriptors of every process,
minute by minute, from target/bench/soak.json (written by `cargo bench -p
switchyard-operator --bench soak`).

    python3 scripts/plot-soak.py [SOAK_JSON [OUT_PNG]]    # pip install matplotlib

Default output: docs/soak.png. Agents are drawn thin and grey (their spread
is what matters), the operator and the soak process (API server and
workload) in colour, with the 10-minute baseline marked.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

src = sys.argv[1] if len(sys.argv) > 1 else "target/bench/soak.json"
out = sys.argv[2] if len(sys.argv) > 2 else "docs/soak.png"
with open(src) as f:
    soak = json.load(f)
samples = soak["samples"]
names = sorted({p for s in samples for p in s["processes"]})

fig, axes = plt.subplots(3, 1, figsize=(10, 10), sharex=True)
for name in names:
    xs = [s["minute"] for s in samples if name in s["processes"]]
    rss = [s["processes"][name]["rss_kib"] / 1024 for s in samples if name in s["processes"]]
    fds = [s["processes"][name]["fds"] for s in samples if name in s["processes"]]
    if name.startswith("node-"):
        style = {"color": "0.6", "linewidth": 0.8}
        label = "agents" if name == "node-00" else None
    else:
        style = {"linewidth": 2}
        label = {"operator": "operator", "soak": "soak (API server, workload)"}.get(name, name)
    axes[0].plot(xs, rss, label=label, **style)
    axes[1].plot(xs, fds, label=label, **style)
minutes = [s["minute"] for s in samples]
axes[2].plot(minutes, [s["cycles"] for s in samples], label="plan cycles (to IrohOnly and back)")
axes[2].plot(
    minutes,
    [s["workload_ok"] / 1000 for s in samples],
    label="workload operations ok (thousands)",
)
axes[2].plot(minutes, [s["workload_failed"] for s in samples], label="workload operations failed")
axes[0].set_ylabel("RSS, MiB")
axes[1].set_ylabel("open file descriptors")
axes[2].set_ylabel("count")
axes[2].set_xlabel("minute")
for ax in axes:
    ax.axvline(10, color="0.8", linestyle="--")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
fig.suptitle(
    f"Soak: {soak['hosts']} agents on hosts of their own, the operator, "
    f"{soak['minutes']} minutes (baseline from minute 10, dashed)"
)
fig.tight_layout()
fig.savefig(out, dpi=90)
print(f"wrote {out}")
