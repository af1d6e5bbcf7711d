// taskledger operator dashboard: reads the /v1 API with the session cookie and draws it.
// Task fields come from providers: every string goes into the page through textContent
// or setAttribute, never as HTML. Callback URLs carry a token and are never shown; result
// URLs are links (no referrer, no opener) and are never written to the console.
// The charts are hand-drawn SVG: a few hundred lines, smaller than any charting library.

const SVG_NS = "http://www.w3.org/2000/svg";
const OUTCOMES = ["succeeded", "failed", "cancelled", "lost"];
const STATES = ["submitted", "queued", "running", "succeeded", "failed", "cancelled", "lost"];
const PALETTE_SIZE = 6;
const HOUR_MS = 3600 * 1000;
const REFRESH_MS = 30 * 1000;
const TABLE_LIMIT = 20;
const TEXT_LIMIT = 300;
const KEY_SHOWN = { head: 10, tail: 6 };
const COPIED_MS = 1500;
const LAST_ERROR_MARK = "; last poll error: ";

const byId = (id) => document.getElementById(id);
const providerIndex = new Map();
let refreshTimer = null;
let shownRef = null;
let tasksQuery = {};
let tasksLoads = 0;
let tasksCursor = null;
// Whether this session may read raw payloads: null until a payload route answers.
let payloadAccess = null;

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

function lines(texts) {
  const cell = el("span");
  for (const text of texts) cell.append(el("span", { class: "line" }, text));
  return texts.length ? cell : "—";
}

// ---------------------------------------------------------------- formatting

function fmtTime(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return clip(iso, 40);
  return `${date.toISOString().replace("T", " ").slice(0, 19)}Z`;
}

// As `taskledger show` prints a moment: to the millisecond.
function fmtPrecise(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return clip(iso, 40);
  return date.toISOString().replace("T", " ").slice(0, 23);
}

function fmtSlot(ms, withDate) {
  const iso = new Date(ms).toISOString();
  return withDate ? `${iso.slice(5, 10)} ${iso.slice(11, 16)}` : iso.slice(11, 16);
}

function fmtBucket(seconds) {
  if (seconds % 86400 === 0) return seconds === 86400 ? "day" : `${seconds / 86400} days`;
  if (seconds % 3600 === 0) return seconds === 3600 ? "hour" : `${seconds / 3600} hours`;
  return seconds === 60 ? "minute" : `${Math.round(seconds / 60)} minutes`;
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

// A long key as its head and tail; the whole key stays in the title and the copy button.
function shortKey(key) {
  const value = String(key ?? "");
  const { head, tail } = KEY_SHOWN;
  return value.length > head + tail + 1 ? `${value.slice(0, head)}…${value.slice(-tail)}` : value;
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

// `key=value` pairs, as `taskledger show` prints them: empty values left out.
function keyValues(fields) {
  return Object.entries(fields)
    .filter(([, v]) => v !== null && v !== undefined && v !== "")
    .map(([k, v]) => `${k}=${v}`)
    .join(" ");
}

function providerClass(name) {
  if (!providerIndex.has(name)) providerIndex.set(name, providerIndex.size);
  return `p${providerIndex.get(name) % PALETTE_SIZE}`;
}

// ---------------------------------------------------------------- the API

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

function apiUrl(path, params = {}) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") url.searchParams.set(name, value);
  }
  return url;
}

