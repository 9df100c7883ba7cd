// The runs view: every run under the base dir in one table (filter by text,
// status and param expression; sort by any column; group by experiment;
// checkboxes select the runs whose charts are drawn below). The table is
// virtual: only the rows and columns in view are in the DOM, so 10,000 runs and
// thousands of chosen columns cost what a screenful does.
import { alertBadge } from "./alerts.js";
import { el, clear, flatten, display, fmtNum, fmtTime, fmtDuration, runColor } from "./dom.js";
import { parseExpr, matches } from "./filter.js";
import { ColumnChooser } from "./columns.js";

export const STATUSES = ["RUNNING", "FINISHED", "FAILED", "KILLED", "CRASHED"];

export class RunsTable {
  constructor(root, { onSelect }) {
    this.root = root;
    this.onSelect = onSelect;
    this.rows = new Map();               // id -> row
    this.selected = new Set();
    this.sort = { key: "start_time", dir: -1 };
    this.text = "";
    this.status = "";
    this.expr = [];
    this.group = false;
    this.keep = null;                    // ids the hyperparameter brushes keep (null: all)
    this.version = 0;                    // counts changes of the rows: the sorted order follows
    this.order = null;                   // every row sorted, and what for: { rows, at }
    this.exprError = el("span", { class: "expr-error", role: "alert" });
    this.count = el("span", { class: "count" });
    const statusSel = el("select", { id: "status-filter", "aria-label": "status",
      onchange: (e) => { this.status = e.target.value; this.draw(); } },
      el("option", { value: "", text: "any status" }), STATUSES.map((s) => el("option", { value: s, text: s })));
    this.controls = el("div", { class: "controls" },
      el("input", { id: "text-filter", type: "search", placeholder: "filter runs", "aria-label": "filter runs",
        oninput: (e) => { this.text = e.target.value.toLowerCase(); this.draw(); } }),
      statusSel,
      el("input", { id: "expr-filter", type: "search", placeholder: "params: lr < 0.01 and model == CNN",
        "aria-label": "param expression", oninput: (e) => this.setExpr(e.target.value) }),
      el("label", {}, el("input", { id: "group-exp", type: "checkbox",
        onchange: (e) => { this.group = e.target.checked; this.draw(); } }), " group by experiment"),
      el("button", { id: "select-shown", text: "select shown", title: "chart every run the filters show",
        onclick: () => this.setSelected([...this.selected, ...this.visible().map((r) => r.id)]) }),
      el("button", { id: "select-none", text: "select none", onclick: () => this.setSelected([]) }),
      this.count, this.exprError);
    this.table = el("table", { id: "runs", class: "runs" });
    this.wrap = el("div", { class: "table-wrap" }, this.table);
    this.names = { params: new Set(), metrics: new Set() };   // every name any listed run has
    this.lines = [];
    this.cols = [];
    this.offsets = [];                   // each column's left edge, px
    this.width = 0;
    this.chooser = new ColumnChooser({ names: () => this.names, onChange: () => this.draw(),
      storageKey: () => document.getElementById("base")?.textContent || "" });
    this.controls.append(this.chooser.root);
    let frame = 0;
    this.wrap.addEventListener("scroll", () => {
      if (!frame) frame = requestAnimationFrame(() => { frame = 0; this.paint(); });
    }, { passive: true });
    new ResizeObserver(() => { this.window = null; this.paint(); }).observe(this.wrap);
    root.append(this.controls, this.wrap);
  }

  setExpr(text) {
    try {
      this.expr = text.trim() ? parseExpr(text) : [];
      this.exprError.textContent = "";
    } catch (e) {
      this.expr = [];
      this.exprError.textContent = e.message;
    }
    this.draw();
  }

  setSelected(ids) {
    this.selected = new Set(ids);
    this.onSelect([...this.selected]);
  }

  setRows(rows) {
    this.version++;
    this.rows.clear();
    this.addRows(rows);
  }

