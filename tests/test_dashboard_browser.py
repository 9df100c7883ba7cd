"""expman serve in a real browser: Debian's headless Chromium driven by
Playwright (never `playwright install`). The page must make no request outside
the server and log no console error, in every test.

Skipped only when /usr/bin/chromium is missing outside CI; in CI (CI=true) a
missing browser fails, unless EXPMAN_SKIP_BROWSER=1 says so explicitly (the
wheel builders' test step, which has no Chromium)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from conftest import missing, need

need("starlette")
need("uvicorn")
need("numpy")

from dashboard_data import (  # noqa: E402
    CHROMIUM, XSS_IMG, XSS_SCRIPT, demo_run, failed_run, hostile_run, launch_chromium, png_bytes,
)

if os.environ.get("EXPMAN_SKIP_BROWSER") == "1":
    pytest.skip("EXPMAN_SKIP_BROWSER=1", allow_module_level=True)
if not os.path.exists(CHROMIUM):
    missing("chromium", f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
sync_api = need("playwright.sync_api")

import expman  # noqa: E402
from expman.dashboard.server import STATIC_DIR  # noqa: E402
from expman.dashboard.testing import running_server  # noqa: E402

if not (STATIC_DIR / "app.js").is_file():
    pytest.fail("the dashboard page is not built: npm ci && npm run build", pytrace=False)

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("dash") / "experiments"
    base.mkdir()
    demo_run(base, "run-a", 0.01, seed=1, tags=["baseline"])
    demo_run(base, "run-b", 0.03, seed=2, artifacts=False)
    hostile_run(base)
    failed_run(base)
    with running_server(base) as url:
        yield {"url": url, "base": base}


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        b = launch_chromium(pw)
        yield b
        b.close()


class Watch:
    """Console errors, page errors and requests to anything but the server."""

    def __init__(self, page: Any, url: str) -> None:
        self.origin = urllib.parse.urlsplit(url).netloc
        self.errors: list[str] = []
        self.outside: list[str] = []
        self.requests: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("request", self._request)

    def _request(self, req: Any) -> None:
        self.requests.append(req.url)
        parts = urllib.parse.urlsplit(req.url)
        if parts.netloc != self.origin:
            self.outside.append(req.url)

    def check(self) -> None:
        assert not self.outside, f"requests outside the server: {self.outside}"
        assert not self.errors, f"console errors: {self.errors}"


@pytest.fixture
def page(browser: Any, site: dict[str, Any]):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.watch = Watch(pg, site["url"])
    yield pg
    ctx.close()


def until(check: Any, timeout: float = TIMEOUT_MS / 1000, what: str = "") -> Any:
    """Poll ``check()`` until it returns something true (page.wait_for_function
    evaluates strings, which the page's CSP rightly forbids)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what or check}")
        time.sleep(0.02)


def attr(page: Any, metric: str, name: str) -> str:
    return chart(page, metric).get_attribute(f"data-{name}") or ""


def rows_shown(page: Any) -> int:
    return page.locator("#runs tbody tr[data-id]").count()


def row(page: Any, run_id: str) -> Any:
    quoted = run_id.replace("\\", "\\\\").replace('"', '\\"')
    return page.locator(f'#runs tr[data-id="{quoted}"]')


def chart(page: Any, metric: str) -> Any:
    return page.locator(f'section.chart[data-metric="{metric}"]')


def select(page: Any, *run_ids: str) -> None:
    """Chart exactly these runs (the page starts with the newest ones selected)."""
    row(page, run_ids[0]).wait_for()
    page.click("#select-none")
    for rid in run_ids:
        row(page, rid).locator("input[type=checkbox]").check()


def new_page(browser: Any, url: str) -> tuple[Any, Any, "Watch"]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    return ctx, pg, Watch(pg, url)


def plotted(page: Any, metric: str) -> list[dict[str, Any]]:
    """What uPlot holds for a chart: each series' label, colour and y values."""
    return chart(page, metric).evaluate("""e => { const p = e._chart.plot;
        return p.series.slice(1).map((s, i) => ({ label: s.label, y: p.data[i + 1],
            stroke: typeof s.stroke === "function" ? s.stroke(p, i + 1) : s.stroke })); }""")


def test_runs_view_lists_runs_with_distinct_statuses_and_filters(page: Any, site: Any) -> None:
    page.goto(site["url"])
    row(page, "demo/run-a").wait_for()
    assert page.locator("#runs tbody tr[data-id]").count() == 4
    assert row(page, "demo/run-a").locator(".status").inner_text() == "FINISHED"
    badge = row(page, "demo/failed").locator(".status")
    assert badge.inner_text() == "FAILED"
    colors = {b.evaluate("e => getComputedStyle(e).backgroundColor")
              for b in (badge, row(page, "demo/run-a").locator(".status"))}
    assert len(colors) == 2, "each status looks different"
    headers = page.locator("#runs thead th").all_inner_texts()
    assert "learning_rate" in headers and "optimizer.momentum" in headers and "train_loss" in headers
    page.fill("#expr-filter", "learning_rate < 0.02")
    until(lambda: rows_shown(page) == 1)
    assert row(page, "demo/run-a").count() == 1
    page.fill("#expr-filter", "learning_rate <")
    assert "cannot read" in page.locator(".expr-error").inner_text()
    page.fill("#expr-filter", "")
    page.fill("#text-filter", "run-b")
    until(lambda: rows_shown(page) == 1)
    page.fill("#text-filter", "tag:baseline")                        # tags: a column, and found
    until(lambda: rows_shown(page) == 1)
    assert "baseline" in row(page, "demo/run-a").inner_text()
    page.fill("#text-filter", "")
    page.select_option("#status-filter", "RUNNING")
    until(lambda: rows_shown(page) == 0)
    page.select_option("#status-filter", "FAILED")
    until(lambda: rows_shown(page) == 1)
    page.select_option("#status-filter", "")
    page.locator('#runs th[data-key="p:learning_rate"]').click()      # sort ascending
    ids = page.locator("#runs tr[data-id]").evaluate_all("rs => rs.map(r => r.dataset.id)")
    assert ids.index("demo/run-a") < ids.index("demo/run-b")
    page.check("#group-exp")
    assert page.locator("#runs tr.group").first.inner_text() == "demo"
    page.watch.check()


def test_two_runs_on_train_loss_with_log_scale_smoothing_and_zoom(page: Any, site: Any) -> None:
    page.goto(site["url"])
    select(page, "demo/run-a", "demo/run-b")
    c = chart(page, "train_loss")
    page.wait_for_selector('section.chart[data-metric="train_loss"][data-series="2"]')
    assert c.locator("canvas").count() == 1
    assert c.get_attribute("data-points") == "800"
    legend = c.locator(".u-legend .u-series")
    assert legend.count() == 3                               # x + two runs
    page.check("#log-y")
    page.wait_for_selector('section.chart[data-metric="train_loss"][data-log="true"]')
    page.fill("#smoothing", "0.8")
    page.dispatch_event("#smoothing", "input")
    page.wait_for_selector('section.chart[data-metric="train_loss"][data-smooth="0.8"]')
    assert legend.count() == 5                               # raw (faint) + smoothed per run
    page.uncheck("#log-y")
    # drag to zoom: the server is asked again for the visible range
    before = len([u for u in page.watch.requests if "from=" in u])
    over = c.locator(".u-over")
    box = over.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.2, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.4, y, steps=5)
    page.mouse.up()
    until(lambda: attr(page, "train_loss", "zoomed"))
    lo, hi = map(float, c.get_attribute("data-zoomed").split(","))
    assert 40 < lo < hi < 200
    assert len([u for u in page.watch.requests if "from=" in u]) > before
    over.dblclick()
    page.wait_for_selector('section.chart[data-metric="train_loss"][data-zoomed=""]')
    page.select_option("#x-axis", "rel")
    until(lambda: attr(page, "train_loss", "last-x") and float(attr(page, "train_loss", "last-x")) < 100)
    page.fill("#metric-filter", "val_")
    assert chart(page, "train_loss").is_hidden() and chart(page, "val_loss").is_visible()
    page.watch.check()


