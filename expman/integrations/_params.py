"""Hyperparameters from any config object, flattened the way Lightning's loggers do.

One rule for every integration: ``{"optim": {"lr": 0.1}}`` is stored as
``{"optim/lr": 0.1}``, whether it came as a dict, an ``argparse.Namespace``, an
OmegaConf config, a dataclass or a mix of them, so params from two frameworks
line up in ``expman list`` and the dashboard. Leaves that JSON cannot hold become
their ``str()`` (a class its name), so logging hyperparameters never fails on an
odd value, as with Lightning's own loggers.
"""

from __future__ import annotations

import dataclasses
import enum
import pathlib
from argparse import Namespace
from collections.abc import Mapping
from typing import Any

__all__ = ["flatten_params", "to_mapping"]

_INT_RANGE = (-(2**63), 2**64)


def _is_omegaconf(value: Any) -> bool:
    return type(value).__module__.split(".")[0] == "omegaconf"


def to_mapping(value: Any) -> Any:
    """A dict for a Namespace, dataclass instance or OmegaConf DictConfig; anything else as is.

    An OmegaConf ListConfig becomes a list. Interpolations are resolved, as
    Lightning's loggers do before storing an OmegaConf config.
    """
    if isinstance(value, Namespace):
        return vars(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if _is_omegaconf(value) and hasattr(value, "_metadata"):
        from omegaconf import OmegaConf          # only reached when the user passed one
        return OmegaConf.to_container(value, resolve=True)
    return value


def flatten_params(params: Any, delimiter: str = "/") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}``; lists of dicts are numbered (``a/0/b``).

    ``params`` may be None, a Mapping, a Namespace, a dataclass or an OmegaConf
    config. Keys become ``str``; leaves become JSON-ready values.
    """
    if params is None:
        return {}
    top = to_mapping(params)
    if not isinstance(top, Mapping):
        from expman.errors import ExpmanTypeError
        raise ExpmanTypeError(
            f"hyperparameters: expected a dict, Namespace, dataclass or OmegaConf config, "
            f"got {type(params).__name__}")
    out: dict[str, Any] = {}
    _flatten(top, "", delimiter, out)
    return out


def _flatten(mapping: Mapping[Any, Any], prefix: str, delimiter: str, out: dict[str, Any]) -> None:
    for k, v in mapping.items():
        key = f"{prefix}{delimiter}{k}" if prefix else str(k)
        v = to_mapping(v)
        if isinstance(v, Mapping):
            _flatten(v, key, delimiter, out)
        elif isinstance(v, (list, tuple)) and v and all(
                isinstance(to_mapping(item), Mapping) for item in v):
            for i, item in enumerate(v):
                _flatten(to_mapping(item), f"{key}{delimiter}{i}", delimiter, out)
        else:
            out[key] = _leaf(v)


def _leaf(value: Any) -> Any:
    """A JSON-ready leaf: primitives kept, numbers unwrapped, the rest as text."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value) if _INT_RANGE[0] <= value < _INT_RANGE[1] else str(value)
    if isinstance(value, float):
        return float(value)                      # NaN/inf: params.json spells them
    if isinstance(value, enum.Enum):
        return _leaf(value.value)
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_leaf(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    if isinstance(value, type):
        return value.__name__
    item = getattr(value, "item", None)          # numpy scalars, one-element tensors
    if callable(item) and getattr(value, "ndim", None) == 0:
        try:
            return _leaf(item())
        except (TypeError, ValueError, RuntimeError):
            pass
    if callable(value) and hasattr(value, "__name__"):
        return value.__name__                    # functions: their name, never called
    return str(value)
