// One chart per metric for the selected runs, overlaid, in sections by the name's
// prefix (`train/`, `val/`; names without one first, `system/` last and folded);
// pinned charts come before all, in their own section. The server decimates
// each series for the chart's width (min/max buckets: no spike is lost);
// zooming asks again for the visible range, down to the raw points. Live points
// arrive from the event stream and are appended; charts out of view wait.
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import "./style.css";
import { el, clear, getJSON, runUrl, runColor, fmtNum } from "./dom.js";
import { emaDebiased } from "./ema.js";
import { xAxisOpts, yAxisOpts, xLabel, unitOf, fmtSI } from "./axes.js";
import { exportCsv, exportPng } from "./export.js";
import { markersPlugin } from "./markers.js";

const HEIGHT = 240;
const MAX_CHARTS = 60;        // past this many metrics, the filter picks the charts
const AXIS_LIKE = /(^|[/_.])(epoch|epochs|global_step|samples|tokens|iter|iteration)$/i;   // offered as x
const LIVE_REDRAW_MS = 500;   // live charts redraw together, at most this often

// Every live chart that changed is redrawn in one animation frame: one layout and
// paint for all of them, twice a second, however many charts are live.
const pending = new Set();
let redrawTimer = null;
function scheduleRedraw(chart) {
  pending.add(chart);
  if (redrawTimer) return;
  redrawTimer = setTimeout(() => requestAnimationFrame(() => {
    redrawTimer = null;
    const charts = [...pending];
    pending.clear();
    for (const c of charts) if (c.dirty && c.visible && c.plot) c.render();
  }), LIVE_REDRAW_MS);
}

export class ChartPanel {
  // has(id, metric): whether run id has the metric (its chart asks only those runs)
  // storageKey(): where the sections' folding is kept (per base dir)
  // overlay: a run's fork and rewind markers and faint abandoned branches (branches.js)
  // seriesUrl(id, query): where a series of the run id comes from (the run page's
  // per-rank curves are ids of their own); exported(id): whether the CSV export can ask
  // /api/export.csv for it (a run's, not a rank's series)
  constructor(root, { has = () => true, storageKey = () => "", overlay = null,
    seriesUrl = (id, q) => `${runUrl(id)}/series?${q}`, exported = () => true } = {}) {
    this.root = root;
    this.has = has;
    this.seriesUrl = seriesUrl;
    this.exported = exported;
    this.storageKey = storageKey;
    this.overlay = overlay;
    if (overlay) overlay.panel = this;
    this.sections = new Map();    // prefix -> {details, grid, count}
    this.runs = [];
    this.metrics = [];           // every metric name of the selected runs
    this.metricSet = new Set();
    this.matchCount = 0;
    this.capNote = el("p", { class: "muted cap-note", id: "charts-cap", hidden: true });
    root.prepend(this.capNote);
    this.opts = { x: "step", log: false, smooth: 0, filter: "" };
    this.charts = new Map();
    this.markerSources = [];     // (metric, xAxis, runIds) -> [{x, label, kind}]
    this.observer = new IntersectionObserver((entries) => {
      for (const e of entries) {
        const chart = e.target._chart;
        if (!chart) continue;
        chart.visible = e.isIntersecting;
        if (chart.visible) chart.wake();
      }
    }, { rootMargin: "200px" });
    window.addEventListener("expman-theme", () => this.charts.forEach((c) => c.rebuild()));
    let timer = null;
    window.addEventListener("resize", () => {
      clearTimeout(timer);
      timer = setTimeout(() => this.charts.forEach((c) => c.resize()), 150);
    });
  }

  // ids: selected run ids; metrics: the union of their metric names
  setRuns(ids, metrics) {
    const same = ids.length === this.runs.length && ids.every((x, i) => x === this.runs[i]);
    const before = new Set(this.runs), now = new Set(ids);
    const change = { added: ids.filter((x) => !before.has(x)), removed: this.runs.filter((x) => !now.has(x)) };
    this.runs = ids.slice();
    this.metrics = metrics;
    this.metricSet = new Set(metrics);
    this.sync(same ? false : change);
  }

