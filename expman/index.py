"""The listing index: ``<base>/.expman-index``, a cache of ``list_runs`` lines.

Why: a cold listing of 10,000 runs reads 30,000 small files (run.json,
params.json, summary.json per run); the index makes it one sequential read plus
one ``stat`` per run folder. It is a cache, never the truth: the run folders
stay the database, and any entry that cannot be proven current is read again
from them.

An entry is trusted only while its run folder's ``(inode, mtime_ns, ctime_ns)``
is what it was when the entry was read. Every metadata write of expman replaces
its file by rename (run.json, params.json, summary.json: the writer at open,
close and resume, ``expman tag``/``note``, ``expman sync``), and a rename or a
new file changes the folder's mtime and ctime; a folder deleted, replaced or
copied in (``cp -r``, ``cp -a``: a new inode and ctime) misses too. Only lines
that cannot change while the folder does not are kept: recorded FINISHED,
FAILED or KILLED, one rank, not damaged, not reached through a symlink, and not
changed within ``RACY`` seconds of the index's write (judged by the
filesystem's clock: a second change within one timestamp tick would keep the
folder's times). A live run (recorded RUNNING: alive or CRASHED) is never
kept: its liveness and metrics are read every time. What the index cannot see
is a file edited in place by something other than expman (an editor that does
not rename): ``expman index --rebuild`` reads everything again.

Many processes: an update writes a whole new file beside the old one and
``os.replace``-s it over (atomic, also on NFS within one folder); the last
writer wins and a lost update is only a miss for the next listing. The file
starts with a header (format, length, CRC-32 of the body), so a file cut or
garbled (a crash of the machine before the data reached the disk) is detected
and ignored, never half-trusted. A crafted index is bounded (``MAX_INDEX_BYTES``)
and every entry is checked field by field when used; entries are looked up by
the names a directory scan found, so no entry can name a folder outside the base.
"""

from __future__ import annotations

import os
import sys
import time
import zlib
from typing import Any

from expman._fsutil import create_exclusive
from expman.layout import FINAL_STATUSES, INDEX_FILE
from expman.liveness import world_size
from expman.readmodel import read_float, spell_float

__all__ = ["RunIndex", "INDEX_FORMAT", "MAX_INDEX_BYTES", "dir_key", "parse"]

INDEX_FORMAT = 1
MAGIC = b"expman-index"
MAX_INDEX_BYTES = 1 << 30       # a larger (crafted) index is ignored, not read
MAX_ENTRY_BYTES = 1 << 20       # a run whose line is larger is read from its folder each time
RACY = 2.0                      # seconds: a folder changed this recently is not kept
STALE_TEMP = 600.0              # seconds: a temp file older than this was left by a killed writer

DirKey = tuple[int, int, int]


def dir_key(st: os.stat_result) -> DirKey:
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def _encode(line: Any) -> dict[str, Any]:
    """A ``reader.RunSummary`` as an entry holds it (no path: that is the scan's)."""
    d: dict[str, Any] = line.to_dict()
    for k in ("id", "path", "damaged"):
        d.pop(k)
    d["last_metrics"] = {k: spell_float(v) for k, v in line.last_metrics.items()}
    return d


_NUMBER = (int, float)     # by type(), not isinstance(): a bool is not a time


