"""``import expman.wandb as wandb``: the part of the wandb API most scripts use.

Porting a wandb script is changing its import line. ``init`` starts an expman
run (project -> experiment, name -> run name, dir -> base dir), ``log`` follows
wandb's step rules (an internal step that ``log`` advances; ``commit=False``
accumulates into the current step; an explicit ``step`` below the current one
is refused with a warning, as wandb does), ``config`` becomes params,
``summary`` is stored in run.json at ``finish``, ``define_metric`` is recorded,
``save`` stores artifacts, ``Image``/``Histogram`` become expman media.

Anything else of wandb raises ``WandbFeatureMissing`` (an ``AttributeError``)
naming it. Nothing is sent anywhere: the run is a local folder.
"""

from __future__ import annotations

import glob as _glob
import os
import time
import warnings
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any, Mapping

from expman.errors import ExpmanError, ExpmanTypeError, ExpmanValueError, RunClosedError
from expman.experiment import Experiment
from expman.layout import FAILED

__all__ = ["init", "log", "finish", "config", "summary", "run", "define_metric", "save", "alert",
           "Image", "Histogram", "Run", "Config", "Summary", "WandbFeatureMissing"]

DEFAULT_PROJECT = "uncategorized"       # wandb's own default project name
# wandb.init arguments that change nothing about what is stored locally
_IGNORED_INIT = {"entity", "job_type", "save_code", "anonymous", "reinit", "magic",
                 "allow_val_change", "force", "quiet", "settings"}


class WandbFeatureMissing(ExpmanError, AttributeError):
    """A wandb feature expman.wandb does not provide."""


def _missing(what: str) -> WandbFeatureMissing:
    return WandbFeatureMissing(
        f"expman.wandb does not provide {what}; it covers init, log, config, summary, finish, "
        "run, define_metric, save, Image and Histogram (docs/integrations.md)")


