// Switchyard's dashboard: one snapshot from /api/v1/snapshot, then every
// change pushed over /ws. No library; charts are plain SVG.
"use strict";

const MODES = ["LibP2pOnly", "DualPreferLibP2p", "DualLoadBalance", "DualPreferIroh", "IrohOnly"];
const MODE_COLORS = ["#8957e5", "#a371f7", "#d2a8ff", "#58a6ff", "#2f81f7"];
const TRANSPORT_COLORS = { libp2p: "#a371f7", iroh: "#3fb950" };
let latest = null;

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const num = (v, digits = 2) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
const pct = (v) => (v === null || v === undefined ? "–" : (100 * v).toFixed(2) + "%");

function age(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + (s % 60) + "s";
  return Math.floor(s / 3600) + "h" + Math.floor((s % 3600) / 60) + "m";
}

function position(p) {
  if (p.invalid) return "invalid: " + p.invalid;
  const stage = `stage ${p.stage + 1}/${p.stages.length} ${p.stageMode ?? ""}`;
  if (p.wave !== null && p.wave !== undefined) return `${stage}, wave ${p.wave + 1}/${p.waves.length}`;
  return p.canary && !p.finished ? `${stage}, canary` : stage;
}

function modeBar(byMode, total) {
  if (!total) return "";
  return `<div class="bar" title="nodes by mode">${MODES.map((m, i) => {
    const n = byMode[m] || 0;
    return n ? `<div style="display:inline-block;width:${(100 * n) / total}%;background:${MODE_COLORS[i]}" title="${m}: ${n}"></div>` : "";
  }).join("")}</div>`;
}

function analysisTable(a) {
  if (!a) return "";
  const rows = (a.metrics || []).map((m) => `<tr><td>${esc(m.name)}</td><td>${num(m.value, 4)}</td><td>${m.baseline === undefined ? "" : num(m.baseline, 4)}</td><td>${esc(m.threshold)}</td><td class="${esc(m.verdict)}">${esc(m.verdict)}</td><td class="muted">${esc(m.reason || m.cohort || "")}</td></tr>`);
  return `<p>Last analysis: <b class="${esc(a.verdict)}">${esc(a.verdict)}</b> <span class="muted">${esc(a.message || "")}</span></p>
    <table data-testid="analysis-table"><tr><th>check</th><th>value</th><th>baseline</th><th>threshold</th><th>verdict</th><th></th></tr>${rows.join("")}</table>`;
}

function renderPlans(s) {
  if (!s.plans.length) { $("plans").innerHTML = '<p class="muted">No plans yet.</p>'; return; }
  $("plans").innerHTML = s.plans.map((p) => {
    const eta = p.finished ? "done" : p.etaSeconds === null || p.etaSeconds === undefined ? "–" : "in " + age(p.etaSeconds);
    const n = p.nodes || { total: 0, byMode: {} };
    return `<div class="plan" data-testid="plan" data-plan="${esc(p.namespace)}/${esc(p.name)}">
      <div class="title"><b>${esc(p.namespace)}/${esc(p.name)}</b>
        <span class="badge ${esc(p.phase)}" data-testid="phase">${esc(p.phase)}</span>
        <span data-testid="position">${esc(position(p))}</span>
        <span class="muted">ETA <span data-testid="eta">${esc(eta)}</span></span>
        ${p.paused ? `<span class="badge Paused">paused: ${esc(p.pauseReason || "")}</span>` : ""}</div>
      <div class="bar" data-testid="progress" data-percent="${p.progressPercent}"><div style="width:${p.progressPercent}%"></div></div>
      <div class="muted">${p.progressPercent}% · ${n.acknowledged ?? 0}/${n.total} acknowledged · ${n.switching ?? 0} switching · ${n.blocked ?? 0} blocked · ${esc(p.message || "")}</div>
      ${modeBar(n.byMode || {}, n.total)}
      ${analysisTable(p.lastAnalysis)}
    </div>`;
  }).join("");
}

