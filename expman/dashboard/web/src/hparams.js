// Hyperparameter views over every run of the base dir: parallel coordinates over
// chosen params and one metric's last, min or max, and a scatter of any param
// against that metric. Both are drawn on a canvas (10,000 runs are 10,000
// polylines, not 10,000 DOM nodes) from /api/hparams's compact columns, read in
// pages. Dragging along an axis brushes it: the runs table shows only the runs
// inside every brush (click an axis to clear its brush). The choices and the
// brushes live in the URL through the controls #hp-show, #hp-metric,
// #hp-summary, #hp-params, #hp-x and #hp-brush. Text, axes and brushes take
// their colours from the theme, and are drawn again when it changes.
import { el, clear, getJSON, fmtNum, display } from "./dom.js";
import { themeColor } from "./theme.js";
import "./views.css";

const PAGE = 10000;
const BINS = 16;                   // shades of the metric's colour ramp
const HEIGHT = 320;
const PAD = { top: 28, bottom: 26, left: 40, right: 40 };
const collator = new Intl.Collator(undefined, { numeric: true });

// one axis: a column of values and how a value maps to [0, 1] (0: bottom)
export function makeAxis(name, values) {
  const real = values.filter((v) => v !== null && v !== undefined && v !== "NaN");
  const numeric = real.length > 0 && real.every((v) => typeof v === "number");
  if (numeric) {
    let lo = Infinity, hi = -Infinity;
    for (const v of real) { if (v < lo) lo = v; if (v > hi) hi = v; }
    const span = hi - lo;
    const log = lo > 0 && hi / lo >= 10;             // learning rates: spread their decades
    const llo = Math.log10(lo), lspan = Math.log10(hi) - llo;
    const pos = (v) => (typeof v !== "number" ? -1 : log ? (Math.log10(v) - llo) / (lspan || 1)
      : span ? (v - lo) / span : 0.5);
    const ticks = [lo, hi];
    return { name, values, numeric, log, pos, ticks, label: (v) => fmtNum(v) };
  }
  const cats = [...new Set(real.map((v) => display(v)))].sort(collator.compare);
  const index = new Map(cats.map((c, i) => [c, i]));
  const pos = (v) => (v === null || v === undefined ? -1 : cats.length > 1 ? index.get(display(v)) / (cats.length - 1) : 0.5);
  return { name, values, numeric, log: false, pos, ticks: cats, label: (v) => String(v) };
}

// "a:0.2:0.6;b:0:0.5" <-> {a: [0.2, 0.6], b: [0, 0.5]} (fractions of the axis, 0: bottom)
export function parseBrushes(text) {
  const out = {};
  for (const part of (text || "").split(";")) {
    const m = /^(.*):(-?[\d.]+):(-?[\d.]+)$/.exec(part);
    if (m) out[decodeURIComponent(m[1])] = [Number(m[2]), Number(m[3])];
  }
  return out;
}

function brushText(brushes) {
  return Object.entries(brushes).map(([k, [a, b]]) => `${encodeURIComponent(k)}:${a.toFixed(4)}:${b.toFixed(4)}`).join(";");
}

function ramp(t) {            // blue (low) -> orange (high)
  const a = [78, 121, 167], b = [242, 142, 43];
  const c = a.map((v, i) => Math.round(v + (b[i] - v) * Math.min(1, Math.max(0, t))));
  return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
}

// the theme's colours for the canvases (style.css's variables), read once per theme:
// reading them while brushing would make the browser work out every style at each move
function themeInk() {
  return { text: themeColor("--fg"), muted: themeColor("--muted"), brush: themeColor("--accent") };
}

