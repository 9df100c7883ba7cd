"""expman: an experiment logger whose ``log_metrics()`` costs about 100 ns.

    from expman import Experiment
    with Experiment("mnist") as exp:
        exp.log_params({"lr": 1e-3})
        exp.log_metrics({"loss": 0.5}, step=0)
"""

from __future__ import annotations

from expman._version import __version__

try:
    from expman import _core  # noqa: F401
except ImportError as e:  # only when the extension is not built (tests/test_source_tree.py)
    from expman._unbuilt import core_missing
    raise core_missing(e) from e

from expman.errors import (
    CorruptRunError, ExpmanError, ExpmanTypeError, ExpmanValueError, RunClosedError,
    RunExistsError, RunLockedError, RunNotFoundError, UnsafePathError, WriterError,
)
TYPE_CHECKING = False     # typing itself costs ~40 % of a bare import; checkers know this idiom
if TYPE_CHECKING:
    from typing import Any

    from expman._current import (
        close, current, error, info, init, log_metrics, log_params, save_artifact, warn,
    )
    from expman.experiment import Experiment
    from expman.disk import disk_usage
    from expman.export import export_run
    from expman.layout import resolve_run
    from expman.reader import Metrics, Run, RunSummary, Series, list_runs, open_run
    from expman.sqlviews import sql
    from expman.table import runs
    from expman.tail import RunTail
    from expman.verify import verify_run

# Both sides load on first use: a training script never pays for the reader, and a
# reader (the CLI, a dashboard) never loads the writer, its lifecycle hooks or threads.
_LAZY = {"Experiment": "experiment",
         **{name: "_current" for name in ("init", "current", "log_metrics", "log_params", "info",
                                          "warn", "error", "save_artifact", "close")},
         "Metrics": "reader", "Run": "reader", "RunSummary": "reader", "Series": "reader",
         "list_runs": "reader", "open_run": "reader", "RunTail": "tail",
         "verify_run": "verify", "export_run": "export", "disk_usage": "disk",
         "resolve_run": "layout", "runs": "table", "sql": "sqlviews"}
_READER_NAMES = set(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is not None:
        import importlib
        value = getattr(importlib.import_module(f"expman.{module}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'expman' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _READER_NAMES)

__all__ = [
    "Experiment", "init", "current", "log_metrics", "log_params", "info", "warn", "error",
    "save_artifact", "close", "open_run", "list_runs", "Run", "RunSummary", "Series",
    "Metrics", "RunTail", "verify_run", "export_run", "disk_usage", "resolve_run", "runs", "sql",
    "ExpmanError", "ExpmanTypeError", "ExpmanValueError", "RunClosedError",
    "RunExistsError", "RunLockedError", "RunNotFoundError", "UnsafePathError", "WriterError",
    "CorruptRunError",
    "__version__",
]
