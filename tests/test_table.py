"""expman.table.runs: one row per run, checked against open_run."""

from __future__ import annotations

import math

import pytest

from conftest import need

import expman
from expman.errors import ExpmanValueError
from expman.table import runs

pd = need("pandas")


@pytest.fixture
def sweep(make_run):
    """Three finished runs of a small sweep, one failed run, one run in another experiment."""
    made = []
    for i, lr in enumerate([0.1, 0.01, 0.001]):
        exp = make_run("sweep", f"r{i}")
        exp.log_params({"lr": lr, "optim": {"name": "sgd", "momentum": 0.9}, "seed": i})
        for step in range(5):
            exp.log_metrics({"loss": 1.0 / (step + 1 + i), "acc": step * 0.1}, step=step)
        exp.log_metrics({"loss": math.nan}, step=5)          # NaN is ignored by min/max
        exp.close()
        made.append(exp)
    bad = make_run("sweep", "r9")
    bad.log_params({"lr": "auto", "seed": 9})                  # lr mixes types: JSON text
    bad.log_metrics({"loss": 3.0}, step=0)
    bad.close(status="FAILED")
    other = make_run("other", "o1")
    other.log_metrics({"reward": 1.0})
    other.close()
    return made


def test_one_row_per_run_with_params_and_summaries(base, sweep):
    df = runs(base, experiment="sweep")
    assert sorted(df["id"]) == ["sweep/r0", "sweep/r1", "sweep/r2", "sweep/r9"]
    for row in df.to_dict("records"):
        run = expman.open_run(row["path"])
        assert row["status"] == run.status
        assert row["start_time"] == run.meta["start_time"]
        assert row["params.seed"] == run.params["seed"]
        for name, series in run.metrics.items():
            s = series.summary()
            assert row[f"metrics.{name}.min"] == s.min
            assert row[f"metrics.{name}.max"] == s.max
            last = row[f"metrics.{name}.last"]
            assert (math.isnan(last) and math.isnan(s.last_value)) or last == s.last_value
        assert row["points"] == run.metrics.points
    r0 = df.set_index("id").loc["sweep/r0"]
    assert r0["params.optim.name"] == "sgd" and r0["params.optim.momentum"] == 0.9
    assert r0["metrics.loss.min"] == 1 / 5 and r0["metrics.loss.max"] == 1.0
    assert math.isnan(r0["metrics.loss.last"])
    # lr is a number in three runs and "auto" in one: one type per column (JSON text)
    assert sorted(df["params.lr"]) == ["0.001", "0.01", "0.1", "auto"]


def test_filters_match_list_runs(base, sweep):
    assert list(runs(base, status="FAILED")["id"]) == ["sweep/r9"]
    assert sorted(runs(base, status=["FINISHED"])["id"]) == [
        "other/o1", "sweep/r0", "sweep/r1", "sweep/r2"]
    assert [r.id for r in expman.list_runs(base)] == list(runs(base)["id"])
    empty = runs(base, experiment="nothing")
    assert len(empty) == 0 and "status" in empty.columns
    from expman.runmeta import set_tags
    set_tags(base / "sweep" / "r1", add=["best"])
    assert list(runs(base, tags="best")["id"]) == ["sweep/r1"]
    assert [r.id for r in expman.list_runs(base, tags=["best"])] == ["sweep/r1"]
    assert len(runs(base, limit=2)) == 2


def test_numeric_params_stay_numeric(base, sweep):
    df = runs(base, status="FINISHED", experiment="sweep")
    assert df["params.lr"].dtype.kind == "f"
    assert df["params.seed"].dtype.kind == "i"
    best = df.loc[df["metrics.loss.min"].idxmin()]
    assert best["params.lr"] == 0.001          # r2: loss 1/(step+3) reaches 1/7


def test_polars_and_arrow(base, sweep):
    pl = need("polars")
    pa = need("pyarrow")
    p = runs(base, experiment="sweep", as_="polars")
    a = runs(base, experiment="sweep", as_="arrow")
    assert isinstance(p, pl.DataFrame) and isinstance(a, pa.Table)
    assert p.height == a.num_rows == 4
    assert p.columns == a.column_names
    assert a.schema.field("metrics.acc.max").type == pa.float64()
    assert sorted(p["run_name"].to_list()) == ["r0", "r1", "r2", "r9"]


def test_env_base_dir_and_bad_format(base, sweep, monkeypatch):
    monkeypatch.setenv("EXPMAN_DIR", str(base))
    assert len(runs()) == 5
    with pytest.raises(ExpmanValueError, match="as_ must be one of.*'excel'"):
        runs(base, as_="excel")


def test_uses_the_summary_when_fresh_and_decodes_when_it_is_not(base, sweep, monkeypatch):
    """summary.json (kept current by the writer) saves decoding; a damaged or stale
    one falls back to decoding, never to empty or wrong columns."""
    from expman import _core
    decodes = []
    real = _core.decode_metrics
    monkeypatch.setattr(_core, "decode_metrics", lambda *a, **k: decodes.append(1) or real(*a, **k))
    df = runs(base, experiment="sweep")
    assert decodes == [] and len(df) == 4                # every run read from its summary
    truth = df.set_index("id").loc["sweep/r9", "metrics.loss.last"]
    (base / "sweep" / "r9" / "summary.json").write_bytes(b"{damaged")
    df = runs(base, experiment="sweep")
    assert len(decodes) >= 1                             # that run was decoded
    assert df.set_index("id").loc["sweep/r9", "metrics.loss.last"] == truth


def test_flatten_params_one_rule_lists_become_json_text():
    from expman.readmodel import flatten_params
    flat = flatten_params({"optim": {"lr": 1e-3, "betas": [0.9, 0.999]}, "empty": {},
                           "seed": 0, "name": None, "pair": (1, 2)})
    assert flat == {"empty": "{}", "name": None, "optim.betas": "[0.9,0.999]",
                    "optim.lr": 1e-3, "pair": "[1,2]", "seed": 0}
    assert all(hash(v) is not None for v in flat.values())
