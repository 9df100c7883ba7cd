"""``import expman.mlflow as mlflow``: MLflow's fluent tracking API over expman runs.

Porting an MLflow script is changing its import line. An MLflow experiment is
an expman experiment, a run an expman run (its name is the run's ``run_id``);
params, metrics (step 0 unless given, as MLflow), artifacts, ``log_dict``,
``log_text`` and ``log_figure`` files are stored as expman stores them. Tags are
kept whole in run.json (``mlflow_tags``), and those that fit expman's tag rules
also become expman tags (``key=value``, or ``key`` for an empty value) so the
dashboard can filter by them. Nested runs (``start_run(nested=True)``) share an
expman group named after the outermost run.

``set_tracking_uri`` with a path or a ``file:`` URI sets the base dir; any other
URI (``http://``, ``sqlite://``, ``databricks``) is ignored with a warning: runs
stay local folders (``expman export-mlflow`` takes them to a server later).
A call that is not covered raises ``MlflowFeatureMissing`` naming it
(docs/integrations.md lists what is and isn't covered).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from expman import runmeta
from expman.errors import ExpmanError, ExpmanTypeError, ExpmanValueError
from expman.experiment import Experiment
from expman.layout import ARTIFACTS_DIR, FAILED, FINAL_STATUSES, FINISHED, RUNNING
from expman.params import framework_params

__all__ = ["set_tracking_uri", "get_tracking_uri", "set_experiment", "start_run", "end_run",
           "active_run", "last_active_run", "log_param", "log_params", "log_metric",
           "log_metrics", "set_tag", "set_tags", "log_artifact", "log_artifacts", "log_dict",
           "log_text", "log_figure", "ActiveRun", "MlflowFeatureMissing", "DEFAULT_EXPERIMENT",
           "TAGS_FIELD"]

DEFAULT_EXPERIMENT = "Default"      # MLflow's own default experiment name
TAGS_FIELD = "mlflow_tags"          # run.json: every tag as the script set it
_NOTE_TAG = "mlflow.note.content"   # MLflow's description tag: expman's notes


class MlflowFeatureMissing(ExpmanError, AttributeError):
    """An MLflow feature expman.mlflow does not provide."""


def _missing(what: str) -> MlflowFeatureMissing:
    return MlflowFeatureMissing(
        f"expman.mlflow does not provide {what}; it covers the fluent tracking calls "
        "(start_run, log_param(s), log_metric(s), set_tag(s), log_artifact(s), log_dict, "
        "log_text, log_figure, end_run, active_run; docs/integrations.md)")


class RunInfo:
    """``run.info``: MLflow's names for the expman run's identity."""

    def __init__(self, exp: Experiment, parent: str | None) -> None:
        self.run_id = self.run_uuid = self.run_name = exp.run_name
        self.experiment_id = exp.name
        self.artifact_uri = (exp.run_dir / ARTIFACTS_DIR).as_uri()
        self.start_time = int(time.time() * 1000)
        self.end_time: int | None = None
        self.status = RUNNING
        self.parent_run_id = parent


class RunData:
    """``run.data``: params as given, the last value of each metric, the tags."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.metrics: dict[str, float] = {}
        self.tags: dict[str, str] = {}


