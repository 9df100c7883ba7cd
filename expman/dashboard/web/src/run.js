// The run page (params, environment, exit, messages, artifacts, integrity,
// metric summary and charts, media, logged tables) and the compare view (params side by side, the
// differing ones highlighted).
import { el, clear, getJSON, runUrl, flatten, display, fmtNum, fmtTime, fmtBytes, fmtDuration } from "./dom.js";
import { ChartPanel } from "./charts.js";
import { lossText } from "./runs.js";
import { branchView } from "./branches.js";
import { alertBadge, AlertMarkers } from "./alerts.js";

const MAX_MESSAGES = 2000;      // the newest; the API pages through the rest
const METRICS_SHOWN = 20;       // summary rows per page of the run page's metric table
const TABLE_PAGE = 50;          // rows of a logged table per page
const ARTIFACTS_PAGE = 100;     // artifact rows per page (the detail brings the first)
const RANK_SEP = " rank ";      // a rank's curves are charted as the series "EXP/RUN rank R"

// Every rank's status, the one that decided the run's and why (expman.liveness.run_status,
// as `expman ranks` prints it), and a switch overlaying each rank's curves on the charts.
function ranksSection(run, onOverlay) {
  const ranks = run.ranks || [];
  const decided = run.status_rank;
  const table = el("table", { class: "grid ranks", id: "ranks" }, el("thead", {}, el("tr", {},
    ["rank", "status", "pid", "host", ""].map((h) => el("th", { text: h })))),
  el("tbody", {}, ranks.map((r) => el("tr", { "data-rank": String(r.rank), class: r.rank === decided ? "decided" : "" },
    el("td", { class: "num", text: String(r.rank) }),
    el("td", {}, el("span", { class: `status status-${r.status || "none"}`, text: r.status || "never opened" })),
    el("td", { class: "num", text: r.pid ?? "" }), el("td", { text: r.host ?? "" }), el("td", { text: r.why })))));
  const verdict = el("p", { id: "status-decided", text: decided !== null && decided !== undefined
    ? `${run.status}, decided by rank ${decided}: ${run.status_reason}`
    : `${run.status}: every rank ${run.status === "RUNNING" ? "is running or closed" : "closed cleanly"}` });
  const overlay = el("label", { class: "rank-overlay" }, el("input", { type: "checkbox", id: "rank-overlay",
    onchange: (e) => onOverlay(e.target.checked) }), ` overlay every rank's curves on the charts (${ranks.length} ranks)`);
  return section("Ranks", verdict, ranks.length > 1 ? overlay : "", table);
}

function alertsSection(alerts, total) {
  if (!alerts.length) return null;
  const rows = alerts.map((a) => el("tr", { "data-alert": a.id }, el("td", { text: fmtTime(a.time) }),
    el("td", { text: a.rule }), el("td", { text: a.metric ?? "" }), el("td", { class: "num", text: a.step ?? "" }),
    el("td", { class: "num", text: String(a.rank ?? 0) }), el("td", { class: "msg", text: a.message })));
  return section(`Alerts (${total})`, total > alerts.length ? el("p", { class: "muted", text: `the newest ${alerts.length}` }) : "",
    el("table", { class: "grid alerts", id: "alerts" }, el("thead", {}, el("tr", {},
      ["time", "rule", "metric", "step", "rank", "message"].map((h) => el("th", { text: h })))), el("tbody", {}, rows)));
}

// one artifact's row and its preview (an image, a text file's first bytes)
function artifactRow(id, a, previews) {
  const href = `${runUrl(id)}/artifacts/${a.file.split("/").map(encodeURIComponent).join("/")}`;
  const actions = el("td", {}, el("a", { href, download: a.name.split("/").pop(), text: "download" }));
  if (a.image) {
    actions.append(" ", el("a", { href, target: "_blank", rel: "noopener", class: "view-image", text: "open" }));
    previews.append(el("figure", {}, el("img", { src: href, alt: a.name, class: "artifact-image", loading: "lazy" }),
      el("figcaption", { text: a.name })));
  } else if (a.text) {
    const pre = el("pre", { class: "artifact-text" });
    previews.append(el("figure", {}, pre, el("figcaption", { text: a.name })));
    fetch(`${href}?head=65536`).then((r) => r.text()).then((t) => { pre.textContent = t; }).catch(() => {});
  }
  return el("tr", { class: a.present ? "" : "missing" }, el("td", { text: a.label }),
    el("td", { class: "num", text: fmtBytes(a.size) }), el("td", { class: "hash", text: a.sha256 || "" }), actions);
}

