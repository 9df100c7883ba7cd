"""The read model: the one place each figure a surface shows about a run is worked out.

Every surface (CLI, dashboard, lake, ``expman.runs()``, exports) serializes these
answers; none computes its own. A second computation of the same figure is a bug
even when it agrees today.
"""

from __future__ import annotations

import math
import os
import stat
import sys
from array import array
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from expman.layout import ARTIFACTS_DIR, EVENTS_FILE, METRICS_FILE, PARAMS_FILE, RUNNING
from expman.liveness import RunStatus, run_status   # the run's status: liveness decides it

__all__ = ["PARAM_SEPARATOR", "flatten_params", "MetricSummary", "SUMMARY_FIELDS",
           "summarize_points", "merge_summaries", "spell_float", "read_float",
           "summary_to_json", "summary_from_json", "ArtifactState", "artifact_states",
           "verify_artifacts", "RunStatus", "run_status", "integrity_problems",
           "settle_torn_tail"]

PARAM_SEPARATOR = "."
"""Nested params are flattened for tables, filters, columns and the lake by joining
keys with a dot: ``{"optim": {"lr": 1}}`` is ``optim.lr``. Stored params stay nested."""

_SCALARS = (str, int, float, bool, type(None))


def flatten_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Params as one level of dotted keys, each value a JSON scalar.

    Nested mappings become dotted keys; lists, tuples, empty mappings and anything
    else that is not a scalar become compact JSON text (``"[0.9,0.999]"``), so a
    column or a filter never meets an unhashable value. Iterative: a deep document
    costs no recursion."""
    out: dict[str, Any] = {}
    stack: list[tuple[str, Mapping[Any, Any]]] = [("", params)]
    while stack:
        prefix, mapping = stack.pop()
        for k, v in mapping.items():
            key = f"{prefix}{k}"
            if isinstance(v, Mapping) and v:
                stack.append((key + PARAM_SEPARATOR, v))
            elif isinstance(v, _SCALARS):
                out[key] = v
            else:
                out[key] = _json_text(v)
    return dict(sorted(out.items()))


def _json_text(value: Any) -> str:
    import orjson
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):
        return repr(value)


# ---- metric summaries -------------------------------------------------------------------------
# The one rule for NaN and infinities: ``count`` counts every point, ``nan_count`` the
# NaNs among them; ``min`` and ``max`` are over every value that is not NaN, so
# +-inf count (the series [1.0, inf, 2.0] has max inf); both are None when every
# value is NaN. First and last are in logged order (not the smallest and largest
# step). On ties (0.0 and -0.0) the first value seen is kept, as the C writer does.

@dataclass(frozen=True)
class MetricSummary:
    """What a full decode of one metric's points says, with one set of field names
    for every surface (summary.json, show, list, the dashboard, the lake, runs(),
    the TensorBoard export). Empty (count 0): every other figure is None."""

    count: int
    nan_count: int = 0
    first_step: int | None = None
    first_value: float | None = None
    last_step: int | None = None
    last_value: float | None = None
    last_time: float | None = None
    min: float | None = None
    max: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The figures as a plain dict (floats as they are: NaN and inf included)."""
        return {f: getattr(self, f) for f in SUMMARY_FIELDS}


SUMMARY_FIELDS = tuple(f.name for f in fields(MetricSummary))
EMPTY_SUMMARY = MetricSummary(0)


def summarize_points(steps: Any, times: Any, values: Any) -> MetricSummary:
    """The summary of one metric's points (columns in logged order: numpy arrays,
    ``array.array`` or sequences)."""
    n = len(values)
    if not n:
        return EMPTY_SUMMARY
    np = sys.modules.get("numpy")       # numpy columns mean numpy is loaded; else lists
    if np is not None and isinstance(values, array):
        values = np.frombuffer(values, dtype=np.float64)
    if np is not None and hasattr(values, "dtype"):
        v = np.asarray(values, dtype=np.float64)
        real = v[~np.isnan(v)]
        nans = n - len(real)
        lo = _first_of(real, float(real.min())) if len(real) else None
        hi = _first_of(real, float(real.max())) if len(real) else None
    else:
        reals = [float(x) for x in values if x == x]
        nans = n - len(reals)
        lo = min(reals) if reals else None
        hi = max(reals) if reals else None
    return MetricSummary(n, nans, int(steps[0]), float(values[0]), int(steps[-1]),
                         float(values[-1]), float(times[-1]), lo, hi)