  // The charts there are: every metric's, or when there are more than MAX_CHARTS
  // (a run may log 12,000 names), the pinned ones and the first MAX_CHARTS the metric
  // filter matches: the page never builds a chart per name of such a run.
  // change: the runs added to and removed from the selection (false: none)
  sync(change = false) {
    const names = this.chartedNames();
    const wanted = new Set(names);
    for (const [name, chart] of this.charts) {
      if (!wanted.has(name)) { chart.destroy(); this.charts.delete(name); }
      else if (change) chart.changeRuns(change.added, change.removed);
    }
    for (const name of names) if (!this.charts.has(name)) this.charts.set(name, new Chart(this, name));
    const over = this.metrics.length > MAX_CHARTS;
    this.capNote.hidden = !over;
    if (over) {
      this.capNote.textContent = `${this.metrics.length.toLocaleString()} metrics: ${names.length} charted ` +
        `(${this.matchCount.toLocaleString()} match the filter); filter metrics by name to chart others`;
    }
    this.order();
  }

  // per list of names, once: the names sorted, and those named like an x axis
  derived() {
    if (this.derivedFrom !== this.metrics) {
      this.derivedFrom = this.metrics;
      this.sortedNames = this.metrics.length > MAX_CHARTS ? [...this.metrics].sort() : this.metrics;
      this.axisLike = this.metrics.filter((m) => AXIS_LIKE.test(m)).slice(0, 20);
    }
    return this;
  }

  chartedNames() {
    if (this.metrics.length <= MAX_CHARTS) return this.metrics;
    const f = this.opts.filter.trim().toLowerCase();
    const pinned = this.pinned();
    const out = this.metrics.filter((m) => pinned.has(m));
    let matched = 0;
    for (const m of this.derived().sortedNames) {
      if (f && !m.toLowerCase().includes(f)) continue;
      matched++;
      if (out.length < MAX_CHARTS && !pinned.has(m)) out.push(m);
    }
    this.matchCount = matched;
    return out;
  }

  setOption(key, value) {
    this.opts[key] = value;
    if (key === "filter") { if (this.metrics.length > MAX_CHARTS) this.sync(); else this.order(); return; }
    if (key === "x") this.charts.forEach((c) => { c.zoom = null; c.invalidate(); });
    else this.charts.forEach((c) => c.rebuild());
  }

  // a chart for a metric seen live (none while the metrics are past MAX_CHARTS and the
  // filter leaves it out)
  ensure(name) {
    if (!this.metricSet.has(name)) {
      this.metrics = [...this.metrics, name];
      this.metricSet.add(name);
      this.sync();
    }
    return this.charts.get(name);
  }

  order() {
    const f = this.opts.filter.trim().toLowerCase();
    const bySection = new Map();
    const pinned = this.pinned();
    for (const name of [...this.charts.keys()].sort()) {
      const key = pinned.has(name) ? PINNED : sectionOf(name);
      this.charts.get(name).showPinned(key === PINNED);
      if (!bySection.has(key)) bySection.set(key, []);
      bySection.get(key).push(name);
    }
    const frag = document.createDocumentFragment();
    let shown = 0;
    for (const key of [...bySection.keys()].sort(sectionOrder)) {
      const sec = this.section(key);
      let inSection = 0;
      for (const name of bySection.get(key)) {
        const c = this.charts.get(name);
        const hide = f && !name.toLowerCase().includes(f);
        c.card.hidden = !!hide;
        if (!hide) inSection++;
        sec.grid.append(c.card);
      }
      sec.count.textContent = `${inSection} chart${inSection === 1 ? "" : "s"}`;
      sec.details.hidden = inSection === 0;
      shown += inSection;
      frag.append(sec.details);
    }
    for (const [key, sec] of this.sections) {
      if (!bySection.has(key)) { sec.details.remove(); this.sections.delete(key); }
    }
    this.root.append(frag);
    this.root.dataset.charts = String(shown);
  }

  section(key) {
    let sec = this.sections.get(key);
    if (sec) return sec;
    const grid = el("div", { class: "charts-grid" });
    const count = el("span", { class: "section-count" });
    const details = el("details", { class: "chart-section", "data-section": key === PINNED ? "pinned" : key },
      el("summary", {}, el("span", { class: "section-name",
        text: key === PINNED ? "pinned" : key ? `${key}/` : "metrics" }), count), grid);
    details.open = !this.folded(key);
    details.addEventListener("toggle", () => this.saveFolded(key, !details.open));
    sec = { details, grid, count };
    this.sections.set(key, sec);
    return sec;
  }

