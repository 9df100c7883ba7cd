"""log_metrics: values land exactly, bad input is refused whole, threads keep order."""

from __future__ import annotations

import decimal
import fractions
import math
import struct
import threading

import numpy as np
import pytest

from conftest import need

import expman
from expman import ExpmanError, ExpmanTypeError, ExpmanValueError, RunClosedError


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


def read(exp: expman.Experiment) -> expman.Run:
    exp.close()
    return expman.open_run(exp.run_dir)


def test_round_trip_steps_values_times(make_run):
    exp = make_run()
    for i in range(1000):
        exp.log_metrics({"loss": 1.0 / (i + 1), "acc": i * 0.001}, step=i)
    run = read(exp)
    assert list(run.metrics) == ["loss", "acc"]
    loss = run.metrics["loss"]
    assert list(loss.steps) == list(range(1000))
    assert [bits(v) for v in loss.values] == [bits(1.0 / (i + 1)) for i in range(1000)]
    assert len(loss.times) == 1000
    assert all(b >= a for a, b in zip(loss.times, loss.times[1:]))
    assert abs(loss.times[0] - run.meta["start_time"]) < 60


def test_special_floats_are_bit_exact(make_run):
    specials = [math.nan, -math.nan, math.inf, -math.inf, 0.0, -0.0, 5e-324,
                1.7976931348623157e308, struct.unpack("<d", b"\x01\x00\x00\x00\x00\x00\xf8\x7f")[0]]
    exp = make_run()
    for i, v in enumerate(specials):
        exp.log_metrics({"x": v}, step=i)
    run = read(exp)
    assert [bits(v) for v in run.metrics["x"].values] == [bits(v) for v in specials]


def test_numeric_types_accepted(make_run):
    class Tensor0d:                       # anything with __float__, like a 0-d tensor
        def __float__(self) -> float:
            return 2.5

    values = {"int": 3, "bool": True, "big": 2**60, "np64": np.float64(0.1), "np32": np.float32(0.5),
              "npint": np.int64(7), "np0d": np.array(1.25), "dec": decimal.Decimal("0.5"),
              "frac": fractions.Fraction(1, 4), "tensor": Tensor0d()}
    exp = make_run()
    exp.log_metrics(values, step=0)
    run = read(exp)
    got = {k: s.values[0] for k, s in run.metrics.items()}
    assert got == {"int": 3.0, "bool": 1.0, "big": float(2**60), "np64": 0.1,
                   "np32": 0.5, "npint": 7.0, "np0d": 1.25, "dec": 0.5, "frac": 0.25,
                   "tensor": 2.5}


def test_one_element_arrays_and_tensors_are_one_rule(make_run):
    """Issue 22.8: torch.tensor([0.25]) was accepted and np.array([3.0]) refused. Now
    any array or tensor of exactly one element is its value; more is an error."""
    torch = need("torch")
    exp = make_run()
    exp.log_metrics({"np1": np.array([3.0]), "np11": np.array([[1.5]], dtype=np.float32),
                     "t1": torch.tensor([0.25]), "t11": torch.tensor([[2.0]], requires_grad=True)},
                    step=0)
    for bad in (np.array([1.0, 2.0]), torch.tensor([1.0, 2.0]), np.array(["3.5"]),
                np.array([], dtype=float)):
        with pytest.raises(expman.ExpmanTypeError, match="'x' must be a number .*one element"):
            exp.log_metrics({"x": bad}, step=1)
    run = read(exp)
    assert {k: list(s.values) for k, s in run.metrics.items()} == {
        "np1": [3.0], "np11": [1.5], "t1": [0.25], "t11": [2.0]}


def test_step_none_continues_from_last(make_run):
    exp = make_run()
    exp.log_metrics({"a": 1})            # 0
    exp.log_metrics({"a": 2})            # 1
    exp.log_metrics({"a": 3}, step=10)
    exp.log_metrics({"a": 4})            # 11
    exp.log_metrics({"a": 5}, step=3)    # out of order: kept as logged
    exp.log_metrics({"a": 6})            # 4
    exp.log_metrics({"a": 7}, step=4)    # duplicate: kept
    assert exp.last_step == 4
    run = read(exp)
    assert list(run.metrics["a"].steps) == [0, 1, 10, 11, 3, 4, 4]
    assert list(run.metrics["a"].values) == [1, 2, 3, 4, 5, 6, 7]


