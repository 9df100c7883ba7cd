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
and entries are looked up by the names a directory scan found, so no entry can
name a folder outside the base. ``list_runs`` checks each entry field by field
when it decodes it; ``list_runs_json`` (``expman list --json``) checks an
entry's frame, parses it once (one JSON object, or the folder is read) and
copies its JSON as stored: an index forged on purpose by someone who can write
the base dir can make that output say what they wrote, as a forged run.json
can, but never print what is not JSON, read elsewhere or fail.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
import zlib
from typing import Any

import orjson

from expman._fsutil import create_exclusive
from expman.layout import FINAL_STATUSES, INDEX_FILE, jsonable
from expman.liveness import world_size
from expman.readmodel import read_float, spell_float

__all__ = ["RunIndex", "Kept", "kept_json", "INDEX_FORMAT", "MAX_INDEX_BYTES", "dir_key", "parse"]

INDEX_FORMAT = 2
MAGIC = b"expman-index"
MAX_INDEX_BYTES = 1 << 30       # a larger (crafted) index is ignored, not read
MAX_ENTRY_BYTES = 1 << 20       # a run whose line is larger is read from its folder each time
RACY = 2.0                      # seconds: a folder changed this recently is not kept
STALE_TEMP = 600.0              # seconds: a temp file older than this was left by a killed writer

DirKey = tuple[int, int, int]


def dir_key(st: os.stat_result) -> DirKey:
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


# An entry as stored: what sorting and the status filter need, and the line's
# JSON (``RunSummary.to_dict()`` as ``expman list --json`` prints it) in two
# pieces around its path, which is the scan's: (start_time, status, head, tail).
# A plain tuple: a warm listing of 100,000 runs makes one per run.
Kept = tuple[float | None, str, bytes, bytes]


def _one_object(head: bytes, tail: bytes) -> bool:
    """Whether a kept line with a path in it is one JSON object."""
    try:
        return type(orjson.loads(head + b'""' + tail)) is dict
    except orjson.JSONDecodeError:
        return False


def kept_json(kept: Kept, path: str) -> bytes:
    """The JSON of a kept line whose run folder is ``path``."""
    return kept[2] + orjson.dumps(path) + kept[3]


def _encode(line: Any) -> Kept | None:
    """A ``reader.RunSummary`` as an entry holds it; None for a line the index
    cannot hold (a NaN whose payload its JSON spelling would lose)."""
    d = jsonable(line.to_dict())
    for v in line.last_metrics.values():
        if v != v and spell_float(v) != "NaN":
            return None
    d["path"] = ""
    try:
        body = orjson.dumps(d)
    except TypeError:           # a name that is not UTF-8 (read as surrogates)
        return None
    cut = body.rindex(b',"status_rank":')      # the last keys: a param cannot be found here
    head, tail = body[:cut], body[cut:]
    if not head.endswith(_NO_PATH):
        return None
    return (line.start_time, line.status, head[:-2], tail)


_NO_PATH = b',"path":""'
_NUMBER = (int, float)     # by type(), not isinstance(): a bool is not a time


def _decode(kept: Kept) -> dict[str, Any] | None:
    """An entry's ``RunSummary`` fields (but ``path``), or None when any field
    is not what ``_encode`` writes (straight-line checks)."""
    try:
        d = orjson.loads(kept[2] + b'""' + kept[3])
        if (type(d) is not dict or d.pop("path") != "" or d.pop("damaged") is not None
                or d["status"] not in FINAL_STATUSES or d["status"] != kept[1]
                or d["start_time"] != kept[0]
                or d.pop("id") != f"{d['experiment']}/{d['run_name']}"):
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
                or (parent is not None and type(parent) is not str) or len(d) != 17):
            return None
        for t in tags:
            if type(t) is not str:
                return None
        d.update(start_time=None if start is None else float(start),
                 duration=None if duration is None else float(duration),
                 end_time=None if end is None else float(end),
                 last_metrics={k: v if type(v) is float else read_float(v)
                               for k, v in last.items()})
        return d
    except (KeyError, TypeError, ValueError, OverflowError, orjson.JSONDecodeError):
        return None


