"""The sweep views of expman serve, measured in Debian's headless Chromium
(run from bench/dashboard.py: ``--only hparams``, ``--only bands``, ``--only liveband``):

- hparams: parallel coordinates over 10,000 runs, from ticking "hyperparameter
  views" to the canvas painted (server warm: the listing and /api/hparams asked
  once before); then brushing an axis: the whole drag dispatched at once (press,
  two moves, release in one task), from the press to the runs table filtered and
  the next frame painted (the lines of the moves are painted in that frame too);
  and a drag as a mouse makes it (each move painted in its own frame, as the
  lines follow the mouse), from the release to the table filtered and painted;
- bands: 20 runs of 1 M points in 4 groups, from choosing "group by" to every
  group's band painted, with the runs decoded in the server's cache (the bands
  themselves computed afresh each time, as the server keeps none);
- liveband: a group of 8 live runs logging their wall time as the value. At each
  render k of the band, the points first drawn are those logged after the newest
  value of render k-1: the page's clock at render k minus that value is the
  longest any of them waited to be drawn (the figure reported, per update).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import textwrap
import time
import urllib.parse
from pathlib import Path
from typing import Any

REPEATS = 5

MAKE_GROUPS = textwrap.dedent("""
    import sys, math, expman
    base, n = sys.argv[1], int(sys.argv[2])
    for g in range(4):
        for s in range(5):
            with expman.Experiment("groups", f"cfg{g}-s{s}", base_dir=base, capture_env=False,
                                   system_metrics=False, buffer_size=64 << 20,
                                   group=f"cfg{g}") as exp:
                exp.log_params({"cfg": g, "seed": s})
                log = exp.log_metrics
                for i in range(n):
                    log({"loss": math.exp(-i / (n / (g + 1))) + 0.01 * ((i * 7919 + s) % 101)
                         + (5.0 if i % 250_007 == s else 0.0)}, step=i)
""")

LIVE8 = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import expman
    base, stop = sys.argv[1], Path(sys.argv[2])
    runs = [expman.Experiment("live8", f"seed{s}", base_dir=base, capture_env=False,
                              system_metrics=False, group="live8", flush_interval=0.05)
            for s in range(8)]
    (stop.parent / "ready").touch()
    step = 0
    while not stop.exists():
        for exp in runs:
            exp.log_metrics({"wall": time.time()}, step=step)
        step += 1
        time.sleep(0.02)
    for exp in runs:
        exp.close()
""")

# ticks the box, then waits for the canvas to say it painted 10,000 lines
OPEN_HPARAMS = """async (n) => {
    const box = document.getElementById('hp-show'), canvas = document.getElementById('hp-parallel');
    const t0 = performance.now();
    box.click();
    while (!(canvas.dataset.lines === String(n) && Number(canvas.dataset.painted) > t0))
        await new Promise(r => setTimeout(r, 5));
    await new Promise(r => requestAnimationFrame(() => setTimeout(r, 0)));
    return { painted: Number(canvas.dataset.painted) - t0, frame: performance.now() - t0 };
}"""

# a drag along axis 0 from fraction a to b: press, move, release; then the next frame.
# drag: each move painted before the next event, timed from the release
BRUSH = """async ([a, b, drag]) => {
    const c = document.getElementById('hp-parallel'), r = c.getBoundingClientRect();
    const n = c.dataset.axes.split('|').length;
    const x = r.left + 40, y = (f) => r.top + 28 + (1 - f) * (320 - 54);
    const ev = (type, target, f) => target.dispatchEvent(new MouseEvent(type,
        { clientX: x, clientY: y(f), bubbles: true }));
    const frame = () => new Promise(res => requestAnimationFrame(() => setTimeout(res, 0)));
    let t0 = performance.now();
    ev('mousedown', c, a);
    if (drag) await frame();
    ev('mousemove', window, (a + b) / 2);
    if (drag) await frame();
    ev('mousemove', window, b);
    if (drag) { await frame(); t0 = performance.now(); }
    ev('mouseup', window, b);
    const handled = performance.now() - t0;
    await new Promise(res => requestAnimationFrame(() => setTimeout(res, 0)));
    const d = document.getElementById('hparams').dataset;
    return { handled, frame: performance.now() - t0, lines: Number(d.linesMs), table: Number(d.tableMs),
             rows: document.querySelectorAll('#runs tr[data-id]').length,
             count: document.querySelector('.count').textContent, axes: n };
}"""


def _browser(pw: Any, chromium: str, args: list[str]) -> Any:
    return pw.chromium.launch(executable_path=chromium, args=args)


