"""One writer's hold on a run folder: create or join it, lock it, open its streams.

``Experiment`` keeps what a run *does* (params, messages, the core, the
lifecycle); this keeps where it lives and how it was taken: an exclusive
``mkdir`` (a generated name that clashes is drawn again), run.json written
before anything else in a new folder (a kill leaves a run readers list as
CRASHED, never a bare folder), the writer lock before any stream is read, cut
or appended, and ``undo`` taking back exactly what a failed start did.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Any

from expman import _core, layout, loss, runlock, summary
from expman._fsutil import atomic_write_json, inside, open_nofollow
from expman.errors import CorruptRunError, ExpmanValueError, RunExistsError, UnsafePathError
from expman.layout import ARTIFACTS_DIR, EVENTS_FILE, METRICS_FILE, parse_event_lines


def new_run_name() -> str:
    """Time-sortable and unique: the folder is created exclusively, so a clash retries."""
    return time.strftime("%Y%m%d-%H%M%S-") + os.urandom(3).hex()


class RunFolder:
    """``base/name/run_name`` for the writer of one rank (see the module doc)."""

    def __init__(self, base_dir: Path, name: str, run_name: str | None, rank: int, *,
                 resume: bool, joined: bool, meta_name: str) -> None:
        exp_dir = base_dir / name
        self.rank, self.joined, self.meta_name = rank, joined, meta_name
        self.lock: runlock.RunLock | None = None
        self.fds: list[int] = []            # metrics, events, loss record
        self.fresh = False
        self._made = _makedirs(exp_dir)     # removed again if the start fails
        if not inside(base_dir, exp_dir) or (
                run_name is not None and not inside(base_dir, exp_dir / run_name)):
            # a symlinked experiment or run folder: never create or write through it
            _remove_empty(self._made)
            raise ExpmanValueError(f"{exp_dir / (run_name or '')} resolves outside {base_dir}")
        while True:     # a generated name that clashes is drawn again
            candidate = run_name if run_name is not None else new_run_name()
            try:
                os.mkdir(exp_dir / candidate)
                self.created = True
                break
            except FileExistsError:
                if run_name is None:
                    continue
                if not resume and not joined:
                    _remove_empty(self._made)
                    raise RunExistsError(
                        17, f"run {name}/{run_name} exists; pass resume=True to append to it",
                        str(exp_dir / run_name)) from None
                self.created = False
                break
        self.run_name = candidate
        self.path = exp_dir / candidate

    @property
    def owned(self) -> bool:
        """This writer made the folder (not a rank joining a shared one)."""
        return self.created and not self.joined

    def write_first_meta(self, meta: dict[str, Any]) -> None:
        """run.json of a folder we just made, before the lock and the streams."""
        try:
            atomic_write_json(self.path / self.meta_name, meta)
        except BaseException:
            self.undo()
            raise

    def write_first_params(self, params: dict[str, Any]) -> None:
        """params.json of a fork (its parent's), before run.json makes the run."""
        try:
            atomic_write_json(self.path / layout.PARAMS_FILE, params)
        except BaseException:
            self.undo()
            raise

    def take(self, resume: bool, what: str) -> None:
        """Lock this rank's streams, then decide whether they are new (``fresh``);
        existing ones need ``resume``."""
        try:
            # one writer per stream: locked before anything is read, cut or appended
            self.lock = runlock.acquire(self.path, self.rank)
        except BaseException:
            self.undo()
            raise
        # a joined run's folder is shared: this rank is fresh when its own file is new
        self.fresh = self.created if not self.joined else not (self.path / self.meta_name).exists()
        if not self.fresh and not resume:
            self.undo()
            raise RunExistsError(
                17, f"rank {self.rank} of run {what} exists; pass resume=True to append to it",
                str(self.path / self.meta_name))

    def open_streams(self) -> dict[str, Any]:
        """Open metrics.bin, events.jsonl and the loss record without following links
        (a link planted in the folder never makes expman write outside it); on
        resume, cut torn tails. Returns ``keys``, ``last_step``, ``sizes``,
        ``seq_base`` (records already logged: events' ``seq`` goes on from it),
        ``summary_base`` and ``loss_base`` (what earlier sessions wrote and lost)."""
        artifacts = self.path / ARTIFACTS_DIR
        os.makedirs(artifacts, exist_ok=True)
        if not stat.S_ISDIR(os.lstat(artifacts).st_mode):
            raise UnsafePathError(20, "refusing to use the artifacts folder: it is a symlink "
                                  "(expman never writes through a link)", str(artifacts))
        metrics = self.path / layout.rank_file(METRICS_FILE, self.rank)
        events = self.path / layout.rank_file(EVENTS_FILE, self.rank)
        out: dict[str, Any] = {"keys": None, "last_step": None, "seq_base": 0,
                               "summary_base": {}}
        if self.fresh:                      # the folder was just made by an exclusive mkdir
            excl = os.O_WRONLY | os.O_CREAT | os.O_EXCL
            fd = open_nofollow(metrics, excl)
            self.fds.append(fd)
            os.write(fd, _core.file_header())
            self.fds.append(open_nofollow(events, excl))
            out["sizes"] = (_core.HEADER_SIZE, 0)
        else:
            fd = open_nofollow(metrics, os.O_RDWR | os.O_CREAT)
            self.fds.append(fd)
            keys, last_step, msize, seq_base, out["summary_base"] = _prepare_resume(fd, metrics)
            os.lseek(fd, msize, os.SEEK_SET)
            fd = open_nofollow(events, os.O_RDWR | os.O_CREAT)
            self.fds.append(fd)
            esize, last_seq = _events_good_size(fd)
            os.ftruncate(fd, esize)
            os.lseek(fd, esize, os.SEEK_SET)
            out.update(keys=keys, last_step=last_step, sizes=(msize, esize),
                       seq_base=max(seq_base, last_seq))
        out["loss_base"] = self._open_loss_record()
        return out

    def _open_loss_record(self) -> tuple[int, int, int]:
        """Write the loss record while there is room (expman.loss): the writer
        rewrites these very blocks in place when it loses data. On resume it goes
        on from what earlier sessions recorded."""
        path = self.path / layout.rank_file(layout.LOSS_FILE, self.rank)
        base = (0, 0, 0)
        if not self.fresh and os.path.lexists(path):
            rec = loss.read_record(self.path, self.rank)
            if rec is not None and "unreadable" not in rec:
                base = (rec["rows_dropped"], rec["events_dropped"], rec["write_errors"])
        fd = open_nofollow(path, os.O_RDWR | os.O_CREAT | (os.O_EXCL if self.fresh else 0))
        self.fds.append(fd)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, _core.loss_record(*base))
        os.ftruncate(fd, loss.RECORD_SIZE)
        return base

    def close_fds(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()

    def undo(self) -> None:
        """Take back a failed start: streams closed, this rank's files removed from
        a shared folder (never the folder), the lock released, a folder we made
        removed, and the experiment folders we made if left empty."""
        self.close_fds()
        if self.fresh and self.joined:
            for name in (METRICS_FILE, EVENTS_FILE, layout.RUN_FILE, layout.LOSS_FILE,
                         layout.BRANCHES_FILE):
                try:
                    os.unlink(self.path / layout.rank_file(name, self.rank))
                except OSError:
                    pass
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if self.owned:
            _remove_tree(self.path)
        _remove_empty(self._made)


def _read_fd(fd: int) -> bytes:
    """The whole file behind fd, read from its start."""
    os.lseek(fd, 0, os.SEEK_SET)
    chunks: list[bytes] = []
    while True:
        chunk = os.read(fd, 1 << 24)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)



