// taskledger operator dashboard: reads the /v1 API with the session cookie and draws it.
// Task fields come from providers: every string goes into the page through textContent
// or setAttribute, never as HTML. Callback URLs carry a token and are never shown.

const SVG_NS = "http://www.w3.org/2000/svg";
const OUTCOMES = ["succeeded", "failed", "cancelled", "lost"];
const PALETTE_SIZE = 6;
const HOUR_MS = 3600 * 1000;
const REFRESH_MS = 30 * 1000;
const TABLE_LIMIT = 20;
const TEXT_LIMIT = 300;

const byId = (id) => document.getElementById(id);
let providerIndex = new Map();
let refreshTimer = null;
let shownRef = null;

// ---------------------------------------------------------------- DOM helpers

function el(tag, attrs = {}, text = null) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== null) node.textContent = String(text);
  return node;
}

function svg(tag, attrs = {}, parent = null, text = null) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== null) node.textContent = String(text);
  if (parent) parent.append(node);
  return node;
}

function tooltip(node, text) {
  svg("title", {}, node, text);
  return node;
}

function clip(text, limit = TEXT_LIMIT) {
  const value = String(text);
  return value.length > limit ? `${value.slice(0, limit)}…` : value;
}

// ---------------------------------------------------------------- formatting

function fmtTime(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return clip(iso, 40);
  return `${date.toISOString().replace("T", " ").slice(0, 19)}Z`;
}

function fmtHour(ms) {
  return new Date(ms).toISOString().slice(11, 16);
}

function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(Number(seconds))) return "—";
  const s = Math.abs(Number(seconds));
  const sign = Number(seconds) < 0 ? "-" : "";
  if (s < 1) return `${sign}${Math.round(s * 1000)} ms`;
  if (s < 60) return `${sign}${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
  if (s < 3600) return `${sign}${Math.floor(s / 60)} m ${String(Math.round(s % 60)).padStart(2, "0")} s`;
  if (s < 86400) return `${sign}${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} m`;
  return `${sign}${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function fmtAge(iso, nowMs = Date.now()) {
  if (!iso) return "—";
  return fmtDuration((nowMs - new Date(iso).getTime()) / 1000);
}

function fmtPercent(rate) {
  if (rate === null || rate === undefined || !Number.isFinite(Number(rate))) return "—";
  return `${(Number(rate) * 100).toFixed(1)}%`;
}

function fmtNumber(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(2);
  if (typeof value === "object") {
    return Object.entries(value).map(([k, v]) => `${k} ${fmtNumber(v)}`).join(" · ") || "—";
  }
  return clip(value, 60);
}

function fmtBytes(bytes) {
  if (bytes === null || bytes === undefined || !Number.isFinite(Number(bytes))) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = Number(bytes);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

function fmtBound(seconds) {
  const short = (value, unit) => `${Number.isInteger(value) ? value : value.toFixed(1)} ${unit}`;
  if (seconds < 60) return short(seconds, "s");
  if (seconds < 3600) return short(seconds / 60, "min");
  return short(seconds / 3600, "h");
}

// A histogram bound: seconds, or "inf" (or null) for the open last bin.
function binEdge(le) {
  const value = Number(le);
  return le === null || le === undefined || !Number.isFinite(value) ? Infinity : value;
}

function fmtBin(edge, previous) {
  if (Number.isFinite(edge)) return `≤ ${fmtBound(edge)}`;
  return previous === undefined ? "all" : `> ${fmtBound(previous)}`;
}

// A result may hold signed media URLs: show where they point, not the URL itself.
function redactUrls(value) {
  if (typeof value === "string" && /^[a-z][a-z0-9+.-]*:\/\//i.test(value)) {
    try {
      return `${new URL(value).origin}/…`;
    } catch {
      return "(url)";
    }
  }
  if (Array.isArray(value)) return value.map(redactUrls);
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, redactUrls(v)]));
  }
  return value;
}

function providerClass(name) {
  if (!providerIndex.has(name)) providerIndex.set(name, providerIndex.size);
  return `p${providerIndex.get(name) % PALETTE_SIZE}`;
}

// ---------------------------------------------------------------- the API

