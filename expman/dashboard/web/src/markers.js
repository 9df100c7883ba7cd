// Markers on a chart: a vertical line at an x (an alert at its step, a branch point),
// each with a label shown on hover. A marker is {x, label, kind}: `kind` names its
// colour (the CSS variable --marker-KIND, else --marker) and its class (marker-KIND).
// The line is drawn on uPlot's canvas (it is in the PNG export); a thin element over
// it in the plot's overlay carries the label (a title: the browser's tooltip) and
// data-x / data-kind for whoever reads the page; hovering it shows the label over
// the plot (.marker-tip).
const HIT = 7;            // px: the hover target's width

// get(): the markers to draw now (called on each draw: a new alert shows at the next one)
export function markersPlugin(get) {
  let layer = null, tip = null;     // tip: the hovered marker's label, drawn over the plot
  return {
    hooks: {
      init: [(u) => {
        layer = document.createElement("div");
        layer.className = "markers";
        tip = document.createElement("div");
        tip.className = "marker-tip";
        tip.hidden = true;
        u.over.append(layer, tip);
      }],
      draw: [(u) => {
        const markers = (get() || []).filter((m) => Number.isFinite(m.x));
        const { min, max } = u.scales.x;
        const shown = markers.filter((m) => m.x >= min && m.x <= max);
        const ctx = u.ctx, { top, height } = u.bbox;
        const style = getComputedStyle(u.root);
        ctx.save();
        ctx.lineWidth = Math.max(1, devicePixelRatio);
        ctx.setLineDash([4 * devicePixelRatio, 3 * devicePixelRatio]);
        for (const m of shown) {
          ctx.strokeStyle = colour(style, m.kind);
          const cx = Math.round(u.valToPos(m.x, "x", true)) + 0.5;
          ctx.beginPath();
          ctx.moveTo(cx, top);
          ctx.lineTo(cx, top + height);
          ctx.stroke();
        }
        ctx.restore();
        layer.replaceChildren(...shown.map((m) => {
          const d = document.createElement("div");
          d.className = `marker marker-${String(m.kind).replace(/\W/g, "")}`;
          d.style.left = `${u.valToPos(m.x, "x") - HIT / 2}px`;
          d.style.width = `${HIT}px`;
          d.title = m.label;
          d.dataset.x = String(m.x);
          d.dataset.kind = m.kind;
          d.setAttribute("aria-label", m.label);
          d.addEventListener("mouseenter", () => showTip(u, tip, m.label, u.valToPos(m.x, "x")));
          d.addEventListener("mouseleave", () => { tip.hidden = true; });
          return d;
        }));
        u.root.closest("[data-metric]")?.setAttribute("data-markers", String(shown.length));
      }],
    },
  };
}

function showTip(u, tip, text, left) {
  tip.textContent = text;
  tip.hidden = false;
  const room = u.over.clientWidth - tip.offsetWidth;
  tip.style.left = `${Math.max(0, Math.min(left + 8, room))}px`;
}

function colour(style, kind) {
  return style.getPropertyValue(`--marker-${kind}`).trim() || style.getPropertyValue("--marker").trim() || "#e15759";
}
