"""The dashboard's watchdog alerts, ranks and media across runs in Debian's
headless Chromium (the helpers and rules of test_dashboard_browser.py): what is
drawn is checked (DOM, uPlot's data, pixels), not only that requests succeeded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from test_dashboard_browser import (  # its skip rules (no Chromium) apply here too
    chart, new_page, plotted, row, select, sync_api, until,
)

import expman  # noqa: E402
from dashboard_runpage_data import ALERT_STEP, media_run, ranked_run  # noqa: E402
from expman.dashboard.testing import running_server  # noqa: E402
from expman.watch import read_alerts  # noqa: E402
from dashboard_data import launch_chromium  # noqa: E402


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        b = launch_chromium(pw)
        yield b
        b.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("dash21c") / "experiments"
    base.mkdir()
    ranked_run(base)
    media_run(base, "a", 0.0, 0)           # red images, mass around 0 + step
    media_run(base, "b", 5.0, 2)           # blue images, mass around 5 + step
    with running_server(base) as url:
        yield {"url": url.rstrip("/"), "base": base}


def marker_pixels(page: Any, metric: str) -> dict[str, Any]:
    """The chart's markers as drawn: each overlay element's x and title, and whether
    uPlot's canvas holds the marker colour in the column of the first marker."""
    return chart(page, metric).evaluate("""e => { const u = e._chart.plot;
        const ms = [...u.over.querySelectorAll('.marker')];
        const out = ms.map(m => ({ x: Number(m.dataset.x), kind: m.dataset.kind, title: m.title }));
        if (!ms.length) return { markers: out, red: 0 };
        const cx = Math.round(u.valToPos(out[0].x, 'x', true));
        const px = u.ctx.getImageData(cx, u.bbox.top, 1, u.bbox.height).data;
        let red = 0;
        for (let i = 0; i < px.length; i += 4) if (px[i] > 150 && px[i + 1] < 80 && px[i + 2] < 80) red++;
        return { markers: out, red }; }""")


def test_an_alert_is_a_badge_on_its_row_and_run_page_and_a_marker_at_its_step(
        browser: Any, site: Any) -> None:
    ctx, pg, watch = new_page(browser, site["url"])
    pg.goto(site["url"] + "/")
    badge = row(pg, "ranked/job-1").locator(".alert-badge")
    badge.wait_for()
    assert row(pg, "media/a").locator(".alert-badge").count() == 0
    select(pg, "ranked/job-1")
    until(lambda: chart(pg, "loss").get_attribute("data-markers") == "1", what="a marker on loss")
    drawn = marker_pixels(pg, "loss")
    assert [(m["x"], m["kind"]) for m in drawn["markers"]] == [(ALERT_STEP, "alert")]
    assert "loss is NaN at step 30" in drawn["markers"][0]["title"]
    assert drawn["red"] > 20, "the marker's line is drawn on the canvas"
    # hovering the marker shows its message over the plot (and as its title)
    marker = chart(pg, "loss").locator(".marker")
    tip = chart(pg, "loss").locator(".marker-tip")
    assert tip.is_hidden()
    marker.hover()
    text = "nan:loss at step 30: loss is NaN at step 30"
    until(lambda: tip.is_visible())
    assert tip.inner_text() == text and marker.get_attribute("title") == text
    pg.mouse.move(0, 0)
    until(lambda: tip.is_hidden())

    pg.goto(site["url"] + "/#/run/ranked/job-1")
    head = pg.locator(".run-head .alert-badge")
    head.wait_for()
    assert head.inner_text() == "1 alert" and "nan:loss at step 30" in head.get_attribute("title")
    assert pg.locator("#alerts tbody tr").count() == 1
    assert pg.locator("#alerts tbody td.msg").inner_text() == "loss is NaN at step 30"
    until(lambda: chart(pg, "loss").get_attribute("data-markers") == "1", what="the run page's marker")
    # on relative time the marker moves to the alert's time since the start
    chart(pg, "loss").locator("select.x-pick").select_option("rel")
    until(lambda: chart(pg, "loss").get_attribute("data-x-axis") == "rel"
          and chart(pg, "loss").get_attribute("data-markers") == "1")
    (m,) = marker_pixels(pg, "loss")["markers"]
    path = site["base"] / "ranked" / "job-1"
    (alert,) = read_alerts(path)
    assert m["x"] == pytest.approx(alert.time - expman.open_run(path).meta["start_time"])
    chart(pg, "loss").locator("select.x-pick").select_option("")
    watch.check()
    ctx.close()