class ApiError extends Error {}

async function api(path, params = {}) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") url.searchParams.set(name, value);
  }
  const response = await fetch(url, {
    credentials: "same-origin",
    headers: { accept: "application/json" },
    cache: "no-store",
  });
  if (response.status === 401) {
    throw new ApiError("Your session has ended: reload the page to sign in again.");
  }
  if (!response.ok) {
    let reason = response.statusText;
    try {
      reason = (await response.json()).message || reason;
    } catch {
      // not JSON: keep the status text
    }
    throw new ApiError(`${url.pathname} answered ${response.status}: ${clip(reason, 120)}`);
  }
  return response.json();
}

function windowBounds() {
  const hours = Number(byId("range").value) || 24;
  const until = new Date();
  const since = new Date(until.getTime() - hours * HOUR_MS);
  return { since: since.toISOString(), until: until.toISOString() };
}

// ---------------------------------------------------------------- tables

function stateBadge(state) {
  return el("span", { class: `state ${OUTCOMES.includes(state) ? state : ""}` }, state ?? "—");
}

function refButton(ref) {
  const button = el("button", { type: "button", class: "ref", "data-ref": ref }, ref);
  button.title = "Open this task's timeline";
  return button;
}

// columns: [{title, value(row) -> string | Node, num?, wrap?}]
function fillTable(table, columns, rows, emptyText) {
  const head = el("tr");
  for (const column of columns) head.append(el("th", column.num ? { class: "num" } : {}, column.title));
  const body = el("tbody");
  for (const row of rows) {
    const tr = el("tr");
    for (const column of columns) {
      const cls = [column.num ? "num" : "", column.wrap ? "wrap" : ""].join(" ").trim();
      const td = el("td", cls ? { class: cls } : {});
      const value = column.value(row);
      td.append(value instanceof Node ? value : document.createTextNode(String(value ?? "—")));
      tr.append(td);
    }
    body.append(tr);
  }
  if (!rows.length) {
    const tr = el("tr");
    tr.append(el("td", { colspan: columns.length, class: "empty" }, emptyText));
    body.append(tr);
  }
  const thead = el("thead");
  thead.append(head);
  table.replaceChildren(thead, body);
  table.dataset.rows = String(rows.length);
}

function byStateText(byState) {
  return Object.entries(byState || {})
    .filter(([, n]) => n)
    .map(([state, n]) => `${state} ${n}`)
    .join(" · ") || "—";
}

function timing(p, key) {
  return fmtDuration(p.time_to_terminal_seconds ? p.time_to_terminal_seconds[key] : null);
}

function drawProviders(audit) {
  const swatch = (p) => {
    const cell = el("span");
    cell.append(el("span", { class: `swatch ${providerClass(p.provider)}` }), p.provider);
    return cell;
  };
  fillTable(byId("providers"), [
    { title: "provider", value: swatch },
    { title: "tasks", value: (p) => p.tasks, num: true },
    { title: "final", value: (p) => p.terminal, num: true },
    { title: "by state", value: (p) => byStateText(p.by_state) },
    { title: "recovered by poll", value: (p) => p.recovered_by_poll, num: true },
    { title: "missed callbacks", value: (p) => fmtPercent(p.missed_callback_rate), num: true },
    { title: "duplicates", value: (p) => p.duplicates, num: true },
    { title: "conflicts", value: (p) => p.conflicts, num: true },
    { title: "lost", value: (p) => p.lost, num: true },
    { title: "unmatched", value: (p) => p.unmatched, num: true },
    { title: "unrecognized", value: (p) => p.unrecognized, num: true },
    { title: "ignored", value: (p) => p.ignored, num: true },
    { title: "need attention", value: (p) => p.needs_attention, num: true },
    { title: "median to final", value: (p) => timing(p, "median"), num: true },
    { title: "p95 to final", value: (p) => timing(p, "p95"), num: true },
    { title: "billable seconds by resolution", value: (p) => fmtNumber(p.billable_seconds) },
    { title: "cost", value: (p) => fmtNumber(p.cost) },
  ], audit.providers || [], "No tasks in this window.");
  byId("window-label").textContent = `${fmtTime(audit.since)} to ${fmtTime(audit.until)}`;
}

