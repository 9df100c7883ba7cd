"""The Experiment: a run folder, its lifecycle, and the hot methods of the core.

``log_metrics`` and ``flush`` are inherited from the compiled ``Core`` type
unchanged, so a call goes straight into C with no Python frame in between.
"""

from __future__ import annotations

import operator
import os
import threading
import time
import warnings
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any, Iterable, Mapping, Sequence

from expman import (
    _core, branches, environment, launcher, layout, lifecycle, loss, runlock, runmeta, summary,
)
from expman._fsutil import (
    atomic_write_json, check_name, check_relative, inside, open_under, read_json_nofollow,
)
from expman.artifacts import ArtifactCopier
from expman.errors import (
    ExpmanTypeError, ExpmanValueError, RunClosedError,
)
from expman.layout import (
    ARTIFACTS_DIR, FAILED, FINISHED, HEARTBEAT_INTERVAL, METRICS_FILE, OUTPUT_FILE,
    PARAMS_FILE, RUNNING, STATUSES, SUMMARY_FILE, SUMMARY_INTERVAL,
)
from expman.layout import base_dir as _resolve_base_dir
from expman.params import to_params
from expman.runfolder import RunFolder

__all__ = ["Experiment", "STATUSES", "MANY_METRIC_NAMES"]

_O_BINARY = getattr(os, "O_BINARY", 0)
# More distinct metric names than this is almost always a name built from the step
# (f"loss_{step}"): each one becomes a series. Warned once, with the count.
MANY_METRIC_NAMES = 10_000
MAX_WALL_TIME = 9.2e9      # Unix seconds a row's int64 nanosecond time holds (year 2261)