  addRows(rows) {
    this.version++;
    for (const r of rows) this.rows.set(r.id, this.prepare(r));
    this.draw();
  }

  prepare(r) {
    prepare(r);
    for (const k in r.flatParams) this.names.params.add(k);
    for (const k in r.last_metrics) this.names.metrics.add(k);
    return r;
  }

  // rows from the live stream: new runs and live rows' new values. A known row whose
  // columns exist already is replaced in place (a live run updates every second;
  // redrawing 500 rows each time would not be cheap).
  update(rows) {
    this.version++;
    let full = false;
    for (const r of rows) {
      const known = this.rows.has(r.id);
      const names = this.names.params.size + this.names.metrics.size;
      this.rows.set(r.id, this.prepare(r));
      const tr = [...this.table.querySelectorAll("tr[data-id]")].find((x) => x.dataset.id === r.id);
      if (!known || names !== this.names.params.size + this.names.metrics.size) { full = true; continue; }
      const at = this.lines.findIndex((line) => line.id === r.id);
      if (at >= 0) this.lines[at] = r;
      if (tr) tr.replaceWith(this.rowEl(r));
    }
    if (full) this.draw();
  }

  // a row's status changed in place (the live stream): the order is made again
  changed() {
    this.version++;
    this.draw();
  }

  // The rows the filters keep, in order. Every row is sorted once per change of the rows
  // or the sort, then filtered: a brush of the hyperparameter views (a new `keep` at
  // each release) costs one pass over the rows, not a sort of 10,000 of them.
  visible() {
    const at = `${this.version} ${this.sort.key} ${this.sort.dir} ${this.group}`;
    if (!this.order || this.order.at !== at) this.order = { rows: this.sorted(), at };
    const { keep, status, text, expr } = this;
    const out = [];
    for (const r of this.order.rows) {
      if (keep && !keep.has(r.id)) continue;
      if (status && r.status !== status) continue;
      if (text && !r.search.includes(text)) continue;
      if (expr.length && !matches(r, expr)) continue;
      out.push(r);
    }
    return out;
  }

  sorted() {
    const { key, dir } = this.sort;
    const get = (r) => key.startsWith("p:") ? r.flatParams[key.slice(2)]
      : key.startsWith("m:") ? r.last_metrics[key.slice(2)] : r[key];
    return [...this.rows.values()].sort((a, b) => {
      if (this.group && a.experiment !== b.experiment) return a.experiment < b.experiment ? -1 : 1;
      return cmp(get(a), get(b)) * dir;
    });
  }

  // the columns: the fixed ones, then the chosen params and metrics that some shown
  // row has (a filter showing one sweep shows its columns)
  columns(rows) {
    const chosen = this.chooser.chosen().filter((key) => {
      const name = key.slice(2);
      const where = key.startsWith("p:") ? "flatParams" : "last_metrics";
      return rows.some((r) => name in r[where]);
    });
    return [
      { key: "status", label: "status", width: 150 },
      { key: "experiment", label: "experiment", width: 140 },
      { key: "run_name", label: "run", width: 210 },
      ...(rows.some((r) => r.tagText) ? [{ key: "tagText", label: "tags", width: 150 }] : []),
      { key: "start_time", label: "start", width: 160 },
      { key: "duration", label: "duration", width: 110 },
      ...chosen.map((k) => ({ key: k, label: k.slice(2), cls: k.startsWith("p:") ? "param" : "metric", width: COL_WIDTH })),
    ];
  }

  // The filtered, sorted rows (with a line per experiment when grouped); what is
  // in view is drawn by paint(), on every scroll.
  draw() {
    const rows = this.visible();
    this.cols = this.columns(rows);
    this.lines = [];
    let lastExp = null;
    for (const r of rows) {
      if (this.group && r.experiment !== lastExp) { lastExp = r.experiment; this.lines.push({ header: r.experiment }); }
      this.lines.push(r);
    }
    let x = 0;
    this.offsets = this.cols.map((c) => { const at = x; x += c.width; return at; });
    this.width = x;
    this.count.textContent = `${rows.length} of ${this.rows.size} runs`;
    this.chooser.showCount(this.cols.filter((c) => c.cls).length);
    this.window = null;
    this.paint();
  }

