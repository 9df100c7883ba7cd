"""Turning user params into JSON, naming the key that cannot be turned."""

from __future__ import annotations

import enum
import pathlib
import sys
from collections.abc import Mapping
from typing import Any

from expman._fsutil import MAX_JSON_DEPTH
from expman.errors import ExpmanTypeError, ExpmanValueError
from expman.layout import json_float



MAX_DEPTH = MAX_JSON_DEPTH - 1
"""Levels a param may nest: deeper is a cycle or a mistake, named in the error. One
less than the readers' bound on a JSON file (the file's own object is a level), so
every params.json log_params writes is one every reader reads."""

def to_params(value: Any, where: str = "params") -> dict[str, Any]:
    """The JSON object ``log_params`` stores for ``value``: a dict, any Mapping
    (OmegaConf/Hydra configs), a dataclass instance or an argparse.Namespace."""
    converted = to_json(value, where)
    if not isinstance(converted, dict):
        raise ExpmanTypeError(
            f"log_params: expected a dict, a Mapping, a dataclass or an argparse.Namespace, "
            f"got {type(value).__name__}")
    return converted


def framework_params(value: Any, where: str = "hyperparameters") -> dict[str, Any]:
    """A framework's config as ``log_params`` stores it, never failing on an odd value.

    What the integrations pass (Lightning's ``save_hyperparameters()``, a model
    config, an optimizer's ``get_config()``) may hold classes, functions, modules
    or int-keyed dicts (``id2label``). Nesting is kept as it came, like any
    ``log_params`` call (the read model flattens it: expman.readmodel); keys become
    ``str``, and a value JSON cannot hold becomes its name (a class, a function)
    or its ``str()``, as Lightning's own loggers store it. None is ``{}``."""
    if value is None:
        return {}
    converted = to_json(value, where, lenient=True)
    if not isinstance(converted, dict):
        raise ExpmanTypeError(
            f"{where}: expected a dict, a Mapping, a dataclass or an argparse.Namespace, "
            f"got {type(value).__name__}")
    return converted


def to_json(value: Any, where: str, depth: int = 0, *, lenient: bool = False) -> Any:
    """A JSON-ready copy of value; ``where`` names it in errors (``params['a']['b']``).

    Keys are kept as written: ``{"optim": {"lr": 1}}`` stays nested and
    ``{"optim.lr": 1}`` stays one key with a dot, never merged into each other.
    ``lenient`` (framework_params): odd keys and values become text instead of errors."""
    if depth > MAX_DEPTH:
        raise ExpmanValueError(f"{where}: nested more than {MAX_DEPTH} levels deep (a cycle?)")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if not -(2**63) <= value < 2**64:
            if lenient:
                return str(value)
            raise ExpmanValueError(
                f"{where}: {value} does not fit a 64-bit JSON integer; pass str(value) or float(value)")
        return int(value)
    if isinstance(value, float):
        return json_float(float(value))      # NaN and infinities as strings (layout.py)
    if isinstance(value, enum.Enum):
        return to_json(value.value, where, depth + 1, lenient=lenient)
    module = type(value).__module__.split(".")[0]
    if module == "omegaconf":
        # DictConfig/ListConfig: resolved through OmegaConf itself (interpolations,
        # "???" kept as written); the module is loaded already if such a value exists
        from omegaconf import OmegaConf
        return to_json(OmegaConf.to_container(value, resolve=True), where, depth + 1,
                       lenient=lenient)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str) and not lenient:
                raise ExpmanTypeError(
                    f"{where}: keys must be str, got {type(k).__name__} ({k!r})")
            k = str(k)
            out[k] = to_json(v, f"{where}[{k!r}]", depth + 1, lenient=lenient)
        return out
    if isinstance(value, (list, tuple)):
        return [to_json(v, f"{where}[{i}]", depth + 1, lenient=lenient)
                for i, v in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        return sorted((to_json(v, f"{where}[...]", depth + 1, lenient=lenient) for v in value),
                      key=repr)
    if isinstance(value, pathlib.PurePath):
        return str(value)
    argparse = sys.modules.get("argparse")     # a Namespace exists only if it is loaded
    if argparse is not None and isinstance(value, argparse.Namespace):
        return to_json(vars(value), where, depth + 1, lenient=lenient)
    if type(value).__module__ == "datetime" and hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(type(value), "__dataclass_fields__") and not isinstance(value, type):
        import dataclasses
        return to_json({f.name: getattr(value, f.name) for f in dataclasses.fields(value)},
                       where, depth + 1, lenient=lenient)
    if module == "torch" and type(value).__name__ in ("device", "dtype"):
        return str(value)           # "cuda:0", "torch.float32"; torch is never imported here
    tolist = getattr(value, "tolist", None)      # numpy scalars and arrays, 0-d tensors
    if callable(tolist) and module in ("numpy", "torch", "jax"):
        return to_json(tolist(), where, depth + 1, lenient=lenient)
    if lenient:
        name = getattr(value, "__name__", None)      # a class, a function: its name, never called
        return name if isinstance(name, str) and (isinstance(value, type) or callable(value)) \
            else str(value)
    raise ExpmanTypeError(
        f"{where}: cannot store {type(value).__name__} ({value!r:.60}) as a param; "
        "use str, int, float, bool, None, lists or dicts of those")
