"""The read model: the one place each figure a surface shows about a run is worked out.

Every surface (CLI, dashboard, lake, ``expman.runs()``, exports) serializes these
answers; none computes its own. A second computation of the same figure is a bug
even when it agrees today.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["PARAM_SEPARATOR", "flatten_params"]

PARAM_SEPARATOR = "."
"""Nested params are flattened for tables, filters, columns and the lake by joining
keys with a dot: ``{"optim": {"lr": 1}}`` is ``optim.lr``. Stored params stay nested."""

_SCALARS = (str, int, float, bool, type(None))


def flatten_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Params as one level of dotted keys, each value a JSON scalar.

    Nested mappings become dotted keys; lists, tuples, empty mappings and anything
    else that is not a scalar become compact JSON text (``"[0.9,0.999]"``), so a
    column or a filter never meets an unhashable value. Iterative: a deep document
    costs no recursion."""
    out: dict[str, Any] = {}
    stack: list[tuple[str, Mapping[Any, Any]]] = [("", params)]
    while stack:
        prefix, mapping = stack.pop()
        for k, v in mapping.items():
            key = f"{prefix}{k}"
            if isinstance(v, Mapping) and v:
                stack.append((key + PARAM_SEPARATOR, v))
            elif isinstance(v, _SCALARS):
                out[key] = v
            else:
                out[key] = _json_text(v)
    return dict(sorted(out.items()))


def _json_text(value: Any) -> str:
    import orjson
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):
        return repr(value)
