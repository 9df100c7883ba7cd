"""A forked or branched run as the dashboard draws it (issue 23): the main history
folded by ``expman.branches`` (one curve per metric), where its branches and forks
start (the chart's markers), the points each abandoned branch left (drawn faint
on request), and its lineage: the chain of parents and the runs forked from it.

The run cache (``cache.py``) keeps a stream's rows as written, which is a run's
history only when it never branched; a fork or a rewound run is folded here, once
per change of its files or of an ancestor's (a small LRU of folds)."""

from __future__ import annotations

import os
import threading
import warnings
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path
from typing import Any

from expman import layout
from expman.branches import History, branches_file, is_branched, read_history

__all__ = ["fold", "abandoned", "describe", "inherited_points"]

MAX_FOLDS = 16                 # folds kept (each holds a run's main history, in columns)
MAX_CHILDREN = 500             # forks of one run listed on its page

_folds: OrderedDict[tuple[str, int | None], tuple[tuple[Any, ...], History]] = OrderedDict()
_lock = threading.Lock()


def _signature(base: Path, specs: list[str]) -> tuple[Any, ...]:
    """What changes when a fold may change: run.json, metrics.bin and the branches
    file of the run and of every ancestor it inherits from."""
    out: list[Any] = []
    for spec in specs:
        for name in (layout.RUN_FILE, layout.METRICS_FILE, branches_file(0)):
            try:
                st = os.lstat(base / spec / name)
                out.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
            except OSError:
                out.append(None)
    return tuple(out)


def fold(path: Path, meta: dict[str, Any], branch: int | None = None) -> History | None:
    """The history of a forked or branched run (rank 0; ``branch``: that branch's,
    else the main history), or None for a run that never branched (the run cache's
    columns are its history). Raises ExpmanValueError for a branch it does not have."""
    if not is_branched(path, meta, 0):
        return None
    base = path.parent.parent
    own = f"{path.parent.name}/{path.name}"
    key = (os.fspath(path), branch)
    with _lock:
        hit = _folds.get(key)
    if hit is not None:
        sig, hist = hit
        if sig == _signature(base, [s for s, _ in hist.lineage]):
            with _lock:
                _folds.move_to_end(key)
            return hist
    sig = _signature(base, [own])        # before the read: a change meanwhile reads again
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # damage is shown in the integrity report
        hist = read_history(path, 0, dict(meta), branch=branch)
    specs = [s for s, _ in hist.lineage]
    if len(specs) > 1:
        sig = _signature(base, specs)
    with _lock:
        _folds[key] = (sig, hist)
        while len(_folds) > MAX_FOLDS:
            _folds.popitem(last=False)
    return hist


def abandoned(path: Path, meta: dict[str, Any], branch: int, metric: str
              ) -> tuple[Any, Any, Any] | None:
    """(steps, times, values) of the points branch ``branch`` wrote that the main
    history does not hold (a later branch cut them): what the chart draws faint.
    Empty for the main history's own branch or a metric the branch did not log;
    None when the run has no such branch."""
    import numpy as np
    main = fold(path, meta)
    if main is None or branch not in [b.id for b in main.branches]:
        return None
    none = (np.empty(0, np.int64), np.empty(0, np.float64), np.empty(0, np.float64))
    later = [b.from_step for b in main.branches if b.id > branch and b.from_step is not None]
    if not later:
        return none                       # the main history's own branch: nothing left out
    hist = fold(path, meta, branch)
    if hist is None or metric not in hist.metrics:
        return none
    series = hist.metrics[metric]
    steps, times, values = (np.asarray(c) for c in (series.steps, series.times, series.values))
    labels = hist.metrics.branch_labels(metric)
    own = np.fromiter((lab == branch for lab in labels), dtype=bool, count=len(labels))
    keep = own & (steps >= min(later))
    return steps[keep], times[keep], values[keep]


def inherited_points(path: Path, hist: History, metric: str) -> int | None:
    """How many of a metric's main-history points a fork inherited (its stream's own
    points follow them, so a live fork's new points are appended after), or None
    when the run has a branches file (a rewind may cut what is drawn: fold again)."""
    if os.path.lexists(path / branches_file(0)) or metric not in hist.metrics:
        return None
    return sum(isinstance(lab, str) for lab in hist.metrics.branch_labels(metric))


def describe(path: Path, meta: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A run's branches, lineage, children and chart markers (the page's
    ``/branches`` answer). ``rows``: the runs list (their ``parent`` names children)."""
    own = f"{path.parent.name}/{path.name}"
    base = path.parent.parent
    hist = fold(path, meta)
    children = [r for r in rows if r.get("parent") == own][:MAX_CHILDREN]
    out: dict[str, Any] = {
        "id": own, "parent": layout.fork_parent(meta), "branched": hist is not None,
        "children": [{"run": r["id"], "status": r.get("status"),
                      "fork_step": _fork_step(base / r["id"])} for r in children],
        "lineage": [{"run": own, "fork_step": None, "present": True}],
        "branches": [], "markers": [], "problems": []}
    if hist is None:
        return out
    main_id = hist.branches[-1].id if hist.branches else None
    later: dict[int, int] = {}            # branch id -> the step a later branch cut it at
    for b in hist.branches:
        for earlier in hist.branches:
            if earlier.id < b.id and b.from_step is not None:
                later[earlier.id] = min(later.get(earlier.id, b.from_step), b.from_step)
    out["branches"] = [{**asdict(b), "main": b.id == main_id, "cut_at": later.get(b.id)}
                       for b in hist.branches]
    out["lineage"] = [{"run": spec, "fork_step": step,
                       "present": spec == own or layout.is_run_dir(base / spec)}
                      for spec, step in hist.lineage]
    markers: list[dict[str, Any]] = [{"kind": "fork", "step": step, "time": None, "branch": None,
                "label": f"forked from {spec} at step {step}"}
               for spec, step in hist.lineage if step is not None]
    markers += [{"kind": b.kind, "step": b.from_step, "time": b.time, "branch": b.id,
                 "label": f"{b.kind} to step {b.from_step} (branch {b.id})"}
                for b in hist.branches if b.from_step is not None]
    out["markers"] = markers
    out["problems"] = [f"{p['problem']}: {p['detail']}" for p in hist.problems]
    if out["parent"] and len(hist.lineage) == 1:          # its parent could not be read
        out["lineage"].insert(0, {"run": out["parent"], "fork_step": None, "present":
                                  layout.is_run_dir(base / out["parent"])})
    return out


def _fork_step(run_dir: Path) -> int | None:
    from expman._fsutil import read_json_object
    try:
        fork = read_json_object(run_dir / layout.RUN_FILE).get(layout.FORK)
    except (OSError, ValueError):
        return None
    step = fork.get("step") if isinstance(fork, dict) else None
    return step if type(step) is int else None
