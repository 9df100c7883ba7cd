"""Issue 23 in a real browser (Debian's Chromium through Playwright, as
test_dashboard_browser): a rewound run's chart is its main history with the rewind
marked on the canvas, its abandoned branch drawn faint on request, and a fork's
page links its parents and its children."""

from __future__ import annotations

import json
from typing import Any

import pytest

from test_dashboard_browser import TIMEOUT_MS, Watch, sync_api, until
from dashboard_data import launch_chromium

import expman
from expman.dashboard.testing import running_server


def experiment(base, exp: str, name: str, **kw: Any) -> expman.Experiment:
    return expman.Experiment(exp, name, base_dir=base, capture_env=False, system_metrics=False,
                             **kw)


SITE_BASE: list[Any] = []      # the module's base dir (a live fork is made in it)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    """mnist/root: steps 0-9, rewound to 6 and run again; ft/child forked from it at 5;
    ft/grandchild forked from the child at 7."""
    base = tmp_path_factory.mktemp("branches") / "experiments"
    with experiment(base, "mnist", "root") as root:
        for s in range(10):
            root.log_metrics({"loss": 1.0 / (s + 1)}, step=s)
        root.rewind(6)
        for s in range(6, 10):
            root.log_metrics({"loss": 2.0 + s}, step=s)
    for name, parent, step in (("child", "mnist/root", 5), ("grandchild", "ft/child", 7)):
        with experiment(base, "ft", name, fork_from=f"{parent}@{step}") as exp:
            for s in range(step + 1, step + 4):
                exp.log_metrics({"loss": 0.1 * s}, step=s)
    SITE_BASE[:] = [base]
    with running_server(base) as url:
        yield url


@pytest.fixture
def page(site: str):
    with sync_api.sync_playwright() as pw:
        browser = launch_chromium(pw)
        ctx = browser.new_context(viewport={"width": 1280, "height": 900})
        pg = ctx.new_page()
        pg.set_default_timeout(TIMEOUT_MS)
        pg.watch = Watch(pg, site)
        yield pg
        browser.close()


def loss_chart(page: Any) -> Any:
    return page.locator('section.chart[data-metric="loss"]')


def marker_pixels(page: Any, x: int, rgb: tuple[int, int, int]) -> int:
    """Pixels of the marker's colour in the plot canvas's columns x-1..x+1."""
    return loss_chart(page).locator("canvas").evaluate(
        """(c, [x, r, g, b]) => { const d = c.getContext('2d').getImageData(x - 1, 0, 3, c.height).data;
             let n = 0;
             for (let i = 0; i < d.length; i += 4)
               if (d[i + 3] > 100 && Math.abs(d[i] - r) < 45 && Math.abs(d[i + 1] - g) < 45
                   && Math.abs(d[i + 2] - b) < 45) n++;
             return n; }""", [x, *rgb])


def test_rewound_run_main_curve_rewind_marker_and_faint_abandoned_branch(page: Any, site: str):
    page.goto(site + "#/run/mnist/root")
    page.wait_for_selector("#branches")
    rows = page.locator("#branches tbody tr")
    assert rows.count() == 2
    assert rows.nth(0).get_attribute("class") == "abandoned-branch"
    assert "abandoned from step 6" in rows.nth(0).inner_text()
    assert rows.nth(1).get_attribute("class") == "main-branch"
    chart = loss_chart(page)
    until(lambda: chart.get_attribute("data-points") == "10", what="the main history drawn")
    assert chart.get_attribute("data-drawn") == "10"           # one point per step: one curve
    assert json.loads(chart.get_attribute("data-branch-markers")) == [["rewind", 6]]
    assert chart.get_attribute("data-faint") == "0"            # abandoned branches on request
    drawn = until(lambda: chart.locator(".uplot").get_attribute("data-markers-drawn"))
    [[kind, x]] = json.loads(drawn)
    assert kind == "rewind"
    assert marker_pixels(page, x, (180, 83, 9)) > 20           # the dashed line is on the canvas

    page.check("#show-abandoned")
    until(lambda: chart.get_attribute("data-faint") == "1", what="the faint branch")
    assert chart.get_attribute("data-faint-points") == "4"     # steps 6-9 of branch 0
    legend = chart.locator(".u-legend").inner_text()
    assert "mnist/root branch 0 (abandoned)" in legend
    assert chart.get_attribute("data-drawn") == "10"           # same steps, a second series
    page.uncheck("#show-abandoned")
    until(lambda: chart.get_attribute("data-faint") == "0")
    assert page.locator("#lineage-children li").all_inner_texts() == [
        "ft/child forked at step 5, FINISHED"]
    page.watch.check()


def test_fork_page_links_parents_and_children(page: Any, site: str):
    page.goto(site + "#/run/ft/grandchild")
    page.wait_for_selector("#lineage")
    items = page.locator("#lineage li")
    assert [items.nth(i).get_attribute("data-run") for i in range(items.count())] == [
        "mnist/root", "ft/child", "ft/grandchild"]
    assert items.nth(0).locator("a").get_attribute("href") == "#/run/mnist/root"
    assert "steps up to 5" in items.nth(0).inner_text()
    assert "steps up to 7" in items.nth(1).inner_text()
    chart = loss_chart(page)
    until(lambda: chart.get_attribute("data-points") == "11", what="inherited and own points")
    assert json.loads(chart.get_attribute("data-branch-markers")) == [["fork", 5], ["fork", 7]]
    assert page.locator("#show-abandoned").count() == 0        # nothing abandoned here

    items.nth(1).locator("a").click()                          # up to the parent
    until(lambda: page.locator("#run-title").count()
          and page.locator("#run-title").inner_text() == "child")
    page.wait_for_selector("#lineage-children a")
    page.locator("#lineage-children a").click()                # and down to its fork
    until(lambda: page.locator("#run-title").inner_text() == "grandchild")
    page.watch.check()


LIVE_FORK = """
import sys, pathlib, time, expman
base, stop = sys.argv[1], pathlib.Path(sys.argv[2])
with expman.Experiment("ft", "live", base_dir=base, fork_from="mnist/root@5", capture_env=False,
                       system_metrics=False, flush_interval=0.01) as exp:
    step = 6
    while not stop.exists():
        exp.log_metrics({"loss": 0.5 / step}, step=step)
        step += 1
        time.sleep(0.05)                     # a training step's pace
"""


def test_a_live_fork_grows_after_its_inherited_points(page: Any, site: str, tmp_path):
    """The stream sends a fork's own rows; the chart puts them after the inherited
    prefix: every step from 0 to the last, once."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    stop = tmp_path / "stop"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(expman.__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", LIVE_FORK, str(SITE_BASE[0]), str(stop)],
                            env=env, cwd=tmp_path)
    try:
        until(lambda: (SITE_BASE[0] / "ft" / "live" / "metrics.bin").exists(), what="the fork")
        page.goto(site + "#/run/ft/live")
        chart = loss_chart(page)
        first = float(until(lambda: chart.get_attribute("data-last-x"), what="the first draw"))
        until(lambda: float(chart.get_attribute("data-last-x")) >= first + 5,
              what="the live fork's chart grows")
        last = float(chart.get_attribute("data-last-x"))
        assert chart.get_attribute("data-drawn") == str(int(last) + 1)   # 0..last, once each
        assert json.loads(chart.get_attribute("data-branch-markers")) == [["fork", 5]]
        stop.touch()
        assert proc.wait(timeout=60) == 0
    finally:
        stop.touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    page.watch.check()