  // folding and pins kept in localStorage per base dir
  stored(what, empty) {
    try { return JSON.parse(localStorage.getItem(`expman.${what}:${this.storageKey()}`) || "null") ?? empty; }
    catch { return empty; }
  }

  store(what, value) {
    try { localStorage.setItem(`expman.${what}:${this.storageKey()}`, JSON.stringify(value)); } catch { /* full or off */ }
  }

  pinned() { return new Set(this.stored("pinned", [])); }

  togglePin(name) {
    const pins = this.pinned();
    if (pins.has(name)) pins.delete(name); else pins.add(name);
    this.store("pinned", [...pins]);
    this.sync();
  }

  // {prefix: true when folded}
  foldState() { return this.stored("folded", {}); }

  folded(key) {
    const state = this.foldState();
    return key in state ? !!state[key] : key === "system";
  }

  saveFolded(key, folded) {
    const state = this.foldState();
    if (state[key] === folded || (!(key in state) && folded === (key === "system"))) return;
    state[key] = folded;
    this.store("folded", state);
  }

  // Markers (markers.js) from a source: source(metric, xAxis, runIds) gives a chart's
  // [{x, label, kind}] (alerts.js: alerts at their step); asked on every draw.
  addMarkers(source) {
    this.markerSources.push(source);
    this.redrawMarkers();
  }

  markersFor(metric, xAxis, runs) {
    return this.markerSources.flatMap((source) => source(metric, xAxis, runs) || []);
  }

  // the markers changed: charts drawn show them at once
  redrawMarkers() {
    this.charts.forEach((c) => { if (c.plot) c.plot.redraw(false, false); });
  }

  // live points from the event stream
  append(run, metric, start, steps, times, values) {
    if (!this.runs.includes(run)) return;
    this.ensure(metric)?.append(run, start, steps, times, values);
  }
}

class Chart {
  constructor(panel, metric) {
    this.panel = panel;
    this.metric = metric;
    this.data = new Map();       // run id -> {x, y, count, raw, total, start}
    this.zoom = null;            // [min, max] of x while zoomed
    this.plot = null;
    this.visible = false;
    this.loaded = false;         // data matches the selection and options
    this.dirty = false;          // data changed while out of view
    this.loading = null;
    this.info = el("span", { class: "chart-info" });
    this.pin = el("button", { class: "pin", type: "button", title: "pin this chart to the top", text: "pin",
      onclick: () => panel.togglePin(metric) });
    this.holder = el("div", { class: "chart-plot" });
    this.ownX = panel.stored("xaxis", {})[metric] || "";    // this chart's own x axis ("": the page's)
    this.xPick = this.xPicker();
    const csv = el("button", { class: "export export-csv", type: "button", text: "CSV",
      title: "download every point of the visible range (not only those drawn) as CSV",
      onclick: () => exportCsv(metric, this.panel.runs.filter((id) => this.data.has(id) && this.panel.exported(id)),
        this.xAxis, this.zoom) });
    const png = el("button", { class: "export export-png", type: "button", text: "PNG", title: "download this chart as PNG",
      onclick: () => { if (this.plot) exportPng(metric, this.plot, this.panel.runs.filter((id) => this.data.has(id))); } });
    this.card = el("section", { class: "chart", "data-metric": metric },
      el("h3", {}, el("span", { class: "chart-title", text: metric }), this.info, this.pin, png, csv, this.xPick), this.holder);
    this.card._chart = this;
    this.holder.addEventListener("dblclick", () => { if (this.zoom) { this.zoom = null; this.invalidate(); } });
    panel.observer.observe(this.card);
  }

  // the page's x axis; system series (sampled on a timer, their "step" is only a sample
  // count) are drawn on relative time when the page says step
  get xAxis() {
    if (this.ownX) return this.ownX;
    const x = this.panel.opts.x;
    return x === "step" && this.metric.startsWith("system/") ? "rel" : x;
  }

