"""Groups with bands and the hyperparameter views in Debian's headless Chromium
(Playwright, never `playwright install`): what uPlot was given for each group's
band equals a brute-force min/max of the runs' points per pixel column; a live
group's band grows; brushing an axis of the parallel coordinates leaves exactly
the runs inside it in the runs table; the scatter draws a point per run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from conftest import need

need("starlette")
need("uvicorn")
np = need("numpy")

from dashboard_data import launch_chromium, sweep_run  # noqa: E402
# its skip rules (no Chromium, no built page) apply here too
from test_dashboard_browser import Watch, row, sync_api, until  # noqa: E402

import expman  # noqa: E402
from expman.dashboard.testing import running_server  # noqa: E402

TIMEOUT_MS = 15_000
SEEDS = 3
LRS = (0.1, 0.01)
IDS = [f"sweep/lr{lr}-s{s}" for lr in LRS for s in range(SEEDS)]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("groups") / "experiments"
    base.mkdir()
    losses = {f"sweep/lr{lr}-s{s}": sweep_run(base, f"lr{lr}-s{s}", lr, s)
              for lr in LRS for s in range(SEEDS)}
    with running_server(base) as url:
        yield {"url": url, "base": base, "losses": losses}


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        b = launch_chromium(pw)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, site: dict[str, Any]):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.watch = Watch(pg, site["url"])
    yield pg
    ctx.close()


def home(site: Any, **state: Any) -> str:
    pairs = [(k, v) for k, vs in state.items() for v in (vs if isinstance(vs, list) else [vs])]
    return f"{site['url']}#/?{urllib.parse.urlencode(pairs)}"


def band_chart(page: Any, metric: str) -> Any:
    return page.locator(f'section.band-chart[data-metric="{metric}"]')


def drawn_bands(page: Any, metric: str) -> dict[str, Any]:
    """What uPlot holds for a band chart: x, and per group its max, min and mid series."""
    return band_chart(page, metric).evaluate("""e => { const c = e._group, p = c.plot;
        const groups = {};
        for (let i = 1; i < p.series.length; i += 3) {
            const label = p.series[i + 2].label.replace(/ (mean|median)$/, "");
            groups[label] = { hi: p.data[i], lo: p.data[i + 1], mid: p.data[i + 2],
                              stroke: typeof p.series[i + 2].stroke === "function"
                                  ? p.series[i + 2].stroke(p, i + 2) : p.series[i + 2].stroke };
        }
        return { x: Array.from(p.data[0]), groups, points: c.answer.points,
                 bands: p.bands.length }; }""")


def test_group_by_param_draws_each_groups_band_as_brute_force(page: Any, site: Any) -> None:
    page.goto(home(site, run=IDS, groupby="param:lr"))
    chart = band_chart(page, "loss")
    page.wait_for_selector('section.band-chart[data-metric="loss"][data-groups="2"]')
    assert page.locator("#charts").is_hidden()             # the per-run charts give way
    legend = page.locator("#group-legend .group-item").evaluate_all("g => g.map(e => e.dataset.group)")
    assert legend == ["lr=0.01", "lr=0.1"]
    got = drawn_bands(page, "loss")
    assert got["bands"] == 2 and chart.get_attribute("data-exact") == "false"
    pixels = got["points"]
    steps = 3000
    col = np.minimum((np.arange(steps) * (pixels / (steps - 1))).astype(int), pixels - 1)
    centre = (np.arange(pixels) + 0.5) * (steps - 1) / pixels
    assert got["x"] == pytest.approx(centre[np.unique(col)].tolist())
    for label, g in got["groups"].items():
        ys = [site["losses"][f"sweep/lr{label[3:]}-s{s}"] for s in range(SEEDS)]
        for c in np.unique(col):
            every = np.concatenate([y[col == c] for y in ys])
            assert g["hi"][c] == float(every.max()) and g["lo"][c] == float(every.min())
            assert g["mid"][c] == pytest.approx(float(np.mean([y[col == c].mean() for y in ys])))
        # the spikes are in the band, as drawn
        assert sorted(g["hi"])[-SEEDS:] == [50.0 + s for s in range(SEEDS)]
    assert len({g["stroke"] for g in got["groups"].values()}) == 2
    # the median line, and the state in the URL: a reload draws the same
    page.select_option("#band-stat", "median")
    page.wait_for_selector('section.band-chart[data-metric="loss"][data-stat="median"]')
    assert "groupby=param%3Alr" in page.url and "band=median" in page.url
    page.reload()
    page.wait_for_selector('section.band-chart[data-metric="loss"][data-stat="median"][data-groups="2"]')
    assert page.locator("#group-by").input_value() == "param:lr"
    # by tag: a run with two tags is in both groups
    page.select_option("#group-by", "tag")
    page.wait_for_selector(f'section.band-chart[data-metric="loss"][data-groups="{SEEDS + 1}"]')
    tags = page.locator("#group-legend .group-item").evaluate_all("g => g.map(e => e.textContent.trim())")
    assert "tag sweep (6 runs)" in tags and "tag seed0 (2 runs)" in tags
    # no grouping: the per-run charts again
    page.select_option("#group-by", "")
    page.wait_for_selector('section.chart[data-metric="loss"][data-series="6"]')
    assert "groupby" not in page.url
    page.watch.check()


LOGGER = textwrap.dedent("""
    import sys, time, pathlib, expman
    base, stop = sys.argv[1], pathlib.Path(sys.argv[2])
    runs = [expman.Experiment("live", f"seed{s}", base_dir=base, system_metrics=False,
                              group="livegroup", flush_interval=0.05) for s in range(3)]
    (stop.parent / "ready").touch()
    step = 0
    while not stop.exists() and step < 100000:
        for s, exp in enumerate(runs):
            exp.log_metrics({"live_loss": 1.0 / (1 + step) + s}, step=step)
        step += 1
        time.sleep(0.01)
    for exp in runs:
        exp.close()
