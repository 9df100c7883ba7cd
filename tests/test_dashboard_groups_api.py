"""expman serve's group bands (/api/bands) and hyperparameter columns
(/api/hparams), over a real server: the band of a group equals a brute-force
min/max of its runs' points per pixel column, spikes included; the hparams
columns are the listing's params beside a metric's last, min or max."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest

from conftest import need

need("starlette")
need("uvicorn")
np = need("numpy")

from expman.dashboard.testing import running_server  # noqa: E402

from dashboard_data import sweep_run  # noqa: E402

SEEDS = 3
LRS = (0.1, 0.01)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("groups") / "experiments"
    base.mkdir()
    losses = {}
    for lr in LRS:
        for seed in range(SEEDS):
            losses[f"sweep/lr{lr}-s{seed}"] = sweep_run(base, f"lr{lr}-s{seed}", lr, seed)
    with running_server(base) as url:
        yield {"url": url, "base": base, "losses": losses}


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def bands_url(site: Any, groups: dict[str, list[str]], **kw: Any) -> str:
    pairs = [(k, str(v)) for k, v in kw.items()]
    for label, ids in groups.items():
        pairs.append(("group", label))
        pairs.extend(("run", i) for i in ids)
    return f"{site['url'].rstrip('/')}/api/bands?{urllib.parse.urlencode(pairs)}"


def test_bands_equal_brute_force_per_pixel_column(site: Any) -> None:
    groups = {f"lr={lr}": [f"sweep/lr{lr}-s{s}" for s in range(SEEDS)] for lr in LRS}
    pixels = 97
    status, got = get(bands_url(site, groups, metric="loss", points=pixels))
    assert status == 200, got
    assert got["exact"] is False and got["missing"] == []
    x = np.array(got["x"])
    steps = 3000
    width = (steps - 1) / pixels
    for g in got["groups"]:
        ys = [site["losses"][rid] for rid in groups[g["label"]]]
        assert g["runs"] == groups[g["label"]] and g["points"] == steps * SEEDS
        col = np.minimum((np.arange(steps) * (pixels / (steps - 1))).astype(int), pixels - 1)
        for i, xc in enumerate(x):
            c = int(round((xc - 0) / width - 0.5))
            in_col = col == c
            every = np.concatenate([y[in_col] for y in ys])
            assert g["lo"][i] == float(every.min()) and g["hi"][i] == float(every.max())
            assert g["mid"][i] == pytest.approx(float(np.mean([y[in_col].mean() for y in ys])))
            assert g["n"][i] == SEEDS
        # each seed's spike is the top of its column
        assert sorted(g["hi"])[-SEEDS:] == [50.0 + s for s in range(SEEDS)]


def test_bands_median_range_missing_and_bad_requests(site: Any) -> None:
    ids = [f"sweep/lr0.1-s{s}" for s in range(SEEDS)]
    status, got = get(bands_url(site, {"a": ids + ["sweep/nope"]}, metric="loss", stat="median",
                                points=2000, **{"from": 100, "to": 199}))
    assert status == 200, got
    assert got["missing"] == ["sweep/nope"] and got["exact"] is True
    assert got["x"] == list(range(100, 200))
    g = got["groups"][0]
    for i, step in enumerate(range(100, 200)):
        values = [float(site["losses"][rid][step]) for rid in ids]
        assert g["lo"][i] == min(values) and g["hi"][i] == max(values)
        assert g["mid"][i] == pytest.approx(float(np.median(values)))
    assert get(bands_url(site, {"a": ids}, metric="nope"))[1]["groups"][0]["points"] == 0
    for bad, why in [(bands_url(site, {}, metric="loss"), "group= is required"),
                     (bands_url(site, {"a": ids}), "metric= is required"),
                     (bands_url(site, {"a": ids}, metric="loss", stat="mode"), "stat='mode'"),
                     (bands_url(site, {"a": ids}, metric="loss", points=0), "points=0"),
                     (f"{site['url'].rstrip('/')}/api/bands?metric=loss&run=sweep/x", "before any group")]:
        status, body = get(bad)
        assert status == 400 and why in body, (bad, body)


def test_hparams_columns_for_last_min_and_max(site: Any) -> None:
    url = site["url"].rstrip("/")
    status, got = get(f"{url}/api/hparams?metric=loss")
    assert status == 200, got
    assert got["total"] == len(LRS) * SEEDS and got["count"] == got["total"]
    # by default: the params that vary among the runs
    assert sorted(got["params"]) == ["lr", "optim.name", "seed"]
    assert dict(map(tuple, got["param_names"])) == {"lr": 6, "optim.name": 6, "seed": 6}
    assert got["metric_names"] == [["loss", 6]]
    by_id = {rid: i for i, rid in enumerate(got["ids"])}
    assert set(by_id) == set(site["losses"])
    for rid, loss in site["losses"].items():
        i = by_id[rid]
        lr, seed = rid.split("/")[1][2:].split("-s")
        assert got["params"]["lr"][i] == float(lr) and got["params"]["seed"][i] == int(seed)
        assert got["values"][i] == float(loss[-1])
    for summary, fn in (("min", np.min), ("max", np.max)):
        status, s = get(f"{url}/api/hparams?metric=loss&summary={summary}&param=lr")
        assert list(s["params"]) == ["lr"]
        for rid, loss in site["losses"].items():
            assert s["values"][s["ids"].index(rid)] == float(fn(loss))
    status, page = get(f"{url}/api/hparams?metric=loss&offset=2&limit=3")
    assert page["ids"] == got["ids"][2:5] and page["total"] == 6 and len(page["values"]) == 3
    status, body = get(f"{url}/api/hparams?summary=mean")
    assert status == 400 and "summary='mean'" in body
    assert math.isfinite(got["values"][0])