  // Only the rows and columns in view (and OVERSCAN_ROWS rows, a view's width of
  // columns more each way) are in the DOM:
  // spacer rows and cells stand for the rest, so scrolling looks as if all were there.
  paint() {
    const wrap = this.wrap;
    const height = wrap.clientHeight || 400, width = wrap.clientWidth || 1200;
    const first = Math.max(0, Math.floor(wrap.scrollTop / ROW_HEIGHT) - OVERSCAN_ROWS);
    const last = Math.min(this.lines.length, Math.ceil((wrap.scrollTop + height) / ROW_HEIGHT) + OVERSCAN_ROWS);
    const left = Math.max(0, wrap.scrollLeft - SEL_WIDTH - width), right = wrap.scrollLeft + 2 * width;
    let c0 = 0;
    while (c0 < this.cols.length && this.offsets[c0] + this.cols[c0].width < left) c0++;
    let c1 = c0;
    while (c1 < this.cols.length && this.offsets[c1] < right) c1++;
    const key = `${first},${last},${c0},${c1}`;
    if (this.window === key) return;
    this.window = key;
    const cols = this.cols.slice(c0, c1);
    this.shownCols = cols;
    const before = c0 < this.cols.length ? this.offsets[c0] : this.width;
    const after = this.width - (c1 ? this.offsets[c1 - 1] + this.cols[c1 - 1].width : 0);
    const colgroup = el("colgroup", {}, sized(el("col"), SEL_WIDTH), sized(el("col"), before),
      cols.map((c) => sized(el("col"), c.width)), sized(el("col"), Math.max(0, after)));
    const head = el("tr", {}, el("th", { class: "sel" }), el("th", { class: "spacer" }),
      cols.map((c) => el("th", { class: c.cls, "data-key": c.key, title: `${c.label}: click to sort`,
        onclick: () => {
          this.sort = this.sort.key === c.key ? { key: c.key, dir: -this.sort.dir } : { key: c.key, dir: 1 };
          this.draw();
        } }, c.label, this.sort.key === c.key ? (this.sort.dir > 0 ? " ▲" : " ▼") : "")),
      el("th", { class: "spacer" }));
    const span = cols.length + 3;
    const body = el("tbody", {}, spacerRow(first * ROW_HEIGHT, span));
    for (const line of this.lines.slice(first, last)) {
      body.append(line.header !== undefined
        ? el("tr", { class: "group" }, el("td", { colSpan: span, text: line.header }))
        : this.rowEl(line, cols));
    }
    body.append(spacerRow((this.lines.length - last) * ROW_HEIGHT, span));
    this.table.style.width = `${SEL_WIDTH + this.width}px`;
    clear(this.table).append(colgroup, el("thead", {}, head), body);
  }

  // the selection changed, nothing else: the rows in the DOM show it (no redraw)
  markSelected() {
    for (const tr of this.table.querySelectorAll("tr[data-id]")) {
      const on = this.selected.has(tr.dataset.id);
      tr.classList.toggle("selected", on);
      tr.querySelector("input").checked = on;
    }
  }

