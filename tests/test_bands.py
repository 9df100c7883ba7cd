"""expman.bands: a group's band per pixel column equals a brute-force min/max over
every point of every run of the group in that column (no spike lost), its line
the mean (or median) of the runs' column means."""

from __future__ import annotations

import math
from typing import Any

import pytest

from conftest import need

np = need("numpy")

from expman.bands import bands  # noqa: E402


def brute(groups: dict[str, list[tuple[Any, Any]]], pixels: int, stat: str = "mean"
          ) -> dict[float, dict[str, tuple[float, float, float, int]]]:
    """Per column (keyed by its centre x): per group (lo, hi, mid, runs), point by point."""
    xs = [float(v) for runs in groups.values() for x, _ in runs for v in x]
    xmin, xmax = min(xs), max(xs)
    width = (xmax - xmin) / pixels
    cols: dict[int, dict[str, list[list[float]]]] = {}
    for label, runs in groups.items():
        for r, (x, y) in enumerate(runs):
            for xv, yv in zip(x, y):
                c = min(int((float(xv) - xmin) * (pixels / (xmax - xmin))), pixels - 1)
                per_run = cols.setdefault(c, {}).setdefault(label, [[] for _ in runs])
                per_run[r].append(float(yv))
    out: dict[float, dict[str, tuple[float, float, float, int]]] = {}
    for c, by_group in cols.items():
        at = {}
        for label, per_run in by_group.items():
            values = [v for vs in per_run for v in vs if not math.isnan(v)]
            means = [sum(r) / len(r) for r in ([v for v in vs if not math.isnan(v)] for vs in per_run)
                     if r]
            mid = (float(np.median(means)) if stat == "median" else sum(means) / len(means)) \
                if means else math.nan
            at[label] = (min(values) if values else math.nan, max(values) if values else math.nan,
                         mid, len(means))
        out[xmin + (c + 0.5) * width] = at
    return out


def random_groups(rng: Any, n_groups: int = 3, runs: int = 4, points: int = 5000
                  ) -> dict[str, list[tuple[Any, Any]]]:
    groups: dict[str, list[tuple[Any, Any]]] = {}
    for g in range(n_groups):
        group = []
        for r in range(runs):
            n = int(rng.integers(points // 2, points))
            x = np.sort(rng.integers(0, 3 * points, n)).astype(np.int64)
            y = rng.normal(g, 1.0, n)
            spikes = rng.integers(0, n, 5)
            y[spikes] = rng.choice([-1e6, 1e6], 5) * rng.random(5)     # spikes of any size
            y[rng.integers(0, n, 3)] = np.nan
            if r == 1:                        # one run logged out of order
                order = rng.permutation(n)
                x, y = x[order], y[order]
            group.append((x, y))
        groups[f"g{g}"] = group
    return groups


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("stat", ["mean", "median"])
def test_band_equals_brute_force_per_pixel_column(seed: int, stat: str) -> None:
    rng = np.random.default_rng(seed)
    groups = random_groups(rng)
    pixels = int(rng.integers(50, 400))
    got = bands(groups, pixels, stat=stat)
    assert not got.exact
    want = brute(groups, pixels, stat)
    assert len(got.x) == len(want)
    for i, x in enumerate(got.x):
        key = min(want, key=lambda k: abs(k - x))
        assert key == pytest.approx(x)
        for label, band in got.groups.items():
            lo, hi, mid, runs = want[key].get(label, (math.nan, math.nan, math.nan, 0))
            for a, b in ((band.lo[i], lo), (band.hi[i], hi)):
                assert (math.isnan(a) and math.isnan(b)) or a == b      # exact, not close
            assert band.runs[i] == runs
            assert (math.isnan(band.mid[i]) and math.isnan(mid)) or band.mid[i] == pytest.approx(mid)
    # every spike is the band's edge in its column
    for label, runs in groups.items():
        top = max(float(np.nanmax(y)) for _, y in runs)
        assert float(np.nanmax(got.groups[label].hi)) == top
        bottom = min(float(np.nanmin(y)) for _, y in runs)
        assert float(np.nanmin(got.groups[label].lo)) == bottom
        assert got.groups[label].points == sum(len(x) for x, _ in runs)


def test_points_on_column_edges_land_where_the_per_point_rule_puts_them() -> None:
    """Sorted runs are cut by binary search: x exactly on (and one ulp beside) each
    column's edge, repeated, must fall in the column the per-point rule gives."""
    rng = np.random.default_rng(7)
    pixels = 137
    xmin, xmax = 0.1, 977.3
    edges = xmin + np.arange(1, pixels) / (pixels / (xmax - xmin))
    near = np.concatenate([edges, np.nextafter(edges, -np.inf), np.nextafter(edges, np.inf)])
    runs = []
    for _ in range(3):
        x = np.sort(np.concatenate([[xmin, xmax], near, near[: 50], rng.uniform(xmin, xmax, 3000)]))
        runs.append((x, rng.normal(0, 1, len(x))))
    groups = {"a": runs}
    got = bands(groups, pixels)
    want = brute(groups, pixels)
    assert len(got.x) == len(want)
    band = got.groups["a"]
    for i, x in enumerate(got.x):
        key = min(want, key=lambda k: abs(k - x))
        lo, hi, mid, n = want[key]["a"]
        assert (band.lo[i], band.hi[i], band.runs[i]) == (lo, hi, n)
        assert band.mid[i] == pytest.approx(mid)


def test_few_steps_give_one_column_per_step() -> None:
    groups = {"a": [(np.arange(10), np.arange(10.0)), (np.arange(10), np.arange(10.0) + 2)],
              "b": [(np.arange(0, 20, 2), np.full(10, 7.0))]}
    got = bands(groups, 800, stat="mean")
    assert got.exact
    assert got.x.tolist() == list(range(10)) + [10, 12, 14, 16, 18]
    a = got.groups["a"]
    assert a.lo[:10].tolist() == list(range(10))
    assert a.hi[:10].tolist() == [v + 2 for v in range(10)]
    assert a.mid[:10].tolist() == [v + 1 for v in range(10)]
    assert a.runs.tolist() == [2] * 10 + [0] * 5
    assert math.isnan(a.lo[12])
    b = got.groups["b"]
    assert b.runs.tolist() == [1, 0] * 5 + [1] * 5 and b.hi[0] == 7.0 and math.isnan(b.hi[1])


def test_range_clips_and_bad_arguments_raise() -> None:
    x = np.arange(1000)
    got = bands({"a": [(x, x * 1.0)]}, 10, lo=100, hi=199)
    assert float(got.groups["a"].lo[0]) == 100.0 and float(got.groups["a"].hi[-1]) == 199.0
    assert got.groups["a"].points == 100
    empty = bands({"a": [(x, x * 1.0)]}, 10, lo=5000)
    assert len(empty.x) == 0 and empty.groups["a"].points == 0
    with pytest.raises(ValueError, match="stat='mode'"):
        bands({"a": [(x, x)]}, 10, stat="mode")
    with pytest.raises(ValueError, match="pixels=0"):
        bands({"a": [(x, x)]}, 0)