def test_run_page_and_image_artifact(page: Any, site: Any) -> None:
    page.goto(site["url"])
    row(page, "demo/run-a").locator("a").click()
    page.wait_for_selector("#run-title")
    assert page.locator("#run-title").inner_text() == "run-a"
    assert page.locator('#params tr[data-key="optimizer.momentum"] td').inner_text() == "0.9"
    page.fill(".kv-search >> nth=0", "momentum")
    assert page.locator("#params tr[data-key]:visible").count() == 1
    until(lambda: page.locator("#messages li").count(), what="the messages, fetched after the page")
    msgs = page.locator("#messages li").all_inner_texts()
    assert any("Starting training loop" in m for m in msgs)
    assert any("warning" in m and "learning rate may be too high" in m for m in msgs)
    assert "intact" in page.locator("#integrity").inner_text()
    assert page.locator("#exit-summary").inner_text() == "closed cleanly"
    assert page.locator('#env tr[data-key="python_version"]').count() == 1
    img = page.locator("img.artifact-image")
    img.wait_for()
    until(lambda: img.evaluate("i => i.naturalWidth") == 8)
    until(lambda: "epoch notes" in page.locator("pre.artifact-text").first.inner_text())
    assert "<b>not bold</b>" in page.locator("pre.artifact-text").first.inner_text()
    page.wait_for_selector('section.chart[data-metric="train_loss"][data-series="1"]')
    href = page.locator("a.view-image").get_attribute("href")
    resp = page.goto(urllib.parse.urljoin(site["url"], href))
    assert resp.status == 200 and resp.headers["content-type"] == "image/png"
    assert "attachment" not in resp.headers.get("content-disposition", "")
    assert resp.body() == png_bytes()
    page.watch.check()


def test_failed_run_page_shows_the_exception(page: Any, site: Any) -> None:
    page.goto(site["url"] + "#/run/demo/failed")
    summary = page.locator("#exit-summary")
    summary.wait_for()
    text = summary.inner_text()
    assert text.startswith("ZeroDivisionError: loss exploded at ") and "dashboard_data.py:" in text
    page.watch.check()


def test_compare_view_highlights_differing_params(page: Any, site: Any) -> None:
    page.goto(site["url"])
    select(page, "demo/run-a", "demo/run-b")
    page.click("#compare-btn")
    page.wait_for_selector("#compare")
    assert page.locator('#compare tr.diff[data-key="learning_rate"]').count() == 1
    assert page.locator('#compare tr.same[data-key="batch_size"]').count() == 1
    page.check("#only-diff")
    assert page.locator('#compare tr[data-key="batch_size"]').is_hidden()
    page.watch.check()


def test_markup_in_names_params_and_messages_is_shown_as_text(page: Any, site: Any) -> None:
    rid = f"demo/{XSS_IMG}"
    page.goto(site["url"])
    r = row(page, rid)
    r.wait_for()
    assert r.locator("a").inner_text() == XSS_SCRIPT
    assert XSS_SCRIPT in r.inner_text() and XSS_IMG in r.inner_text()      # param cells
    r.locator("a").click()
    page.wait_for_selector("#run-title")
    assert page.locator("#run-title").inner_text() == XSS_SCRIPT
    until(lambda: page.locator("#messages li").count(), what="the messages, fetched after the page")
    msgs = page.locator("#messages li").all_inner_texts()
    assert any(XSS_IMG in m for m in msgs) and any(XSS_SCRIPT in m for m in msgs)
    assert page.locator('#params tr[data-key="title"] td').inner_text() == XSS_IMG
    assert page.locator("img[onerror], script:not([type=module])").count() == 0
    assert page.evaluate("window.__pwned") is None
    page.watch.check()


LOGGER = textwrap.dedent("""
    import sys, time, math
    from pathlib import Path
    import expman
    stop = Path(sys.argv[2])
    with expman.Experiment("live", "ticker", base_dir=sys.argv[1], capture_env=False,
                           system_metrics=False, flush_interval=0.05) as exp:
        exp.log_params({"learning_rate": 0.1})
        step = 0
        deadline = time.monotonic() + 60
        while not stop.exists() and time.monotonic() < deadline:
            exp.log_metrics({"train_loss": 1 / (1 + step) + 0.01 * math.sin(step)}, step=step)
            step += 1
            time.sleep(0.05)
""")


