"""Experiment.log_table: versions stored append-only as columnar JSON lines, read back
with run.tables, by pandas and by DuckDB, and listed by `expman show` (issue 22.2)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from conftest import need

import expman
from expman import tables
from expman.cli import main as cli_main


def test_versions_read_back_exactly(make_run):
    pd = need("pandas")
    exp = make_run("t", "r")
    exp.log_metrics({"loss": 1.0}, step=7)
    exp.log_table("eval/samples", [["hi", 0.5, np.float32(2.5), None],
                                   ["yo", float("nan"), np.int64(3), [1, 2]]],
                  columns=["prompt", "reward", "x", "extra"], step=3)
    exp.log_table("eval/samples", pd.DataFrame({"prompt": ["a"], "reward": [1.0],
                                                "x": [4], "extra": [True]}))
    exp.log_table("dicts", [{"a": 1, "b": "x"}, {"b": "y", "c": 2.5}], step=1)
    exp.log_table("empty", [], columns=["a"], step=2)
    exp.close()
    run = expman.open_run(exp.run_dir)
    first, second = run.tables["eval/samples"]
    assert (first.step, first.columns) == (3, ["prompt", "reward", "x", "extra"])
    assert first.rows == [["hi", 0.5, 2.5, None], ["yo", "NaN", 3, [1, 2]]]
    assert (second.step, second.rows) == (7, [["a", 1.0, 4, True]])   # step=None: the current
    assert isinstance(first.time, float) and len(first) == 2
    (d,) = run.tables["dicts"]
    assert (d.columns, d.rows) == (["a", "b", "c"], [[1, "x", None], [None, "y", 2.5]])
    assert len(run.tables["empty"][0]) == 0 and run.tables["empty"][0].rows == []
    df = second.to_pandas()
    assert list(df.columns) == ["prompt", "reward", "x", "extra"] and df["x"].tolist() == [4]
    # the file: the events' byte ranges cover it, every line an object pandas reads
    path = exp.run_dir / "artifacts" / "tables" / "eval" / "samples.jsonl"
    stored = pd.read_json(path, lines=True).explode(["prompt", "reward", "x", "extra"])
    assert stored["_step"].tolist() == [3, 3, 7] and stored["prompt"].tolist() == ["hi", "yo", "a"]
    events = [e for e in run.events if e.get("kind") == "table"]
    assert [e["rows"] for e in events] == [2, 1, 2, 0]
    assert events[1]["offset"] == events[0]["length"]


def test_duckdb_reads_the_file_and_big_versions_are_split_into_lines(make_run):
    duckdb = need("duckdb")
    exp = make_run("t", "r")
    n = 25_000
    exp.log_table("gen", [(i, f"prompt {i}", "completion", i / 4) for i in range(n)],
                  columns=["i", "prompt", "completion", "reward"], step=5)
    exp.close()
    path = exp.run_dir / "artifacts" / "tables" / "gen.jsonl"
    assert path.read_bytes().count(b"\n") == 3            # 10,000 rows a line
    got = duckdb.sql(f"SELECT count(*), sum(r), min(s) FROM (SELECT unnest(reward) AS r, "
                     f"_step AS s FROM read_json_auto('{path.as_posix()}'))").fetchall()
    assert got == [(n, sum(i / 4 for i in range(n)), 5)]
    (v,) = expman.open_run(exp.run_dir).tables["gen"]
    assert len(v) == n and v.rows[12_345] == [12_345, "prompt 12345", "completion", 12_345 / 4]


@pytest.mark.parametrize("args, error", [
    (([[1, 2]],), "need columns"),
    (([[1, 2]], ["a"]), "row 0 must be a sequence of 1"),
    (([[1], "x"], ["a"]), "row 1"),
    (([[1]], ["_step"]), "'_step'"),
    (([[1, 2]], ["a", "a"]), "repeat"),
    (([[1]], [""]), "non-empty"),
    (("abc", ["a"]), "must be a DataFrame"),
    (({"a": [1]}, None), "must be a DataFrame"),
])
def test_bad_tables_are_refused_naming_the_problem(make_run, args, error):
    exp = make_run("t", "r")
    with pytest.raises((expman.ExpmanValueError, expman.ExpmanTypeError), match=error):
        exp.log_table("bad", *args)
    with pytest.raises(expman.ExpmanValueError, match="name"):
        exp.log_table("", [[1]], ["a"])
    exp.close()
    assert not (exp.run_dir / "artifacts" / "tables").exists()


def test_a_damaged_or_hostile_table_skips_that_version_only(make_run, tmp_path):
    exp = make_run("t", "r")
    exp.log_table("a", [[1]], ["x"], step=0)
    exp.log_table("a", [[2]], ["x"], step=1)
    exp.log_table("b", [[3]], ["x"], step=0)
    exp.close()
    path = exp.run_dir / "artifacts" / "tables" / "a.jsonl"
    data = path.read_bytes()
    path.write_bytes(data[:-3])                      # the second version cut short
    outside = tmp_path / "secret.jsonl"
    outside.write_text('{"_step":0,"x":[42]}\n')
    b = exp.run_dir / "artifacts" / "tables" / "b.jsonl"
    b.unlink()
    os.symlink(outside, b)                           # never followed
    with open(exp.run_dir / "events.jsonl", "a") as f:
        for bad in ({"kind": "table", "name": "c", "step": 0, "columns": ["x"], "rows": 1,
                     "path": "../../../secret.jsonl", "offset": 0, "length": 21},
                    {"kind": "table", "name": "a", "step": 0, "columns": "x", "rows": 1,
                     "path": "artifacts/tables/a.jsonl", "offset": 0, "length": 5}):
            f.write(json.dumps(bad) + "\n")
    got = expman.open_run(exp.run_dir).tables
    assert list(got) == ["a"] and [v.rows for v in got["a"]] == [[[1]]]


def test_show_lists_tables_media_and_versions(make_run, capsys, tmp_path):
    exp = make_run("t", "r")
    model = tmp_path / "model.pt"
    for content in (b"one", b"two"):
        model.write_bytes(content)
        exp.save_artifact(model)
    for step in range(3):
        exp.log_histogram("w", np.arange(10.0), step=step)
    exp.log_image("img", np.zeros((2, 2), dtype=np.uint8), step=0)
    exp.log_table("samples", [["a", 1]], ["p", "r"], step=0)
    exp.log_table("samples", [["b", 2], ["c", 3]], ["p", "r"], step=1)
    exp.close()
    assert cli_main(["show", str(exp.run_dir)]) == 0
    text = capsys.readouterr().out
    assert "3 histograms (1 tag: w)" in text and "1 image (1 tag: img)" in text
    assert "table samples: 2 versions, 3 rows" in text
    assert "model.pt (v2)" in text and text.count("model.pt") == 2
    assert cli_main(["show", str(exp.run_dir), "--json"]) == 0
    media = json.loads(capsys.readouterr().out)["media"]
    assert media == {"histograms": {"w": 3}, "images": {"img": 1},
                     "tables": {"samples": {"versions": 2, "rows": 3}}}


def test_encode_keeps_non_finite_and_odd_values_readable():
    line = tables.encode_version(0, ["v"], [[math.inf, -math.inf, np.float64(1.5), object]], 4)
    obj = json.loads(line)
    assert obj["v"][:3] == ["Infinity", "-Infinity", 1.5] and obj["v"][3].startswith("<class")
