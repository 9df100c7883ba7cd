"""The loss record: what a writer lost, durable before anything else is.

run.json's ``data_loss`` is written at close, which a full disk or a SIGKILL
can prevent. So every writer also keeps ``loss.json`` (``loss.rank<r>.json``
for rank r): a file of exactly 512 bytes, written at the run's start while
there is room, that the native writer rewrites in place (no new blocks) and
fsyncs the moment it drops rows or events or a write fails. A reader merges
it with run.json's figure (docs/format.md, "The loss record").

Read side only needs ``recorded_loss``; it imports nothing of the writer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from expman.layout import LOSS_FILE, rank_file

RECORD_SIZE = 512          # EXLOG_LOSS_RECORD_SIZE in src/exlog.h
COUNTS = ("rows_dropped", "events_dropped", "write_errors")


def read_record(run_dir: str | os.PathLike[str], rank: int | None = 0
                ) -> dict[str, Any] | None:
    """The loss record of one rank as written: None when there is none (runs
    from before it, muted ranks); ``{"unreadable": reason}`` when it is damaged,
    which a reader must treat as loss of unknown size."""
    from expman._fsutil import read_regular
    from expman.errors import CorruptRunError
    path = Path(run_dir) / rank_file(LOSS_FILE, rank)
    try:
        data = read_regular(path, limit=RECORD_SIZE * 8)
    except FileNotFoundError:
        return None
    except (OSError, CorruptRunError) as e:
        return {"unreadable": str(e)}
    try:
        doc = json.loads(data)
    except ValueError:
        return {"unreadable": f"{path.name} is not JSON (a torn rewrite?)"}
    if not isinstance(doc, dict) or not all(
            type(doc.get(k, 0)) is int and doc.get(k, 0) >= 0 for k in COUNTS):
        return {"unreadable": f"{path.name} has no valid counts"}
    return doc


def recorded_loss(run_dir: str | os.PathLike[str], rank: int | None = 0,
                  meta: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """What the writer of this rank recorded losing, or None when nothing:
    the larger of run.json's ``data_loss`` (``meta``) and the loss record, so
    loss shows whether or not the final run.json could be written."""
    said = meta.get("data_loss") if isinstance(meta, dict) else None
    said = said if isinstance(said, dict) else None
    rec = read_record(run_dir, rank)
    if rec is not None and "unreadable" in rec:
        return {**(said or {}), "record_unreadable": rec["unreadable"]}
    if rec is None or not any(rec.get(k) for k in COUNTS):
        return said
    out = dict(said or {})
    for k in COUNTS:
        theirs = out.get(k)
        out[k] = max(rec[k], theirs if type(theirs) is int else 0)
    if not out.get("last_error") and type(rec.get("last_errno")) is int and rec["last_errno"]:
        out["last_error"] = os.strerror(rec["last_errno"])
    return out
