"""The chart decimation (``_core.decimate_minmax``) against a brute-force
per-pixel min/max on random data with spikes: no spike, extreme, first or last
point may be lost, and few points come back raw."""

from __future__ import annotations

import math

import pytest

from conftest import need

np = need("numpy")
from hypothesis import given, settings, strategies as st  # noqa: E402

from expman import _core  # noqa: E402
from expman.errors import ExpmanValueError  # noqa: E402


def brute_buckets(x, pixels):
    """The bucket of each point, computed the slow obvious way."""
    finite = [v for v in x if math.isfinite(v)]
    lo, hi = min(finite), max(finite)
    out = []
    for v in x:
        if not math.isfinite(v) or hi == lo:
            out.append(0)
        else:
            out.append(min(pixels - 1, max(0, int((v - lo) * (pixels / (hi - lo))))))
    return out


def check(x, y, pixels):
    kept = list(_core.decimate_minmax(np.asarray(x, float), np.asarray(y, float), pixels))
    n = len(x)
    assert kept == sorted(set(kept)), "indices ascending and unique"
    if n <= 4 * pixels:
        assert kept == list(range(n)), "few points: every point, raw"
        return kept
    assert len(kept) <= 5 * pixels + 2
    assert kept[0] == 0 and kept[-1] == n - 1, "the first and last point are kept"
    keep = set(kept)
    buckets = brute_buckets(list(x), pixels)
    members: dict[int, list[int]] = {}
    for i, b in enumerate(buckets):
        members.setdefault(b, []).append(i)
    for b, idx in members.items():
        assert idx[0] in keep and idx[-1] in keep, f"bucket {b}: first/last point lost"
        vals = [y[i] for i in idx if not math.isnan(y[i])]
        kept_vals = [y[i] for i in idx if i in keep and not math.isnan(y[i])]
        if vals:
            assert min(kept_vals) == min(vals), f"bucket {b}: its minimum is lost"
            assert max(kept_vals) == max(vals), f"bucket {b}: its maximum is lost"
        if any(math.isnan(y[i]) for i in idx):
            assert any(math.isnan(y[i]) for i in idx if i in keep), f"bucket {b}: its gap is lost"
    finite = [v for v in y if not math.isnan(v)]
    if finite:
        assert min(y[i] for i in kept if not math.isnan(y[i])) == min(finite)
        assert max(y[i] for i in kept if not math.isnan(y[i])) == max(finite)
    return kept


def test_spikes_survive_on_random_data() -> None:
    rng = np.random.default_rng(7)
    n, pixels = 200_000, 700
    x = np.arange(n, dtype=float)
    y = np.cumsum(rng.normal(size=n))
    spikes = rng.choice(n, 40, replace=False)
    y[spikes] += rng.choice([-1, 1], 40) * 1e3          # single-point spikes, up and down
    kept = set(check(x, y, pixels))
    assert set(spikes.tolist()) <= kept, "every single-point spike is drawn"


def test_unsorted_and_duplicate_x_with_nan_and_inf() -> None:
    rng = np.random.default_rng(3)
    n = 30_000
    x = rng.integers(0, 5_000, n).astype(float)          # duplicate, out-of-order steps
    y = rng.normal(size=n)
    y[rng.choice(n, 50, replace=False)] = np.nan
    y[rng.choice(n, 5, replace=False)] = np.inf
    y[123] = -1e9
    kept = check(x, y, 300)
    assert 123 in kept


def test_wall_time_axis_and_constant_x() -> None:
    rng = np.random.default_rng(5)
    t = 1.7e9 + np.cumsum(rng.exponential(0.01, 50_000))
    check(t, rng.normal(size=50_000), 1000)
    check(np.full(5_000, 3.0), rng.normal(size=5_000), 10)     # one bucket holds all


def test_int64_steps_are_bucketed_like_their_float_copy() -> None:
    rng = np.random.default_rng(11)
    steps = np.sort(rng.integers(0, 2**40, 100_000))
    y = rng.normal(size=100_000)
    assert list(_core.decimate_minmax(steps, y, 300)) == list(
        _core.decimate_minmax(steps.astype(float), y, 300))
    check(steps.astype(float).tolist(), y.tolist(), 300)


def test_few_points_come_back_raw() -> None:
    assert list(_core.decimate_minmax(np.zeros(0), np.zeros(0), 10)) == []
    assert list(_core.decimate_minmax(np.arange(40.0), np.arange(40.0), 10)) == list(range(40))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.floats(allow_nan=True, allow_infinity=False,
                                                           width=64)), min_size=1, max_size=300),
       st.integers(1, 20))
def test_matches_brute_force(points: list[tuple[int, float]], pixels: int) -> None:
    x = [float(a) for a, _ in points]
    y = [b for _, b in points]
    check(x, y, pixels)


def test_bad_arguments_name_the_problem() -> None:
    with pytest.raises(ExpmanValueError, match="x has 3 points but y has 2"):
        _core.decimate_minmax(np.zeros(3), np.zeros(2), 10)
    with pytest.raises(ExpmanValueError, match="pixels must be 1..1000000, got 0"):
        _core.decimate_minmax(np.zeros(3), np.zeros(3), 0)


def test_window_zooms_to_raw_points() -> None:
    from expman.decimate import window
    x = np.arange(1_000_000, dtype=float)
    y = np.sin(x / 1000)
    y[500_123] = 50.0
    full = window(x, y, 800)
    assert not full.raw and full.total == 1_000_000 and 50.0 in full.y
    zoomed = window(x, y, 800, 500_000, 500_500)
    assert zoomed.raw and zoomed.total == 503      # the range plus one point either side
    assert zoomed.x[0] == 499_999 and zoomed.x[-1] == 500_501
    assert 50.0 in zoomed.y