function kvTable(obj, id) {
  const flat = flatten(obj || {});
  const rows = Object.entries(flat);
  const table = el("table", { class: "kv", id });
  const body = el("tbody", {}, rows.map(([k, v]) => el("tr", { "data-key": k },
    el("th", { text: k }), el("td", { text: display(v) }))));
  table.append(body);
  if (!rows.length) body.append(el("tr", {}, el("td", { text: "none" })));
  return table;
}

function searchable(obj, id, placeholder) {
  const table = kvTable(obj, id);
  const input = el("input", { type: "search", placeholder, class: "kv-search", "aria-label": placeholder,
    oninput: (e) => {
      const q = e.target.value.toLowerCase();
      for (const tr of table.querySelectorAll("tr[data-key]")) {
        tr.hidden = !!q && !tr.textContent.toLowerCase().includes(q);
      }
    } });
  return el("div", {}, input, table);
}

function section(title, ...body) {
  return el("section", { class: "panel" }, el("h2", { text: title }), ...body);
}

// When another rank decided the run's status, the read model's reason names it.
function exitSummary(status, exit, reason, rank) {
  if (reason && rank) return reason;
  if (status === "RUNNING") return "running";
  if (status === "CRASHED") return "the process died without a word (no final status was written)";
  if (!exit) return status === "FINISHED" ? "closed cleanly" : status;
  const parts = [];
  if (exit.type) parts.push(`${exit.type}: ${exit.message ?? ""}` + (exit.location ? ` at ${exit.location}` : ""));
  if (exit.code !== undefined && exit.code !== null) parts.push(`exit code ${exit.code}`);
  if (exit.signal) parts.push(`signal ${exit.signal}`);
  return parts.join(", ") || String(exit.reason || status);
}

// The environment without its package list, then the packages folded away.
function environment(env) {
  const { packages, ...rest } = env;
  const out = [searchable(rest, "env", "search environment")];
  if (packages && typeof packages === "object") {
    const n = Array.isArray(packages) ? packages.length : Object.keys(packages).length;
    out.push(el("details", { id: "packages" }, el("summary", { text: `${n} packages` }),
      searchable(Array.isArray(packages) ? Object.fromEntries(packages.map((p, i) => [String(i), p])) : packages,
        "packages-table", "search packages")));
  }
  return out;
}

// A histogram as bars on a canvas: bucket i spans [edges[i], edges[i+1]).
function drawHistogram(canvas, edges, counts) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 4;
  ctx.clearRect(0, 0, w, h);
  const lo = edges[0], hi = edges[edges.length - 1];
  const top = Math.max(...counts, 0) || 1;
  const x = (v) => pad + ((v - lo) / ((hi - lo) || 1)) * (w - 2 * pad);
  ctx.fillStyle = "#2a9d8f";
  counts.forEach((c, i) => {
    const x0 = x(edges[i]), x1 = x(edges[i + 1]);
    const bh = (c / top) * (h - 2 * pad);
    ctx.fillRect(x0, h - pad - bh, Math.max(1, x1 - x0 - 1), bh);
  });
}

// One tag of logged histograms or images, with a slider over its steps.
function mediaPanel(id, tag, items, kind) {
  const label = el("span", { class: "media-step" });
  const view = kind === "image" ? el("img", { class: "media-image", alt: tag })
    : el("canvas", { class: "media-hist", width: 480, height: 160 });
  const range = el("div", { class: "muted media-range" });
  const slider = el("input", { type: "range", min: 0, max: items.length - 1, value: items.length - 1,
    class: "media-slider", "aria-label": `step of ${tag}` });
  const show = () => {
    const item = items[Number(slider.value)];
    label.textContent = `step ${item.step}`;
    view.dataset.step = String(item.step);
    if (kind === "image") {
      view.src = `${runUrl(id)}/artifacts/${item.path.split("/").map(encodeURIComponent).join("/")}`;
    } else {
      drawHistogram(view, item.edges.map(Number), item.counts);
      range.textContent = `${fmtNum(Number(item.edges[0]))} … ${fmtNum(Number(item.edges[item.edges.length - 1]))}, ` +
        `${item.counts.length} buckets`;
    }
  };
  slider.addEventListener("input", show);
  show();
  return el("figure", { class: "media", "data-tag": tag, "data-kind": kind },
    el("figcaption", {}, el("strong", { text: tag }), " ", label), slider, view, range);
}

