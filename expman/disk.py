"""Disk use of run folders, and removing runs safely: ``disk_usage``,
``runs_to_clean``, ``remove_run``.

Removal never follows a link, never crosses into another filesystem mounted
inside a run folder, never touches a run whose writer is alive, and never
leaves the base dir.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from expman.errors import ExpmanValueError
from expman.layout import ARTIFACTS_DIR, METRICS_FILE, RUNNING, base_dir, iter_run_dirs

__all__ = ["disk_usage", "runs_to_clean", "remove_run", "is_link", "forked_children", "broken_by"]


def is_link(p: Path) -> bool:
    """A symlink or a Windows junction (an error counts as one: never follow)."""
    try:
        if p.is_symlink():
            return True
        isjunction = getattr(os.path, "isjunction", None)
        return bool(isjunction and isjunction(p))
    except OSError:
        return True


def tree_size(path: Path) -> tuple[int, int]:
    """(bytes, bytes under artifacts/) of a folder: apparent sizes, links not followed."""
    total = arts = 0
    art_root = path / ARTIFACTS_DIR
    for root, dirs, files in os.walk(path, followlinks=False):
        here = Path(root)
        under_arts = here == art_root or art_root in here.parents
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            try:
                n = os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
            total += n
            if under_arts:
                arts += n
    return total, arts


def disk_usage(base: str | os.PathLike[str] | None = None,
               experiment: str | None = None) -> dict[str, Any]:
    """Bytes per run and per experiment under the base dir (symlinked runs are
    listed, not followed): ``{"base_dir", "bytes", "experiments": [...], "runs": [...]}``."""
    root = base_dir(base)
    runs: list[dict[str, Any]] = []
    for run_dir in iter_run_dirs(root, experiment):
        link = is_link(run_dir)
        total, arts = (0, 0) if link else tree_size(run_dir)
        try:
            mb = os.lstat(run_dir / METRICS_FILE).st_size
        except OSError:
            mb = 0
        runs.append({"id": f"{run_dir.parent.name}/{run_dir.name}",
                     "experiment": run_dir.parent.name, "bytes": total, "metrics_bytes": mb,
                     "artifacts_bytes": arts, "symlink": link})
    exps: dict[str, dict[str, Any]] = {}
    for r in runs:
        e = exps.setdefault(r["experiment"], {"experiment": r["experiment"], "runs": 0,
                                              "bytes": 0, "metrics_bytes": 0, "artifacts_bytes": 0})
        e["runs"] += 1
        for k in ("bytes", "metrics_bytes", "artifacts_bytes"):
            e[k] += r[k]
    return {"base_dir": str(root), "bytes": sum(r["bytes"] for r in runs),
            "experiments": list(exps.values()), "runs": runs}


def forked_children(lines: Iterable[Any]) -> dict[str, list[str]]:
    """Parent id -> the ids of the runs forked from it, from ``list_runs`` lines
    (their ``parent``)."""
    out: dict[str, list[str]] = {}
    for r in lines:
        if r.parent:
            out.setdefault(r.parent, []).append(r.id)
    return out


def broken_by(chosen: Iterable[Any], children: dict[str, list[str]]) -> dict[str, list[str]]:
    """Chosen run id -> the runs that would lose their parent if it went: its forks
    that are not removed with it (they read their history up to the fork step from
    it, and would read only their own points after)."""
    gone = {r.id for r in chosen}
    out = {}
    for rid in gone:
        kept = [c for c in children.get(rid, ()) if c not in gone]
        if kept:
            out[rid] = kept
    return out


def runs_to_clean(base: str | os.PathLike[str] | None = None, *, experiment: str | None = None,
                  status: Iterable[str] | None = None, older_than: float | None = None,
                  keep: int | None = None, force: bool = False
                  ) -> tuple[list[Any], list[tuple[Any, str]]]:
    """The runs a clean would remove, and those it skips with the reason.

    Chooses by status, age (seconds since start) and ``keep`` (the newest N of
    each experiment are kept); at least one criterion is required. A RUNNING run
    is never chosen, nor a run whose writer still holds its lock, nor a link, nor
    a folder that resolves outside the base dir; nor, unless ``force``, the parent
    of a forked run that is kept (``broken_by`` says what forcing breaks).
    """
    from expman.reader import list_runs
    if not (status or older_than is not None or keep is not None):
        raise ExpmanValueError("clean needs a status, an age or a count to choose runs "
                               "(it never selects every run)")
    if keep is not None and keep < 0:
        raise ExpmanValueError(f"keep must be 0 or more, got {keep}")
    root = base_dir(base)
    root_real = root.resolve()
    wanted = {s.upper() for s in status} if status else None
    now = time.time()
    by_exp: dict[str, list[Any]] = {}
    every = list_runs(root, metrics=False)          # newest first; forks of any experiment
    for r in every:
        if experiment is None or r.path.parent.name == experiment:
            by_exp.setdefault(r.path.parent.name, []).append(r)
    chosen: list[Any] = []
    skipped: list[tuple[Any, str]] = []
    for exp_runs in by_exp.values():
        for i, r in enumerate(exp_runs):
            if r.status == RUNNING:
                continue                                # a live writer: never
            if keep is not None and i < keep:
                continue
            if wanted and r.status not in wanted:
                continue
            if older_than is not None and (r.start_time or now) > now - older_than:
                continue
            if is_link(r.path) or is_link(r.path.parent):
                skipped.append((r, "a symlink; clean never follows links"))
                continue
            try:
                r.path.resolve().relative_to(root_real)
            except ValueError:
                skipped.append((r, f"resolves outside {root}"))
                continue
            if _writer_alive(r.path):
                skipped.append((r, "its writer is alive (the run lock is held)"))
                continue
            chosen.append(r)
    if not force:
        children = forked_children(every)
        while True:      # a kept fork keeps its parent, which keeps its own parent...
            broken = broken_by(chosen, children)
            if not broken:
                break
            for r in [r for r in chosen if r.id in broken]:
                chosen.remove(r)
                kids = broken[r.id]
                skipped.append((r, f"the parent of {len(kids)} forked run"
                                   f"{'s' if len(kids) > 1 else ''} ({', '.join(kids[:3])}"
                                   f"{', ...' if len(kids) > 3 else ''}) that read their history "
                                   "up to the fork step from it; --force removes it anyway"))
    return chosen, skipped


def _writer_alive(run_dir: Path) -> bool:
    from expman.liveness import is_locked     # any rank's writer lock held
    return bool(is_locked(run_dir))


def remove_run(path: Path) -> list[str]:
    """Delete a run folder without following links or crossing mount points.

    Returns what was left in place (a mount point inside the folder, say), one
    line each; a folder that holds something left is kept too.
    """
    if is_link(path):
        raise ExpmanValueError(f"{path} is a symlink; clean never follows links")
    dev = os.lstat(path).st_dev
    left: list[str] = []
    _remove_tree(path, dev, _mount_points(), left)
    return left


def _mount_points() -> set[str]:
    """Mount points the kernel lists (Linux): a bind mount of a folder on the same
    filesystem has the same st_dev, so st_dev alone cannot see it."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return set()
    points = set()
    for line in lines:
        fields = line.split(" ")
        if len(fields) > 4:        # field 5: the mount point, with octal escapes
            points.add(fields[4].encode().decode("unicode_escape"))
    return points


