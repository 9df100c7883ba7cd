"""The run summary (``summary.json``): per metric what a full decode of
``metrics.bin`` would find, so a listing reads one small file per run.

The figures are ``expman.readmodel.MetricSummary`` (one rule for NaN and
infinities, one set of names). The writer thread keeps them as frames reach the
file; ``Experiment`` writes them out every few seconds while the run is open and
at close. The file is checked, never trusted: it names the ``metrics.bin`` size
it covers and the CRC that ends those bytes (the last frame's payload CRC), and
carries a CRC of its own text. A reader uses it only when the size is the
file's size now, the 4 bytes there are that CRC and the digest matches;
otherwise (a crash, a resume in progress, a summary edited by hand, no summary
yet) ``summarize`` decodes. Both give the same shape:

    {"format": 2, "metrics_bytes": int, "source": "summary" | "decode" | "branches",
     "metrics": {name: MetricSummary}}

Floats are spelled by ``readmodel.spell_float`` in the file (bit for bit,
NaN payloads included). ``keys_from_events`` recovers key names from
``events.jsonl`` so a damaged ``metrics.bin`` still names its points.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from expman.layout import EVENTS_FILE, METRICS_FILE, RUN_FILE, SUMMARY_FILE, parse_event_lines
from expman.readmodel import (
    MetricSummary, merge_summaries, summarize_points, summary_from_json, summary_to_json,
)

__all__ = ["SUMMARY_FORMAT", "read_summary", "summarize", "keys_from_events",
           "from_columns", "from_writer", "merge", "to_json", "check_summary"]

SUMMARY_FORMAT = 2
MAX_SUMMARY_BYTES = 64 << 20     # a crafted summary.json is not read whole


# ---- building ---------------------------------------------------------------------------
def from_writer(raw: Mapping[str, tuple[int, int, int, int, int, float, float, float, float]]
                ) -> dict[str, MetricSummary]:
    """Metrics of ``Core._summary()``'s table (time in microseconds, as on disk)."""
    out = {}
    for name, (count, nans, first, last, t_us, v0, value, lo, hi) in raw.items():
        real = count > nans
        out[name] = MetricSummary(count, nans, first, v0, last, value, t_us / 1e6,
                                  lo if real else None, hi if real else None)
    return out


def from_columns(columns: Mapping[str, tuple[Any, Any, Any]]) -> dict[str, MetricSummary]:
    """Metrics of decoded columns ``{name: (steps, times, values)}`` in logged order."""
    out = {}
    for name, (steps, times, values) in columns.items():
        if len(values):
            out[name] = summarize_points(steps, times, values)
    return out


def merge(before: Mapping[str, MetricSummary], after: Mapping[str, MetricSummary]
          ) -> dict[str, MetricSummary]:
    """The metrics of a file that holds ``before``'s rows, then ``after``'s (a resume)."""
    out = dict(before)
    for name, a in after.items():
        b = out.get(name)
        out[name] = a if b is None else merge_summaries(b, a)
    return out


def _digest(doc: Mapping[str, Any]) -> str:
    import zlib

    import orjson
    body = {k: v for k, v in doc.items() if k != "digest"}
    return f"{zlib.crc32(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)):08x}"


def to_json(metrics_bytes: int, metrics: Mapping[str, MetricSummary],
            metrics_path: str | os.PathLike[str] | None = None,
            last_frame: int | None = None) -> dict[str, Any]:
    """The document written to summary.json. ``metrics_path`` is the metrics.bin
    it summarises and ``last_frame`` the offset of the last frame the figures
    cover (the writer knows it): the frame's payload CRC, read from the file,
    ties the summary to those bytes. Without them ``end_crc`` is null and
    readers always decode."""
    spelled = {name: summary_to_json(e) for name, e in metrics.items()}
    crc = None if metrics_path is None or not last_frame else end_crc(metrics_path,
                                                                        metrics_bytes)
    doc: dict[str, Any] = {"format": SUMMARY_FORMAT, "metrics_bytes": metrics_bytes,
                           "last_frame": last_frame if crc is not None else None,
                           "end_crc": crc, "metrics": spelled}
    doc["digest"] = _digest(doc)
    return doc