def test_live_run_appears_and_its_chart_grows(page: Any, site: Any, tmp_path: Path) -> None:
    page.goto(site["url"])
    row(page, "demo/run-a").wait_for()
    stop = tmp_path / "stop"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(expman.__file__).resolve().parent.parent),
                                                       os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", LOGGER, str(site["base"]), str(stop)], env=env,
                            cwd=tmp_path)
    try:
        live = row(page, "live/ticker")
        live.wait_for()                                    # a new run appears without a reload
        assert live.locator(".status").inner_text() == "RUNNING"
        select(page, "live/ticker")
        c = chart(page, "train_loss")
        page.wait_for_selector('section.chart[data-metric="train_loss"][data-series="1"]')
        first = float(until(lambda: c.get_attribute("data-last-x")))
        # the chart's last step grows, over the event stream (no reload, no refetch); the
        # wait is a hang guard, not a latency bound (the machine may be busy)
        until(lambda: float(c.get_attribute("data-last-x")) >= first + 5,
              what=f"the live chart's last step grows past {first + 5}")
        # the table row's last train_loss changes too (the row is replaced in place)
        col = page.locator("#runs thead th").evaluate_all(
            "ths => ths.findIndex(t => t.dataset.key === 'm:train_loss')")
        assert col > 0

        def cell() -> str:
            return row(page, "live/ticker").locator("td").nth(col).inner_text()
        shown = until(cell)
        until(lambda: cell() not in ("", shown), what="the live row's value changes")
        page.click('#runs thead th[data-key="status"]')        # sorted by status: RUNNING last

        def statuses() -> list[str]:
            return page.locator("#runs tr[data-id] .status").all_inner_texts()
        assert statuses() == sorted(statuses()) and statuses()[-1] == "RUNNING"
        stop.touch()
        assert proc.wait(timeout=30) == 0
        until(lambda: live.locator(".status").inner_text() == "FINISHED")
        assert statuses() == sorted(statuses())                # sorted again as it changed
    finally:
        stop.touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    page.watch.check()


def test_a_run_appearing_while_the_page_reopens_its_stream_is_shown(browser: Any, tmp_path: Path) -> None:
    """The page reopens its stream after each new run. A run that appears after the old
    stream closed, and is scanned by the server before the new one opens, is shown:
    the new stream starts from the scan the page had seen. The order is forced: the
    page's second stream request is held until the server's poller (kept going by
    another stream) has announced the run to that other stream."""
    import http.client
    import json
    demo_run(tmp_path, "first", 0.01, steps=5, artifacts=False)
    with running_server(tmp_path) as url:
        host, port = urllib.parse.urlsplit(url).netloc.split(":")
        other = http.client.HTTPConnection(host, int(port), timeout=30)
        other.request("GET", "/api/stream")
        feed = other.getresponse()

        def other_sees(rid: str) -> None:
            while True:
                line = feed.readline()
                assert line, "the other stream ended"
                if line.startswith(b"data: ") and rid in json.loads(line[6:]).get("added", ()):
                    return
        streams: list[str] = []

        def hold(route: Any) -> None:
            streams.append(route.request.url)
            if len(streams) == 2:               # the reopened stream, not yet at the server
                demo_run(tmp_path, "third", 0.01, steps=5, artifacts=False)
                other_sees("demo/third")        # scanned: a new stream without since misses it
            route.continue_()
        ctx, pg, watch = new_page(browser, url)
        pg.route("**/api/stream*", hold)
        pg.goto(url)
        row(pg, "demo/first").wait_for()
        pg.wait_for_selector("#live-dot.on")
        demo_run(tmp_path, "second", 0.01, steps=5, artifacts=False)   # the page reopens
        row(pg, "demo/second").wait_for()
        row(pg, "demo/third").wait_for()
        assert "since=" in streams[1]
        watch.check()
        ctx.close()
        other.close()


def test_histograms_and_images_have_a_step_slider(browser: Any, tmp_path: Path) -> None:
    """log_histogram and log_image records: one panel per tag on the run page, a slider
    over the steps, the image and the bars of the chosen step."""
    import numpy as np
    base = tmp_path / "experiments"
    with expman.Experiment("media", "m1", base_dir=base, capture_env=False,
                           system_metrics=False) as exp:
        for step in range(3):
            exp.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
            exp.log_histogram("weights", edges=[0.0, 1.0, 2.0, 3.0], counts=[step, 1, 3 - step],
                              step=step)
            img = np.zeros((4, 6, 3), dtype=np.uint8)
            img[..., step] = 255                             # red, green, blue
            exp.log_image("samples", img, step=step)
    with running_server(base) as url:
        ctx = browser.new_context(viewport={"width": 1280, "height": 900})
        pg = ctx.new_page()
        pg.set_default_timeout(TIMEOUT_MS)
        watch = Watch(pg, url)
        pg.goto(url + "#/run/media/m1")
        hist = pg.locator('figure.media[data-tag="weights"]')
        image = pg.locator('figure.media[data-tag="samples"]')
        hist.wait_for()
        assert hist.locator(".media-step").inner_text() == "step 2"       # the newest first
        assert "3 buckets" in hist.locator(".media-range").inner_text()
        slider = image.locator("input.media-slider")
        slider.fill("0")
        slider.dispatch_event("input")
        until(lambda: image.locator("img").get_attribute("data-step") == "0")
        pic = image.locator("img")
        until(lambda: pic.evaluate("i => i.complete && i.naturalWidth") == 6)
        red = pic.evaluate("""i => { const c = document.createElement('canvas');
            c.width = i.naturalWidth; c.height = i.naturalHeight;
            const x = c.getContext('2d'); x.drawImage(i, 0, 0);
            return Array.from(x.getImageData(0, 0, 1, 1).data.slice(0, 3)); }""")
        assert red == [255, 0, 0]
        watch.check()
        ctx.close()


def test_a_logged_table_is_paged_with_a_version_selector(browser: Any, tmp_path: Path) -> None:
    """Issue 22.2: each log_table table on the run page: the newest version first, a
    selector over versions by step, and pages of 50 rows."""
    base = tmp_path / "experiments"
    with expman.Experiment("tables", "t1", base_dir=base, capture_env=False,
                           system_metrics=False) as exp:
        exp.log_table("samples", [[f"prompt {i}", i] for i in range(120)],
                      columns=["prompt", "reward"], step=5)
        exp.log_table("samples", [["only", 1.5]], columns=["prompt", "reward"], step=9)
    with running_server(base) as url:
        ctx = browser.new_context(viewport={"width": 1280, "height": 900})
        pg = ctx.new_page()
        pg.set_default_timeout(TIMEOUT_MS)
        watch = Watch(pg, url)
        pg.goto(url + "#/run/tables/t1")
        panel = pg.locator('figure.logged[data-table="samples"]')
        rows = panel.locator("tbody tr")
        until(lambda: rows.count() == 1, what="the newest version's one row")
        assert rows.first.locator("td").all_inner_texts() == ["only", "1.5"]
        assert panel.locator(".table-range").inner_text() == "rows 1–1 of 1"
        panel.locator("select.table-version").select_option("0")
        until(lambda: rows.count() == 50, what="the first page of the older version")
        assert rows.first.locator("td").all_inner_texts() == ["prompt 0", "0"]
        panel.locator("button.table-next").click()
        panel.locator("button.table-next").click()
        until(lambda: panel.locator(".table-range").inner_text() == "rows 101–120 of 120")
        assert rows.count() == 20 and panel.locator("button.table-next").is_disabled()
        watch.check()
        ctx.close()