// A line chart of `series` ([{name, color, points: [[t, v]]}]) into `svg`.
function lines(svg, series, opts = {}) {
  const W = svg.viewBox.baseVal.width, H = svg.viewBox.baseVal.height;
  const all = series.flatMap((s) => s.points.filter((p) => p[1] !== null && p[1] !== undefined));
  if (!all.length) { svg.innerHTML = `<text x="8" y="20" fill="#8a96a3" font-size="12">no data yet</text>`; return; }
  const t0 = Math.min(...all.map((p) => p[0])), t1 = Math.max(...all.map((p) => p[0]));
  const top = Math.max(opts.min ?? 0, ...all.map((p) => p[1])) * 1.1 || 1;
  const x = (t) => (t1 === t0 ? W / 2 : ((t - t0) / (t1 - t0)) * (W - 4) + 2);
  const y = (v) => H - 14 - (v / top) * (H - 20);
  const paths = series.map((s) => {
    const pts = s.points.filter((p) => p[1] !== null && p[1] !== undefined);
    if (!pts.length) return "";
    // Counts hold until the next sample: steps, not slopes.
    const d = pts.map((p, i) => (i === 0 ? `M${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`
      : (opts.step ? `L${x(p[0]).toFixed(1)},${y(pts[i - 1][1]).toFixed(1)}` : "") + `L${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`)).join("");
    // Few points: mark each, so one measurement is visible too.
    const dots = pts.length <= 30
      ? pts.map((p) => `<circle cx="${x(p[0]).toFixed(1)}" cy="${y(p[1]).toFixed(1)}" r="2" fill="${s.color}"/>`).join("")
      : "";
    return `<path d="${d}" fill="none" stroke="${s.color}" stroke-width="1.6" ${s.dash ? 'stroke-dasharray="4 3"' : ""}><title>${esc(s.name)}</title></path>${dots}`;
  });
  let at = 4;
  const legend = opts.legend === false ? [] : series.map((s) => {
    const t = `<text x="${at}" y="${H - 2}" fill="${s.color}" font-size="10">${esc(s.name)}</text>`;
    at += s.name.length * 5.5 + 8;
    return t;
  });
  svg.innerHTML = `<text x="${W - 4}" y="10" fill="#8a96a3" font-size="10" text-anchor="end">${esc(opts.fmt ? opts.fmt(top / 1.1) : num(top / 1.1))}</text>${paths.join("")}${legend.join("")}`;
}

function renderFleet(s) {
  const f = s.fleet;
  $("fleet-now").innerHTML = `<span class="muted">${f.total} nodes, ${f.now.switching} not yet acknowledged: </span>` +
    MODES.map((m, i) => `<span style="color:${MODE_COLORS[i]}" data-testid="mode-${m}">${m} ${f.now.byMode[m] || 0}</span>`).join(" · ");
  const hist = [...f.history, f.now];
  lines($("fleet-chart"), MODES.map((m, i) => ({ name: m, color: MODE_COLORS[i], points: hist.map((p) => [p.at, p.byMode[m] || 0]) })), { fmt: (v) => v.toFixed(0), legend: false, step: true });
  $("fleet-legend").innerHTML = MODES.map((m, i) => `<span><i style="background:${MODE_COLORS[i]}"></i>${m}</span>`).join("");
}

function renderHealth(s) {
  const h = s.health;
  if (!h.reported) {
    $("health").innerHTML = `<p class="muted">No reports${s.leader ? "" : " on this replica: only the leader scrapes the agents"}.</p>`;
    return;
  }
  const t = (name, x) => `<tr><td>${name}</td><td class="Healthy">${x.healthy}</td><td class="Degraded">${x.degraded}</td><td class="Unhealthy">${x.unhealthy}</td><td class="Unknown">${x.unknown}</td><td>${num(x.meanScore)}</td><td>${num(x.lowestScore)}</td></tr>`;
  const worst = h.nodes.slice(0, 8).map((n) => `<tr><td>${esc(n.name)}</td><td>${num(n.score)}</td><td class="${esc(n.libp2p.state || "Unknown")}">${esc(n.libp2p.state || "–")}</td><td class="${esc(n.iroh.state || "Unknown")}">${esc(n.iroh.state || "–")}</td><td>${pct(n.partitionRisk)}</td></tr>`);
  $("health").innerHTML = `<table data-testid="health-transports"><tr><th>transport</th><th>healthy</th><th>degraded</th><th>unhealthy</th><th>unknown</th><th>mean</th><th>lowest</th></tr>${t("libp2p", h.libp2p)}${t("iroh", h.iroh)}</table>
    <p>Highest partition risk: <b data-testid="partition-risk">${pct(h.highestPartitionRisk)}</b> · ${h.reported} agents reporting</p>
    <table><tr><th>worst nodes</th><th>score</th><th>libp2p</th><th>iroh</th><th>partition risk</th></tr>${worst.join("")}</table>`;
}