def _prepare_resume(fd: int, metrics: Path
                    ) -> tuple[dict[str, int], int | None, int, int, dict[str, Any]]:
    """Key table, last step, good size and record count of an existing metrics file
    (opened without following links); a torn tail is cut first."""
    data = _read_fd(fd)
    if len(data) < _core.HEADER_SIZE:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, _core.file_header())
        return {}, None, _core.HEADER_SIZE, 0, {}
    columns, keys, report = _core.decode_metrics(data)
    if report["corrupt_bytes"]:
        raise CorruptRunError(
            f"{metrics} is damaged at byte {report['corrupt_at'][0]} (not only a torn tail); "
            "resuming would append after it. `expman verify RUN` shows the damage; "
            "`open_run(path, salvage=True)` reads what survives; start a new run to go on")
    end = report["end"]
    if end < len(data):
        os.ftruncate(fd, end)
    last = max((max(c[0]) for c in columns.values() if len(c[0])), default=None)
    return ({name: kid for kid, name in keys.items()}, last, end, int(report["rows"]),
            summary.from_columns(columns))



def _events_good_size(fd: int) -> tuple[int, int]:
    """Length up to the last complete line (a crash may tear the last one), and
    the largest ``seq`` recorded so far."""
    data = _read_fd(fd)
    used = data.rfind(b"\n") + 1
    end = used
    for _ in range(64):         # seq only grows: the last readable line has the largest
        start = data.rfind(b"\n", 0, max(end - 1, 0)) + 1
        events, _, _ = parse_event_lines(data[start:end])
        if events and isinstance(events[0].get("seq"), int) and events[0]["seq"] >= 0:
            return used, events[0]["seq"]
        if start == 0:
            break
        end = start
    return used, 0



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