async function api(path, params = {}) {
  const url = apiUrl(path, params);
  const response = await fetch(url, {
    credentials: "same-origin",
    headers: { accept: "application/json" },
    cache: "no-store",
  });
  if (response.status === 401) {
    throw new ApiError("Your session has ended: reload the page to sign in again.", 401);
  }
  if (!response.ok) {
    let reason = response.statusText;
    try {
      reason = (await response.json()).message || reason;
    } catch {
      // not JSON: keep the status text
    }
    throw new ApiError(`${url.pathname} answered ${response.status}: ${clip(reason, 120)}`, response.status);
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

function copyButton(text, label) {
  const button = el("button", { type: "button", class: "copy quiet", "data-copy": text, "aria-label": label }, "copy");
  button.title = label;
  return button;
}

// columns: [{title, value(row) -> string | Node, num?, wrap?, hint?}]; rowAttrs(row) -> attributes
function fillTable(table, columns, rows, emptyText, rowAttrs = () => ({})) {
  const thead = el("thead");
  thead.append(tableHead(columns));
  const body = el("tbody");
  appendRows(body, columns, rows, rowAttrs);
  if (!rows.length) {
    const tr = el("tr");
    tr.append(el("td", { colspan: columns.length, class: "empty" }, emptyText));
    body.append(tr);
  }
  table.replaceChildren(thead, body);
  table.dataset.rows = String(rows.length);
}

function tableHead(columns) {
  const head = el("tr");
  for (const column of columns) {
    const th = el("th", column.num ? { class: "num" } : {}, column.title);
    if (column.hint) th.title = column.hint;
    head.append(th);
  }
  return head;
}

function appendRows(body, columns, rows, rowAttrs) {
  for (const row of rows) {
    const tr = el("tr", rowAttrs(row));
    for (const column of columns) {
      const cls = [column.num ? "num" : "", column.wrap ? "wrap" : ""].join(" ").trim();
      const td = el("td", cls ? { class: cls } : {});
      const value = column.value(row);
      td.append(value instanceof Node ? value : document.createTextNode(String(value ?? "—")));
      tr.append(td);
    }
    body.append(tr);
  }
}

function swatchName(name) {
  const cell = el("span", { class: "provider" });
  cell.append(el("span", { class: `swatch ${providerClass(name)}` }), name);
  return cell;
}

function byStateLines(byState) {
  return lines(Object.entries(byState || {}).filter(([, n]) => n).map(([state, n]) => `${n} ${state}`));
}

function timings(p) {
  const t = p.time_to_terminal_seconds;
  if (!t) return "—";
  return lines([`median ${fmtDuration(t.median)}`, `p95 ${fmtDuration(t.p95)}`]);
}

function deliveryLines(p) {
  return lines([
    `${p.duplicates} duplicate`,
    `${p.unmatched} unmatched`,
    `${p.unrecognized} unrecognized`,
    `${p.ignored} ignored`,
  ]);
}

function billableLines(p) {
  return lines(Object.entries(p.billable_seconds || {}).map(([size, s]) => `${size}: ${fmtNumber(s)} s`));
}

function drawProviders(audit) {
  fillTable(byId("providers"), [
    { title: "provider", value: (p) => swatchName(p.provider) },
    { title: "tasks", value: (p) => p.tasks, num: true },
    { title: "final", value: (p) => p.terminal, num: true },
    { title: "by state", value: (p) => byStateLines(p.by_state) },
    { title: "recovered by poll", value: (p) => p.recovered_by_poll, num: true },
    { title: "missed callbacks", value: (p) => fmtPercent(p.missed_callback_rate), num: true },
    { title: "conflicts", value: (p) => p.conflicts, num: true },
    { title: "lost", value: (p) => p.lost, num: true },
    { title: "need attention", value: (p) => p.needs_attention, num: true },
    { title: "time to final", value: timings, hint: "from registration to a final state" },
    { title: "deliveries", value: deliveryLines, hint: "callbacks received in the window, by what came of them" },
    { title: "billable seconds", value: billableLines, hint: "by resolution" },
    { title: "cost", value: (p) => fmtNumber(p.cost), num: true },
  ], audit.providers || [], "No tasks in this window.", (p) => ({ "data-provider": p.provider }));
  byId("window-label").textContent = `${fmtTime(audit.since)} to ${fmtTime(audit.until)}`;
}

// ---------------------------------------------------------------- provider health

function pollingState(p) {
  const cell = el("span", { class: "endpoint-state" });
  cell.append(el("span", { class: `badge ${p.pollable ? "ok" : "warn"}` }, p.status));
  if (p.reason) cell.append(el("span", { class: "hint dispatch wrap-line" }, p.reason));
  return cell;
}

// A key limited to one owner is told when and how the last poll failed, not which task's
// it was nor its text: the API leaves both null then.
function lastPollError(p) {
  const error = p.last_poll_error;
  if (!error) return "none";
  const cell = el("span", { class: "poll-error" });
  const status = error.http_status === null || error.http_status === undefined ? "no answer" : `HTTP ${error.http_status}`;
  cell.append(el("span", { class: "when" }, `${fmtTime(error.at)} · ${status}`));
  if (error.task_ref) cell.append(el("span", { class: "when" }, " · "), refButton(error.task_ref));
  const text = error.error ?? "task and error text withheld: shown to keys of every owner only";
  cell.append(el("span", { class: error.error ? "reason" : "hint dispatch" }, clip(text, 240)));
  return cell;
}

// Who this session is, from the providers' answer: the admin token, or a key's scope and owner.
function drawViewer(viewer) {
  const shown = byId("viewer");
  if (!viewer) return;
  const owner = viewer.owner === null ? "every owner" : `owner ${viewer.owner}`;
  shown.textContent = viewer.key ? `signed in: ${viewer.scope} key ${viewer.key} · ${owner}` : "signed in: admin token";
  shown.dataset.scope = viewer.scope;
  shown.hidden = false;
}

function drawHealth(body) {
  const providers = body.providers || [];
  fillTable(byId("health"), [
    { title: "provider", value: (p) => swatchName(p.provider) },
    { title: "polling", value: pollingState, wrap: true },
    { title: "sunset", value: (p) => p.sunset ?? "—" },
    { title: "last poll error", value: lastPollError, wrap: true },
  ], providers, "No providers configured.", (p) => ({
    "data-provider": p.provider,
    "data-pollable": String(Boolean(p.pollable)),
  }));
  const idle = providers.filter((p) => !p.pollable).length;
  const alert = byId("health-alert");
  alert.textContent = `${idle} not configured`;
  alert.hidden = idle === 0;
  fillProviderFilter(providers.map((p) => p.provider));
}

// ---------------------------------------------------------------- charts

const CHART = { width: 640, height: 180, left: 40, right: 10, top: 10, bottom: 24 };
const TICKS_WANTED = 4;

// Whole-number ticks from 0 to a round top at or above `max`: steps of 1, 2 or 5 × 10^k.
function countTicks(max) {
  const top = Math.max(1, Math.ceil(max));
  const rough = top / TICKS_WANTED;
  const magnitude = 10 ** Math.floor(Math.log10(rough));
  const step = Math.max(1, [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= rough));
  const ticks = [];
  for (let value = 0; value < top + step; value += step) ticks.push(value);
  return ticks;
}

function chartFrame(kind, label, ticks, format = String) {
  const root = svg("svg", {
    viewBox: `0 0 ${CHART.width} ${CHART.height}`,
    class: `chart ${kind}`,
    role: "img",
    "aria-label": label,
  });
  const plotHeight = CHART.height - CHART.top - CHART.bottom;
  const top = ticks[ticks.length - 1];
  for (const value of ticks) {
    const y = CHART.top + plotHeight * (1 - value / top);
    svg("line", { class: "grid", x1: CHART.left, x2: CHART.width - CHART.right, y1: y, y2: y }, root);
    svg("text", { x: CHART.left - 6, y: y + 4, "text-anchor": "end", class: "tick" }, root, format(value));
  }
  return { root, plotHeight, top };
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

// One column per slot, stacked segments in `segments` order; returns the total drawn.
function stackColumn(frame, index, count, segments) {
  const { x, width } = slotX(index, count);
  const gap = Math.min(2, width * 0.2);
  let y = CHART.top + frame.plotHeight;
  let total = 0;
  for (const segment of segments) {
    if (!segment.count) continue;
    const height = (segment.count / frame.top) * frame.plotHeight;
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

// Every bucket start from the window's first to its last, and any bucket the data adds.
function bucketSlots(series) {
  const step = series.bucket_seconds * 1000;
  const slots = new Set();
  const end = new Date(series.until).getTime();
  for (let t = Math.floor(new Date(series.since).getTime() / step) * step; t < end; t += step) slots.add(t);
  for (const bucket of series.buckets || []) slots.add(new Date(bucket.start).getTime());
  return [...slots].sort((a, b) => a - b);
}

function slotLabeller(series, slots) {
  const withDate = new Date(series.until) - new Date(series.since) > 24 * HOUR_MS;
  const every = Math.max(1, Math.ceil(slots.length / 8));
  return (root, index) => {
    if (index % every === 0) xLabel(root, index, slots.length, fmtSlot(slots[index], withDate));
  };
}

function slotText(series, slot) {
  const end = slot + series.bucket_seconds * 1000;
  return `${fmtTime(new Date(slot).toISOString())} to ${fmtTime(new Date(end).toISOString()).slice(11)}`;
}

function outcomeChart(series, provider, slots, rows, ticks) {
  const frame = chartFrame("outcomes", `Outcomes per ${fmtBucket(series.bucket_seconds)} for ${provider}`, ticks);
  frame.root.setAttribute("data-provider", provider);
  const label = slotLabeller(series, slots);
  let total = 0;
  slots.forEach((slot, index) => {
    label(frame.root, index);
    const row = rows.get(slot);
    if (!row) return;
    const segments = OUTCOMES.map((outcome) => ({
      cls: outcome,
      series: outcome,
      count: Number(row[outcome]) || 0,
      slot: new Date(slot).toISOString(),
      label: `${provider}, ${slotText(series, slot)}: ${row[outcome]} ${outcome}`,
    }));
    total += stackColumn(frame, index, slots.length, segments);
  });
  frame.root.setAttribute("data-total", total);
  return frame.root;
}

function seriesProviders(series) {
  return [...new Set((series.buckets || []).map((b) => b.provider))].sort();
}

function rowsOf(series, name) {
  const rows = (series.buckets || []).filter((b) => b.provider === name);
  return new Map(rows.map((b) => [new Date(b.start).getTime(), b]));
}

function drawOutcomes(series) {
  const slots = bucketSlots(series);
  const sum = (b) => OUTCOMES.reduce((n, o) => n + (Number(b[o]) || 0), 0);
  const ticks = countTicks(Math.max(0, ...(series.buckets || []).map(sum)));
  const host = byId("outcomes");
  host.replaceChildren();
  for (const name of seriesProviders(series)) {
    const figure = el("figure");
    figure.append(el("figcaption", {}, name), outcomeChart(series, name, slots, rowsOf(series, name), ticks));
    host.append(figure);
  }
  if (!host.children.length) host.append(el("p", { class: "empty" }, "No task reached a final state in this window."));
  host.dataset.bucketSeconds = String(series.bucket_seconds);
  host.dataset.slots = String(slots.length);
  byId("outcomes-title").textContent = `Outcomes per ${fmtBucket(series.bucket_seconds)}`;
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

// The missed-callback rate per bucket: recovered / final tasks, a line per provider, a gap
// where a bucket has no final task.
function drawMissedOverTime(series) {
  const slots = bucketSlots(series);
  const frame = chartFrame("missed-rate", "Missed callback rate over time", [0, 25, 50, 75, 100], (v) => `${v}%`);
  const label = slotLabeller(series, slots);
  slots.forEach((_, index) => label(frame.root, index));
  const names = seriesProviders(series);
  for (const name of names) rateLine(frame, series, slots, name);
  byId("missed-rate").replaceChildren(names.length ? frame.root : el("p", { class: "empty" }, "No final tasks in this window."));
  drawLegend(byId("legend-missed"), names.map((n) => [providerClass(n), n]));
}

function rateLine(frame, series, slots, name) {
  const rows = rowsOf(series, name);
  const cls = providerClass(name);
  let run = [];
  const flush = () => {
    if (run.length > 1) svg("polyline", { points: run.join(" "), class: `rate-line ${cls}` }, frame.root);
    run = [];
  };
  slots.forEach((slot, index) => {
    const row = rows.get(slot);
    if (!row || !row.terminal) {
      flush();
      return;
    }
    const rate = row.recovered / row.terminal;
    const { x, width } = slotX(index, slots.length);
    const point = [x + width / 2, CHART.top + frame.plotHeight * (1 - rate)];
    run.push(point.join(","));
    const dot = svg("circle", {
      cx: point[0], cy: point[1], r: 3.5, class: `rate-point ${cls}`,
      "data-provider": name, "data-slot": new Date(slot).toISOString(), "data-rate": rate,
    }, frame.root);
    tooltip(dot, `${name}, ${slotText(series, slot)}: ${row.recovered} of ${row.terminal} final tasks recovered only by polling (${fmtPercent(rate)})`);
  });
  flush();
}

function drawHistogram(audit) {
  const bins = audit.time_to_terminal_histogram || [];
  const edges = [...new Set(bins.map((b) => binEdge(b.le_seconds)))].sort((a, b) => a - b);
  const names = [...new Set(bins.map((b) => b.provider))].sort();
  const count = (rows) => rows.reduce((n, b) => n + (Number(b.count) || 0), 0);
  const columns = edges.map((edge) => bins.filter((b) => binEdge(b.le_seconds) === edge));
  const ticks = countTicks(Math.max(0, ...columns.map(count)));
  const frame = chartFrame("histogram", "Time to final state, tasks per bucket", ticks);
  let total = 0;
  columns.forEach((column, index) => {
    const label = fmtBin(edges[index], edges[index - 1]);
    xLabel(frame.root, index, edges.length, label);
    const segments = names.map((name) => {
      const n = count(column.filter((b) => b.provider === name));
      const slot = String(edges[index]);
      return { cls: providerClass(name), series: name, count: n, slot, label: `${name}, ${label}: ${n} tasks` };
    });
    total += stackColumn(frame, index, edges.length, segments);
  });
  frame.root.setAttribute("data-total", total);
  byId("histogram").replaceChildren(edges.length ? frame.root : el("p", { class: "empty" }, "No final tasks in this window."));
  drawLegend(byId("legend-providers"), names.map((n) => [providerClass(n), n]));
}
// ---------------------------------------------------------------- notification endpoints

const FAILURES_SHOWN = 3;
const DISPATCH_BADGES = { delivered: "ok", failed: "bad", pending: "warn" };

// The API has already taken a broker URL's credentials out; the query (a token, often) is
// not shown either.
function endpointUrl(url) {
  const [head] = String(url ?? "").split(/[?#]/, 1);
  return clip(head, 120) + (String(url ?? "").length > head.length ? "?…" : "");
}

function endpointName(endpoint) {
  const cell = el("span");
  cell.append(el("span", { class: "mono endpoint-url" }, endpointUrl(endpoint.url)));
  const about = [endpoint.id, endpoint.kind, endpoint.description].filter(Boolean).join(" · ");
  cell.append(el("span", { class: "hint dispatch" }, about));
  return cell;
}

// A disabled endpoint says so in red, with why and since when: never a silent stop.
function endpointState(endpoint) {
  const cell = el("span", { class: "endpoint-state" });
  if (!endpoint.enabled) {
    cell.append(el("span", { class: "badge bad" }, "disabled"));
    const reason = endpoint.disabled_reason || "no reason recorded";
    cell.append(el("span", { class: "reason" }, `${clip(reason, 200)} (since ${fmtTime(endpoint.disabled_at)})`));
  } else if (endpoint.failing_since) {
    cell.append(el("span", { class: "badge warn" }, "enabled, failing"));
  } else {
    cell.append(el("span", { class: "badge ok" }, "enabled"));
  }
  return cell;
}

function endpointTimes(endpoint) {
  const cell = el("span");
  cell.append(el("span", { class: "dispatch" }, `last success ${fmtTime(endpoint.last_success_at)}`));
  if (endpoint.failing_since) {
    cell.append(el("span", { class: "dispatch warn" }, `failing since ${fmtTime(endpoint.failing_since)}`));
  }
  return cell;
}

function failureList(endpoint) {
  const failures = ((endpoint.health || {}).recent_failures || []).slice(0, FAILURES_SHOWN);
  if (!failures.length) return "—";
  const list = el("ul", { class: "failures" });
  for (const failure of failures) {
    const item = el("li");
    item.append(el("span", { class: "when" }, fmtTime(failure.at)), answerText(failure.status_code, failure.error));
    list.append(item);
  }
  return list;
}

// What an endpoint answered: its status, and the error when it says more than the status.
function answerText(status, error) {
  const answer = status === null || status === undefined ? "no answer" : `HTTP ${status}`;
  return error && error !== answer ? `${answer} · ${clip(error, 160)}` : answer;
}

function dispatchCount(endpoint, state) {
  return ((endpoint.health || {}).dispatches || {})[state] ?? 0;
}

async function loadEndpoints() {
  let body;
  try {
    body = await api("/v1/endpoints");
  } catch (error) {
    if (error.status !== 403) throw error;
    byId("endpoints-card").hidden = true; // the admin's card: a key may not read endpoints
    return;
  }
  const endpoints = body.endpoints || [];
  fillTable(byId("endpoints"), [
    { title: "endpoint", value: endpointName, wrap: true },
    { title: "state", value: endpointState, wrap: true },
    { title: "health", value: endpointTimes },
    { title: "pending", value: (e) => dispatchCount(e, "pending"), num: true },
    { title: "delivered", value: (e) => dispatchCount(e, "delivered"), num: true },
    { title: "failed", value: (e) => dispatchCount(e, "failed"), num: true },
    { title: "recent failures", value: failureList, wrap: true },
  ], endpoints, "No endpoints: add one with `taskledger endpoints create URL`.", (e) => ({
    "data-endpoint": e.id,
    "data-enabled": String(Boolean(e.enabled)),
    class: e.enabled ? "" : "disabled",
  }));
  const disabled = endpoints.filter((e) => !e.enabled).length;
  const alert = byId("endpoints-alert");
  alert.textContent = `${disabled} disabled`;
  alert.hidden = disabled === 0;
}

function drawBacklog(notifications) {
  const host = byId("endpoints-backlog");
  if (!notifications) {
    host.textContent = "";
    return;
  }
  const oldest = notifications.oldest_pending_seconds;
  const waiting = oldest === null || oldest === undefined ? "" : `, the oldest waiting ${fmtDuration(oldest)}`;
  host.textContent = `Now: ${notifications.pending} to send${waiting}; ${notifications.unsent} events not fanned out yet.`;
}

// ---------------------------------------------------------------- task lists

const TASK_COLUMNS = [
  { title: "task", value: (t) => refButton(t.ref) },
  { title: "provider", value: (t) => t.provider },
  { title: "owner", value: (t) => t.owner || "—" },
  { title: "model", value: (t) => clip(t.model || "—", 40) },
  { title: "state", value: (t) => stateBadge(t.state) },
  { title: "confirmed", value: (t) => (t.confirmed ? "yes" : "no") },
  { title: "created", value: (t) => fmtTime(t.created_at) },
  { title: "final at", value: (t) => fmtTime(t.terminal_at) },
  { title: "attention", value: (t) => t.attention ?? "—", wrap: true },
];

function taskFilters() {
  return {
    owner: byId("filter-owner").value.trim(),
    state: byId("filter-state").value,
    provider: byId("filter-provider").value,
  };
}

function fillProviderFilter(names) {
  const select = byId("filter-provider");
  const known = new Set([...select.options].map((o) => o.value));
  for (const name of [...names].sort()) {
    if (!known.has(name)) select.append(el("option", { value: name }, name));
  }
}

function rememberOwners(tasks) {
  const list = byId("owners");
  const known = new Set([...list.options].map((o) => o.value));
  for (const owner of tasks.map((t) => t.owner).filter(Boolean)) {
    if (!known.has(owner)) {
      known.add(owner);
      list.append(el("option", { value: owner }));
    }
  }
}

// The tasks registered in the window that match the filters, newest first, a page at a time.
// Only the latest load draws: filters changed quickly do not race each other's answers.
async function loadTasks(bounds, more = false) {
  if (!more) tasksQuery = { ...taskFilters(), ...bounds, limit: TABLE_LIMIT };
  const load = ++tasksLoads;
  const query = tasksQuery;
  const body = await api("/v1/tasks", { ...query, cursor: more ? tasksCursor : null });
  if (load !== tasksLoads) return;
  const tasks = body.tasks || [];
  const table = byId("tasks");
  if (more) {
    appendRows(table.tBodies[0], TASK_COLUMNS, tasks, (t) => ({ "data-ref": t.ref }));
    table.dataset.rows = String(Number(table.dataset.rows) + tasks.length);
  } else {
    fillTable(table, TASK_COLUMNS, tasks, "No task matches.", (t) => ({ "data-ref": t.ref }));
  }
  table.dataset.filters = JSON.stringify({ owner: query.owner, state: query.state, provider: query.provider });
  tasksCursor = body.next_cursor;
  byId("tasks-more").hidden = !tasksCursor;
  rememberOwners(tasks);
}

// The reconciler's note on a task: why it needs attention, then the last poll's error.
function attentionParts(task) {
  const note = task.attention ?? "";
  const at = note.indexOf(LAST_ERROR_MARK);
  const [reason, error] = at < 0 ? [note, ""] : [note.slice(0, at), note.slice(at + LAST_ERROR_MARK.length)];
  return [reason || "—", error ? clip(error, 240) : "—"];
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
    { title: "attention", value: (t) => attentionParts(t)[0], wrap: true },
    { title: "last error", value: (t) => attentionParts(t)[1], wrap: true },
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

// ---------------------------------------------------------------- loads

// The audit, the outcome buckets and provider health share the providers' colours: fetched
// together, the colours are handed out in name order before anything is drawn.
async function loadCharts(bounds) {
  const [audit, series, health] = await Promise.allSettled([
    api("/v1/audit", bounds),
    api("/v1/dashboard/outcomes", bounds),
    api("/v1/dashboard/providers"),
  ]);
  const names = new Set();
  if (audit.value) for (const p of audit.value.providers || []) names.add(p.provider);
  if (series.value) for (const b of series.value.buckets || []) names.add(b.provider);
  if (health.value) for (const p of health.value.providers || []) names.add(p.provider);
  for (const name of [...names].sort()) providerClass(name);
  const drawn = [];
  if (audit.value) drawn.push(() => drawAudit(audit.value));
  if (series.value) drawn.push(() => drawOutcomes(series.value), () => drawMissedOverTime(series.value));
  if (health.value) drawn.push(() => drawHealth(health.value), () => drawViewer(health.value.viewer));
  for (const draw of drawn) draw();
  const failed = [audit, series, health].filter((r) => r.status === "rejected");
  if (failed.length) throw failed[0].reason;
}

function drawAudit(audit) {
  drawProviders(audit);
  drawMissed(audit);
  drawHistogram(audit);
  drawBacklog(audit.notifications);
}

function showStatus(messages) {
  const status = byId("status");
  status.textContent = messages.join(" ");
  status.hidden = messages.length === 0;
}

async function refresh() {
  document.body.dataset.state = "loading";
  const bounds = windowBounds();
  const results = await Promise.allSettled([
    loadCharts(bounds), loadEndpoints(), loadTasks(bounds), loadStuck(), loadRecovered(bounds), loadConflicts(),
  ]);
  const errors = results.filter((r) => r.status === "rejected").map((r) => r.reason.message);
  showStatus([...new Set(errors)]);
  document.body.dataset.state = errors.length ? "error" : "ready";
  document.body.dataset.loadedAt = new Date().toISOString();
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
  ["result", (t) => resultCell(t.result)],
];

function drawSummary(task) {
  const list = byId("panel-summary");
  list.replaceChildren();
  for (const [label, value] of SUMMARY_FIELDS) {
    const shown = value(task) ?? "—";
    const dd = el("dd");
    dd.append(shown instanceof Node ? shown : document.createTextNode(String(shown)));
    list.append(el("dt", {}, label), dd);
  }
}

// The result's media URLs as links that send no referrer and give no opener; the rest of
// the result as JSON, any other URL in it cut to its origin.
function resultCell(result) {
  if (!result || typeof result !== "object") return "—";
  const cell = el("span", { class: "result" });
  const urls = Array.isArray(result.urls) ? result.urls : [];
  for (const url of urls) cell.append(resultLink(url) ?? el("span", { class: "line" }, String(redactUrls(url))));
  const rest = Object.fromEntries(Object.entries(result).filter(([name]) => name !== "urls"));
  if (Object.keys(rest).length) cell.append(el("span", { class: "line" }, clip(JSON.stringify(redactUrls(rest)))));
  return cell.childNodes.length ? cell : "—";
}

function resultLink(url) {
  let parsed;
  try {
    parsed = new URL(String(url));
  } catch {
    return null;
  }
  if (parsed.protocol !== "https:" && parsed.protocol !== "http:") return null;
  const name = parsed.pathname.split("/").filter(Boolean).pop() ?? "";
  const text = `${parsed.host}/…/${clip(name, 48)}`;
  return el("a", { href: parsed.href, rel: "noreferrer noopener", target: "_blank", class: "line result-url" }, text);
}

// ---------------------------------------------------------------- the merged timeline

// A moment as a sortable number: microseconds since the epoch, as Python compares them
// (a JavaScript Date keeps only milliseconds); a missing or unreadable one sorts first.
function instant(iso) {
  if (typeof iso !== "string") return -Infinity;
  const match = /^(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(.*)$/.exec(iso);
  if (!match) return -Infinity;
  const whole = Date.parse(`${match[1]}${match[3] || "Z"}`);
  if (Number.isNaN(whole)) return -Infinity;
  return whole * 1000 + Number((match[2] || "0").padEnd(6, "0").slice(0, 6));
}

function entry(at, rank, order, kind, what, detail, attrs = {}) {
  return { at, key: instant(at), rank, order: Number.isInteger(order) ? order : 0, kind, what, detail, attrs };
}

// Registration, submission, deliveries, polls, transitions, outputs and the events sent
// (each with its tries), in the order `taskledger show` prints them: by time, then rank.
function timelineEntries(task) {
  const events = task.timeline || {};
  const list = (value) => (Array.isArray(value) ? value.filter((v) => v && typeof v === "object") : []);
  const entries = [registrationEntry(task), ...submissionEntries(task)];
  entries.push(...list(events.deliveries).map((d) => deliveryEntry(task.ref, d)));
  entries.push(...list(events.polls).map((p) => pollEntry(task.ref, p)));
  entries.push(...list(events.transitions).map(transitionEntry));
  entries.push(...list(events.artifacts).map(artifactEntry));
  list(events.messages).forEach((message, number) => entries.push(...messageEntries(message, number)));
  return entries.sort((a, b) => a.key - b.key || a.rank - b.rank || a.order - b.order);
}

function registrationEntry(task) {
  const detail = `${task.provider ?? ""} ${task.model ?? ""}, owner ${task.owner || "-"}`;
  return entry(task.created_at, 0, 0, "registered", "registered", detail);
}

function submissionEntries(task) {
  if (!task.submission) return [];
  const at = task.submitted_at || task.created_at;
  return [entry(at, 1, 0, "submission", "submission", `by taskledger: ${task.submission}`)];
}

function deliveryEntry(ref, delivery) {
  const detail = el("span");
  detail.append(keyValues({ state: delivery.state, outcome: delivery.outcome, reason: delivery.reason, auth: delivery.auth }));
  if (delivery.delivery_key) {
    detail.append(" key=", el("span", { class: "mono delivery-key", title: delivery.delivery_key }, shortKey(delivery.delivery_key)));
    detail.append(" ", copyButton(delivery.delivery_key, "Copy the delivery key"));
  }
  if (delivery.duplicate_count) {
    detail.append(` duplicates=${delivery.duplicate_count} (last ${fmtPrecise(delivery.last_seen_at)})`);
  }
  const path = `/v1/tasks/${encodeURIComponent(ref)}/deliveries/${encodeURIComponent(delivery.id)}`;
  return entry(delivery.received_at, 2, delivery.id, "delivery", `delivery #${delivery.id}`, detail, {
    "data-id": delivery.id,
    "data-payload": path,
  });
}

function pollEntry(ref, poll) {
  const progress = poll.progress === null || poll.progress === undefined ? null : `${poll.progress}%`;
  const detail = keyValues({
    http: poll.http_status, state: poll.state, progress, outcome: poll.outcome, error: poll.error && clip(poll.error, 240),
  });
  const path = `/v1/tasks/${encodeURIComponent(ref)}/polls/${encodeURIComponent(poll.id)}`;
  return entry(poll.observed_at, 2, poll.id, "poll", `poll #${poll.id}`, detail, { "data-id": poll.id, "data-payload": path });
}

function transitionEntry(transition) {
  const detail = el("span");
  detail.append(`${transition.from_state || "(new)"} → `, stateBadge(transition.to_state), ` via ${transition.source}`);
  const evidence = { webhook: "delivery", poll: "poll" }[transition.source];
  if (evidence && transition.source_id !== null && transition.source_id !== undefined) {
    detail.append(` (${evidence} #${clip(transition.source_id, 60)})`);
  }
  const what = `transition #${transition.seq}`;
  return entry(transition.at, 3, transition.seq, "transition", what, detail, {
    "data-id": transition.seq,
    "data-state": transition.to_state,
  });
}

function artifactEntry(artifact) {
  const archived = artifact.archived_at;
  const sha = artifact.sha256 ? `${String(artifact.sha256).slice(0, SHA_SHOWN)}…` : null;
  const detail = keyValues({
    state: artifact.state,
    size: artifact.size === null || artifact.size === undefined ? null : fmtBytes(artifact.size),
    sha256: sha,
    host: artifact.source_host,
    attempts: artifact.attempts || null,
    expires: archived ? null : fmtTime(artifact.expires_at),
    error: artifact.last_error,
  });
  return entry(archived || artifact.created_at, 4, artifact.id, "output", `output ${artifact.name}`, detail, {
    "data-name": artifact.name,
  });
}

function messageEntries(message, number) {
  const dispatches = Array.isArray(message.dispatches) ? message.dispatches : [];
  const detail = el("span");
  detail.append(keyValues({ seq: message.seq, unconfirmed: message.unconfirmed ? "yes" : null, msg: message.msg_id }));
  for (const dispatch of dispatches) detail.append(" ", dispatchText(dispatch));
  if (!dispatches.length) detail.append(message.fanned_out ? " to no endpoint" : " not fanned out yet");
  const entries = [entry(message.created_at, 5, number, "event", `event ${message.event_type}`, detail, {
    "data-msg": message.msg_id,
    "data-event": message.event_type,
  })];
  for (const dispatch of dispatches) {
    for (const attempt of dispatch.attempt_log || []) entries.push(attemptEntry(attempt, dispatch.endpoint_id, number));
  }
  return entries;
}

function dispatchText(dispatch) {
  const part = el("span", { class: "dispatch-state", "data-endpoint": dispatch.endpoint_id, "data-state": dispatch.state });
  part.append(`${dispatch.endpoint_id} `, el("span", { class: `badge ${DISPATCH_BADGES[dispatch.state] || ""}` }, dispatch.state));
  const facts = keyValues({ attempts: dispatch.attempts, last: dispatch.last_status, error: dispatch.last_error });
  if (facts) part.append(` ${facts}`);
  return part;
}

function attemptEntry(attempt, endpoint, number) {
  const latency = Number.isFinite(attempt.latency_ms) ? `${Math.round(attempt.latency_ms)}ms` : null;
  const text = attempt.answer ? String(attempt.answer) : "";
  const answer = text.length > 60 ? `${text.slice(0, 59)}…` : text || null;
  const detail = keyValues({ status: attempt.status_code, latency, error: attempt.error, answer });
  return entry(attempt.at, 6, number, "attempt", `sent to ${endpoint}`, detail, {
    "data-endpoint": endpoint,
    "data-status": attempt.status_code ?? "",
  });
}

function payloadButton(path) {
  const button = el("button", { type: "button", class: "payload quiet", "data-path": path }, "payload");
  button.title = "The raw payload, as received (admins only)";
  button.hidden = payloadAccess !== true;
  return button;
}

function drawTimeline(task) {
  const entries = timelineEntries(task);
  fillTable(byId("panel-timeline"), [
    { title: "at (UTC)", value: (e) => fmtPrecise(e.key === -Infinity ? null : e.at) || "—" },
    { title: "event", value: (e) => e.what },
    { title: "detail", value: (e) => e.detail, wrap: true },
    { title: "", value: (e) => (e.attrs["data-payload"] ? payloadButton(e.attrs["data-payload"]) : "") },
  ], entries, "Nothing happened to this task yet.", (e) => ({ "data-kind": e.kind, ...e.attrs }));
  // The service shows the newest entries of each kind; it counts the older ones it left out.
  const omitted = Object.entries((task.timeline || {}).omitted || {}).filter(([, n]) => n > 0);
  const note = byId("panel-omitted");
  note.textContent = omitted.length ? `Older entries not shown: ${omitted.map(([kind, n]) => `${kind} ${n}`).join(", ")}.` : "";
  note.hidden = omitted.length === 0;
}

// ---------------------------------------------------------------- raw payloads (admins)

const payloads = new Map();

async function fetchPayload(path) {
  if (payloads.has(path)) return payloads.get(path);
  const response = await fetch(path, { credentials: "same-origin", headers: { accept: "application/json" }, cache: "no-store" });
  if (response.status === 401 || response.status === 403) return null;
  if (!response.ok) throw new ApiError(`${new URL(path, window.location.origin).pathname} answered ${response.status}`, response.status);
  const payload = await response.json();
  payloads.set(path, payload);
  return payload;
}

// Whether this session may read raw payloads: the first payload route asked says so.
async function probePayloadAccess() {
  const first = byId("panel-timeline").querySelector("button.payload");
  if (payloadAccess === null && first) {
    try {
      payloadAccess = (await fetchPayload(first.dataset.path)) !== null;
    } catch {
      return; // unknown still: ask again with the next task
    }
  }
  for (const button of byId("panel-timeline").querySelectorAll("button.payload")) button.hidden = payloadAccess !== true;
}

// Characters that reorder or hide text (bidi embeddings, overrides, isolates and marks):
// in a raw payload each is shown as its `\uXXXX` escape, so `\u202Egnp.exe` never reads exe.png.
const BIDI_CONTROLS = /[\u061C\u200E\u200F\u202A-\u202E\u2066-\u2069]/g;

function visibleControls(text) {
  return text.replace(BIDI_CONTROLS, (c) => `\\u${c.charCodeAt(0).toString(16).toUpperCase().padStart(4, "0")}`);
}

function payloadText(payload) {
  let body = payload.body ?? "";
  if (payload.encoding === "utf-8") {
    try {
      body = JSON.stringify(JSON.parse(body), null, 2);
    } catch {
      // not JSON: shown as it came
    }
  }
  const headers = payload.headers && Object.keys(payload.headers).length ? `headers ${JSON.stringify(payload.headers, null, 2)}\n\n` : "";
  const encoding = payload.encoding === "base64" ? "body (not UTF-8: base64)" : "body";
  return visibleControls(`${headers}${encoding}\n${body}`);
}

async function togglePayload(button) {
  const row = button.closest("tr");
  const next = row.nextElementSibling;
  if (next && next.classList.contains("payload-row")) {
    next.remove();
    button.setAttribute("aria-expanded", "false");
    return;
  }
  const cell = el("td", { colspan: row.cells.length });
  const shown = el("tr", { class: "payload-row" });
  shown.append(cell);
  row.after(shown);
  button.setAttribute("aria-expanded", "true");
  try {
    const payload = await fetchPayload(button.dataset.path);
    cell.append(payload ? el("pre", { class: "payload" }, payloadText(payload)) : el("p", { class: "warn" }, "Raw payloads are for admin keys only."));
  } catch (error) {
    cell.append(el("p", { class: "warn" }, error.message));
  }
}

// ---------------------------------------------------------------- copy

async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const area = el("textarea", { readonly: "", class: "offscreen" });
  area.value = text;
  document.body.append(area);
  area.select();
  document.execCommand("copy");
  area.remove();
}

async function copyFrom(button) {
  try {
    await copyText(button.dataset.copy);
    button.textContent = "copied";
    button.dataset.copied = "true";
  } catch {
    button.textContent = "copy failed";
  }
  setTimeout(() => {
    button.textContent = "copy";
  }, COPIED_MS);
}

// ---------------------------------------------------------------- opening a task

async function openTask(ref) {
  shownRef = ref;
  const panel = byId("panel");
  panel.hidden = false;
  panel.dataset.state = "loading";
  panel.dataset.ref = ref;
  byId("panel-title").textContent = ref;
  byId("panel-status").textContent = "Loading…";
  for (const id of ["panel-summary", "panel-artifacts", "panel-timeline"]) byId(id).replaceChildren();
  try {
    const task = await api(`/v1/tasks/${encodeURIComponent(ref)}`);
    if (shownRef !== ref) return;
    delete task.callback_url; // carries a token: never shown
    drawSummary(task);
    drawTimeline(task);
    await Promise.all([loadArtifacts(ref), probePayloadAccess()]);
    if (shownRef !== ref) return;
    byId("panel-status").textContent = "";
    panel.dataset.state = "ready";
  } catch (error) {
    if (shownRef !== ref) return;
    byId("panel-status").textContent = error.message;
    panel.dataset.state = "error";
  }
}

function hidePanel() {
  shownRef = null;
  byId("panel").hidden = true;
  delete byId("panel").dataset.ref;
}

// ---------------------------------------------------------------- deep links: #task=<ref>

function hashRef() {
  const match = /^#task=(.+)$/.exec(window.location.hash);
  if (!match) return null;
  try {
    return decodeURIComponent(match[1]);
  } catch {
    return null; // a malformed link: nothing to open
  }
}

// The page follows its address: a new #task= opens that task, no #task= closes the panel.
function followHash() {
  const ref = hashRef();
  if (ref === null) {
    if (shownRef !== null) hidePanel();
  } else if (ref !== shownRef) {
    openTask(ref);
  }
}

// Opening a task is a step in the history (Back closes it again); the hash change opens it.
function showTask(ref) {
  if (ref === hashRef()) {
    if (ref !== shownRef) openTask(ref);
    return;
  }
  window.location.hash = `task=${encodeURIComponent(ref)}`;
}

function closeTask() {
  hidePanel();
  if (hashRef() !== null) history.pushState(null, "", `${window.location.pathname}${window.location.search}`);
}

// ---------------------------------------------------------------- wiring

function setAutoRefresh(on) {
  if (refreshTimer) clearInterval(refreshTimer);
  refreshTimer = on ? setInterval(refresh, REFRESH_MS) : null;
}

function fillStateFilter() {
  const select = byId("filter-state");
  for (const state of STATES) select.append(el("option", { value: state }, state));
}

function reloadTasks() {
  loadTasks(windowBounds()).catch((error) => showStatus([error.message]));
}

function wireTasks() {
  const filters = byId("task-filters");
  filters.addEventListener("submit", (event) => {
    event.preventDefault();
    reloadTasks();
  });
  filters.addEventListener("reset", () => setTimeout(reloadTasks));
  for (const id of ["filter-state", "filter-provider"]) byId(id).addEventListener("change", reloadTasks);
  byId("tasks-more").addEventListener("click", () => {
    loadTasks(windowBounds(), true).catch((error) => showStatus([error.message]));
  });
}

function onClick(event) {
  const target = event.target instanceof Element ? event.target : null;
  const button = target && target.closest("button.ref, button.copy, button.payload");
  if (!button) return;
  if (button.classList.contains("ref")) showTask(button.dataset.ref);
  else if (button.classList.contains("copy")) copyFrom(button);
  else togglePayload(button);
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
    if (ref) showTask(ref);
  });
  byId("panel-close").addEventListener("click", closeTask);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !byId("panel").hidden) closeTask();
  });
  document.addEventListener("click", onClick);
  window.addEventListener("hashchange", followHash);
  fillStateFilter();
  wireTasks();
}

wire();
refresh();
followHash();