class ActiveRun:
    """What ``start_run`` returns; a context manager that ends the run (FAILED on an
    exception), as MLflow's."""

    def __init__(self, exp: Experiment, parent: ActiveRun | None) -> None:
        self.experiment = exp
        self.parent = parent
        self.info: RunInfo = RunInfo(exp, parent.info.run_id if parent is not None else None)
        self.data = RunData()
        self.has_children = False
        self._scratch: str | None = None

    def scratch(self) -> Path:
        """A folder for files made from a call (log_dict, log_text, log_figure): kept
        until the run is closed, which waits for every copy."""
        if self._scratch is None:
            self._scratch = tempfile.mkdtemp(prefix="expman-mlflow-")
        return Path(self._scratch)

    def __enter__(self) -> ActiveRun:
        return self

    def __exit__(self, tp: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.info.status == RUNNING:
            _end(self, FINISHED if exc is None else FAILED)

    def __repr__(self) -> str:
        return f"<expman.mlflow.ActiveRun {self.info.experiment_id}/{self.info.run_id}>"


_tracking_uri: str | None = None
_base: str | None = None            # None: expman's rule ($EXPMAN_DIR, else ./experiments)
_experiment: str | None = None
_stack: list[ActiveRun] = []
_last: ActiveRun | None = None


def _base_from_uri(uri: str) -> str | None:
    """The base dir a tracking URI names, or None (with a warning) for a store
    that is not a local folder."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return url2pathname(parsed.path)
    if parsed.scheme and len(parsed.scheme) > 1:      # a Windows drive letter is not a scheme
        warnings.warn(f"expman.mlflow: tracking URI {uri!r} is not a local folder; ignored, "
                      "runs are written under the expman base dir (`expman export-mlflow` "
                      "copies them to an MLflow server)", RuntimeWarning, stacklevel=3)
        return None
    return uri


def set_tracking_uri(uri: str | os.PathLike[str]) -> None:
    """A folder path or ``file:`` URI becomes the base dir; other URIs are ignored
    with a warning."""
    global _tracking_uri, _base
    text = os.fspath(uri)
    if not isinstance(text, str):
        raise ExpmanTypeError(f"set_tracking_uri: expected a str or a path, got {type(uri).__name__}")
    _tracking_uri = text
    _base = _base_from_uri(text)


def get_tracking_uri() -> str:
    from expman.layout import base_dir
    return Path(os.path.abspath(base_dir(_current_base()))).as_uri()


def _current_base() -> str | None:
    if _tracking_uri is None and os.environ.get("MLFLOW_TRACKING_URI"):
        set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    return _base


class ExperimentInfo:
    """What ``set_experiment`` returns: MLflow's experiment identity (its name)."""

    def __init__(self, name: str) -> None:
        self.name = self.experiment_id = name

    def __repr__(self) -> str:
        return f"<expman.mlflow.Experiment {self.name}>"


def set_experiment(experiment_name: str | None = None,
                   experiment_id: str | None = None) -> ExperimentInfo:
    """Later runs go to this experiment (an expman experiment folder)."""
    global _experiment
    name = experiment_name if experiment_name is not None else experiment_id
    if not isinstance(name, str) or not name:
        raise ExpmanValueError(f"set_experiment: pass experiment_name or experiment_id, "
                               f"got {experiment_name!r}, {experiment_id!r}")
    _experiment = name
    return ExperimentInfo(name)


def _expman_tags(tags: Mapping[str, str]) -> list[str]:
    """The tags that fit expman's rules, as ``key=value`` (``key`` if the value is
    empty); MLflow's own ``mlflow.*`` tags stay only in ``mlflow_tags``."""
    out = []
    for k, v in tags.items():
        if k.startswith("mlflow."):
            continue
        text = k if v == "" else f"{k}={v}"
        try:
            out += runmeta.check_tags([text])
        except ExpmanError:
            pass                    # kept whole in run.json's mlflow_tags
    return out


def _check_tags(tags: Any, where: str) -> dict[str, str]:
    if tags is None:
        return {}
    if not isinstance(tags, Mapping):
        raise ExpmanTypeError(f"{where}: tags must be a dict, got {type(tags).__name__}")
    out = {}
    for k, v in tags.items():
        if not isinstance(k, str) or not k:
            raise ExpmanValueError(f"{where}: tag keys must be non-empty str, got {k!r}")
        out[k] = str(v)
    return out


def start_run(run_id: str | None = None, experiment_id: str | None = None,
              run_name: str | None = None, nested: bool = False,
              parent_run_id: str | None = None, tags: Mapping[str, Any] | None = None,
              description: str | None = None, log_system_metrics: bool | None = None) -> ActiveRun:
    """Start (or, with ``run_id``, resume) a run; nested runs join the outermost
    run's group. Returns an ``ActiveRun`` (a context manager)."""
    if _stack and not nested:
        raise ExpmanValueError(
            f"start_run: run {_stack[-1].info.run_id} is already active; end it with "
            "mlflow.end_run() or pass nested=True (as MLflow requires)")
    if parent_run_id is not None and (not _stack or _stack[-1].info.run_id != parent_run_id):
        raise _missing("start_run(parent_run_id=) naming a run that is not the active one")
    user_tags = _check_tags(tags, "start_run")
    parent = _stack[-1] if _stack else None
    group = None
    if parent is not None:
        group = _group_of(parent)
        user_tags.setdefault("mlflow.parentRunId", parent.info.run_id)
    if description is not None:
        user_tags[_NOTE_TAG] = description
    experiment = experiment_id or _experiment or DEFAULT_EXPERIMENT
    options: dict[str, Any] = {
        "tags": _expman_tags(user_tags), "notes": user_tags.get(_NOTE_TAG), "group": group,
        "system_metrics": None if log_system_metrics is None else bool(log_system_metrics)}
    if run_id is not None:
        # MLflow keeps every point of a resumed run, whatever its step: one history
        exp = Experiment(experiment, run_id, _current_base(), resume="duplicates", **options)
    else:
        exp = _new_run(experiment, run_name, options)
    active = ActiveRun(exp, parent)
    active.data.tags.update(user_tags)
    if parent is not None:
        parent.has_children = True
    _stack.append(active)
    return active


def _new_run(experiment: str, run_name: str | None, options: dict[str, Any]) -> Experiment:
    """MLflow lets runs share a name; an expman run name is its folder, so a taken
    name gets ``-2``, ``-3``, ... (a sweep that reuses one run_name keeps running)."""
    from expman.errors import RunExistsError
    for n in range(1, 10_000):
        name = run_name if run_name is None or n == 1 else f"{run_name}-{n}"
        try:
            return Experiment(experiment, name, _current_base(), **options)
        except RunExistsError:
            if run_name is None:
                raise
    raise ExpmanValueError(f"start_run: 10,000 runs named {run_name!r} already exist")


def _group_of(run: ActiveRun) -> str:
    """The group a nested run joins: named after the outermost run."""
    while run.parent is not None:
        run = run.parent
    return run.info.run_id


def _stored_group(run: ActiveRun) -> str | None:
    from expman.reader import open_run
    try:
        group = open_run(run.experiment.run_dir).meta.get(runmeta.GROUP)
    except (OSError, ExpmanError):
        return None
    return group if isinstance(group, str) else None


def _end(run: ActiveRun, status: str) -> None:
    """Close ``run`` (and any run nested in it), then write its tags into run.json."""
    global _last
    mlflow_status = status.upper() if isinstance(status, str) else status
    if mlflow_status not in FINAL_STATUSES:
        raise ExpmanValueError(f"end_run: status must be one of {', '.join(FINAL_STATUSES)}, "
                               f"got {status!r}")
    while _stack and _stack[-1] is not run and run in _stack:
        _end(_stack[-1], status)
    if run in _stack:
        _stack.remove(run)
    exp = run.experiment
    try:
        if mlflow_status == FINISHED:
            exp.close()
        else:   # expman closes a run FINISHED or FAILED; MLflow's KILLED is kept in run.json
            exp.close(FAILED)
    finally:
        run.info.status = mlflow_status
        run.info.end_time = int(time.time() * 1000)
        _last = run
        if run._scratch is not None:
            shutil.rmtree(run._scratch, ignore_errors=True)
        changes: dict[str, Any] = {TAGS_FIELD: dict(run.data.tags)}
        if mlflow_status not in (FINISHED, FAILED):
            changes["mlflow_status"] = mlflow_status
        if run.has_children and run.parent is None and _stored_group(run) is None:
            changes[runmeta.GROUP] = run.info.run_id    # the parent joins its children's group
        runmeta.update_closed_run(exp.run_dir, changes)
        new_tags = _expman_tags(run.data.tags)
        if new_tags:
            runmeta.set_tags(exp.run_dir, add=new_tags)


def end_run(status: str = FINISHED) -> None:
    """End the active run (``FINISHED``, ``FAILED`` or ``KILLED``); nothing without one."""
    if _stack:
        _end(_stack[-1], status)


def _end_all() -> None:
    """At exit: every run still active ends and gets its tags.

    Registered when this module is imported, so it runs after expman's own exit
    handler (atexit runs handlers last-registered first), which has already closed
    each run with the truth (FAILED for an uncaught exception or ``sys.exit(1)``,
    KILLED on SIGTERM) where MLflow would say FINISHED. Should it run first (a run
    was open before this import), a run the process is failing is left to expman's
    handler instead of being marked FINISHED."""
    from expman.lifecycle import status_for_exit
    if status_for_exit()[0] != FINISHED:
        _stack[:] = [r for r in _stack if r.experiment.status != RUNNING]
    while _stack:
        try:
            _end(_stack[-1], FINISHED)
        except Exception as e:     # at exit: report, and end the others
            warnings.warn(f"expman.mlflow: could not end a run at exit: {e}", RuntimeWarning,
                          stacklevel=1)
            if _stack:
                _stack.pop()


atexit.register(_end_all)


def active_run() -> ActiveRun | None:
    return _stack[-1] if _stack else None


def last_active_run() -> ActiveRun | None:
    """The active run, else the run ended last."""
    return _stack[-1] if _stack else _last


def _run(run_id: str | None = None) -> ActiveRun:
    """The active run, started on first use as MLflow's logging calls do."""
    if not _stack:
        start_run()
    run = _stack[-1]
    if run_id is not None and run_id != run.info.run_id:
        raise _missing(f"logging into run {run_id!r}, which is not the active run "
                       f"{run.info.run_id!r}")
    return run


def log_param(key: str, value: Any, synchronous: bool | None = None) -> Any:
    log_params({key: value})
    return value


def log_params(params: Mapping[str, Any], synchronous: bool | None = None,
               run_id: str | None = None) -> None:
    """Stored as given (MLflow turns each into text; expman keeps the type)."""
    if not isinstance(params, Mapping):
        raise ExpmanTypeError(f"log_params: expected a dict, got {type(params).__name__}")
    run = _run(run_id)
    converted = framework_params(dict(params), "log_params")
    run.experiment.log_params(converted)
    run.data.params.update({k: str(v) for k, v in params.items()})


def _check_step(step: Any) -> int:
    if step is None:
        return 0                        # MLflow's default step
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ExpmanValueError(f"log_metric: step must be a non-negative int, got {step!r}")
    return step


def _check_timestamp(timestamp: Any) -> float | None:
    """MLflow's timestamp (ms since the epoch) as Unix seconds, or None for now."""
    if timestamp is None:
        return None
    if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)):
        raise ExpmanValueError(f"log_metric: timestamp must be milliseconds since the epoch, "
                               f"got {timestamp!r:.60}")
    return timestamp / 1000


