// Groups with bands: the selected runs grouped by a param, by the `group` the
// library records, by experiment or by tag; each group one colour, drawn as its
// mean (or median) line inside a min-max band. The server computes the bands
// (/api/bands) over every point of every run of a group, per pixel column, so
// no spike is lost; live points make a chart ask again (at most every
// LIVE_RELOAD_MS). The group-by choice and the statistic live in the URL
// (`groupby`, `band`), through the page's controls #group-by and #band-stat.
import uPlot from "uplot";
import { el, clear, flatten, display, fmtNum, PALETTE } from "./dom.js";
import { sectionOf, sectionOrder, zoomOnDrag } from "./charts.js";

const HEIGHT = 240;
const LIVE_RELOAD_MS = 250;
const BASE_BYS = [["", "no grouping"], ["group", "group"], ["experiment", "experiment"], ["tag", "tag"]];
const collator = new Intl.Collator(undefined, { numeric: true });

// label -> [run ids], in label order, for a group-by choice
export function groupRuns(rows, by) {
  const groups = new Map(), keys = new Map();    // label -> ids; label -> what it sorts by
  const add = (label, id, key = label) => {
    if (!groups.has(label)) { groups.set(label, []); keys.set(label, key); }
    groups.get(label).push(id);
  };
  for (const r of rows) {
    if (by === "group") add(r.group ? `group ${r.group}` : "no group", r.id);
    else if (by === "experiment") add(r.experiment, r.id);
    else if (by === "tag") {
      const tags = r.tags || [];
      if (!tags.length) add("no tag", r.id);
      for (const t of tags) add(`tag ${t}`, r.id);
    } else if (by.startsWith("param:")) {
      const name = by.slice(6);
      const flat = r.flatParams || flatten(r.params || {});
      if (name in flat) add(`${name}=${display(flat[name])}`, r.id, flat[name]);
      else add(`${name} unset`, r.id, "\uffff");    // runs without the param: last
    }
  }
  const order = (a, b) => {
    const ka = keys.get(a), kb = keys.get(b);
    if (typeof ka === "number" && typeof kb === "number") return ka - kb;
    if (typeof ka === "number" || typeof kb === "number") return typeof ka === "number" ? -1 : 1;
    return collator.compare(String(ka), String(kb));
  };
  return new Map([...groups.entries()].sort((a, b) => order(a[0], b[0])));
}

function rgba(hex, alpha) {
  const [r, g, b] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
  return `rgba(${r}, ${g}, ${b}, ${alpha})`;
}

export class GroupPanel {
  // rows(): the runs view's rows (id -> row); opts: the chart panel's options (x, log, filter)
  constructor(root, { rows, opts }) {
    this.root = root;
    this.rows = rows;
    this.opts = opts;
    this.by = "";
    this.stat = "mean";
    this.ids = [];
    this.metrics = [];
    this.groups = new Map();
    this.charts = new Map();
    this.seen = { x: opts.x, log: opts.log, filter: opts.filter };
    this.bySelect = el("select", { id: "group-by", "aria-label": "group runs by",
      onchange: (e) => this.setBy(e.target.value) }, BASE_BYS.map(([v, t]) => el("option", { value: v, text: t })));
    this.statSelect = el("select", { id: "band-stat", "aria-label": "group line",
      onchange: (e) => { this.stat = e.target.value; this.reload(); } },
      el("option", { value: "mean", text: "mean" }), el("option", { value: "median", text: "median" }));
    this.controls = el("span", { class: "group-controls" },
      el("label", {}, "group by ", this.bySelect), el("label", {}, " line ", this.statSelect, " + min–max band"));
    this.legend = el("div", { class: "group-legend", id: "group-legend" });
    this.grid = el("div", { class: "charts" });
    root.append(this.legend, this.grid);
    root.hidden = true;
    this.observer = new IntersectionObserver((entries) => {
      for (const e of entries) {
        const c = e.target._group;
        if (!c) continue;
        c.visible = e.isIntersecting;
        if (c.visible && !c.loaded) c.load();
      }
    }, { rootMargin: "200px" });
  }

  get active() { return !!this.by; }

  // the params of the runs listed, as group-by choices (kept: a choice from the URL)
  updateChoices() {
    const names = new Set();
    for (const r of this.rows().values()) for (const k of Object.keys(r.flatParams || {})) names.add(k);
    const want = [...BASE_BYS.map(([v]) => v), ...[...names].sort().map((k) => `param:${k}`)];
    if (this.by && !want.includes(this.by)) want.push(this.by);
    const have = [...this.bySelect.options].map((o) => o.value);
    if (have.length === want.length && have.every((v, i) => v === want[i])) return;
    clear(this.bySelect).append(...want.map((v) => el("option", { value: v,
      text: BASE_BYS.find(([b]) => b === v)?.[1] ?? v.replace(/^param:/, "param ") })));
    this.bySelect.value = this.by;
  }