def test_loss_is_shown_in_the_runs_view_and_on_the_run_page(browser: Any, tmp_path: Path) -> None:
    """A run whose writer recorded lost rows is marked in the runs view; the run page
    of a run whose rank 2 lost data says so, and is not "intact"."""
    import json

    from expman import layout
    base = tmp_path / "experiments"
    loss = {"rows_dropped": 4146, "events_dropped": 0, "write_errors": 3,
            "last_error": "No space left on device"}
    for name in ("lossy", "ranked", "fine"):
        with expman.Experiment("l", name, base_dir=base, capture_env=False,
                               system_metrics=False) as exp:
            exp.log_metrics({"x": 1.0}, step=0)
    meta_file = base / "l" / "lossy" / layout.RUN_FILE
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps(dict(meta, data_loss=loss)))
    ranked = base / "l" / "ranked"
    meta = dict(json.loads((ranked / layout.RUN_FILE).read_text()), world_size=3)
    (ranked / layout.RUN_FILE).write_text(json.dumps(meta))        # a 3-rank job
    (ranked / layout.rank_file(layout.RUN_FILE, 2)).write_text(json.dumps(dict(meta, rank=2, data_loss=loss)))
    with running_server(base) as url:
        ctx = browser.new_context(viewport={"width": 1280, "height": 900})
        pg = ctx.new_page()
        pg.set_default_timeout(TIMEOUT_MS)
        watch = Watch(pg, url)
        pg.goto(url)
        row(pg, "l/fine").wait_for()
        badge = row(pg, "l/lossy").locator(".loss")
        assert badge.inner_text() == "data lost"
        assert "4146 rows dropped" in badge.get_attribute("title")
        assert row(pg, "l/fine").locator(".loss").count() == 0
        ranked_badge = row(pg, "l/ranked").locator(".loss")                # rank 2's loss
        assert "rank 2: 4146 rows dropped" in ranked_badge.get_attribute("title")
        pg.screenshot(path=str(tmp_path / "runs.png"))
        pg.goto(url + "#/run/l/ranked")
        pg.wait_for_selector("#run-title")
        assert pg.locator("#data-loss-badge").inner_text() == "data lost"
        assert "intact" not in pg.locator("#integrity").inner_text()
        problems = pg.locator("section.panel li").all_inner_texts()
        assert any("rank 2" in p and "4146 rows" in p for p in problems), problems
        pg.screenshot(path=str(tmp_path / "loss.png"), full_page=True)
        watch.check()
        ctx.close()


def test_the_runs_view_loads_in_pages_sorted_by_the_server(browser: Any, tmp_path: Path) -> None:
    """520 runs: the first 500 come in one answer and are drawn, the rest follow."""
    import json

    from expman import layout
    base = tmp_path / "experiments"
    for i in range(520):
        run = base / "many" / f"r{i:03d}"
        run.mkdir(parents=True)
        (run / layout.RUN_FILE).write_text(json.dumps(
            {"status": "FINISHED", "experiment": "many", "run_name": f"r{i:03d}",
             "start_time": 1_700_000_000 + i, "end_time": 1_700_000_001 + i}))
    with running_server(base) as url:
        ctx = browser.new_context(viewport={"width": 1280, "height": 900})
        pg = ctx.new_page()
        pg.set_default_timeout(TIMEOUT_MS)
        watch = Watch(pg, url)
        pg.goto(url)
        until(lambda: "520 of 520 runs" in pg.locator(".count").inner_text())
        pages = [u for u in watch.requests if "/api/runs?" in u]
        assert any("limit=500" in u and "offset" not in u for u in pages), pages
        assert any("offset=500" in u for u in pages), pages
        first = pg.locator("#runs tr[data-id]").first.get_attribute("data-id")
        assert first == "many/r519"                                  # the newest first
        assert pg.locator("#base").inner_text() == "experiments"      # a name, not a path
        watch.check()
        ctx.close()


def test_first_page_charts_the_newest_runs_in_distinct_colours(browser: Any, tmp_path: Path) -> None:
    """Nothing selected yet: the newest five runs are charted at once (but not a run whose
    150 metrics would make 150 charts), each run in its own palette colour (seven runs, seven
    colours); two `expman demo` runs draw two different curves."""
    base = tmp_path / "experiments"
    for i in range(4):
        with expman.Experiment("sweep", f"r{i}", base_dir=base, capture_env=False,
                               system_metrics=False) as exp:
            for step in range(5):
                exp.log_metrics({"train_loss": 1.0 / (step + 1 + i)}, step=step)
    env = dict(os.environ, EXPMAN_DIR=str(base),
               PYTHONPATH=os.pathsep.join([str(Path(expman.__file__).parent.parent),
                                           os.environ.get("PYTHONPATH", "")]))
    for _ in range(2):
        subprocess.run([sys.executable, "-m", "expman", "demo", "--steps", "30", "--delay", "0"],
                       env=env, check=True, stdout=subprocess.DEVNULL, cwd=tmp_path)
    demos = sorted(f"demo/{p.name}" for p in (base / "demo").iterdir() if not p.is_symlink())
    assert len(demos) == 2
    with expman.Experiment("wide", "w", base_dir=base, capture_env=False,
                           system_metrics=False) as exp:   # the newest: too many charts to default
        exp.log_metrics({f"m{i}": float(i) for i in range(150)}, step=0)
    with running_server(base) as url:
        ctx, pg, watch = new_page(browser, url)
        pg.goto(url)
        pg.wait_for_selector('section.chart[data-metric="train_loss"][data-series="5"]')
        checked = pg.locator("#runs tr[data-id]").evaluate_all(
            "rs => rs.filter(r => r.querySelector('input').checked).map(r => r.dataset.id)")
        assert sorted(checked) == sorted(["sweep/r1", "sweep/r2", "sweep/r3", *demos])
        swatches = pg.locator("#runs tr[data-id] .swatch").evaluate_all(
            "ss => ss.map(s => getComputedStyle(s).backgroundColor)")
        assert len(swatches) == 7 and len(set(swatches)) == 7, swatches
        assert pg.locator("section.chart").count() == 5     # train_loss, train_acc, lr, val_*
        series = plotted(pg, "train_loss")
        assert sorted(s["label"] for s in series) == sorted(checked)
        assert len({s["stroke"] for s in series}) == 5
        for s in series:                        # the chart's colour is the row's swatch
            sw = row(pg, s["label"]).locator(".swatch").evaluate("s => s.style.background")
            hexed = "#%02x%02x%02x" % tuple(int(v) for v in sw[4:-1].split(","))
            assert hexed == s["stroke"]
        a, b = (next(s["y"] for s in series if s["label"] == d) for d in demos)
        assert [v for v in a if v is not None] != [v for v in b if v is not None]
        pg.reload()                                                   # stable across reloads
        pg.wait_for_selector('section.chart[data-metric="train_loss"][data-series="5"]')
        again = pg.locator("#runs tr[data-id] .swatch").evaluate_all(
            "ss => ss.map(s => getComputedStyle(s).backgroundColor)")
        assert again == swatches
        pg.click("#select-none")                                      # the user's choice stays
        pg.wait_for_selector('section.chart[data-metric="train_loss"]', state="detached")
        assert "Select runs" in pg.locator("#charts-hint").inner_text()
        watch.check()
        ctx.close()