// ---------------------------------------------------------------- charts

const CHART = { width: 640, height: 180, left: 40, right: 10, top: 10, bottom: 24 };

function chartFrame(kind, label, max) {
  const root = svg("svg", {
    viewBox: `0 0 ${CHART.width} ${CHART.height}`,
    class: `chart ${kind}`,
    role: "img",
    "aria-label": label,
  });
  const plotHeight = CHART.height - CHART.top - CHART.bottom;
  for (const fraction of [0, 0.5, 1]) {
    const y = CHART.top + plotHeight * (1 - fraction);
    svg("line", { class: "grid", x1: CHART.left, x2: CHART.width - CHART.right, y1: y, y2: y }, root);
    const value = max * fraction;
    const text = Number.isInteger(value) ? String(value) : value.toFixed(1);
    svg("text", { x: CHART.left - 6, y: y + 4, "text-anchor": "end" }, root, text);
  }
  return { root, plotHeight };
}

function slotX(index, count) {
  const plotWidth = CHART.width - CHART.left - CHART.right;
  const width = plotWidth / Math.max(count, 1);
  return { x: CHART.left + index * width, width };
}

function xLabel(root, index, count, text) {
  const { x, width } = slotX(index, count);
  svg("text", { x: x + width / 2, y: CHART.height - 6, "text-anchor": "middle" }, root, text);
}

// One column per slot, stacked segments in `layers` order; returns the total drawn.
function stackColumn(frame, index, count, segments, max) {
  const { x, width } = slotX(index, count);
  const gap = Math.min(2, width * 0.2);
  let y = CHART.top + frame.plotHeight;
  let total = 0;
  for (const segment of segments) {
    if (!segment.count) continue;
    const height = (segment.count / max) * frame.plotHeight;
    y -= height;
    const rect = svg("rect", {
      x: x + gap / 2,
      y,
      width: Math.max(width - gap, 1),
      height: Math.max(height, 0.5),
      class: `seg ${segment.cls}`,
      "data-series": segment.series,
      "data-count": segment.count,
      "data-slot": segment.slot,
    }, frame.root);
    tooltip(rect, segment.label);
    total += segment.count;
  }
  return total;
}

function hourSlots(since, until, buckets) {
  const slots = new Set();
  const end = new Date(until).getTime();
  for (let t = Math.floor(new Date(since).getTime() / HOUR_MS) * HOUR_MS; t < end; t += HOUR_MS) {
    slots.add(t);
  }
  for (const bucket of buckets) slots.add(new Date(bucket.start).getTime());
  return [...slots].sort((a, b) => a - b);
}

function outcomeChart(provider, slots, rows, max) {
  const frame = chartFrame("outcomes", `Outcomes per hour for ${provider}`, max);
  frame.root.setAttribute("data-provider", provider);
  const labelEvery = Math.max(1, Math.ceil(slots.length / 8));
  let total = 0;
  slots.forEach((slot, index) => {
    const row = rows.get(slot);
    if (index % labelEvery === 0) xLabel(frame.root, index, slots.length, fmtHour(slot));
    if (!row) return;
    const segments = OUTCOMES.map((outcome) => ({
      cls: outcome,
      series: outcome,
      count: Number(row[outcome]) || 0,
      slot: new Date(slot).toISOString(),
      label: `${provider}, hour from ${fmtTime(new Date(slot).toISOString())}: ${row[outcome]} ${outcome}`,
    }));
    total += stackColumn(frame, index, slots.length, segments, max);
  });
  frame.root.setAttribute("data-total", total);
  return frame.root;
}

function drawOutcomes(audit) {
  const buckets = audit.buckets || [];
  const slots = hourSlots(audit.since, audit.until, buckets);
  const names = [...new Set([...(audit.providers || []).map((p) => p.provider), ...buckets.map((b) => b.provider)])];
  const sum = (b) => OUTCOMES.reduce((n, o) => n + (Number(b[o]) || 0), 0);
  const max = Math.max(1, ...buckets.map(sum));
  const host = byId("outcomes");
  host.replaceChildren();
  for (const name of names.sort()) {
    const rows = new Map(buckets.filter((b) => b.provider === name).map((b) => [new Date(b.start).getTime(), b]));
    const figure = el("figure");
    figure.append(el("figcaption", {}, name), outcomeChart(name, slots, rows, max));
    host.append(figure);
  }
  if (!names.length) host.append(el("p", { class: "empty" }, "No tasks in this window."));
  drawLegend(byId("legend-outcomes"), OUTCOMES.map((o) => [o, o]));
}

