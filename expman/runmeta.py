"""Tags, notes and group: what a person says about a run, kept in run.json; and
the run's ``uuid``, drawn once at creation (``new_uuid``), which tells two runs
apart that were given the same id on two machines (``expman sync`` refuses to
replace one with the other).

Set at start (``Experiment(tags=..., notes=..., group=...)``) and editable once
the run is closed (``set_tags``, ``set_notes``): a running process owns its
run.json and rewrites it whole, so an edit then would be lost or would race it.
Read side: ``matches(meta, tags=..., group=...)`` is the filter ``list_runs``,
``expman list`` and the dashboard share.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from expman.errors import ExpmanTypeError, ExpmanValueError, RunClosedError, RunNotFoundError
from expman.layout import RUN_FILE, RUNNING
from expman.liveness import effective_status

__all__ = ["check_tags", "check_notes", "check_group", "set_tags", "set_notes", "update_closed_run",
           "matches", "new_uuid", "TAGS", "NOTES", "GROUP", "UUID"]

TAGS, NOTES, GROUP, UUID = "tags", "notes", "group", "uuid"       # run.json fields
MAX_TAG = 128
MAX_NOTES = 1 << 16


def _unprintable(text: str) -> bool:
    """Control characters, or bidirectional controls (a tag shown as another)."""
    from expman._fsutil import BIDI_CONTROLS
    return any(ord(c) < 32 or c in BIDI_CONTROLS for c in text)


def new_uuid() -> str:
    """A run's identity, unique across machines (a random UUID4, as text)."""
    import uuid
    return str(uuid.uuid4())


def check_tags(tags: Iterable[str] | None, where: str = "tags") -> list[str]:
    """Tags in order, duplicates dropped; each a non-empty str without control characters."""
    if tags is None:
        return []
    if isinstance(tags, (str, bytes)):
        raise ExpmanTypeError(f"{where} must be a list of str, got a single {type(tags).__name__} "
                              f"({tags!r:.60}); wrap it in a list")
    out: list[str] = []
    for t in tags:
        if not isinstance(t, str):
            raise ExpmanTypeError(f"{where}: each tag must be a str, got {type(t).__name__} ({t!r:.60})")
        if not t or t != t.strip() or len(t) > MAX_TAG or _unprintable(t) or t[0] in "+-":
            raise ExpmanValueError(
                f"{where}: tag {t!r:.80} must be 1-{MAX_TAG} characters, without control or "
                "bidirectional control characters, surrounding spaces, or a leading '+'/'-' "
                "(the CLI's add/remove marks)")
        if t not in out:
            out.append(t)
    return out


def check_notes(notes: object) -> str | None:
    if notes is None:
        return None
    if not isinstance(notes, str):
        raise ExpmanTypeError(f"notes must be a str, got {type(notes).__name__} ({notes!r:.60})")
    if len(notes) > MAX_NOTES or "\x00" in notes:
        raise ExpmanValueError(f"notes must be at most {MAX_NOTES} characters without NUL")
    return notes


def check_group(group: object) -> str | None:
    if group is None:
        return None
    if not isinstance(group, str) or not group or len(group) > 256 or _unprintable(group):
        raise ExpmanValueError(f"group must be a non-empty str of at most 256 printable "
                               f"characters (no bidirectional controls), got {group!r:.80}")
    return group


def update_closed_run(run_dir: str | os.PathLike[str], changes: dict[str, Any]) -> dict[str, Any]:
    """Merge ``changes`` into a closed run's run.json atomically; returns the new meta.

    Refuses a RUNNING run (its process rewrites run.json at close and would
    undo the edit). A CRASHED run has no writer left and may be edited.
    """
    from expman._fsutil import atomic_write_json, read_json
    path = Path(os.fspath(run_dir))
    try:
        meta = read_json(path / RUN_FILE)
    except FileNotFoundError:
        raise RunNotFoundError(2, f"not a run folder (no {RUN_FILE}): {path}", str(path)) from None
    except ValueError as e:
        raise ExpmanValueError(f"{path / RUN_FILE} is not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise ExpmanValueError(f"{path / RUN_FILE} does not hold a JSON object")
    if effective_status(meta, path) == RUNNING:
        raise RunClosedError(
            f"run {path} is RUNNING (pid {meta.get('pid')} on {meta.get('host')}); its process "
            "owns run.json until it closes. Edit it after the run ends, or pass "
            "tags/notes/group to Experiment()")
    meta.update(changes)
    atomic_write_json(path / RUN_FILE, meta)
    return meta


def set_tags(run_dir: str | os.PathLike[str], add: Iterable[str] = (),
             remove: Iterable[str] = ()) -> list[str]:
    """Add and remove tags on a closed run; returns its tags afterwards."""
    from expman._fsutil import read_json
    add_list, remove_list = check_tags(add, "add"), check_tags(remove, "remove")
    path = Path(os.fspath(run_dir))
    try:
        current = read_json(path / RUN_FILE).get(TAGS) or []
    except (OSError, ValueError, AttributeError):
        current = []                       # update_closed_run reports the real problem
    tags = [t for t in current if isinstance(t, str) and t not in remove_list]
    tags += [t for t in add_list if t not in tags]
    return list(update_closed_run(path, {TAGS: tags})[TAGS])


def set_notes(run_dir: str | os.PathLike[str], text: str | None) -> str | None:
    """Replace a closed run's notes (None clears them)."""
    notes = check_notes(text)
    return update_closed_run(run_dir, {NOTES: notes}).get(NOTES)


def matches(meta: dict[str, Any], tags: str | Iterable[str] | None = None,
            group: str | None = None) -> bool:
    """True if the run has every one of ``tags`` and is in ``group`` (None: any)."""
    if group is not None and meta.get(GROUP) != group:
        return False
    if tags:
        wanted = [tags] if isinstance(tags, str) else list(tags)
        have = meta.get(TAGS)
        have = set(have) if isinstance(have, list) else set()
        return all(t in have for t in wanted)
    return True