def test_charts_come_in_foldable_sections_system_last_and_folded(browser: Any, tmp_path: Path) -> None:
    """Charts grouped by prefix: the user's own metrics first, `system/` last and folded
    (its charts not even fetched), each section foldable, a chart pinned to the top; the
    folding and the pins kept per base dir."""
    base = tmp_path / "experiments"
    with expman.Experiment("s", "one", base_dir=base, capture_env=False, system_metrics=False) as exp:
        for step in range(4):
            exp.log_metrics({"loss": 1.0, "train/loss": 2.0, "val/acc": 0.5, "system/cpu_percent": 9.0,
                             "system/memory_rss": 1e8}, step=step)
    with running_server(base) as url:
        ctx, pg, watch = new_page(browser, url)
        pg.goto(url)
        pg.wait_for_selector('section.chart[data-metric="val/acc"][data-series="1"]')
        sections = pg.locator("#charts details.chart-section").evaluate_all(
            "ds => ds.map(d => [d.dataset.section, d.open, [...d.querySelectorAll('section.chart')]"
            ".map(c => c.dataset.metric)])")
        assert sections == [["", True, ["loss"]], ["train", True, ["train/loss"]],
                            ["val", True, ["val/acc"]],
                            ["system", False, ["system/cpu_percent", "system/memory_rss"]]]
        assert chart(pg, "system/cpu_percent").get_attribute("data-series") is None    # not fetched
        assert not [u for u in watch.requests if "system%2Fcpu" in u]
        system = pg.locator('details[data-section="system"]')
        system.locator("summary").click()                             # unfold: charts drawn
        pg.wait_for_selector('section.chart[data-metric="system/cpu_percent"][data-series="1"]')
        assert plotted(pg, "system/cpu_percent")[0]["y"] == [9.0] * 4
        # system series are sampled on a timer: drawn on relative time, the rest on steps
        assert attr(pg, "system/cpu_percent", "x-axis") == "rel" and attr(pg, "loss", "x-axis") == "step"
        assert any("system%2Fcpu_percent" in u and "x=rel" in u for u in watch.requests)
        assert "relative time" in chart(pg, "system/cpu_percent").inner_text()      # the axis says so
        pg.locator('details[data-section="train"] summary').click()   # fold train
        until(lambda: not pg.locator('details[data-section="train"]').evaluate("d => d.open"))
        pg.reload()
        pg.wait_for_selector('section.chart[data-metric="val/acc"][data-series="1"]')
        opened = dict(pg.locator("#charts details.chart-section").evaluate_all(
            "ds => ds.map(d => [d.dataset.section, d.open])"))
        assert opened == {"": True, "train": False, "val": True, "system": True}
        assert pg.locator('details[data-section="train"] section.chart').is_hidden()
        chart(pg, "system/memory_rss").locator("button.pin").click()  # pinned: first, in its own
        pg.wait_for_selector('details[data-section="pinned"] section.chart[data-metric="system/memory_rss"]'
                             '[data-series="1"]')
        pg.reload()
        pg.wait_for_selector('section.chart[data-metric="system/memory_rss"][data-series="1"]')
        order = pg.locator("#charts details.chart-section").evaluate_all(
            "ds => ds.map(d => [d.dataset.section, [...d.querySelectorAll('section.chart')]"
            ".map(c => c.dataset.metric)])")
        assert order[0] == ["pinned", ["system/memory_rss"]]
        assert order[-1] == ["system", ["system/cpu_percent"]]
        assert plotted(pg, "system/memory_rss")[0]["y"] == [1e8] * 4
        chart(pg, "system/memory_rss").locator("button.pin").click()  # unpinned: back in system/
        pg.wait_for_selector('details[data-section="system"] section.chart[data-metric="system/memory_rss"]')
        assert pg.locator('details[data-section="pinned"]').count() == 0
        pg.fill("#metric-filter", "acc")                              # a filter hides empty sections
        assert pg.locator('details[data-section="system"]').is_hidden()
        assert pg.locator('details[data-section="val"]').is_visible()
        watch.check()
        ctx.close()


