// The runs view: every run under the base dir in one table (filter by text,
// status and param expression; sort by any column; group by experiment;
// checkboxes select the runs whose charts are drawn below).
import { el, clear, flatten, display, fmtNum, fmtTime, fmtDuration, runColor } from "./dom.js";
import { parseExpr, matches } from "./filter.js";

export const STATUSES = ["RUNNING", "FINISHED", "FAILED", "KILLED", "CRASHED"];
const PAGE = 500;      // rows drawn at first; the rest on request

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
    this.limit = PAGE;
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
    root.append(this.controls, el("div", { class: "table-wrap" }, this.table));
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
    this.rows.clear();
    this.addRows(rows);
  }

  addRows(rows) {
    for (const r of rows) this.rows.set(r.id, prepare(r));
    this.draw();
  }

  // rows from the live stream: new runs and live rows' new values. A known row whose
  // columns exist already is replaced in place (a live run updates every second;
  // redrawing 500 rows each time would not be cheap).
  update(rows) {
    let full = false;
    for (const r of rows) {
      const known = this.rows.has(r.id);
      this.rows.set(r.id, prepare(r));
      const keys = new Set((this.cols || []).map((c) => c.key));
      const fits = Object.keys(r.flatParams).every((k) => keys.has(`p:${k}`)) &&
        Object.keys(r.last_metrics).every((k) => keys.has(`m:${k}`));
      const tr = [...this.table.querySelectorAll("tr[data-id]")].find((x) => x.dataset.id === r.id);
      if (known && fits && tr) tr.replaceWith(this.rowEl(r, this.cols));
      else full = true;
    }
    if (full) this.draw();
  }

  visible() {
    const out = [];
    for (const r of this.rows.values()) {
      if (this.keep && !this.keep.has(r.id)) continue;
      if (this.status && r.status !== this.status) continue;
      if (this.text && !r.search.includes(this.text)) continue;
      if (this.expr.length && !matches(r, this.expr)) continue;
      out.push(r);
    }
    const { key, dir } = this.sort;
    const get = (r) => key.startsWith("p:") ? r.flatParams[key.slice(2)]
      : key.startsWith("m:") ? r.last_metrics[key.slice(2)] : r[key];
    out.sort((a, b) => {
      if (this.group && a.experiment !== b.experiment) return a.experiment < b.experiment ? -1 : 1;
      return cmp(get(a), get(b)) * dir;
    });
    return out;
  }

  columns(rows) {
    const params = new Set(), metrics = new Set();
    for (const r of rows) {
      Object.keys(r.flatParams).forEach((k) => params.add(k));
      Object.keys(r.last_metrics || {}).forEach((k) => metrics.add(k));
    }
    return [
      { key: "status", label: "status" },
      { key: "experiment", label: "experiment" },
      { key: "run_name", label: "run" },
      ...(rows.some((r) => r.tagText) ? [{ key: "tagText", label: "tags" }] : []),
      { key: "start_time", label: "start" },
      { key: "duration", label: "duration" },
      ...[...params].sort().map((k) => ({ key: `p:${k}`, label: k, cls: "param" })),
      ...[...metrics].sort().map((k) => ({ key: `m:${k}`, label: k, cls: "metric" })),
    ];
  }

  draw() {
    const rows = this.visible();
    const cols = this.columns(rows);
    this.cols = cols;
    this.count.textContent = `${rows.length} of ${this.rows.size} runs`;
    const head = el("tr", {}, el("th", { class: "sel" }),
      cols.map((c) => el("th", { class: c.cls, "data-key": c.key, title: `sort by ${c.label}`,
        onclick: () => {
          this.sort = this.sort.key === c.key ? { key: c.key, dir: -this.sort.dir } : { key: c.key, dir: 1 };
          this.draw();
        } }, c.label, this.sort.key === c.key ? (this.sort.dir > 0 ? " ▲" : " ▼") : "")));
    const body = el("tbody");
    let lastExp = null;
    for (const r of rows.slice(0, this.limit)) {
      if (this.group && r.experiment !== lastExp) {
        lastExp = r.experiment;
        body.append(el("tr", { class: "group" }, el("td", { colSpan: cols.length + 1, text: r.experiment })));
      }
      body.append(this.rowEl(r, cols));
    }
    const more = rows.length > this.limit
      ? el("button", { class: "more", onclick: () => { this.limit += 5 * PAGE; this.draw(); } },
        `show ${Math.min(5 * PAGE, rows.length - this.limit)} more of ${rows.length - this.limit}`) : null;
    clear(this.table).append(el("thead", {}, head), body);
    if (more) body.append(el("tr", {}, el("td", { colSpan: cols.length + 1 }, more)));
  }

  rowEl(r, cols) {
    const box = el("input", { type: "checkbox", "aria-label": `select ${r.id}`, checked: this.selected.has(r.id),
      onchange: (e) => {
        if (e.target.checked) this.selected.add(r.id); else this.selected.delete(r.id);
        this.onSelect([...this.selected]);
      } });
    const swatch = el("span", { class: "swatch" });
    swatch.style.background = runColor(r.id);
    const tr = el("tr", { "data-id": r.id, class: this.selected.has(r.id) ? "selected" : "" },
      el("td", { class: "sel" }, box, swatch));
    for (const c of cols) {
      let cell;
      if (c.key === "status") {
        cell = el("td", {}, el("span", { class: `status status-${r.status}`, text: r.status }));
        if (r.lossText) cell.append(" ", el("span", { class: "loss", title: r.lossText, text: "data lost" }));
        if (r.damaged) cell.append(" ", el("span", { class: "loss", title: r.damaged, text: "damaged" }));
      }
      else if (c.key === "run_name") cell = el("td", {}, el("a", { href: `#/run/${encodeId(r.id)}`, text: r.run_name }));
      else if (c.key === "start_time") cell = el("td", { text: fmtTime(r.start_time) });
      else if (c.key === "duration") cell = el("td", { class: "num", text: fmtDuration(r.duration) });
      else if (c.key.startsWith("p:")) cell = el("td", { class: "param", text: display(r.flatParams[c.key.slice(2)]) });
      else if (c.key.startsWith("m:")) cell = el("td", { class: "num", text: fmtNum(r.last_metrics[c.key.slice(2)]) });
      else cell = el("td", { text: display(r[c.key]) });
      tr.append(cell);
    }
    return tr;
  }
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
