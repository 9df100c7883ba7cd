// expman serve's page. Routes (in the URL fragment): #/ the runs view with the
// charts of the selected runs, #/run/EXP/RUN a run page, #/compare?run=..&run=..
// Live data comes from one EventSource on /api/stream. The runs view keeps its state
// (selection, filters, smoothing, x axis, log y, grouping, the hyperparameter views and
// their brushes) in its URL, #/?run=..&expr=..:
// a reload or a shared link shows the same. A change of selection is a new history
// entry (back and forward step through selections); typing in a filter replaces it.
import { el, clear, getJSON, setColorIndex } from "./dom.js";
import { RunsTable, encodeId } from "./runs.js";
import { ChartPanel } from "./charts.js";
import { showRun, showCompare } from "./run.js";
import { initTheme } from "./theme.js";
import { GroupPanel } from "./groups.js";
import { HParamsView } from "./hparams.js";
import { AlertMarkers } from "./alerts.js";
import { MediaCompare } from "./media.js";

const app = document.getElementById("app");
const liveDot = document.getElementById("live-dot");
let home = null;          // the runs view, kept across routes
let stream = null;
let seenScan = null;      // the server's scan of the base dir whose new runs the page has
let runPanel = null;      // the run page's charts, fed by the stream too
let autoSelected = false; // the selection is the default one (kept out of the URL)
let applyingDefault = false;
let restoring = false;    // the view is being set from the URL: nothing written back meanwhile

function buildHome() {
  const tableRoot = el("div", { class: "runs-view" });
  const chartsRoot = el("div", { class: "charts", id: "charts" });
  const smoothVal = el("output", { text: "0" });
  const compareBtn = el("button", { id: "compare-btn", disabled: true, text: "compare selected",
    onclick: () => { location.hash = `#/compare?${new URLSearchParams(table.selected.size ? [...table.selected].map((r) => ["run", r]) : [])}`; } });
  const controls = el("div", { class: "controls chart-controls" },
    el("input", { id: "metric-filter", type: "search", placeholder: "filter metrics", "aria-label": "filter metrics",
      oninput: (e) => charts.setOption("filter", e.target.value) }),
    el("label", {}, "x ", el("select", { id: "x-axis", onchange: (e) => charts.setOption("x", e.target.value) },
      el("option", { value: "step", text: "step" }), el("option", { value: "rel", text: "relative time" }),
      el("option", { value: "time", text: "wall time" }))),
    el("label", {}, el("input", { id: "log-y", type: "checkbox", onchange: (e) => charts.setOption("log", e.target.checked) }), " log y"),
    el("label", {}, "smoothing ", el("input", { id: "smoothing", type: "range", min: "0", max: "0.99", step: "0.01", value: "0",
      oninput: (e) => { smoothVal.textContent = e.target.value; charts.setOption("smooth", Number(e.target.value)); } }), smoothVal),
    compareBtn);
  const groupsRoot = el("div", { class: "group-charts", id: "group-charts" });
  const hpRoot = el("div", { class: "hparams", id: "hparams" });
  const hint = el("p", { class: "muted", id: "charts-hint", text: "Select runs to see their charts." });
  const view = el("div", {}, tableRoot, hpRoot, el("h2", { text: "Charts" }), controls, hint, groupsRoot, chartsRoot);
  view.addEventListener("input", () => { saveState(); groups.optionsChanged(); });
  view.addEventListener("change", () => { saveState(); groups.optionsChanged(); });
  // a live run may log a metric its row does not show yet: its chart asks for it anyway
  const charts = new ChartPanel(chartsRoot, { has: (id, m) => {
    const r = table.rows.get(id);
    return !r || r.status === "RUNNING" || m in r.last_metrics;
  }, storageKey: () => document.getElementById("base").textContent });
  const table = new RunsTable(tableRoot, { onSelect: (ids) => select(ids) });
  const groups = new GroupPanel(groupsRoot, { rows: () => table.rows, opts: charts.opts });
  groups.onToggle = (on) => { chartsRoot.hidden = on; };
  controls.insertBefore(groups.controls, compareBtn);
  const hparams = new HParamsView(hpRoot, { onFilter: (ids) => { table.keep = ids; table.draw(); } });
  const alerts = new AlertMarkers(charts);
  const media = new MediaCompare(view);
  function select(ids) {
    if (!applyingDefault) autoSelected = false;
    const metrics = new Set();
    for (const id of ids) Object.keys(table.rows.get(id)?.last_metrics || {}).forEach((m) => metrics.add(m));
    charts.setRuns(ids, [...metrics]);
    groups.setRuns(ids, [...metrics]);
    alerts.load(ids.map((id) => table.rows.get(id)).filter(Boolean));
    media.setRuns(ids);
    hint.hidden = ids.length > 0;
    compareBtn.disabled = ids.length < 2;
    table.markSelected();
    connect();
    saveState(true);
  }
  return { view, table, charts, groups, hparams, select, alerts };
}

