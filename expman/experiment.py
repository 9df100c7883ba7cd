"""The Experiment: a run folder, its lifecycle, and the hot methods of the core.

``log_metrics`` and ``flush`` are inherited from the compiled ``Core`` type
unchanged, so a call goes straight into C with no Python frame in between.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any, Mapping

from expman import _core, environment, lifecycle, summary
from expman._fsutil import atomic_write_json, check_name, check_relative, inside, read_json
from expman.artifacts import ArtifactCopier
from expman.errors import (
    CorruptRunError, ExpmanTypeError, ExpmanValueError, RunClosedError, RunExistsError,
)
from expman.layout import SUMMARY_FILE, SUMMARY_INTERVAL
from expman.params import to_json

__all__ = ["Experiment", "STATUSES"]

STATUSES = ("RUNNING", "FINISHED", "FAILED", "KILLED", "CRASHED")
METRICS_FILE = "metrics.bin"
EVENTS_FILE = "events.jsonl"
RUN_FILE = "run.json"
PARAMS_FILE = "params.json"
ARTIFACTS_DIR = "artifacts"
HEARTBEAT_INTERVAL = 10.0
_O_BINARY = getattr(os, "O_BINARY", 0)


def _new_run_name() -> str:
    """Time-sortable and unique: the folder is created exclusively, so a clash retries."""
    return time.strftime("%Y%m%d-%H%M%S-") + os.urandom(3).hex()


class Experiment(_core.Core):
    """One run of an experiment, written to ``<base_dir>/<name>/<run_name>/``.

    Use it as a context manager, or call ``close()``; an unclosed run closes
    itself at interpreter exit or when garbage-collected.
    """

    __slots__ = ("_name", "_run_name", "_run_dir", "_base_dir", "_meta", "_meta_lock",
                 "_params", "_copier", "_env_thread", "_pid", "_fds", "_status",
                 "_closing", "_close_lock", "_on_error", "_summary_base", "_summary_lock",
                 "_summary_stop", "_summary_thread", "_summary_bytes")

    def __init__(
        self,
        name: str,
        run_name: str | None = None,
        base_dir: str | os.PathLike[str] = "./experiments",
        *,
        resume: bool = False,
        flush_interval: float = 0.2,
        buffer_size: int = 4 << 20,
        on_full: str = "block",
        on_error: str = "raise",
        block_timeout: float = 10.0,
        capture_env: bool = True,
        handle_signals: bool = True,
        fsync_interval: float | None = None,
    ) -> None:
        self._status = "NEW"
        self._closing = False
        # held for a whole close: a second closer (another thread) waits for the
        # first instead of returning before the data is durable
        self._close_lock = threading.RLock()
        self._on_error = on_error
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
        self._base_dir = Path(os.path.abspath(os.fspath(base_dir)))
        exp_dir = self._base_dir / self._name
        made = _makedirs(exp_dir)           # removed again if the start fails
        if not inside(self._base_dir, exp_dir) or (
                run_name is not None and not inside(self._base_dir, exp_dir / run_name)):
            # a symlinked experiment or run folder: never create or write through it
            _remove_empty(made)
            raise ExpmanValueError(f"{exp_dir / (run_name or '')} resolves outside {self._base_dir}")

        while True:     # a generated name that clashes is drawn again
            candidate = run_name if run_name is not None else _new_run_name()
            try:
                os.mkdir(exp_dir / candidate)
                created = True
                break
            except FileExistsError:
                if run_name is None:
                    continue
                if not resume:
                    _remove_empty(made)
                    raise RunExistsError(
                        17, f"run {name}/{run_name} exists; pass resume=True to append to it",
                        str(exp_dir / run_name)) from None
                created = False
                break
        run_name = self._run_name = candidate
        self._run_dir = exp_dir / candidate
        self._meta_lock = threading.RLock()
        self._params: dict[str, Any] = {}
        self._copier = ArtifactCopier(self._emit_from_thread)
        self._env_thread: threading.Thread | None = None
        self._summary_base: dict[str, Any] = {}     # metrics already in the file at a resume
        self._summary_lock = threading.Lock()
        self._summary_stop = threading.Event()
        self._summary_thread: threading.Thread | None = None
        self._summary_bytes = -1
        try:
            keys, last_step, sizes = self._open_files(fresh=created)
            now = time.time()
            if created:
                self._meta = {
                    "format": _core.FORMAT_VERSION, "experiment": self._name,
                    "run_name": run_name, "status": "RUNNING", "start_time": now,
                    "end_time": None, "duration": None, "pid": self._pid,
                    "host": None, "heartbeat_interval": HEARTBEAT_INTERVAL,
                    "resumed": [], "exit": None, "stats": None, "env": {},
                }
            else:
                self._meta = read_json(self._run_dir / RUN_FILE)
                self._meta["resumed"] = [*self._meta.get("resumed", []), now]
                self._meta.update(status="RUNNING", end_time=None, duration=None,
                                  pid=self._pid, exit=None)
                if (self._run_dir / PARAMS_FILE).exists():
                    self._params = read_json(self._run_dir / PARAMS_FILE)
            env = environment.quick() if capture_env else {"pid": self._pid}
            self._meta["env"] = {**self._meta.get("env", {}), **env}
            # the reader needs the host to tell a dead pid (CRASHED), env capture or not
            self._meta["host"] = env.get("hostname") or environment.hostname()
            atomic_write_json(self._run_dir / RUN_FILE, self._meta)
            self._start(self._fds[0], sizes[0], self._fds[1], sizes[1],
                        metrics_path=str(self._run_dir / METRICS_FILE),
                        buffer_size=buffer_size, flush_interval=flush_interval,
                        heartbeat_interval=HEARTBEAT_INTERVAL, on_full=on_full,
                        on_error=on_error, block_timeout=block_timeout,
                        keys=keys, last_step=last_step, fsync_interval=fsync_interval)
        except BaseException:
            self._close_fds()
            if created:
                _remove_tree(self._run_dir)
            _remove_empty(made)
            raise
        self._status = "RUNNING"
        lifecycle.register(self, handle_signals)
        self._log_event({"kind": "status", "status": "RUNNING", "time": now,
                         "resumed": not created})
        # summary.json: a timer thread of its own (the env probe ends early), which
        # takes the GIL for a moment every SUMMARY_INTERVAL, never per call
        self._summary_thread = threading.Thread(
            target=_refresh_summary, args=(weakref.ref(self), self._summary_stop),
            name="expman-summary", daemon=True)
        self._summary_thread.start()
        if capture_env:
            self._env_thread = threading.Thread(
                target=_probe_env, args=(self._run_dir, self._meta, self._meta_lock,
                                         self._meta["env"]["cwd"]),
                name="expman-env", daemon=True)
            self._env_thread.start()

    # ---- files ----------------------------------------------------------------
    def _open_files(self, fresh: bool) -> tuple[dict[str, int] | None, int | None, tuple[int, int]]:
        flags = os.O_WRONLY | os.O_CREAT | _O_BINARY | getattr(os, "O_CLOEXEC", 0)
        os.makedirs(self._run_dir / ARTIFACTS_DIR, exist_ok=True)
        metrics = self._run_dir / METRICS_FILE
        events = self._run_dir / EVENTS_FILE
        keys = last_step = None
        if fresh:
            fd = os.open(metrics, flags | os.O_TRUNC, 0o644)
            self._fds.append(fd)
            os.write(fd, _core.file_header())
            msize = _core.HEADER_SIZE
        else:
            keys, last_step, msize, self._summary_base = _prepare_resume(metrics)
            fd = os.open(metrics, flags, 0o644)
            self._fds.append(fd)
            os.lseek(fd, msize, os.SEEK_SET)
        fd = os.open(events, flags, 0o644)
        self._fds.append(fd)
        esize = _events_good_size(events) if not fresh else 0
        os.ftruncate(fd, esize)
        os.lseek(fd, esize, os.SEEK_SET)
        return keys, last_step, (msize, esize)

    def _close_fds(self) -> None:
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []

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
    def params(self) -> dict[str, Any]:
        """A copy of the params logged so far."""
        return dict(self._params)

    def __repr__(self) -> str:
        return (f"<expman.Experiment {self._name}/{getattr(self, '_run_name', '?')} "
                f"{self._status} at {getattr(self, '_run_dir', '?')}>")

    # ---- logging besides metrics ---------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Merge params (top-level keys replace) and rewrite params.json atomically."""
        if not isinstance(params, Mapping):
            raise ExpmanTypeError(f"log_params: expected a dict, got {type(params).__name__}")
        self._check_open()
        converted = to_json(dict(params), "params")
        with self._meta_lock:
            self._params.update(converted)
            atomic_write_json(self._run_dir / PARAMS_FILE, self._params)

    def info(self, msg: object) -> None:
        """Append a timestamped message to events.jsonl (level info)."""
        self._message("info", msg)

    def warn(self, msg: object) -> None:
        self._message("warning", msg)

    warning = warn

    def error(self, msg: object) -> None:
        self._message("error", msg)

    def _message(self, level: str, msg: object) -> None:
        self._log_event({"kind": "message", "level": level, "time": time.time(),
                         "msg": msg if isinstance(msg, str) else str(msg)})

    def save_artifact(self, path: str | os.PathLike[str], name: str | None = None) -> Path:
        """Copy a file into ``artifacts/`` as it is now; returns the stored path.

        Small files are copied at once; large ones without blocking (see
        expman.artifacts for how the snapshot is guaranteed).
        """
        self._check_open()
        src = Path(os.fspath(path))
        if not src.is_file():
            raise FileNotFoundError(2, f"save_artifact: no such file: {src}", str(src))
        rel = check_relative("artifact name", name if name is not None else src.name)
        root = self._run_dir / ARTIFACTS_DIR
        dst = root / rel
        if not inside(root, dst.parent) or not inside(self._run_dir, dst.parent):
            raise ExpmanValueError(f"artifact name {rel!r} leaves the artifacts folder")
        self._copier.save(src, dst, rel)
        return dst

    def _emit_from_thread(self, event: dict[str, Any]) -> None:
        if self._status == "RUNNING" or self._closing:
            self._log_event(event)

    def _check_open(self) -> None:
        if self._status != "RUNNING" or self._closing:
            raise RunClosedError(f"run {self._name}/{self._run_name} is {self._status.lower()}")

    # ---- lifecycle ------------------------------------------------------------------
    def __enter__(self) -> "Experiment":
        return self

    def __exit__(self, tp: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None or (isinstance(exc, SystemExit) and exc.code in (None, 0)):
            self.close()
        elif isinstance(exc, SystemExit):
            code = exc.code if isinstance(exc.code, int) else 1
            self._finish("FAILED", {"reason": "exit", "code": code}, raise_errors=False)
        else:
            self._finish("FAILED", lifecycle.describe_exception(exc, tb), raise_errors=False)

    def close(self, status: str = "FINISHED") -> None:
        """Drain, fsync and mark the run FINISHED (or FAILED). Idempotent.

        Raises the writer's error, if any, after the run is finalised.
        """
        if not isinstance(status, str) or status.upper() not in ("FINISHED", "FAILED"):
            raise ExpmanValueError(f"close: status must be 'FINISHED' or 'FAILED', got {status!r}")
        self._finish(status.upper(), None if status.upper() == "FINISHED"
                     else {"reason": "close(status='FAILED')"}, raise_errors=True)

    def _finish(self, status: str, exit_info: dict[str, Any] | None, raise_errors: bool,
                reenter: bool = False) -> None:
        if os.getpid() != self._pid:
            return                           # a forked child never touches the parent's run
        with self._close_lock:
            self._finish_locked(status, exit_info, raise_errors, reenter)

    def _finish_locked(self, status: str, exit_info: dict[str, Any] | None, raise_errors: bool,
                       reenter: bool) -> None:
        with self._meta_lock:
            # reenter: a SIGTERM handler interrupting this thread's own close()
            # completes it (the process ends right after, the outer close never resumes)
            if self._status != "RUNNING" or (self._closing and not reenter):
                return
            self._closing = True
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
        self._write_summary()
        error = self._pending_error()
        if self._env_thread is not None:
            self._env_thread.join(timeout=5)
        stats = self.stats()
        now = time.time()
        with self._meta_lock:
            self._meta.update(status=status, end_time=now, exit=exit_info, stats=stats,
                              duration=now - self._meta["start_time"])
            if error is not None:
                self._meta["write_error"] = str(error)
            if stats.get("dropped") or stats.get("events_dropped") or stats.get("write_errors"):
                # what the writer lost, even if the error was raised (and seen) earlier
                self._meta["data_loss"] = {
                    "rows_dropped": stats["dropped"], "events_dropped": stats["events_dropped"],
                    "write_errors": stats["write_errors"],
                    "last_error": os.strerror(stats["last_errno"]) if stats["last_errno"] else None}
            if self._copier.failures:
                self._meta["artifact_errors"] = list(self._copier.failures)
            try:
                atomic_write_json(self._run_dir / RUN_FILE, self._meta)
            except OSError as e:
                error = error or e
            self._status = status
            self._closing = False
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
            if self._status == "RUNNING":
                self.flush(timeout=2.0)
        except Exception:
            pass

    def _after_fork_child(self) -> None:
        super()._after_fork_child()
        self._status = "FORKED"
        self._env_thread = None
        self._summary_thread = None

    def _write_summary(self) -> bool:
        """Write summary.json from the writer's figures if the data moved since the
        last write. Best effort: a failure leaves readers to decode (it is a cache)."""
        with self._summary_lock:
            snap = self._summary()
            if snap is None or snap[0] == self._summary_bytes:
                return False
            nbytes, raw = snap
            metrics = summary.merge(self._summary_base, summary.from_writer(raw))
            try:
                atomic_write_json(self._run_dir / SUMMARY_FILE, summary.to_json(nbytes, metrics))
            except OSError:
                return False
            self._summary_bytes = nbytes
            return True

    def __del__(self) -> None:
        if getattr(self, "_status", None) == "RUNNING" and os.getpid() == self._pid:
            warnings.warn(f"expman: {self!r} was not closed; closing it (FINISHED)",
                          ResourceWarning, source=self)
            self._close_at_exit("FINISHED", None)


def _probe_env(run_dir: Path, meta: dict[str, Any], lock: threading.RLock, cwd: str) -> None:
    """Background: git and packages into run.json, unless the run finished first."""
    try:
        extra = environment.slow(cwd)
    except Exception as e:
        extra = {"probe_error": repr(e)}
    with lock:
        meta["env"].update(extra)
        if meta.get("status") == "RUNNING":
            try:
                atomic_write_json(run_dir / RUN_FILE, meta)
            except OSError:
                pass            # the final write at close carries it


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


def _prepare_resume(metrics: Path) -> tuple[dict[str, int], int | None, int, dict[str, Any]]:
    """Key table, last step and summary of an existing metrics file; cut a torn tail first."""
    if not metrics.exists() or metrics.stat().st_size < _core.HEADER_SIZE:
        with open(metrics, "wb") as f:
            f.write(_core.file_header())
        return {}, None, _core.HEADER_SIZE, {}
    data = metrics.read_bytes()
    columns, keys, report = _core.decode_metrics(data)
    if report["corrupt_bytes"]:
        raise CorruptRunError(
            f"{metrics} is damaged at byte {report['corrupt_at'][0]} (not only a torn tail); "
            "resuming would append after it. `expman verify RUN` shows the damage; "
            "`open_run(path, salvage=True)` reads what survives; start a new run to go on")
    end = report["end"]
    if end < len(data):
        os.truncate(metrics, end)
    last = max((max(c[0]) for c in columns.values() if len(c[0])), default=None)
    return {name: kid for kid, name in keys.items()}, last, end, summary.from_columns(columns)


def _events_good_size(path: Path) -> int:
    """Length up to the last complete line (a crash may tear the last one)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    return data.rfind(b"\n") + 1


def _makedirs(path: Path) -> list[Path]:
    """os.makedirs, returning the folders it created (deepest last)."""
    missing = []
    p = path
    while not os.path.lexists(p) and p.parent != p:
        missing.append(p)
        p = p.parent
    os.makedirs(path, exist_ok=True)
    return missing[::-1]


def _remove_empty(folders: list[Path]) -> None:
    """Undo _makedirs: remove the folders it created, if still empty."""
    for p in reversed(folders):
        try:
            os.rmdir(p)
        except OSError:
            return


def _remove_tree(path: Path) -> None:
    import shutil
    shutil.rmtree(path, ignore_errors=True)