class RunIndex:
    """One base dir's index as loaded, plus what a listing learned: ``lookup``
    each run folder the scan found, ``offer`` the lines read on a miss,
    ``forget_missing`` at the end of the scan, ``save`` when anything changed.
    Counters say what happened (``stats``).

    An entry is the line ``KEY TAB START TAB STATUS TAB HEAD TAB TAIL``: KEY is
    ``experiment/run inode mtime_ns ctime_ns`` (unambiguous: a name holds no
    ``/``, the last three fields are numbers), so a lookup is one dict probe
    with what a ``stat`` of the folder says now; START and STATUS are what a
    listing sorts and filters on; HEAD and TAIL are the line's JSON around its
    path (``Kept``). Names holding a tab or a newline are never kept."""

    def __init__(self, base: str | os.PathLike[str], entries: dict[bytes, bytes] | None = None,
                 state: str = "empty") -> None:
        self.base = os.fspath(base)
        self.path = os.path.join(self.base, INDEX_FILE)
        self._old = entries or {}
        self._used: list[bytes] = []                 # old entries a lookup hit
        self._new: dict[bytes, tuple[DirKey, bytes]] = {}
        self._complete = False                       # every run folder was looked up
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
        ``run`` (``base/exp/name``) if the folder is as it was, or None; with
        the folder's key now (None: it cannot be stat'ed)."""
        kept, key = self.lookup_kept(exp, name, run)
        if kept is None:
            return None, key
        line = _decode(kept)
        if line is None:
            self._used.pop()
            self.hits -= 1
            self.misses += 1
        return line, key

    def lookup_kept(self, exp: str, name: str, run: str) -> tuple[Kept | None, DirKey | None]:
        """``lookup`` as stored, not rebuilt: for a caller that copies the
        line's JSON (written by ``_encode``, guarded by the file's CRC, its
        frame checked here, and parsed once: a forged index never makes the
        listing print what is not one JSON object; ~1 us a line). Straight-line:
        a warm listing is this, once per run."""
        try:
            st = os.stat(run)
        except OSError:
            return None, None
        key = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
        k = f"{exp}/{name} {key[0]} {key[1]} {key[2]}".encode("utf-8", "surrogateescape")
        raw = self._old.get(k)
        if raw is not None:
            parts = raw.split(b"\t")
            if len(parts) == 4:
                start_b, status_b, head, tail = parts
                status = _STATUSES.get(status_b)
                if (status is not None and head[:6] == b'{"id":' and head[-8:] == b',"path":'
                        and tail[:15] == b',"status_rank":' and tail[-1:] == b"}"):
                    try:
                        start = float(start_b) if start_b else None
                    except ValueError:
                        start = math.nan
                    if (start is None or math.isfinite(start)) and _one_object(head, tail):
                        self._used.append(k)
                        self.hits += 1
                        return (start, status, head, tail), key
        self.misses += 1
        return None, key

    def offer(self, exp: str, name: str, key: DirKey | None, line: Any,
              meta: dict[str, Any] | None) -> None:
        """Keep the line (a ``RunSummary``) just read from run folder
        ``base/exp/name`` (whose key was taken before reading) if it cannot
        change while the folder does not."""
        if (key is None or line is None or meta is None or line.damaged
                or line.status not in FINAL_STATUSES or meta.get("status") not in FINAL_STATUSES
                or world_size(meta) > 1 or _UNSPLIT.search(exp + name)):
            return
        kept = _encode(line)
        if kept is not None:
            k = f"{exp}/{name} {key[0]} {key[1]} {key[2]}".encode("utf-8", "surrogateescape")
            start = b"" if kept[0] is None else repr(kept[0]).encode()
            self._new[k] = (key, b"%s\t%s\t%s\t%s" % (start, kept[1].encode(), kept[2], kept[3]))
            self.changed = True

    def hits_digest(self) -> str:
        """A digest of the entries lookups hit, in scan order: while it is the
        same, so are those runs (their folders, hence their files: see above)."""
        import hashlib
        return hashlib.sha256(b"\n".join(self._used)).hexdigest()

    def forget_missing(self, experiment: str | None) -> None:
        """End of a scan (of every run folder, or of one ``experiment``'s): after
        a whole scan, entries no lookup hit (runs deleted, changed) are dropped."""
        if experiment is None:
            self._complete = True
            if len(set(self._used)) < len(self._old):
                self.changed = True

    def save(self) -> bool:
        """Write the index as it now is (old entries still valid plus new ones)
        as a new file replacing the old. False when the base is not writable
        (the listing was right anyway; the next one misses again)."""
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
                old = (dict.fromkeys(self._used) if self._complete else self._old)
                lines = [b"%s\t%s" % (k, self._old[k]) for k in old if k not in self._new]
                lines += [b"%s\t%s" % (k, raw) for k, (key, raw) in self._new.items()
                          if key[1] < fs_now and key[2] < fs_now]
                lines = [b for b in lines if len(b) <= MAX_ENTRY_BYTES]
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


_UNSPLIT = re.compile("[\t\n]")       # a name holding these would break its entry's line
_STATUSES = {s.encode(): s for s in FINAL_STATUSES}


def parse(data: bytes) -> dict[bytes, bytes] | None:
    """The entries of an index file's bytes (KEY: the rest of the line), or None
    when its header does not match its body (another format, cut, garbled).
    Each entry's frame is checked when looked up (``_frame``), its JSON when
    decoded (``_decode``)."""
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
    out = {}
    for raw in body.split(b"\n"):
        k, _, v = raw.partition(b"\t")
        out[k] = v
    out.pop(b"", None)
    return out
