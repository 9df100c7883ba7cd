"""expman: an experiment logger whose ``log_metrics()`` costs about 100 ns.

    from expman import Experiment
    with Experiment("mnist") as exp:
        exp.log_params({"lr": 1e-3})
        exp.log_metrics({"loss": 0.5}, step=0)
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

try:
    from expman import _core  # noqa: F401
except ImportError as e:  # pragma: no cover - only when the extension is not built
    raise ImportError(
        "expman's compiled core (expman._core) is not built. Install the package with "
        "`pip install .` (or `pip install -e .`), which compiles it; it needs a C compiler "
        f"and Cython. Original error: {e}") from e

from expman._current import (
    close, current, error, info, init, log_metrics, log_params, save_artifact, warn,
)
from expman.errors import (
    CorruptRunError, ExpmanError, ExpmanTypeError, ExpmanValueError, RunClosedError,
    RunExistsError, RunLockedError, WriterError,
)
from expman.experiment import Experiment

if TYPE_CHECKING:
    from expman.reader import Metrics, Run, RunSummary, Series, list_runs, open_run

# The reader loads on first use: a training script that only logs never pays for it.
_READER_NAMES = {"Metrics", "Run", "RunSummary", "Series", "list_runs", "open_run"}


def __getattr__(name: str) -> Any:
    if name in _READER_NAMES:
        from expman import reader
        value = getattr(reader, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'expman' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _READER_NAMES)

__all__ = [
    "Experiment", "init", "current", "log_metrics", "log_params", "info", "warn", "error",
    "save_artifact", "close", "open_run", "list_runs", "Run", "RunSummary", "Series",
    "Metrics", "ExpmanError", "ExpmanTypeError", "ExpmanValueError", "RunClosedError",
    "RunExistsError", "RunLockedError", "WriterError", "CorruptRunError", "__version__",
]