def end_crc(metrics_path: str | os.PathLike[str], metrics_bytes: int) -> int | None:
    """The u32 that ends the first ``metrics_bytes`` bytes of a metrics.bin (the
    payload CRC of the last frame they hold), or None if it cannot be read. One
    4-byte read, never through a link."""
    import struct

    from expman._fsutil import open_nofollow
    if metrics_bytes < 4:
        return None
    try:
        fd = open_nofollow(os.fspath(metrics_path), os.O_RDONLY)
    except (OSError, ValueError):
        return None
    try:
        got = os.pread(fd, 4, metrics_bytes - 4)
    except OSError:
        return None
    finally:
        os.close(fd)
    return int(struct.unpack("<I", got)[0]) if len(got) == 4 else None


# ---- reading ----------------------------------------------------------------------------
def _parse(doc: Any) -> dict[str, Any] | None:
    """The summary in memory (``digest_ok`` says whether its digest matches its
    text), or None if ``doc`` is not a well-formed summary."""
    if type(doc) is not dict or doc.get("format") != SUMMARY_FORMAT:
        return None
    size, metrics, crc = doc.get("metrics_bytes"), doc.get("metrics"), doc.get("end_crc")
    last = doc.get("last_frame")
    if (type(size) is not int or type(metrics) is not dict or type(crc) is not int
            or type(last) is not int):
        return None
    digest_ok = doc.get("digest") == _digest(doc)     # False: edited by hand
    out = {}
    try:
        for name, e in metrics.items():
            m = summary_from_json(e)
            if not m.count:
                return None
            out[name] = m
    except ValueError:
        return None
    return {"format": SUMMARY_FORMAT, "metrics_bytes": size, "last_frame": last,
            "end_crc": crc, "source": "summary", "metrics": out, "digest_ok": digest_ok}


def check_summary(run_dir: str | os.PathLike[str]) -> tuple[dict[str, Any] | None, str | None]:
    """The run's summary.json and why it is not to be trusted (None: it is).
    ``(None, reason)`` when it is absent or unreadable."""
    import orjson

    from expman._fsutil import read_regular
    run = os.fspath(run_dir)
    mpath = os.path.join(run, METRICS_FILE)
    try:
        size = os.stat(mpath).st_size
    except OSError:
        return None, f"{METRICS_FILE} is missing"
    try:
        # one open: never a link, a FIFO or a device; a larger file is crafted, not ours
        data = read_regular(os.path.join(run, SUMMARY_FILE), limit=MAX_SUMMARY_BYTES)
    except FileNotFoundError:
        return None, f"no {SUMMARY_FILE}"
    except (OSError, ValueError) as e:
        return None, f"{SUMMARY_FILE} unreadable: {e}"
    try:
        doc = _parse(orjson.loads(data))
    except ValueError:                  # orjson.JSONDecodeError is a ValueError
        doc = None
    if doc is None:
        return None, f"{SUMMARY_FILE} is not a summary of format {SUMMARY_FORMAT}"
    if not doc["digest_ok"]:
        return doc, f"{SUMMARY_FILE} was changed after it was written (its digest does not match)"
    if doc["metrics_bytes"] != size:
        return doc, (f"{SUMMARY_FILE} covers {doc['metrics_bytes']} bytes of {METRICS_FILE}, "
                     f"which has {size}")
    if not _last_frame_intact(mpath, size, doc["last_frame"], doc["end_crc"]):
        return doc, (f"{SUMMARY_FILE} names a last frame at byte {doc['last_frame']} with "
                     f"CRC {doc['end_crc']:08x} that {METRICS_FILE} does not hold intact")
    return doc, None


MAX_CHECKED_FRAME = 64 << 20     # a last frame larger than this is not read to check it