  // The chart's own x axis: the page's, step, time, or another metric of the run
  // (those named like an axis listed; "other metric..." takes any name). Kept per
  // base dir in localStorage (expman.xaxis:NAME).
  xPicker() {
    const axisLike = this.panel.derived().axisLike.filter((m) => m !== this.metric);
    const own = this.ownX.startsWith("metric:") ? this.ownX.slice(7) : null;
    const names = own && !axisLike.includes(own) ? [...axisLike, own] : axisLike;
    const select = el("select", { class: "x-pick", "aria-label": `x axis of ${this.metric}`, title: "x axis of this chart" },
      el("option", { value: "", text: "x: page's" }), el("option", { value: "step", text: "x: step" }),
      el("option", { value: "rel", text: "x: relative time" }), el("option", { value: "time", text: "x: wall time" }),
      names.map((m) => el("option", { value: `metric:${m}`, text: `x: ${m}` })),
      el("option", { value: "other", text: "x: other metric…" }));
    select.value = this.ownX;
    const list = el("datalist", { id: `x-metrics-${Math.random().toString(36).slice(2)}` });
    const other = el("input", { type: "search", class: "x-metric", placeholder: "metric as x", hidden: true,
      list: list.id, "aria-label": `x metric of ${this.metric}` });
    other.addEventListener("input", () => {
      const q = other.value.toLowerCase();
      const found = this.panel.metrics.filter((m) => m.toLowerCase().includes(q)).slice(0, 50);
      list.replaceChildren(...found.map((m) => el("option", { value: m })));
    });
    other.addEventListener("change", () => {
      if (!this.panel.metricSet.has(other.value)) return;
      const opt = el("option", { value: `metric:${other.value}`, text: `x: ${other.value}` });
      select.insertBefore(opt, select.lastChild);
      select.value = opt.value;
      other.hidden = true;
      this.setX(opt.value);
    });
    select.addEventListener("change", () => {
      other.hidden = select.value !== "other";
      if (select.value === "other") { other.focus(); return; }
      this.setX(select.value);
    });
    return el("span", { class: "x-pick-box" }, select, other, list);
  }

  setX(axis) {
    this.ownX = axis;
    const kept = this.panel.stored("xaxis", {});
    if (axis) kept[this.metric] = axis; else delete kept[this.metric];
    this.panel.store("xaxis", kept);
    this.zoom = null;
    this.data.clear();
    if (this.plot) { this.plot.destroy(); this.plot = null; }
    this.invalidate();
  }

  showPinned(on) {
    this.pin.textContent = on ? "unpin" : "pin";
    this.pin.setAttribute("aria-pressed", String(on));
  }

  get width() { return Math.max(200, this.holder.clientWidth || this.card.clientWidth - 24 || 600); }

  invalidate() {
    this.loaded = false;
    if (this.visible) this.wake();
  }

  // Runs added to or removed from the selection: a chart holding its data asks only
  // for the added runs that have its metric (one request, not one per run charted).
  changeRuns(added, removed) {
    if (!this.loaded || this.zoom || !this.visible) { this.invalidate(); return; }
    removed.forEach((id) => this.data.delete(id));
    const ask = added.filter((id) => this.panel.has(id, this.metric));
    if (ask.length === 1 && !removed.length) this.load(ask[0]);
    else if (ask.length) this.invalidate();
    else this.render(true);
  }

  wake() {
    if (!this.loaded) this.load();
    else if (this.dirty) this.render();
  }

  async load(onlyRun) {
    const opts = this.panel.opts;
    const runs = (onlyRun ? [onlyRun] : this.panel.runs).filter((id) => this.panel.has(id, this.metric));
    const ticket = {};
    this.loading = ticket;
    const q = new URLSearchParams({ metric: this.metric, x: this.xAxis, points: String(this.width) });
    if (this.zoom) { q.set("from", String(this.zoom[0])); q.set("to", String(this.zoom[1])); }
    const faint = this.panel.overlay && !onlyRun ? this.panel.overlay.series(this.metric, q) : null;
    const results = await Promise.all(runs.map((id) =>
      getJSON(this.panel.seriesUrl(id, q)).then((r) => [id, r]).catch(() => [id, null])));
    if (faint) this.faint = await faint;
    if (this.loading !== ticket && !onlyRun) return;       // a newer load won
    if (!onlyRun) this.data.clear();
    for (const [id, r] of results) {
      if (!r) { this.data.delete(id); continue; }
      this.data.set(id, { x: r.x, y: r.y, count: r.count, raw: r.raw, total: r.total,
        start: r.start_time ?? (r.count ? null : null), fetchedWidth: this.width, appendAt: r.append_at === undefined ? 0 : r.append_at });
    }
    this.loaded = true;
    this.render(true);
  }