def _decode(d: Any) -> dict[str, Any] | None:
    """An entry's ``RunSummary`` fields (but ``path``), or None when any field
    is not what ``_encode`` writes (straight-line checks: a warm listing of
    10,000 runs runs this 10,000 times)."""
    try:
        if type(d) is not dict or d["status"] not in FINAL_STATUSES:
            return None
        tags, params, last, points = d["tags"], d["params"], d["last_metrics"], d["points"]
        start, duration, end = d["start_time"], d["duration"], d["end_time"]
        ex, loss, group, notes = d["exit"], d["data_loss"], d["group"], d["notes"]
        rank, reason, parent = d["status_rank"], d["status_reason"], d["parent"]
        if (type(d["experiment"]) is not str or type(d["run_name"]) is not str
                or type(params) is not dict or type(last) is not dict
                or type(points) is not int or points < 0 or type(tags) is not list
                or (start is not None and type(start) not in _NUMBER)
                or (duration is not None and type(duration) not in _NUMBER)
                or (end is not None and type(end) not in _NUMBER)
                or (ex is not None and type(ex) is not dict)
                or (loss is not None and type(loss) is not dict)
                or (group is not None and type(group) is not str)
                or (notes is not None and type(notes) is not str)
                or (reason is not None and type(reason) is not str)
                or (rank is not None and type(rank) is not int)
                or (parent is not None and type(parent) is not str)):
            return None
        for t in tags:
            if type(t) is not str:
                return None
        return {"experiment": d["experiment"], "run_name": d["run_name"], "status": d["status"],
                "start_time": None if start is None else float(start),
                "duration": None if duration is None else float(duration),
                "params": params,
                "last_metrics": {k: v if type(v) is float else read_float(v)
                                 for k, v in last.items()},
                "end_time": None if end is None else float(end), "points": points,
                "exit": ex, "data_loss": loss, "tags": tags, "group": group, "notes": notes,
                "status_rank": rank, "status_reason": reason, "parent": parent}
    except (KeyError, TypeError, ValueError, OverflowError):
        return None