def _last_frame_intact(mpath: str, size: int, offset: int, crc: int) -> bool:
    """The frame at ``offset`` ends at ``size``, both its CRCs check, and its
    payload CRC is ``crc``: one frame read (the last), never a decode."""
    import struct
    import zlib

    from expman._fsutil import open_nofollow
    if not 0 < offset <= size - 12:
        return False
    try:
        fd = open_nofollow(mpath, os.O_RDONLY)
    except (OSError, ValueError):
        return False
    try:
        head = os.pread(fd, 8, offset)
        if len(head) != 8 or zlib.crc32(head[:4]) != struct.unpack_from("<I", head, 4)[0]:
            return False
        length = struct.unpack_from("<I", head)[0]
        if offset + 12 + length != size or length > MAX_CHECKED_FRAME:
            return False
        rest = os.pread(fd, length + 4, offset + 8)
    except OSError:
        return False
    finally:
        os.close(fd)
    if len(rest) != length + 4:
        return False
    stored = struct.unpack_from("<I", rest, length)[0]
    return stored == crc and zlib.crc32(rest[:length]) == crc


def read_summary(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The run's summary.json if it is intact and covers all of metrics.bin as it
    is now (size and last frame CRC); None when it is missing, damaged, forged or
    stale."""
    doc, why = check_summary(run_dir)
    return doc if why is None else None


def keys_from_events(events: Iterable[Mapping[str, Any]]) -> dict[int, str]:
    """Key id -> name from the ``{"kind": "key"}`` copies in events.jsonl; pass it
    as ``decode_metrics(..., keys=...)`` so salvage names points whose defining
    frame was destroyed. Malformed entries are ignored."""
    keys: dict[int, str] = {}
    for e in events:
        if e.get("kind") != "key":
            continue
        kid, name = e.get("id"), e.get("name")
        if (isinstance(kid, int) and not isinstance(kid, bool) and 0 <= kid <= 0xFFFFFFFF
                and isinstance(name, str) and name):
            keys[kid] = name
    return keys


def read_event_keys(run_dir: str | os.PathLike[str]) -> dict[int, str]:
    """keys_from_events over a run folder's events.jsonl ({} when unreadable)."""
    from expman._fsutil import read_regular
    try:
        data = read_regular(Path(os.fspath(run_dir)) / EVENTS_FILE)
    except (OSError, ValueError):
        return {}
    events, _bad, _used = parse_event_lines(data)
    return keys_from_events(events)


def summarize(run_dir: str | os.PathLike[str],
              meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The summary if fresh, else computed by decoding metrics.bin (with the key
    names from events.jsonl, salvaging past damage). Same shape either way;
    ``source`` says which. Raises OSError when metrics.bin cannot be read.

    A forked or branched run (expman.branches) is summarised over its main
    history: summary.json, which the writer computes over every row it wrote,
    is not used for it. ``meta``: run.json, if the caller has it."""
    from expman import branches
    run = Path(os.fspath(run_dir))
    if meta is None:
        from expman._fsutil import read_json_object
        try:
            meta = read_json_object(run / RUN_FILE)
        except (OSError, ValueError):
            meta = {}
    if branches.is_branched(run, dict(meta)):
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hist = branches.read_history(run, 0, dict(meta), salvage=True,
                                         keys=read_event_keys(run))
        return {"format": SUMMARY_FORMAT, "metrics_bytes": hist.report.get("end", 0),
                "source": "branches",
                "metrics": from_columns({n: (s.steps, s.times, s.values)
                                         for n, s in hist.metrics.items()})}
    fresh = read_summary(run_dir)
    if fresh is not None:
        return fresh
    from expman._fsutil import read_regular
    data = read_regular(run / METRICS_FILE)     # never a FIFO, a device or a link
    return decoded_summary(data, read_event_keys(run))


def decoded_summary(data: bytes, keys: dict[int, str] | None = None) -> dict[str, Any]:
    """The summary a full decode of ``data`` (a metrics.bin's bytes) gives."""
    from expman import _core
    columns, _keys, _report = _core.decode_metrics(data, 0, keys, True)
    return {"format": SUMMARY_FORMAT, "metrics_bytes": len(data), "source": "decode",
            "metrics": from_columns(columns)}
