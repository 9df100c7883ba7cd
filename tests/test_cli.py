"""The ``expman`` command line, always through a real subprocess, on runs the library made."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import expman
from expman import _core
from expman._fsutil import atomic_write_json, read_json
from expman.cli import COMMANDS, build_parser
from expman.layout import ALERTS_FILE

from conftest import make_crashed_run, run_python, need

ROOT = Path(__file__).resolve().parent.parent
SPECIAL = [0.1, -0.0, 1e-300, 5e-324, 1.7976931348623157e308, math.nan, math.inf, -math.inf, 2.0]


def cli(*args: object, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60,
        code: str | None = None) -> subprocess.CompletedProcess:
    """``python -m expman ARGS`` (or ``python -c CODE ARGS``) in a fresh interpreter."""
    full_env = dict(os.environ)
    full_env.pop("EXPMAN_DIR", None)
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(expman.__file__).parent.parent), full_env.get("PYTHONPATH", "")])
    full_env.update(env or {})
    head = ["-c", textwrap.dedent(code)] if code else ["-m", "expman"]
    return subprocess.run([sys.executable, *head, *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


def one_line_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("expman: error:"), err
    for w in words:
        assert w in err, err
    return err


@pytest.fixture
def runs(base: Path, make_run):
    """Three runs: two finished (different lr), one failed; with messages and an artifact."""
    made = {}
    for name, lr, status in [("r1", 0.1, "FINISHED"), ("r2", 0.01, "FINISHED"), ("r3", 0.1, "FAILED")]:
        exp = make_run("mnist", name)
        exp.log_params({"lr": lr, "batch_size": 64, "opt": {"name": "sgd"}})
        exp.info(f"starting {name}")
        for step in range(5):
            exp.log_metrics({"loss": 1.0 / (step + 1) + lr, "acc": step / 10}, step=step)
        weights = base.parent / f"{name}.bin"
        weights.write_bytes(b"w" * 100)
        exp.save_artifact(weights, "model.bin")
        exp.warn("last words")
        exp.close(status=status)
        made[name] = exp.run_dir
        time.sleep(0.01)                 # distinct start times: r3 is the newest
    return made


# ---- help and docs ------------------------------------------------------------------------------


def test_every_command_has_help(tmp_path):
    top = ok(cli("--help", cwd=tmp_path))
    for cmd in COMMANDS:
        assert cmd in top
        text = ok(cli(cmd, "--help", cwd=tmp_path))
        assert f"usage: expman {cmd}" in text and "example:" in text


def test_every_command_is_documented():
    """sqlite-utils' test_docs: every subcommand appears in the CLI docs (and README)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS)
    docs = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    sections = {"docs/cli.md": docs}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- cli -->(.*?)<!-- /cli -->", readme, re.S)
    if m:
        sections["README.md"] = m.group(1)
    elif re.search(r"^#+ .*command line", readme, re.I | re.M):
        sections["README.md"] = readme
    for where, text in sections.items():
        for cmd in COMMANDS:
            assert re.search(rf"^#+ .*`expman {cmd}\b", text, re.M) or \
                re.search(rf"expman {cmd}\b", text), f"{cmd} is not documented in {where}"
    for cmd in COMMANDS:
        assert re.search(rf"^## `expman {cmd}", docs, re.M), f"docs/cli.md has no section for {cmd}"
        assert re.search(rf"^\$ expman {cmd}\b", docs, re.M), f"docs/cli.md has no example of {cmd}"


def test_every_command_is_registered_through_common_command():
    """One way to register a command (issue 19): only ``_common.command`` calls
    ``subparsers.add_parser(NAME, ...)``; a command module calls ``command()``."""
    import ast
    cli_dir = ROOT / "expman" / "cli"
    by_hand = []
    for path in sorted(cli_dir.glob("*.py")):
        if path.name == "_common.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "add_parser" and node.args
                    and isinstance(node.args[0], ast.Constant)):
                by_hand.append(f"{path.name}:{node.lineno}")
    assert not by_hand, by_hand


def test_no_command_prints_help(tmp_path):
    proc = cli(cwd=tmp_path)
    assert proc.returncode == 2 and "COMMAND" in proc.stdout


# ---- demo ---------------------------------------------------------------------------------------


def test_demo_into_default_experiments_dir(tmp_path):
    out = ok(cli("demo", "--steps", 40, "--delay", 0, cwd=tmp_path))
    (run_dir,) = (tmp_path / "experiments" / "demo").iterdir()
    assert str(run_dir.resolve()) in out or str(run_dir) in out
    assert "expman show demo/" in out and "expman tail" in out and "params" in out
    run = expman.open_run(run_dir)
    assert run.status == "FINISHED" and run.params["steps"] == 40
    assert len(run.metrics["train_loss"]) == 40 and "val_acc" in run.metrics
    val = run.metrics["val_loss"].values
    assert val[-1] < val[0]                                  # it learns
    assert [a["name"] for a in run.artifacts] == ["model.json"]
    assert (run_dir / "artifacts" / "model.json").is_file()
    assert any("Starting training loop" in m["msg"] for m in run.messages)
    # the commands it suggests work
    ok(cli("show", "demo/latest", cwd=tmp_path))


