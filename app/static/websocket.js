/**
 * websocket.js — /admin/websocket: the runbook's daily checks at a glance.
 *
 * Polls /api/admin/websocket-stats every few seconds, keeps the last minutes of samples in
 * memory and draws two small SVG plots (active connections, messages delivered per second),
 * the per-user connection table, the status badge and, when the service reports them, the
 * broker streams per account and (with REDIS_URL) the cluster's nodes and Redis status.
 */
import { api, ApiError, clockTime, currentUser, el, redirectToLogin, setupHeader } from "./ui.js";
import { drawSparkline } from "./sparkline.js";
import { formatCount as count, formatDuration, formatMilliseconds } from "./format.js";

const REFRESH_MS = 3000;
const HISTORY_MS = 10 * 60 * 1000;
const MIN_SPAN_MS = 60 * 1000;

/** @type {{ t: number, active: number, delivered: number, rate: number | null }[]} */
const samples = [];

/** Record one stats document and derive messages/s from the previous sample. */
function record(stats, now) {
  const previous = samples.at(-1);
  const delivered = Number(stats.totalMessagesDelivered) || 0;
  let rate = null;
  if (previous && now > previous.t && delivered >= previous.delivered) {
    rate = (delivered - previous.delivered) / ((now - previous.t) / 1000);
  }
  samples.push({ t: now, active: Number(stats.activeConnections) || 0, delivered, rate });
  while (samples.length && samples[0].t < now - HISTORY_MS) samples.shift();
}

function renderSummary(stats) {
  const badge = document.getElementById("status");
  badge.dataset.status = stats.status;
  badge.textContent = stats.status;
  document.getElementById("active").textContent = count(stats.activeConnections);
  const max = stats.limits?.maxTotalConnections;
  document.getElementById("capacity").textContent = max
    ? `of ${count(max)} (${Math.round((100 * stats.activeConnections) / max)}% of capacity)`
    : "";
  document.getElementById("efficiency").textContent = stats.performance?.batchEfficiency ?? "—";
  document.getElementById("disconnect-rate").textContent =
    stats.performance?.disconnectRatePerMinute ?? "—";
  document.getElementById("avg-duration").textContent =
    formatDuration(stats.performance?.avgConnectionDurationSeconds);
  document.getElementById("refreshed").textContent =
    `Refreshed ${clockTime(stats.timestamp)} · every ${REFRESH_MS / 1000} s`;
  // A plain name on a single node; with REDIS_URL, this node's row of the Nodes table.
  const nodeId = typeof stats.node === "object" && stats.node !== null ? stats.node.id : stats.node;
  const node = nodeId ? ` · node ${nodeId}` : "";
  const uptime = stats.uptime?.formatted ? ` · up ${stats.uptime.formatted}` : "";
  document.getElementById("node").textContent = `${node}${uptime}`;
}

/** Batch efficiency is only judged once enough deliveries were made to mean something. */
function efficiencyCheck(stats, efficiency) {
  const text = `Batch efficiency ${stats.performance?.batchEfficiency ?? "?"}`;
  const deliveries = Number(stats.totalMessagesDelivered) || 0;
  if (deliveries < 100) return [true, text, "judged after 100 messages"];
  return [!(efficiency < 0.9), text, "above 90%"];
}

/** The runbook's daily checks, each marked ok or warn. */
function renderChecks(stats) {
  const efficiency = Number(stats.performance?.batchEfficiencyRaw);
  const disconnects = Number(stats.performance?.disconnectRatePerMinute);
  const max = Number(stats.limits?.maxTotalConnections) || Infinity;
  const checks = [
    [stats.status === "healthy" || stats.status === "offline",
      `Status is ${stats.status}`, stats.enabled ? "" : "realtime disabled: clients poll"],
    [!(disconnects >= 5), `Disconnect rate ${stats.performance?.disconnectRatePerMinute ?? "?"}/min`,
      "below 5"],
    efficiencyCheck(stats, efficiency),
    [stats.activeConnections <= 0.9 * max,
      `${count(stats.activeConnections)} active connection${stats.activeConnections === 1 ? "" : "s"}`,
      "below 90% of the limit"],
  ];
  document.getElementById("checks").replaceChildren(
    ...checks.map(([ok, text, note]) =>
      el("li", { class: ok ? "ok" : "warn", dataset: { ok: String(ok) } },
        el("span", { class: "mark", "aria-hidden": "true" }, ok ? "✓" : "!"),
        el("span", {}, text),
        note ? el("span", { class: "muted" }, ` — ${note}`) : null)),
  );
  const totals = [
    ["Messages delivered", count(stats.totalMessagesDelivered)],
    ["Events emitted", count(stats.totalEventsEmitted)],
    ["Disconnects", count(stats.totalDisconnects)],
    ["Reconnects", count(stats.totalReconnects)],
    ["Batch window", stats.batchWindowMs !== undefined ? `${stats.batchWindowMs} ms` : "—"],
    ["Limits", `${stats.limits?.maxConnectionsPerUser ?? "?"} per user · ${stats.limits?.maxTotalConnections ?? "?"} total`],
  ];
  document.getElementById("totals").replaceChildren(
    ...totals.map(([k, v]) => el("tr", {}, el("th", { scope: "row" }, k), el("td", {}, v))),
  );
}

