"""The dashboard API behind alerts, ranks, media across runs, paged artifacts and a
served URL's name (docs/dashboard.md): each answer checked against the library's
own reading of the run."""

from __future__ import annotations

import json
import math
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from conftest import need

need("starlette")
need("uvicorn")
np = need("numpy")

import expman  # noqa: E402
from dashboard_runpage_data import ALERT_STEP, media_run, ranked_run  # noqa: E402
from expman.dashboard.testing import running_server  # noqa: E402
from expman.media_read import DISTRIBUTION_FRACTIONS, Histogram, percentiles  # noqa: E402
from expman.watch import read_alerts  # noqa: E402


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.load(r)


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("dash21c-api") / "experiments"
    base.mkdir()
    ranked_run(base)
    media_run(base, "a", 0.0, 0)
    with running_server(base) as url:
        yield {"url": url.rstrip("/"), "base": base}


def test_alerts_are_on_the_row_in_the_detail_and_listed(site: Any) -> None:
    url, path = site["url"], site["base"] / "ranked" / "job-1"
    rows = {r["id"]: r for r in get_json(url + "/api/runs")["runs"]}
    assert rows["ranked/job-1"]["alerted"] is True and rows["media/a"]["alerted"] is False
    (alert,) = read_alerts(path)
    listed = get_json(url + "/api/runs/ranked/job-1/alerts")
    assert listed == {"total": 1, "alerts": [alert.to_event()]}
    assert listed["alerts"][0]["value"] == "NaN" and listed["alerts"][0]["step"] == ALERT_STEP
    detail = get_json(url + "/api/runs/ranked/job-1")
    assert detail["alert_count"] == 1 and detail["alerts"] == listed["alerts"]
    assert get_json(url + "/api/runs/media/a/alerts") == {"total": 0, "alerts": []}
    assert status_of(url + "/api/runs/media/nope/alerts") == 404


def test_the_detail_names_each_rank_and_series_come_per_rank(site: Any) -> None:
    url = site["url"]
    detail = get_json(url + "/api/runs/ranked/job-1")
    assert (detail["status"], detail["status_rank"]) == ("FAILED", 1)
    assert "ZeroDivisionError" in detail["status_reason"]
    assert [(r["rank"], r["status"]) for r in detail["ranks"]] == [(0, "FINISHED"), (1, "FAILED")]
    path = site["base"] / "ranked" / "job-1"
    for rank in (0, 1):
        got = get_json(url + f"/api/runs/ranked/job-1/series?metric=loss&rank={rank}&points=1000")
        want = expman.open_run(path, rank=rank).metrics["loss"]
        assert got["rank"] == rank and got["raw"] and got["count"] == 60
        assert got["x"] == list(want.steps) and got["y"] == list(want.values)
    assert status_of(url + "/api/runs/ranked/job-1/series?metric=loss&rank=2") == 404
    assert status_of(url + "/api/runs/ranked/job-1/series?metric=nope&rank=1") == 404
    assert status_of(url + "/api/runs/ranked/job-1/series?metric=loss&rank=-1") == 400


def test_percentiles_of_a_histogram_match_the_values_it_bins() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(3.0, 2.0, 200_000)
    edges = np.linspace(-10, 16, 2601)                   # 0.01 wide buckets
    counts, _ = np.histogram(values, edges)
    got = percentiles(Histogram(0, edges.tolist(), counts.tolist()))
    assert got is not None
    inner = np.quantile(values, DISTRIBUTION_FRACTIONS[1:-1])
    assert np.allclose(got[1:-1], inner, atol=0.02)      # within two buckets
    assert values.min() - 0.01 <= got[0] <= values.min() + 0.01
    assert values.max() - 0.01 <= got[-1] <= values.max() + 0.01
    # exact on a hand-made case: half the count in [0, 1), half in [2, 3)
    assert percentiles(Histogram(0, [0, 1, 2, 3], [5, 0, 5]), [0.0, 0.25, 0.5, 0.75, 1.0]) == \
        [0.0, 0.5, 1.0, 2.5, 3.0]
    assert percentiles(Histogram(0, [0, 1], [0])) is None
    assert percentiles(Histogram(0, [0, 1, 2], [3, -1])) is None


def test_media_comes_as_distributions_over_steps_and_images(site: Any) -> None:
    url, path = site["url"], site["base"] / "media" / "a"
    got = get_json(url + "/api/runs/media/a/media")
    assert got["fractions"] == list(DISTRIBUTION_FRACTIONS)
    hist = got["histograms"]["weights"]
    assert hist["steps"] == [0, 1, 2, 3, 4] and hist["count"] == 5
    logged = [e for e in expman.open_run(path).events if e.get("kind") == "histogram"]
    for row, ev in zip(hist["percentiles"], logged):
        assert row == percentiles(Histogram(ev["step"], ev["edges"], ev["counts"]))
        assert row[4] == pytest.approx(ev["step"], abs=0.5)       # the mass sits around the step
    assert [i["step"] for i in got["images"]["samples"]] == [0, 1, 2, 3, 4]
    assert all(i["path"].startswith("media/") for i in got["images"]["samples"])
    few = get_json(url + "/api/runs/media/a/media?steps=2")["histograms"]["weights"]
    assert few["steps"] == [0, 4] and few["count"] == 5                 # evenly picked, the last in
    assert status_of(url + "/api/runs/media/a/media?steps=0") == 400


def test_artifacts_are_paged(tmp_path: Path) -> None:
    base, src = tmp_path / "experiments", tmp_path / "files"
    src.mkdir()
    with expman.Experiment("many", "arts", base_dir=base, capture_env=False,
                           system_metrics=False) as exp:
        for i in range(130):
            f = src / f"f{i:03d}.txt"
            f.write_text(str(i))
            exp.save_artifact(f)
    with running_server(base) as url:
        url = url.rstrip("/")
        detail = get_json(url + "/api/runs/many/arts")
        assert detail["artifact_count"] == 130 and len(detail["artifacts"]) == 100
        assert [a["name"] for a in detail["artifacts"]][:2] == ["f000.txt", "f001.txt"]
        page = get_json(url + "/api/runs/many/arts/artifact-list?offset=100&limit=100")
        assert page["total"] == 130 and [a["name"] for a in page["artifacts"]] == \
            [f"f{i:03d}.txt" for i in range(100, 130)]
        assert all(a["present"] and a["file"] == a["name"] for a in page["artifacts"])
        assert status_of(url + "/api/runs/many/arts/artifact-list?limit=5001") == 400


def test_a_served_url_is_named_by_its_url(s3_bucket: str, tmp_path: Path) -> None:
    from expman.sync import sync
    base = tmp_path / "experiments"
    with expman.Experiment("exp", "r1", base_dir=base, capture_env=False,
                           system_metrics=False) as exp:
        exp.log_metrics({"loss": 1.0}, step=0)
    url = f"s3://{s3_bucket}/team/experiments"
    assert sync(base, url)["errors"] == {}
    with running_server(url) as served:
        page = get_json(served.rstrip("/") + "/api/runs")
    assert page["base"] == url and [r["id"] for r in page["runs"]] == ["exp/r1"]
    assert math.isfinite(page["runs"][0]["start_time"])
