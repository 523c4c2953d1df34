// Drives Debian's Chromium against a live operator's dashboard while a
// real fleet migrates (operator/tests/dashboard_browser.rs starts it).
// Usage: node dashboard.mjs <dashboard URL> <plan ns/name> <screenshot.png>
// Prints one line per check; exits 1 naming the first that failed.
import { chromium } from "playwright-core";

const [url, plan, shot] = process.argv.slice(2);
const origin = new URL(url).origin;
const step = (what) => console.log("ok: " + what);
const WAIT = { timeout: 120_000 };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let page;
try {
  page = await browser.newPage({ viewport: { width: 1360, height: 1100 } });
  const elsewhere = [];
  page.on("request", (r) => { if (!r.url().startsWith(origin)) elsewhere.push(r.url()); });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  let loads = 0;
  page.on("load", () => loads++);

  const count = (mode) => page.evaluate((m) => Number(document.querySelector(`[data-testid=mode-${m}]`).textContent.split(" ")[1]), mode);
  await page.goto(url);
  await page.waitForSelector("[data-testid=link].up", WAIT);
  step("the page is live over /ws");
  const before = await count("IrohOnly");
  if (before !== 0) throw new Error(`IrohOnly shows ${before} nodes before the migration`);
  const card = page.locator(`[data-testid=plan][data-plan="${plan}"]`);
  await card.waitFor(WAIT);
  step(`plan ${plan} is shown`);

  // Mid-migration: progress above 0 and below 100, pushed (no reload).
  await page.waitForFunction((p) => {
    const bar = document.querySelector(`[data-plan="${p}"] [data-testid=progress]`);
    const v = bar && Number(bar.dataset.percent);
    return v > 0 && v < 100;
  }, plan, WAIT);
  step("progress moves, mid-migration");
  // Traffic measured by the analysis, per transport, drawn as lines.
  // A line: a path through at least two measurements.
  const line = (id) => [...document.querySelectorAll(`#${id} path`)].some((p) => p.getAttribute("d").includes("L"));
  await page.waitForFunction(line, "chart-rate", WAIT);
  step("the request-rate chart draws a line");
  await page.waitForFunction(line, "chart-latency", WAIT);
  step("the latency chart draws a line");
  await page.waitForFunction(line, "fleet-chart", WAIT);
  step("the fleet-by-mode chart draws a line");
  await page.waitForFunction(() => document.querySelector("[data-testid=health-transports]"), null, WAIT);
  step("agents' health reports are shown");
  await page.waitForFunction(() => document.querySelector("[data-testid=analysis-table]"), null, WAIT);
  step("the last analysis is shown with its checks");
  // The picture: once iroh carries traffic (stage 2 of 3 or later).
  await page.waitForFunction((p) => {
    const pos = document.querySelector(`[data-plan="${p}"] [data-testid=position]`);
    return pos && /stage [23]\/3/.test(pos.textContent);
  }, plan, WAIT);
  await page.waitForFunction(() => /iroh: [1-9]/.test(document.querySelector("[data-testid=traffic-now]").textContent), null, WAIT);
  step("iroh carries traffic");
  await page.screenshot({ path: shot, fullPage: true });
  step("screenshot mid-migration: " + shot);

  // The end, still without a reload.
  await page.waitForFunction((p) => {
    const phase = document.querySelector(`[data-plan="${p}"] [data-testid=phase]`);
    return phase && phase.textContent === "Succeeded";
  }, plan, WAIT);
  step("the plan reaches Succeeded on the page");
  await page.waitForFunction(() => Number(document.querySelector("[data-testid=mode-LibP2pOnly]").textContent.split(" ")[1]) === 0, null, WAIT);
  const total = await count("IrohOnly");
  if (!(total > 0)) throw new Error("the fleet panel shows no IrohOnly node at the end: " + total);
  step(`the mode counts moved live: IrohOnly 0 → ${total}`);

  // The test rolls the plan back now: its trigger and reason appear.
  await page.waitForFunction((p) => {
    const t = document.querySelector("[data-testid=rollback-table]");
    return t && t.textContent.includes(p) && t.textContent.includes("Manual") && t.textContent.includes("browser test");
  }, plan, WAIT);
  step("the rollback shows its trigger (Manual) and its reason");
  await page.waitForFunction((p) => {
    const phase = document.querySelector(`[data-plan="${p}"] [data-testid=phase]`);
    return phase && phase.textContent === "RolledBack";
  }, plan, WAIT);
  await page.waitForFunction((n) => Number(document.querySelector("[data-testid=mode-LibP2pOnly]").textContent.split(" ")[1]) === n, total, WAIT);
  step(`the plan ends RolledBack with all ${total} nodes back in LibP2pOnly`);
  if (loads !== 1) throw new Error(`the page loaded ${loads} times: updates must come over /ws`);
  step("every update came over /ws (one page load)");
  if (elsewhere.length) throw new Error("requests left the operator: " + elsewhere.join(", "));
  step("no request went anywhere but the operator");
  if (errors.length) throw new Error("script errors on the page: " + errors.join("; "));
  step("no script error on the page");
} catch (e) {
  if (page) await page.screenshot({ path: shot.replace(/\.png$/, "-failed.png"), fullPage: true }).catch(() => {});
  console.log("FAILED: " + e.message);
  process.exitCode = 1;
} finally {
  await browser.close();
}
