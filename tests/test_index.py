"""The listing index (expman.index): a cache that never changes what a listing says.

Every test compares a listing through the index with one that reads every run
folder (``index=False``): runs created, finished, edited, resumed, deleted or
copied in behind the index's back, a crafted or cut index, a writer killed at
any moment, several writers at once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import need

import expman
import expman.index
from expman.index import RunIndex, parse
from expman.reader import update_index
from expman.layout import INDEX_FILE
from expman.reader import list_runs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from gen_runs import close_all, generate  # noqa: E402


@pytest.fixture(autouse=True)
def no_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep entries however recent: the tests wait for the filesystem's clock
    instead (tick), so no test depends on a two-second window."""
    monkeypatch.setattr(expman.index, "RACY", 0.0)


def tick(base: Path) -> None:
    """Wait until the filesystem's clock has moved past every run folder's last
    change (a change within one timestamp tick keeps a folder's times)."""
    newest = max((os.stat(p).st_ctime_ns for p in base.glob("*/*")), default=0)
    probe = base / ".tick"
    while True:
        probe.write_bytes(b"x")
        if os.stat(probe).st_mtime_ns > newest:
            break
    probe.unlink()


def steady(d: dict[str, Any]) -> dict[str, Any]:
    """A line as two listings agree on it: a live run's duration (the time so
    far) and figures (its writer flushes when it likes) move between them."""
    if d["status"] == "RUNNING":
        d.update(duration=None, last_metrics=None, points=None)
    return d


def rows(base: Path, **kw: Any) -> list[dict[str, Any]]:
    return [steady(r.to_dict()) for r in list_runs(base, **kw)]


def same(base: Path, **kw: Any) -> list[dict[str, Any]]:
    truth = rows(base, index=False, **kw)
    assert rows(base, **kw) == truth
    return truth


@pytest.fixture
def mixed(tmp_path: Path) -> Any:
    base = tmp_path / "runs"
    live = generate(base, 24, 3, 5, failed=3, crashed=3, damaged=2, live=2)
    for exp in live:
        exp.flush()             # their points on disk: nothing more moves but the clock
    tick(base)
    yield base
    close_all(live)


def test_same_rows_with_and_without_the_index(mixed: Path) -> None:
    truth = same(mixed)             # the first listing writes the index
    statuses = [r["status"] for r in truth]
    assert {s: statuses.count(s) for s in set(statuses)} == {
        "FINISHED": 14, "FAILED": 3, "CRASHED": 3, "DAMAGED": 2, "RUNNING": 2}
    assert (mixed / INDEX_FILE).is_file()
    stats = update_index(mixed)
    assert (stats["hits"], stats["misses"]) == (17, 7)   # finished and failed; the rest read
    assert same(mixed) == truth
    for kw in ({"metrics": False}, {"limit": 5}, {"limit": 5, "metrics": False},
               {"experiment": "exp1"}, {"status": "CRASHED"}, {"tags": "seed1", "group": "lr0.1"}):
        same(mixed, **kw)


def test_a_hit_is_the_line_it_replaced(mixed: Path) -> None:
    same(mixed)                     # writes the index
    truth = {r.id: r for r in list_runs(mixed, index=False)}
    idx = RunIndex.load(mixed)
    for run in sorted(mixed.glob("exp*/r*")):
        line, _key = idx.lookup(run.parent.name, run.name, str(run))
        if line is not None:
            assert line == {k: v for k, v in vars(truth[f"{line['experiment']}/{line['run_name']}"]).items()
                            if k not in ("path", "damaged")}
            assert line["status"] in ("FINISHED", "FAILED")
    assert idx.hits == 17


def test_live_runs_are_never_trusted(tmp_path: Path) -> None:
    base = tmp_path / "runs"
    live = generate(base, 3, 1, 2, live=1)
    tick(base)
    same(base)
    exp = live[0]
    exp.log_metrics({"loss": 42.0}, step=99)
    exp.flush()
    assert rows(base)[0]["status"] == "RUNNING"
    close_all(live)
    tick(base)
    line = same(base)[0]
    assert line["status"] == "FINISHED" and line["last_metrics"]["loss"] == 42.0