class Config(MutableMapping[str, Any]):
    """``wandb.config``: attribute and dict access; every change rewrites params.json."""

    def __init__(self) -> None:
        object.__setattr__(self, "_data", {})
        object.__setattr__(self, "_exp", None)

    def _bind(self, exp: Experiment | None) -> None:
        object.__setattr__(self, "_exp", exp)
        if exp is None:
            self._data.clear()

    def _store(self, values: Mapping[str, Any]) -> None:
        if self._exp is None:
            raise RunClosedError("wandb.config: call wandb.init() before setting config "
                                 "(expman.wandb stores it in the run's params.json)")
        self._exp.log_params(values)
        self._data.update(values)

    def update(self, d: Any = None, allow_val_change: bool | None = None, **kw: Any) -> None:  # type: ignore[override]
        values = dict(_as_dict(d) if d is not None else {}, **kw)
        for k in values:
            if not isinstance(k, str):
                raise ExpmanTypeError(f"wandb.config: keys must be str, got {type(k).__name__} ({k!r})")
        self._store(values)

    def setdefaults(self, d: Mapping[str, Any]) -> None:
        self._store({k: v for k, v in _as_dict(d).items() if k not in self._data})

    def as_dict(self) -> dict[str, Any]:
        return dict(self._data)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.update({key: value})

    def __delitem__(self, key: str) -> None:
        raise _missing("deleting a config key (wandb does not either)")

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(f"wandb.config has no key {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self.update({name: value})

    def __repr__(self) -> str:
        return f"expman.wandb.Config({self._data!r})"


def _as_dict(d: Any) -> dict[str, Any]:
    """dicts, argparse Namespaces and other objects with ``__dict__`` (as wandb takes)."""
    if isinstance(d, Mapping):
        return dict(d)
    if hasattr(d, "__dict__"):
        return {k: v for k, v in vars(d).items() if not k.startswith("_")}
    raise ExpmanTypeError(f"wandb.config: cannot take {type(d).__name__}; pass a dict or a Namespace")


class Summary(dict[str, Any]):
    """``wandb.summary``: the last value of each logged key unless set by hand."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"wandb.summary has no key {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


class Image:
    """``wandb.Image(data_or_path, caption=...)``: logged as an expman PNG image."""

    def __init__(self, data_or_path: Any, mode: str | None = None, caption: str | None = None,
                 **kwargs: Any) -> None:
        if kwargs:
            raise _missing("wandb.Image(" + ", ".join(f"{k}=" for k in kwargs) + ")")
        if mode is not None:
            raise _missing("wandb.Image(mode=...); pass an array in the layout you want")
        self.data, self.caption = data_or_path, caption


class Histogram:
    """``wandb.Histogram(sequence, num_bins=64)`` or ``np_histogram=(counts, edges)``."""

    def __init__(self, sequence: Any = None, np_histogram: Any = None, num_bins: int = 64) -> None:
        if (sequence is None) == (np_histogram is None):
            raise ExpmanValueError("wandb.Histogram: pass sequence or np_histogram, one of them")
        self.sequence, self.np_histogram, self.num_bins = sequence, np_histogram, num_bins


class Run:
    """``wandb.run``: the run ``init`` started."""

    def __init__(self, exp: Experiment, project: str) -> None:
        self._exp = exp
        self.project = project
        self.config = config
        self.summary = summary
        self._step = 0
        self._pending: dict[str, Any] = {}
        self._media: list[tuple[str, Any]] = []
        self._defined: dict[str, dict[str, Any]] = {}

    @property
    def name(self) -> str:
        return self._exp.run_name

    @property
    def id(self) -> str:
        return self._exp.run_name

    @property
    def dir(self) -> str:
        return str(self._exp.run_dir)

    @property
    def step(self) -> int:
        return self._step

    @property
    def experiment(self) -> Experiment:
        """The expman run behind it."""
        return self._exp

    def log(self, data: Mapping[str, Any], step: int | None = None,
            commit: bool | None = None) -> None:
        """wandb's rules: data accumulates into the current step; the step is
        written and advanced when ``commit`` (default when no step is given) or
        when a later ``step`` arrives. A key given twice for one step is kept
        twice (wandb keeps the last), so nothing logged is lost."""
        if not isinstance(data, Mapping):
            raise ExpmanTypeError(f"wandb.log: expected a dict, got {type(data).__name__}")
        if step is not None:
            if isinstance(step, bool) or not isinstance(step, int) or step < 0:
                raise ExpmanValueError(f"wandb.log: step must be a non-negative int, got {step!r}")
            if step < self._step:
                warnings.warn(f"expman.wandb: step {step} is below the current step {self._step}; "
                              "this log call is ignored (as wandb does)", RuntimeWarning, stacklevel=3)
                return
            if step > self._step:
                self._commit()
                self._step = step
        for key, value in _flatten(data):
            if isinstance(value, (Image, Histogram)):
                self._media.append((key, value))
            else:
                if key in self._pending:   # wandb would overwrite it in the row; expman keeps both
                    self._commit()
                self._pending[key] = _number(key, value)
        if commit or (commit is None and step is None):
            self._commit()
            self._step += 1

    def _commit(self) -> None:
        if self._pending:
            self._exp.log_metrics(self._pending, self._step)
            summary.update(self._pending)
            self._pending = {}
        for key, item in self._media:
            if isinstance(item, Image):
                self._exp.log_image(key, item.data, self._step)
                if item.caption:
                    self._exp.log_text(key, item.caption, self._step)
            elif item.np_histogram is not None:
                counts, edges = item.np_histogram
                self._exp.log_histogram(key, step=self._step, edges=edges, counts=counts)
            else:
                self._exp.log_histogram(key, item.sequence, self._step, bins=item.num_bins)
        self._media = []

    def define_metric(self, name: str, step_metric: str | None = None, **options: Any) -> dict[str, Any]:
        """Recorded in run.json's ``define_metric`` at ``finish`` (expman plots every
        metric by step)."""
        if not isinstance(name, str) or not name:
            raise ExpmanValueError(f"define_metric: name must be a non-empty str, got {name!r}")
        record = {"name": name, "step_metric": step_metric, **options}
        from expman.params import to_json
        record = dict(to_json(record, f"define_metric({name!r})"))
        self._defined[name] = record
        return record

    def save(self, glob_str: str | os.PathLike[str], base_path: str | os.PathLike[str] | None = None,
             policy: str = "live") -> list[str]:
        """Copy the matching files into artifacts/ (relative to ``base_path`` when
        given, else by file name); returns the stored paths."""
        pattern = os.fspath(glob_str)
        matches = sorted(p for p in _glob.glob(pattern, recursive=True) if os.path.isfile(p))
        if not matches:
            raise FileNotFoundError(2, f"wandb.save: no file matches {pattern!r}", pattern)
        stored = []
        for m in matches:
            name = (Path(os.path.relpath(m, os.fspath(base_path))).as_posix()
                    if base_path is not None else None)
            stored.append(str(self._exp.save_artifact(m, name)))
        return stored

    def finish(self, exit_code: int | None = None, quiet: bool | None = None) -> None:
        """Write the pending step, store the summary, close the run (FAILED if exit_code)."""
        global run
        try:
            self._commit()
        finally:
            try:
                if exit_code:
                    self._exp.close(FAILED, exit=int(exit_code))
                else:
                    self._exp.close()
            finally:
                if run is self:
                    run = None
                try:
                    _store_summary(self._exp, dict(summary), self._defined)
                except Exception as e:     # never hides the error that stopped the close
                    warnings.warn(f"expman.wandb: could not store the summary: {e}",
                                  RuntimeWarning, stacklevel=2)
                summary.clear()
                config._bind(None)

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, tp: Any, exc: Any, tb: Any) -> None:
        self.finish(exit_code=1 if exc is not None else None)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise _missing(f"wandb.run.{name}")

    def __repr__(self) -> str:
        return f"<expman.wandb.Run {self.project}/{self.name} at {self.dir}>"


def _store_summary(exp: Experiment, values: dict[str, Any], defined: dict[str, Any]) -> None:
    from expman.params import to_json
    from expman.runmeta import update_closed_run
    changes: dict[str, Any] = {"summary": to_json(values, "wandb.summary")}
    if defined:
        changes["define_metric"] = defined
    update_closed_run(exp.run_dir, changes)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested dicts as ``a.b`` keys, the way wandb's summary and history name them."""
    for k, v in data.items():
        if not isinstance(k, str):
            raise ExpmanTypeError(f"wandb.log: keys must be str, got {type(k).__name__} ({k!r})")
        if isinstance(v, Mapping):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _number(key: str, value: Any) -> Any:
    if isinstance(value, (int, float)):
        return value
    if hasattr(value, "item") and (getattr(value, "ndim", None) == 0
                                   or getattr(value, "size", None) == 1
                                   or (callable(getattr(value, "numel", None)) and value.numel() == 1)):
        return value.item()
    raise _missing(f"logging {type(value).__name__} values (key {key!r}); log numbers, "
                   "wandb.Image or wandb.Histogram")