export class HParamsView {
  // onFilter(ids | null): the runs inside every brush (null: no brush)
  constructor(root, { onFilter }) {
    this.root = root;
    this.onFilter = onFilter;
    this.data = null;
    this.brushes = {};
    this.show = el("input", { id: "hp-show", type: "checkbox", onchange: (e) => this.setOpen(e.target.checked) });
    this.metric = el("select", { id: "hp-metric", "aria-label": "metric", onchange: () => this.load() });
    this.summary = el("select", { id: "hp-summary", "aria-label": "summary", onchange: () => this.load() },
      ["last", "min", "max"].map((s) => el("option", { value: s, text: s })));
    this.paramList = el("select", { id: "hp-param-list", multiple: true, size: 4, "aria-label": "params",
      onchange: () => this.setParams([...this.paramList.selectedOptions].map((o) => o.value)) });
    this.params = el("input", { id: "hp-params", type: "hidden", oninput: () => this.load() });
    this.xParam = el("select", { id: "hp-x", "aria-label": "scatter x", onchange: () => this.drawScatter() });
    this.brushInput = el("input", { id: "hp-brush", type: "hidden", oninput: () => {
      this.brushes = parseBrushes(this.brushInput.value);
      this.applyBrushes(false);
    } });
    this.info = el("span", { class: "muted", id: "hp-info" });
    this.pc = el("canvas", { id: "hp-parallel", class: "hp-canvas" });
    this.sc = el("canvas", { id: "hp-scatter", class: "hp-canvas" });
    this.body = el("div", { class: "hp-body", hidden: true },
      el("div", { class: "controls" },
        el("label", {}, "metric ", this.metric), el("label", {}, this.summary),
        el("label", { class: "hp-params-label" }, "params ", this.paramList),
        el("button", { id: "hp-clear", text: "clear brushes", onclick: () => { this.brushes = {}; this.applyBrushes(true); } }),
        this.info, this.params, this.brushInput),
      this.pc,
      el("div", { class: "controls" }, el("label", {}, "scatter: x ", this.xParam), " against the metric"),
      this.sc);
    root.append(el("label", { class: "hp-toggle" }, this.show, " hyperparameter views"), this.body);
    this.bindBrushing();
    this.ink = null;
    window.addEventListener("expman-theme", () => { this.ink = null; this.draw(); });
    // drawn again when its width changes (the page laid out, a resize)
    // (the width is kept: reading it while drawing would lay out the page, runs table and all)
    let t = null;
    this.width = 0;
    new ResizeObserver((entries) => {
      const width = Math.round(entries[entries.length - 1].contentRect.width);
      if (width === this.width) return;
      this.width = width;
      clearTimeout(t);
      t = setTimeout(() => this.draw(), 100);
    }).observe(this.body);
  }

  setOpen(open) {
    this.body.hidden = !open;
    if (open && !this.data) this.load();
    if (open) this.draw();
    this.applyBrushes(false);
  }

  setParams(names) {
    this.params.value = names.join(",");
    this.params.dispatchEvent(new Event("input", { bubbles: true }));
  }

  // every page of /api/hparams for the chosen metric, summary and params
  async load() {
    if (this.body.hidden) return;
    const ticket = {};
    this.ticket = ticket;
    const q = new URLSearchParams({ summary: this.summary.value || "last", limit: String(PAGE) });
    if (this.metric.value) q.set("metric", this.metric.value);
    for (const p of this.params.value.split(",").filter(Boolean)) q.append("param", p);
    const started = performance.now();
    this.info.textContent = "loading…";
    let first;
    try {
      first = await getJSON(`/api/hparams?${q}&offset=0`);
      for (let offset = first.count; offset < first.total; offset += PAGE) {
        const page = await getJSON(`/api/hparams?${q}&offset=${offset}`);
        if (!page.count) break;
        first.ids.push(...page.ids);
        first.values.push(...page.values);
        for (const k of Object.keys(first.params)) first.params[k].push(...page.params[k]);
      }
    } catch (e) {
      if (this.ticket === ticket) this.info.textContent = `cannot load: ${e.message}`;
      return;
    }
    if (this.ticket !== ticket) return;
    this.data = first;
    this.fillChoices(first);
    if (!this.metric.value && first.metric_names.length) {    // a metric first: ask again with it
      this.metric.value = this.metric.options[0]?.value || "";
      this.metric.dispatchEvent(new Event("change", { bubbles: true }));
      return;
    }
    this.info.textContent = `${first.ids.length.toLocaleString()} runs`;
    this.draw();
    this.applyBrushes(false);
    this.root.dataset.loadMs = String(Math.round(performance.now() - started));
  }