def test_param_filter_reads_and_or_and_rejects_what_it_cannot_read(page: Any, site: Any) -> None:
    """`or` is the union of what each side matches (`and` binds tighter); what the filter
    cannot read is said on the page, never read into a value to match nothing."""
    page.goto(site["url"])
    row(page, "demo/run-a").wait_for()
    err = page.locator(".expr-error")

    def shown() -> list[str]:
        return sorted(page.locator("#runs tr[data-id]").evaluate_all("rs => rs.map(r => r.dataset.id)"))
    for expr, want in [
        ("learning_rate == 0.01 or status == FAILED", ["demo/failed", "demo/run-a"]),
        ("seed == 2 || note ~ script", [f"demo/{XSS_IMG}", "demo/run-b"]),
        ("learning_rate > 0 and seed == 1 or status == FAILED", ["demo/failed", "demo/run-a"]),
        ("model == 'mlp' and seed == 2", ["demo/run-b"]),
    ]:
        page.fill("#expr-filter", expr)
        until(lambda want=want: shown() == want, what=f"{expr} shows {want}")
        assert err.inner_text() == ""
    for expr, says in [("(learning_rate < 1)", "parentheses are not supported"),
                       ("learning_rate < 1 or", 'nothing after "or"'),
                       ("model == mlp seed == 2", "a missing and/or?")]:
        page.fill("#expr-filter", expr)
        until(lambda says=says: says in err.inner_text(), what=f"{expr}: {says}")
        assert err.is_visible()
    page.watch.check()


def test_the_url_keeps_selection_filters_and_smoothing(page: Any, site: Any) -> None:
    """A link with #/?run=..&expr=..&smooth=.. opens on that state; what the user changes
    goes into the URL, so a reload shows the same (an empty selection too)."""
    q = urllib.parse.urlencode([("run", "demo/run-b"), ("expr", "seed == 2 or seed == 1"),
                                ("smooth", "0.5"), ("x", "rel")])
    page.goto(f"{site['url']}#/?{q}")
    page.wait_for_selector('section.chart[data-metric="train_loss"][data-series="1"]')
    assert [s["label"] for s in plotted(page, "train_loss")] == ["demo/run-b (raw)", "demo/run-b"]
    assert attr(page, "train_loss", "smooth") == "0.5"
    assert page.input_value("#expr-filter") == "seed == 2 or seed == 1"
    assert page.input_value("#x-axis") == "rel"
    until(lambda: rows_shown(page) == 2)
    row(page, "demo/run-a").locator("input[type=checkbox]").check()
    page.fill("#smoothing", "0.3")
    page.dispatch_event("#smoothing", "input")
    page.fill("#expr-filter", "seed == 1")
    until(lambda: "smooth=0.3" in page.url and "expr=seed" in page.url)
    page.reload()
    page.wait_for_selector('section.chart[data-metric="train_loss"][data-series="2"][data-smooth="0.3"]')
    assert sorted(s["label"] for s in plotted(page, "train_loss")) == ["demo/run-a", "demo/run-a (raw)",
                                                                      "demo/run-b", "demo/run-b (raw)"]
    assert page.input_value("#expr-filter") == "seed == 1"
    until(lambda: rows_shown(page) == 1)
    page.click("#select-none")
    until(lambda: "run=&" in page.url or page.url.endswith("run="))
    page.reload()
    row(page, "demo/run-a").wait_for()
    assert page.locator("#runs input[type=checkbox]:checked").count() == 0
    assert page.locator("section.chart").count() == 0
    page.watch.check()


def test_back_and_forward_step_through_selections(page: Any, site: Any) -> None:
    """Each change of selection is a history entry: back shows the selection before it (and
    at the start the newest runs again), forward the one after; typing a filter is not one."""
    def charted() -> list[str]:
        return sorted(page.locator("#runs tr[data-id]").evaluate_all(
            "rs => rs.filter(r => r.querySelector('input').checked).map(r => r.dataset.id)"))
    page.goto(site["url"])
    page.wait_for_selector('section.chart[data-metric="train_loss"][data-series]')
    default = charted()                                   # the newest runs (the live test's too)
    assert len(default) >= 4
    select(page, "demo/run-a")                            # select none, then run-a: two entries
    page.wait_for_selector('section.chart[data-metric="train_loss"][data-series="1"]')
    row(page, "demo/run-b").locator("input[type=checkbox]").check()
    page.wait_for_selector('section.chart[data-metric="train_loss"][data-series="2"]')
    page.fill("#metric-filter", "val_")                   # replaces the entry, adds none
    page.go_back()
    until(lambda: charted() == ["demo/run-a"], what=f"back: run-a alone, not {charted()}")
    page.wait_for_selector('section.chart[data-metric="train_loss"][data-series="1"]', state="attached")
    assert page.input_value("#metric-filter") == ""       # the filter as it was then
    page.go_back()
    until(lambda: charted() == [], what="back: none")
    page.go_back()
    until(lambda: charted() == default, what="back: the newest runs again")
    page.go_forward()
    until(lambda: charted() == [], what="forward: none")
    page.go_forward()
    page.go_forward()
    until(lambda: charted() == ["demo/run-a", "demo/run-b"], what="forward: both")
    assert page.input_value("#metric-filter") == "val_"
    page.watch.check()


def wide_base(base: Path, runs: int) -> None:
    """`runs` small runs (run.json only) and one run of 12,000 metrics (`loss_{step}`),
    the shape that froze the page for 114 s (issue 21)."""
    import json

    from expman import layout
    for i in range(runs):
        run = base / "many" / f"r{i:03d}"
        run.mkdir(parents=True)
        (run / layout.RUN_FILE).write_text(json.dumps(
            {"status": "FINISHED", "experiment": "many", "run_name": f"r{i:03d}",
             "start_time": 1_700_000_000 + i, "end_time": 1_700_000_001 + i}))
    with pytest.warns(RuntimeWarning, match="12000 distinct metric names"):
        with expman.Experiment("w", "wide", base_dir=base, capture_env=False,
                               system_metrics=False) as exp:
            exp.log_params({"lr": 0.1})
            for step in range(12_000):
                exp.log_metrics({f"loss_{step}": float(step)}, step=step)