function renderTraffic(s) {
  const sel = $("subject");
  const names = s.analysis.map((a) => a.plan);
  if (sel.options.length !== names.length || names.some((n, i) => sel.options[i].value !== n)) {
    const keep = sel.value;
    sel.innerHTML = names.map((n) => `<option>${esc(n)}</option>`).join("");
    if (names.includes(keep)) sel.value = keep;
  }
  const a = s.analysis.find((x) => x.plan === sel.value) || s.analysis[0];
  const pts = a ? a.points : [];
  const per = (key, f) => ["libp2p", "iroh"].map((t) => ({ name: t, color: TRANSPORT_COLORS[t], points: pts.map((p) => [p.at, f(p[t])]) }));
  lines($("chart-rate"), per("rate", (x) => x.requestsPerSecond), { fmt: (v) => v.toFixed(1) + "/s" });
  lines($("chart-errors"), per("errors", (x) => x.errorRate), { fmt: pct, min: 0.01 });
  // p95 solid, p50 and p99 dashed; the legend names the transports.
  lines($("chart-latency"), ["libp2p", "iroh"].flatMap((t) => [
    { name: t, color: TRANSPORT_COLORS[t], points: pts.map((p) => [p.at, p[t].p95Ms]) },
    { name: "", color: TRANSPORT_COLORS[t], points: pts.map((p) => [p.at, p[t].p50Ms]), dash: true },
    { name: "", color: TRANSPORT_COLORS[t], points: pts.map((p) => [p.at, p[t].p99Ms]), dash: true },
  ]), { fmt: (v) => v.toFixed(1) + " ms" });
  lines($("chart-risk"), [
    { name: "partition risk", color: "#f85149", points: pts.map((p) => [p.at, p.partitionRisk]) },
    { name: "lowest health", color: "#3fb950", points: pts.map((p) => [p.at, p.lowestHealth]) },
  ], { min: 1 });
  const last = pts[pts.length - 1];
  $("traffic-now").innerHTML = last
    ? ["libp2p", "iroh"].map((t) => `${t}: ${num(last[t].requestsPerSecond, 1)} req/s, errors ${pct(last[t].errorRate)}, p50/p95/p99 ${num(last[t].p50Ms)}/${num(last[t].p95Ms)}/${num(last[t].p99Ms)} ms`).join(" · ")
    : s.leader ? "No measurement yet." : "Only the leader measures: open the leader's dashboard for traffic.";
}

function renderRollbacks(s) {
  const rows = s.plans.flatMap((p) => [...(p.rollbackHistory || []), ...(p.rollback ? [{ ...p.rollback, running: true }] : [])]
    .map((r) => ({ plan: `${p.namespace}/${p.name}`, ...r })));
  $("rollbacks").innerHTML = rows.length
    ? `<table data-testid="rollback-table"><tr><th>plan</th><th>trigger</th><th>evidence</th><th>scope</th><th>nodes</th><th>started</th><th>finished</th></tr>${rows.map((r) =>
      `<tr><td>${esc(r.plan)}</td><td class="Fail">${esc(r.trigger)}</td><td>${esc(r.reason)}</td><td>${esc(r.scope)}${r.step ? " " + esc(r.step) : ""}</td><td>${r.nodes}</td><td>${esc(r.startedAt || "")}</td><td>${r.running ? "running" : esc(r.finishedAt || "")}</td></tr>`).join("")}</table>`
    : '<p class="muted">None.</p>';
}

function render(s) {
  latest = s;
  $("replica").textContent = s.leader ? "leader" : "standby (no analysis data here)";
  $("updated").textContent = "updated " + new Date(s.generatedAt).toLocaleTimeString();
  renderPlans(s);
  renderFleet(s);
  renderHealth(s);
  renderTraffic(s);
  renderRollbacks(s);
}

function connect(delay) {
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
  ws.onopen = () => { delay = 500; $("link").textContent = "live"; $("link").className = "link up"; };
  ws.onmessage = (e) => render(JSON.parse(e.data));
  ws.onclose = () => {
    $("link").textContent = "reconnecting"; $("link").className = "link down";
    setTimeout(() => connect(Math.min(delay * 2, 10000)), delay);
  };
}

$("subject").addEventListener("change", () => latest && renderTraffic(latest));
fetch("api/v1/snapshot").then((r) => r.json()).then(render).catch(() => {});
connect(500);