  rowEl(r, cols = this.shownCols) {
    const box = el("input", { type: "checkbox", "aria-label": `select ${r.id}`, checked: this.selected.has(r.id),
      onchange: (e) => {
        if (e.target.checked) this.selected.add(r.id); else this.selected.delete(r.id);
        this.onSelect([...this.selected]);
      } });
    const swatch = el("span", { class: "swatch" });
    swatch.style.background = runColor(r.id);
    const tr = el("tr", { "data-id": r.id, class: this.selected.has(r.id) ? "selected" : "" },
      el("td", { class: "sel" }, box, swatch), el("td", { class: "spacer" }));
    for (const c of cols) {
      let cell;
      if (c.key === "status") {
        cell = el("td", {}, el("span", { class: `status status-${r.status}`, text: r.status }));
        if (r.lossText) cell.append(" ", el("span", { class: "loss", title: r.lossText, text: "data lost" }));
        if (r.damaged) cell.append(" ", el("span", { class: "loss", title: r.damaged, text: "damaged" }));
        if (r.alerted) cell.append(" ", alertBadge(0));
      }
      else if (c.key === "run_name") cell = el("td", {}, el("a", { href: `#/run/${encodeId(r.id)}`, text: r.run_name }));
      else if (c.key === "start_time") cell = el("td", { text: fmtTime(r.start_time) });
      else if (c.key === "duration") cell = el("td", { class: "num", text: fmtDuration(r.duration) });
      else if (c.key.startsWith("p:")) cell = el("td", { class: "param", text: display(r.flatParams[c.key.slice(2)]) });
      else if (c.key.startsWith("m:")) cell = el("td", { class: "num", text: fmtNum(r.last_metrics[c.key.slice(2)]) });
      else cell = el("td", { text: display(r[c.key]) });
      if (cell.textContent.length > 14) cell.title = cell.textContent;
      tr.append(cell);
    }
    tr.append(el("td", { class: "spacer" }));
    return tr;
  }
}

const ROW_HEIGHT = 29;      // px; every row has this height (style.css: table.runs td)
const OVERSCAN_ROWS = 10;
const SEL_WIDTH = 52;
const COL_WIDTH = 120;

function sized(col, px) {
  col.style.width = `${px}px`;
  return col;
}

function spacerRow(px, span) {
  const tr = el("tr", { class: "spacer" }, el("td", { colSpan: span }));
  tr.style.height = `${px}px`;
  if (!px) tr.hidden = true;
  return tr;
}

export function encodeId(id) {
  return id.split("/").map(encodeURIComponent).join("/");
}

// "rows dropped 12, write errors 1": what the writer recorded losing (empty: nothing)
export function lossText(loss) {
  if (!loss || typeof loss !== "object") return "";
  const parts = [];
  for (const [k, label] of [["rows_dropped", "rows dropped"], ["events_dropped", "events dropped"],
    ["write_errors", "write errors"]]) {
    if (typeof loss[k] === "number" && loss[k] > 0) parts.push(`${loss[k]} ${label}`);
  }
  if (loss.last_error) parts.push(`last error: ${loss.last_error}`);
  return parts.join(", ") || (Object.keys(loss).length ? "the writer recorded a loss" : "");
}

function prepare(r) {
  r.flatParams = flatten(r.params || {});
  // every rank's recorded loss (rank_loss), else rank 0's (data_loss)
  const losses = r.rank_loss ? Object.entries(r.rank_loss) : (r.data_loss ? [["0", r.data_loss]] : []);
  r.lossText = losses.map(([rank, l]) => `rank ${rank}: ${lossText(l)}`).join("; ");
  r.last_metrics = r.last_metrics || {};
  // tags and group: shown as "group:g tag1 tag2", found by the text filter as tag:NAME too
  r.tagText = [...(r.group ? [`group:${r.group}`] : []), ...(r.tags || [])].join(" ");
  r.search = [r.id, r.experiment, r.run_name, r.status, r.tagText, ...(r.tags || []).map((t) => `tag:${t}`),
    ...Object.entries(r.flatParams).map(([k, v]) => `${k}=${display(v)}`)]
    .join(" ").toLowerCase();
  return r;
}

const collator = new Intl.Collator(undefined, { numeric: true });

function cmp(a, b) {
  if (a === b) return 0;
  if (a === undefined || a === null) return 1;
  if (b === undefined || b === null) return -1;
  if (typeof a === "number" && typeof b === "number") return a - b;
  return collator.compare(String(a), String(b));
}