class Experiment(_core.Core):
    """One run of an experiment, written to ``<base_dir>/<name>/<run_name>/``.

    Use it as a context manager, or call ``close()``; an unclosed run closes
    itself at interpreter exit or when garbage-collected.

    One process writes a run at a time (``RunLockedError`` otherwise). Under a
    launcher (torchrun, SLURM), every rank opens one shared run and writes its
    own streams; ``ranks=[0]`` lets only the listed ranks write (expman.launcher,
    docs/scale.md). ``watch=["nan", "stall"]`` (or ``True`` for the default rules)
    starts watchdogs on the run, as ``watch()`` does (docs/watch.md).

    Branches (expman.branches, docs/format.md): ``fork_from="exp/run@5000"`` (or
    ``(run_spec, 5000)``) starts a run whose history up to step 5000 is that run's,
    by reference; ``rewind(step)`` opens a branch at ``step``; ``resume=True``
    followed by a first step at or below the last one logged opens a branch there
    (``resume="duplicates"``: rows appended to one history, as before).
    """

    __slots__ = ("_name", "_run_name", "_run_dir", "_base_dir", "_meta", "_meta_lock",
                 "_params", "_copier", "_env_thread", "_pid", "_fds", "_status",
                 "_closing", "_close_lock", "_on_error", "_warned_keys",
                 "_rank", "_world_size", "_meta_name", "_lock", "_muted", "_sampler",
                 "_capture", "_media_lock", "_summary_base", "_summary_lock",
                 "_summary_stop", "_summary_thread", "_summary_bytes", "_loss_base",
                 "_next_branch", "_branch_lock", "_resume_end", "_fork")

    _meta: dict[str, Any]

    def __init__(
        self,
        name: str,
        run_name: str | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        *,
        resume: bool | str = False,
        fork_from: Any = None,
        flush_interval: float = 0.2,
        buffer_size: int = 4 << 20,
        on_full: str = "block",
        on_error: str = "raise",
        block_timeout: float = 10.0,
        capture_env: bool = True,
        handle_signals: bool = True,
        ranks: Iterable[int] | None = None,
        system_metrics: float | bool | None = None,    # None: every 10 s with psutil
        tags: list[str] | None = None,
        notes: str | None = None,
        group: str | None = None,
        capture_output: bool = False,
        fsync_interval: float | None = None,
        watch: Any = None,
    ) -> None:
        self._status = "NEW"
        self._lock: runlock.RunLock | None = None
        self._muted = False
        self._sampler: Any = None
        self._capture = None
        self._summary_base: dict[str, Any] = {}     # metrics already in the file at a resume
        self._summary_lock = threading.Lock()
        self._summary_stop = threading.Event()
        self._summary_thread: threading.Thread | None = None
        self._summary_bytes = -1
        self._loss_base: tuple[int, int, int] = (0, 0, 0)
        self._next_branch = 1
        self._branch_lock = threading.Lock()
        self._resume_end = -1
        self._fork: dict[str, Any] | None = None
        if resume not in (True, False, RESUME_DUPLICATES):
            raise ExpmanValueError(f"resume must be True, False or {RESUME_DUPLICATES!r}, "
                                   f"got {resume!r:.80}")
        from expman import sysmetrics       # on first use: `import expman` stays lean
        sysmetrics.interval_from_option(system_metrics)     # a bad value fails before any I/O
        if watch is not None and watch is not False:
            # watchdogs (docs/watch.md): True is the default rules; a bad rule fails here
            from expman.watch.rules import parse_rules
            watch = parse_rules(None if watch is True else watch)
        described: dict[str, Any] = {runmeta.TAGS: runmeta.check_tags(tags),
                                     runmeta.NOTES: runmeta.check_notes(notes),
                                     runmeta.GROUP: runmeta.check_group(group)}
        self._closing = False
        # held for a whole close: a second closer (another thread) waits for the
        # first instead of returning before the data is durable
        self._close_lock = threading.RLock()
        self._on_error = on_error
        self._warned_keys = False
        self._fds: list[int] = []
        self._pid = os.getpid()
        self._name = check_name("experiment name", name)
        if run_name is not None:
            check_name("run_name", run_name)
        if not 0.001 <= flush_interval <= 60:
            raise ExpmanValueError(f"flush_interval must be in [0.001, 60] s, got {flush_interval!r}")
        if fsync_interval is not None and not (
                isinstance(fsync_interval, (int, float)) and 0.001 <= fsync_interval <= 86400):
            raise ExpmanValueError(
                f"fsync_interval must be None or seconds in [0.001, 86400], got {fsync_interval!r}")
        if buffer_size < 64 << 10:
            raise ExpmanValueError(f"buffer_size must be at least 64 KiB, got {buffer_size!r}")
        # ranks of one job join one run folder (expman.launcher: rank, agreed name)
        launch = launcher.detect(run_name)
        self._rank, self._world_size = launch.rank, launch.world_size
        self._meta_name = layout.rank_file(layout.RUN_FILE, launch.rank)
        logging_ranks = _check_ranks(ranks, launch.world_size)
        run_name = launch.run_name
        if run_name is not None:
            check_name("run_name", run_name)
        resume = resume or launch.restart > 0       # torchrun restarted the job: go on
        # one rule everywhere (expman.layout): explicit, then $EXPMAN_DIR, then ./experiments
        self._base_dir = Path(os.path.abspath(_resolve_base_dir(base_dir)))
        parent_params: dict[str, Any] = {}
        if fork_from is not None:       # resolved now: a bad parent fails before any folder
            self._fork, parent_params = branches.fork_record(fork_from, self._base_dir,
                                                                  self._rank)
        if logging_ranks is not None and launch.rank not in logging_ranks:
            self._start_muted(run_name, buffer_size, flush_interval, handle_signals)
            return
        folder = RunFolder(
            self._base_dir, self._name, run_name, self._rank, resume=bool(resume),
            joined=launch.joined, meta_name=self._meta_name)
        run_name = self._run_name = folder.run_name
        self._run_dir = folder.path
        self._fds = folder.fds
        self._meta_lock = threading.RLock()
        self._params: dict[str, Any] = {}
        self._copier = ArtifactCopier(self._emit_from_thread)
        self._env_thread: threading.Thread | None = None
        env = environment.quick() if capture_env else {"pid": self._pid}
        now = time.time()
        if folder.owned:
            if self._fork is not None:
                # a fork's params start as its parent's; written before run.json, which
                # makes the fork (a kill before it leaves a folder no reader lists)
                self._params = dict(parent_params)
                if parent_params:
                    folder.write_first_params(parent_params)
            # run.json before the lock and the streams: a kill from here on leaves a run
            # that readers list (CRASHED: RUNNING, and its pid is gone) and `clean`
            # removes, never a folder holding only writer.lock
            self._meta = self._new_meta(run_name, now, described, env)
            folder.write_first_meta(self._meta)
        folder.take(bool(resume), f"{name}/{run_name}")
        self._lock = folder.lock
        try:
            streams = folder.open_streams()
            self._summary_base, self._loss_base = streams["summary_base"], streams["loss_base"]
            if folder.fresh and not folder.owned:
                self._meta = self._new_meta(run_name, now, described, env)
                self._meta.update(
                    rank=self._rank, world_size=self._world_size, local_rank=launch.local_rank,
                    launcher=launch.source, ranks=logging_ranks)
            elif not folder.fresh:
                self._meta = read_json_nofollow(self._run_dir / self._meta_name)
                self._meta["resumed"] = [*self._meta.get("resumed", []), now]
                self._meta.setdefault("uuid", runmeta.new_uuid())     # a run made before uuids
                self._meta.update(status=RUNNING, end_time=None, duration=None,
                                  pid=self._pid, exit=None)
                self._meta.update({k: v for k, v in described.items() if v})
                self._meta["env"] = {**self._meta.get("env", {}), **env}
                self._meta["host"] = env.get("hostname") or layout.hostname()
                if self._rank == 0 and (self._run_dir / PARAMS_FILE).exists():
                    self._params = read_json_nofollow(self._run_dir / PARAMS_FILE)
                if self._fork is not None and not _same_fork(self._meta.get("fork"), self._fork):
                    raise ExpmanValueError(
                        f"fork_from: run {name}/{run_name} exists and is not a fork of "
                        f"{self._fork['parent']} at step {self._fork['step']}")
            if not folder.owned:
                atomic_write_json(self._run_dir / self._meta_name, self._meta)
            sizes = streams["sizes"]
            if not folder.fresh:        # a line a crash tore is cut; ids go on
                lines = branches.cut_torn_line(self._run_dir, self._rank)
                self._next_branch = max((ln.id for ln in lines), default=0) + 1
            self._start(self._fds[0], sizes[0], self._fds[1], sizes[1],
                        metrics_path=str(self._run_dir / layout.rank_file(METRICS_FILE, self._rank)),
                        buffer_size=buffer_size, flush_interval=flush_interval,
                        heartbeat_interval=HEARTBEAT_INTERVAL, on_full=on_full,
                        on_error=on_error, block_timeout=block_timeout,
                        keys=streams["keys"], last_step=streams["last_step"],
                        seq_base=streams["seq_base"], fsync_interval=fsync_interval,
                        loss_fd=self._fds[2], loss_base=self._loss_base)
        except BaseException:
            folder.undo()
            raise
        fresh = folder.fresh
        self._status = RUNNING
        if resume is True and not fresh and streams["last_step"] is not None:
            # the first row decides whether the job went back (expman.branches): a
            # one-shot log_metrics, then the compiled one again (the hot path unchanged)
            self._resume_end = sizes[0]
            self.__class__ = _resume_guard(type(self))
        self._media_lock = threading.Lock()
        if capture_output:
            from expman.capture import OutputCapture
            self._capture = OutputCapture(self._run_dir / OUTPUT_FILE)
        lifecycle.register(self, handle_signals)
        self._log_event({"kind": "status", "status": RUNNING, "time": now,
                         "resumed": not fresh})
        if not self._muted:
            self._sampler = sysmetrics.start_for(self, system_metrics)
            # summary.json: a timer thread of its own (the env probe ends early), which
            # takes the GIL for a moment every SUMMARY_INTERVAL, never per call
            self._summary_thread = threading.Thread(
                target=_refresh_summary, args=(weakref.ref(self), self._summary_stop),
                name="expman-summary", daemon=True)
            self._summary_thread.start()
        if capture_env:
            self._env_thread = threading.Thread(
                target=_probe_env, args=(self._run_dir / self._meta_name, self._meta,
                                         self._meta_lock, self._meta["env"]["cwd"]),
                name="expman-env", daemon=True)
            self._env_thread.start()
        if watch is not None and watch is not False:
            self.watch(watch)

    # ---- files ----------------------------------------------------------------
    def _new_meta(self, run_name: str, now: float, described: dict[str, Any],
                  env: dict[str, Any]) -> dict[str, Any]:
        """run.json of a new run (or of a new rank in a joined run's folder)."""
        return {
            "format": _core.FORMAT_VERSION, "experiment": self._name,
            "run_name": run_name, "status": RUNNING, "start_time": now,
            "end_time": None, "duration": None, "pid": self._pid,
            # the reader needs the host to tell a dead pid (CRASHED), env capture or not
            "host": env.get("hostname") or layout.hostname(),
            "heartbeat_interval": HEARTBEAT_INTERVAL,
            "resumed": [], "exit": None, "stats": None, "env": dict(env), **described,
            "uuid": runmeta.new_uuid(),     # which machine's run this is (sync refuses another)
            **({"fork": dict(self._fork)} if self._fork is not None else {}),
        }

    def _start_muted(self, run_name: str | None, buffer_size: int, flush_interval: float,
                     handle_signals: bool) -> None:
        """A rank left out by ``ranks=``: every call is accepted and checked, nothing
        reaches the run folder (the core writes to the null device)."""
        self._muted = True
        self._run_name = run_name or ""
        self._run_dir = self._base_dir / self._name / self._run_name
        self._meta_lock = threading.RLock()
        self._meta = {}
        self._params = {}
        self._copier = ArtifactCopier(self._emit_from_thread)
        self._env_thread = None
        for _ in range(2):
            self._fds.append(os.open(os.devnull, os.O_WRONLY | _O_BINARY))
        try:
            self._start(self._fds[0], 0, self._fds[1], 0, metrics_path=os.devnull,
                        buffer_size=buffer_size, flush_interval=flush_interval,
                        heartbeat_interval=HEARTBEAT_INTERVAL, on_full="block",
                        on_error="warn", block_timeout=10.0)
        except BaseException:
            self._close_fds()
            raise
        self._status = RUNNING
        lifecycle.register(self, handle_signals)

    def _close_fds(self) -> None:
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()

    # ---- properties -------------------------------------------------------------
    @property
    def name(self) -> str:
        """The experiment name (the parent folder)."""
        return self._name

    @property
    def run_name(self) -> str:
        return self._run_name

    @property
    def run_dir(self) -> Path:
        """Absolute path of this run's folder."""
        return self._run_dir

    @property
    def status(self) -> str:
        """RUNNING, then FINISHED, FAILED or KILLED once closed."""
        return self._status

    @property
    def rank(self) -> int:
        """This process's rank (0 outside a multi-rank job)."""
        return self._rank

    @property
    def world_size(self) -> int:
        """How many ranks the job has (1 outside a multi-rank job)."""
        return self._world_size

    @property
    def params(self) -> dict[str, Any]:
        """A copy of the params logged so far."""
        return dict(self._params)

    def __repr__(self) -> str:
        return (f"<expman.Experiment {self._name}/{getattr(self, '_run_name', '?')} "
                f"{self._status} at {getattr(self, '_run_dir', '?')}>")

    # ---- logging besides metrics ---------------------------------------------------
    def log_params(self, params: Mapping[str, Any] | object) -> None:
        """Merge params (top-level keys replace) and rewrite params.json atomically.

        Takes a dict, any Mapping (an OmegaConf/Hydra config), a dataclass or an
        argparse.Namespace, and the same nested at any depth (expman.params)."""
        converted = to_params(params)
        self._check_open()
        with self._meta_lock:
            self._params.update(converted)
            if self._rank == 0 and not self._muted:      # rank 0 owns params.json
                atomic_write_json(self._run_dir / PARAMS_FILE, self._params)

    def rewind(self, step: int) -> None:
        """Go back to ``step``: open a branch there (kind "rewind"). Later points replace
        this run's points from ``step`` on in its main history; the points they
        replace stay readable as the branch before (``open_run(..., branch=k)``).
        The next ``step=None`` is ``step``. Drains and fsyncs first, so a kill leaves
        the run as it was or with the branch opened, never half of it."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ExpmanValueError(f"rewind: step must be a non-negative int, got {step!r:.80}")
        self._check_open()
        with self._branch_lock:
            if not self._muted:
                self._open_branch("rewind", step, None)
            self._disarm_resume()
            self._set_last_step(step - 1)

    def _open_branch(self, kind: str, from_step: int, offset: int | None) -> None:
        """Drain the ring, then append and fsync the branch line; only then may the
        branch's first row be logged (docs/format.md, Branches)."""
        self.flush()
        if offset is None:
            snap = self._summary()          # the writer's end: after its last whole frame
            offset = snap[0] if snap is not None else os.fstat(self._fds[0]).st_size
        branches.append_line(self._run_dir, self._rank, branches.BranchLine(
            self._next_branch, kind, from_step, offset, time.time()))
        self._next_branch += 1

    def _disarm_resume(self) -> None:
        cls = type(self)
        if getattr(cls, "_resume_guard", False):
            self.__class__ = cls.__mro__[1]

    def info(self, msg: object) -> None:
        """Append a timestamped message to events.jsonl (level info)."""
        self._message("info", msg)

    def warn(self, msg: object) -> None:
        self._message("warning", msg)

    def error(self, msg: object) -> None:
        self._message("error", msg)

    def _message(self, level: str, msg: object) -> None:
        if not self._warned_keys and self._status == RUNNING:
            self._check_metric_names()
        self._log_event({"kind": "message", "level": level, "time": time.time(),
                         "msg": msg if isinstance(msg, str) else str(msg)})

    def save_artifact(self, path: str | os.PathLike[str], name: str | None = None) -> Path:
        """Copy a file or a whole folder into ``artifacts/`` as it is now; returns
        the stored path.

        Saving a name again keeps both: the later one is stored as ``name.v2``
        (then ``.v3``, ...). Small files are copied at once; large files and
        folders without blocking (see expman.artifacts for how the snapshot is
        guaranteed); ``close()`` waits for them.
        """
        self._check_open()
        src = Path(os.fspath(path))
        if not src.exists():
            raise FileNotFoundError(2, f"save_artifact: no such file or folder: {src}", str(src))
        if name is None:    # a link keeps its own name; '.' and '..' take the folder's
            name = src.name if src.name not in ("", ".", "..") else src.resolve().name
        rel = check_relative("artifact name", name)
        root = self._run_dir / ARTIFACTS_DIR
        if self._rank:
            root = root / f"rank{self._rank}"   # ranks never write one file
        dst = root / rel
        if self._muted:
            return dst
        if not inside(root, dst.parent) or not inside(self._run_dir, dst.parent):
            raise ExpmanValueError(f"artifact name {rel!r} leaves the artifacts folder")
        return self._copier.save(src, root, rel)

    # ---- media (expman.media does the work; docs/format.md, media) ----------------------------
    def log_histogram(self, tag: str, values: Any = None, step: int | None = None, bins: int = 64,
                      edges: Any = None, counts: Any = None, *,
                      wall_time: float | None = None) -> None:
        """Store a histogram exactly: bin ``values`` (``bins`` equal bins, or the given
        ``edges``), or take ``edges`` and ``counts`` as they are. One event line;
        ``step=None`` means the current metrics step (0 before any); ``wall_time``
        (Unix seconds) keeps an imported record's own time instead of now."""
        from expman import media
        media.check_tag(tag)
        at = media.check_step(step)
        when = _wall_time("log_histogram", tag, wall_time)
        record = media.histogram_record(tag, values, bins, edges, counts)
        self._log_event({"kind": "histogram", "tag": tag,
                         "step": self._media_step(at), "time": when, **record})

    def log_image(self, tag: str, image: Any, step: int | None = None, *,
                  dataformats: str | None = None, wall_time: float | None = None) -> Path:
        """Store an image as ``artifacts/media/<tag>/<step>.png`` and an event naming
        tag and step. Takes PNG bytes, a path, a PIL image, a matplotlib figure or
        an HW/HWC/CHW array (``dataformats`` says which when ambiguous); ``wall_time``
        as in ``log_histogram``."""
        from expman import media
        media.check_tag(tag)
        at = media.check_step(step)
        when = _wall_time("log_image", tag, wall_time)
        self._check_open()
        png = media.image_to_png(image, tag, dataformats)
        width, height = media.png_size(png)
        at = self._media_step(at)
        with self._media_lock:
            path, rel = self._new_media_file(tag, at, png)
        import hashlib
        self._log_event({"kind": "image", "tag": tag, "step": at, "path": rel, "width": width,
                         "height": height, "size": len(png),
                         "sha256": hashlib.sha256(png).hexdigest(), "time": when})
        return path

    def log_table(self, name: str, data: Any, columns: Sequence[str] | None = None,
                  step: int | None = None) -> None:
        """Store a version of table ``name`` at ``step`` (None: the current metrics
        step): a pandas or polars DataFrame, a list of dicts, or a list of rows with
        ``columns``. The values go to ``artifacts/tables/<name>.jsonl`` (columnar JSON
        lines that pandas and DuckDB read), an event records the version (docs/format.md,
        tables); read back with ``run.tables``."""
        from expman import media, tables
        media.check_tag(name, "log_table: name")
        at = media.check_step(step, "log_table: step")
        cols, values, n = tables.columns_of(data, columns, f"log_table({name!r})")
        self._check_open()
        at = self._media_step(at)
        payload = tables.encode_version(at, cols, values, n)
        rel = tables.table_relpath(name)
        if self._muted:
            return
        with self._media_lock:
            fd = open_under(self._run_dir, rel, os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                            make_dirs=True)
            try:
                offset = os.fstat(fd).st_size
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            self._log_event({"kind": tables.TABLE_KIND, "name": name, "step": at,
                             "time": time.time(), "path": rel, "columns": cols,
                             "rows": n, "offset": offset, "length": len(payload)})

    def _media_step(self, step: int | None) -> int:
        if step is not None:
            return step
        last = self.last_step
        return 0 if last is None else last

    def _new_media_file(self, tag: str, step: int, data: bytes) -> tuple[Path, str]:
        from expman import media
        n = 0
        while True:
            rel = media.media_relpath(tag, step, n)
            path = self._run_dir / rel
            existing = path.parent
            while not existing.exists():
                existing = existing.parent
            # checked before mkdir: a symlink planted in the run folder is never written through
            if not inside(self._run_dir / ARTIFACTS_DIR, existing):
                raise ExpmanValueError(f"log_image: {existing} resolves outside the run folder")
            path.parent.mkdir(parents=True, exist_ok=True)
            try:    # O_EXCL: a repeated tag and step never overwrites, nor follows a symlink
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o644)
            except FileExistsError:
                n += 1
                continue
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return path, rel

    def _emit_from_thread(self, event: dict[str, Any]) -> None:
        if self._status == RUNNING or self._closing:
            self._log_event(event)

    def _check_open(self) -> None:
        if self._status != RUNNING or self._closing:
            raise RunClosedError(f"run {self._name}/{self._run_name} is {self._status.lower()}")
        self._check_metric_names()

    def _check_metric_names(self, count: int | None = None) -> None:
        """Warn once when a run holds more than MANY_METRIC_NAMES distinct metric names.

        Checked off the hot path: log_metrics is the compiled method itself, so
        the count is looked at by the other methods and at close."""
        if self._warned_keys:
            return
        if count is None:
            count = self.stats()["keys"]
        if count > MANY_METRIC_NAMES:
            self._warned_keys = True
            warnings.warn(
                f"expman: run {self._name}/{self._run_name} has {count} distinct metric names "
                f"(more than {MANY_METRIC_NAMES}); a name built from the step (f'loss_{{step}}') "
                "makes one series per step: log {'loss': x} with step=step instead",
                RuntimeWarning, stacklevel=3)

    # ---- lifecycle ------------------------------------------------------------------
    def __enter__(self) -> "Experiment":
        return self

    def __exit__(self, tp: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None or (isinstance(exc, SystemExit) and exc.code in (None, 0)):
            self.close()
        elif isinstance(exc, SystemExit):
            code = exc.code if isinstance(exc.code, int) else 1
            self._finish(FAILED, {"reason": "exit", "code": code}, raise_errors=False)
        else:
            self._finish(FAILED, lifecycle.describe_exception(exc, tb), raise_errors=False)

    def close(self, status: str = FINISHED, *, exit: int | None = None,
              start_time: float | None = None, end_time: float | None = None) -> None:
        """Drain, fsync and mark the run FINISHED (or FAILED). Idempotent.

        ``exit``: the exit code the run ended with (``wandb.finish(exit_code=2)``),
        recorded in run.json as ``sys.exit(2)`` inside a ``with`` block is; a
        non-zero code needs ``status="FAILED"``. ``start_time``/``end_time`` (Unix
        seconds): an imported run's own span (its first and last event) recorded in
        run.json instead of when this process opened and closed it. Raises the
        writer's error, if any, after the run is finalised.
        """
        if not isinstance(status, str) or status.upper() not in (FINISHED, FAILED):
            raise ExpmanValueError(f"close: status must be 'FINISHED' or 'FAILED', got {status!r}")
        status = status.upper()
        if exit is not None and (isinstance(exit, bool) or not isinstance(exit, int)):
            raise ExpmanTypeError(f"close: exit must be an int exit code, got {exit!r}")
        if exit and status == FINISHED:
            raise ExpmanValueError(f"close: exit code {exit} with status FINISHED; a non-zero "
                                   "exit is close('FAILED', exit=...)")
        times = {k: v for k, v in (("start_time", start_time), ("end_time", end_time))
                 if v is not None}
        for k, v in times.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) \
                    or not 0 <= v < MAX_WALL_TIME:
                raise ExpmanValueError(f"close: {k} must be Unix seconds in "
                                       f"[0, {MAX_WALL_TIME:.0f}), got {v!r:.60}")
        if start_time is not None and end_time is not None and end_time < start_time:
            raise ExpmanValueError(f"close: end_time {end_time!r} is before start_time "
                                   f"{start_time!r}")
        if status == FINISHED:
            info = None
        elif exit is not None:
            info = {"reason": "exit", "code": exit}
        else:
            info = {"reason": "close(status='FAILED')"}
        self._finish(status, info, raise_errors=True, times=times)

    def _finish(self, status: str, exit_info: dict[str, Any] | None, raise_errors: bool,
                reenter: bool = False, times: dict[str, float] | None = None) -> None:
        if os.getpid() != self._pid:
            return                           # a forked child never touches the parent's run
        with self._close_lock:
            self._finish_locked(status, exit_info, raise_errors, reenter, times or {})

    def _finish_locked(self, status: str, exit_info: dict[str, Any] | None, raise_errors: bool,
                       reenter: bool, times: dict[str, float]) -> None:
        with self._meta_lock:
            # reenter: a SIGTERM handler interrupting this thread's own close()
            # completes it (the process ends right after, the outer close never resumes)
            if self._status != RUNNING or (self._closing and not reenter):
                return
            self._closing = True
        if self._sampler is not None:       # before the drain: its last row is written too
            self._sampler.stop()
        _stop_watch(self)                   # expman.watch: a last round, its alerts drained too
        output_loss = self._capture.close() if self._capture is not None else None
        try:
            self._copier.close()
            self._log_event({"kind": "status", "status": status, "time": time.time(),
                             **({"exit": exit_info} if exit_info else {})})
        except Exception:
            pass
        self._summary_stop.set()
        if self._summary_thread not in (None, threading.current_thread()):
            self._summary_thread.join(timeout=5)    # (it may be the thread dropping the run)
        self._stop()                         # drain, fsync, join the writer
        self._close_fds()
        if self._muted:
            self._status, self._closing = status, False
            lifecycle.unregister(self)
            return
        self._write_summary()               # the writer has stopped: its final figures
        error: Exception | None = self._pending_error()
        env_thread = self._env_thread
        if env_thread is not None and env_thread is not threading.current_thread():
            # a finalizer may run this close inside the probe thread itself: never join it
            env_thread.join(timeout=5)
        stats = self.stats()
        self._check_metric_names(stats["keys"])
        now = time.time()
        with self._meta_lock:
            self._meta.update(status=status, end_time=now, exit=exit_info, stats=stats)
            self._meta.update(times)
            self._meta["duration"] = self._meta["end_time"] - self._meta["start_time"]
            if error is not None:
                self._meta["write_error"] = str(error)
            lost = [b + stats[k] for b, k in zip(self._loss_base, (
                "dropped", "events_dropped", "write_errors"))]
            if any(lost):
                # what the writer lost, even if the error was raised (and seen)
                # earlier; with earlier sessions' (the loss record has it all too)
                self._meta["data_loss"] = {
                    **dict(zip(loss.COUNTS, lost)),
                    "last_error": os.strerror(stats["last_errno"]) if stats["last_errno"]
                    else _earlier_error(self._meta.get("data_loss"))}
            if self._copier.failures:
                self._meta["artifact_errors"] = list(self._copier.failures)
            if output_loss:
                self._meta["output_loss"] = output_loss
            try:
                atomic_write_json(self._run_dir / self._meta_name, self._meta)
            except OSError as e:
                error = error or e
            self._status = status
            self._closing = False
        if self._lock is not None:
            self._lock.release()             # after the final status is on disk
        lifecycle.unregister(self)
        if error is not None:
            if raise_errors and self._on_error != "warn":
                raise error
            warnings.warn(f"expman: {error}", RuntimeWarning, stacklevel=3)

    def _close_at_exit(self, status: str, info: dict[str, Any] | None) -> None:
        try:
            self._finish(status, info, raise_errors=False, reenter=True)
        except Exception as e:  # at exit there is nobody left to raise to
            warnings.warn(f"expman: closing {self!r} failed: {e!r}", RuntimeWarning)

    def _flush_quietly(self) -> None:
        try:
            if self._status == RUNNING:
                self.flush(timeout=2.0)
        except Exception:
            pass

    def _after_fork_child(self) -> None:
        super()._after_fork_child()
        self._status = "FORKED"
        self._sampler = None
        self._env_thread = None
        if self._lock is not None:
            self._lock.forget_in_child()     # never keep a dead parent's run alive
        if self._capture is not None:
            self._capture.detach()
        self._summary_thread = None

    def _write_summary(self) -> bool:
        """Write summary.json from the writer's figures if the data moved since the
        last write. Best effort: a failure leaves readers to decode (it is a cache)."""
        with self._summary_lock:
            snap = self._summary()
            if snap is None or snap[0] == self._summary_bytes:
                return False
            nbytes, raw, last_frame = snap
            metrics = summary.merge(self._summary_base, summary.from_writer(raw))
            stream = self._run_dir / layout.rank_file(layout.METRICS_FILE, self._rank)
            try:
                atomic_write_json(self._run_dir / layout.rank_file(SUMMARY_FILE, self._rank),
                                  summary.to_json(nbytes, metrics, stream, last_frame))
            except OSError:
                return False
            self._summary_bytes = nbytes
            return True

    # ---- calls the surfaces need (drop-ins, importers), public so they use no private one ----
    def log_text(self, tag: str, text: object, step: int | None = None, *,
                 wall_time: float | None = None) -> None:
        """A message (level info) with a tag and a step, as TensorBoard's ``add_text``
        and a wandb image caption are. ``step=None`` means the current metrics step
        (0 before any); ``wall_time`` (Unix seconds) keeps an imported record's own
        time instead of now."""
        from expman import media
        if not isinstance(tag, str):
            raise ExpmanTypeError(f"log_text: tag must be a str, got {type(tag).__name__} "
                                  f"({tag!r:.60})")
        at = media.check_step(step)
        when = _wall_time("log_text", tag, wall_time)
        self._check_open()
        self._log_event({"kind": "message", "level": "info", "time": when,
                         "msg": text if isinstance(text, str) else str(text), "tag": tag,
                         "step": self._media_step(at)})

    def log_metrics_at(self, metrics: dict[str, Any], step: int | None, *,
                       wall_time: float) -> None:
        """``log_metrics`` for a point recorded elsewhere: it keeps its own ``wall_time``
        (Unix seconds, stored to the microsecond) instead of now, so imported history
        (TensorBoard's, MLflow's timestamps) keeps its times. Not for training loops."""
        import math
        if isinstance(wall_time, bool) or not isinstance(wall_time, (int, float)) \
                or not math.isfinite(wall_time) or not 0 <= wall_time < MAX_WALL_TIME:
            raise ExpmanValueError(f"log_metrics_at: wall_time must be Unix seconds in "
                                   f"[0, {MAX_WALL_TIME:.0f}), got {wall_time!r:.60}")
        self._log_at(metrics, step, round(wall_time * 1e6))

    # ---- watchdogs (expman.watch, docs/watch.md) --------------------------------------
    def log_alert(self, record: Mapping[str, Any]) -> None:
        """Append an ``alert`` or ``alert_delivered`` record (docs/format.md) to the
        run's events, as a watchdog or ``expman.wandb.alert`` writes it; the writer
        thread appends it like every event. A closed run drops it (a watcher's last
        round may come after close)."""
        kind = record.get("kind")
        if kind not in ("alert", "alert_delivered"):
            raise ExpmanValueError(f"log_alert: kind must be 'alert' or 'alert_delivered', "
                                   f"got {kind!r:.60}")
        if self._status != RUNNING:
            return
        self._log_event(dict(record))

    def watch(self, rules: Any = None, on_alert: Any = None, webhook: str | None = None, *,
              interval: float = 0.5) -> Any:
        """Start watchdogs: the per-point rules (nan, spike, plateau) run in the
        writer thread on every row it frames, and a daemon thread every
        ``interval`` seconds takes what they found, judges the rest (stall,
        straggler, lost data, disk) and records an ``alert`` event when a rule
        fires; ``log_metrics`` is untouched. ``rules``: strings (``"nan"``, ``"spike:train/loss,k=6"``)
        or expman.watch rules, None for the defaults; ``on_alert(alert)`` is called
        for each; ``webhook``: a URL each alert is POSTed to once; a rule with
        ``action=stop`` makes the next ``log_metrics`` raise expman.watch.WatchStop.
        Returns the expman.watch.RunWatch (None on a rank left out by ``ranks=``)."""
        self._check_open()
        if self._muted:
            return None
        from expman.watch import live
        # the per-point rules of this rank's points run in the writer thread (src/exwatch.h)
        return live.start(self, rules, on_alert=on_alert, webhook=webhook, interval=interval,
                          native=(_core.Core._native_watch, _core.Core._native_watch_take))

    def __del__(self) -> None:
        if getattr(self, "_status", None) == RUNNING and os.getpid() == self._pid:
            warnings.warn(f"expman: {self!r} was not closed; closing it (FINISHED)",
                          ResourceWarning, source=self)
            self._close_at_exit(FINISHED, None)


