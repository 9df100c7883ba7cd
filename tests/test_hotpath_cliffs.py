"""log_metrics' fast paths are exact: equal-but-not-identical keys, numeric types
other than float, tensors in the autograd graph, a dict that grows while it is
read, and background rows that leave the step counter alone (issue 10, 15.3, 14.16).

Speed is measured in bench/hotpath.py, never here.
"""

from __future__ import annotations

import decimal
import fractions
import math

import pytest

from conftest import need

from expman import _core
from expman.errors import ExpmanTypeError, ExpmanValueError


def decoded(exp):
    """name -> (steps, values) in logged order, from a full decode after close."""
    exp.close()
    columns, _keys, report = _core.decode_metrics((exp.run_dir / "metrics.bin").read_bytes())
    assert report["unknown_points"] == 0 and report["corrupt_bytes"] == 0
    return {k: (list(c[0]), list(c[2])) for k, c in columns.items() if len(c[0])}


def test_keys_colliding_in_length_and_prefix_get_their_own_ids(make_run):
    exp = make_run()
    prefix = "train"
    for i in range(3):           # warm the position cache with built (non-literal) keys
        exp.log_metrics({f"{prefix}/loss_a": float(i), f"{prefix}/acc": 1.0}, step=i)
    # same length, same prefix, same position: a different key
    exp.log_metrics({f"{prefix}/loss_b": 10.0, f"{prefix}/acc": 2.0}, step=3)
    exp.log_metrics({f"{prefix}/loss_a": 4.0, f"{prefix}/acc": 3.0}, step=4)
    # one character apart at the end, and a key of another str kind at the same length
    exp.log_metrics({"train/loss_\u00e9": 5.0, f"{prefix}/acc": 4.0}, step=5)
    exp.log_metrics({"train/loss_\U0001f600": 6.0, f"{prefix}/acc": 5.0}, step=6)
    assert exp.stats()["keys"] == 5
    got = decoded(exp)
    assert got["train/loss_a"] == ([0, 1, 2, 4], [0.0, 1.0, 2.0, 4.0])
    assert got["train/loss_b"] == ([3], [10.0])
    assert got["train/loss_\u00e9"] == ([5], [5.0])
    assert got["train/loss_\U0001f600"] == ([6], [6.0])
    assert got["train/acc"] == ([0, 1, 2, 3, 4, 5, 6], [1.0, 1.0, 1.0, 2.0, 3.0, 4.0, 5.0])


def test_equal_keys_built_anew_share_one_id_at_every_position(make_run):
    exp = make_run()
    names = [f"m{j}" for j in range(70)]            # more than the 64 cached positions
    for i in range(5):
        exp.log_metrics({"".join(["m", str(j)]): float(i * 100 + j) for j in range(70)}, step=i)
    # non-ASCII keys (2- and 4-byte kinds) built anew, and a str subclass
    class Name(str):
        pass
    for i in range(3):
        exp.log_metrics({"\u00e9t\u00e9" + str(i * 0): 1.0, "\U0001f600" + "x": 2.0,
                         Name("sub"): 3.0}, step=10 + i)
    assert exp.stats()["keys"] == 73
    got = decoded(exp)
    for j, name in enumerate(names):
        assert got[name] == ([0, 1, 2, 3, 4], [float(i * 100 + j) for i in range(5)])
    assert got["\u00e9t\u00e90"] == ([10, 11, 12], [1.0] * 3)
    assert got["\U0001f600x"] == ([10, 11, 12], [2.0] * 3)
    assert got["sub"] == ([10, 11, 12], [3.0] * 3)


def test_numeric_types_take_their_exact_value(make_run):
    np = need("numpy")
    exp = make_run()
    cases = {
        "f64": np.float64(0.1), "f32": np.float32(0.1), "f16": np.float16(0.5),
        "i64": np.int64(-7), "u8": np.uint8(200), "npbool": np.bool_(True),
        "int": 12345678901, "small": 7, "negsmall": -3, "zero": 0, "digit_max": 2 ** 30 - 1,
        "neg_big": -(2 ** 62) - 1, "past_2_53": 2 ** 53 + 1,
        "bool": True, "decimal": decimal.Decimal("2.5"),
        "fraction": fractions.Fraction(1, 3), "nan": float("nan"), "neginf": -math.inf,
    }
    for step in range(3):            # the second call takes the learned type paths
        exp.log_metrics(dict(cases), step=step)
    got = decoded(exp)
    for k, v in cases.items():
        expected = float(v)
        for value in got[k][1]:
            assert value == expected or (math.isnan(value) and math.isnan(expected)), k