def test_numpy_integer_step_and_large_step(make_run):
    exp = make_run()
    exp.log_metrics({"a": 1}, step=np.int64(5))
    exp.log_metrics({"a": 2}, step=2**63 - 1)
    with pytest.raises(ExpmanValueError, match="overflow"):
        exp.log_metrics({"a": 3})
    run = read(exp)
    assert list(run.metrics["a"].steps) == [5, 2**63 - 1]


def test_sparse_keys_and_many_keys(make_run):
    exp = make_run()
    wide = {f"k{i}": float(i) for i in range(300)}   # more than the key cache
    exp.log_metrics(wide, step=0)
    exp.log_metrics({"k5": -1.0}, step=1)
    exp.log_metrics({"other": 9.0}, step=2)
    exp.log_metrics({"k299": 1.5, "k0": 2.5}, step=3)   # positions differ from the first call
    run = read(exp)
    assert len(run.metrics) == 301
    assert list(run.metrics["k5"].values) == [5.0, -1.0]
    assert list(run.metrics["k299"].steps) == [0, 3]
    assert list(run.metrics["k0"].values) == [0.0, 2.5]
    assert list(run.metrics["other"].steps) == [2]


def test_unicode_and_str_subclass_keys(make_run):
    class Name(str):
        pass

    exp = make_run()
    exp.log_metrics({"损失/train": 1.0, Name("acc"): 2.0, "a b": 3.0}, step=0)
    run = read(exp)
    assert set(run.metrics) == {"损失/train", "acc", "a b"}


@pytest.mark.parametrize(
    "metrics, step, exc, words",
    [
        ({"loss": "0.5"}, 0, ExpmanTypeError, ["'loss'", "str"]),
        ({"loss": None}, 0, ExpmanTypeError, ["'loss'", "NoneType"]),
        ({"loss": [1.0]}, 0, ExpmanTypeError, ["'loss'", "list"]),
        ({"loss": 1 + 2j}, 0, ExpmanTypeError, ["'loss'", "complex"]),
        ({"loss": 10**400}, 0, ExpmanValueError, ["'loss'", "too large"]),
        ({3: 1.0}, 0, ExpmanTypeError, ["str", "int", "3"]),
        ({"": 1.0}, 0, ExpmanValueError, ["empty"]),
        ({"loss": 1.0}, -1, ExpmanValueError, ["step", "-1"]),
        ({"loss": 1.0}, 1.5, ExpmanTypeError, ["step", "float"]),
        ({"loss": 1.0}, True, ExpmanTypeError, ["step", "bool"]),
        ({"loss": 1.0}, "3", ExpmanTypeError, ["step", "str"]),
        ({"loss": 1.0}, 2**64, ExpmanValueError, ["step"]),
        ({"ok": 1.0, "bad": object()}, 0, ExpmanTypeError, ["'bad'", "object"]),
    ],
)
def test_bad_input_names_the_problem_and_stores_nothing(make_run, metrics, step, exc, words):
    exp = make_run()
    exp.log_metrics({"loss": 0.25, "ok": 0.5}, step=0)
    with pytest.raises(exc) as info:
        exp.log_metrics(metrics, step=step)
    assert isinstance(info.value, ExpmanError)
    for word in words:
        assert word in str(info.value)
    exp.log_metrics({"loss": 0.75}, step=1)
    run = read(exp)
    assert list(run.metrics["loss"].values) == [0.25, 0.75]
    assert list(run.metrics["ok"].values) == [0.5]
    assert set(run.metrics) == {"loss", "ok"}        # no key of a rejected call defined
    assert exp.stats()["accepted"] == 2


def test_not_a_dict(make_run):
    exp = make_run()
    with pytest.raises(TypeError, match="dict"):
        exp.log_metrics([("loss", 1.0)])       # type: ignore[arg-type]
    with pytest.raises(TypeError):
        exp.log_metrics(None)                  # type: ignore[arg-type]


def test_rejected_call_leaves_step_counter(make_run):
    exp = make_run()
    exp.log_metrics({"a": 1.0})
    with pytest.raises(TypeError):
        exp.log_metrics({"a": "x"})
    exp.log_metrics({"a": 2.0})
    run = read(exp)
    assert list(run.metrics["a"].steps) == [0, 1]