// One logged table (log_table, wandb.Table): a version selector (by step), pages of rows.
function tablePanel(id, name, count) {
  const url = `${runUrl(id)}/tables/${name.split("/").map(encodeURIComponent).join("/")}`;
  const select = el("select", { class: "table-version", "aria-label": `version of ${name}` });
  const info = el("span", { class: "muted table-range" });
  const prev = el("button", { type: "button", class: "table-prev", text: "‹ prev" });
  const next = el("button", { type: "button", class: "table-next", text: "next ›" });
  const grid = el("table", { class: "grid logged-table" });
  let version = -1;
  let offset = 0;
  let asked = 0;                // only the newest request's answer is shown
  const load = async () => {
    const mine = ++asked;
    let page;
    try {
      page = await getJSON(`${url}?version=${version}&offset=${offset}&limit=${TABLE_PAGE}`);
    } catch (e) {
      if (mine === asked) clear(grid).append(el("tr", {}, el("td", { class: "error", text: e.message })));
      return;
    }
    if (mine !== asked) return;
    if (!select.options.length) {
      page.versions.forEach((v, i) => select.append(el("option", { value: String(i), text: `step ${v.step} (${v.rows} rows)` })));
    }
    select.value = String(page.version);
    version = page.version;
    const end = Math.min(page.offset + page.rows.length, page.total);
    info.textContent = page.total ? `rows ${page.offset + 1}–${end} of ${page.total}` : "no rows";
    prev.disabled = page.offset <= 0;
    next.disabled = end >= page.total;
    clear(grid).append(el("thead", {}, el("tr", {}, page.columns.map((c) => el("th", { text: c })))),
      el("tbody", {}, page.rows.map((r) => el("tr", {}, r.map((v) => el("td", { class: typeof v === "number" ? "num" : "", text: display(v) }))))));
  };
  select.addEventListener("change", () => { version = Number(select.value); offset = 0; load(); });
  prev.addEventListener("click", () => { offset = Math.max(0, offset - TABLE_PAGE); load(); });
  next.addEventListener("click", () => { offset += TABLE_PAGE; load(); });
  load();
  return el("figure", { class: "logged", "data-table": name },
    el("figcaption", {}, el("strong", { text: name }), ` ${count.versions} version(s) `, select, " ", prev, next, " ", info),
    grid);
}