function renderUsers(stats) {
  const perUser = Number(stats.limits?.maxConnectionsPerUser) || 0;
  // The stats name users by id; the broker accounts, when reported, know their usernames.
  const names = new Map((stats.broker?.accounts || []).map((a) => [a.userId, a.username]));
  const entries = Object.entries(stats.connectionsByUser || {}).sort((a, b) => b[1] - a[1]);
  document.querySelector("#by-user tbody").replaceChildren(
    ...entries.map(([user, n]) => el("tr", { dataset: { user } },
      el("td", { class: "sym" }, names.get(user) ? `${names.get(user)} ` : user,
        names.get(user) ? el("span", { class: "muted" }, `(${user})`) : null),
      el("td", { class: "num" }, count(n)),
      el("td", {}, el("meter", { min: 0, max: perUser || n, value: n, low: perUser * 0.6,
        high: perUser * 0.99, optimum: 0, title: `${n} of ${perUser}` })))),
  );
  document.getElementById("by-user-empty").hidden = entries.length > 0;
}

/** Column titles for the broker table; unknown fields keep their own name. */
const BROKER_COLUMNS = {
  username: "Account",
  userId: "User id",
  mode: "Mode",
  paper: "Paper",
  status: "Status",
  lastEventAt: "Last event",
  lastReconciledAt: "Reconciled",
  reconnects: "Reconnects",
  health: "Health",
  lastError: "Last error",
};

/** @param {string} key @param {unknown} value */
function brokerCell(key, value) {
  if (value === undefined || value === null || value === "") return el("td", {}, "—");
  const text = String(value);
  if (key === "status") return el("td", {}, el("span", { class: "badge", dataset: { status: text } }, text));
  if (/At$/.test(key)) return el("td", { title: text }, clockTime(text));
  return el("td", { class: typeof value === "number" ? "num" : undefined }, text);
}

/** Broker stream status per account, with whatever fields the bridge reports. */
function renderBroker(stats) {
  const panel = document.getElementById("broker-panel");
  const accounts = stats.broker?.accounts;
  if (!Array.isArray(accounts)) {
    panel.hidden = true;
    return;
  }
  panel.hidden = false;
  document.getElementById("broker-mode").textContent = stats.broker.mode ? `mode: ${stats.broker.mode}` : "";
  const keys = [...new Set([...Object.keys(BROKER_COLUMNS), ...accounts.flatMap((a) => Object.keys(a))])]
    .filter((key) => accounts.some((a) => a[key] !== undefined && typeof a[key] !== "object"));
  document.querySelector("#broker thead tr").replaceChildren(
    ...keys.map((key) => el("th", {
      scope: "col",
      class: accounts.some((a) => typeof a[key] === "number") ? "num" : undefined,
    }, BROKER_COLUMNS[key] ?? key)),
  );
  document.querySelector("#broker tbody").replaceChildren(
    ...accounts.map((account) => el("tr", { dataset: { account: account.username ?? "" } },
      ...keys.map((key) => brokerCell(key, account[key])))),
  );
}

/** A node's "last seen": this node's own row is of now; the others' as old as their report. */
function lastSeen(seconds) {
  const s = Number(seconds);
  if (!Number.isFinite(s) || s < 1) return "now";
  return `${formatDuration(s)} ago`;
}