def test_behind_its_back(mixed: Path) -> None:
    same(mixed)
    runs = sorted(mixed.glob("exp0/r*"))
    shutil.rmtree(runs[0])                                   # deleted
    shutil.copytree(runs[1], mixed / "exp0" / "copied")      # copied in (cp -a keeps times)
    from expman.runmeta import update_closed_run
    update_closed_run(runs[2], {"tags": ["edited"], "notes": "a note"})   # expman tag / note
    params = runs[3] / "params.json"                         # params rewritten by rename
    tmp = runs[3] / "params.json.new"
    tmp.write_text(json.dumps({"lr": 123.0}))
    os.replace(tmp, params)
    truth = same(mixed)
    by_path = {Path(r["path"]).name: r for r in truth}
    assert runs[0].name not in by_path and "copied" in by_path
    assert by_path[runs[2].name]["tags"] == ["edited"]
    assert by_path[runs[2].name]["notes"] == "a note"
    assert by_path[runs[3].name]["params"] == {"lr": 123.0}
    # a run folder replaced by another run under the same name: a new inode
    shutil.rmtree(runs[4])
    shutil.copytree(runs[5], runs[4])
    tick(mixed)
    assert same(mixed) != truth


def test_new_and_resumed_runs(mixed: Path) -> None:
    same(mixed)
    generate(mixed, 2, 3, 5, start=100)
    before = {r["id"]: r for r in same(mixed)}
    assert {"exp0/r000100", "exp1/r000101"} <= set(before)
    tick(mixed)
    rid = "exp0/r000004"
    with expman.Experiment("exp0", "r000004", base_dir=mixed, resume=True, capture_env=False,
                           handle_signals=False, system_metrics=False) as exp:
        exp.log_metrics({"loss": -1.0}, step=50)
        assert {r["id"]: r for r in same(mixed)}[rid]["status"] == "RUNNING"
    after = {r["id"]: r for r in same(mixed)}[rid]
    assert after["status"] == "FINISHED" and after["last_metrics"]["loss"] == -1.0
    assert after["points"] == before[rid]["points"] + 1


def test_an_edit_in_place_is_seen_after_rebuild(mixed: Path) -> None:
    """The one change the folder's times cannot show: a file rewritten in place
    by something other than expman. `expman index --rebuild` reads everything."""
    same(mixed)
    run = sorted(mixed.glob("exp0/r*"))[0]
    with open(run / "params.json", "r+b") as f:      # in place: same inode, folder untouched
        f.truncate(0)
        f.write(b'{"lr": 7}')
    update_index(mixed, rebuild=True)
    assert {Path(r["path"]).name: r for r in rows(mixed)}[run.name]["params"] == {"lr": 7}
    same(mixed)


@pytest.mark.parametrize("content", [
    b"", b"garbage", b"expman-index 1 5 00000000\nabcde",        # wrong checksum
    b"expman-index 99 0 00000000\n",                               # another format
    "cut",                                                         # the real one, cut short
    "crafted",                                                     # valid header, hostile entries
])
def test_a_bad_index_is_ignored_and_rebuilt(mixed: Path, content: Any) -> None:
    truth = same(mixed)
    path = mixed / INDEX_FILE
    real = path.read_bytes()
    if content == "cut":
        content = real[: len(real) // 2]
    elif content == "crafted":
        first = sorted(mixed.glob("exp0/r*"))[0]
        st = os.stat(first)
        key = f"exp0/{first.name} {st.st_ino} {st.st_mtime_ns} {st.st_ctime_ns}".encode()
        fields = {"id": "exp0/x", "experiment": 1, "run_name": None, "status": "FINISHED",
                  "params": [], "last_metrics": {"loss": "not a float"}, "points": -1,
                  "tags": [1], "damaged": None, "path": ""}
        body = json.dumps(fields, separators=(",", ":")).encode()
        cut = body.index(b',"path":') + len(b',"path":')
        bad = [b"no tab at all", b"../..\t1.0\tFINISHED\t{}\t{}", key + b"\tgarbage",
               key + b"\tnan\tFINISHED\t" + body[:cut] + b'\t,"status_rank":null}',
               key + b"\t1.0\tRUNNING\t" + body[:cut] + b'\t,"status_rank":null}',
               key + b"\t1.0\tFINISHED\t" + body[:cut] + b'\t,"status_rank":null}']
        body = b"\n".join(bad) + b"\n"
        import zlib
        content = b"expman-index %d %d %08x\n" % (expman.index.INDEX_FORMAT, len(body),
                                                   zlib.crc32(body)) + body
        assert parse(content) is not None
    path.write_bytes(content)
    assert rows(mixed) == truth
    assert RunIndex.load(mixed).state == "loaded"      # the listing wrote a good one


def test_a_planted_link_or_folder_is_not_read(mixed: Path, tmp_path: Path) -> None:
    truth = same(mixed)
    path = mixed / INDEX_FILE
    path.unlink()
    (tmp_path / "elsewhere").write_bytes(b"secret")
    path.symlink_to(tmp_path / "elsewhere")
    assert RunIndex.load(mixed).state == "stale"
    assert rows(mixed) == truth
    assert not path.is_symlink() and (tmp_path / "elsewhere").read_bytes() == b"secret"


KILLED_WRITER = """
import sys
sys.path.insert(0, {bench!r})
import expman.index
expman.index.RACY = 0.0
from expman.reader import update_index
print("ready", flush=True)
while True:
    update_index({base!r}, rebuild=True)
"""


def test_kill_loop(mixed: Path) -> None:
    """A writer SIGKILLed at any moment leaves an index that loads whole (or is
    missing), never half a file, and the listing is right."""
    truth = same(mixed)
    code = textwrap.dedent(KILLED_WRITER.format(bench=str(Path(__file__).parent.parent / "bench"),
                                                base=str(mixed)))
    env = {**os.environ, "PYTHONPATH": str(Path(expman.__file__).parent.parent)}
    for i in range(12):
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env,
                                cwd=Path(__file__).parent)   # not the source tree (no built core)
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        # kill at a different point of the loop each round: after i index reads of our own
        for _ in range(i):
            RunIndex.load(mixed)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        assert RunIndex.load(mixed).state in ("loaded", "missing")
        assert rows(mixed) == truth
    temps = [p for p in mixed.iterdir() if p.name.startswith(INDEX_FILE + ".")]
    expman.index.STALE_TEMP, old = -1.0, expman.index.STALE_TEMP
    try:
        RunIndex.load(mixed).save()                  # leftovers of killed writers are swept
    finally:
        expman.index.STALE_TEMP = old
    assert all(not p.exists() for p in temps)


