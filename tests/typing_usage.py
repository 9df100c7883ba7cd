"""A small, typed use of expman's public API.

``tests/test_typing.py`` runs ``mypy --strict`` on this file (so the package's
annotations, ``_core.pyi`` and ``py.typed`` are what an editor or a user's CI
sees) and also runs ``main()`` so the file cannot drift from the real API.
Not collected by pytest on its own.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import expman
from expman import Experiment, ExpmanError, Metrics, Run, Series, open_run

if TYPE_CHECKING:
    from typing_extensions import assert_type
else:
    def assert_type(value: Any, _type: Any) -> Any:
        return value


def train(base: Path) -> Path:
    with Experiment("typed", base_dir=base, capture_env=False, system_metrics=False,
                    flush_interval=0.05) as exp:
        exp.log_params({"lr": 1e-3, "layers": [64, 64]})
        for step in range(3):
            metrics: dict[str, float] = {"loss": 1.0 / (step + 1), "acc": step / 3}
            exp.log_metrics(metrics, step=step)
        exp.log_metrics({"loss": 0.1})                 # step=None: last step + 1
        exp.info("done")
        assert_type(exp.flush(timeout=5.0), bool)
        assert_type(exp.last_step, "int | None")
        stats = assert_type(exp.stats(), "dict[str, int]")
        assert stats["accepted"] == 4
        run_dir = assert_type(exp.run_dir, Path)
    return run_dir


def read(run_dir: Path) -> float | None:
    run = assert_type(open_run(run_dir), Run)
    assert_type(run.status, str)
    metrics = assert_type(run.metrics, Metrics)
    loss = assert_type(metrics["loss"], Series)
    assert len(loss) == 4
    return float(loss.values[-1])


def module_api(base: Path) -> None:
    exp = expman.init("typed-module", base_dir=base, capture_env=False)
    assert_type(exp, Experiment)
    expman.log_metrics({"x": 1.0}, step=0)
    expman.close()
    try:
        expman.current()
    except ExpmanError as e:
        assert isinstance(e, RuntimeError)


def main(base: Path) -> None:
    last = read(train(base))
    assert last is not None and abs(last - 0.1) < 1e-12
    module_api(base)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("experiments"))