  fillChoices(d) {
    const keep = (sel, values, current) => {
      const want = [...new Set([...(current ? [current] : []), ...values])];
      const have = [...sel.options].map((o) => o.value);
      if (have.length !== want.length || have.some((v, i) => v !== want[i])) {
        clear(sel).append(...want.map((v) => el("option", { value: v, text: v })));
      }
      if (current) sel.value = current;
    };
    keep(this.metric, d.metric_names.map(([n]) => n), this.metric.value);
    const chosen = Object.keys(d.params);
    const names = d.param_names.map(([n]) => n);
    clear(this.paramList).append(...[...new Set([...chosen, ...names])].map((n) =>
      el("option", { value: n, text: n, selected: chosen.includes(n) })));
    keep(this.xParam, chosen.length ? [...chosen, ...names.filter((n) => !chosen.includes(n))] : names, this.xParam.value);
  }

  axes() {
    const d = this.data;
    const axes = Object.entries(d.params).map(([k, v]) => makeAxis(k, v));
    if (d.metric) axes.push(makeAxis(`${d.metric} (${d.summary})`, d.values));
    return axes;
  }

  draw() {
    if (!this.data || this.body.hidden) return;
    this.axesNow = this.axes();
    // each run's place on each axis, worked out once: brushing reads them at every move
    this.posNow = this.axesNow.map((a) => Float64Array.from(a.values, (v) => a.pos(v)));
    this.brushed = null;           // the lines are drawn afresh: the brushes applied again
    this.drawParallel();
    this.drawScatter();
  }

  size(canvas) {
    if (!this.width) this.width = this.body.clientWidth;
    const w = Math.max(300, (this.width || 820) - 4);
    const dpr = window.devicePixelRatio || 1;
    const [width, height] = [Math.round(w * dpr), Math.round(HEIGHT * dpr)];
    if (canvas.width !== width || canvas.height !== height) {   // a new bitmap only when resized
      canvas.width = width;
      canvas.height = height;
      canvas.style.width = `${w}px`;
      canvas.style.height = `${HEIGHT}px`;
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    return { ctx, w };
  }

  // x of axis i, and y of a position in [0, 1] (-1: missing, drawn below the axis)
  geometry(w, n) {
    const span = w - PAD.left - PAD.right;
    const h = HEIGHT - PAD.top - PAD.bottom;
    return {
      ax: (i) => PAD.left + (n > 1 ? (i * span) / (n - 1) : span / 2),
      py: (p) => (p < 0 ? HEIGHT - 6 : PAD.top + (1 - p) * h),
      frac: (y) => 1 - (y - PAD.top) / h,
    };
  }

  drawParallel() {
    const axes = this.axesNow;
    const { ctx, w } = this.size(this.pc);
    const g = this.geometry(w, axes.length);
    this.pcGeom = g;
    const n = this.data.ids.length;
    const metricAxis = this.data.metric ? axes[axes.length - 1] : null;
    const pos = this.posNow;
    const inside = this.inside;
    ctx.clearRect(0, 0, w, HEIGHT);
    ctx.lineWidth = 1;
    // one path per colour (the metric cut into BINS shades): a few strokes, not one per run
    const alpha = Math.max(0.08, Math.min(0.8, 40 / Math.sqrt(n + 1)));
    const bins = Array.from({ length: metricAxis ? BINS : 1 }, () => []);
    const out = [];
    for (let r = 0; r < n; r++) {
      if (inside && !inside.has(r)) { out.push(r); continue; }
      const p = metricAxis ? pos[pos.length - 1][r] : 0;
      bins[p < 0 ? 0 : Math.min(bins.length - 1, Math.floor(p * bins.length))].push(r);
    }
    const stroke = (runs) => {
      ctx.beginPath();
      for (const r of runs) {
        for (let i = 0; i < axes.length; i++) {
          const x = g.ax(i), y = g.py(pos[i][r]);
          if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y);
        }
      }
      ctx.stroke();
    };
    if (out.length) {            // brushed out: grey, underneath
      ctx.strokeStyle = "rgba(150, 150, 150, 0.12)";
      stroke(out);
    }
    ctx.globalAlpha = alpha;
    bins.forEach((runs, b) => {
      if (!runs.length) return;
      ctx.strokeStyle = metricAxis ? ramp((b + 0.5) / bins.length) : "#4e79a7";
      stroke(runs);
    });
    ctx.globalAlpha = 1;
    ctx.font = "11px system-ui, sans-serif";
    ctx.textAlign = "center";
    const ink = this.ink ||= themeInk();
    axes.forEach((a, i) => {
      const x = g.ax(i);
      ctx.strokeStyle = ink.muted;
      ctx.beginPath(); ctx.moveTo(x, g.py(1)); ctx.lineTo(x, g.py(0)); ctx.stroke();
      ctx.fillStyle = ink.text;
      const last = i === axes.length - 1 && i > 0;    // the edge axes' names stay inside
      ctx.textAlign = i === 0 ? "left" : last ? "right" : "center";
      ctx.fillText(a.name + (a.log ? " (log)" : ""), x + (i === 0 ? -8 : last ? 8 : 0), 14);
      ctx.textAlign = "center";
      ctx.fillStyle = ink.muted;
      const ticks = a.numeric ? a.ticks : a.ticks.slice(0, 12);
      for (const t of ticks) {
        const p = a.numeric ? a.pos(t) : a.pos(t);
        ctx.fillText(a.label(t), x + (i === axes.length - 1 ? -22 : 22), g.py(p) + 4);
      }
      const b = this.brushes[a.name];
      if (b) {
        ctx.fillStyle = ctx.strokeStyle = ink.brush;
        const y0 = g.py(b[1]), y1 = g.py(b[0]);
        ctx.globalAlpha = 0.18;
        ctx.fillRect(x - 8, y0, 16, y1 - y0);
        ctx.globalAlpha = 1;
        ctx.strokeRect(x - 8, y0, 16, y1 - y0);
      }
    });
    this.pc.dataset.lines = String(n);
    this.pc.dataset.axes = axes.map((a) => a.name).join("|");
    this.pc.dataset.painted = String(performance.now());
  }