export async function showRun(root, id) {
  clear(root).append(el("p", { text: `loading ${id}…` }));
  let run;
  try {
    run = await getJSON(runUrl(id));
  } catch (e) {
    clear(root).append(el("p", { class: "error", text: `cannot open ${id}: ${e.message}` }));
    return;
  }
  const meta = run.meta || {};
  const exit = meta.exit;
  // the alerts' badge and table, drawn again when a live run records another
  const badgeBox = el("span", { id: "alert-badge-box" });
  const alertsBox = el("div", { id: "alerts-box" });
  const showAlerts = (alerts, total) => {
    badgeBox.replaceChildren(...(total ? [alertBadge(total, alerts)] : []));
    alertsBox.replaceChildren(...[alertsSection(alerts, total)].filter(Boolean));
  };
  showAlerts(run.alerts || [], run.alert_count || 0);
  const head = el("div", { class: "run-head" },
    el("h1", {}, el("span", { text: `${run.experiment} / ` }), el("span", { id: "run-title", text: run.run_name })),
    el("span", { class: `status status-${run.status}`, text: run.status }),
    run.integrity.data_loss ? el("span", { class: "loss", id: "data-loss-badge", text: "data lost",
      title: Object.entries(run.integrity.data_loss).map(([r, l]) => `rank ${r}: ${lossText(l)}`).join("; ") }) : null,
    badgeBox,
    el("span", { class: "muted", text: ` started ${fmtTime(meta.start_time)}` +
      (typeof meta.duration === "number" ? `, ran ${fmtDuration(meta.duration)}` : "") }));
  const exitBox = section("Status and exit", el("p", { id: "exit-summary", text: exitSummary(run.status, exit, run.status_reason, run.status_rank) }),
    exit && typeof exit === "object" ? kvTable(exit, "exit") : "");

  // the metric summaries a page at a time from the server (a run may log 12,000
  // names); the search filters the table and picks the charts
  const metricBody = el("tbody");
  const metricCount = el("span", { class: "muted", id: "metric-count" });
  const moreMetrics = el("button", { id: "more-metrics", type: "button", text: "more", hidden: true });
  const metrics = el("table", { class: "grid", id: "metric-summary" }, el("thead", {}, el("tr", {},
    ["metric", "points", "last", "last step", "min", "max"].map((h) => el("th", { text: h })))), metricBody);
  let query = "", shown = 0, asked = 0;
  async function showMetrics(more = false) {
    const ticket = ++asked;
    const page = await getJSON(`${runUrl(id)}/metrics?${new URLSearchParams({ q: query, offset: more ? String(shown) : "0", limit: String(METRICS_SHOWN) })}`);
    if (ticket !== asked) return;                 // a newer search won
    if (!more) { clear(metricBody); shown = 0; }
    metricBody.append(...page.metrics.map((m) => el("tr", { "data-metric": m.name },
      el("td", { text: m.name }), el("td", { class: "num", text: String(m.count) }),
      el("td", { class: "num", text: fmtNum(m.last_value) }), el("td", { class: "num", text: display(m.last_step) }),
      el("td", { class: "num", text: fmtNum(m.min) }), el("td", { class: "num", text: fmtNum(m.max) }))));
    shown += page.metrics.length;
    metricCount.textContent = `${shown.toLocaleString()} of ${page.total.toLocaleString()} metrics` +
      (query ? ` matching "${query}"` : "");
    moreMetrics.hidden = shown >= page.total;
  }
  moreMetrics.addEventListener("click", () => showMetrics(true));
  let typing = null;
  const metricSearch = el("input", { type: "search", id: "run-metric-search",
    placeholder: "search metrics", "aria-label": "search metrics", oninput: (e) => {
      query = e.target.value.trim();
      panel.setOption("filter", query);
      clearTimeout(typing);
      typing = setTimeout(() => showMetrics().catch(() => {}), 150);
    } });

  // the artifacts a page at a time (a run may record 100,000): the detail brings the first
  const arts = el("table", { class: "grid", id: "artifacts" }, el("thead", {}, el("tr", {},
    ["artifact", "size", "sha256", ""].map((h) => el("th", { text: h })))));
  const artBody = el("tbody");
  const previews = el("div", { class: "previews" });
  const artCount = el("p", { class: "muted", id: "artifact-count" });
  const moreArts = el("button", { id: "more-artifacts", type: "button", text: "more artifacts", hidden: true });
  const artTotal = run.artifact_count ?? run.artifacts.length;
  const addArtifacts = (list) => {
    artBody.append(...list.map((a) => artifactRow(id, a, previews)));
    const n = artBody.childElementCount;
    artCount.textContent = n < artTotal ? `${n.toLocaleString()} of ${artTotal.toLocaleString()} artifacts` : "";
    moreArts.hidden = n >= artTotal;
  };
  moreArts.addEventListener("click", async () => {
    const page = await getJSON(`${runUrl(id)}/artifact-list?offset=${artBody.childElementCount}&limit=${ARTIFACTS_PAGE}`);
    addArtifacts(page.artifacts);
  });
  addArtifacts(run.artifacts);
  arts.append(artBody);

  const ig = run.integrity;
  const integrity = el("div", {}, el("p", { class: ig.ok ? "ok" : "error", id: "integrity",
    text: ig.ok ? "intact: every frame and event line read" : `${ig.problems.length} problem(s)` }),
  el("ul", {}, ig.problems.map((p) => el("li", { text: p }))), kvTable(ig.metrics, "integrity-counts"));

  const media = el("div", { id: "media" });
  const m = run.media || { histograms: {}, images: {} };
  for (const [tag, items] of Object.entries(m.histograms)) media.append(mediaPanel(id, tag, items, "histogram"));
  for (const [tag, items] of Object.entries(m.images)) media.append(mediaPanel(id, tag, items, "image"));
  if (!media.childElementCount) media.append(el("p", { class: "muted", text: "no histograms or images logged" }));

  const tables = el("div", { id: "tables" });
  for (const [name, count] of Object.entries(run.tables || {})) tables.append(tablePanel(id, name, count));
  if (!tables.childElementCount) tables.append(el("p", { class: "muted", text: "no tables logged" }));

  const messages = el("ol", { class: "timeline", id: "messages" });
  const chartsRoot = el("div", { class: "charts" });
  const branches = await branchView(id);
  let panel = null;
  const rankIds = (run.ranks || []).filter((r) => r.rank > 0 && r.status).map((r) => `${id}${RANK_SEP}${r.rank}`);
  const ranks = ranksSection(run, (on) => {
    panel.setRuns(on ? [id, ...rankIds] : [id], panel.metrics);
  });
  clear(root).append(head, exitBox, ranks, alertsBox, branches.section || "",
    section("Metrics", el("div", { class: "controls" }, metricSearch, metricCount), metrics, moreMetrics, chartsRoot),
    section("Histograms and images", media),
    section("Tables", tables),
    section("Params", searchable(run.params, "params", "search params")),
    section("Messages", messages),
    section("Artifacts", arts, artCount, moreArts, previews),
    section("Environment", ...environment(meta.env || {})),
    section("Integrity", integrity));
  // rank r's curves are the series "EXP/RUN rank r", read with /series?rank=r
  const seriesUrl = (rid, q) => {
    const at = rid.lastIndexOf(RANK_SEP);
    return at > 0 && rid.slice(0, at) === id ? `${runUrl(id)}/series?${q}&rank=${rid.slice(at + RANK_SEP.length)}`
      : `${runUrl(rid)}/series?${q}`;
  };
  panel = new ChartPanel(chartsRoot, { seriesUrl, exported: (rid) => rid === id, storageKey: () => document.getElementById("base").textContent,
    overlay: branches.overlay });
  panel.alerts = new AlertMarkers(panel, (rid, alerts) => showAlerts(alerts, Math.max(alerts.length, run.alert_count || 0)));
  panel.alerts.set(id, run.alerts || [], meta.start_time ?? null);
  panel.setRuns([id], run.metric_names || Object.keys(run.metrics));
  showMetrics().catch((e) => metricCount.append(` (${e.message})`));
  try {
    const { events, total } = await getJSON(`${runUrl(id)}/events?kind=message&last=${MAX_MESSAGES}`);
    if (total > events.length) {
      messages.append(el("li", { class: "muted", text: `the last ${events.length} of ${total} messages` }));
    }
    for (const ev of events) {
      messages.append(el("li", { class: `level-${String(ev.level || "info").replace(/\W/g, "")}` },
        el("time", { text: fmtTime(ev.time) }), el("span", { class: "level", text: String(ev.level || "info") }),
        el("span", { class: "msg", text: String(ev.msg ?? ev.message ?? "") })));
    }
    if (!events.length) messages.append(el("li", { text: "no messages" }));
  } catch (e) {
    messages.append(el("li", { class: "error", text: e.message }));
  }
  return panel;
}