MANY_WRITERS = """
import sys
sys.path.insert(0, {bench!r})
import expman.index
expman.index.RACY = 0.0
from expman.reader import list_runs
from gen_runs import generate
for i in range(6):
    generate({base!r}, 1, 1, 2, start=1000 + {w} * 100 + i, experiments=3)
    list_runs({base!r}, experiment="exp%d" % (i % 3) if i % 2 else None)
"""


def test_many_writers(mixed: Path) -> None:
    """Processes making runs and listing at once (as on several hosts over one
    folder: the index keys on the folder, not on the host): the last writer wins,
    nothing is lost but cache entries, and the listing stays right."""
    bench = str(Path(__file__).parent.parent / "bench")
    env = {**os.environ, "PYTHONPATH": str(Path(expman.__file__).parent.parent)}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(MANY_WRITERS.format(
        bench=bench, base=str(mixed), w=w))], env=env, cwd=Path(__file__).parent)
        for w in range(3)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    assert RunIndex.load(mixed).state == "loaded"
    tick(mixed)
    truth = same(mixed)
    assert len(truth) == 24 + 18
    same(mixed)


def test_a_base_it_cannot_write_still_lists(mixed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*a: Any, **k: Any) -> int:
        raise PermissionError(13, "read-only", str(mixed))
    monkeypatch.setattr(expman.index, "create_exclusive", refuse)
    truth = rows(mixed, index=False)
    assert rows(mixed) == truth
    assert not (mixed / INDEX_FILE).exists()


