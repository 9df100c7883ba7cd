"""Turning user params into JSON, naming the key that cannot be turned."""

from __future__ import annotations

import enum
import pathlib
from typing import Any

from expman.errors import ExpmanTypeError, ExpmanValueError
from expman.layout import json_float



def to_json(value: Any, where: str) -> Any:
    """A JSON-ready copy of value; ``where`` names it in errors (``params['a']['b']``)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if not -(2**63) <= value < 2**64:
            raise ExpmanValueError(
                f"{where}: {value} does not fit a 64-bit JSON integer; pass str(value) or float(value)")
        return int(value)
    if isinstance(value, float):
        return json_float(float(value))      # NaN and infinities as strings (layout.py)
    if isinstance(value, enum.Enum):
        return to_json(value.value, where)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ExpmanTypeError(
                    f"{where}: keys must be str, got {type(k).__name__} ({k!r})")
            out[k] = to_json(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        return sorted((to_json(v, f"{where}[...]") for v in value), key=repr)
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if type(value).__module__ == "datetime" and hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(type(value), "__dataclass_fields__") and not isinstance(value, type):
        import dataclasses
        return to_json({f.name: getattr(value, f.name) for f in dataclasses.fields(value)}, where)
    tolist = getattr(value, "tolist", None)      # numpy scalars and arrays, 0-d tensors
    if callable(tolist) and type(value).__module__.split(".")[0] in ("numpy", "torch", "jax"):
        return to_json(tolist(), where)
    raise ExpmanTypeError(
        f"{where}: cannot store {type(value).__name__} ({value!r:.60}) as a param; "
        "use str, int, float, bool, None, lists or dicts of those")