function drawLegend(host, entries) {
  host.replaceChildren();
  for (const [cls, label] of entries) {
    const item = el("span");
    item.append(el("span", { class: `swatch ${cls}` }), label);
    host.append(item);
  }
}

function drawMissed(audit) {
  const providers = [...(audit.providers || [])].sort((a, b) => a.provider.localeCompare(b.provider));
  const rowHeight = 30;
  const width = CHART.width;
  const labelWidth = 110;
  const track = width - labelWidth - 70;
  const root = svg("svg", {
    viewBox: `0 0 ${width} ${Math.max(rowHeight * providers.length, rowHeight)}`,
    class: "chart missed",
    role: "img",
    "aria-label": "Missed callback rate per provider",
  });
  providers.forEach((p, i) => {
    const y = i * rowHeight + 6;
    const rate = Number(p.missed_callback_rate);
    const known = p.missed_callback_rate !== null && p.missed_callback_rate !== undefined && Number.isFinite(rate);
    svg("text", { x: 0, y: y + 13, class: "value" }, root, p.provider);
    svg("rect", { x: labelWidth, y, width: track, height: 18, class: "track" }, root);
    const bar = svg("rect", {
      x: labelWidth,
      y,
      width: known ? Math.max(0, Math.min(1, rate)) * track : 0,
      height: 18,
      class: "bar missed",
      "data-provider": p.provider,
      "data-rate": known ? rate : "",
    }, root);
    tooltip(bar, `${p.provider}: ${p.recovered_by_poll} of ${p.terminal} final tasks recovered only by polling`);
    svg("text", { x: labelWidth + track + 8, y: y + 13, class: "value" }, root, fmtPercent(p.missed_callback_rate));
  });
  byId("missed").replaceChildren(providers.length ? root : el("p", { class: "empty" }, "No providers."));
}

function drawHistogram(audit) {
  const bins = audit.time_to_terminal_histogram || [];
  const edges = [...new Set(bins.map((b) => binEdge(b.le_seconds)))].sort((a, b) => a - b);
  const names = [...new Set(bins.map((b) => b.provider))].sort();
  const count = (rows) => rows.reduce((n, b) => n + (Number(b.count) || 0), 0);
  const columns = edges.map((edge) => bins.filter((b) => binEdge(b.le_seconds) === edge));
  const max = Math.max(1, ...columns.map(count));
  const frame = chartFrame("histogram", "Time to final state, tasks per bucket", max);
  let total = 0;
  columns.forEach((column, index) => {
    const label = fmtBin(edges[index], edges[index - 1]);
    xLabel(frame.root, index, edges.length, label);
    const segments = names.map((name) => {
      const n = count(column.filter((b) => b.provider === name));
      const slot = String(edges[index]);
      return { cls: providerClass(name), series: name, count: n, slot, label: `${name}, ${label}: ${n} tasks` };
    });
    total += stackColumn(frame, index, edges.length, segments, max);
  });
  frame.root.setAttribute("data-total", total);
  byId("histogram").replaceChildren(edges.length ? frame.root : el("p", { class: "empty" }, "No final tasks in this window."));
  drawLegend(byId("legend-providers"), names.map((n) => [providerClass(n), n]));
}

// ---------------------------------------------------------------- loads

async function loadAudit(bounds) {
  const audit = await api("/v1/audit", bounds);
  for (const p of [...(audit.providers || [])].sort((a, b) => a.provider.localeCompare(b.provider))) {
    providerClass(p.provider);
  }
  drawProviders(audit);
  drawOutcomes(audit);
  drawMissed(audit);
  drawHistogram(audit);
}

