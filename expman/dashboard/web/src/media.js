// Histograms and images compared across the selected runs (the runs view). A tag's
// histograms are drawn per run as a distribution over steps, as TensorBoard draws
// them: bands between the percentiles the server computes (expman.media_read.
// percentiles: 0, 6.68, 15.87, 30.85, 50, ... 100 %), darker towards the median,
// every run on the same y range. A tag's images come side by side, one per run, at
// the step a slider picks (each run's image at the newest step up to it).
import { el, clear, getJSON, runUrl, runColor, fmtNum } from "./dom.js";

const MAX_RUNS = 12;            // runs compared at once (the first selected)
const W = 320, H = 160, PAD = 4;

export class MediaCompare {
  constructor(root) {
    this.root = root;
    this.runs = [];
    this.got = new Map();       // run id -> its /media answer
    this.details = el("details", { class: "media-compare", id: "media-compare" },
      el("summary", { text: "Histograms and images of the selected runs" }), this.body = el("div"));
    this.details.addEventListener("toggle", () => { if (this.details.open) this.load(); });
    root.append(this.details);
  }

  setRuns(ids) {
    this.runs = ids.slice(0, MAX_RUNS);
    if (this.details.open) this.load();
  }

  // asked again at each change of selection or opening (a live run's new steps come then)
  async load() {
    const ticket = (this.ticket = {});
    const answers = await Promise.all(this.runs.map((id) => getJSON(`${runUrl(id)}/media`).then((m) => [id, m]).catch(() => [id, null])));
    if (ticket !== this.ticket) return;
    this.got = new Map(answers.filter(([, m]) => m));
    this.draw();
  }

  draw() {
    const runs = this.runs.filter((id) => this.got.has(id));
    const hTags = [...new Set(runs.flatMap((id) => Object.keys(this.got.get(id).histograms)))].sort();
    const iTags = [...new Set(runs.flatMap((id) => Object.keys(this.got.get(id).images)))].sort();
    clear(this.body);
    if (!hTags.length && !iTags.length) {
      this.body.append(el("p", { class: "muted", text: runs.length ? "no histograms or images logged by the selected runs" : "select runs" }));
    }
    for (const tag of hTags) this.body.append(this.histograms(tag, runs));
    for (const tag of iTags) this.body.append(this.images(tag, runs));
  }

  histograms(tag, runs) {
    const having = runs.filter((id) => this.got.get(id).histograms[tag]?.steps.length);
    let lo = Infinity, hi = -Infinity;
    for (const id of having) for (const p of this.got.get(id).histograms[tag].percentiles) {
      lo = Math.min(lo, p[0]); hi = Math.max(hi, p[p.length - 1]);
    }
    const figs = having.map((id) => {
      const d = this.got.get(id).histograms[tag];
      const canvas = el("canvas", { class: "hist-dist", width: W, height: H, "data-run": id,
        "data-steps": String(d.steps.length), "data-ymin": String(lo), "data-ymax": String(hi) });
      drawDistribution(canvas, d.steps, d.percentiles, lo, hi, runColor(id));
      const swatch = el("span", { class: "swatch", text: "■ " });
      swatch.style.color = runColor(id);          // CSSOM: the page's CSP forbids style attributes
      return el("figure", {}, canvas, el("figcaption", {}, swatch, `${id}: steps ${d.steps[0]}…${d.steps[d.steps.length - 1]}`));
    });
    return el("section", { class: "panel media-tag", "data-tag": tag, "data-kind": "histogram" },
      el("h3", { text: `${tag} (distribution over steps; y ${fmtNum(lo)} … ${fmtNum(hi)})` }), el("div", { class: "media-runs" }, figs));
  }

  images(tag, runs) {
    const having = runs.filter((id) => this.got.get(id).images[tag]?.length);
    const steps = [...new Set(having.flatMap((id) => this.got.get(id).images[tag].map((i) => i.step)))].sort((a, b) => a - b);
    const slider = el("input", { type: "range", class: "media-slider", min: 0, max: steps.length - 1, value: steps.length - 1,
      "aria-label": `step of ${tag}` });
    const label = el("span", { class: "media-step" });
    const figs = having.map((id) => {
      const img = el("img", { alt: `${tag} of ${id}`, "data-run": id });
      return [id, img, el("figure", {}, img, el("figcaption", { text: id }))];
    });
    const show = () => {
      const step = steps[Number(slider.value)];
      label.textContent = `step ${step}`;
      for (const [id, img] of figs) {
        // the newest image at or before the step (a run logging every 10 steps still shows)
        const items = this.got.get(id).images[tag];
        let item = null;
        for (const i of items) if (i.step <= step && (!item || i.step >= item.step)) item = i;
        img.hidden = !item;
        if (!item) continue;
        img.dataset.step = String(item.step);
        img.src = `${runUrl(id)}/artifacts/${item.path.split("/").map(encodeURIComponent).join("/")}`;
      }
    };
    slider.addEventListener("input", show);
    show();
    return el("section", { class: "panel media-tag", "data-tag": tag, "data-kind": "image" },
      el("h3", {}, `${tag} `, label), slider, el("div", { class: "media-runs" }, figs.map((f) => f[2])));
  }
}

// Bands between percentile pairs (outermost palest), then the median, x = step.
function drawDistribution(canvas, steps, pcts, lo, hi, colour) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, W, H);
  const s0 = steps[0], s1 = steps[steps.length - 1];
  const x = (s) => PAD + (s1 === s0 ? (W - 2 * PAD) / 2 : ((s - s0) / (s1 - s0)) * (W - 2 * PAD));
  const y = (v) => H - PAD - ((v - lo) / ((hi - lo) || 1)) * (H - 2 * PAD);
  const n = pcts[0].length, mid = (n - 1) / 2;
  ctx.fillStyle = colour;
  for (let k = 0; k < mid; k++) {
    ctx.globalAlpha = 0.15 + 0.15 * k;
    ctx.beginPath();
    steps.forEach((s, i) => (i ? ctx.lineTo(x(s), y(pcts[i][n - 1 - k])) : ctx.moveTo(x(s), y(pcts[i][n - 1 - k]))));
    for (let i = steps.length - 1; i >= 0; i--) ctx.lineTo(x(steps[i]), y(pcts[i][k]));
    ctx.closePath();
    if (steps.length === 1) ctx.fillRect(x(steps[0]) - 2, y(pcts[0][n - 1 - k]), 4, y(pcts[0][k]) - y(pcts[0][n - 1 - k]));
    else ctx.fill();
  }
  ctx.globalAlpha = 1;
  ctx.strokeStyle = colour;
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  steps.forEach((s, i) => (i ? ctx.lineTo(x(s), y(pcts[i][mid])) : ctx.moveTo(x(s), y(pcts[i][mid]))));
  ctx.stroke();
}