  append(run, start, steps, times, values) {
    const d = this.data.get(run);
    if (!this.loaded || !d) { this.invalidate(); return; }
    if (d.appendAt === null) { this.load(run); return; }    // a branched run: fold again
    if (start === 0 && d.count > d.appendAt) { this.load(run); return; }  // the run was rewritten
    start += d.appendAt;                                    // after a fork's inherited points
    if (start > d.count) { this.load(run); return; }        // a gap: ask again
    const skip = d.count - start;
    if (skip >= steps.length) return;
    d.count = start + steps.length;
    if (this.zoom) return;                                  // a zoomed view stays put
    const axis = this.xAxis;
    if (axis.startsWith("metric:")) {                       // x from another metric: the server's
      if (!this.reloading) this.reloading = setTimeout(() => { this.reloading = null; this.load(); }, 1000);
      return;
    }
    if (d.start == null && times.length) d.start = times[0];
    for (let i = skip; i < steps.length; i++) {
      d.x.push(axis === "step" ? steps[i] : axis === "time" ? times[i] : times[i] - d.start);
      d.y.push(values[i]);
    }
    if (d.x.length > 8 * this.width) { this.load(run); return; }   // decimate again
    this.dirty = true;
    if (this.visible) scheduleRedraw(this);
  }

  rebuild() {
    if (this.plot) { this.plot.destroy(); this.plot = null; }
    if (this.loaded) this.render(true);
  }

  render(fresh = false) {
    this.dirty = false;
    const opts = this.panel.opts;
    const ids = this.panel.runs.filter((id) => this.data.has(id));
    const faint = this.faint || [];
    const tables = ids.map((id) => sortedTable(this.data.get(id), opts.log))
      .concat(faint.map((f) => sortedTable(f, opts.log)));
    const joined = tables.length ? uPlot.join(tables) : [[]];
    const data = [joined[0]];
    const xAxis = this.xAxis;
    const series = [{ label: xLabel(xAxis) }];
    let lastX = -Infinity, points = 0, hiddenLog = 0;
    const unit = unitOf(this.metric);
    const legend = (u, v) => (v === null || v === undefined ? "--" : unit ? fmtSI(v, unit) : fmtNum(v));
    ids.forEach((id, i) => {
      const ys = joined[i + 1];
      const d = this.data.get(id);
      points += d.count;
      if (d.x.length) lastX = Math.max(lastX, d.x[d.x.length - 1]);
      if (opts.log) hiddenLog += d.y.filter((v) => v !== null && v <= 0).length;
      const color = runColor(id);
      if (opts.smooth > 0) {
        data.push(ys, smoothAligned(ys, opts.smooth));
        series.push({ label: `${id} (raw)`, stroke: runColor(id, 0.25), width: 1, spanGaps: true },
          { label: id, stroke: color, width: 1.5, spanGaps: true, value: legend });
      } else {
        data.push(ys);
        series.push({ label: id, stroke: color, width: 1.25, spanGaps: true, value: legend });
      }
    });
    faint.forEach((f, j) => {
      data.push(joined[ids.length + 1 + j]);
      series.push({ label: f.label, stroke: this.panel.overlay.color(f.run), width: 1, dash: [4, 4], spanGaps: true, value: legend });
    });
    const overlay = this.panel.overlay;
    const start = ids.length ? this.data.get(ids[0]).start : null;
    this.card.dataset.faint = String(faint.length);
    this.card.dataset.faintPoints = String(faint.reduce((n, f) => n + f.x.length, 0));
    this.card.dataset.branchMarkers = overlay ? JSON.stringify(overlay.markers(xAxis, start).map((m) => [m.kind, m.x])) : "";
    this.card.dataset.series = String(ids.length);
    this.card.dataset.lastX = lastX === -Infinity ? "" : String(lastX);
    this.card.dataset.points = String(points);
    this.card.dataset.drawn = String(data[0].length);
    this.card.dataset.log = String(opts.log);
    this.card.dataset.xAxis = xAxis;
    this.card.dataset.smooth = String(opts.smooth);
    this.card.dataset.zoomed = this.zoom ? `${this.zoom[0]},${this.zoom[1]}` : "";
    const raw = ids.every((id) => this.data.get(id).raw);
    this.info.textContent = `${points.toLocaleString()} points` + (raw ? "" : ", min/max per pixel") +
      (this.zoom ? " · zoomed (double-click to reset)" : "") +
      (hiddenLog ? ` · ${hiddenLog} values ≤ 0 not shown on log scale` : "");
    const sameShape = this.plot && this.plot.series.length === series.length && !fresh;
    if (sameShape) {
      this.plot.setData(data, !this.zoom);
      return;
    }
    if (this.plot) this.plot.destroy();
    this.plot = new uPlot({
      width: this.width,
      height: HEIGHT,
      scales: {
        x: { time: xAxis === "time", ...(this.zoom ? { min: this.zoom[0], max: this.zoom[1], auto: false } : {}) },
        y: opts.log ? { distr: 3, log: 10 } : {},
      },
      axes: [xAxisOpts(xAxis, xLabel(xAxis)), yAxisOpts(this.metric)],
      series,
      cursor: { drag: { x: true, y: false, setScale: false }, bind: { dblclick: () => null } },
      hooks: {
        draw: overlay ? [(u) => overlay.draw(u, xAxis, start)] : [],
        setSelect: [zoomOnDrag(this)],
      },
      legend: { live: true },
      plugins: [markersPlugin(() => this.panel.markersFor(this.metric, this.xAxis,
        this.panel.runs.filter((id) => this.data.has(id))))],
    }, data, this.holder);
  }

