"""Runs that branch (issue 23): forks, rewinds and resumes at a lower step, one rule.

A rank's metrics.bin stays one append-only stream. A **branch** is a byte range of
it, opened by a line of ``branches.jsonl`` (rank r > 0: ``branches.rank<r>.jsonl``):
``{"id", "kind": "rewind" | "resume", "from_step", "offset", "time"}``; every row
at or after ``offset`` belongs to that branch until the next line's offset. A
**fork** is a new run whose run.json names its parent and the step it forked at;
nothing of the parent is copied. The **main history** of a rank (docs/format.md):

    H = inherited prefix (the parent's main history, steps <= fork step) + branch 0
    for each branch k = 1..n in file order:  H = [rows of H with step < from_step_k] + branch k

Hostile folders never crash or hang a reader: a line that is not a branch, whose
offset goes back or is not a frame boundary, is skipped and reported; a parent
that is missing, another run (uuid), a cycle or a chain deeper than MAX_LINEAGE
leaves the run its own rows, with a problem naming it.
"""

from __future__ import annotations

import os
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from expman import _core
from expman._fsutil import open_nofollow, read_json_object, read_regular
from expman.errors import CorruptRunError, ExpmanTypeError, ExpmanValueError
from expman.layout import (
    BRANCHES_FILE, MAX_LINEAGE, METRICS_FILE, PARAMS_FILE, RUN_FILE, parse_event_lines, rank_file,
)
from expman.series import Metrics, Series, numpy

__all__ = ["Branch", "BranchLine", "History", "KINDS", "read_lines", "read_history",
           "parse_fork_from", "fork_record", "is_branched", "append_line", "cut_torn_line",
           "LINEAGE_PROBLEMS", "branches_file", "children", "frame_starts", "parse_lines"]

KINDS = ("rewind", "resume")                 # what a branches.jsonl line may open
LINEAGE_PROBLEMS = ("parent_missing", "parent_mismatch", "lineage_too_deep", "lineage_cycle")
MAX_BRANCHES_BYTES = 16 << 20                # a larger (crafted) branches file is not read


@dataclass(frozen=True)
class BranchLine:
    """One line of a branches file, as written."""

    id: int
    kind: str
    from_step: int
    offset: int
    time: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "from_step": self.from_step,
                "offset": self.offset, "time": self.time}


@dataclass(frozen=True)
class Branch:
    """One branch of a run's rank, as ``Run.branches`` lists it. ``kind``: "root"
    (the run's first history), "fork" (a forked run's first history; ``parent``
    names the run it came from), "rewind" or "resume". ``from_step``: where the
    branch cut the history it inherited (None for branch 0). ``first_step``,
    ``last_step``, ``points``: the branch's own points (smallest and largest step)."""

    id: int
    kind: str
    from_step: int | None
    first_step: int | None
    last_step: int | None
    points: int
    parent: str | None
    time: float | None


def branches_file(rank: int | None) -> str:
    return rank_file(BRANCHES_FILE, rank)


def is_branched(run_dir: str | os.PathLike[str], meta: dict[str, Any] | None,
                rank: int = 0) -> bool:
    """Whether a rank's metrics need this module's rule: a fork, or a branches file."""
    if isinstance(meta, dict) and meta.get("fork") is not None:
        return True
    return os.path.lexists(os.path.join(run_dir, branches_file(rank)))


# ---- the branches file ------------------------------------------------------------------------