def _first_of(real: Any, extreme: float) -> float:
    """The first value equal to ``extreme`` (0.0 or -0.0: numpy may return either)."""
    if extreme != 0.0:
        return extreme
    return float(real[int((real == extreme).argmax())])


def merge_summaries(before: MetricSummary, after: MetricSummary) -> MetricSummary:
    """The summary of ``before``'s points followed by ``after``'s (a resumed run,
    or a stream read in pieces)."""
    if not before.count:
        return after
    if not after.count:
        return before
    los = [x for x in (before.min, after.min) if x is not None]
    his = [x for x in (before.max, after.max) if x is not None]
    return MetricSummary(before.count + after.count, before.nan_count + after.nan_count,
                         before.first_step, before.first_value, after.last_step,
                         after.last_value, after.last_time,
                         min(los) if los else None, max(his) if his else None)


# ---- floats that survive JSON bit for bit ------------------------------------------------------
# JSON has no NaN or infinity. Finite floats are JSON numbers (shortest round-trip
# text); +-inf are "Infinity" / "-Infinity"; the usual quiet NaN is "NaN"; any
# other NaN (a payload, the sign bit) is "NaN:0x" + its 16 hex digits, so what a
# listing reads from summary.json is the value open_run decodes, bit for bit.

_QUIET_NAN = 0x7FF8000000000000


def float_bits(x: float) -> int:
    import struct
    return int(struct.unpack("<Q", struct.pack("<d", x))[0])


def spell_float(x: float) -> float | str:
    """``x`` as JSON can hold it, losing nothing (see above)."""
    if x == x and x not in (math.inf, -math.inf):
        return x
    if x == math.inf:
        return "Infinity"
    if x == -math.inf:
        return "-Infinity"
    bits = float_bits(x)
    return "NaN" if bits == _QUIET_NAN else f"NaN:0x{bits:016x}"


def read_float(v: Any) -> float:
    """A float spelled by ``spell_float`` (or a JSON number); ValueError otherwise."""
    t = type(v)
    if t is float:
        return v  # type: ignore[no-any-return]
    if t is int:
        return float(v)
    if t is str:
        if v == "NaN":
            return math.nan
        if v == "Infinity":
            return math.inf
        if v == "-Infinity":
            return -math.inf
        if v.startswith("NaN:0x") and len(v) == 22:
            import struct
            x = float(struct.unpack("<d", struct.pack("<Q", int(v[6:], 16)))[0])
            if x != x:
                return x
    raise ValueError(f"not a float: {v!r}")


_FLOAT_FIELDS = ("first_value", "last_value", "last_time", "min", "max")


def summary_to_json(m: MetricSummary) -> dict[str, Any]:
    """A MetricSummary as JSON can hold it, bit for bit (floats by ``spell_float``)."""
    return {f: (spell_float(v) if f in _FLOAT_FIELDS and v is not None else v)
            for f, v in m.to_dict().items()}


def summary_from_json(doc: Any) -> MetricSummary:
    """``summary_to_json``'s inverse; ValueError naming what is wrong otherwise."""
    if not isinstance(doc, dict) or set(doc) != set(SUMMARY_FIELDS):
        raise ValueError(f"not a metric summary: {doc!r:.200}")
    ints = [doc[f] for f in ("count", "nan_count", "first_step", "last_step")]
    count, nans = ints[0], ints[1]
    if not all(type(v) is int for v in ints[:2]) or not 0 <= nans <= count:
        raise ValueError(f"bad counts in a metric summary: {doc!r:.200}")
    if count and not all(type(v) is int for v in ints[2:]):
        raise ValueError(f"bad steps in a metric summary: {doc!r:.200}")
    lo, hi = doc["min"], doc["max"]
    if (lo is None) != (hi is None) or (count and (lo is None) != (nans == count)):
        raise ValueError(f"bad min/max in a metric summary: {doc!r:.200}")
    floats = [None if doc[f] is None else read_float(doc[f]) for f in _FLOAT_FIELDS]
    if count and None in floats[:3]:
        raise ValueError(f"a metric summary without its values: {doc!r:.200}")
    return MetricSummary(count, nans, doc["first_step"], floats[0], doc["last_step"],
                         floats[1], floats[2], floats[3], floats[4])