config = Config()
summary = Summary()
run: Run | None = None


def init(project: str | None = None, name: str | None = None, config: Any = None,
         group: str | None = None, tags: list[str] | None = None, notes: str | None = None,
         dir: str | os.PathLike[str] | None = None, resume: bool | str | None = None,
         id: str | None = None, mode: str | None = None, **kwargs: Any) -> Run:
    """Start a run: ``<dir or $EXPMAN_DIR or ./experiments>/<project>/<name or id>``.

    ``resume``: True/"allow" appends to the named run if it exists, "must"
    requires it to, "never"/None/False starts a new one. ``mode="disabled"`` is
    not provided (it would silently log nothing).
    """
    global run
    unknown = sorted(set(kwargs) - _IGNORED_INIT)
    if unknown:
        raise _missing("wandb.init(" + ", ".join(f"{k}=" for k in unknown) + ")")
    if mode not in (None, "online", "offline"):
        raise _missing(f"wandb.init(mode={mode!r})")
    if name is not None and id is not None and name != id:
        raise ExpmanValueError(f"wandb.init: name {name!r} and id {id!r} differ; expman names "
                               "a run once (its folder)")
    run_name = name if name is not None else id
    if resume not in (None, False, True, "allow", "must", "never", "auto"):
        raise ExpmanValueError(f"wandb.init: resume must be True, 'allow', 'must', 'never' or "
                               f"'auto', got {resume!r}")
    from expman.layout import RUN_FILE, base_dir
    project = project or DEFAULT_PROJECT
    base = base_dir(dir)
    exists = run_name is not None and (base / project / run_name / RUN_FILE).is_file()
    if resume == "must" and not exists:
        raise ExpmanValueError(f"wandb.init(resume='must'): no run {project}/{run_name} under {base}")
    if resume in (True, "allow", "must", "auto") and run_name is None:
        raise ExpmanValueError("wandb.init(resume=...) needs name= or id= to find the run")
    if run is not None:
        run.finish()
    exp = Experiment(project, run_name, base, resume=bool(resume) and resume != "never" and exists,
                     tags=tags, notes=notes, group=group)
    globals()["config"]._bind(exp)
    run = Run(exp, project)
    if config is not None:
        globals()["config"].update(config)
    return run


def _current() -> Run:
    if run is None:
        raise RunClosedError("You must call wandb.init() before using this (expman.wandb)")
    return run


def log(data: Mapping[str, Any], step: int | None = None, commit: bool | None = None) -> None:
    _current().log(data, step, commit)


def finish(exit_code: int | None = None, quiet: bool | None = None) -> None:
    """Finish the current run; a no-op without one (as wandb)."""
    if run is not None:
        run.finish(exit_code)


def define_metric(name: str, step_metric: str | None = None, **options: Any) -> dict[str, Any]:
    return _current().define_metric(name, step_metric, **options)


def save(glob_str: str | os.PathLike[str], base_path: str | os.PathLike[str] | None = None,
         policy: str = "live") -> list[str]:
    return _current().save(glob_str, base_path, policy)


_alerted: dict[str, float] = {}         # title -> when it was last recorded (wait_duration)


def alert(title: str, text: str = "", level: Any = "INFO", wait_duration: Any = None) -> None:
    """``wandb.alert``: recorded as an ``alert`` event of the run, the way expman's
    watchdogs record theirs (expman.watch: shown by show/list/tail, delivered by a
    watching run's webhook). Nothing is sent from here. A title alerted again
    within ``wait_duration`` seconds (a number or a timedelta) is skipped, as in wandb."""
    from expman.watch.live import record_alert
    current = _current()
    level = str(getattr(level, "value", level)).upper()
    wait = getattr(wait_duration, "total_seconds", lambda: wait_duration)()
    now = time.time()
    if wait is not None and now - _alerted.get(title, -float("inf")) < float(wait):
        return
    _alerted[title] = now
    record_alert(current.experiment, f"{title}: {text}" if text else str(title),
                 rule="wandb.alert", step=current.step, extra={"level": level, "title": title})


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    raise _missing(f"wandb.{name}")
