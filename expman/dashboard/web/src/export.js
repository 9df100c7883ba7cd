// A chart's data out of the page: CSV of the raw points in the visible range (the
// server's /api/export.csv, every point, not the decimated ones drawn) and PNG of
// what is drawn (the plot, its title and its legend's colours).
import { runColor } from "./dom.js";

function download(href, name) {
  const a = document.createElement("a");
  a.href = href;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
}

export function fileName(metric) {
  return metric.replace(/[^A-Za-z0-9._-]+/g, "_").replace(/^_+|_+$/g, "") || "metric";
}

// runs: the chart's run ids; axis: its x axis; zoom: [from, to] or null (everything)
export function exportCsv(metric, runs, axis, zoom) {
  const q = new URLSearchParams({ metric, x: axis });
  runs.forEach((id) => q.append("run", id));
  if (zoom) { q.set("from", String(zoom[0])); q.set("to", String(zoom[1])); }
  download(`/api/export.csv?${q}`, `${fileName(metric)}.csv`);
}

// The plot's canvas under a title line and over a legend line, on the page's
// background (dark mode included), as a PNG file.
export function exportPng(metric, plot, runs) {
  const src = plot.ctx.canvas;
  const ratio = src.width / (plot.width || src.width);
  const styles = getComputedStyle(document.body);
  const pad = Math.round(8 * ratio), line = Math.round(20 * ratio);
  const out = document.createElement("canvas");
  out.width = src.width;
  out.height = src.height + 2 * line + 2 * pad;
  const ctx = out.getContext("2d");
  ctx.fillStyle = styles.backgroundColor || "#fff";
  ctx.fillRect(0, 0, out.width, out.height);
  ctx.fillStyle = styles.color || "#000";
  ctx.font = `bold ${Math.round(14 * ratio)}px system-ui, sans-serif`;
  ctx.textBaseline = "middle";
  ctx.fillText(metric, pad, pad + line / 2);
  ctx.drawImage(src, 0, pad + line);
  ctx.font = `${Math.round(12 * ratio)}px system-ui, sans-serif`;
  let x = pad;
  const y = pad + line + src.height + line / 2;
  for (const id of runs) {
    ctx.fillStyle = runColor(id);
    ctx.fillRect(x, y - 5 * ratio, 10 * ratio, 10 * ratio);
    ctx.fillStyle = styles.color || "#000";
    ctx.fillText(id, x + 14 * ratio, y);
    x += ctx.measureText(id).width + 30 * ratio;
  }
  out.toBlob((blob) => {
    const url = URL.createObjectURL(blob);
    download(url, `${fileName(metric)}.png`);
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  }, "image/png");
}