  setBy(by) {
    this.by = by;
    this.root.hidden = !by;
    this.onToggle?.(!!by);
    this.setRuns(this.ids, this.metrics);
  }

  setRuns(ids, metrics) {
    this.ids = ids.slice();
    this.metrics = metrics.slice();
    if (!this.by) { this.clearCharts(); return; }
    const rows = this.ids.map((id) => this.rows().get(id)).filter(Boolean);
    this.groups = groupRuns(rows, this.by);
    this.drawLegend();
    for (const name of [...this.charts.keys()]) {
      if (!metrics.includes(name)) { this.charts.get(name).destroy(); this.charts.delete(name); }
    }
    for (const name of metrics) if (!this.charts.has(name)) this.charts.set(name, new BandChart(this, name));
    this.order();
    this.reload();
  }

  clearCharts() {
    this.charts.forEach((c) => c.destroy());
    this.charts.clear();
    clear(this.grid);
    clear(this.legend);
  }

  color(label) {
    const i = [...this.groups.keys()].indexOf(label);
    return PALETTE[(i < 0 ? 0 : i) % PALETTE.length];
  }

  drawLegend() {
    clear(this.legend).append(...[...this.groups.entries()].map(([label, ids]) => {
      const sw = el("span", { class: "swatch" });
      sw.style.background = this.color(label);
      return el("span", { class: "group-item", "data-group": label, title: ids.join("\n") },
        sw, ` ${label} (${ids.length} run${ids.length === 1 ? "" : "s"})`);
    }));
  }

  // in sections by the name's prefix, as the per-run charts (system/ last and folded)
  order() {
    const f = (this.opts.filter || "").trim().toLowerCase();
    const bySection = new Map();
    for (const name of [...this.charts.keys()].sort()) {
      const key = sectionOf(name);
      if (!bySection.has(key)) bySection.set(key, []);
      bySection.get(key).push(name);
    }
    const sections = [...bySection.keys()].sort(sectionOrder).map((key) => {
      const grid = el("div", { class: "charts-grid" });
      let shown = 0;
      for (const name of bySection.get(key)) {
        const c = this.charts.get(name);
        c.card.hidden = !!f && !name.toLowerCase().includes(f);
        if (!c.card.hidden) shown++;
        grid.append(c.card);
      }
      const details = el("details", { class: "chart-section", "data-section": key, hidden: shown === 0 },
        el("summary", {}, el("span", { class: "section-name", text: key ? `${key}/` : "metrics" }),
          el("span", { class: "section-count", text: `${shown} chart${shown === 1 ? "" : "s"}` })), grid);
      details.open = key !== "system";
      return details;
    });
    clear(this.grid).append(...sections);
  }

  reload() { this.charts.forEach((c) => c.invalidate()); }

  // the page's options changed (x axis, log scale, metric filter)
  optionsChanged() {
    const o = this.opts, s = this.seen;
    if (o.filter !== s.filter) this.order();
    if (o.x !== s.x) this.charts.forEach((c) => { c.zoom = null; });
    if (o.x !== s.x || o.log !== s.log) this.reload();
    this.seen = { x: o.x, log: o.log, filter: o.filter };
  }

  // live points of a run: its groups' chart of that metric asks again
  append(run, metric) {
    if (!this.by || !this.ids.includes(run)) return;
    const c = this.charts.get(metric);
    if (c) c.liveReload();
    else if (!this.metrics.includes(metric)) { this.metrics.push(metric); this.setRuns(this.ids, this.metrics); }
  }
}

class BandChart {
  constructor(panel, metric) {
    this.panel = panel;
    this.metric = metric;
    this.zoom = null;
    this.plot = null;
    this.answer = null;
    this.visible = false;
    this.loaded = false;
    this.ticket = null;
    this.timer = null;
    this.info = el("span", { class: "chart-info" });
    this.holder = el("div", { class: "chart-plot" });
    this.card = el("section", { class: "chart band-chart", "data-metric": metric },
      el("h3", {}, el("span", { class: "chart-title", text: metric }), this.info), this.holder);
    this.card._group = this;
    this.holder.addEventListener("dblclick", () => { if (this.zoom) { this.zoom = null; this.invalidate(); } });
    panel.observer.observe(this.card);
  }