  drawScatter() {
    if (!this.data) return;
    const d = this.data;
    const name = this.xParam.value;
    const { ctx, w } = this.size(this.sc);
    ctx.clearRect(0, 0, w, HEIGHT);
    const ink = this.ink ||= themeInk();
    const xs = name in d.params ? d.params[name] : null;
    if (!xs || !d.metric) {
      ctx.fillStyle = ink.muted;
      ctx.fillText(xs ? "choose a metric" : "choose a param for x (it is added to the chosen params)", 20, 30);
      this.sc.dataset.points = "0";
      if (!xs && name) this.setParams([...Object.keys(d.params), name]);
      return;
    }
    const known = (n) => (this.axesNow || []).find((a) => a.name === n);    // the lines' axes
    const ax = known(name) || makeAxis(name, xs);
    const ay = known(`${d.metric} (${d.summary})`) || makeAxis(d.metric, d.values);
    const left = 64, right = w - 20, top = 12, bottom = HEIGHT - 30;
    const inside = this.inside;
    let points = 0;
    const spots = [];
    for (let r = 0; r < xs.length; r++) {
      const px = ax.pos(xs[r]), py = ay.pos(d.values[r]);
      if (px < 0 || py < 0 || !ay.numeric) continue;
      const jitter = ax.numeric ? 0 : ((r * 2654435761) % 1000 / 1000 - 0.5) * 0.5 / Math.max(1, ax.ticks.length);
      spots.push([left + (px + jitter) * (right - left), bottom - py * (bottom - top), !inside || inside.has(r)]);
    }
    for (const pass of [false, true]) {       // one path per colour: brushed out, then in
      ctx.fillStyle = pass ? "rgba(78, 121, 167, 0.7)" : "rgba(150, 150, 150, 0.25)";
      ctx.beginPath();
      for (const [x, y, on] of spots) {
        if (on !== pass) continue;
        ctx.rect(x - 2.5, y - 2.5, 5, 5);
        points++;
      }
      ctx.fill();
    }
    ctx.strokeStyle = ink.muted;
    ctx.strokeRect(left, top, right - left, bottom - top);
    ctx.fillStyle = ink.text;
    ctx.font = "11px system-ui, sans-serif";
    ctx.textAlign = "center";
    ctx.fillText(name + (ax.log ? " (log)" : ""), (left + right) / 2, HEIGHT - 6);
    const ticks = ax.numeric ? ax.ticks : ax.ticks.slice(0, 20);
    for (const t of ticks) ctx.fillText(ax.label(t), left + ax.pos(t) * (right - left), bottom + 12);
    ctx.textAlign = "right";
    for (const t of ay.ticks) ctx.fillText(ay.label(t), left - 4, bottom - ay.pos(t) * (bottom - top) + 4);
    ctx.save(); ctx.translate(12, (top + bottom) / 2); ctx.rotate(-Math.PI / 2); ctx.textAlign = "center";
    ctx.fillText(`${d.metric} (${d.summary})`, 0, 0); ctx.restore();
    this.sc.dataset.points = String(points);
  }