def test_the_run_page_names_every_rank_and_overlays_their_curves(browser: Any, site: Any) -> None:
    ctx, pg, watch = new_page(browser, site["url"])
    pg.goto(site["url"] + "/#/run/ranked/job-1")
    pg.locator("#ranks").wait_for()
    rows = pg.locator("#ranks tbody tr")
    assert rows.count() == 2
    assert [rows.nth(i).locator(".status").inner_text() for i in range(2)] == ["FINISHED", "FAILED"]
    assert pg.locator("#ranks tr.decided").get_attribute("data-rank") == "1"
    verdict = pg.locator("#status-decided").inner_text()
    assert verdict.startswith("FAILED, decided by rank 1") and "ZeroDivisionError" in verdict
    until(lambda: chart(pg, "loss").get_attribute("data-series") == "1")
    pg.locator("#rank-overlay").check()
    until(lambda: chart(pg, "loss").get_attribute("data-series") == "2", what="rank 1 overlaid")
    series = {s["label"]: s for s in plotted(pg, "loss")}
    assert set(series) == {"ranked/job-1", "ranked/job-1 rank 1"}
    assert series["ranked/job-1"]["y"][:3] == [1.0, 1.01, 1.02]
    assert series["ranked/job-1 rank 1"]["y"][:3] == [5.0, 4.99, 4.98]
    assert series["ranked/job-1"]["stroke"] != series["ranked/job-1 rank 1"]["stroke"]
    pg.locator("#rank-overlay").uncheck()
    until(lambda: chart(pg, "loss").get_attribute("data-series") == "1")
    watch.check()
    ctx.close()


def test_histograms_and_images_are_compared_across_the_selected_runs(browser: Any, site: Any) -> None:
    ctx, pg, watch = new_page(browser, site["url"])
    pg.goto(site["url"] + "/")
    select(pg, "media/a", "media/b")
    pg.locator("#media-compare > summary").click()
    hist = pg.locator('.media-tag[data-tag="weights"] canvas.hist-dist')
    until(lambda: hist.count() == 2, what="a distribution per run")
    assert [hist.nth(i).get_attribute("data-steps") for i in range(2)] == ["5", "5"]

    def band(i: int, column: int) -> tuple[int, int]:
        """The rows (top, bottom) painted in a pixel column of run i's distribution."""
        return hist.nth(i).evaluate("""(c, x) => { const d = c.getContext('2d').getImageData(x, 0, 1, c.height).data;
            let top = -1, bottom = -1;
            for (let y = 0; y < c.height; y++) if (d[y * 4 + 3] > 0) { if (top < 0) top = y; bottom = y; }
            return [top, bottom]; }""", column)
    runs = [hist.nth(i).get_attribute("data-run") for i in range(2)]
    a, b = runs.index("media/a"), runs.index("media/b")
    # both on one y range: b's mass (around 5 + step) is drawn above a's (around step)
    a0, b0 = band(a, 10), band(b, 10)
    assert a0[0] > 0 and b0[0] > 0 and b0[0] < a0[0] and b0[1] < a0[1]
    # over the steps the distribution rises (the mass moves up one bucket a step)
    a_last = band(a, 310)
    assert a_last[0] < a0[0]

    imgs = pg.locator('.media-tag[data-tag="samples"] img')
    until(lambda: imgs.count() == 2)
    slider = pg.locator('.media-tag[data-tag="samples"] input.media-slider')
    slider.fill("1")
    slider.dispatch_event("input")
    until(lambda: all(imgs.nth(i).get_attribute("data-step") == "1" for i in range(2)))

    def colour(i: int) -> list[int]:
        img = imgs.nth(i)
        until(lambda: img.evaluate("i => i.complete && i.naturalWidth") == 6)
        return img.evaluate("""i => { const c = document.createElement('canvas');
            c.width = i.naturalWidth; c.height = i.naturalHeight;
            const x = c.getContext('2d'); x.drawImage(i, 0, 0);
            return Array.from(x.getImageData(0, 0, 1, 1).data.slice(0, 3)); }""")
    by_run = {imgs.nth(i).get_attribute("data-run"): colour(i) for i in range(2)}
    assert by_run == {"media/a": [215, 0, 0], "media/b": [0, 0, 215]}      # step 1: 255 - 40
    watch.check()
    ctx.close()