# ---- artifact state ------------------------------------------------------------------------------
# One answer to "is this artifact there, and is it what was saved?" for show,
# verify and the dashboard. Every save is its own row: the first save of a name
# is stored as artifacts/NAME, the next as NAME.v2 (``version`` 2), and so on.
# A file is present when it is a regular file of the recorded size; a folder
# when it is a real folder with its manifest beside it (``verify=False``: a few
# lstat calls). ``verify=True`` also hashes: a file's sha256, a folder's
# manifest and every file it lists (and no others); ``verified`` says the result.

@dataclass(frozen=True)
class ArtifactState:
    """One saved artifact as it is on disk now."""

    name: str
    version: int
    path: str | None            # where it is stored, relative to the run folder
    kind: str                   # "file" or "folder"
    size: int | None            # bytes recorded at save (a folder: all its files)
    sha256: str | None          # a file's; a folder's manifest's
    present: bool
    verified: bool | None       # None: not hashed (size-only); else every check passed
    problems: tuple[str, ...] = ()
    consistent: bool = True     # False: the source changed while it was copied
    time: float | None = None

    @property
    def label(self) -> str:
        """The name a person reads: ``w``, then ``w (v2)``."""
        return self.name if self.version <= 1 else f"{self.name} (v{self.version})"

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["problems"] = list(self.problems)
        d["label"] = self.label
        return d


def artifact_states(run_dir: str | os.PathLike[str], events: Iterable[Mapping[str, Any]],
                    *, verify: bool = False) -> list[ArtifactState]:
    """Every artifact the events record, in order, as it is on disk (see above).
    Never follows a link; never reads outside ``run_dir/artifacts``."""
    root = Path(os.fspath(run_dir))
    out = []
    for ev in events:
        if not isinstance(ev, Mapping) or ev.get("kind") != "artifact":
            continue
        problems: list[dict[str, Any]] = []
        _check_artifact(root, ev, verify, problems)
        missing = any(p["problem"] in ("missing", "not_regular", "unsafe_path", "size",
                                       "manifest") and p["path"] == ev.get("path")
                      for p in problems) or any(p["problem"] == "bad_record" for p in problems)
        size, sha, ver = ev.get("size"), ev.get("sha256"), ev.get("version")
        out.append(ArtifactState(
            str(ev.get("name")), ver if isinstance(ver, int) and not isinstance(ver, bool) else 1,
            ev.get("path") if isinstance(ev.get("path"), str) else None,
            "folder" if ev.get("type") == "dir" else "file",
            size if isinstance(size, int) and not isinstance(size, bool) else None,
            sha if isinstance(sha, str) else None,
            not missing, (not problems) if verify else None,
            tuple(f"{p['problem']}: {p['detail']}" for p in problems),
            ev.get("consistent") is not False,
            ev.get("time") if isinstance(ev.get("time"), (int, float)) else None))
    return out