def log_metric(key: str, value: float, step: int | None = None, synchronous: bool | None = None,
               timestamp: int | None = None, run_id: str | None = None, **kwargs: Any) -> None:
    log_metrics({key: value}, step=step, synchronous=synchronous, timestamp=timestamp,
                run_id=run_id, **kwargs)


def log_metrics(metrics: Mapping[str, float], step: int | None = None,
                synchronous: bool | None = None, run_id: str | None = None,
                timestamp: int | None = None, **kwargs: Any) -> None:
    """Logged at ``step`` (0 when not given, as MLflow)."""
    if kwargs:
        raise _missing("log_metric(s)(" + ", ".join(f"{k}=" for k in kwargs) + ")")
    run = _run(run_id)
    at = _check_step(step)
    wall_time = _check_timestamp(timestamp)
    if wall_time is None:
        run.experiment.log_metrics(dict(metrics), at)
    else:
        run.experiment.log_metrics_at(dict(metrics), at, wall_time=wall_time)
    for k, v in metrics.items():
        run.data.metrics[k] = v


def set_tag(key: str, value: Any, synchronous: bool | None = None) -> None:
    set_tags({key: value})


def set_tags(tags: Mapping[str, Any], synchronous: bool | None = None) -> None:
    """Kept in run.json at ``end_run`` (a running run's run.json is its process's)."""
    run = _run()
    run.data.tags.update(_check_tags(tags, "set_tags"))


