// A forked or branched run on its page (issue 23): its lineage (the parents whose
// first steps it inherits, the runs forked from it), its branches, and what its
// charts add: a marker where each fork and each rewind or resume starts, and, on
// request, the points each abandoned branch left, drawn faint. The main history
// itself is one curve: the server folds it (/series of a branched run).
import { el, getJSON, runUrl, runColor, fmtTime } from "./dom.js";

const MARK = { fork: "#6d28d9", rewind: "#b45309", resume: "#0369a1" };

const runHref = (id) => `#/run/${id.split("/").map(encodeURIComponent).join("/")}`;

// {section, overlay}: the page's "Branches and lineage" section (null when the run
// neither forked, was forked from, nor branched) and the charts' overlay (null when
// there is nothing to mark).
export async function branchView(id) {
  let info;
  try {
    info = await getJSON(`${runUrl(id)}/branches`);
  } catch (e) {
    return { section: el("p", { class: "error", text: `branches: ${e.message}` }), overlay: null };
  }
  const overlay = info.markers.length || info.branches.length > 1 ? new BranchOverlay(id, info) : null;
  const related = info.lineage.length > 1 || info.parent || info.children.length;
  if (!related && info.branches.length < 2 && !info.problems.length) return { section: null, overlay };
  return { section: section(info, overlay), overlay };
}

function section(info, overlay) {
  const body = [lineage(info)];
  if (info.branches.length) body.push(branchTable(info));
  if (overlay && overlay.abandonedIds().length) {
    const box = el("input", { type: "checkbox", id: "show-abandoned" });
    box.addEventListener("change", () => overlay.setAbandoned(box.checked));
    body.push(el("label", { class: "abandoned-toggle" }, box,
      " draw abandoned branches (faint, dashed) on the charts"));
  }
  if (info.problems.length) {
    body.push(el("ul", { class: "error", id: "lineage-problems" }, info.problems.map((p) => el("li", { text: p }))));
  }
  return el("section", { class: "panel", id: "branches-panel" }, el("h2", { text: "Branches and lineage" }), ...body);
}

// Parents first (each with the step its fork kept up to), this run, then its forks.
function lineage(info) {
  const chain = el("ol", { class: "lineage", id: "lineage" }, info.lineage.map((p) => {
    if (p.run === info.id) return el("li", { class: "lineage-self", "data-run": p.run }, el("strong", { text: p.run }), " (this run)");
    const link = p.present ? el("a", { href: runHref(p.run), text: p.run }) : el("span", { class: "missing", text: `${p.run} (missing)` });
    return el("li", { "data-run": p.run }, link,
      p.fork_step === null ? "" : el("span", { class: "muted", text: ` steps up to ${p.fork_step}` }));
  }));
  const kids = info.children.length
    ? el("ul", { id: "lineage-children" }, info.children.map((c) => el("li", { "data-run": c.run },
      el("a", { href: runHref(c.run), text: c.run }),
      el("span", { class: "muted", text: ` forked at step ${c.fork_step ?? "?"}` + (c.status ? `, ${c.status}` : "") }))))
    : el("p", { class: "muted", id: "lineage-children", text: "no run was forked from this one" });
  return el("div", { class: "lineage-view" }, el("h3", { text: "Parents" }), chain, el("h3", { text: "Forks of this run" }), kids);
}

function branchTable(info) {
  const rows = info.branches.map((b) => el("tr", { "data-branch": String(b.id), class: b.main ? "main-branch" : "abandoned-branch" },
    el("td", { class: "num", text: String(b.id) }), el("td", { text: b.kind }),
    el("td", { class: "num", text: b.from_step ?? "-" }),
    el("td", { text: b.first_step === null ? "-" : `${b.first_step}–${b.last_step}` }),
    el("td", { class: "num", text: String(b.points) }), el("td", { text: b.time ? fmtTime(b.time) : "-" }),
    el("td", { text: b.main ? "main history" : `abandoned from step ${b.cut_at}` })));
  return el("table", { class: "grid", id: "branches" }, el("thead", {}, el("tr", {},
    ["branch", "kind", "from step", "steps", "points", "made", ""].map((h) => el("th", { text: h })))),
  el("tbody", {}, rows));
}

// What a ChartPanel draws on top of one run's charts (charts.js asks it).
class BranchOverlay {
  constructor(id, info) {
    this.id = id;
    this.info = info;
    this.showAbandoned = false;
    this.panel = null;
  }

  abandonedIds() { return this.info.branches.filter((b) => b.cut_at !== null).map((b) => b.id); }

  setAbandoned(on) {
    this.showAbandoned = on;
    if (this.panel) this.panel.charts.forEach((c) => c.invalidate());
  }

  // the faint series of a chart: each abandoned branch's left-out points
  async series(metric, query) {
    if (!this.showAbandoned) return [];
    const found = await Promise.all(this.abandonedIds().map((b) =>
      getJSON(`${runUrl(this.id)}/series?${query}&branch=${b}`).then((r) => ({ branch: b, run: this.id,
        label: `${this.id} branch ${b} (abandoned)`, x: r.x, y: r.y, count: r.count })).catch(() => null)));
    return found.filter((f) => f && f.x.length);
  }

  // markers on the chart's x axis: steps, or (rewinds and resumes) their wall time
  markers(xAxis, start) {
    return this.info.markers.map((m) => ({ ...m,
      x: xAxis === "step" ? m.step : m.time === null ? null : xAxis === "time" ? m.time : m.time - (start ?? m.time) }))
      .filter((m) => m.x !== null && m.x !== undefined);
  }

  draw(u, xAxis, start) {
    const ctx = u.ctx;
    const { left, top, width, height } = u.bbox;
    ctx.save();
    ctx.lineWidth = 1.5 * devicePixelRatio;
    ctx.font = `${10 * devicePixelRatio}px system-ui, sans-serif`;
    const drawn = [];          // [kind, canvas x]: what the page shows, for tests and tools
    for (const m of this.markers(xAxis, start)) {
      const x = u.valToPos(m.x, "x", true);
      if (!(x >= left && x <= left + width)) continue;
      drawn.push([m.kind, Math.round(x)]);
      ctx.strokeStyle = ctx.fillStyle = MARK[m.kind] || "#444";
      ctx.setLineDash([5 * devicePixelRatio, 4 * devicePixelRatio]);
      ctx.beginPath();
      ctx.moveTo(x, top);
      ctx.lineTo(x, top + height);
      ctx.stroke();
      ctx.fillText(m.kind === "fork" ? "fork" : m.kind, x + 3 * devicePixelRatio, top + 11 * devicePixelRatio);
    }
    ctx.restore();
    u.root.dataset.markersDrawn = JSON.stringify(drawn);
  }

  color(run) { return runColor(run, 0.35); }
}