def verify_artifacts(run_dir: str | os.PathLike[str],
                      events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every problem of every recorded artifact, fully checked (sizes AND sha256;
    a folder's manifest hash, then each file it lists, and no others): one dict
    ``{"name", "path", "problem", "detail"}`` each, ``problem`` one of ``missing``,
    ``not_regular``, ``unsafe_path``, ``size``, ``sha256``, ``manifest``,
    ``extra_file``, ``bad_record``."""
    root = Path(os.fspath(run_dir))
    problems: list[dict[str, Any]] = []
    for ev in events:
        if isinstance(ev, Mapping) and ev.get("kind") == "artifact":
            _check_artifact(root, ev, True, problems)
    return problems


def _check_artifact(root: Path, ev: Mapping[str, Any], full: bool,
                    problems: list[dict[str, Any]]) -> None:
    name, rel = ev.get("name"), ev.get("path")

    def problem(kind: str, detail: str, path: object = rel) -> None:
        problems.append({"name": name, "path": path, "problem": kind, "detail": detail})

    target = _safe_target(root, rel)
    if target is None:
        problem("unsafe_path", f"recorded path {rel!r} is not inside {ARTIFACTS_DIR}/")
    elif ev.get("type") == "dir":
        _check_dir(root, target, ev, full, problem)
    else:
        size, sha = ev.get("size"), ev.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or not isinstance(sha, str):
            problem("bad_record", "the event lacks an integer size or a sha256")
        else:
            _check_file(target, size, sha, full, problem)


def _at(problem: Callable[..., None], path: str) -> Callable[[str, str], None]:
    """problem() reporting a file inside a folder artifact under the file's own path."""
    def report(kind: str, detail: str) -> None:
        problem(kind, detail, path)
    return report


def _safe_target(root: Path, rel: object) -> Path | None:
    if not isinstance(rel, str) or "\\" in rel or "\x00" in rel:
        return None
    parts = rel.split("/")
    if len(parts) < 2 or parts[0] != ARTIFACTS_DIR or any(p in ("", ".", "..") for p in parts):
        return None
    return root.joinpath(*parts)


def _check_file(path: Path, size: int, sha: str, full: bool,
                problem: Callable[[str, str], None]) -> None:
    from expman._fsutil import sha256_file
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        problem("missing", f"{path} is missing")
        return
    except OSError as e:
        problem("missing", f"{path}: {e}")
        return
    if not stat.S_ISREG(st.st_mode):
        problem("not_regular", f"{path} is not a regular file (a link, folder or device)")
        return
    if st.st_size != size:
        problem("size", f"{path} has {st.st_size} bytes, {size} recorded")
        return
    if not full:
        return
    try:
        found = sha256_file(path)
    except OSError as e:
        problem("not_regular", f"{path}: {e}")
        return
    if found != sha:
        problem("sha256", f"{path}: sha256 {found}, {sha} recorded")


def _check_dir(root: Path, target: Path, ev: Mapping[str, Any], full: bool,
               problem: Callable[..., None]) -> None:
    import hashlib

    import orjson

    from expman._fsutil import read_regular, regular_stat
    from expman.layout import MAX_MANIFEST_BYTES
    side = _safe_target(root, ev.get("manifest"))
    sha = ev.get("sha256")
    if side is None or not isinstance(sha, str):
        problem("bad_record", "the event lacks a manifest path inside artifacts/ or its sha256")
        return
    try:
        st = os.lstat(target)
    except OSError:
        problem("missing", f"{target} is missing")
        return
    if not stat.S_ISDIR(st.st_mode):
        problem("not_regular", f"{target} is not a folder (a link or a file)")
        return
    try:
        mst = regular_stat(side)
    except FileNotFoundError:
        problem("manifest", f"the manifest {side} is missing")
        return
    except (OSError, ValueError) as e:
        problem("manifest", f"the manifest {side} cannot be read: {e}")
        return
    if mst.st_size > MAX_MANIFEST_BYTES:
        problem("manifest", f"the manifest {side} is larger than a manifest can be")
        return
    if not full:
        return
    try:
        body = read_regular(side, limit=MAX_MANIFEST_BYTES)
    except (OSError, ValueError) as e:
        problem("manifest", f"the manifest {side} cannot be read: {e}")
        return
    if hashlib.sha256(body).hexdigest() != sha:
        problem("manifest", f"the manifest {side} does not match its recorded sha256")
        return
    try:
        entries = orjson.loads(body)["files"]
        listed = {e["path"]: (int(e["size"]), str(e["sha256"])) for e in entries}
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        problem("manifest", f"the manifest {side} is not a list of files")
        return
    base = target.relative_to(root).as_posix()
    for rel, (size, fsha) in sorted(listed.items()):
        path = _safe_target(root, f"{base}/{rel}")
        if path is None:
            problem("unsafe_path", f"manifest entry {rel!r} leaves the folder")
            continue
        _check_file(path, size, fsha, True, _at(problem, path.relative_to(root).as_posix()))
    for top, _dirs, names in os.walk(target, followlinks=False):
        for n in names:
            rel = (Path(top) / n).relative_to(target).as_posix()
            if rel not in listed:
                problem("extra_file", f"{target / rel} is not in the manifest",
                        (Path(top) / n).relative_to(root).as_posix())


# ---- integrity lines -----------------------------------------------------------------------------

def integrity_problems(integrity: Mapping[str, Any], status: str,
                       artifacts: Iterable[ArtifactState] = ()) -> list[str]:
    """One line per thing wrong with a run, from ``Run.integrity`` (the decoder's
    report and the recorded loss) and its artifact states: what show, the
    dashboard and verify say. Empty when the run is intact. A torn tail of a
    RUNNING run is a frame being written, not a problem."""
    ig = integrity
    lines = []
    if ig.get("meta_error"):
        lines.append(str(ig["meta_error"]))
    if ig.get("torn_bytes") and status != RUNNING:
        lines.append(f"{METRICS_FILE}: torn tail: the last {ig['torn_bytes']} bytes were "
                     "dropped (a crash cut the last frame)")
    if ig.get("corrupt_bytes"):
        lines.append(f"{METRICS_FILE}: {ig['corrupt_bytes']} bytes unreadable at offsets "
                     f"{list(ig.get('corrupt_at') or [])[:5]}")
    if ig.get("unknown_points"):
        lines.append(f"{METRICS_FILE}: {ig['unknown_points']} points of metrics whose name "
                     "was lost")
    if ig.get("params_error"):
        lines.append(f"{PARAMS_FILE}: {ig['params_error']}")
    if ig.get("bad_event_lines"):
        lines.append(f"{EVENTS_FILE}: {ig['bad_event_lines']} unreadable lines")
    for p in ig.get("lineage") or ():       # expman.branches: bad branch lines, broken parents
        lines.append(f"{p.get('problem')}: {p.get('detail')}")
    losses = dict(ig.get("rank_data_loss") or {})
    if ig.get("data_loss"):
        losses = {"": ig["data_loss"], **losses}
    for rank, loss in losses.items():
        who = f"rank {rank}'s writer" if rank != "" else "the writer"
        lines.append(f"data loss recorded by {who}: {loss.get('rows_dropped') or 0} rows and "
                     f"{loss.get('events_dropped') or 0} events dropped, "
                     f"{loss.get('write_errors') or 0} failed writes"
                     + (f" ({loss['last_error']})" if loss.get("last_error") else ""))
    for a in artifacts:
        if not a.present:
            lines.append(f"artifact {a.label!r} ({a.path}) is missing or of the wrong size")
        elif a.verified is False:
            lines.append(f"artifact {a.label!r}: " + "; ".join(a.problems))
    return lines


def settle_torn_tail(report: Mapping[str, Any], closed: bool) -> dict[str, Any]:
    """A decoder's report as the read model states it. A torn tail is what a
    crash mid-write leaves, so only a stream that may still have been written
    can have one: when its writer closed the stream cleanly (a final status
    recorded), a bad last frame is damage, counted in ``corrupt_bytes`` (at the
    offset where it starts) and never cut by a repair as a torn tail."""
    out = dict(report)
    torn = out.get("torn_bytes") or 0
    if closed and torn:
        out["corrupt_bytes"] = (out.get("corrupt_bytes") or 0) + torn
        out["corrupt_at"] = [*(out.get("corrupt_at") or []), out.get("end", 0)]
        out["torn_bytes"] = 0
        out["closed_damage"] = True
    return out