def test_a_12000_metric_run_keeps_the_page_small(browser: Any, tmp_path: Path) -> None:
    """300 runs and one of 12,000 metrics: the runs table holds only the rows and columns
    in view (scrolling brings the rest), the column chooser finds any metric and keeps the
    choice over a reload, ticking the wide run makes 60 charts (not 12,000) and the metric
    filter charts any other; its run page pages the metric table and charts by search."""
    base = tmp_path / "experiments"
    wide_base(base, 300)
    with running_server(base) as url:
        ctx, pg, watch = new_page(browser, url)
        pg.goto(url + "#/?run=")
        until(lambda: "301 of 301 runs" in pg.locator(".count").inner_text())
        assert 0 < rows_shown(pg) < 60                                 # 301 runs, a screenful drawn
        wrap = pg.locator(".table-wrap")
        assert wrap.evaluate("w => w.scrollHeight") > 300 * 28         # as tall as every row
        wrap.evaluate("w => { w.scrollTop = w.scrollHeight; }")
        row(pg, "many/r000").wait_for()                                # the oldest, at the bottom
        assert rows_shown(pg) < 60 and row(pg, "many/r299").count() == 0
        assert "columns: 41 of 12,001" in pg.locator("#columns-summary").inner_text()
        pg.click("#columns-summary")                                   # choose: search every name
        pg.fill("#column-search", "loss_1199")
        until(lambda: pg.locator(".column-list li").count() == 11)
        pg.click("#columns-add-shown")
        until(lambda: "columns: 52 of 12,001" in pg.locator("#columns-summary").inner_text())
        pg.click("#columns-summary")
        headers = pg.locator("#runs thead th[data-key]")
        assert headers.count() < 40                                    # 58 columns, not all in the DOM
        assert pg.locator('#runs th[data-key="m:loss_11999"]').count() == 0
        wrap.evaluate("w => { w.scrollLeft = w.scrollWidth; w.scrollTop = 0; }")
        pg.locator('#runs th[data-key="m:loss_11999"]').wait_for()   # scrolled into view
        assert pg.locator('#runs th[data-key="status"]').count() == 0
        wide = row(pg, "w/wide")
        wide.wait_for()
        cell = pg.locator("#runs thead th").evaluate_all(
            "ths => ths.findIndex(t => t.dataset.key === 'm:loss_11999')")
        assert wide.locator("td").nth(cell).inner_text() == "11999"
        pg.reload()                                                    # the choice is kept
        until(lambda: "columns: 52 of 12,001" in pg.locator("#columns-summary").inner_text())
        # ticking the wide run: 60 charts, and a note saying how to reach the others
        row(pg, "w/wide").locator("input[type=checkbox]").check()
        pg.wait_for_selector('section.chart[data-metric="loss_0"][data-series="1"]')
        assert pg.locator("section.chart").count() == 60
        assert "12,000 metrics: 60 charted" in pg.locator("#charts-cap").inner_text()
        pg.fill("#metric-filter", "loss_1199")
        pg.wait_for_selector('section.chart[data-metric="loss_11990"][data-series="1"]')
        assert pg.locator("section.chart").count() == 11
        assert plotted(pg, "loss_11990")[0]["y"] == [11990.0]
        asked = len([u for u in watch.requests if "/series?" in u])
        row(pg, "many/r299").locator("input[type=checkbox]").check()    # a run without these metrics
        until(lambda: "run=many%2Fr299" in pg.url)
        assert plotted(pg, "loss_11990")[0]["y"] == [11990.0]
        assert len([u for u in watch.requests if "/series?" in u]) == asked    # nothing asked again
        # the run page: 20 summary rows at a time, the search picks rows and charts
        pg.goto(url + "#/run/w/wide")
        until(lambda: pg.locator("#metric-summary tbody tr").count() == 20)
        assert pg.locator("#metric-count").inner_text() == "20 of 12,000 metrics"
        assert pg.locator("section.chart").count() == 60
        pg.fill("#run-metric-search", "loss_4242")
        until(lambda: pg.locator("#metric-summary tbody tr").count() == 1)
        pg.wait_for_selector('section.chart[data-metric="loss_4242"][data-series="1"]')
        assert pg.locator("section.chart").count() == 1
        assert plotted(pg, "loss_4242")[0]["y"] == [4242.0]
        assert pg.locator('#metric-summary tr[data-metric="loss_4242"] td').nth(2).inner_text() == "4242"
        watch.check()
        ctx.close()


TICKS = """e => { const p = e._chart.plot, out = [];
    for (const [i, scale] of [[0, "x"], [1, "y"]]) {
      const a = p.axes[i];
      p.ctx.font = a.font[0];
      out.push(a._splits.map((v, k) => ({ label: a._values[k], at: p.valToPos(v, scale, true),
        width: p.ctx.measureText(a._values[k]).width })));
    }
    return out; }"""