async function loadStuck() {
  const now = Date.now();
  const body = await api("/v1/tasks", { stuck: "true", limit: TABLE_LIMIT });
  fillTable(byId("stuck"), [
    { title: "task", value: (t) => refButton(t.ref) },
    { title: "provider", value: (t) => t.provider },
    { title: "state", value: (t) => stateBadge(t.state) },
    { title: "age", value: (t) => fmtAge(t.created_at, now), num: true },
    { title: "last heard", value: (t) => (t.last_event_at ? `${fmtAge(t.last_event_at, now)} ago` : "never"), num: true },
    { title: "polls", value: (t) => t.poll_attempts, num: true },
    { title: "next poll", value: (t) => fmtTime(t.next_poll_at) },
    { title: "submission", value: (t) => t.submission ?? "—" },
    { title: "attention", value: (t) => t.attention ?? "—", wrap: true },
  ], body.tasks || [], "Nothing is stuck.");
}

async function loadConflicts() {
  const body = await api("/v1/tasks", { conflict: "true", limit: TABLE_LIMIT });
  const tasks = [...(body.tasks || [])].sort((a, b) => String(b.updated_at).localeCompare(String(a.updated_at)));
  fillTable(byId("conflicts"), [
    { title: "task", value: (t) => refButton(t.ref) },
    { title: "provider", value: (t) => t.provider },
    { title: "state", value: (t) => stateBadge(t.state) },
    { title: "decided by", value: (t) => t.state_source },
    { title: "confirmed", value: (t) => (t.confirmed ? "yes" : "no") },
    { title: "updated", value: (t) => fmtTime(t.updated_at) },
  ], tasks, "No conflicts.");
}

async function loadRecovered(bounds) {
  const body = await api("/v1/tasks", { recovered: "true", limit: TABLE_LIMIT, ...bounds });
  fillTable(byId("recovered"), [
    { title: "task", value: (t) => refButton(t.ref) },
    { title: "provider", value: (t) => t.provider },
    { title: "state", value: (t) => stateBadge(t.state) },
    { title: "polls", value: (t) => t.poll_attempts, num: true },
    { title: "final at", value: (t) => fmtTime(t.terminal_at) },
  ], body.tasks || [], "Every final state in this window came by callback.");
}

function showStatus(messages) {
  const status = byId("status");
  status.textContent = messages.join(" ");
  status.hidden = messages.length === 0;
}

async function refresh() {
  document.body.dataset.state = "loading";
  const bounds = windowBounds();
  const results = await Promise.allSettled([loadAudit(bounds), loadStuck(), loadRecovered(bounds), loadConflicts()]);
  const errors = results.filter((r) => r.status === "rejected").map((r) => r.reason.message);
  showStatus([...new Set(errors)]);
  document.body.dataset.state = errors.length ? "error" : "ready";
  document.body.dataset.loadedAt = new Date().toISOString();
}

// ---------------------------------------------------------------- the task panel

const SUMMARY_FIELDS = [
  ["provider", (t) => t.provider],
  ["provider task id", (t) => t.provider_task_id ?? "—"],
  ["owner", (t) => t.owner || "—"],
  ["model", (t) => t.model || "—"],
  ["state", (t) => `${t.state} (${t.progress ?? 0}%)`],
  ["decided by", (t) => t.state_source],
  ["confirmed", (t) => (t.confirmed ? "yes" : "no, a hint until a poll agrees")],
  ["conflict", (t) => (t.conflict ? "yes" : "no")],
  ["version", (t) => t.version],
  ["created", (t) => fmtTime(t.created_at)],
  ["last event", (t) => fmtTime(t.last_event_at)],
  ["final at", (t) => fmtTime(t.terminal_at)],
  ["next poll", (t) => fmtTime(t.next_poll_at)],
  ["poll attempts", (t) => t.poll_attempts],
  ["submission", (t) => t.submission ?? "—"],
  ["needs attention", (t) => t.attention ?? "—"],
  ["result", (t) => (t.result ? clip(JSON.stringify(redactUrls(t.result))) : "—")],
];

function drawSummary(task) {
  const list = byId("panel-summary");
  list.replaceChildren();
  for (const [label, value] of SUMMARY_FIELDS) {
    list.append(el("dt", {}, label), el("dd", {}, value(task) ?? "—"));
  }
}