  get xAxis() {
    const x = this.panel.opts.x;
    return x === "step" && this.metric.startsWith("system/") ? "rel" : x;
  }

  get width() { return Math.max(200, this.holder.clientWidth || this.card.clientWidth - 24 || 600); }

  invalidate() {
    this.loaded = false;
    if (this.visible) this.load();
  }

  liveReload() {
    if (this.zoom || this.timer) return;
    this.timer = setTimeout(() => { this.timer = null; this.invalidate(); }, LIVE_RELOAD_MS);
  }

  async load() {
    const q = new URLSearchParams({ metric: this.metric, x: this.xAxis, points: String(this.width),
      stat: this.panel.stat });
    if (this.zoom) { q.set("from", String(this.zoom[0])); q.set("to", String(this.zoom[1])); }
    for (const [label, ids] of this.panel.groups) {
      q.append("group", label);
      ids.forEach((id) => q.append("run", id));
    }
    const ticket = {};
    this.ticket = ticket;
    this.loaded = true;
    let answer;
    try {
      const res = await fetch(`/api/bands?${q}`);
      if (!res.ok) throw new Error(`${res.status} ${(await res.text()).slice(0, 200)}`);
      answer = await res.json();
    } catch (e) {
      if (this.ticket === ticket) { this.info.textContent = `cannot load: ${e.message}`; this.loaded = false; }
      return;
    }
    if (this.ticket !== ticket) return;
    this.answer = answer;
    this.render();
  }

  render() {
    const a = this.answer;
    const log = this.panel.opts.log;
    const clean = (ys) => ys.map((v) => (v === null || typeof v !== "number" || !isFinite(v) || (log && v <= 0) ? null : v));
    const data = [a.x];
    const series = [{ label: this.xAxis }];
    const bands = [];
    let points = 0;
    const shown = a.groups.filter((g) => g.points > 0);
    for (const g of shown) {
      const color = this.panel.color(g.label);
      points += g.points;
      const hi = data.length;
      data.push(clean(g.hi), clean(g.lo), clean(g.mid));
      series.push({ label: `${g.label} max`, stroke: rgba(color, 0.35), width: 0.5, spanGaps: true, value: fmtVal },
        { label: `${g.label} min`, stroke: rgba(color, 0.35), width: 0.5, spanGaps: true, value: fmtVal },
        { label: `${g.label} ${a.stat}`, stroke: color, width: 1.75, spanGaps: true, value: fmtVal });
      bands.push({ series: [hi, hi + 1], fill: rgba(color, 0.18) });
    }
    this.card.dataset.groups = String(shown.length);
    this.card.dataset.columns = String(a.x.length);
    this.card.dataset.points = String(points);
    this.card.dataset.exact = String(a.exact);
    this.card.dataset.stat = a.stat;
    this.card.dataset.xAxis = a.x_axis;
    this.card.dataset.lastX = a.x.length ? String(a.x[a.x.length - 1]) : "";
    this.info.textContent = `${shown.length} group${shown.length === 1 ? "" : "s"} · ${points.toLocaleString()} points` +
      (a.exact ? "" : ", min/max per pixel") + (this.zoom ? " · zoomed (double-click to reset)" : "");
    if (this.plot && this.plot.series.length === series.length && this.plotLog === log) {
      this.plot.setData(data, !this.zoom);
      this.rendered = performance.now();
      return;
    }
    if (this.plot) this.plot.destroy();
    this.plotLog = log;
    this.plot = new uPlot({
      width: this.width,
      height: HEIGHT,
      scales: {
        x: { time: this.xAxis === "time", ...(this.zoom ? { min: this.zoom[0], max: this.zoom[1], auto: false } : {}) },
        y: log ? { distr: 3, log: 10 } : {},
      },
      axes: [{ label: this.xAxis }, { size: 64, values: (u, vals) => vals.map(fmtNum) }],
      series,
      bands,
      cursor: { drag: { x: true, y: false, setScale: false }, bind: { dblclick: () => null } },
      hooks: {
        setSelect: [zoomOnDrag(this)],
      },
      legend: { live: true },
    }, data, this.holder);
    this.rendered = performance.now();
  }

  destroy() {
    this.panel.observer.unobserve(this.card);
    clearTimeout(this.timer);
    if (this.plot) this.plot.destroy();
    this.card.remove();
  }
}

function fmtVal(u, v) {
  return v === null || v === undefined ? "--" : fmtNum(v);
}