def ticks(page: Any, metric: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The labels uPlot drew on a chart's x and y axes, with their canvas positions and widths."""
    x, y = chart(page, metric).evaluate(TICKS)
    return x, y


def test_axes_read_at_any_scale_and_each_chart_picks_its_x(browser: Any, tmp_path: Path) -> None:
    """A 5 M-step axis labels 1M, 2M... without overlap; y labels carry SI prefixes (G, µ) and
    byte series binary units; a chart's own x axis (another metric: epoch; relative time as
    durations) is drawn from the server's x and kept over a reload, the others unchanged."""
    base = tmp_path / "experiments"
    with expman.Experiment("scale", "r", base_dir=base, capture_env=False, system_metrics=False) as exp:
        for i in range(2001):
            step = i * 2500
            exp.log_metrics({"loss": 1e9 + i * 1e6, "tiny": 2e-6 * (1 + i / 2000),
                             "system/proc/rss_bytes": 1.5 * 2 ** 30 + i * 2 ** 20,
                             "epoch": step / 1e6}, step=step)
    with running_server(base) as url:
        ctx, pg, watch = new_page(browser, url)
        pg.goto(url + "#/?run=scale/r")
        pg.wait_for_selector('section.chart[data-metric="loss"][data-series="1"]')
        x, y = ticks(pg, "loss")
        assert [t["label"] for t in x] == ["0", "1M", "2M", "3M", "4M", "5M"], x
        for a, b in zip(x, x[1:]):                                    # no two labels overlap
            assert a["at"] + a["width"] / 2 + 4 < b["at"] - b["width"] / 2, (a, b)
        assert all(t["label"].endswith("G") for t in y if t["label"] != "0"), y
        pg.wait_for_selector('section.chart[data-metric="tiny"][data-series="1"]')
        assert all(t["label"].endswith("µ") for t in ticks(pg, "tiny")[1]), ticks(pg, "tiny")[1]
        pg.locator('details[data-section="system"] summary').click()
        pg.wait_for_selector('section.chart[data-metric="system/proc/rss_bytes"][data-series="1"]')
        labels = [t["label"] for t in ticks(pg, "system/proc/rss_bytes")[1]]
        assert labels and all(t.endswith(" GiB") for t in labels), labels
        # the loss chart on epoch: its x is the epoch at each step, from the server
        chart(pg, "loss").locator("select.x-pick").select_option("metric:epoch")
        pg.wait_for_selector('section.chart[data-metric="loss"][data-x-axis="metric:epoch"][data-series="1"]')
        xs = chart(pg, "loss").evaluate("e => Array.from(e._chart.plot.data[0])")
        assert xs[0] == 0 and xs[-1] == 5.0 and len(xs) == 2001
        assert any("x=metric%3Aepoch" in u for u in watch.requests)
        assert attr(pg, "tiny", "x-axis") == "step"                    # the others keep the page's
        chart(pg, "tiny").locator("select.x-pick").select_option("rel")
        pg.wait_for_selector('section.chart[data-metric="tiny"][data-x-axis="rel"][data-series="1"]')
        rel = [t["label"] for t in ticks(pg, "tiny")[0]]
        assert len(rel) >= 2 and all(t.endswith("s") for t in rel), rel
        pg.reload()
        pg.wait_for_selector('section.chart[data-metric="loss"][data-x-axis="metric:epoch"][data-series="1"]')
        assert chart(pg, "loss").locator("select.x-pick").input_value() == "metric:epoch"
        assert attr(pg, "epoch", "x-axis") == "step"
        chart(pg, "epoch").locator("select.x-pick").select_option("other")    # any metric, by name
        chart(pg, "epoch").locator("input.x-metric").fill("loss")
        chart(pg, "epoch").locator("input.x-metric").dispatch_event("change")
        pg.wait_for_selector('section.chart[data-metric="epoch"][data-x-axis="metric:loss"][data-series="1"]')
        xs = chart(pg, "epoch").evaluate("e => Array.from(e._chart.plot.data[0])")
        assert xs[0] == 1e9 and xs[-1] == 3e9
        pg.screenshot(path=str(tmp_path / "axes.png"))
        watch.check()
        ctx.close()


def test_a_chart_downloads_as_csv_of_raw_points_and_as_png(page: Any, site: Any, tmp_path: Path) -> None:
    """CSV: every point of the zoomed range of each run on the chart, as open_run reads it
    (not the decimated points drawn); PNG: the chart as drawn, the runs' colours in it."""
    import csv

    PIL = need("PIL.Image")
    page.goto(site["url"])
    select(page, "demo/run-a", "demo/run-b")
    c = chart(page, "train_loss")
    page.wait_for_selector('section.chart[data-metric="train_loss"][data-series="2"]')
    box = c.locator(".u-over").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.3, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.6, y, steps=5)
    page.mouse.up()
    until(lambda: attr(page, "train_loss", "zoomed"))
    page.wait_for_selector('section.chart[data-metric="train_loss"][data-series="2"]')
    lo, hi = map(float, attr(page, "train_loss", "zoomed").split(","))
    with page.expect_download() as got:
        c.locator("button.export-csv").click()
    assert got.value.suggested_filename == "train_loss.csv"
    rows = list(csv.reader(Path(got.value.path()).read_text().splitlines()))
    assert rows[0] == ["run", "x", "step", "time", "value"]
    for rid in ("demo/run-a", "demo/run-b"):
        s = expman.open_run(site["base"] / rid).metrics["train_loss"]
        want = [(int(st), float(t), float(v)) for st, t, v in zip(s.steps, s.times, s.values) if lo <= st <= hi]
        assert len(want) > 50
        assert [(int(r[2]), float(r[3]), float(r[4])) for r in rows[1:] if r[0] == rid] == want
    with page.expect_download() as got:
        c.locator("button.export-png").click()
    assert got.value.suggested_filename == "train_loss.png"
    with PIL.open(got.value.path()) as shot:
        img = shot.convert("RGB")
    canvas = c.locator("canvas").evaluate("e => [e.width, e.height]")
    assert img.size[0] == canvas[0] and img.size[1] > canvas[1]
    strokes = {s["label"]: s["stroke"] for s in plotted(page, "train_loss")}
    raw = img.tobytes()
    pixels = [tuple(raw[i:i + 3]) for i in range(0, len(raw), 3)]
    for rid in ("demo/run-a", "demo/run-b"):
        rgb = tuple(int(strokes[rid][i:i + 2], 16) for i in (1, 3, 5))
        near = sum(1 for p in pixels if sum(abs(a - b) for a, b in zip(p, rgb)) < 40)
        assert near > 100, f"{rid}'s colour {rgb} drawn in {near} pixels"
    assert pixels[0] == (255, 255, 255)                     # the page's light background
    page.watch.check()


AXIS_INK = """e => { const c = e.querySelector('canvas'), x = c.getContext('2d');
    const d = x.getImageData(0, 0, Math.round(50 * devicePixelRatio), c.height).data;   // the y labels
    let lo = 765, hi = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 200) { const s = d[i] + d[i + 1] + d[i + 2];
      lo = Math.min(lo, s); hi = Math.max(hi, s); }
    return [lo, hi]; }"""


def test_dark_mode_follows_the_system_and_the_toggle_is_kept(browser: Any, site: Any) -> None:
    """prefers-color-scheme: dark gives a dark page with light axis labels drawn on the
    charts; the toggle switches to light (charts drawn again with dark labels), which a
    reload keeps; toggling back to the system's choice forgets it."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme="dark")
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    watch = Watch(pg, site["url"])

    def background() -> int:
        rgb = pg.evaluate("getComputedStyle(document.body).backgroundColor")
        return sum(int(v) for v in rgb[rgb.index("(") + 1:-1].split(",")[:3])
    pg.goto(site["url"] + "#/?run=demo/run-a")
    pg.wait_for_selector('section.chart[data-metric="train_loss"][data-series="1"]')
    assert pg.evaluate("document.documentElement.dataset.theme") == "dark"
    assert background() < 100
    lo, hi = chart(pg, "train_loss").evaluate(AXIS_INK)
    assert hi > 500, "light labels on a dark page"
    pg.click("#theme-toggle")
    until(lambda: background() > 700)
    until(lambda: chart(pg, "train_loss").evaluate(AXIS_INK)[1] < 300, what="dark labels once light")
    assert pg.evaluate("localStorage.getItem('expman.theme')") == "light"
    pg.reload()
    pg.wait_for_selector('section.chart[data-metric="train_loss"][data-series="1"]')
    assert pg.evaluate("document.documentElement.dataset.theme") == "light" and background() > 700
    assert chart(pg, "train_loss").evaluate(AXIS_INK)[1] < 300
    pg.click("#theme-toggle")                                  # back to the system's: forgotten
    until(lambda: background() < 100)
    assert pg.evaluate("localStorage.getItem('expman.theme')") is None
    watch.check()
    ctx.close()