  resize() {
    if (this.plot) this.plot.setSize({ width: this.width, height: HEIGHT });
  }

  destroy() {
    this.panel.observer.unobserve(this.card);
    if (this.plot) this.plot.destroy();
    this.card.remove();
  }
}

const PINNED = "\u0000pinned";   // the pinned charts' section (no metric prefix is this)

// "train/loss" -> "train"; "loss" -> "" (the user's own metrics, first)
// A drag across a chart zooms it: the chart asks for the dragged x range again
// (raw points once few enough), double-click goes back. For per-run and band charts.
export function zoomOnDrag(chart) {
  return (u) => {
    if (u.select.width < 3) return;
    const lo = u.posToVal(u.select.left, "x");
    const hi = u.posToVal(u.select.left + u.select.width, "x");
    u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
    chart.zoom = [lo, hi];
    chart.invalidate();
  };
}

export function sectionOf(name) {
  const i = name.indexOf("/");
  return i > 0 ? name.slice(0, i) : "";
}

export function sectionOrder(a, b) {
  const rank = (k) => (k === PINNED ? -1 : k === "" ? 0 : k === "system" ? 2 : 1);
  return rank(a) - rank(b) || (a < b ? -1 : a > b ? 1 : 0);
}

// [x, y] sorted by x (uPlot.join needs ascending x); non-finite and, on a log
// scale, non-positive values become gaps.
function sortedTable(d, log) {
  let xs = d.x, ys = d.y;
  let sorted = true;
  for (let i = 1; i < xs.length; i++) if (xs[i] < xs[i - 1]) { sorted = false; break; }
  if (!sorted) {
    const idx = xs.map((_, i) => i).sort((a, b) => xs[a] - xs[b] || a - b);
    xs = idx.map((i) => xs[i]);
    ys = idx.map((i) => ys[i]);
  }
  ys = ys.map((v) => (v === null || !isFinite(v) || (log && v <= 0) ? null : v));
  return [xs, ys];
}

// EMA over one run's points in the joined table (gaps from other runs skipped).
function smoothAligned(ys, w) {
  const idx = [], vals = [];
  ys.forEach((v, i) => { if (v !== null && v !== undefined) { idx.push(i); vals.push(v); } });
  const sm = emaDebiased(vals, w);
  const out = new Array(ys.length).fill(null);
  idx.forEach((i, k) => { out[i] = sm[k]; });
  return out;
}