RESUME_DUPLICATES = "duplicates"     # resume= that appends to one history, as before issue 23
_GUARDS: dict[type, type] = {}


def _log_first_after_resume(self: Experiment, metrics: dict[str, Any], step: Any = None) -> None:
    """log_metrics for the first row after a resume: a step at or below the last one
    in the stream opens a "resume" branch (offset: the stream's end at resume)
    before the row is written. Then the compiled method takes over for good (a bound
    method taken before the first row still comes here: one attribute check more)."""
    if not getattr(type(self), "_resume_guard", False):
        _core.Core.log_metrics(self, metrics, step)
        return
    with self._branch_lock:
        if getattr(type(self), "_resume_guard", False):
            last = self.last_step
            if step is not None and last is not None and not self._muted:
                try:
                    s = operator.index(step)
                except TypeError:
                    s = None        # the core's own check raises the error
                if s is not None and 0 <= s <= last:
                    self._open_branch("resume", s, self._resume_end)
            self._disarm_resume()
    _core.Core.log_metrics(self, metrics, step)


def _resume_guard(cls: type) -> type:
    """``cls`` with the one-shot log_metrics above (same layout: ``__class__`` is
    swapped in at resume and back at the first row)."""
    guard = _GUARDS.get(cls)
    if guard is None:
        guard = _GUARDS[cls] = type(cls.__name__, (cls,), {
            "__slots__": (), "log_metrics": _log_first_after_resume, "_resume_guard": True,
            "__module__": cls.__module__, "__qualname__": cls.__qualname__})
    return guard