def test_numpy_scalars_read_from_their_value_field_keep_every_bit(make_run):
    """numpy's scalars are read straight from their value field once their type
    is learned: extremes of every width, signed zero, subnormals, inf and NaN
    come out as float(value) does. The first value of a type is a NaN here, so
    the type is learned from a later one."""
    np = need("numpy")
    exp = make_run()
    f32 = np.finfo(np.float32)
    columns = {
        "f32": [np.float32("nan"), np.float32(0.1), f32.max, -f32.max, f32.tiny,
                np.float32(1e-45), np.float32(-0.0), np.float32("inf"), np.float32("nan")],
        "f16": [np.float16(0.1), np.float16(65504), np.float16("-inf")],
    }
    for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64):
        info = np.iinfo(t)
        columns[t.__name__] = [t(info.min), t(info.max), t(0), t(info.max // 3), t(1)]
    rows = max(len(v) for v in columns.values())
    for step in range(rows):
        exp.log_metrics({k: v[step % len(v)] for k, v in columns.items()}, step=step)
    got = decoded(exp)
    for k, v in columns.items():
        expected = [float(v[s % len(v)]) for s in range(rows)]
        assert len(got[k][1]) == rows, k
        for value, want in zip(got[k][1], expected):
            assert (math.isnan(value) and math.isnan(want)) or (
                value == want and math.copysign(1, value) == math.copysign(1, want)), (k, value, want)


def test_bad_values_name_the_key_and_log_nothing(make_run):
    np = need("numpy")
    exp = make_run()
    with pytest.raises(ExpmanValueError, match="'big'"):
        exp.log_metrics({"ok": 1.0, "big": 10 ** 400})
    with pytest.raises(ExpmanTypeError, match="'s'"):
        exp.log_metrics({"ok": 1.0, "s": "1.0"})
    with pytest.raises(ExpmanTypeError, match="'arr'"):
        exp.log_metrics({"ok": 1.0, "arr": np.array([1.0, 2.0])})
    exp.log_metrics({"ok": 2.0}, step=0)
    assert decoded(exp) == {"ok": ([0], [2.0])}


def test_tensor_requiring_grad_is_detached_without_a_warning(make_run):
    torch = need("torch")
    exp = make_run()
    w = torch.tensor(1.5, requires_grad=True)
    loss = w * 2                            # in the graph: float() alone would warn
    exp.log_metrics({"loss": loss, "plain": torch.tensor(0.25)}, step=0)   # warnings are errors
    with pytest.raises(ExpmanTypeError, match="'vec'"):
        exp.log_metrics({"vec": torch.ones(2, requires_grad=True)})
    assert loss.requires_grad and w.grad is None   # the caller's tensor is untouched
    assert decoded(exp) == {"loss": ([0], [3.0]), "plain": ([0], [0.25])}


def test_a_float_that_adds_keys_cannot_overflow_the_buffers(make_run):
    """Issue 15.3: the count was checked only after the loop had written past it."""
    exp = make_run()
    metrics: dict = {}

    class Growing:
        def __float__(self):
            for j in range(200):
                metrics[f"added{j}"] = 1.0
            return 1.0

    metrics["first"] = 0.5
    metrics["grow"] = Growing()
    with pytest.raises(RuntimeError, match="changed size"):
        exp.log_metrics(metrics, step=0)
    exp.log_metrics({"after": 1.0}, step=1)
    assert exp.stats()["accepted"] == 1
    assert decoded(exp) == {"after": ([1], [1.0])}


def test_log_side_never_moves_the_step_none_sequence(make_run):
    exp = make_run()
    exp.log_metrics({"loss": 1.0})                   # step 0
    exp._log_side({"cpu": 10.0}, 1000)
    exp.log_metrics({"loss": 2.0})                   # step 1, not 1001
    exp._log_side({"cpu": 11.0}, 2000)
    exp._log_side({"cpu": 12.0}, 5)
    exp.log_metrics({"loss": 3.0})                   # step 2
    exp.log_metrics({"loss": 4.0}, step=10)
    exp._log_side({"cpu": 13.0}, 3)
    exp.log_metrics({"loss": 5.0})                   # step 11
    assert exp.last_step == 11
    with pytest.raises(ExpmanTypeError, match="step"):
        exp._log_side({"cpu": 1.0}, None)
    with pytest.raises(ExpmanValueError, match="step"):
        exp._log_side({"cpu": 1.0}, -1)
    got = decoded(exp)
    assert got["loss"] == ([0, 1, 2, 10, 11], [1.0, 2.0, 3.0, 4.0, 5.0])
    assert got["cpu"] == ([1000, 2000, 5, 3], [10.0, 11.0, 12.0, 13.0])