def bench_hparams(pw: Any, base: Path, runs: int, results: dict[str, Any], *, server: Any,
                  chromium: str, args: list[str], timed_get: Any, make: Any) -> None:
    if not (base / ".made").exists():
        t = time.perf_counter()
        make(base, runs)
        results["hparams_write_s"] = time.perf_counter() - t
        (base / ".made").touch()
    srv = server(base)
    try:
        cold, _ = timed_get(srv.url + "api/runs?limit=500")
        api_cold, body = timed_get(srv.url + "api/hparams?metric=loss")
        api_warm, body = timed_get(srv.url + "api/hparams?metric=loss")
        import json
        total = json.loads(body)["total"]
        results.update(hparams_runs=total, hparams_api_cold_s=api_cold, hparams_api_warm_s=api_warm,
                       hparams_api_bytes=len(body))
        paints, frames, brushes, handled, lines, tables, releases = [], [], [], [], [], [], []
        for _ in range(REPEATS):
            browser = _browser(pw, chromium, args)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(srv.url + "#/?hpm=loss")
            page.wait_for_selector("#runs tr[data-id]")
            page.wait_for_function(f"() => document.querySelector('.count').textContent.endsWith('of {total} runs')",
                                   timeout=300_000)
            got = page.evaluate(OPEN_HPARAMS, total)
            paints.append(got["painted"] / 1000)
            frames.append(got["frame"] / 1000)
            for a, b in ((1.02, 0.7), (0.5, -0.02), (0.9, 0.2), (0.3, 0.1)):
                page.click("#hp-clear")
                br = page.evaluate(BRUSH, [a, b, False])
                brushes.append(br["frame"] / 1000)
                handled.append(br["handled"] / 1000)
                lines.append(br["lines"] / 1000)
                tables.append(br["table"] / 1000)
                page.click("#hp-clear")
                dragged = page.evaluate(BRUSH, [a, b, True])
                assert dragged["count"] == br["count"], (dragged, br)
                releases.append(dragged["frame"] / 1000)
            results["hparams_brush_table"] = br["count"]
            browser.close()
        results.update(hparams_painted_s=statistics.median(paints), hparams_painted_all=paints,
                       hparams_open_frame_s=statistics.median(frames),
                       hparams_brush_s=statistics.median(brushes), hparams_brush_all=brushes,
                       hparams_brush_release_s=statistics.median(releases), hparams_brush_release_all=releases,
                       hparams_brush_handler_s=statistics.median(handled),
                       hparams_brush_release_lines_s=statistics.median(lines),
                       hparams_brush_release_table_s=statistics.median(tables))
    finally:
        srv.close()


def bench_bands(pw: Any, base: Path, points: int, results: dict[str, Any], *, server: Any,
                chromium: str, args: list[str], timed_get: Any, env: dict[str, str]) -> None:
    if not (base / ".made").exists():
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", MAKE_GROUPS, str(base), str(points)], env=env, check=True)
        results["bands_write_s"] = time.perf_counter() - t
        (base / ".made").touch()
    ids = [f"groups/cfg{g}-s{s}" for g in range(4) for s in range(5)]
    srv = server(base)
    try:
        t = time.perf_counter()
        for rid in ids:                       # decoded into the server's cache
            timed_get(srv.url + f"api/runs/{rid}/series?metric=loss&points=10")
        results["bands_decode_all_s"] = time.perf_counter() - t
        q = [("metric", "loss"), ("points", "1200")]
        for g in range(4):
            q.append(("group", f"cfg={g}"))
            q.extend(("run", f"groups/cfg{g}-s{s}") for s in range(5))
        apis = [timed_get(srv.url + "api/bands?" + urllib.parse.urlencode(q))[0] for _ in range(REPEATS)]
        results.update(bands_points=points, bands_api_s=statistics.median(apis), bands_api_all=apis)
        browser = _browser(pw, chromium, args)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(srv.url + "#/?" + urllib.parse.urlencode([("run", i) for i in ids]))
        page.wait_for_selector('section.chart[data-metric="loss"][data-series="20"]', timeout=300_000)
        painted = []
        for _ in range(REPEATS):
            got = page.evaluate("""async () => {
                const sel = document.getElementById('group-by');
                sel.value = ''; sel.dispatchEvent(new Event('change', { bubbles: true }));
                const t0 = performance.now();
                sel.value = 'param:cfg'; sel.dispatchEvent(new Event('change', { bubbles: true }));
                const card = () => document.querySelector('section.band-chart[data-metric="loss"]');
                while (!(card() && card()._group.rendered > t0 && card().dataset.groups === '4'))
                    await new Promise(r => setTimeout(r, 5));
                await new Promise(r => requestAnimationFrame(() => setTimeout(r, 0)));
                return { rendered: card()._group.rendered - t0, frame: performance.now() - t0,
                         points: Number(card().dataset.points) };
            }""")
            painted.append(got["frame"] / 1000)
        results.update(bands_painted_s=statistics.median(painted), bands_painted_all=painted,
                       bands_points_drawn_from=got["points"])
        browser.close()
    finally:
        srv.close()


def bench_liveband(pw: Any, base: Path, seconds: int, results: dict[str, Any], *, server: Any,
                   chromium: str, args: list[str], env: dict[str, str]) -> None:
    stop = base / "stop"
    proc = subprocess.Popen([sys.executable, "-c", LIVE8, str(base), str(stop)], env=env)
    srv = None
    try:
        deadline = time.monotonic() + 60
        while not (base / "ready").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        srv = server(base)
        browser = _browser(pw, chromium, args)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        ids = [f"live8/seed{s}" for s in range(8)]
        page.goto(srv.url + "#/?" + urllib.parse.urlencode([("groupby", "group")] + [("run", i) for i in ids]))
        page.wait_for_selector('section.band-chart[data-metric="wall"][data-groups="1"]', timeout=60_000)
        page.evaluate("""() => { window.__lat = [];
            const c = document.querySelector('section.band-chart[data-metric="wall"]')._group;
            const render = c.render.bind(c);
            c.render = () => { render();
                const hi = c.answer.groups[0].hi.filter(v => typeof v === 'number');
                window.__lat.push([Date.now() / 1000, Math.max(...hi)]); }; }""")
        time.sleep(seconds)
        renders = page.evaluate("window.__lat")
        lat = sorted(now - before for (now, _), (_, before) in zip(renders[1:], renders[:-1]))
        results.update(liveband_runs=8, liveband_updates=len(lat),
                       liveband_latency_median_s=lat[len(lat) // 2],
                       liveband_latency_p95_s=lat[int(len(lat) * 0.95)],
                       liveband_updates_per_s=len(lat) / seconds)
        browser.close()
    finally:
        stop.touch()
        proc.wait(timeout=60)
        if srv:
            srv.close()