// URL parameter -> the control holding it (a checkbox's value is "1" when ticked)
const STATE = [["q", "text-filter"], ["status", "status-filter"], ["expr", "expr-filter"],
  ["metrics", "metric-filter"], ["x", "x-axis"], ["log", "log-y"], ["smooth", "smoothing"],
  ["groupby", "group-by"], ["band", "band-stat"], ["hp", "hp-show"], ["hpm", "hp-metric"],
  ["hps", "hp-summary"], ["hpp", "hp-params"], ["hpx", "hp-x"], ["brush", "hp-brush"]];

function urlState() {
  const hash = location.hash || "#/";
  return hash.startsWith("#/?") ? new URLSearchParams(hash.slice(3)) : new URLSearchParams();
}

const DEFAULTS = { x: "step", smooth: "0", band: "mean", hps: "last" };

function isHome() {
  return location.hash === "" || location.hash === "#/" || location.hash.startsWith("#/?");
}

// the controls as the URL says (a missing key: the default), through their own handlers
function applyState(params) {
  for (const [key, id] of STATE) {
    const value = params.get(key) ?? DEFAULTS[key] ?? "";
    const input = home.view.querySelector(`#${id}`);
    if (input.type === "checkbox") {
      if (input.checked === (value === "1")) continue;
      input.checked = value === "1";
    } else {
      if (input.value === value) continue;
      // a choice the page lists later (a param to group by, a metric): offered now
      if (input.tagName === "SELECT" && value && ![...input.options].some((o) => o.value === value)) input.append(new Option(value, value));
      input.value = value;
    }
    input.dispatchEvent(new Event(input.tagName === "SELECT" || input.type === "checkbox" ? "change" : "input"));
  }
}

// the selection the URL names (the runs of it listed so far), else the newest runs
function selectFromUrl() {
  const params = urlState();
  if (params.has("run")) {
    const wanted = params.getAll("run").filter((id) => id && home.table.rows.has(id));
    home.table.setSelected(wanted);
    return;
  }
  const newest = [...home.table.rows.values()].sort((a, b) => (b.start_time ?? 0) - (a.start_time ?? 0));
  applyingDefault = true;
  home.table.setSelected(newestRuns(newest));
  applyingDefault = false;
  autoSelected = true;
}

// back/forward within the runs view: the view as that URL says
function restore() {
  if (!isHome()) return;
  restoring = true;
  try {
    applyState(urlState());
    selectFromUrl();
  } finally {
    restoring = false;
  }
}

// push: a new history entry (a selection changed), else the current one replaced
function saveState(push = false) {
  if (!home || restoring || !isHome()) return;
  const q = new URLSearchParams();
  for (const [key, id] of STATE) {
    const input = home.view.querySelector(`#${id}`);
    const value = input.type === "checkbox" ? (input.checked ? "1" : "") : input.value;
    if (value && value !== DEFAULTS[key]) q.set(key, value);
  }
  if (autoSelected) { /* the newest runs, again on the next visit */ }
  else if (home.table.selected.size) home.table.selected.forEach((id) => q.append("run", id));
  else q.set("run", "");                   // nothing selected, on purpose: no default
  const hash = `#/?${q}`;
  if (hash === location.hash) return;
  if (push && !autoSelected && isHome() && location.hash.startsWith("#/?")) history.pushState(null, "", hash);
  else history.replaceState(null, "", hash);
}

// The runs list in pages, sorted by the server (newest first): the first page is
// drawn at once, the rest is added as it comes (filters and sorting then cover all).
// Each run gets its colour index from its place counted from the oldest.
const FIRST_PAGE = 500;
const NEXT_PAGE = 5000;
const DEFAULT_SELECTED = 5;       // the newest runs charted when nothing is selected
const DEFAULT_CHARTS = 100;       // ...unless their metrics would make more charts than this

// the newest runs (up to DEFAULT_SELECTED) whose metrics together fit DEFAULT_CHARTS:
// a run of 12,000 metrics is charted when asked for, never by default
function newestRuns(runs) {
  const ids = [], metrics = new Set();
  for (const r of runs) {
    if (ids.length >= DEFAULT_SELECTED) break;
    const names = Object.keys(r.last_metrics || {});
    if (new Set([...metrics, ...names]).size > DEFAULT_CHARTS) continue;
    names.forEach((m) => metrics.add(m));
    ids.push(r.id);
  }
  return ids;
}

