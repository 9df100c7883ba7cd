// Axis ticks that stay readable at any scale: values with SI prefixes (k, M, G, T;
// m, µ, n below 0.01), one prefix per axis so its labels read alike; bytes in
// binary units on power-of-two ticks for byte-valued series (system/*_bytes, rss);
// durations on relative time; and tick spacing from the widest label, so the
// labels of a 5 M-step axis never overlap.

import { themeColor } from "./theme.js";

const SI = [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]];
const SMALL = [[1e-3, "m"], [1e-6, "µ"], [1e-9, "n"]];
const BINARY = [[2 ** 40, "TiB"], [2 ** 30, "GiB"], [2 ** 20, "MiB"], [2 ** 10, "KiB"]];
const CHAR_PX = 7;            // an axis label's character, about (uPlot's 12px font)

// "bytes" (system/proc/rss_bytes, .../mem_used_bytes, a name holding rss or memory),
// "bytes/s" (..._bytes_per_s), "%" (..._percent), or "" (a plain number)
export function unitOf(metric) {
  const name = metric.toLowerCase();
  if (/percent/.test(name)) return "%";
  if (/bytes_per_s/.test(name)) return "bytes/s";
  if (/bytes|(^|[/_])rss($|[/_])|memory/.test(name)) return "bytes";
  return "";
}

// the prefix [factor, symbol] for values up to `scale`
function prefixFor(scale, unit) {
  if (unit === "bytes" || unit === "bytes/s") {
    for (const p of BINARY) if (scale >= p[0]) return p;
    return [1, "B"];
  }
  for (const p of SI) if (scale >= p[0] && !(p[1] === "k" && scale < 1e4)) return p;   // 1200, not 1.2k
  if (scale > 0 && scale < 0.01) for (const p of SMALL) if (scale >= p[0] * 0.999) return p;
  return [1, ""];
}

function suffix(symbol, unit) {
  if (unit === "bytes") return ` ${symbol}`;
  if (unit === "bytes/s") return ` ${symbol}/s`;
  return symbol + (unit === "%" ? "%" : "");
}

// one value, alone (a legend, a tooltip): three significant digits and its prefix
export function fmtSI(v, unit = "") {
  if (v === null || v === undefined || !isFinite(v)) return v === null || v === undefined ? "" : String(v);
  if (v === 0) return unit === "bytes" || unit === "bytes/s" ? `0 ${suffix("B", unit).trim()}` : "0";
  const [f, sym] = prefixFor(Math.abs(v), unit);
  const n = v / f;
  return String(Number(n.toPrecision(3))) + suffix(sym, unit);
}

// an axis's labels: one prefix for all (from the largest), as many decimals as the
// step between ticks needs
export function tickLabels(splits, incr, unit = "") {
  const scale = Math.max(...splits.map((v) => Math.abs(v)).filter(isFinite), 0);
  const [f, sym] = prefixFor(scale, unit);
  const step = Math.abs(incr / f);
  let decimals = 0;           // the fewest that write the step exactly (0.25 GiB: 2)
  while (decimals < 6 && isFinite(step) && step > 0 &&
    Math.abs(step * 10 ** decimals - Math.round(step * 10 ** decimals)) > 1e-6 * Math.max(1, step * 10 ** decimals)) decimals++;
  const tail = suffix(sym, unit);
  const zero = Math.abs(incr) * 1e-6;          // a split computed as 1e-10 is the 0 tick
  return splits.map((v) => (v === null || v === undefined ? "" : Math.abs(v) <= zero ? "0" : (v / f).toFixed(decimals) + tail));
}

// seconds as a duration: 45s, 12m30s, 3h5m
export function fmtSeconds(s) {
  const sign = s < 0 ? "-" : "";
  s = Math.abs(s);
  if (s < 60) return sign + `${Number(s.toPrecision(3))}s`;
  if (s < 3600) { const m = Math.floor(s / 60), r = Math.round(s % 60); return sign + `${m}m` + (r ? `${r}s` : ""); }
  const h = Math.floor(s / 3600), m = Math.round((s % 3600) / 60);
  return sign + `${h}h` + (m ? `${m}m` : "");
}

const DURATION_INCRS = [];      // 1, 2, 5 below a second; then minutes and hours
for (let e = -9; e < 0; e++) DURATION_INCRS.push(10 ** e, 2 * 10 ** e, 5 * 10 ** e);
DURATION_INCRS.push(1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
  172800, 604800, 1209600, 2592000);
const BYTE_INCRS = [];
for (let p = 0; p <= 50; p++) BYTE_INCRS.push(2 ** p);

// the label of the x axis
export function xLabel(axis) {
  if (axis.startsWith("metric:")) return axis.slice(7);
  return { step: "step", rel: "relative time", time: "wall time" }[axis] || axis;
}

// room for the widest label of a scale, so ticks are never closer than their labels
function spaceFor(format) {
  return (u, axisIdx, min, max) => {
    const widest = Math.max(...[min, max, (min + max) / 2].map((v) => format(v).length));
    return Math.max(50, widest * CHAR_PX + 24);
  };
}

// the theme's colours of an axis: labels, grid and ticks
function colours() {
  const grid = { stroke: themeColor("--grid"), width: 1 };
  return { stroke: themeColor("--fg"), grid, ticks: grid };
}

// uPlot options of the x axis for `axis` (wall time keeps uPlot's own date ticks)
export function xAxisOpts(axis, label, extra = {}) {
  extra = { ...colours(), ...extra };
  if (axis === "time") return { label, space: 90, ...extra };
  if (axis === "rel") {
    return { label, incrs: DURATION_INCRS, space: spaceFor(fmtSeconds),
      values: (u, splits, i, space, incr) => splits.map((v) => (v === null ? "" : fmtSeconds(Math.abs(v) <= incr * 1e-6 ? 0 : v))), ...extra };
  }
  return { label, space: spaceFor((v) => fmtSI(v)), values: (u, splits, i, space, incr) => tickLabels(splits, incr), ...extra };
}

// uPlot options of the y axis of `metric`
export function yAxisOpts(metric, extra = {}) {
  const unit = unitOf(metric);
  const bytes = unit === "bytes" || unit === "bytes/s";
  return { size: 72, ...colours(), ...(bytes ? { incrs: BYTE_INCRS } : {}),
    values: (u, splits, i, space, incr) => tickLabels(splits, incr, unit), ...extra };
}