def test_demo_base_dir_and_env_var(tmp_path):
    ok(cli("demo", "--steps", 3, "--delay", 0, "--base-dir", tmp_path / "a", cwd=tmp_path))
    ok(cli("demo", "--steps", 3, "--delay", 0, cwd=tmp_path, env={"EXPMAN_DIR": str(tmp_path / "b")}))
    assert len(list((tmp_path / "a" / "demo").iterdir())) == 1
    assert len(list((tmp_path / "b" / "demo").iterdir())) == 1
    assert not (tmp_path / "experiments").exists()
    one_line_error(cli("demo", "--steps", 0, cwd=tmp_path), "--steps")


# ---- list ---------------------------------------------------------------------------------------


def test_list_table_and_json(base, runs, make_run):
    live = make_run("other", "live")
    live.log_metrics({"x": 1.5}, step=0)
    live.flush()
    text = ok(cli("list", base, cwd=base.parent))
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["RUN", "STATUS", "STARTED", "DURATION"]
    assert [ln.split()[0] for ln in lines[1:]] == ["other/live", "mnist/r3", "mnist/r2", "mnist/r1"]
    assert "FAILED" in lines[2] and "RUNNING" in lines[1]
    assert "loss=0.3" in lines[2] and "acc=0.4" in lines[2]     # last values
    data = json.loads(ok(cli("list", "--json", cwd=base.parent, env={"EXPMAN_DIR": str(base)})))
    assert [d["id"] for d in data] == ["other/live", "mnist/r3", "mnist/r2", "mnist/r1"]
    r1 = data[-1]
    assert r1["status"] == "FINISHED" and r1["params"]["lr"] == 0.1
    assert r1["last_metrics"] == {"loss": 0.2 + 0.1, "acc": 0.4}
    assert r1["path"] == str(runs["r1"]) and r1["duration"] >= 0
    only = json.loads(ok(cli("list", base, "-e", "mnist", "--status", "failed", "--json", cwd=base)))
    assert [d["run_name"] for d in only] == ["r3"]
    live.close()


def test_list_crashed_and_empty(base, tmp_path):
    make_crashed_run(base, tmp_path)
    out = ok(cli("list", "--status", "CRASHED", "--base-dir", base, cwd=tmp_path))
    assert "exp/dead" in out and "CRASHED" in out
    assert "no runs matching" in ok(cli("list", base, "--status", "KILLED", cwd=tmp_path))
    one_line_error(cli("list", tmp_path / "missing", cwd=tmp_path), "no base dir")


# ---- show ---------------------------------------------------------------------------------------


def test_show_text(base, runs):
    out = ok(cli("show", "mnist/r1", "--base-dir", base, cwd=base.parent))
    assert out.splitlines()[0] == "mnist/r1  FINISHED"
    assert re.search(r"^\s+lr\s+0\.1$", out, re.M)
    assert re.search(r"^\s+opt\.name\s+sgd$", out, re.M)
    # floats to 6 digits by default; --digits full: the shortest exact form (1/5 + 0.1 is not 0.3)
    assert re.search(r"^\s+loss\s+5\s+0\.3\s+1\.1\s+0\.3\s+4$", out, re.M), out
    exact = ok(cli("show", "mnist/r1", "--digits", "full", "--base-dir", base, cwd=base.parent))
    assert re.search(r"^\s+loss\s+5\s+0\.30000000000000004\s+1\.1\s+0\.30000000000000004\s+4$",
                     exact, re.M), exact
    assert "starting r1" in out and "last words" in out and "model.bin" in out
    assert "ok: " in out and "5 points" not in out            # 10 points in total
    assert "10 points" in out


def test_show_json_stats_and_nonfinite(base, make_run):
    exp = make_run("e", "special")
    for i, v in enumerate(SPECIAL):
        exp.log_metrics({"v": v}, step=i)
    exp.close()
    info = json.loads(ok(cli("show", exp.run_dir, "--json", cwd=base)))
    v = info["metrics"]["v"]
    assert (v["count"], v["nan_count"], v["min"], v["max"], v["last_value"]) == (9, 1, "-Infinity", "Infinity", 2.0)
    assert info["status"] == "FINISHED" and info["integrity"]["points"] == 9
    assert info["path"] == str(exp.run_dir.resolve())


def test_show_failed_run_names_the_exception(base, tmp_path):
    proc = run_python(f"""
        import expman
        with expman.Experiment("e", "boom", base_dir={str(base)!r}, capture_env=False):
            raise ZeroDivisionError("bad step")
    """, cwd=tmp_path)
    assert proc.returncode != 0
    out = ok(cli("show", "e/boom", "--base-dir", base, cwd=tmp_path))
    assert "FAILED" in out and "ZeroDivisionError: bad step" in out


def test_run_names_resolve(base, runs):
    cwd = base.parent
    for spec in ["mnist/r2", str(runs["r2"]), "mnist/r2/", "r2"]:
        assert json.loads(ok(cli("show", spec, "--json", "--base-dir", base, cwd=cwd)))["run_name"] == "r2"
    for spec in ["mnist/latest", "latest"]:
        assert json.loads(ok(cli("show", spec, "--json", "--base-dir", base, cwd=cwd)))["run_name"] == "r3"
    one_line_error(cli("show", "mnist/r", "--base-dir", base, cwd=cwd), "ambiguous")
    one_line_error(cli("show", "mnist", "--base-dir", base, cwd=cwd), "is an experiment")
    one_line_error(cli("show", "nope/nothing", "--base-dir", base, cwd=cwd), "no run 'nope/nothing'")


