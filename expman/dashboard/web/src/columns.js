// Which params and metrics are columns of the runs view. A base dir may hold
// 17,000 metric names (a run logging `loss_{step}`) and 155 `args/...` params: by
// default the first DEFAULT_EACH params and the first DEFAULT_EACH metrics outside
// `system/` are columns; the chooser searches every name and keeps the choice in
// localStorage per base dir (`expman.columns:NAME`). It lists at most LISTED names:
// its DOM never grows with the base dir.
import { el, clear } from "./dom.js";

const DEFAULT_EACH = 40;
const LISTED = 200;

export class ColumnChooser {
  // names(): {params: Set, metrics: Set} of every run listed; storageKey(): the base dir's
  // name; onChange(): the choice changed (the table is drawn again)
  constructor({ names, storageKey, onChange }) {
    this.names = names;
    this.storageKey = storageKey;
    this.onChange = onChange;
    this.cache = { size: -1, keys: [] };
    this.summary = el("summary", { id: "columns-summary" });
    this.search = el("input", { id: "column-search", type: "search", placeholder: "search params and metrics",
      "aria-label": "search columns", oninput: () => this.list() });
    this.items = el("ul", { class: "column-list" });
    this.more = el("p", { class: "muted column-more" });
    this.root = el("details", { class: "column-chooser", id: "columns" }, this.summary,
      el("div", { class: "column-panel" }, el("div", { class: "controls" }, this.search,
        el("button", { id: "columns-add-shown", type: "button", text: "add all listed", title: "make every listed name a column",
          onclick: () => this.set([...new Set([...this.chosen(), ...this.matching().slice(0, LISTED)])]) }),
        el("button", { id: "columns-none", type: "button", text: "none", onclick: () => this.set([]) }),
        el("button", { id: "columns-default", type: "button", text: "default", onclick: () => this.set(null) })),
      this.items, this.more));
    this.root.addEventListener("toggle", () => { if (this.root.open) this.list(); });
  }

  // every name as a column key, params first ("p:lr", "m:loss"), sorted; recomputed
  // only when a new name appeared
  allKeys() {
    const { params, metrics } = this.names();
    const size = params.size + metrics.size;
    if (this.cache.size !== size) {
      const sorted = (set) => [...set].sort(collator.compare);
      this.cache = { size, keys: [...sorted(params).map((k) => `p:${k}`), ...sorted(metrics).map((k) => `m:${k}`)] };
    }
    return this.cache.keys;
  }

  stored() {
    try { return JSON.parse(localStorage.getItem(`expman.columns:${this.storageKey()}`) || "null"); }
    catch { return null; }
  }

  // the chosen column keys, in order
  chosen() {
    const kept = this.stored();
    if (Array.isArray(kept)) return kept.filter((k) => typeof k === "string");
    const keys = this.allKeys();
    const params = keys.filter((k) => k.startsWith("p:")).slice(0, DEFAULT_EACH);
    const metrics = keys.filter((k) => k.startsWith("m:") && !k.startsWith("m:system/")).slice(0, DEFAULT_EACH);
    return [...params, ...metrics];
  }

  // null: back to the default
  set(keys) {
    try {
      const where = `expman.columns:${this.storageKey()}`;
      if (keys === null) localStorage.removeItem(where); else localStorage.setItem(where, JSON.stringify(keys));
    } catch { /* storage full or off: the choice lasts until the reload */ }
    this.list();
    this.onChange();
  }

  toggle(key, on) {
    const keys = this.chosen().filter((k) => k !== key);
    if (on) keys.push(key);
    this.set(keys);
  }

  matching() {
    const q = this.search.value.trim().toLowerCase();
    const keys = this.allKeys();
    return q ? keys.filter((k) => k.slice(2).toLowerCase().includes(q)) : keys;
  }

  showCount(shown) {
    this.summary.textContent = `columns: ${shown} of ${this.allKeys().length.toLocaleString()}`;
  }

  // the first LISTED names matching the search, ticked when they are columns
  list() {
    if (!this.root.open) return;
    const chosen = new Set(this.chosen());
    const found = this.matching();
    clear(this.items).append(...found.slice(0, LISTED).map((key) => el("li", {},
      el("label", {}, el("input", { type: "checkbox", "data-key": key, checked: chosen.has(key),
        onchange: (e) => this.toggle(key, e.target.checked) }), key.slice(2),
      el("span", { class: key.startsWith("p:") ? "kind param" : "kind metric", text: key.startsWith("p:") ? "param" : "metric" })))));
    this.more.textContent = found.length > LISTED
      ? `${(found.length - LISTED).toLocaleString()} more: narrow the search` : "";
  }
}

const collator = new Intl.Collator(undefined, { numeric: true });