def _is_mount(p: Path, st: os.stat_result, dev: int, mounts: set[str]) -> bool:
    if st.st_dev != dev or os.path.ismount(p):
        return True
    return bool(mounts) and os.path.realpath(p) in mounts


def _remove_tree(folder: Path, dev: int, mounts: set[str], left: list[str]) -> bool:
    """Depth first; True when folder itself was removed."""
    kept = False
    try:
        entries = list(os.scandir(folder))
    except OSError as e:
        left.append(f"{folder}: {e.strerror or e}")
        return False
    for entry in entries:
        p = Path(entry.path)
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(st.st_mode) and not is_link(p):
            if _is_mount(p, st, dev, mounts):
                left.append(f"{p}: a mount point; not crossed")
                kept = True
                continue
            kept = not _remove_tree(p, dev, mounts, left) or kept
        else:
            kept = not _unlink(p, st, left) or kept
    if kept:
        return False
    try:
        os.rmdir(folder)
    except OSError as e:
        left.append(f"{folder}: {e.strerror or e}")
        return False
    return True


def _unlink(p: Path, st: os.stat_result, left: list[str]) -> bool:
    try:
        os.unlink(p)
        return True
    except PermissionError:
        # Windows refuses to delete a read-only file: clear the flag on the file
        # itself (never through a link) and retry
        if sys.platform == "win32" and stat.S_ISREG(st.st_mode):
            try:
                os.chmod(p, stat.S_IWRITE)
                os.unlink(p)
                return True
            except OSError as e:
                left.append(f"{p}: {e.strerror or e}")
                return False
        left.append(f"{p}: permission denied")
        return False
    except OSError as e:
        left.append(f"{p}: {e.strerror or e}")
        return False