function drawTimeline(timeline) {
  fillTable(byId("panel-transitions"), [
    { title: "#", value: (s) => s.seq, num: true },
    { title: "at", value: (s) => fmtTime(s.at) },
    { title: "from", value: (s) => s.from_state ?? "—" },
    { title: "to", value: (s) => stateBadge(s.to_state) },
    { title: "source", value: (s) => s.source },
    { title: "source id", value: (s) => clip(s.source_id ?? "—", 60), wrap: true },
  ], timeline.transitions || [], "No transitions.");
  fillTable(byId("panel-deliveries"), [
    { title: "received", value: (d) => fmtTime(d.received_at) },
    { title: "auth", value: (d) => d.auth },
    { title: "state", value: (d) => d.state ?? "—" },
    { title: "outcome", value: (d) => d.outcome },
    { title: "reason", value: (d) => clip(d.reason ?? "—", 80), wrap: true },
    { title: "duplicates", value: (d) => d.duplicate_count, num: true },
    { title: "last seen", value: (d) => fmtTime(d.last_seen_at) },
    { title: "delivery key", value: (d) => clip(d.delivery_key ?? "—", 60), wrap: true },
  ], timeline.deliveries || [], "No callback came for this task.");
  fillTable(byId("panel-polls"), [
    { title: "at", value: (p) => fmtTime(p.observed_at) },
    { title: "HTTP", value: (p) => p.http_status ?? "—", num: true },
    { title: "state", value: (p) => p.state ?? "—" },
    { title: "progress", value: (p) => (p.progress === null || p.progress === undefined ? "—" : `${p.progress}%`), num: true },
    { title: "outcome", value: (p) => p.outcome },
    { title: "error", value: (p) => clip(p.error ?? "", 160), wrap: true },
  ], timeline.polls || [], "Never polled.");
}

// ---------------------------------------------------------------- the task's outputs

const ARTIFACT_STATES = ["archived", "pending", "failed", "missed", "pruned"];
const SHA_SHOWN = 12;

// The list's URL on this page's origin (the page's CSP allows media from 'self' only):
// the path of an artifact and its media token, nothing else.
function mediaSource(artifact) {
  if (!artifact.url) return null;
  try {
    const url = new URL(artifact.url, window.location.origin);
    return url.pathname.startsWith("/v1/tasks/") ? `${url.pathname}${url.search}` : null;
  } catch {
    return null;
  }
}

function isKind(artifact, family) {
  return String(artifact.content_type || "").startsWith(`${family}/`);
}

function artifactBadge(state) {
  const known = ARTIFACT_STATES.includes(state) ? state : "unknown";
  return el("span", { class: `state artifact-${known}` }, state ?? "—");
}

// The video's poster: the task's archived image named "thumbnail", if it has one.
function posterOf(artifacts) {
  const thumbnail = artifacts.find((a) => a.name === "thumbnail" && a.state === "archived" && isKind(a, "image"));
  return thumbnail ? mediaSource(thumbnail) : null;
}

function artifactMedia(artifact, poster) {
  const source = artifact.state === "archived" ? mediaSource(artifact) : null;
  if (!source) return null;
  if (isKind(artifact, "video")) {
    const video = el("video", { controls: "", preload: "metadata", src: source });
    if (poster) video.setAttribute("poster", poster);
    video.append(el("a", { href: source }, "Download the video"));
    return video;
  }
  if (isKind(artifact, "image")) {
    return el("img", { src: source, alt: `${artifact.name} (${artifact.content_type})`, loading: "lazy" });
  }
  return el("a", { href: source }, `Download ${artifact.name}`);
}