# ---- export -------------------------------------------------------------------------------------


@pytest.fixture
def special_run(make_run):
    exp = make_run("e", "special")
    for i, v in enumerate(SPECIAL):
        exp.log_metrics({"v": v, "weird, \"name\"": float(i)}, step=i)
    exp.log_metrics({"v": 7.0}, step=1)                     # a duplicate step
    exp.close()
    return exp.run_dir


def same(a: float, b: float) -> bool:
    return struct.pack("<d", a) == struct.pack("<d", b)


def test_export_csv_round_trips_bits(special_run, tmp_path):
    out = ok(cli("export", special_run, "--format", "csv", cwd=tmp_path))
    rows = list(csv.DictReader(io.StringIO(out)))
    v = [r for r in rows if r["metric"] == "v"]
    assert [int(r["step"]) for r in v] == list(range(9)) + [1]
    assert all(same(float(r["value"]), x) for r, x in zip(v, SPECIAL + [7.0]))
    assert {r["metric"] for r in rows} == {"v", 'weird, "name"'}
    s = expman.open_run(special_run).metrics["v"]
    assert [float(r["time"]) for r in v] == s.times.tolist()
    assert {r["value"] for r in v} >= {"nan", "inf", "-inf"}      # the documented spelling


def test_export_jsonl_to_file_round_trips(special_run, tmp_path):
    dest = tmp_path / "out.jsonl"
    proc = cli("export", special_run, "-o", dest, cwd=tmp_path)     # format from the extension
    ok(proc)
    assert proc.stdout == "" and "wrote 19 points" in proc.stderr
    rows = [json.loads(line) for line in dest.read_text().splitlines()]
    v = [r for r in rows if r["metric"] == "v"]
    assert all(same(float(r["value"]), x) for r, x in zip(v, SPECIAL + [7.0]))
    assert {r["value"] for r in v if isinstance(r["value"], str)} == {"NaN", "Infinity", "-Infinity"}
    assert not list(tmp_path.glob(".*.tmp"))


def test_export_duplicates_and_metric_filter(special_run, tmp_path):
    out = ok(cli("export", special_run, "--duplicates", "last", "--metric", "v", cwd=tmp_path))
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [int(r["step"]) for r in rows] == list(range(9))
    assert float(rows[1]["value"]) == 7.0
    one_line_error(cli("export", special_run, "--metric", "nope", cwd=tmp_path), "no metric 'nope'")
    bad = cli("export", special_run, "--format", "xml", cwd=tmp_path)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    gone = cli("export", special_run, "--reduce", "last", cwd=tmp_path)   # the pre-release alias
    assert gone.returncode == 2 and "--reduce" in gone.stderr


def test_export_parquet(special_run, tmp_path):
    pq = need("pyarrow.parquet")
    dest = tmp_path / "out.parquet"
    ok(cli("export", special_run, "--format", "parquet", "-o", dest, cwd=tmp_path))
    t = pq.read_table(dest)
    v = [x for m, x in zip(t.column("metric").to_pylist(), t.column("value").to_pylist()) if m == "v"]
    assert all(same(a, b) for a, b in zip(v, SPECIAL + [7.0]))
    assert json.loads(t.schema.metadata[b"expman.run"])["id"] == "e/special"


def test_export_parquet_without_pyarrow_says_what_to_install(special_run, tmp_path):
    proc = cli("export", special_run, "--format", "parquet", "-o", tmp_path / "x.parquet",
               cwd=tmp_path, code="""
                   import sys
                   sys.modules["pyarrow"] = None           # as if not installed
                   sys.argv[0] = "expman"
                   from expman.cli import main
                   sys.exit(main(sys.argv[1:]))
               """)
    one_line_error(proc, "pyarrow", "pip install 'expman-logger[arrow]'")
    assert not (tmp_path / "x.parquet").exists()


# ---- tail ---------------------------------------------------------------------------------------


def test_tail_last_lines(base, runs):
    out = ok(cli("tail", "mnist/r1", "-n", 4, "--base-dir", base, cwd=base.parent))
    lines = out.splitlines()
    assert len(lines) == 4
    assert "artifact model.bin" in lines[1] and "last words" in lines[2] and "FINISHED" in lines[3]
    assert re.search(r"step 4\s+loss=0\.3\s+acc=0\.4", lines[0]), lines[0]     # 6 digits
    js = [json.loads(x) for x in ok(cli("tail", runs["r1"], "--json", "-n", 100, cwd=base)).splitlines()]
    assert [r["step"] for r in js if r["kind"] == "metrics"] == [0, 1, 2, 3, 4]
    assert js[-1] == {**js[-1], "kind": "status", "status": "FINISHED"}