""")


def test_a_live_groups_band_grows(browser: Any, tmp_path: Path) -> None:
    stop = tmp_path / "stop"
    base = tmp_path / "experiments"
    base.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(expman.__file__).resolve().parent.parent),
                                                       os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", LOGGER, str(base), str(stop)], env=env,
                            cwd=Path(__file__).parent)
    until(lambda: (tmp_path / "ready").exists() or proc.poll() is not None, timeout=60,
          what="the logger made its runs")
    with running_server(base) as url:
        ctx = browser.new_context(viewport={"width": 1280, "height": 900})
        try:
            page = ctx.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.watch = Watch(page, url)
            live_band(page, url)
            page.watch.check()
        finally:
            stop.touch()
            proc.wait(timeout=60)
            ctx.close()


def live_band(page: Any, url: str) -> None:
    """Three live runs of one group: their band grows as they log."""
    page.goto(f"{url}#/?groupby=group")
    for s in range(3):
        row(page, f"live/seed{s}").wait_for()
    page.click("#select-none")
    for s in range(3):
        row(page, f"live/seed{s}").locator("input[type=checkbox]").check()
    chart = band_chart(page, "live_loss")
    page.wait_for_selector('section.band-chart[data-metric="live_loss"][data-groups="1"]')
    first = float(until(lambda: chart.get_attribute("data-last-x")))
    # the band's last x grows with the points logged (no reload); the wait is a hang
    # guard, not a latency bound
    until(lambda: float(chart.get_attribute("data-last-x") or 0) >= first + 20,
          what=f"the live band grows past {first + 20}")
    got = drawn_bands(page, "live_loss")["groups"]["group livegroup"]
    lo = [v for v in got["lo"] if v is not None]
    hi = [v for v in got["hi"] if v is not None]
    assert min(lo) < 1.0 and max(hi) >= 2.0              # seeds 0 and 2 bound the band


def parallel_point(page: Any, axis: int, frac: float) -> tuple[float, float]:
    """Where on the page axis ``axis`` (0-based) is at ``frac`` of its height."""
    box = page.locator("#hp-parallel").bounding_box()
    n = len(page.locator("#hp-parallel").get_attribute("data-axes").split("|"))
    x = box["x"] + 40 + axis * (box["width"] - 80) / (n - 1)
    y = box["y"] + 28 + (1 - frac) * (320 - 28 - 26)
    return x, y


def table_ids(page: Any) -> list[str]:
    return sorted(page.locator("#runs tr[data-id]").evaluate_all("rs => rs.map(r => r.dataset.id)"))


def test_brushing_parallel_coordinates_filters_the_runs_table(page: Any, site: Any) -> None:
    page.goto(home(site, hp="1", hpm="loss", hpp="lr,seed", hpx="seed"))
    page.wait_for_selector('#hp-parallel[data-lines="6"]')
    assert page.locator("#hp-parallel").get_attribute("data-axes") == "lr|seed|loss (last)"
    assert table_ids(page) == sorted(IDS)
    # drag along the lr axis over its top (lr = 0.1): only those runs stay in the table
    x, y0 = parallel_point(page, 0, 1.05)
    _, y1 = parallel_point(page, 0, 0.8)
    page.mouse.move(x, y0)
    page.mouse.down()
    page.mouse.move(x, (y0 + y1) / 2)
    page.mouse.move(x, y1)
    page.mouse.up()
    until(lambda: table_ids(page) == sorted(i for i in IDS if "lr0.1-" in i),
          what="the table keeps the lr=0.1 runs")
    assert page.locator("#hparams").get_attribute("data-inside") == "3"
    assert "brush=" in page.url
    # a second brush on seed (its bottom: seed 0) narrows it to one run
    x, y0 = parallel_point(page, 1, -0.05)
    _, y1 = parallel_point(page, 1, 0.2)
    page.mouse.move(x, y0)
    page.mouse.down()
    page.mouse.move(x, y1)
    page.mouse.up()
    until(lambda: table_ids(page) == ["sweep/lr0.1-s0"], what="the table keeps lr=0.1, seed 0")
    # the scatter draws every run, the brushed-out ones in grey
    until(lambda: page.locator("#hp-scatter").get_attribute("data-points") == "6",
          what="the scatter draws all six runs")
    # the brushes are in the URL: a reload filters the same
    page.reload()
    page.wait_for_selector('#hp-parallel[data-lines="6"]')
    until(lambda: table_ids(page) == ["sweep/lr0.1-s0"], what="the reloaded page keeps the brushes")
    # a click on an axis clears its brush; "clear brushes" clears all
    x, y = parallel_point(page, 1, 0.5)
    page.mouse.click(x, y)
    until(lambda: len(table_ids(page)) == 3, what="the seed brush is cleared")
    page.click("#hp-clear")
    until(lambda: table_ids(page) == sorted(IDS), what="every run is back")
    page.watch.check()


def test_hparams_min_summary_and_scatter_of_another_param(page: Any, site: Any) -> None:
    page.goto(home(site, hp="1", hpm="loss", hps="min", hpx="lr"))
    page.wait_for_selector('#hp-parallel[data-lines="6"]')
    axes = page.locator("#hp-parallel").get_attribute("data-axes").split("|")
    assert axes[-1] == "loss (min)" and "lr" in axes and "seed" in axes
    assert page.locator("#hp-scatter").get_attribute("data-points") == "6"
    page.watch.check()


# the brightest opaque pixel (r + g + b) of a canvas's rows y0..y1 (CSS px): its text there
INK = """([id, y0, y1]) => { const c = document.getElementById(id), dpr = devicePixelRatio;
    const d = c.getContext('2d').getImageData(0, Math.round(y0 * dpr), c.width, Math.round((y1 - y0) * dpr)).data;
    let hi = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 200) hi = Math.max(hi, d[i] + d[i + 1] + d[i + 2]);
    return hi; }"""


def test_hparams_views_are_drawn_in_the_themes_colours(browser: Any, site: Any) -> None:
    """In dark mode the canvases' text (axis names on top of the parallel coordinates,
    the scatter's x labels below its frame) is light; the theme toggle draws them
    again in dark ink; a brush is drawn in the theme's accent."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme="dark")
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    watch = Watch(pg, site["url"])
    pg.goto(home(site, hp="1", hpm="loss", hpp="lr,seed", hpx="seed", brush="lr:0.5:1.0000"))
    pg.wait_for_selector('#hp-parallel[data-lines="6"]')
    until(lambda: pg.locator("#hp-scatter").get_attribute("data-points") == "6")
    assert pg.evaluate("document.documentElement.dataset.theme") == "dark"
    names, labels = pg.evaluate(INK, ["hp-parallel", 0, 20]), pg.evaluate(INK, ["hp-scatter", 300, 320])
    assert names > 600 and labels > 600, f"light text on the dark page ({names}, {labels})"
    accent = pg.evaluate("getComputedStyle(document.documentElement).getPropertyValue('--accent').trim()")
    x, y = parallel_point(pg, 0, 0.75)
    box = pg.locator("#hp-parallel").bounding_box()
    edge = pg.evaluate("""([x, y]) => { const c = document.getElementById('hp-parallel');
        return Array.from(c.getContext('2d').getImageData(Math.round(x * devicePixelRatio),
                                                          Math.round(y * devicePixelRatio), 1, 1).data); }""",
                       [x - box["x"] - 8, y - box["y"]])    # the brush's left edge, nothing under it
    assert edge[3] > 0 and all(abs(edge[i] - int(accent[1 + 2 * i:3 + 2 * i], 16)) <= 3 for i in range(3)), \
        (edge, accent)
    pg.click("#theme-toggle")
    until(lambda: pg.evaluate(INK, ["hp-parallel", 0, 20]) < 300, what="dark axis names once light")
    assert pg.evaluate(INK, ["hp-scatter", 300, 320]) < 300
    watch.check()
    ctx.close()