function artifactFacts(artifact) {
  const sha = artifact.sha256 ? `${String(artifact.sha256).slice(0, SHA_SHOWN)}…` : "—";
  const facts = [
    ["type", artifact.content_type || "—"],
    ["size", fmtBytes(artifact.size)],
    ["sha256", sha],
    ["archived", fmtTime(artifact.archived_at)],
    ["from", artifact.source_host || "—"],
    ["attempts", artifact.attempts ?? 0],
  ];
  if (artifact.state !== "archived") facts.push(["source expires", fmtTime(artifact.expires_at)]);
  if (artifact.last_error) facts.push(["last error", clip(artifact.last_error, 240)]);
  const list = el("dl");
  for (const [label, value] of facts) {
    const dd = el("dd", label === "sha256" ? { class: "mono" } : {}, value);
    if (label === "sha256" && artifact.sha256) dd.title = artifact.sha256;
    if (label === "last error") dd.classList.add("warn");
    list.append(el("dt", {}, label), dd);
  }
  return list;
}

function drawArtifacts(artifacts) {
  const host = byId("panel-artifacts");
  host.replaceChildren();
  const poster = posterOf(artifacts);
  for (const artifact of artifacts) {
    const figure = el("figure", { class: "artifact", "data-name": artifact.name, "data-state": artifact.state });
    const caption = el("figcaption");
    caption.append(el("span", { class: "mono" }, artifact.name), " ", artifactBadge(artifact.state));
    figure.append(caption);
    const media = artifactMedia(artifact, poster);
    if (media) figure.append(media);
    figure.append(artifactFacts(artifact));
    host.append(figure);
  }
  if (!artifacts.length) host.append(el("p", { class: "empty" }, "No outputs archived for this task."));
  host.dataset.count = String(artifacts.length);
}

async function loadArtifacts(ref) {
  try {
    const artifacts = await api(`/v1/tasks/${encodeURIComponent(ref)}/artifacts`);
    if (shownRef === ref) drawArtifacts(Array.isArray(artifacts) ? artifacts : []);
  } catch (error) {
    if (shownRef === ref) byId("panel-artifacts").replaceChildren(el("p", { class: "warn" }, error.message));
  }
}

async function openTask(ref) {
  shownRef = ref;
  const panel = byId("panel");
  panel.hidden = false;
  panel.dataset.state = "loading";
  byId("panel-title").textContent = ref;
  byId("panel-status").textContent = "Loading…";
  for (const id of ["panel-summary", "panel-artifacts", "panel-transitions", "panel-deliveries", "panel-polls"]) {
    byId(id).replaceChildren();
  }
  history.replaceState(null, "", `#task=${encodeURIComponent(ref)}`);
  try {
    const task = await api(`/v1/tasks/${encodeURIComponent(ref)}`);
    if (shownRef !== ref) return;
    delete task.callback_url; // carries a token: never shown
    drawSummary(task);
    drawTimeline(task.timeline || {});
    await loadArtifacts(ref);
    if (shownRef !== ref) return;
    byId("panel-status").textContent = "";
    panel.dataset.state = "ready";
  } catch (error) {
    if (shownRef !== ref) return;
    byId("panel-status").textContent = error.message;
    panel.dataset.state = "error";
  }
}

function closeTask() {
  shownRef = null;
  byId("panel").hidden = true;
  history.replaceState(null, "", window.location.pathname);
}

// ---------------------------------------------------------------- wiring

function setAutoRefresh(on) {
  if (refreshTimer) clearInterval(refreshTimer);
  refreshTimer = on ? setInterval(refresh, REFRESH_MS) : null;
}

function wire() {
  byId("controls").addEventListener("submit", (event) => {
    event.preventDefault();
    refresh();
  });
  byId("range").addEventListener("change", refresh);
  byId("auto").addEventListener("change", (event) => setAutoRefresh(event.target.checked));
  byId("open-task").addEventListener("submit", (event) => {
    event.preventDefault();
    const ref = byId("ref-input").value.trim();
    if (ref) openTask(ref);
  });
  byId("panel-close").addEventListener("click", closeTask);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !byId("panel").hidden) closeTask();
  });
  document.addEventListener("click", (event) => {
    const button = event.target.closest("button.ref");
    if (button) openTask(button.dataset.ref);
  });
}

function openFromHash() {
  const match = /^#task=(.+)$/.exec(window.location.hash);
  if (!match) return;
  try {
    openTask(decodeURIComponent(match[1]));
  } catch {
    // a malformed hash: ignore it
  }
}

wire();
refresh();
openFromHash();