def test_tail_follow_sees_a_live_run_to_its_end(base, tmp_path):
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time, expman
        with expman.Experiment("live", "run", base_dir={str(base)!r}, capture_env=False,
                               system_metrics=False, flush_interval=0.05) as exp:
            for step in range(3):
                exp.log_metrics({{"loss": 1.0 / (step + 1)}}, step=step)
            exp.flush()
            time.sleep(1.0)
            exp.info("halfway")
            for step in range(3, 6):
                exp.log_metrics({{"loss": 1.0 / (step + 1)}}, step=step)
                time.sleep(0.1)
    """)], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(Path(expman.__file__).parent.parent)})
    try:
        deadline = time.monotonic() + 30
        while not (base / "live" / "run" / "run.json").exists():
            assert time.monotonic() < deadline and writer.poll() is None
            time.sleep(0.01)
        proc = cli("tail", "live/run", "--follow", "--interval", 0.05, "-n", 1000, "--base-dir", base,
                   cwd=tmp_path, timeout=60)
    finally:
        writer.wait(timeout=60)
    out = ok(proc)
    steps = [int(s) for s in re.findall(r"step (\d+)", out)]
    assert steps == [0, 1, 2, 3, 4, 5], out
    assert "halfway" in out and out.rstrip().endswith("FINISHED")


def test_tail_follow_stops_on_a_crashed_run(base, tmp_path):
    make_crashed_run(base, tmp_path)
    tail = cli("tail", "exp/dead", "-f", "--base-dir", base, cwd=tmp_path, timeout=30)
    assert tail.returncode == 0 and "loss=0.5" in tail.stdout and "CRASHED" in tail.stderr


# ---- compare ------------------------------------------------------------------------------------


def test_compare_text_and_json(base, runs):
    cwd = base.parent
    out = ok(cli("compare", "mnist/r1", "mnist/r2", "--base-dir", base, cwd=cwd))
    assert re.search(r"^lr\s+0\.1\s+0\.01$", out, re.M), out
    assert not re.search(r"^batch_size\s", out, re.M) and "batch_size=64" in out
    assert re.search(r"^loss\s+0\.3\s+0\.21$", out, re.M), out
    exact = ok(cli("compare", "mnist/r1", "mnist/r2", "--digits", "full", "--base-dir", base, cwd=cwd))
    assert re.search(r"^loss\s+0\.30000000000000004\s+0\.21000000000000002$", exact, re.M), exact
    full = ok(cli("compare", "mnist/r1", "mnist/r2", "--all", "--base-dir", base, cwd=cwd))
    assert re.search(r"^batch_size\s+64\s+64$", full, re.M)
    data = json.loads(ok(cli("compare", "r1", "r2", "r3", "--json", "--base-dir", base, cwd=cwd)))
    assert data["params_differ"] == {"lr": [0.1, 0.01, 0.1]}
    assert data["params_same"] == {"batch_size": 64, "opt.name": "sgd"}
    assert data["final_metrics"]["acc"] == [0.4, 0.4, 0.4]
    assert [r["status"] for r in data["runs"]] == ["FINISHED", "FINISHED", "FAILED"]
    one_line_error(cli("compare", "mnist/r1", "--base-dir", base, cwd=cwd), "at least two")


# ---- verify -------------------------------------------------------------------------------------


def _three_frames(make_run, name: str) -> Path:
    exp = make_run("v", name, flush_interval=60)
    for i in range(3):
        exp.log_metrics({"x": float(i)}, step=i)
        exp.flush()
    exp.close()
    return exp.run_dir


def test_verify_clean_run(base, make_run):
    run_dir = _three_frames(make_run, "clean")
    out = ok(cli("verify", run_dir, cwd=base))
    assert "3 frames" in out and out.rstrip().endswith("OK")
    data = json.loads(ok(cli("verify", run_dir, "--json", cwd=base)))
    assert data["ok"] and data["metrics"]["frames"] == 3 and data["metrics"]["torn_bytes"] == 0


def test_verify_and_repair_torn_tail(base, tmp_path):
    run_dir = make_crashed_run(base, tmp_path)       # a torn tail needs a writer that died
    mfile, efile = run_dir / "metrics.bin", run_dir / "events.jsonl"
    good_m, good_e = mfile.read_bytes(), efile.read_bytes()
    length = struct.pack("<I", 100)
    torn = length + struct.pack("<I", _core.crc32(length)) + b"\x02\x01" * 10   # cut mid-payload
    mfile.write_bytes(good_m + torn)
    efile.write_bytes(good_e + b'{"kind": "message", "ms')
    proc = cli("verify", run_dir, cwd=base)
    assert proc.returncode == 1 and "torn tail" in proc.stdout and "DAMAGED" in proc.stdout
    assert mfile.read_bytes() == good_m + torn                 # verify alone changes nothing
    fixed = ok(cli("verify", run_dir, "--repair", cwd=base))
    assert "repaired" in fixed and fixed.rstrip().endswith("OK")
    assert mfile.read_bytes() == good_m and efile.read_bytes() == good_e
    assert (run_dir / "metrics.bin.torn").read_bytes() == torn
    assert expman.open_run(run_dir).integrity["torn_bytes"] == 0
    ok(cli("verify", run_dir, cwd=base))


def test_a_bad_last_frame_of_a_finished_run_is_damage_not_a_torn_tail(base, make_run):
    """Issue 26 item 2: one bit flipped in the last frame of a FINISHED run is
    corruption: corrupt_bytes and a warning from open_run, the listing decodes
    instead of trusting summary.json, verify exits non-zero and --repair cuts
    nothing."""
    run_dir = _three_frames(make_run, "rot")
    mfile = run_dir / "metrics.bin"
    data = bytearray(mfile.read_bytes())
    data[-6] ^= 0x04                                           # inside the last payload
    mfile.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match="closed cleanly"):
        run = expman.open_run(run_dir)
    assert run.status == "FINISHED" and run.integrity["torn_bytes"] == 0
    assert run.integrity["corrupt_bytes"] > 0 and run.metrics.points == 2
    (line,) = expman.list_runs(base, experiment="v")
    assert line.points == 2                                    # summary.json said 3
    proc = cli("verify", run_dir, "--repair", cwd=base)
    assert proc.returncode == 1 and "closed cleanly" in proc.stdout
    assert mfile.read_bytes() == bytes(data) and not (run_dir / "metrics.bin.torn").exists()
    report = json.loads(cli("verify", run_dir, "--json", cwd=base).stdout)
    assert report["metrics"]["torn_bytes"] == 0 and report["metrics"]["corrupt_bytes"] > 0


def test_verify_corruption_is_reported_not_cut(base, make_run):
    run_dir = _three_frames(make_run, "bad")
    mfile = run_dir / "metrics.bin"
    data = bytearray(mfile.read_bytes())
    data[_core.HEADER_SIZE + 9] ^= 0xFF                       # the first frame's payload
    mfile.write_bytes(bytes(data))
    proc = cli("verify", run_dir, "--repair", cwd=base)
    assert proc.returncode == 1 and "corruption" in proc.stdout
    assert mfile.read_bytes() == bytes(data)
    report = json.loads(cli("verify", run_dir, "--json", cwd=base).stdout)
    assert report["metrics"]["corrupt_at"] == [_core.HEADER_SIZE] and not report["ok"]
    # show reads what survives, and says so
    out = cli("show", run_dir, cwd=base)
    assert out.returncode == 0 and "DAMAGED" in out.stdout and "Traceback" not in out.stderr


def test_verify_refuses_to_repair_a_live_run(base, make_run):
    exp = make_run("v", "live")
    exp.log_metrics({"x": 1.0}, step=0)
    exp.flush()
    with open(exp.run_dir / "metrics.bin", "ab") as f:         # looks like a frame being written
        f.write(b"\x10\x00")
    assert "RUNNING" in ok(cli("verify", exp.run_dir, cwd=base))
    one_line_error(cli("verify", exp.run_dir, "--repair", cwd=base), "RUNNING")


# ---- du and clean -------------------------------------------------------------------------------


def test_du(base, runs):
    data = json.loads(ok(cli("du", base, "--json", "--runs", cwd=base.parent)))
    expected = sum(f.stat().st_size for f in base.rglob("*") if f.is_file())
    assert data["bytes"] == expected
    (mnist,) = data["experiments"]
    assert mnist["runs"] == 3 and mnist["artifacts_bytes"] == 300
    assert mnist["metrics_bytes"] == sum((p / "metrics.bin").stat().st_size for p in runs.values())
    out = ok(cli("du", "--base-dir", base, cwd=base.parent))
    assert re.search(r"^mnist\s+3\s", out, re.M) and re.search(r"^total\s+3\s", out, re.M)
    assert "mnist/r1" in ok(cli("du", base, "--runs", cwd=base.parent))


def test_clean_dry_run_then_yes(base, runs):
    cwd = base.parent
    dry = ok(cli("clean", base, "--status", "FAILED", cwd=cwd))
    assert "would remove 1 run " in dry and "mnist/r3" in dry and "dry run" in dry
    assert runs["r3"].exists()
    done = ok(cli("clean", base, "--status", "failed", "--yes", cwd=cwd))
    assert "removed 1 run " in done
    assert not runs["r3"].exists() and runs["r1"].exists() and runs["r2"].exists()
    one_line_error(cli("clean", base, cwd=cwd), "--status")


def test_clean_json(base, runs, capsys):
    from expman.cli import main
    assert main(["clean", str(base), "--status", "FAILED", "--json"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert dry["dry_run"] and [(r["id"], r["removed"]) for r in dry["runs"]] == [("mnist/r3", False)]
    assert dry["bytes"] == dry["runs"][0]["bytes"] > 0 and runs["r3"].exists()
    assert main(["clean", str(base), "--status", "FAILED", "--yes", "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert not done["dry_run"] and done["runs"][0]["removed"] and not runs["r3"].exists()


def test_clean_keep_and_older_than(base, runs, make_run):
    live = make_run("mnist", "live")                            # newest, and running: never removed
    cwd = base.parent
    meta = read_json(runs["r1"] / "run.json")
    meta["start_time"] -= 10 * 86400
    atomic_write_json(runs["r1"] / "run.json", meta)
    out = ok(cli("clean", base, "--older-than", "7d", "--yes", cwd=cwd))
    assert "removed 1 run " in out and not runs["r1"].exists()
    ok(cli("clean", base, "--keep", 1, "--yes", cwd=cwd))       # the newest (live) is kept
    assert live.run_dir.exists() and not runs["r2"].exists() and not runs["r3"].exists()
    live.close()
    assert "nothing to remove" in ok(cli("clean", base, "--keep", 1, cwd=cwd))
    bad = cli("clean", base, "--older-than", "soon", cwd=cwd)
    assert bad.returncode == 2 and "not an age" in bad.stderr


def test_clean_never_follows_a_symlinked_run_out_of_base(base, runs, tmp_path):
    outside = tmp_path / "outside_run"
    outside.mkdir()
    meta = read_json(runs["r3"] / "run.json")
    atomic_write_json(outside / "run.json", {**meta, "run_name": "linked", "status": "FAILED"})
    (outside / "precious.bin").write_bytes(b"keep me")
    try:
        os.symlink(outside, base / "mnist" / "linked", target_is_directory=True)
    except (OSError, NotImplementedError):
        pytest.skip("symlinks are not permitted here")
    proc = cli("clean", base, "--status", "FAILED", "--yes", cwd=tmp_path)
    ok(proc)
    assert "skipped mnist/linked" in proc.stderr
    assert (outside / "precious.bin").read_bytes() == b"keep me"
    assert not runs["r3"].exists() and (base / "mnist" / "linked").is_symlink()


# ---- errors -------------------------------------------------------------------------------------


def test_errors_are_one_line_without_traceback(tmp_path):
    one_line_error(cli("show", "nothing/here", cwd=tmp_path), "no run")
    one_line_error(cli("verify", tmp_path, cwd=tmp_path), "no run")
    one_line_error(cli("du", cwd=tmp_path), "no base dir")
    bad = tmp_path / "experiments" / "e" / "r"
    bad.mkdir(parents=True)
    (bad / "run.json").write_text("{not json")
    err = one_line_error(cli("show", "e/r", cwd=tmp_path))
    assert "Traceback" not in err


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_progress_only_on_a_terminal(make_run, tmp_path):
    import pty
    from expman.cli.files import PROGRESS_MIN_POINTS
    exp = make_run("big", "run")
    for i in range(PROGRESS_MIN_POINTS // 2):
        exp.log_metrics({"a": 1.0, "b": 2.0}, step=i)
    exp.close()
    piped = cli("export", exp.run_dir, "-o", tmp_path / "a.csv", cwd=tmp_path)
    assert ok(piped) == "" and "\r" not in piped.stderr and "%" not in piped.stderr
    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(Path(expman.__file__).parent.parent)}
    proc = subprocess.Popen([sys.executable, "-m", "expman", "export", str(exp.run_dir), "-o",
                             str(tmp_path / "b.csv")], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:                       # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait(timeout=60) == 0
    os.close(master)
    assert b"100%" in seen and b"\r" in seen and b"wrote 200,000 points" in seen
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_same_output_without_numpy(special_run, tmp_path):
    """The array.array columns (no numpy installed) give the same answers."""
    for args in (["export", special_run, "--format", "jsonl"], ["show", special_run, "--json"],
                 ["tail", special_run, "-n", 50]):
        with_np = ok(cli(*args, cwd=tmp_path))
        without = ok(cli(*args, cwd=tmp_path, env={"EXPMAN_NO_NUMPY": "1"}))
        assert with_np == without, args


# ---- one CLI: base-dir forms, URLs, --json, per-call state --------------------------------------


@pytest.fixture
def two_runs(base: Path, make_run) -> Path:
    """exp/r1 FINISHED and exp/r2 FAILED under ``base``."""
    for name, status in (("r1", "FINISHED"), ("r2", "FAILED")):
        exp = make_run("exp", name)
        exp.log_params({"lr": 0.1, "betas": [0.9, 0.999]})
        for step in range(3):
            exp.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
        exp.close(status=status)
        time.sleep(0.01)                 # distinct start times
    return base


def _tb_logdir(base: Path, where: Path) -> Path:
    need("tensorboard")
    from expman.tbio import export_tensorboard
    export_tensorboard(base / "exp" / "r1", where / "r1")
    return where


# argv without the base dir, a check that the base dir was used (given main()'s stdout)
BASE_FORMS = ["after", "before", "env"]
COMMAND_CASES = {
    "demo": lambda base, w: (["demo", "--steps", "3", "--delay", "0"],
                             lambda out: len(list((base / "demo").iterdir())) >= 1),
    "serve": lambda base, w: (["serve", "--no-browser"], None),          # see the test
    "index": lambda base, w: (["index", "--json"], lambda out: json.loads(out)["runs"] == 2),
    "sql": lambda base, w: (["sql", "select run from runs order by run", "--json"],
                            lambda out: [r["run"] for r in json.loads(out)] == ["exp/r1", "exp/r2"]),
    "list": lambda base, w: (["list", "--json"],
                             lambda out: {r["id"] for r in json.loads(out)} == {"exp/r1", "exp/r2"}),
    "show": lambda base, w: (["show", "exp/r1", "--json"],
                             lambda out: json.loads(out)["id"] == "exp/r1"),
    "compare": lambda base, w: (["compare", "exp/r1", "exp/r2", "--json"],
                                lambda out: len(json.loads(out)["runs"]) == 2),
    "tail": lambda base, w: (["tail", "exp/r1", "--json"],
                             lambda out: all(json.loads(line) for line in out.splitlines())),
    "export": lambda base, w: (["export", "exp/r1", "-o", w / "r1.csv"],
                               lambda out: (w / "r1.csv").read_text().count("\n") == 4),
    "verify": lambda base, w: (["verify", "exp/r1", "--json"], lambda out: json.loads(out)["ok"]),
    "du": lambda base, w: (["du", "--json"], lambda out: json.loads(out)["base_dir"] == str(base)),
    "clean": lambda base, w: (["clean", "--status", "FAILED", "--json"],
                              lambda out: [r["id"] for r in json.loads(out)["runs"]] == ["exp/r2"]),
    "tag": lambda base, w: (["tag", "exp/r1", "+seen"],
                            lambda out: "seen" in read_json(base / "exp" / "r1" / "run.json")["tags"]),
    "note": lambda base, w: (["note", "exp/r1", "hello"],
                             lambda out: read_json(base / "exp" / "r1" / "run.json")["notes"] == "hello"),
    "import-tensorboard": lambda base, w: (
        ["import-tensorboard", _tb_logdir(base, w / "tb"), "-e", f"tb_{w.name}", "--json"],
        lambda out: [r["id"] for r in json.loads(out)] == [f"tb_{w.name}/r1"]
        and (base / f"tb_{w.name}" / "r1").is_dir()),
    "ranks": lambda base, w: (["ranks", "exp/r1", "--json"],
                              lambda out: json.loads(out)["status"] == "FINISHED"),
    "export-lake": lambda base, w: (["export-lake", "-o", w / "lake", "--json"],
                                    lambda out: json.loads(out)["runs"] == 2),
    "export-mlflow": lambda base, w: (
        ["export-mlflow", "exp/r1", "exp/r2", "--tracking-uri", f"sqlite:///{w / 'mlflow.db'}",
         "--json"],
        lambda out: [r["status"] for r in json.loads(out)["exported"]] == ["FINISHED", "FAILED"]),
    "sync": lambda base, w: (["sync", w / "copy", "--json"],
                             lambda out: json.loads(out)["runs"] == 2),
    "watch": lambda base, w: (["watch", "exp/r1", "--rule", "nan", "--json"],
                              lambda out: all(json.loads(line) for line in out.splitlines())
                              and (base / "exp" / "r1" / ALERTS_FILE).is_file()),
}
NEEDS = {"export-lake": "pyarrow", "sync": "fsspec", "export-mlflow": "mlflow", "sql": "duckdb"}


def test_every_command_has_a_base_dir_case():
    assert set(COMMAND_CASES) == set(COMMANDS)


@pytest.mark.parametrize("form", BASE_FORMS)
@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_takes_every_base_dir_form(cmd, form, two_runs, tmp_path, monkeypatch, capsys):
    """`CMD ... --base-dir X`, `expman --base-dir X CMD ...` and EXPMAN_DIR=X: the same base
    (the current directory has no ./experiments, so the default would fail or differ)."""
    from expman.cli import main
    if cmd in NEEDS:
        need(NEEDS[cmd])
    work = tmp_path / f"work_{form}"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("EXPMAN_DIR", raising=False)
    argv, check = COMMAND_CASES[cmd](two_runs, work)
    argv = [str(a) for a in argv]
    seen: list[object] = []
    if cmd == "serve":
        from expman import dashboard
        monkeypatch.setattr(dashboard, "serve", lambda base, *a, **k: seen.append(base))

        def check(out):
            return seen == [str(two_runs)]
    if form == "after":
        argv = argv + ["--base-dir", str(two_runs)]
    elif form == "before":
        argv = ["--base-dir", str(two_runs)] + argv
    else:
        monkeypatch.setenv("EXPMAN_DIR", str(two_runs))
    assert main(argv) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert check(out), out
    assert not (work / "experiments").exists()


DATA_COMMANDS = {"list", "show", "compare", "tail", "verify", "du", "clean", "ranks",
                 "export-lake", "export-mlflow", "sync", "tag", "import-tensorboard", "watch",
                 "index", "sql"}


def test_json_on_every_command_that_outputs_data():
    """--json is the same shared flag on each data command (and `tag` reads it by hand)."""
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    having = {name for name, p in sub.choices.items()
              if any("--json" in a.option_strings for a in p._actions)}
    assert having | {"tag"} == DATA_COMMANDS
    # that each one's output parses is checked in test_every_command_takes_every_base_dir_form


def test_tag_json(two_runs, capsys):
    from expman.cli import main
    assert main(["tag", "exp/r1", "+a", "--json", "--base-dir", str(two_runs)]) == 0
    assert json.loads(capsys.readouterr().out) == {"id": "exp/r1", "tags": ["a"]}


def test_positional_base_dir_and_conflicts(two_runs, tmp_path, monkeypatch, capsys):
    from expman.cli import main
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EXPMAN_DIR", str(tmp_path / "elsewhere"))
    for cmd in ("list", "du"):
        assert main([cmd, str(two_runs), "--json"]) == 0
        json.loads(capsys.readouterr().out)
    assert main(["list", str(two_runs), "--base-dir", str(two_runs), "--json"]) == 0
    capsys.readouterr()
    assert main(["list", str(two_runs), "--base-dir", str(tmp_path)]) == 1
    assert "name different base dirs" in capsys.readouterr().err
    # serve: BASE_DIR positional and a URL reach the dashboard as given
    from expman import dashboard
    seen: list[object] = []
    monkeypatch.setattr(dashboard, "serve", lambda base, *a, **k: seen.append(base))
    assert main(["serve", str(two_runs), "--no-browser"]) == 0
    assert main(["serve", "s3://bucket/runs", "--no-browser"]) == 0
    assert main(["--base-dir", "s3://bucket/runs", "serve", "--no-browser"]) == 0
    assert seen == [str(two_runs), "s3://bucket/runs", "s3://bucket/runs"]
    assert main(["serve", str(two_runs), "--base-dir", str(tmp_path), "--no-browser"]) == 1
    assert "name different base dirs" in capsys.readouterr().err


def test_commands_that_write_refuse_a_url(tmp_path, monkeypatch, capsys):
    from expman.cli import main
    monkeypatch.chdir(tmp_path)
    url = "s3://bucket/runs"
    for argv in (["demo", "--steps", "1"], ["clean", url, "--status", "FAILED"],
                 ["tag", "exp/r1", "+a", "--base-dir", url], ["note", "exp/r1", "x"],
                 ["import-tensorboard", str(tmp_path)], ["sync", "s3://other/x"],
                 ["verify", "exp/r1", "--repair"], ["watch", "exp/r1"]):
        args = argv if argv[0] in ("clean", "tag") else ["--base-dir", url, *argv]
        assert main(args) == 1, args
        err = capsys.readouterr().err
        assert f"{url} is a URL" in err and "local folder" in err, (args, err)
    assert main(["export-lake", str(tmp_path), "-o", "s3://bucket/lake"]) == 1
    assert "s3://bucket/lake is a URL" in capsys.readouterr().err


def test_columns_print_the_shortest_form_that_tells_their_values_apart(make_run, base, capsys):
    """Issue 22.8: `expman list` lines ran past 200 characters with full-repr floats.
    Floats print to 6 significant digits, a column with more only where two of its
    different values would print alike; --digits full is exact, --digits N is N."""
    from expman.cli import main
    from expman.cli._text import num, num_columns, rounding
    with rounding(None):
        assert num(0.0020982427522540092) == "0.00209824"
        assert num_columns([["a", 0.30000000000000004, 1.0000001],
                            ["b", 0.1234567891, 1.0000002],
                            ["c", None, 2.0]]) == [["a", "0.3", "1.0000001"],
                                                   ["b", "0.123457", "1.0000002"],
                                                   ["c", "-", "2"]]
        assert num_columns([[0.3], [0.30000000000000004]]) == [["0.3"], ["0.30000000000000004"]]
        assert num_columns([["loss", 0.25, 0.2500001], ["acc", 0.5, 0.5]], by_row=True) == [
            ["loss", "0.25", "0.2500001"], ["acc", "0.5", "0.5"]]
    with rounding("full"):
        assert num(0.1 + 0.2) == "0.30000000000000004"
    exp = make_run("e", "long")
    exp.log_metrics({f"metric_{i}": 0.0020982427522540092 * i for i in range(1, 5)}, step=0)
    exp.close()
    assert main(["list", str(base)]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if "long" in x]
    assert "metric_1=0.00209824" in line and len(line) < 160, line
    assert main(["list", str(base), "--digits", "full"]) == 0
    assert "metric_1=0.0020982427522540092" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["list", str(base), "--digits", "18"])
    assert "1 to 17 or 'full'" in capsys.readouterr().err


def test_digits_is_per_call(make_run, base, capsys):
    """--digits in one main() call is not left set for the next one in the same process."""
    from expman.cli import main
    exp = make_run("e", "r")
    exp.log_metrics({"x": 0.123456789}, step=0)
    exp.close()
    assert main(["show", "e/r", "--digits", "3", "--base-dir", str(base)]) == 0
    assert "0.123 " in capsys.readouterr().out
    assert main(["show", "e/r", "--base-dir", str(base)]) == 0
    text = capsys.readouterr().out
    assert "0.123457" in text and "0.123 " not in text


def test_list_show_and_more_read_an_s3_url(two_runs, s3_bucket, tmp_path, monkeypatch, capsys):
    """`expman list s3://...` (issue 19: "no base dir s3:/bucket/runs") gives the local rows;
    the other reading commands take the URL as BASE_DIR, --base-dir or a run's URL."""
    from expman.cli import main
    from expman.sync import sync
    monkeypatch.chdir(tmp_path)
    url = f"s3://{s3_bucket}/runs"
    sync(two_runs, url)

    def rows(base: str) -> list[dict]:
        assert main(["list", base, "--json"]) == 0
        return [{k: v for k, v in r.items() if k != "path"} for r in json.loads(capsys.readouterr().out)]

    local = rows(str(two_runs))
    assert len(local) == 2 and rows(url) == local
    assert main(["--base-dir", url, "show", "exp/r1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == {"lr": 0.1, "betas": [0.9, 0.999]}
    assert main(["verify", f"{url}/exp/r2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"]
    monkeypatch.setenv("EXPMAN_DIR", url)
    assert main(["compare", "exp/r1", "exp/r2", "--json"]) == 0
    assert [r["status"] for r in json.loads(capsys.readouterr().out)["runs"]] == ["FINISHED", "FAILED"]
    assert main(["tail", "exp/r1", "--follow"]) == 1
    assert "--follow watches a local run folder" in capsys.readouterr().err