def test_cli_index(mixed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from expman.cli import main
    assert main(["index", str(mixed), "--rebuild", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["runs"], stats["hits"], stats["kept"], stats["written"]) == (24, 0, 17, True)
    assert main(["index", str(mixed), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"] == 17
    assert main(["index", str(mixed)]) == 0
    assert "24 runs: 17 from the index, 7 read" in capsys.readouterr().out
    assert main(["list", str(mixed), "--json"]) == 0
    assert [steady(d) for d in json.loads(capsys.readouterr().out)] == rows(mixed, index=False)


def test_a_server_with_its_own_cache_reads_the_index_but_never_writes_it(mixed: Path) -> None:
    """The dashboard (list_runs with a RunListCache) never writes into the base dir."""
    from expman.reader import RunListCache
    truth = rows(mixed, index=False)
    cache = RunListCache()
    assert [steady(r.to_dict()) for r in list_runs(mixed, cache=cache)] == truth
    assert not (mixed / INDEX_FILE).exists()
    update_index(mixed)
    index_bytes = (mixed / INDEX_FILE).read_bytes()
    shutil.rmtree(sorted(mixed.glob("exp0/r*"))[0])          # a miss it would write
    tick(mixed)
    assert [steady(r.to_dict()) for r in list_runs(mixed, cache=RunListCache())] == \
        rows(mixed, index=False)
    assert (mixed / INDEX_FILE).read_bytes() == index_bytes


def test_a_folder_where_the_index_belongs_is_left_alone(mixed: Path) -> None:
    truth = rows(mixed, index=False)
    (mixed / INDEX_FILE).mkdir()
    assert RunIndex.load(mixed).state == "stale"
    assert rows(mixed) == truth                  # its save fails quietly: the listing stands
    assert (mixed / INDEX_FILE).is_dir()
    assert not [p for p in mixed.iterdir() if p.name.endswith(".tmp")]


def test_runs_table_is_the_same_through_the_index(mixed: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """expman.runs() lists through list_runs, so through the index."""
    need("pyarrow")
    import functools

    import expman.reader

    def table() -> list[dict[str, Any]]:
        out = expman.runs(mixed, as_="arrow").to_pylist()
        return [{**r, "duration": None} if r["status"] == "RUNNING" else r for r in out]
    same(mixed)
    assert RunIndex.load(mixed).state == "loaded"
    with_index = table()
    monkeypatch.setattr(expman.reader, "list_runs",
                        functools.partial(expman.reader.list_runs, index=False))
    assert table() == with_index and len(with_index) == 24


def json_rows(base: Path | str, **kw: Any) -> list[dict[str, Any]]:
    from expman.reader import list_runs_json
    return [steady(d) for d in json.loads(list_runs_json(base, **kw))]


def as_printed(base: Path | str, **kw: Any) -> list[dict[str, Any]]:
    from expman.layout import jsonable
    return [steady(jsonable(r.to_dict())) for r in list_runs(base, index=False, **kw)]


@pytest.mark.parametrize("kw", [{}, {"limit": 5}, {"experiment": "exp1"}, {"status": "CRASHED"},
                                {"status": ["FAILED", "FINISHED"], "limit": 3},
                                {"tags": "seed1", "group": "lr0.1"}, {"limit": 0}])
def test_the_json_listing_copies_kept_lines_as_list_runs_prints_them(mixed: Path,
                                                                     kw: dict[str, Any]) -> None:
    truth = as_printed(mixed, **kw)
    assert json_rows(mixed, **kw) == truth           # (writes the index: what it read)
    update_index(mixed)
    assert update_index(mixed)["hits"] == 17
    assert json_rows(mixed, **kw) == truth           # kept lines copied from the index
    assert json_rows(mixed, **kw) == rows(mixed, **kw)              # and as decoded


def test_the_json_listing_from_a_relative_base(mixed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    update_index(mixed)
    for cwd, base in ((mixed, "."), (mixed.parent, "runs"), (mixed.parent, "./runs/")):
        monkeypatch.chdir(cwd)
        assert json_rows(base) == as_printed(base)
        assert json_rows(base) == [steady(r.to_dict()) for r in list_runs(base)]


def test_what_the_index_cannot_spell_is_read_each_time(tmp_path: Path) -> None:
    """A name holding a tab or a newline (it would break its entry's line) and a
    last value that is a NaN with a payload (JSON spells it plain "NaN")."""
    import struct
    base = tmp_path / "runs"
    odd_nan = struct.unpack("<d", struct.pack("<Q", 0x7FF8_0000_0000_0001))[0]
    for name, value in (("tab", 1.0), ("line", 1.0), ("payload", odd_nan),
                        ("plain", float("nan"))):
        with expman.Experiment("e", name, base_dir=base, capture_env=False,
                               system_metrics=False, handle_signals=False) as exp:
            exp.log_metrics({"loss": value}, step=0)
    (base / "e" / "tab").rename(base / "e" / "tab\there")      # (copied in by hand: expman
    (base / "e" / "line").rename(base / "e" / "line\nbreak")   # refuses such names)
    tick(base)
    truth = same(base)
    stats = update_index(base)
    assert (stats["runs"], stats["kept"]) == (4, 1)            # only "plain"
    assert same(base) == truth
    assert json_rows(base) == as_printed(base)
    payload = next(r for r in list_runs(base) if r.run_name == "payload")
    assert struct.pack("<d", payload.last_metrics["loss"]) == struct.pack("<d", odd_nan)


def test_cli_list_json_prints_one_run_a_line(mixed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from expman.cli import main
    update_index(mixed)
    assert main(["list", str(mixed), "--json"]) == 0
    text = capsys.readouterr().out
    assert text.count("\n") == 24 + 2 and text.startswith("[\n{") and text.endswith("}\n]\n")
    assert [steady(d) for d in json.loads(text)] == rows(mixed, index=False)
    (mixed / "empty").mkdir()
    assert main(["list", str(mixed / "empty"), "--json"]) == 0
    assert capsys.readouterr().out == "[]\n"


HOLDER = """
import sys
import expman
exp = expman.Experiment("exp0", "held", base_dir={base!r}, capture_env=False,
                        system_metrics=False, handle_signals=False)
exp.log_metrics({{"loss": 1.0}}, step=0)
exp.flush()
print("open", flush=True)
sys.stdin.readline()
exp.close()
"""


def test_two_hosts_over_one_folder(mixed: Path) -> None:
    """Processes that are two hosts to expman ($EXPMAN_HOST: the name run.json
    records and liveness compares) make runs, list and rewrite the index in one
    base dir at once, while a run of host A stays open: host B never takes it for
    finished nor keeps it, and the index ends right for both."""
    bench = str(Path(__file__).parent.parent / "bench")
    env = {**os.environ, "PYTHONPATH": str(Path(expman.__file__).parent.parent)}
    here = Path(__file__).parent
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLDER.format(
        base=str(mixed)))], env={**env, "EXPMAN_HOST": "host-a"}, cwd=here,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"open\n"
        procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(MANY_WRITERS.format(
            bench=bench, base=str(mixed), w=w))],
            env={**env, "EXPMAN_HOST": f"host-{'ab'[w % 2]}"}, cwd=here) for w in range(4)]
        for p in procs:
            assert p.wait(timeout=180) == 0
        seen_from_b = subprocess.run(
            [sys.executable, "-c", "import sys, json; from expman.reader import list_runs_json;"
             "sys.stdout.write(list_runs_json(sys.argv[1]).decode())", str(mixed)],
            env={**env, "EXPMAN_HOST": "host-b"}, cwd=here, capture_output=True, check=True)
        held = [r for r in json.loads(seen_from_b.stdout) if r["id"] == "exp0/held"]
        assert [r["status"] for r in held] == ["RUNNING"]
        assert RunIndex.load(mixed).state == "loaded"
        assert update_index(mixed)["kept"] == 17 + 4 * 6       # the held run is not kept
        hosts = {p.parent.name: json.loads(p.read_bytes())["host"]
                 for p in mixed.glob("exp*/r001*/run.json")}
        assert len(hosts) == 24 and all(h == f"host-{'ab'[int(name[-3]) % 2]}"
                                        for name, h in hosts.items())
    finally:
        holder.communicate(b"\n", timeout=60)
    assert holder.returncode == 0
    tick(mixed)
    truth = same(mixed)
    assert len(truth) == 24 + 4 * 6 + 1
    assert [r["status"] for r in truth if r["id"] == "exp0/held"] == ["FINISHED"]
    assert json_rows(mixed) == as_printed(mixed)


def test_a_forged_entry_that_is_not_json_is_read_from_its_folder(mixed: Path) -> None:
    """An entry whose frame passes but whose text is not one JSON object (an index
    forged with a valid CRC) never reaches `expman list --json`: that run's folder
    is read instead, and the output parses."""
    truth = as_printed(mixed)
    update_index(mixed)
    first = sorted(mixed.glob("exp0/r*"))[0]
    st = os.stat(first)
    key = f"exp0/{first.name} {st.st_ino} {st.st_mtime_ns} {st.st_ctime_ns}".encode()
    old = parse((mixed / INDEX_FILE).read_bytes())
    assert old is not None and key in old
    old[key] = b'1.0\tFINISHED\t{"id":]]],"path":\t,"status_rank":{{}'
    body = b"".join(k + b"\t" + v + b"\n" for k, v in old.items())
    import zlib
    (mixed / INDEX_FILE).write_bytes(b"expman-index %d %d %08x\n" % (
        expman.index.INDEX_FORMAT, len(body), zlib.crc32(body)) + body)
    assert parse((mixed / INDEX_FILE).read_bytes()) is not None
    idx = RunIndex.load(mixed)
    assert idx.lookup_kept("exp0", first.name, str(first))[0] is None    # a miss, not a hit
    assert json_rows(mixed) == truth