def _same_fork(recorded: Any, wanted: dict[str, Any]) -> bool:
    return isinstance(recorded, dict) and recorded.get("parent") == wanted["parent"] \
        and recorded.get("step") == wanted["step"]


def _wall_time(call: str, tag: str, wall_time: object) -> float:
    """An imported record's own time (Unix seconds), or now when None."""
    if wall_time is None:
        return time.time()
    if isinstance(wall_time, bool) or not isinstance(wall_time, (int, float)) \
            or not 0 <= wall_time < MAX_WALL_TIME:
        raise ExpmanValueError(f"{call}({tag!r}): wall_time must be Unix seconds in "
                               f"[0, {MAX_WALL_TIME:.0f}), got {wall_time!r:.60}")
    return float(wall_time)


def _stop_watch(exp: Experiment) -> None:
    """End the run's watch thread, if expman.watch was ever loaded (no import otherwise)."""
    import sys
    live = sys.modules.get("expman.watch.live")
    if live is not None:
        live.stop(exp)


def _probe_env(meta_path: Path, meta: dict[str, Any], lock: threading.RLock, cwd: str) -> None:
    """Background: git and packages into run.json, unless the run finished first."""
    try:
        extra = environment.slow(cwd)
    except Exception as e:
        extra = {"probe_error": repr(e)}
    with lock:
        meta["env"].update(extra)
        if meta.get("status") != RUNNING:
            return              # the final write at close carries it
        try:
            atomic_write_json(meta_path, meta)
            if meta.get("status") != RUNNING:
                # the GC closed the run in this very thread (the lock is reentrant)
                # while we wrote: our RUNNING copy may have landed after the final one
                atomic_write_json(meta_path, meta)
        except OSError:
            pass                # the final write at close carries it


