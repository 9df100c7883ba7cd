"""Draw docs/bench.png from a bench/compare.py results file.

    python bench/_plot.py bench/results/<date>.json docs/bench.png

Left: ns per log call (2 keys tight, 2 keys spaced, 20 keys tight), log scale.
Right: slowdown of a CPU-bound pure-Python loop that logs every step, log scale
(values at or below 0.1 % are drawn at 0.1 % and labelled with the measurement).
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src: str, dst: str) -> None:
    data = json.load(open(src))
    res = [r for r in data["results"] if "timing" in r and r["timing"]]
    res.sort(key=lambda r: r["timing"]["tight2_ns"])
    names = [r["peer"] for r in res]
    y = range(len(res))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 0.55 * len(res) + 2.9),
                                 gridspec_kw={"width_ratios": [3, 2]})
    series = [("tight2_ns", "2 keys, tight", "#1f77b4"), ("spaced_ns", "2 keys, spaced ~20 us", "#ff7f0e"),
              ("tight20_ns", "20 keys, tight", "#2ca02c")]
    h = 0.27
    for j, (key, label, color) in enumerate(series):
        vals = [max(r["timing"][key], 1.0) for r in res]
        pos = [i + (j - 1) * h for i in y]
        a1.barh(pos, vals, height=h, label=label, color=color)
        for p, v, r in zip(pos, vals, res):
            raw = r["timing"][key]
            txt = f"{raw / 1e3:.1f} us" if raw >= 1e4 else f"{raw:.0f} ns"
            a1.text(v * 1.08, p, txt, va="center", fontsize=7)
    a1.set_xscale("log")
    a1.set_yticks(list(y), names)
    a1.invert_yaxis()
    a1.set_title("ns per call, net of building the dict (median, log scale)", fontsize=9)
    a1.axvline(100, color="grey", ls=":", lw=1)
    a1.text(100, len(res) - 0.45, " 100 ns target", fontsize=7, color="grey")
    a1.set_xlim(right=a1.get_xlim()[1] * 8)
    a1.legend(loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=3, fontsize=8, frameon=False)

    sl = [r["timing"]["slowdown_pct"] for r in res]
    a2.barh(list(y), [max(s, 0.1) for s in sl], color="#d62728")
    for i, s in zip(y, sl):
        a2.text(max(s, 0.1) * 1.1, i, f"{s:+.1f} %", va="center", fontsize=8)
    a2.set_xscale("log")
    a2.set_yticks(list(y), names)
    a2.invert_yaxis()
    a2.axvline(2, color="grey", ls=":", lw=1)
    a2.text(2, len(res) - 0.45, " 2 % target", fontsize=7, color="grey")
    a2.set_xlim(0.1, max(max(sl), 10) * 6)
    a2.set_title(f"slowdown of a pure-Python loop of ~{data['busy_ns'] / 1e3:.0f} us steps\n"
                 "logging 2 keys every step (%, median, log scale)", fontsize=9)
    m = data["machine"]
    fig.suptitle(f"expman vs peers: the cost of one log call and of logging every step\n"
                 f"{m['cpu']}, {m['cores']} cores, {m['os']}, Python {m['python']}, "
                 f"{m['date']}, expman {m.get('expman_commit') or ''}\n{data['command']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