def test_a_run_with_many_artifacts_opens_with_a_page_of_them(browser: Any, tmp_path: Path) -> None:
    base = tmp_path / "experiments"
    src = tmp_path / "files"
    src.mkdir()
    with expman.Experiment("many", "arts", base_dir=base, capture_env=False,
                           system_metrics=False) as exp:
        exp.log_metrics({"loss": 1.0}, step=0)
        for i in range(250):
            f = src / f"f{i:03d}.bin"
            f.write_bytes(b"x" * i)
            exp.save_artifact(f)
    with running_server(base) as url:
        ctx, pg, watch = new_page(browser, url)
        pg.goto(url.rstrip("/") + "/#/run/many/arts")
        pg.locator("#artifacts tbody tr").first.wait_for()
        assert pg.locator("#artifacts tbody tr").count() == 100
        assert pg.locator("#artifact-count").inner_text() == "100 of 250 artifacts"
        pg.click("#more-artifacts")
        until(lambda: pg.locator("#artifacts tbody tr").count() == 200)
        pg.click("#more-artifacts")
        until(lambda: pg.locator("#artifacts tbody tr").count() == 250)
        assert pg.locator("#more-artifacts").is_hidden()
        assert pg.locator("#artifacts tbody tr").last.locator("td").first.inner_text().startswith("f249")
        watch.check()
        ctx.close()


def test_a_live_runs_new_alert_shows_on_its_row_chart_and_run_page(browser: Any, tmp_path: Path) -> None:
    """An alert recorded while the page is open comes over the live stream: the row's
    badge, the chart's marker, and on the run page the badge, table and markers."""
    from expman.watch import record_alert
    base = tmp_path / "experiments"
    exp = expman.Experiment("live", "watched", base_dir=base, capture_env=False,
                            system_metrics=False)
    try:
        for step in range(20):
            exp.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
        with running_server(base) as url:
            url = url.rstrip("/")
            ctx, pg, watch = new_page(browser, url)
            pg.goto(url + "/")
            select(pg, "live/watched")
            until(lambda: chart(pg, "loss").get_attribute("data-markers") == "0", what="drawn, no marker")
            assert row(pg, "live/watched").locator(".alert-badge").count() == 0
            record_alert(exp, "loss spiked", rule="spike:loss", metric="loss", step=10, value=9.0)
            until(lambda: row(pg, "live/watched").locator(".alert-badge").count() == 1,
                  what="the row's badge (a hang guard, not a latency bound)")
            until(lambda: chart(pg, "loss").get_attribute("data-markers") == "1", what="the marker")
            assert [m["x"] for m in marker_pixels(pg, "loss")["markers"]] == [10]

            pg.goto(url + "/#/run/live/watched")
            until(lambda: chart(pg, "loss").get_attribute("data-markers") == "1")
            assert pg.locator(".run-head .alert-badge").inner_text() == "1 alert"
            record_alert(exp, "loss spiked again", rule="spike:loss", metric="loss", step=15, value=8.0)
            until(lambda: chart(pg, "loss").get_attribute("data-markers") == "2", what="the second marker")
            until(lambda: pg.locator(".run-head .alert-badge").inner_text() == "2 alerts")
            assert pg.locator("#alerts tbody tr").count() == 2
            assert sorted(m["x"] for m in marker_pixels(pg, "loss")["markers"]) == [10, 15]
            watch.check()
            ctx.close()
    finally:
        exp.close()