class RunIndex:
    """One base dir's index as loaded, plus what a listing learned: ``lookup``
    each run folder the scan found, ``offer`` the lines read on a miss,
    ``save`` when anything changed. Counters say what happened (``stats``)."""

    def __init__(self, base: str | os.PathLike[str], entries: dict[tuple[str, str], Any]
                 | None = None, state: str = "empty") -> None:
        self.base = os.fspath(base)
        self.path = os.path.join(self.base, INDEX_FILE)
        self._old = entries or {}
        self._new: dict[tuple[str, str], list[Any]] = {}
        self._dropped: set[tuple[str, str]] = set()
        self.state = state            # how the file was found: loaded, missing, stale, empty
        self.hits = self.misses = 0
        self.kept = len(self._old)    # entries in the file (as written, after a save)
        self.changed = False

    @classmethod
    def load(cls, base: str | os.PathLike[str]) -> RunIndex:
        """The index of ``base``; an empty one when the file is missing, of
        another format, cut, garbled or too large (it is rebuilt by the next save)."""
        path = os.path.join(os.fspath(base), INDEX_FILE)
        from expman._fsutil import read_regular
        from expman.errors import CorruptRunError
        try:
            data = read_regular(path, limit=MAX_INDEX_BYTES)
        except FileNotFoundError:
            return cls(base, state="missing")
        except (OSError, CorruptRunError):
            return cls(base, state="stale")
        entries = parse(data)
        if entries is None:
            return cls(base, state="stale")
        return cls(base, entries, "loaded")

    def __len__(self) -> int:
        return len(self._old)

    def lookup(self, exp: str, name: str, run: str
               ) -> tuple[dict[str, Any] | None, DirKey | None]:
        """The kept line (``RunSummary`` fields but ``path``) of the run folder
        ``run`` (``base/exp/name``) if the folder is as it was, with the folder's
        key now (None: it cannot be stat'ed)."""
        try:
            key = dir_key(os.stat(run))
        except OSError:
            return None, None
        old = self._old.get((exp, name))
        if old is not None and old[0] == key:
            line = _decode(old[1])
            if line is not None:
                self.hits += 1
                return line, key
        self.misses += 1
        if old is not None:
            self._dropped.add((exp, name))
            self.changed = True
        return None, key

    def offer(self, exp: str, name: str, key: DirKey | None, line: Any,
              meta: dict[str, Any] | None) -> None:
        """Keep the line (a ``RunSummary``) just read from run folder
        ``base/exp/name`` (whose key was taken before reading) if it cannot
        change while the folder does not."""
        if (key is None or line is None or meta is None or line.damaged
                or line.status not in FINAL_STATUSES or meta.get("status") not in FINAL_STATUSES
                or world_size(meta) > 1):
            return
        self._new[(exp, name)] = [list(key), _encode(line)]
        self.changed = True

    def forget_missing(self, seen: set[tuple[str, str]], experiment: str | None) -> None:
        """Drop the entries of folders the scan did not find (deleted runs)."""
        for k in self._old:
            if k not in seen and (experiment is None or k[0] == experiment):
                self._dropped.add(k)
                self.changed = True

    def save(self) -> bool:
        """Write the index as it now is (old entries still valid plus new ones)
        as a new file replacing the old. False when the base is not writable
        (the listing was right anyway; the next one misses again)."""
        import orjson
        import threading
        tmp = os.path.join(self.base, f"{INDEX_FILE}.{os.getpid()}.{threading.get_ident()}."
                                      f"{time.monotonic_ns()}.tmp")
        try:
            fd = create_exclusive(tmp)
        except OSError:
            return False
        try:
            with open(fd, "wb") as f:
                # the filesystem's own clock: a folder changed within RACY of it
                # could change again within one timestamp tick, unseen
                fs_now = os.fstat(f.fileno()).st_mtime_ns - int(RACY * 1e9)
                entries = {k: v for k, v in self._old.items() if k not in self._dropped}
                entries.update(self._new)
                lines = []
                for (exp, name), (key, line) in entries.items():
                    if not (isinstance(key, list) and len(key) == 3 and type(key[2]) is int
                            and key[2] < fs_now and key[1] < fs_now):
                        continue
                    b = orjson.dumps([exp, name, key, line])
                    if len(b) <= MAX_ENTRY_BYTES:
                        lines.append(b)
                body = b"\n".join(lines) + b"\n"
                f.write(b"%s %d %d %08x\n" % (MAGIC, INDEX_FORMAT, len(body), zlib.crc32(body)))
                f.write(body)
                self.kept = len(lines)
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if isinstance(sys.exc_info()[1], OSError):
                return False        # a full disk, a read-only base: the listing stands
            raise
        self._sweep_temps()
        return True

    def _sweep_temps(self) -> None:
        """Remove temp files a killed writer left (old enough not to be another's)."""
        prefix, now = INDEX_FILE + ".", time.time()
        try:
            with os.scandir(self.base) as it:
                for e in it:
                    if e.name.startswith(prefix) and e.name.endswith(".tmp"):
                        try:
                            if now - e.stat(follow_symlinks=False).st_mtime > STALE_TEMP:
                                os.unlink(e.path)
                        except OSError:
                            pass
        except OSError:
            pass

    def stats(self) -> dict[str, Any]:
        return {"index": self.path, "found": self.state, "entries": len(self._old),
                "hits": self.hits, "misses": self.misses, "kept": self.kept}


def parse(data: bytes) -> dict[tuple[str, str], list[Any]] | None:
    """The entries of an index file's bytes, or None when its header does not
    match its body (another format, cut, garbled). Malformed entries are left
    out (a miss each); their fields are checked when used (``_decode``)."""
    import orjson
    head, sep, body = data.partition(b"\n")
    if not sep:
        return None
    parts = head.split(b" ")
    try:
        if (len(parts) != 4 or parts[0] != MAGIC or int(parts[1]) != INDEX_FORMAT
                or int(parts[2]) != len(body) or int(parts[3], 16) != zlib.crc32(body)):
            return None
    except ValueError:
        return None
    out: dict[tuple[str, str], list[Any]] = {}
    for raw in body.split(b"\n"):
        if not raw:
            continue
        try:
            e = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if (isinstance(e, list) and len(e) == 4 and isinstance(e[0], str)
                and isinstance(e[1], str) and isinstance(e[2], list) and len(e[2]) == 3
                and all(type(x) is int for x in e[2])):
            out[(e[0], e[1])] = [tuple(e[2]), e[3]]
    return out