def _earlier_error(data_loss: Any) -> Any:
    """The error text an earlier session of a resumed run recorded, if any."""
    return data_loss.get("last_error") if isinstance(data_loss, dict) else None


def _check_ranks(ranks: Iterable[int] | None, world_size: int) -> list[int] | None:
    """``ranks=``: which ranks log. Rank 0 must be one: it owns run.json and params."""
    if ranks is None:
        return None
    if isinstance(ranks, (str, bytes)) or not isinstance(ranks, Iterable):
        raise ExpmanTypeError(f"ranks must be a list of ints, got {type(ranks).__name__} ({ranks!r})")
    out = list(ranks)
    for r in out:
        if not isinstance(r, int) or isinstance(r, bool):
            raise ExpmanTypeError(f"ranks: {r!r} is not an int")
        if not 0 <= r < world_size:
            raise ExpmanValueError(f"ranks: {r!r} is not a rank of a world of {world_size} processes")
    out = sorted(set(out))
    if 0 not in out:
        raise ExpmanValueError(f"ranks={out!r} must include 0: rank 0 owns run.json and params")
    return out


def _refresh_summary(ref: "weakref.ref[Experiment]", stop: threading.Event) -> None:
    """Background: rewrite summary.json every SUMMARY_INTERVAL while the run is open.
    Holds the run only weakly, so an abandoned run is still collected and closed."""
    while not stop.wait(SUMMARY_INTERVAL):
        exp = ref()
        if exp is None:
            return
        try:
            exp._write_summary()
        except Exception:
            pass                # the write at close reports nothing either; readers decode
        del exp