def parse_lines(data: bytes, size: int | None = None,
                frames: set[int] | None = None) -> tuple[list[BranchLine], list[str]]:
    """The lines of a branches file that count, and why the others were skipped.
    A line counts when it is a whole JSON line (a last line without its newline
    is a write a crash cut: left out, not a problem) with an int id above the
    previous counted line's, a kind of KINDS, an int from_step >= 0, an int
    offset not below the previous counted line's, not past ``size`` (the
    metrics file's) and one of ``frames`` (its frame boundaries), and a number
    or null time. refreader.branch_lines is the same rule."""
    events, bad, _used = parse_event_lines(data)
    problems = [f"{BRANCHES_FILE}: {bad} unreadable lines"] if bad else []
    out: list[BranchLine] = []
    last_id, last_offset = 0, _core.HEADER_SIZE
    for ev in events:
        kid: Any = ev.get("id")
        kind: Any = ev.get("kind")
        step: Any = ev.get("from_step")
        off: Any = ev.get("offset")
        t: Any = ev.get("time")
        why = None
        if not _is_int(kid) or kid <= last_id:
            why = f"id {kid!r:.40} is not an int above {last_id}"
        elif kind not in KINDS:
            why = f"kind {kind!r:.40} is not one of {KINDS}"
        elif not _is_int(step) or step < 0:
            why = f"from_step {step!r:.40} is not a non-negative int"
        elif not _is_int(off) or off < last_offset:
            why = f"offset {off!r:.40} is not an int at or after {last_offset}"
        elif size is not None and off > size:
            why = f"offset {off} is past the end of {METRICS_FILE} ({size} bytes)"
        elif frames is not None and off not in frames:
            why = f"offset {off} is not a frame boundary of {METRICS_FILE}"
        elif t is not None and (isinstance(t, bool) or not isinstance(t, (int, float))):
            why = f"time {t!r:.40} is not a number"
        if why:
            problems.append(f"{BRANCHES_FILE}: line with id {kid!r:.40} skipped: {why}")
            continue
        out.append(BranchLine(kid, kind, step, off, float(t) if t is not None else None))
        last_id, last_offset = kid, off
    return out, problems


def frame_starts(data: bytes) -> set[int]:
    """Where the frames of a metrics file start (each header's CRC checked), and the
    end of the last one: the offsets a branch may start at. Stops at damage."""
    import struct
    import zlib
    out: set[int] = set()
    pos, n = _core.HEADER_SIZE, len(data)
    if n < pos:
        return out
    while pos + 12 <= n:
        length, crc = struct.unpack_from("<II", data, pos)
        if zlib.crc32(data[pos:pos + 4]) != crc:
            return out
        out.add(pos)
        pos += 12 + length
    out.add(pos)
    return out


def read_lines(run_dir: str | os.PathLike[str], rank: int = 0, size: int | None = None,
               frames: set[int] | None = None) -> tuple[list[BranchLine], list[str]]:
    """parse_lines of a rank's branches file ([] when there is none)."""
    path = Path(os.fspath(run_dir)) / branches_file(rank)
    try:
        data = read_regular(path, limit=MAX_BRANCHES_BYTES)
    except FileNotFoundError:
        return [], []
    except (OSError, ValueError) as e:
        return [], [f"{path}: {e}"]
    return parse_lines(data, size, frames)


def append_line(run_dir: Path, rank: int, line: BranchLine) -> None:
    """Append one whole line and fsync it (the writer calls this with its ring
    drained, before the branch's first row: see Experiment.rewind)."""
    import orjson
    path = run_dir / branches_file(rank)
    fd = open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        body = orjson.dumps(line.to_json()) + b"\n"
        while body:
            body = body[os.write(fd, body):]
        os.fsync(fd)
    finally:
        os.close(fd)


def cut_torn_line(run_dir: Path, rank: int) -> list[BranchLine]:
    """At a resume: cut a line a crash tore (so the next append starts a line of its
    own) and return the lines there are."""
    path = run_dir / branches_file(rank)
    if not os.path.lexists(path):
        return []
    fd = open_nofollow(path, os.O_RDWR)
    try:
        data = read_regular(path, limit=MAX_BRANCHES_BYTES)
        used = data.rfind(b"\n") + 1
        if used < len(data):
            os.ftruncate(fd, used)
            os.fsync(fd)
    finally:
        os.close(fd)
    return parse_lines(data[:used])[0]


# ---- forks ---------------------------------------------------------------------------------------

