// Watchdog alerts (docs/watch.md) on the page: a badge on the run (runs table, run
// page) and a marker on the chart of the alert's metric at its step, the message on
// hover. The server reads them with expman.watch.read_alerts (events of every rank
// and alerts.jsonl, one per id).
import { el, getJSON, runUrl, fmtNum } from "./dom.js";

// "nan:train_loss at step 120 (rank 1): train_loss is NaN"
export function alertText(a) {
  const where = [a.step !== null && a.step !== undefined ? `at step ${a.step}` : "",
    a.rank ? `(rank ${a.rank})` : ""].filter(Boolean).join(" ");
  return `${a.rule}${where ? ` ${where}` : ""}: ${a.message}` +
    (a.value !== null && a.value !== undefined && !String(a.message).includes(String(a.value)) ? ` [value ${fmtNum(a.value)}]` : "");
}

export function alertBadge(count, alerts = []) {
  const shown = alerts.slice(-10).map(alertText);
  return el("span", { class: "alert-badge", "data-alerts": String(count), role: "img",
    title: shown.length ? shown.join("\n") : "a watchdog fired: open the run to read its alerts",
    text: count ? `${count} alert${count === 1 ? "" : "s"}` : "alert" });
}

// an alert's x on a chart's axis (null: it has none there, e.g. an x metric)
function alertX(a, axis, start) {
  if (axis === "step") return a.step ?? null;
  if (axis === "time") return a.time || null;
  if (axis === "rel") return a.time && start != null ? a.time - start : null;
  return null;
}

// The alerts of the runs a ChartPanel charts, as its markers.
export class AlertMarkers {
  // onChange(id, alerts): a run's alerts were (re)read
  constructor(panel, onChange = () => {}) {
    this.panel = panel;
    this.onChange = onChange;
    this.byRun = new Map();       // run id -> {alerts, start}
    panel.addMarkers((metric, axis, runs) => this.markers(metric, axis, runs));
  }

  set(id, alerts, start) {
    const before = this.byRun.get(id);
    this.byRun.set(id, { alerts, start });
    if (before && before.alerts.length === alerts.length) return;
    this.panel.redrawMarkers();
    this.onChange(id, alerts);
  }

  // the alerts of these runs, asked again for those still running (a new alert
  // shows at the next runs update)
  async load(rows) {
    const asked = rows.filter((r) => r.alerted && (r.status === "RUNNING" || !this.byRun.has(r.id)));
    await Promise.all(asked.map((r) => getJSON(`${runUrl(r.id)}/alerts`)
      .then((d) => this.set(r.id, d.alerts, r.start_time)).catch(() => {})));
  }

  markers(metric, axis, runs) {
    const out = [];
    for (const id of runs) {
      const got = this.byRun.get(id);
      if (!got) continue;
      for (const a of got.alerts) {
        if (a.metric !== metric) continue;
        const x = alertX(a, axis, got.start);
        if (x !== null) out.push({ x, kind: "alert", label: runs.length > 1 ? `${id}: ${alertText(a)}` : alertText(a) });
      }
    }
    return out;
  }
}