export async function showCompare(root, ids) {
  clear(root).append(el("p", { text: "loading…" }));
  const runs = await Promise.all(ids.map((id) => getJSON(runUrl(id)).catch(() => null)));
  const ok = runs.map((r, i) => [ids[i], r]).filter(([, r]) => r);
  const flats = ok.map(([, r]) => flatten(r.params));
  const keys = [...new Set(flats.flatMap((f) => Object.keys(f)))].sort();
  const onlyDiff = el("input", { type: "checkbox", id: "only-diff" });
  const body = el("tbody");
  for (const k of keys) {
    const vals = flats.map((f) => (k in f ? display(f[k]) : "—"));
    const differs = vals.some((v) => v !== vals[0]);
    body.append(el("tr", { class: differs ? "diff" : "same", "data-key": k }, el("th", { text: k }),
      vals.map((v) => el("td", { text: v }))));
  }
  onlyDiff.addEventListener("change", () => {
    for (const tr of body.querySelectorAll("tr.same")) tr.hidden = onlyDiff.checked;
  });
  const head = el("tr", {}, el("th", { text: "param" }), ok.map(([id]) =>
    el("th", {}, el("a", { href: `#/run/${id.split("/").map(encodeURIComponent).join("/")}`, text: id }))));
  const lastRows = [...new Set(ok.flatMap(([, r]) => Object.keys(r.metrics)))].sort().map((m) =>
    el("tr", {}, el("th", { text: m }), ok.map(([, r]) => el("td", { class: "num", text: fmtNum(r.metrics[m]?.last_value) }))));
  clear(root).append(el("h1", { text: `Compare ${ok.length} runs` }),
    el("label", {}, onlyDiff, " only differing params"),
    el("table", { class: "grid compare", id: "compare" }, el("thead", {}, head), body),
    el("h2", { text: "Last metric values" }),
    el("table", { class: "grid compare" }, el("thead", {}, head.cloneNode(true)), el("tbody", {}, lastRows)));
}