def test_empty_dict_is_a_row_without_points(make_run):
    exp = make_run()
    exp.log_metrics({}, step=3)
    exp.log_metrics({"a": 1.0})
    run = read(exp)
    assert list(run.metrics["a"].steps) == [4]
    assert run.integrity["rows"] == 2


def test_write_after_close_raises(make_run):
    exp = make_run()
    exp.log_metrics({"a": 1.0})
    exp.close()
    with pytest.raises(RunClosedError):
        exp.log_metrics({"a": 2.0})
    with pytest.raises(RunClosedError):
        exp.info("late")
    with pytest.raises(RunClosedError):
        exp.log_params({"x": 1})
    with pytest.raises(RunClosedError):
        exp.flush()
    assert isinstance(RunClosedError("x"), RuntimeError)
    exp.close()                                # idempotent
    assert list(expman.open_run(exp.run_dir).metrics["a"].values) == [1.0]


def test_flush_makes_data_readable_while_running(make_run):
    exp = make_run(flush_interval=60)          # the timer never fires during the test
    for i in range(100):
        exp.log_metrics({"a": float(i)}, step=i)
    assert exp.flush() is True
    live = expman.open_run(exp.run_dir)
    assert live.status == "RUNNING"
    assert list(live.metrics["a"].values) == [float(i) for i in range(100)]
    s = exp.stats()
    assert (s["accepted"], s["written"], s["dropped"], s["pending"]) == (100, 100, 0, 0)


def test_eight_threads_land_exactly_with_order_kept(make_run):
    exp = make_run(buffer_size=1 << 16)        # small ring: producers must wait for the writer
    n, nthreads = 50_000, 8
    barrier = threading.Barrier(nthreads)

    def worker(t: int) -> None:
        barrier.wait()
        key = f"t{t}"
        for i in range(n):
            exp.log_metrics({key: float(i), "shared": float(t)}, step=i)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(nthreads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    run = read(exp)
    for t in range(nthreads):
        s = run.metrics[f"t{t}"]
        assert list(s.values) == [float(i) for i in range(n)]
        assert list(s.steps) == list(range(n))
    assert len(run.metrics["shared"]) == n * nthreads
    assert sorted(np.bincount(np.asarray(run.metrics["shared"].values, dtype=int))) == [n] * nthreads
    stats = exp.stats()
    assert stats["accepted"] == stats["written"] == n * nthreads
    assert stats["dropped"] == 0


def test_drop_policy_counts_instead_of_blocking(make_run):
    exp = make_run(buffer_size=1 << 16, on_full="drop", flush_interval=60)
    exp._pause_writer(True)                   # a stalled disk: the ring fills up
    for i in range(20_000):
        exp.log_metrics({"a": float(i)}, step=i)
    s = exp.stats()
    assert s["dropped"] >= 20_000 - (1 << 16) // 48
    exp._pause_writer(False)
    exp.flush()                               # the writer catches up; logging goes on
    for i in range(20_000, 20_100):
        exp.log_metrics({"a": float(i)}, step=i)
    assert s["accepted"] == 20_000
    run = read(exp)
    final = exp.stats()
    assert final["written"] + final["dropped"] == final["accepted"] == 20_100
    assert len(run.metrics["a"]) == final["written"]
    values = list(run.metrics["a"].values)
    assert values == sorted(values)            # kept records stay in order, none invented
    assert values[-100:] == [float(i) for i in range(20_000, 20_100)]


def test_memory_is_bounded(make_run):
    resource = pytest.importorskip("resource")   # POSIX only
    exp = make_run(buffer_size=1 << 20)
    keys = [f"m{i}" for i in range(20)]
    vals = [0.5] * 20
    for i in range(20_000):                    # warm up
        exp.log_metrics(dict(zip(keys, vals)), step=i)
    exp.flush()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for i in range(200_000):
        exp.log_metrics(dict(zip(keys, vals)), step=i)
    exp.flush()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert (after - before) * 1024 < 32 << 20   # ru_maxrss is KiB on Linux
    assert exp.stats()["written"] == 220_000


def test_too_large_record_is_refused(make_run):
    exp = make_run(buffer_size=64 << 10)
    with pytest.raises(ExpmanValueError, match="too large"):
        exp.log_metrics({f"k{i}": 1.0 for i in range(3000)})
    exp.log_metrics({"fine": 1.0})
    assert list(read(exp).metrics) == ["fine"]
