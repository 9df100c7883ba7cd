"""The run folder, params, events, artifacts, lifecycle and the module-level API."""

from __future__ import annotations

import dataclasses
import enum
import gc
import hashlib
import json
import math
import os
import pathlib
import threading

import numpy as np
import pytest

import expman
from expman import (
    ExpmanTypeError, ExpmanValueError, RunClosedError, RunExistsError,
)
from conftest import missing, need, run_python


# ---- the three examples, verbatim ---------------------------------------

def test_example_with_block(tmp_path):
    proc = run_python("""
        from expman import Experiment
        import time, random

        with Experiment("mnist_classifier") as exp:          # base_dir "./experiments" by default
            exp.log_params({"learning_rate": 0.005, "batch_size": 64, "model": "CNN"})
            exp.info("Starting training loop...")
            for epoch in range(10):
                time.sleep(0.01)
                loss = 1.0 / (epoch + 1) + random.uniform(0, 0.1)
                acc = epoch * 10 + random.uniform(0, 5)
                exp.log_metrics({"train_loss": loss, "train_acc": acc}, step=epoch)
            exp.info("Training complete!")
            print(f"Run data saved to: {exp.run_dir}")
    """, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run_dir = pathlib.Path(proc.stdout.strip().split("Run data saved to: ")[1])
    assert run_dir.parent == tmp_path / "experiments" / "mnist_classifier"
    run = expman.open_run(run_dir)
    assert run.status == "FINISHED"
    assert run.params == {"learning_rate": 0.005, "batch_size": 64, "model": "CNN"}
    assert list(run.metrics["train_loss"].steps) == list(range(10))
    assert len(run.metrics["train_acc"]) == 10
    assert [m["msg"] for m in run.messages] == ["Starting training loop...", "Training complete!"]
    # ordered with the metrics: after the 10 rows logged (and any rows of the default
    # system-metrics sampler, which this example, as written, leaves on)
    system_rows = max((len(s) for k, s in run.metrics.items() if k.startswith("system/")),
                      default=0)
    first, last = (m["seq"] for m in run.messages)
    assert first <= system_rows and 10 <= last - first and last <= 10 + system_rows
    assert run.meta["exit"] is None and run.meta["end_time"] >= run.meta["start_time"]


def test_example_no_close_finishes_at_exit(tmp_path):
    proc = run_python("""
        import expman
        exp = expman.Experiment("resnet_cifar10", run_name="test_run_01")
        exp.log_params({"lr": 0.001})
        for step in range(100):
            exp.log_metrics({"loss": 0.5 - (step * 0.001)}, step=step)
    """, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run = expman.open_run(tmp_path / "experiments" / "resnet_cifar10" / "test_run_01")
    assert run.status == "FINISHED"
    assert run.params == {"lr": 0.001}
    assert list(run.metrics["loss"].values) == [0.5 - s * 0.001 for s in range(100)]


def test_example_artifact(tmp_path):
    (tmp_path / "model_weights.pt").write_bytes(b"weights" * 1000)
    proc = run_python("""
        from expman import Experiment
        with Experiment("artifact_demo") as exp:
            exp.save_artifact("model_weights.pt")
            print(exp.run_dir)
    """, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run = expman.open_run(proc.stdout.strip())
    stored = run.path / "artifacts" / "model_weights.pt"
    assert stored.read_bytes() == b"weights" * 1000
    [art] = run.artifacts
    assert art["size"] == 7000
    assert art["sha256"] == hashlib.sha256(b"weights" * 1000).hexdigest()


# ---- run folder and names ------------------------------------------------------

def test_folder_layout_and_properties(make_run, base):
    exp = make_run("mnist", run_name="r1")
    assert exp.name == "mnist" and exp.run_name == "r1"
    assert exp.run_dir == base / "mnist" / "r1" and exp.run_dir.is_absolute()
    assert exp.status == "RUNNING"
    assert {p.name for p in exp.run_dir.iterdir()} >= {"run.json", "metrics.bin", "events.jsonl",
                                                       "artifacts"}
    meta = json.loads((exp.run_dir / "run.json").read_text())
    assert meta["status"] == "RUNNING" and meta["pid"] == os.getpid()
    assert "mnist/r1" in repr(exp) and "RUNNING" in repr(exp)
    exp.close()
    assert exp.status == "FINISHED"
    assert json.loads((exp.run_dir / "run.json").read_text())["status"] == "FINISHED"


def test_default_run_names_unique_in_one_second(make_run, base):
    names = {make_run("same").run_name for _ in range(20)}
    assert len(names) == 20
    assert all(n[:8].isdigit() for n in names)


def test_default_run_names_unique_across_processes(tmp_path):
    code = """
        import expman
        with expman.Experiment("par") as e:
            print(e.run_name)
    """
    import subprocess
    import sys
    import textwrap
    env = dict(os.environ, PYTHONPATH=str(pathlib.Path(expman.__file__).parent.parent))
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path,
                              stdout=subprocess.PIPE, text=True, env=env) for _ in range(6)]
    names = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(set(names)) == 6


@pytest.mark.parametrize("bad", ["..", ".", "", "a/b", "a\\b", "x\x00y", "/abs", "C:", "CON", "nul.txt",
                                 " lead", "trail ", "dot."])
def test_bad_names_raise_and_create_nothing(base, bad):
    with pytest.raises(ExpmanValueError) as info:
        expman.Experiment(bad, base_dir=base, capture_env=False)
    assert repr(bad) in str(info.value)
    with pytest.raises(ExpmanValueError):
        expman.Experiment("ok", run_name=bad, base_dir=base, capture_env=False)
    assert not any(base.rglob("*.bin"))


def test_name_not_str(base):
    with pytest.raises(ExpmanTypeError, match="int"):
        expman.Experiment(5, base_dir=base)  # type: ignore[arg-type]


def test_reopen_requires_resume(make_run, base):
    exp = make_run("e", run_name="r")
    exp.log_metrics({"a": 1.0}, step=0)
    exp.log_metrics({"a": 2.0}, step=1)
    exp.log_params({"lr": 0.1})
    exp.close()
    with pytest.raises(RunExistsError, match="resume=True") as info:
        make_run("e", run_name="r")
    assert isinstance(info.value, FileExistsError)
    again = make_run("e", run_name="r", resume=True)
    assert again.params == {"lr": 0.1}
    again.log_metrics({"a": 3.0})                # steps continue: 2
    again.log_metrics({"b": 4.0}, step=7)        # a new key after resume
    again.close()
    run = expman.open_run(again.run_dir)
    assert list(run.metrics["a"].steps) == [0, 1, 2]
    assert list(run.metrics["a"].values) == [1.0, 2.0, 3.0]
    assert list(run.metrics["b"].steps) == [7]
    assert run.status == "FINISHED" and len(run.meta["resumed"]) == 1
    assert [e["status"] for e in run.events if e["kind"] == "status"] == \
        ["RUNNING", "FINISHED", "RUNNING", "FINISHED"]


def test_chdir_after_start_does_not_move_the_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exp = expman.Experiment("cwd", capture_env=False)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    exp.log_metrics({"a": 1.0})
    exp.close()
    assert exp.run_dir.parent == tmp_path / "experiments" / "cwd"
    assert len(expman.open_run(exp.run_dir).metrics["a"]) == 1


def test_bad_options(base):
    for kwargs, word in [({"flush_interval": 0}, "flush_interval"), ({"buffer_size": 10}, "buffer_size"),
                         ({"on_full": "spin"}, "on_full"), ({"on_error": "panic"}, "on_error")]:
        with pytest.raises(ExpmanValueError, match=word):
            expman.Experiment("opts", base_dir=base, capture_env=False, **kwargs)
    assert not (base / "opts").exists() or not any((base / "opts").iterdir())


# ---- params --------------------------------------------------------------------

class Opt(enum.Enum):
    ADAM = "adam"


@dataclasses.dataclass
class Cfg:
    depth: int
    path: pathlib.Path


def test_params_merge_and_convert(make_run):
    exp = make_run()
    exp.log_params({"lr": 0.1, "nested": {"a": [1, 2, {"b": None}]}, "flag": True})
    exp.log_params({"lr": 0.01, "opt": Opt.ADAM, "cfg": Cfg(3, pathlib.Path("/data")),
                    "np": np.float32(0.5), "arr": np.arange(3), "tuple": (1, "x"),
                    "nan": math.nan, "inf": -math.inf, "big": 2**63})
    expected = {"lr": 0.01, "nested": {"a": [1, 2, {"b": None}]}, "flag": True, "opt": "adam",
                "cfg": {"depth": 3, "path": "/data"}, "np": 0.5, "arr": [0, 1, 2],
                "tuple": [1, "x"], "nan": "NaN", "inf": "-Infinity", "big": 2**63}
    assert exp.params == expected
    with pytest.raises(ExpmanValueError, match=r"params\['huge'\]"):
        exp.log_params({"huge": 2**70})
    exp.close()
    assert expman.open_run(exp.run_dir).params == expected


@pytest.mark.parametrize("params, words", [
    ({"fn": print}, ["params['fn']", "builtin_function_or_method"]),
    ({"a": {"b": object()}}, ["params['a']['b']", "object"]),
    ({"a": {1: "x"}}, ["params['a']", "keys must be str", "int"]),
    ({2: "x"}, ["params", "keys must be str"]),
])
def test_bad_params_name_the_key_and_keep_old(make_run, params, words):
    exp = make_run()
    exp.log_params({"kept": 1})
    with pytest.raises(ExpmanTypeError) as info:
        exp.log_params(params)
    for w in words:
        assert w in str(info.value)
    assert exp.params == {"kept": 1}
    with pytest.raises(ExpmanTypeError, match="dict"):
        exp.log_params([("a", 1)])  # type: ignore[arg-type]


# ---- messages ------------------------------------------------------------------

def test_messages_are_ordered_with_metrics(make_run):
    exp = make_run()
    exp.info("start")
    exp.log_metrics({"a": 1.0})
    exp.log_metrics({"a": 2.0})
    exp.warn("careful")
    exp.log_metrics({"a": 3.0})
    exp.error({"not": "a str"})
    exp.close()
    msgs = expman.open_run(exp.run_dir).messages
    assert [(m["level"], m["msg"], m["seq"]) for m in msgs] == [
        ("info", "start", 0), ("warning", "careful", 2), ("error", "{'not': 'a str'}", 3)]
    assert all(isinstance(m["time"], float) for m in msgs)


# ---- artifacts -----------------------------------------------------------------

def test_artifact_names_and_errors(make_run, tmp_path):
    src = tmp_path / "ckpt.bin"
    src.write_bytes(os.urandom(1000))
    exp = make_run()
    assert exp.save_artifact(src, name="sub/dir/final.bin").read_bytes() == src.read_bytes()
    with pytest.raises(FileNotFoundError) as info:
        exp.save_artifact(tmp_path / "missing.pt")
    assert "missing.pt" in str(info.value)
    for bad in ["../escape.bin", "/abs.bin", "a/../../b", "C:\\x.bin", "x\x00"]:
        with pytest.raises(ExpmanValueError):
            exp.save_artifact(src, name=bad)
    exp.close()
    run = expman.open_run(exp.run_dir)
    assert [a["name"] for a in run.artifacts] == ["sub/dir/final.bin"]
    assert not (exp.run_dir.parent / "escape.bin").exists()


def test_large_artifact_is_the_file_as_it_was_at_the_call(make_run, tmp_path, monkeypatch):
    from expman import artifacts
    monkeypatch.setattr(artifacts, "SYNC_LIMIT", 1000)       # force the background path
    src = tmp_path / "big.bin"
    original = os.urandom(200_000)
    src.write_bytes(original)
    exp = make_run()
    exp.save_artifact(src)
    exp.close()                                              # waits for the copy
    run = expman.open_run(exp.run_dir)
    [art] = run.artifacts
    stored = (exp.run_dir / "artifacts" / "big.bin").read_bytes()
    assert art["sha256"] == hashlib.sha256(stored).hexdigest()
    assert art["method"] in ("copy", "hash")
    if art["consistent"]:
        assert stored == original


def test_small_artifact_snapshot_is_immediate(make_run, tmp_path):
    src = tmp_path / "m.pt"
    src.write_bytes(b"v1")
    exp = make_run()
    exp.save_artifact(src)
    src.write_bytes(b"v2-changed")                           # the user overwrites right away
    exp.close()
    assert (exp.run_dir / "artifacts" / "m.pt").read_bytes() == b"v1"


# ---- lifecycle -----------------------------------------------------------------

def test_exception_in_with_marks_failed_and_reraises(base):
    with pytest.raises(ZeroDivisionError):
        with expman.Experiment("boom", base_dir=base, capture_env=False) as exp:
            exp.log_metrics({"a": 1.0})
            1 / 0
    assert exp.status == "FAILED"
    run = expman.open_run(exp.run_dir)
    assert run.status == "FAILED"
    assert run.meta["exit"]["type"] == "ZeroDivisionError"
    assert "division by zero" in run.meta["exit"]["message"]
    assert run.meta["exit"]["location"].startswith(__file__)
    assert list(run.metrics["a"].values) == [1.0]             # logged data survives


def test_keyboard_interrupt_in_with(base):
    with pytest.raises(KeyboardInterrupt):
        with expman.Experiment("ki", base_dir=base, capture_env=False) as exp:
            raise KeyboardInterrupt
    assert expman.open_run(exp.run_dir).meta["exit"]["type"] == "KeyboardInterrupt"


def test_close_status_argument(make_run):
    a, b, c = make_run(), make_run(), make_run()
    a.close("failed")
    b.close(status="FINISHED")
    with pytest.raises(ExpmanValueError, match="KILLED"):
        c.close("KILLED")
    assert c.status == "RUNNING"
    assert (a.status, b.status) == ("FAILED", "FINISHED")
    assert expman.open_run(a.run_dir).status == "FAILED"


def test_close_from_another_thread_and_twice(make_run):
    exp = make_run()
    exp.log_metrics({"a": 1.0})
    threads = [threading.Thread(target=exp.close) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    exp.close()
    run = expman.open_run(exp.run_dir)
    assert run.status == "FINISHED"
    assert [e["status"] for e in run.events if e["kind"] == "status"] == ["RUNNING", "FINISHED"]


def test_garbage_collected_run_closes_itself(base):
    def train() -> pathlib.Path:
        exp = expman.Experiment("gc", base_dir=base, capture_env=False, system_metrics=False)
        exp.log_metrics({"a": 1.0})
        return exp.run_dir

    with pytest.warns(ResourceWarning, match="not closed"):
        run_dir = train()
        gc.collect()
    run = expman.open_run(run_dir)
    assert run.status == "FINISHED"
    assert list(run.metrics["a"].values) == [1.0]


@pytest.mark.parametrize("tail, status, exit_check", [
    ("pass", "FINISHED", lambda e: e is None),
    ("import sys; sys.exit(0)", "FINISHED", lambda e: e is None),
    ("import sys; sys.exit(3)", "FAILED", lambda e: e["code"] == 3),
    ("raise ValueError('bad lr')", "FAILED",
     lambda e: e["type"] == "ValueError" and e["message"] == "bad lr" and ":" in e["location"]),
])
def test_interpreter_exit_status(tmp_path, tail, status, exit_check):
    proc = run_python(f"""
        import expman
        exp = expman.Experiment("exit", run_name="r")
        exp.log_metrics({{"a": 1.0}})
        {tail}
    """, cwd=tmp_path)
    run = expman.open_run(tmp_path / "experiments" / "exit" / "r")
    assert run.status == status, proc.stderr
    assert exit_check(run.meta["exit"])
    assert list(run.metrics["a"].values) == [1.0]


def test_environment_is_recorded(base):
    exp = expman.Experiment("env", base_dir=base)
    exp.close()
    env = expman.open_run(exp.run_dir).env
    import sys
    assert env["python"] == sys.executable
    assert env["pid"] == os.getpid()
    assert env["expman_version"] == expman.__version__
    for key in ("python_version", "implementation", "platform", "hostname", "argv", "cwd", "user",
                "env_vars", "packages"):
        assert key in env
    assert "orjson" in {k.lower() for k in env["packages"]}


def test_environment_git(tmp_path):
    import shutil
    import subprocess
    if shutil.which("git") is None:
        missing("git", "git is not installed")
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=tmp_path, check=True)
    (tmp_path / "f").write_text("x")
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "f"], cwd=tmp_path, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "m"],
                   cwd=tmp_path, check=True)
    (tmp_path / "f").write_text("changed")
    proc = run_python("""
        import expman, os
        os.environ["CUDA_VISIBLE_DEVICES"] = "1"
        os.environ["SLURM_JOB_ID"] = "42"
        with expman.Experiment("g", run_name="r") as e:
            pass
    """, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    env = expman.open_run(tmp_path / "experiments" / "g" / "r").env
    assert len(env["git"]["commit"]) == 40 and env["git"]["branch"] == "main"
    assert env["git"]["dirty"] is True
    assert env["env_vars"]["CUDA_VISIBLE_DEVICES"] == "1"
    assert env["env_vars"]["SLURM_JOB_ID"] == "42"
    assert "PATH" not in env["env_vars"] and "HOME" not in env["env_vars"]


def test_start_does_not_wait_for_the_slow_probes(base, monkeypatch):
    """git and the package list are probed in the background: the constructor returns
    while the probe is still running (held here until released), however slow it is."""
    from expman import environment
    started, release, done = threading.Event(), threading.Event(), threading.Event()

    def held(cwd):
        started.set()
        release.wait(60)
        done.set()
        return {"git": {"commit": "held"}}

    monkeypatch.setattr(environment, "slow", held)
    exp = expman.Experiment("fast", base_dir=base)
    try:
        assert started.wait(60) and not done.is_set()       # returned while the probe runs
        assert exp.status == "RUNNING"
    finally:
        release.set()
        exp.close()
    assert expman.open_run(exp.run_dir).env["git"] == {"commit": "held"}


# ---- module-level API ------------------------------------------------------------

def test_module_level_api(base, tmp_path):
    with pytest.raises(RunClosedError, match="init"):
        expman.log_metrics({"a": 1.0})
    art = tmp_path / "a.txt"
    art.write_text("x")
    run = expman.init("mod", base_dir=base, capture_env=False)
    assert expman.current() is run
    expman.log_params({"p": 1})
    expman.log_metrics({"a": 1.0}, step=0)
    expman.log_metrics({"a": 2.0})
    expman.info("i")
    expman.warn("w")
    expman.error("e")
    expman.save_artifact(art)
    expman.close()
    with pytest.raises(RunClosedError):
        expman.log_metrics({"a": 3.0})
    expman.close()                                            # no current run: no-op
    r = expman.open_run(run.run_dir)
    assert r.status == "FINISHED" and r.params == {"p": 1}
    assert list(r.metrics["a"].steps) == [0, 1]
    assert [m["level"] for m in r.messages] == ["info", "warning", "error"]
    assert len(r.artifacts) == 1


def test_init_closes_previous_current_run(base):
    first = expman.init("a", base_dir=base, capture_env=False)
    with pytest.warns(RuntimeWarning, match="finished the previous run"):
        second = expman.init("b", base_dir=base, capture_env=False)
    assert first.status == "FINISHED" and second.status == "RUNNING"
    expman.close()


def test_keys_and_values_whose_code_empties_the_dict_never_crash(tmp_path):
    """A str subclass key whose __hash__/__eq__ (or a value whose __float__)
    clears the dict being logged frees what the dict held mid-call: the core
    owns what it still uses, so this is an error or a row, never a crash
    (SIGSEGV before; heap-use-after-free under ASan)."""
    proc = run_python("""
        import gc, expman
        exp = expman.Experiment("uaf", base_dir="exps", capture_env=False, system_metrics=False)
        outcomes = set()
        for trial in range(100):
            d = {}
            class Evil(str):
                def __hash__(self):
                    d.clear(); gc.collect()
                    return str.__hash__(self)
                def __eq__(self, other):
                    d.clear()
                    return str.__eq__(self, other)
            d[Evil(f"k{trial}x" * 3)] = float(trial) + 0.5    # freed by clear()
            d[Evil("b" * 40)] = 1e300 * (trial + 1)
            class EvilFloat:
                def __float__(self):
                    d2.clear(); gc.collect()
                    return 1.0
            key = "".join(["z", str(trial), "q" * 30])          # only the dict holds it
            d2 = {key: EvilFloat(), "w" + "y" * 30: EvilFloat()}
            del key
            for target in (d, d2):
                try:
                    exp.log_metrics(target)
                    outcomes.add("logged")
                except RuntimeError as e:
                    outcomes.add(type(e).__name__)
        exp.close()
        print("OK", sorted(outcomes))
    """, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.startswith("OK"), proc.stdout


def test_auto_steps_are_taken_with_the_row_whatever_the_value_type(make_run):
    """step=None is assigned in the same critical section as the append: a value
    whose conversion releases the GIL (a 0-d torch tensor's __float__) cannot
    let another thread take the same step (20,057 distinct of 160,000 before)."""
    torch = need("torch")
    exp = make_run(system_metrics=False, buffer_size=64 << 20)
    threads, per = 8, 5000
    values = [torch.tensor(float(t)) for t in range(threads)]
    start = threading.Barrier(threads)

    def work(t: int) -> None:
        start.wait()
        for _ in range(per):
            exp.log_metrics({"v": values[t]})

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    exp.close()
    run = expman.open_run(exp.run_dir)
    steps = list(run.metrics["v"].steps)
    assert len(steps) == threads * per
    assert sorted(steps) == list(range(threads * per))
    # each thread's rows carry its own value: steps and values travel together
    assert sorted(run.metrics["v"].values) == sorted(float(t) for t in range(threads)
                                                     for _ in range(per))


@pytest.mark.parametrize("value", [1 + 2j, np.complex128(1 + 2j), np.complex64(3 - 1j),
                                   np.array(1 + 2j)])
def test_complex_values_are_refused_alike_naming_the_key(make_run, value):
    """np.complex128 was stored as its real part with only numpy's ComplexWarning
    while Python's complex was refused: both are refused, naming the key."""
    import warnings as _w
    exp = make_run(system_metrics=False)
    with _w.catch_warnings():
        _w.simplefilter("error")         # no ComplexWarning slips through either
        for _ in range(2):               # the second call meets a type already seen
            with pytest.raises(expman.ExpmanTypeError, match=r"'z'.*must be a real number"):
                exp.log_metrics({"ok": 1.0, "z": value})
    exp.close()
    assert exp.stats()["accepted"] == 0


def test_a_kill_during_experiment_start_leaves_a_listed_cleanable_run(tmp_path):
    """SIGKILL right after the writer lock is taken (before the streams exist)
    used to leave a folder holding only writer.lock: no reader listed it and
    `clean` could not remove it. run.json is written first now."""
    proc = run_python(f"""
        import os, signal, expman
        from expman import runlock
        real = runlock.acquire
        def acquire_then_die(*args, **kwargs):
            real(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        runlock.acquire = acquire_then_die
        expman.Experiment("start", "r1", base_dir={str(tmp_path / "exps")!r}, capture_env=False)
    """, cwd=tmp_path)
    assert proc.returncode == -9, proc.stderr
    run_dir = tmp_path / "exps" / "start" / "r1"
    assert (run_dir / "writer.lock").exists()
    line, = expman.list_runs(tmp_path / "exps")
    assert line.status == "CRASHED" and line.path == run_dir
    from expman import disk
    chosen, skipped = disk.runs_to_clean(tmp_path / "exps", status=["CRASHED"])
    assert [r.path for r in chosen] == [run_dir] and not skipped
    assert disk.remove_run(run_dir) == [] and not run_dir.exists()