def parse_fork_from(value: Any) -> tuple[str, int]:
    """``"exp/run@5000"`` or ``("exp/run", 5000)`` as (run spec, step)."""
    if isinstance(value, str):
        spec, at, step_text = value.rpartition("@")
        if not at or not spec:
            raise ExpmanValueError(f"fork_from={value!r}: expected 'experiment/run@STEP'")
        try:
            step: Any = int(step_text)
        except ValueError:
            raise ExpmanValueError(f"fork_from={value!r}: the step {step_text!r} is not "
                                   "an int") from None
    elif isinstance(value, tuple) and len(value) == 2:
        spec, step = value
        if not isinstance(spec, (str, os.PathLike)):
            raise ExpmanTypeError(f"fork_from: the run spec must be a str, got {spec!r:.80}")
        spec = os.fspath(spec)
    else:
        raise ExpmanTypeError(f"fork_from must be 'experiment/run@STEP' or (run_spec, step), "
                              f"got {value!r:.80}")
    if not _is_int(step) or step < 0:
        raise ExpmanValueError(f"fork_from={value!r:.80}: the step must be a non-negative int")
    return spec, int(step)


def fork_record(value: Any, base: Path, rank: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``fork`` field of a new child's run.json, and the parent's params, for
    ``Experiment(fork_from=value)``: the parent resolved now to a concrete run in
    the same base dir (ExpmanValueError otherwise, before any folder is made).
    ``branch``: the parent's branch (of this rank) the fork continues, so a later
    rewind of a running parent never changes the child's past."""
    from expman.layout import resolve_run
    from expman._fsutil import inside
    spec, step = parse_fork_from(value)
    parent = resolve_run(spec, base)
    if not inside(base, parent) or parent.resolve().parent.parent != base.resolve():
        raise ExpmanValueError(f"fork_from={spec!r}: {parent} is not a run under the base "
                               f"dir {base}; a parent must live beside its children")
    meta = read_json_object(parent / RUN_FILE)
    try:
        params = read_json_object(parent / PARAMS_FILE) if (parent / PARAMS_FILE).exists() else {}
    except FileNotFoundError:
        params = {}
    uuid = meta.get("uuid")
    lines, _problems = read_lines(parent, rank)
    return ({"parent": f"{parent.parent.name}/{parent.name}",
             "parent_uuid": uuid if isinstance(uuid, str) else None, "step": step,
             "branch": lines[-1].id if lines else 0}, params)


def children(base: str | os.PathLike[str], parent: str) -> list[str]:
    """The runs under ``base`` forked from ``parent`` (``"experiment/run"``), as
    ``"experiment/run"`` specs, sorted: what deleting the parent would break. A
    run.json that cannot be read is skipped (it names no parent it can be held to)."""
    from expman.layout import scan_run_dirs
    out = []
    for path, exp, name, _linked in scan_run_dirs(base):
        try:
            meta = read_json_object(Path(path) / RUN_FILE)
        except (OSError, ValueError):
            continue
        fork, _bad = _fork_of(meta)
        if fork is not None and fork["parent"] == parent:
            out.append(f"{exp}/{name}")
    return sorted(out)


def _fork_of(meta: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """run.json's fork record checked: (record, None) or (None, why it is malformed)."""
    fork = meta.get("fork")
    if fork is None:
        return None, None
    if not isinstance(fork, dict):
        return None, f"run.json's fork is not an object: {fork!r:.80}"
    parent, step, uuid = fork.get("parent"), fork.get("step"), fork.get("parent_uuid")
    parts = parent.split("/") if isinstance(parent, str) else []
    if len(parts) != 2 or any(p in ("", ".", "..") or "\\" in p or "\x00" in p for p in parts):
        return None, f"run.json's fork names no run 'experiment/run': {parent!r:.80}"
    if not _is_int(step) or step < 0:
        return None, f"run.json's fork step is not a non-negative int: {step!r:.40}"
    if uuid is not None and not isinstance(uuid, str):
        return None, f"run.json's fork parent_uuid is not a string: {uuid!r:.40}"
    if fork.get("branch") is not None and (not _is_int(fork["branch"]) or fork["branch"] < 0):
        return None, f"run.json's fork branch is not a non-negative int: {fork['branch']!r:.40}"
    return fork, None


# ---- reading -------------------------------------------------------------------------------------

# A history while folding: name -> pieces (label, steps, times, values) in order; the
# label is the branch id of this run, or "exp/run:k" for a point a fork inherited.
Pieces = dict[str, list[tuple[Any, Any, Any, Any]]]


@dataclass
class History:
    """What read_history found for one rank of one run."""

    metrics: Metrics
    branches: list[Branch]
    lineage: list[tuple[str, int | None]]
    problems: list[dict[str, str]] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    keys: dict[int, str] = field(default_factory=dict)
    pieces: Pieces = field(default_factory=dict)


def read_history(run_dir: str | os.PathLike[str], rank: int = 0,
                 meta: dict[str, Any] | None = None, *, branch: int | None = None,
                 salvage: bool = False, keys: dict[int, str] | None = None,
                 _seen: frozenset[str] = frozenset()) -> History:
    """The main history of a rank (or, with ``branch=k``, branch k's history) with
    its branches, lineage and problems. Raises like open_run only for this run's
    own unreadable stream; a broken parent is a problem, never an exception."""
    run = Path(os.fspath(run_dir))
    if meta is None:
        meta = read_json_object(run / RUN_FILE)
    spec = f"{run.parent.name}/{run.name}"
    try:
        data = read_regular(run / rank_file(METRICS_FILE, rank))
    except FileNotFoundError:
        data = b""
    lines, line_problems = read_lines(run, rank, len(data), _LazyFrames(data))
    problems = [{"problem": "bad_branch_line", "detail": p} for p in line_problems]
    segments, accepted, report, seg_problems, keys = _decode_segments(data, lines, salvage, keys)
    problems += seg_problems
    fork, bad_fork = _fork_of(meta)
    prefix: Pieces = {}
    lineage: list[tuple[str, int | None]] = [(spec, None)]
    if bad_fork:
        problems.append({"problem": "parent_missing", "detail": f"{run}: {bad_fork}"})
    elif fork is not None:
        got = _inherited(run, rank, fork, salvage, _seen | {_real(run)})
        if isinstance(got, dict):
            problems.append(got)
        else:
            parent_hist, parent_spec = got
            problems += [{**p, "detail": f"in parent {parent_spec}: {p['detail']}"}
                         for p in parent_hist.problems]
            lineage = [*parent_hist.lineage[:-1], (parent_spec, int(fork["step"])),
                       (spec, None)]
            for name, pieces in parent_hist.pieces.items():
                prefix[name] = [(lab if isinstance(lab, str) else f"{parent_spec}:{lab}",
                                 *_below(ps, pt, pv, int(fork["step"]) + 1))
                                for lab, ps, pt, pv in pieces]
    ids = [0, *(ln.id for ln in accepted)]
    if branch is not None and (not _is_int(branch) or branch not in ids):
        raise ExpmanValueError(f"{spec} has no branch {branch!r} (rank {rank}: branches {ids})")
    stop = ids.index(branch) if branch is not None else len(ids) - 1
    # The fold, in one pass: a row of branch i stays in the history of branch
    # ``stop`` when its step is below every later branch's from_step (up to stop);
    # the prefix's rows, below every branch's. Order is kept: prefix, 0, 1, ...
    cut: list[int | None] = [None] * (stop + 1)
    low: int | None = None
    for i in range(stop, -1, -1):
        cut[i] = low
        if i > 0:
            f = accepted[i - 1].from_step
            low = f if low is None else min(low, f)
    hist: Pieces = {}
    for name, pieces in prefix.items():
        hist[name] = [(lab, *_below(ps, pt, pv, cut[0])) for lab, ps, pt, pv in pieces]
    out_branches: list[Branch] = []
    start = meta.get("start_time")
    for i, cols in enumerate(segments):
        steps = [x for (ss, _t, _v) in cols.values() for x in (_min(ss), _max(ss)) if x is not None]
        npts = sum(len(ss) for (ss, _t, _v) in cols.values())
        if i == 0:
            kind = "fork" if fork is not None else "root"
            out_branches.append(Branch(0, kind, None, min(steps, default=None),
                                       max(steps, default=None), npts,
                                       fork["parent"] if fork is not None else None,
                                       float(start) if _is_num(start) else None))
        else:
            ln = accepted[i - 1]
            out_branches.append(Branch(ln.id, ln.kind, ln.from_step, min(steps, default=None),
                                       max(steps, default=None), npts, None, ln.time))
        if i <= stop:
            for name, (ss, tt, vv) in cols.items():
                hist.setdefault(name, []).append((ids[i], *_below(ss, tt, vv, cut[i])))
    hist = {n: [pc for pc in pieces if len(pc[1])] for n, pieces in hist.items()}
    # names: inherited first, then this run's keys in the order they were defined
    order = list(prefix) + [keys[k] for k in sorted(keys) if keys[k] not in prefix]
    order += [n for n in hist if n not in order]
    series = {}
    runs: dict[str, list[tuple[Any, int]]] = {}
    for n in order:
        pieces = hist.get(n) or []
        series[n] = Series(n, *_joined(pieces))
        runs[n] = [(lab, len(ps)) for lab, ps, _t, _v in pieces]
    return History(Metrics(series, branches=runs), out_branches, lineage, problems, report,
                   keys, {n: hist.get(n) or [] for n in order})


def _inherited(run: Path, rank: int, fork: dict[str, Any], salvage: bool,
               seen: frozenset[str]) -> tuple[History, str] | dict[str, str]:
    """The parent's history of this rank, or the problem that stops it."""
    parent_spec = str(fork["parent"])
    exp, name = parent_spec.split("/")
    base = run.parent.parent
    parent = base / exp / name
    if _real(parent) in seen:
        return {"problem": "lineage_cycle", "detail": f"{run}: its parent {parent_spec} is "
                f"its own descendant (a cycle of forks)"}
    if len(seen) >= MAX_LINEAGE:
        return {"problem": "lineage_too_deep", "detail": f"{run}: more than {MAX_LINEAGE} "
                f"forks of forks; the prefix from {parent_spec} is not read"}
    try:
        if os.path.islink(base / exp) or os.path.islink(parent):
            raise CorruptRunError(f"{parent} is a link")
        pmeta = read_json_object(parent / RUN_FILE)
    except (OSError, ValueError) as e:
        return {"problem": "parent_missing", "detail": f"{run}: its parent {parent_spec} "
                f"cannot be read ({e}); only the run's own points are shown"}
    want = fork.get("parent_uuid")
    if want is not None and pmeta.get("uuid") != want:
        return {"problem": "parent_mismatch", "detail": f"{run}: {parent_spec} is another run "
                f"(uuid {pmeta.get('uuid')!r:.40}, the fork names {want!r:.40})"}
    want_branch = fork.get("branch")
    try:
        try:
            return read_history(parent, rank, pmeta, salvage=salvage, _seen=seen,
                                branch=want_branch), parent_spec
        except ExpmanValueError:
            if want_branch is None:
                raise
            # the branch it forked from is gone (its line unreadable): the main history
            hist = read_history(parent, rank, pmeta, salvage=salvage, _seen=seen)
            hist.problems.append({"problem": "parent_mismatch", "detail": (
                f"{parent}: has no branch {want_branch} of rank {rank}, which {run} forked "
                "from; its main history is used")})
            return hist, parent_spec
    except (OSError, ValueError) as e:
        return {"problem": "parent_missing", "detail": f"{run}: the metrics of its parent "
                f"{parent_spec} cannot be read ({e})"}


def _decode_segments(data: bytes, lines: list[BranchLine], salvage: bool,
                     keys: dict[int, str] | None
                     ) -> tuple[list[dict[str, tuple[Any, Any, Any]]], list[BranchLine],
                                dict[str, Any], list[dict[str, str]], dict[int, str]]:
    """metrics.bin cut at each line's offset (parse_lines checked them: frame
    boundaries, in order): the rows of branch 0, 1, ... Each byte is decoded once."""
    from expman.tail import empty_report
    report = empty_report()
    segments: list[dict[str, tuple[Any, Any, Any]]] = [{}]
    accepted: list[BranchLine] = []
    problems: list[dict[str, str]] = []
    keys = dict(keys or {})
    if len(data) < _core.HEADER_SIZE and not lines:
        return segments, accepted, report, problems, keys
    view = memoryview(data)
    pos = 0
    stopped = False

    def decode(end: int) -> dict[str, Any]:
        nonlocal keys
        cols, keys, rep = _core.decode_metrics(view[:end], pos, keys, salvage)
        segments[-1].update(cols)       # one decode per segment
        for k in ("frames", "rows", "points", "unknown_points", "corrupt_bytes"):
            report[k] += rep[k]
        report["corrupt_at"] += rep["corrupt_at"]
        return dict(rep)

    for ln in lines:
        rep = decode(ln.offset)
        if rep["corrupt_bytes"] and not salvage:
            stopped = True          # nothing after the damage is read, branches included
            break
        accepted.append(ln)
        segments.append({})
        pos = ln.offset
    if not stopped:
        rep = decode(len(data))
        report["torn_bytes"] = rep["torn_bytes"]
        report["end"] = rep["end"]
    else:
        report["end"] = pos
    for seg in segments:
        for n, (s, t, v) in seg.items():
            seg[n] = (_col(s), _col(t), _col(v))
    return segments, accepted, report, problems, keys


class _LazyFrames(set[int]):
    """frame_starts(data), walked only if a branches file has a line to check."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self._data: bytes | None = data

    def __contains__(self, offset: object) -> bool:
        if self._data is not None:
            self.update(frame_starts(self._data))
            self._data = None
        return super().__contains__(offset)


def _real(p: Path) -> str:
    try:
        return os.path.realpath(p)
    except OSError:
        return os.fspath(p)


def _is_int(x: Any) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> TypeGuard[float]:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


# ---- column helpers (numpy arrays, or array.array without numpy) -------------------------------

def _col(a: Any) -> Any:
    np = numpy()
    if np is None or not isinstance(a, array):
        return a
    return np.frombuffer(a, dtype=np.int64 if a.typecode == "q" else np.float64)


def _below(s: Any, t: Any, v: Any, bound: int | None) -> tuple[Any, Any, Any]:
    """The rows with ``step < bound`` (all of them when bound is None)."""
    if bound is None or not len(s):
        return s, t, v
    np = numpy()
    if np is not None and not isinstance(s, array):
        if int(s.max()) < bound:            # the usual case: no copy
            return s, t, v
        if bool((s[1:] >= s[:-1]).all()):   # steps in order: a prefix, as views
            n = int(np.searchsorted(s, bound, "left"))
            return s[:n], t[:n], v[:n]
        keep = s < bound
        return s[keep], t[keep], v[keep]
    mask = [x < bound for x in s]
    return tuple(array(col.typecode, (x for x, k in zip(col, mask) if k))  # type: ignore[return-value]
                 for col in (s, t, v))


def _joined(pieces: list[tuple[Any, Any, Any, Any]]) -> tuple[Any, Any, Any]:
    """steps, values, times of pieces end to end (one piece: its own columns, no copy)."""
    if len(pieces) == 1:
        _lab, s, t, v = pieces[0]
        return s, v, t
    np = numpy()
    if not pieces:
        return _col(array("q")), _col(array("d")), _col(array("d"))
    if np is not None and not isinstance(pieces[0][1], array):
        return (np.concatenate([p[1] for p in pieces]), np.concatenate([p[3] for p in pieces]),
                np.concatenate([p[2] for p in pieces]))
    s, v, t = array("q"), array("d"), array("d")
    for _lab, ps, pt, pv in pieces:
        s.extend(ps)
        t.extend(pt)
        v.extend(pv)
    return s, v, t


def _min(s: Any) -> int | None:
    return int(min(s)) if len(s) and isinstance(s, array) else (int(s.min()) if len(s) else None)


def _max(s: Any) -> int | None:
    return int(max(s)) if len(s) and isinstance(s, array) else (int(s.max()) if len(s) else None)


def own_branch(run_dir: str | os.PathLike[str], meta: dict[str, Any], points: int,
               first: int | None, last: int | None) -> Branch:
    """The one branch of a run that never branched (no need to read it again)."""
    fork, _bad = _fork_of(meta)
    start = meta.get("start_time")
    return Branch(0, "fork" if fork else "root", None, first, last, points,
                  fork["parent"] if fork else None, float(start) if _is_num(start) else None)