def _artifact_name(artifact_path: str | None, name: str) -> str:
    return f"{artifact_path.strip('/')}/{name}" if artifact_path else name


def log_artifact(local_path: str | os.PathLike[str], artifact_path: str | None = None,
                 run_id: str | None = None) -> None:
    """Stored as ``artifacts/<artifact_path>/<file name>``."""
    src = Path(os.fspath(local_path))
    _run(run_id).experiment.save_artifact(src, _artifact_name(artifact_path, src.name))


def log_artifacts(local_dir: str | os.PathLike[str], artifact_path: str | None = None,
                  run_id: str | None = None) -> None:
    """Every file under ``local_dir``, by its path relative to it."""
    root = Path(os.fspath(local_dir))
    if not root.is_dir():
        raise FileNotFoundError(2, f"log_artifacts: not a folder: {root}", str(root))
    run = _run(run_id)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        run.experiment.save_artifact(path, _artifact_name(artifact_path,
                                                          path.relative_to(root).as_posix()))


def _log_made_file(run: ActiveRun, artifact_file: str, write: Any) -> None:
    if not isinstance(artifact_file, str) or not artifact_file:
        raise ExpmanValueError(f"artifact_file must be a non-empty str, got {artifact_file!r}")
    path = run.scratch() / f"{len(os.listdir(run.scratch()))}-{Path(artifact_file).name}"
    write(path)
    run.experiment.save_artifact(path, artifact_file)


def log_dict(dictionary: Any, artifact_file: str, run_id: str | None = None) -> None:
    """JSON, or YAML for a ``.yaml``/``.yml`` name, as MLflow writes it."""
    def write(path: Path) -> None:
        if artifact_file.endswith((".yaml", ".yml")):
            import importlib
            yaml: Any = importlib.import_module("yaml")     # MLflow's own dependency
            path.write_text(yaml.safe_dump(dictionary, default_flow_style=False), encoding="utf-8")
        else:
            import json
            path.write_text(json.dumps(dictionary, indent=2), encoding="utf-8")
    _log_made_file(_run(run_id), artifact_file, write)


def log_text(text: str, artifact_file: str, run_id: str | None = None) -> None:
    _log_made_file(_run(run_id), artifact_file,
                   lambda path: path.write_text(text, encoding="utf-8"))


def log_figure(figure: Any, artifact_file: str, *, save_kwargs: dict[str, Any] | None = None,
               run_id: str | None = None) -> None:
    """A matplotlib figure saved as the file (PNG for a ``.png`` name)."""
    if not callable(getattr(figure, "savefig", None)):
        raise _missing(f"log_figure of a {type(figure).__name__} (matplotlib figures are covered)")
    _log_made_file(_run(run_id), artifact_file,
                   lambda path: figure.savefig(path, **(save_kwargs or {})))


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    raise _missing(f"mlflow.{name}")
