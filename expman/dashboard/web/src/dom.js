// DOM helpers. Text always goes in through textContent, never innerHTML, so run
// names, params and messages can hold any characters without being markup.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k in node && typeof v !== "string") node[k] = v;
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

export async function getJSON(url, init) {
  const res = await fetch(url, init);
  if (!res.ok) throw new Error(`${res.status} ${(await res.text()).slice(0, 200)}`);
  return res.json();
}

export function runUrl(id) {
  const [exp, ...rest] = id.split("/");
  return `/api/runs/${encodeURIComponent(exp)}/${encodeURIComponent(rest.join("/"))}`;
}

// Tableau 10: distinct, qualitative colours. A run's colour is its listing index
// (oldest run 0, the next 1, ...) in this palette, so neighbours in time never share
// one and a run keeps its colour across reloads and selections.
export const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
  "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];
const colorIndex = new Map();     // run id -> stable index
let nextIndex = 0;

// `index` is the run's position from the oldest (set by the runs view as pages come);
// a run seen without one (a new live run) takes the next free index.
export function setColorIndex(id, index) {
  if (colorIndex.has(id)) return;
  colorIndex.set(id, index);
  nextIndex = Math.max(nextIndex, index + 1);
}

export function runColor(id, alpha = 1) {
  if (!colorIndex.has(id)) setColorIndex(id, nextIndex);
  const hex = PALETTE[colorIndex.get(id) % PALETTE.length];
  if (alpha === 1) return hex;
  const [r, g, b] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
  return `rgba(${r}, ${g}, ${b}, ${alpha})`;
}

export function fmtNum(v) {
  if (v === null || v === undefined) return "";
  if (typeof v === "string") return v;   // "NaN", "Infinity" spelled by the server
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e6) ? v.toExponential(3) : v.toPrecision(4).replace(/\.?0+$/, "");
}

export function fmtTime(t) {
  if (typeof t !== "number") return "";
  const d = new Date(t * 1000);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

export function fmtDuration(s) {
  if (typeof s !== "number" || !isFinite(s)) return "";
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

export function fmtBytes(n) {
  if (typeof n !== "number") return "";
  const u = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${u[i]}`;
}

// {a: {b: 1}} -> {"a.b": 1}
export function flatten(obj, prefix = "", out = {}) {
  if (obj && typeof obj === "object" && !Array.isArray(obj)) {
    for (const [k, v] of Object.entries(obj)) {
      const key = prefix ? `${prefix}.${k}` : k;
      if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, key, out);
      else out[key] = v;
    }
  }
  return out;
}

export function display(v) {
  if (v === null || v === undefined) return "";
  if (typeof v === "number") return fmtNum(v);
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}
