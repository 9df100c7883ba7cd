"""``import expman.wandb as wandb``: the part of the wandb API most scripts use.

Porting a wandb script is changing its import line. ``init`` starts an expman
run (project -> experiment, name -> run name, dir -> base dir), ``log`` follows
wandb's step rules (an internal step that ``log`` advances; ``commit=False``
accumulates into the current step; an explicit ``step`` below the current one
is refused with a warning, as wandb does), ``config`` becomes params,
``summary`` is stored in run.json at ``finish``, ``define_metric`` is recorded,
``save`` stores artifacts, ``Image``/``Histogram`` become expman media.

A logging call never stops a script: a value that is not a number (a string,
None, a list) becomes a message tagged with its key and step, as the framework
bridges do; a ``Table`` is stored as an expman table (``Experiment.log_table``).
``mode="disabled"`` (or ``WANDB_MODE=disabled``) logs nothing and returns a run
whose every method is a no-op, as wandb does; ``watch`` logs gradient and
parameter histograms through torch hooks every ``log_freq`` steps.

A wandb call that is not covered raises ``WandbFeatureMissing`` (an
``AttributeError``) naming it: those are the calls whose absence would change
what the script computes or stores (docs/integrations.md lists them with the
reason). Nothing is sent anywhere: the run is a local folder.
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
from expman.layout import FAILED, RUNNING

__all__ = ["init", "log", "finish", "config", "summary", "run", "define_metric", "save", "alert",
           "watch", "unwatch", "login", "Image", "Histogram", "Table", "Run", "Config",
           "Summary", "WandbFeatureMissing"]

DEFAULT_PROJECT = "uncategorized"       # wandb's own default project name
# wandb.init arguments that change nothing about what is stored locally
_IGNORED_INIT = {"entity", "job_type", "save_code", "anonymous", "reinit", "magic",
                 "allow_val_change", "force", "quiet", "settings"}


class WandbFeatureMissing(ExpmanError, AttributeError):
    """A wandb feature expman.wandb does not provide."""


def _missing(what: str) -> WandbFeatureMissing:
    return WandbFeatureMissing(
        f"expman.wandb does not provide {what}; it covers init, log, config, summary, finish, "
        "run, define_metric, save, watch, Image, Histogram and Table (docs/integrations.md)")


class Config(MutableMapping[str, Any]):
    """``wandb.config``: attribute and dict access; every change rewrites params.json."""

    def __init__(self) -> None:
        object.__setattr__(self, "_data", {})
        object.__setattr__(self, "_exp", None)
        object.__setattr__(self, "_disabled", False)

    def _bind(self, exp: Experiment | None, disabled: bool = False) -> None:
        """``disabled``: a ``mode="disabled"`` run keeps values for the script to read
        back (``wandb.config.lr`` after ``init(config=...)``) and stores nothing."""
        object.__setattr__(self, "_exp", exp)
        object.__setattr__(self, "_disabled", disabled)
        if exp is None and not disabled:
            self._data.clear()

    def _store(self, values: Mapping[str, Any]) -> None:
        if self._exp is None and not self._disabled:
            raise RunClosedError("wandb.config: call wandb.init() before setting config "
                                 "(expman.wandb stores it in the run's params.json)")
        if self._exp is not None:
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


class Table:
    """``wandb.Table(columns=, data=)`` or ``dataframe=``: ``wandb.log({key: table})``
    stores a version of table ``key`` at the row's step (``Experiment.log_table``;
    read back with ``run.tables``)."""

    def __init__(self, columns: list[Any] | None = None, data: Any = None, rows: Any = None,
                 dataframe: Any = None, dtype: Any = None, optional: Any = True,
                 allow_mixed_types: bool = False, log_mode: str | None = None) -> None:
        if dataframe is not None:
            columns = [str(c) for c in dataframe.columns]
            data = dataframe.values.tolist()
        data = data if data is not None else rows
        self.data: list[list[Any]] = [list(r) for r in data] if data is not None else []
        width = len(self.data[0]) if self.data else 0
        self.columns: list[str] = ([str(c) for c in columns] if columns is not None
                                   else [f"Column_{i + 1}" for i in range(width)])
        for i, row in enumerate(self.data):
            if len(row) != len(self.columns):
                raise ExpmanValueError(f"wandb.Table: row {i} has {len(row)} values for "
                                       f"{len(self.columns)} columns {self.columns}")

    def add_data(self, *values: Any) -> None:
        if len(values) != len(self.columns):
            raise ExpmanValueError(f"wandb.Table.add_data: {len(values)} values for "
                                   f"{len(self.columns)} columns {self.columns}")
        self.data.append(list(values))

    def add_column(self, name: str, data: list[Any]) -> None:
        if self.data and len(data) != len(self.data):
            raise ExpmanValueError(f"wandb.Table.add_column({name!r}): {len(data)} values for "
                                   f"{len(self.data)} rows")
        self.columns.append(str(name))
        if not self.data:
            self.data = [[v] for v in data]
        else:
            for row, v in zip(self.data, data):
                row.append(v)

    def get_column(self, name: str) -> list[Any]:
        i = self.columns.index(name)
        return [row[i] for row in self.data]


class Run:
    """``wandb.run``: the run ``init`` started."""

    def __init__(self, exp: Experiment | None, project: str, name: str | None = None) -> None:
        self._exp = exp             # None: mode="disabled", every call is a no-op
        self._name = name
        self.project = project
        self.config = config
        self.summary = summary
        self._step = 0
        self._pending: dict[str, Any] = {}
        self._media: list[tuple[str, Any]] = []
        self._defined: dict[str, dict[str, Any]] = {}
        self._hooks: list[Any] = []

    @property
    def disabled(self) -> bool:
        return self._exp is None

    @property
    def name(self) -> str:
        return self._exp.run_name if self._exp is not None else (self._name or "disabled")

    @property
    def id(self) -> str:
        return self.name

    @property
    def dir(self) -> str:
        if self._exp is None:
            import tempfile
            return tempfile.gettempdir()
        return str(self._exp.run_dir)

    @property
    def url(self) -> str | None:
        """The run folder as a ``file://`` URL (None for a disabled run, as wandb)."""
        return self._exp.run_dir.as_uri() if self._exp is not None else None

    def get_url(self) -> str | None:
        return self.url

    @property
    def step(self) -> int:
        return self._step

    @property
    def experiment(self) -> Experiment | None:
        """The expman run behind it (None when disabled)."""
        return self._exp

    def log(self, data: Mapping[str, Any], step: int | None = None,
            commit: bool | None = None) -> None:
        """wandb's rules: data accumulates into the current step; the step is
        written and advanced when ``commit`` (default when no step is given) or
        when a later ``step`` arrives. A key given twice for one step is kept
        twice (wandb keeps the last), so nothing logged is lost."""
        if not isinstance(data, Mapping):
            raise ExpmanTypeError(f"wandb.log: expected a dict, got {type(data).__name__}")
        if self._exp is None:
            return
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
            number = _number(value)
            if number is None:          # media, a table, or text: stored when the step is written
                self._media.append((key, value))
            else:
                if key in self._pending:   # wandb would overwrite it in the row; expman keeps both
                    self._commit()
                self._pending[key] = number
        if commit or (commit is None and step is None):
            self._commit()
            self._step += 1

    def _commit(self) -> None:
        if self._exp is None:
            return
        if self._pending:
            self._exp.log_metrics(self._pending, self._step)
            summary.update(self._pending)
            self._pending = {}
        for key, item in self._media:
            if isinstance(item, Image):
                self._exp.log_image(key, item.data, self._step)
                if item.caption:
                    self._exp.log_text(key, item.caption, self._step)
            elif isinstance(item, Histogram):
                if item.np_histogram is not None:
                    counts, edges = item.np_histogram
                    self._exp.log_histogram(key, step=self._step, edges=edges, counts=counts)
                else:
                    self._exp.log_histogram(key, item.sequence, self._step, bins=item.num_bins)
            elif isinstance(item, Table):
                self._exp.log_table(key, item.data, columns=item.columns, step=self._step)
            else:                       # text, None, a list: a message, as the bridges keep them
                self._exp.log_text(key, item if isinstance(item, str) else repr(item), self._step)
        self._media = []

    def watch(self, models: Any, criterion: Any = None, log: str | None = "gradients",
              log_freq: int = 1000, idx: int | None = None, log_graph: bool = False) -> None:
        """Histograms of gradients (``gradients/<name>``) and/or parameters
        (``parameters/<name>``) every ``log_freq`` backward (gradients) or forward
        (parameters) passes of a torch module, at the current step.

        Between two histograms a hook only counts; a histogram is binned on the
        tensor's own device (``torch.histc``, 64 bins), so one costs one pass over
        the tensor and a 64-number copy."""
        if log not in ("gradients", "parameters", "all", None):
            raise ExpmanValueError(f"wandb.watch: log must be 'gradients', 'parameters', 'all' "
                                   f"or None, got {log!r}")
        if isinstance(log_freq, bool) or not isinstance(log_freq, int) or log_freq < 1:
            raise ExpmanValueError(f"wandb.watch: log_freq must be a positive int, got {log_freq!r}")
        if self._exp is None or log is None:
            return
        for model in (models if isinstance(models, (list, tuple)) else [models]):
            if not callable(getattr(model, "named_parameters", None)):
                raise ExpmanTypeError(f"wandb.watch: expected a torch.nn.Module, got "
                                      f"{type(model).__name__}")
            if log in ("parameters", "all"):
                self._hooks.append(model.register_forward_hook(
                    _every(log_freq, lambda m, i, o, model=model: self._log_parameters(model))))
            if log in ("gradients", "all"):
                for pname, param in model.named_parameters():
                    if param.requires_grad:
                        self._hooks.append(param.register_hook(_every(
                            log_freq, lambda g, tag=f"gradients/{pname}": self._log_tensor(tag, g))))

    def unwatch(self, models: Any = None) -> None:
        """Remove every hook ``watch`` added."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def _log_parameters(self, model: Any) -> None:
        for pname, param in model.named_parameters():
            self._log_tensor(f"parameters/{pname}", param)

    def _log_tensor(self, tag: str, tensor: Any) -> None:
        import torch
        if self._exp is None or self._exp.status != RUNNING or tensor is None:
            return
        with torch.no_grad():
            t = tensor.detach().flatten()
            if not t.is_floating_point():
                t = t.float()
            t = t[torch.isfinite(t)]
            if not t.numel():
                return
            lo, hi = t.min().item(), t.max().item()
            if lo == hi:
                lo, hi = lo - 0.5, hi + 0.5
            counts = torch.histc(t.float(), bins=_WATCH_BINS, min=lo, max=hi)
        width = (hi - lo) / _WATCH_BINS
        edges = [lo + i * width for i in range(_WATCH_BINS)] + [hi]
        self._exp.log_histogram(tag, step=self._step, edges=edges,
                                counts=[int(c) for c in counts.tolist()])

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
        if self._exp is None:
            return []
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
        self.unwatch()
        if self._exp is None:
            if run is self:
                run = None
            summary.clear()
            config._bind(None)
            return
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
        if name.startswith("_"):
            raise AttributeError(name)
        if self._exp is None:       # wandb's disabled run answers every call with a no-op
            return _NoOp()
        raise _missing(f"wandb.run.{name}")

    def __repr__(self) -> str:
        if self._exp is None:
            return f"<expman.wandb.Run {self.project}/{self.name} (disabled)>"
        return f"<expman.wandb.Run {self.project}/{self.name} at {self.dir}>"


class _NoOp:
    """What a disabled run returns for anything: callable, any attribute, any result."""

    def __call__(self, *args: Any, **kwargs: Any) -> _NoOp:
        return self

    def __getattr__(self, name: str) -> _NoOp:
        if name.startswith("__"):
            raise AttributeError(name)
        return self

    def __bool__(self) -> bool:
        return False


_WATCH_BINS = 64


def _every(n: int, fn: Any) -> Any:
    """A hook that calls ``fn`` on its n-th, 2n-th, ... call (as wandb's
    ``log_freq``) and only counts otherwise."""
    calls = [0]

    def hook(*args: Any) -> None:
        calls[0] += 1
        if calls[0] % n == 0:
            fn(*args)
    return hook


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


def _number(value: Any) -> Any:
    """value as a metric (a real number, a one-element array or tensor), else None."""
    if isinstance(value, (int, float)):
        return value
    if hasattr(value, "item") and (getattr(value, "ndim", None) == 0
                                   or getattr(value, "size", None) == 1
                                   or (callable(getattr(value, "numel", None)) and value.numel() == 1)):
        try:
            item = value.item()
        except (TypeError, ValueError, RuntimeError):
            return None
        return item if isinstance(item, (int, float)) else None
    return None


config = Config()
summary = Summary()
run: Run | None = None


def init(project: str | None = None, name: str | None = None, config: Any = None,
         group: str | None = None, tags: list[str] | None = None, notes: str | None = None,
         dir: str | os.PathLike[str] | None = None, resume: bool | str | None = None,
         id: str | None = None, mode: str | None = None, **kwargs: Any) -> Run:
    """Start a run: ``<dir or $EXPMAN_DIR or ./experiments>/<project>/<name or id>``.

    ``resume``: True/"allow" appends to the named run if it exists, "must"
    requires it to, "never"/None/False starts a new one. ``mode`` (else
    ``$WANDB_MODE``; ``WANDB_DISABLED=true`` too): "online", "offline" and
    "dryrun" log locally, "disabled" logs nothing and returns a run whose every
    method is a no-op (``config`` still holds the values given, as wandb's).
    """
    global run
    unknown = sorted(set(kwargs) - _IGNORED_INIT)
    if unknown:
        raise _missing("wandb.init(" + ", ".join(f"{k}=" for k in unknown) + ")")
    if mode is None:
        disabled_env = os.environ.get("WANDB_DISABLED", "").lower() in ("true", "1", "yes")
        mode = "disabled" if disabled_env else (os.environ.get("WANDB_MODE") or None)
    if mode not in (None, "online", "offline", "dryrun", "disabled"):
        raise ExpmanValueError(f"wandb.init: mode must be 'online', 'offline' or 'disabled', "
                               f"got {mode!r}")
    if mode == "disabled":
        if run is not None:
            run.finish()
        globals()["config"]._bind(None, disabled=True)
        run = Run(None, project or DEFAULT_PROJECT, name if name is not None else id)
        if config is not None:
            globals()["config"].update(config)
        return run
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
    if current.experiment is None:              # mode="disabled": nothing is recorded
        return
    level = str(getattr(level, "value", level)).upper()
    wait = getattr(wait_duration, "total_seconds", lambda: wait_duration)()
    now = time.time()
    if wait is not None and now - _alerted.get(title, -float("inf")) < float(wait):
        return
    _alerted[title] = now
    record_alert(current.experiment, f"{title}: {text}" if text else str(title),
                 rule="wandb.alert", step=current.step, extra={"level": level, "title": title})


def watch(models: Any, criterion: Any = None, log: str | None = "gradients",
          log_freq: int = 1000, idx: int | None = None, log_graph: bool = False) -> None:
    _current().watch(models, criterion, log, log_freq, idx, log_graph)


def unwatch(models: Any = None) -> None:
    if run is not None:
        run.unwatch(models)


def login(*args: Any, **kwargs: Any) -> bool:
    """Nothing to log in to: runs are local folders."""
    return True


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    if run is not None and run.disabled:    # mode="disabled": wandb.Artifact(...) etc. no-ops too
        return _NoOp()
    raise _missing(f"wandb.{name}")