/** One row of the Nodes table; `answering` marks the node that served this document. */
function nodeRow(node, answering) {
  const degraded = node.degraded === true;
  const cell = (field, text, numeric = true) =>
    el("td", { class: numeric ? "num" : undefined, dataset: { field } }, text);
  return el("tr", { class: answering ? "answering" : undefined,
    dataset: { node: String(node.id ?? ""), answering: answering ? "true" : undefined } },
    el("td", { class: "sym", dataset: { field: "id" } }, String(node.id ?? "—"),
      answering ? el("span", { class: "this-node" }, "this node") : null),
    cell("connections", count(node.connections)),
    cell("users", count(node.users)),
    cell("accountsConsumed", count(node.accountsConsumed)),
    cell("uptime", formatDuration(node.uptimeSeconds)),
    cell("lastSeen", lastSeen(node.lastSeenSeconds)),
    cell("redisRtt", formatMilliseconds(node.redisRttMs)),
    cell("pubsubLag", formatMilliseconds(node.pubsubLagMs)),
    el("td", { dataset: { field: "state" } },
      el("span", { class: "badge", dataset: { status: degraded ? "degraded" : "ok" } },
        degraded ? "degraded" : "ok")));
}

/** What the warning says when the cluster's Redis is unavailable or this node is degraded. */
function clusterWarning(cluster) {
  if (cluster.redis !== "connected") {
    return "Redis is unavailable: this node keeps its sockets open and admits by its own " +
      "limits; the figures on this page are this node's alone until Redis returns.";
  }
  if (cluster.degraded) {
    return "This node reports itself degraded: it keeps serving its sockets; its log's " +
      "[Cluster] lines and /readyz say what it is missing.";
  }
  return "";
}

/** The Nodes section (REDIS_URL set): one row per live node, the answering one marked. */
function renderNodes(stats) {
  const panel = document.getElementById("nodes-panel");
  const warning = document.getElementById("cluster-warning");
  const cluster = stats.cluster;
  if (!Array.isArray(stats.nodes) || typeof cluster !== "object" || cluster === null) {
    // A single node: no section, no warning (the refresh line names the node).
    panel.hidden = true;
    warning.hidden = true;
    return;
  }
  panel.hidden = false;
  const redis = cluster.redis === "connected" ? "connected" : "unavailable";
  const badge = document.getElementById("cluster-redis");
  badge.dataset.status = redis;
  badge.textContent = `Redis ${redis}`;
  const text = clusterWarning(cluster);
  warning.textContent = text;
  warning.hidden = text === "";
  const here = stats.node?.id;
  document.getElementById("nodes-count").textContent =
    `${stats.nodes.length} live node${stats.nodes.length === 1 ? "" : "s"}`;
  document.querySelector("#nodes tbody").replaceChildren(
    ...stats.nodes.map((node) => nodeRow(node, node.id === here)),
  );
}

function renderCharts() {
  const now = Date.now();
  // The time axis grows with the page's history, from one minute up to HISTORY_MS.
  const oldest = samples.length ? samples[0].t : now;
  const range = { from: Math.max(now - HISTORY_MS, Math.min(oldest, now - MIN_SPAN_MS)), to: now };
  drawSparkline(document.getElementById("chart-connections"),
    samples.map((s) => [s.t, s.active]), { ...range, integer: true });
  drawSparkline(document.getElementById("chart-messages"),
    samples.filter((s) => s.rate !== null).map((s) => [s.t, s.rate]), range);
  const last = samples.at(-1);
  document.getElementById("active-now").textContent = last ? `now ${last.active}` : "";
  document.getElementById("rate-now").textContent =
    last && last.rate !== null ? `now ${last.rate.toFixed(1)}/s` : "";
}

async function refresh() {
  try {
    const stats = await api("/api/admin/websocket-stats");
    record(stats, Date.now());
    renderSummary(stats);
    renderChecks(stats);
    renderUsers(stats);
    renderNodes(stats);
    renderBroker(stats);
    renderCharts();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      redirectToLogin();
      return;
    }
    const badge = document.getElementById("status");
    badge.dataset.status = "unreachable";
    badge.textContent = "unreachable";
    document.getElementById("refreshed").textContent =
      `Stats unavailable (${error.message}); retrying every ${REFRESH_MS / 1000} s`;
  }
}

async function main() {
  const user = await currentUser();
  setupHeader(user);
  await refresh();
  setInterval(refresh, REFRESH_MS);
}

main().catch((error) => {
  if (error?.status !== 401) console.error("[Admin] Stats page failed to start", error);
});