  // the runs (indexes) inside every brush, null when no axis is brushed
  runsInside() {
    const index = new Map(this.axesNow.map((a, i) => [a.name, i]));
    const ranges = Object.entries(this.brushes).filter(([k]) => index.has(k))
      .map(([k, [lo, hi]]) => [this.posNow[index.get(k)], lo - 1e-9, hi + 1e-9]);
    if (!ranges.length) return null;
    const inside = new Set();
    for (let r = 0; r < this.data.ids.length; r++) {
      let ok = true;
      for (const [pos, lo, hi] of ranges) {
        const p = pos[r];
        if (p < 0 || p < lo || p > hi) { ok = false; break; }
      }
      if (ok) inside.add(r);
    }
    return inside;
  }

  // drag along an axis: brush it; a click without a drag clears it
  bindBrushing() {
    let drag = null;
    const at = (e) => {
      const r = this.pc.getBoundingClientRect();
      return [e.clientX - r.left, e.clientY - r.top];
    };
    this.pc.addEventListener("mousedown", (e) => {
      if (!this.axesNow || !this.pcGeom) return;
      const [x, y] = at(e);
      const i = this.axesNow.findIndex((_, k) => Math.abs(this.pcGeom.ax(k) - x) <= 12);
      if (i < 0) return;
      drag = { name: this.axesNow[i].name, from: this.pcGeom.frac(y), moved: false };
      e.preventDefault();
    });
    window.addEventListener("mousemove", (e) => {
      if (!drag) return;
      const f = this.pcGeom.frac(at(e)[1]);
      if (Math.abs(f - drag.from) < 0.01) return;
      drag.moved = true;
      this.brushes[drag.name] = [Math.max(-0.02, Math.min(drag.from, f)), Math.min(1.02, Math.max(drag.from, f))];
      this.applyBrushes(false, true);     // the lines follow the mouse; the table on release
    });
    window.addEventListener("mouseup", () => {
      if (!drag) return;
      if (!drag.moved) delete this.brushes[drag.name];
      drag = null;
      this.applyBrushes(true);
    });
  }

  // the runs inside every brush -> the table (quick: the lines only, while dragging);
  // save: write the brushes into the URL
  // (the lines drawn at the last move of a drag are those of its release: not drawn again)
  applyBrushes(save, quick = false) {
    const t0 = performance.now();
    const shown = this.data && !this.body.hidden && this.axesNow;
    const brushed = shown ? brushText(this.brushes) : "";
    if (brushed !== this.brushed) {
      this.inside = shown ? this.runsInside() : null;
      if (shown) this.drawParallel();
      this.brushed = brushed;
    }
    if (quick) return;
    const inside = this.inside;
    const t1 = performance.now();
    if (inside || this.filtered) this.onFilter(inside ? new Set(Array.from(inside, (r) => this.data.ids[r])) : null);
    this.filtered = !!inside;
    const t2 = performance.now();
    if (shown) {      // the scatter is drawn in the frame after the table's
      cancelAnimationFrame(this.scatterFrame);
      this.scatterFrame = requestAnimationFrame(() => {
        this.scatterFrame = requestAnimationFrame(() => this.drawScatter());
      });
    }
    // where the time went (the bench reads these): brush and lines, the table, both
    this.root.dataset.linesMs = String(t1 - t0);
    this.root.dataset.tableMs = String(t2 - t1);
    this.root.dataset.brushMs = String(performance.now() - t0);
    this.root.dataset.inside = inside ? String(inside.size) : "";
    if (save) {
      this.brushInput.value = brushText(this.brushes);
      this.brushInput.dispatchEvent(new Event("change", { bubbles: true }));
    }
  }
}