async function loadRuns() {
  const first = await getJSON(`/api/runs?limit=${FIRST_PAGE}&sort=start_time&order=desc`);
  seenScan = first.scan;          // the stream announces the runs that came after it
  document.getElementById("base").textContent = first.base;
  first.runs.forEach((r, i) => setColorIndex(r.id, first.total - 1 - i));
  home.table.setRows(first.runs);
  home.groups.updateChoices();
  // the URL's selection (its runs as they are listed), else the newest runs
  const wanted = urlState().has("run") ? new Set(urlState().getAll("run").filter(Boolean)) : null;
  restoring = true;
  try { selectFromUrl(); } finally { restoring = false; }
  saveState();
  for (let offset = first.runs.length; offset < first.total; offset += NEXT_PAGE) {
    const page = await getJSON(`/api/runs?offset=${offset}&limit=${NEXT_PAGE}&sort=start_time&order=desc`);
    if (!page.runs.length) break;
    page.runs.forEach((r, i) => setColorIndex(r.id, first.total - 1 - offset - i));
    home.table.addRows(page.runs);
    home.groups.updateChoices();
    const more = wanted ? page.runs.filter((r) => wanted.has(r.id)).map((r) => r.id) : [];
    if (more.length) {
      restoring = true;
      try { home.table.setSelected([...home.table.selected, ...more]); } finally { restoring = false; }
    }
  }
}

// the newest runs listed again: the stream was away too long to say what came meanwhile
async function relist() {
  const first = await getJSON(`/api/runs?limit=${FIRST_PAGE}&sort=start_time&order=desc`);
  home.table.update(first.runs);
  home.groups.updateChoices();
}

// One stream: points of the selected runs, rows of live runs, new runs. A new stream
// starts from the scan the page has seen (since=): the runs that appeared while no
// stream was open are announced by the new one.
function connect() {
  if (stream) stream.close();
  const q = new URLSearchParams();
  const streamed = new Set(home.table.selected);
  if (runPanel) runPanel.runs.forEach((r) => streamed.add(r));
  streamed.forEach((r) => q.append("run", r));
  for (const r of home.table.rows.values()) if (r.status === "RUNNING") q.append("watch", r.id);
  if (seenScan !== null) q.set("since", seenScan);
  stream = new EventSource(`/api/stream?${q}`);
  stream.addEventListener("open", () => { liveDot.className = "on"; });
  stream.addEventListener("error", () => { liveDot.className = "off"; });
  stream.addEventListener("hello", (e) => {
    const h = JSON.parse(e.data);
    seenScan = h.scan;
    if (h.lost) relist().catch(() => { liveDot.className = "off"; });
  });
  stream.addEventListener("points", (e) => {
    const p = JSON.parse(e.data);
    home.charts.append(p.run, p.metric, p.start, p.steps, p.times, p.values);
    home.groups.append(p.run, p.metric);
    if (runPanel) runPanel.append(p.run, p.metric, p.start, p.steps, p.times, p.values);
  });
  stream.addEventListener("status", (e) => {
    const s = JSON.parse(e.data);
    const row = home.table.rows.get(s.run);
    if (row) { row.status = s.status; home.table.changed(); }
  });
  stream.addEventListener("runs", (e) => {
    const d = JSON.parse(e.data);
    seenScan = d.scan;
    home.table.update(d.rows);
    if (d.added.length) home.groups.updateChoices();
    home.alerts.load(d.rows.filter((r) => home.table.selected.has(r.id)));
    if (runPanel?.alerts) runPanel.alerts.load(d.rows.filter((r) => runPanel.runs.includes(r.id)));
    if (d.added.length) connect();       // watch the new live rows too
  });
}

async function route() {
  const hash = location.hash || "#/";
  runPanel = null;
  if (hash.startsWith("#/run/")) {
    const id = hash.slice(6).split("/").map(decodeURIComponent).join("/");
    runPanel = await showRun(app, id);
    connect();
    return;
  }
  if (hash.startsWith("#/compare")) {
    const ids = new URLSearchParams(hash.split("?")[1] || "").getAll("run");
    await showCompare(app, ids);
    return;
  }
  clear(app).append(home.view);
  home.table.draw();
  home.charts.charts.forEach((c) => c.invalidate());
}

async function main() {
  initTheme();
  home = buildHome();
  restoring = true;
  try { applyState(urlState()); } finally { restoring = false; }
  window.addEventListener("hashchange", route);
  window.addEventListener("popstate", restore);
  try {
    await loadRuns();
  } catch (e) {
    clear(app).append(el("p", { class: "error", text: `cannot list runs: ${e.message}` }));
    return;
  }
  await route();
  connect();
}

main();
export { encodeId };
