"""Copy run folders to any fsspec URL, incrementally: ``sync(base_dir, url)``.

    expman.sync.sync("experiments", "s3://bucket/team/experiments")
    expman.sync.sync("experiments", "/mnt/shared/experiments")

The rules, and why:

- **Only appended bytes are sent.** Object storage has no append, so an
  append-only file (``metrics.bin``, ``events.jsonl``, any ``*.bin`` or
  ``*.jsonl``) goes up as chunk objects ``<file>.chunks/<start>-<end>-<crc32>``
  (see expman.remote); each sync sends one new chunk per grown file (split at
  CHUNK_BYTES). The trade-off against re-uploading the whole object: nothing is
  ever sent twice, at the price of more objects per run and a reader that
  concatenates (``expman.remote.localize`` does). To a local or mounted path
  the bytes are appended to an ordinary file instead, so the target is a plain
  run folder. Metadata (``*.json``) is small and replaced atomically: it is sent
  whole when it changed. Artifacts are sent whole when missing or of another size.
- **Data first, metadata last.** A run's metadata is read before its data is
  measured and uploaded after it, so run.json (or a summary) never points at
  data that is not uploaded yet: the writer writes data before the metadata
  that mentions it. A run appears to a lister (run.json) only after its data.
- **Idempotent and resumable.** The target is the truth: the synced length of
  a file is the contiguous chunk chain (or the target file's length), read
  back on each sync. A chunk is one PUT, so a sync killed mid-upload leaves no
  partial chunk, and the next sync sends exactly what is missing. A file whose
  synced tail no longer matches (a resumed run cuts a torn tail and writes on)
  is re-sent from the first chunk that differs. A small local state file
  (under expman.remote.cache_root()) only lets unchanged runs be skipped
  without a listing; ``verify=True`` ignores it.
- **Live runs** are synced as they are: the bytes on disk now. Call sync again
  (or ``expman sync --watch``) to follow them.
- **Branches and forks.** A branches file (``branches.jsonl``: where a rewind or
  a resume opened a branch, as byte offsets into the metric stream) is measured
  before the streams and sent after them, so a copy never holds a branch line
  whose offset its stream does not reach yet. A fork's run.json is copied as it
  is: the copy keeps its parent reference even when the parent is not synced
  (``parents_missing`` names such runs; the parent can be synced later).

Credentials and endpoint: the standard ``AWS_*`` environment variables
(``AWS_ENDPOINT_URL`` included) or ``storage_options`` (passed to fsspec).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import time
import zlib
from pathlib import Path
from typing import Any, Callable

from expman import layout
from expman.runmeta import UUID
from expman.remote import (
    CHUNKS_SUFFIX, cache_root, chain, chunk_name, filesystem, is_append_only, is_url,
)

__all__ = ["sync", "CHUNK_BYTES"]

CHUNK_BYTES = 16 << 20
PENDING_BYTES = 64 << 20     # queued data sent early past this (metadata still waits)
PREFETCH_AFTER = 8           # more runs to look at than this: list the whole target once
STATE_VERSION = 1


def sync(base_dir: str | os.PathLike[str] | None, url: str,
         storage_options: dict[str, Any] | None = None, *, verify: bool = False,
         progress: Callable[[str, int], None] | None = None,
         batch: int = 16, force: bool = False) -> dict[str, Any]:
    """Copy every run under ``base_dir`` to ``url`` (any fsspec URL or a path),
    sending only what the target lacks. Returns counts: ``runs``, ``objects``
    written, ``bytes_appended`` (append-only files), ``bytes_whole``
    (metadata and artifacts), ``seconds``, ``errors`` (run id -> message),
    ``parents_missing`` (a fork sent whose parent is neither under ``base_dir``
    nor at the target: run id -> the parent it names).
    ``progress(path, nbytes)`` is called after each object written. To object
    storage, ``batch`` runs go up together (concurrent requests): all their data,
    then all their metadata. A run the target already holds under the same id
    but another ``uuid`` (another machine's run) is an error of that run, left
    untouched, unless ``force`` (then it is replaced)."""
    t0 = time.perf_counter()
    base = layout.base_dir(base_dir)
    if not base.is_dir():
        raise FileNotFoundError(2, f"sync: no base dir {base}", str(base))
    text = os.fspath(url)
    local_target = not is_url(text)
    if local_target:
        target: _Target = _PathTarget(Path(text[7:] if text.startswith("file://") else text))
    else:
        fs, root = filesystem(text, storage_options)
        target = _ObjectTarget(fs, root)
    state_path = cache_root() / "sync" / (hashlib.sha1(
        f"{base.resolve()}\n{text}".encode()).hexdigest()[:16] + ".json")
    state, owned = ({}, {}) if verify else _load_state(state_path)
    counts = {"runs": 0, "objects": 0, "bytes_appended": 0, "bytes_whole": 0}
    errors: dict[str, str] = {}
    forks: dict[str, str] = {}                # run id -> the parent its run.json names
    saved = time.perf_counter()

    def sent(path: str, n: int, appended: bool) -> None:
        counts["objects"] += 1
        counts["bytes_appended" if appended else "bytes_whole"] += n
        if progress is not None:
            progress(path, n)

    todo = []
    for run_dir in layout.iter_run_dirs(base):
        rel = f"{run_dir.parent.name}/{run_dir.name}"
        counts["runs"] += 1
        sig = _signature(run_dir)
        if state.get(rel) != sig:             # else unchanged since it was last synced whole
            todo.append((run_dir, rel, sig))
    if len(todo) > PREFETCH_AFTER:
        target.prefetch()                     # one listing for all, not one per run
    step = max(1, int(batch))
    for i in range(0, len(todo), step):
        group, done = todo[i:i + step], []
        for run_dir, rel, sig in group:
            try:
                uid, parent = _sync_run(run_dir, rel, target, sent, owned.get(rel), force)
                done.append((rel, sig, uid))
                if parent:
                    forks[rel] = parent
            except (OSError, ValueError, MemoryError, RecursionError) as e:
                errors[rel] = f"{type(e).__name__}: {e}"      # that run only, never the sync
        try:
            target.flush(sent)                # the group's data, then its metadata
        except OSError as e:
            for rel, _, _ in done:
                errors[rel] = f"{type(e).__name__}: {e}"
            continue
        for rel, sig, uid in done:
            state[rel] = sig
            if uid:
                owned[rel] = uid
        if time.perf_counter() - saved > 1.0:      # a shortcut only: no fsync per run
            _save_state(state_path, state, owned)
            saved = time.perf_counter()
    _save_state(state_path, state, owned)
    missing = {rel: parent for rel, parent in forks.items()
               if not layout.is_run_dir(base / parent) and not _holds(target, parent)}
    return {**counts, "seconds": time.perf_counter() - t0, "errors": errors,
            "parents_missing": missing}


# ---- one run ---------------------------------------------------------------------------


def _signature(run_dir: Path) -> list[Any]:
    """What changes when anything in the run folder changes (names, sizes, mtimes)."""
    return [[path, size, mtime] for path, (size, mtime) in sorted(_files(run_dir).items())]


def _files(run_dir: Path) -> dict[str, tuple[int, int]]:
    """The run's regular files, relative path -> (size, mtime_ns). Skipped: temp
    files (dot names), the writer locks (meaningful only on the writer's machine),
    and whatever is not a regular file: a symlink (it may lead anywhere), a FIFO
    (reading it would wait forever), a device or a socket."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(run_dir):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")
                       and not os.path.islink(os.path.join(dirpath, d))]
        for name in filenames:
            full = os.path.join(dirpath, name)
            if name.startswith(".") or layout.is_machine_local(name):
                continue
            try:
                st = os.lstat(full)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                found[os.path.relpath(full, run_dir).replace(os.sep, "/")] = (
                    st.st_size, st.st_mtime_ns)
    return found


def _meta_doc(meta: bytes | None, where: str) -> dict[str, Any] | None:
    """A run.json's bytes as an object (None: absent, or a run.json that does not
    parse: a damaged run is still mirrored as it is)."""
    from expman._fsutil import parse_json
    if meta is None:
        return None
    try:
        doc = parse_json(meta, where)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def run_uuid(meta: bytes | None, where: str) -> str | None:
    """The ``uuid`` a run.json's bytes hold (None for a run made before uuids, or
    a run.json that does not parse)."""
    uid = (_meta_doc(meta, where) or {}).get(UUID)
    return uid if isinstance(uid, str) else None


def _sync_run(run_dir: Path, rel: str, target: "_Target",
              sent: Callable[[str, int, bool], None], owned: str | None = None,
              force: bool = False) -> tuple[str | None, str | None]:
    """Send one run; returns its uuid (what the target now holds under ``rel``) and
    the parent its run.json names (a fork's)."""
    from expman._fsutil import MAX_JSON_BYTES, read_under
    files = _files(run_dir)
    top = [f for f in files if "/" not in f]
    metas = {}
    for name in sorted(f for f in top if f.endswith(".json")):
        try:           # before the data is measured; through the guarded layer
            metas[name] = read_under(run_dir, name, limit=MAX_JSON_BYTES)
        except FileNotFoundError:
            pass
    uid = run_uuid(metas.get(layout.RUN_FILE), f"{run_dir}/{layout.RUN_FILE}")
    remote = target.listing(rel)
    if uid and owned != uid and layout.RUN_FILE in remote.whole and not force:
        theirs = run_uuid(target.read_meta(rel, layout.RUN_FILE), f"{rel}/{layout.RUN_FILE}")
        if theirs and theirs != uid:
            from expman.errors import RunExistsError
            raise RunExistsError(17, f"the target holds another run under {rel} (uuid {theirs}; "
                                 f"this one is {uid}): two machines gave a run the same id. "
                                 "Left as it is; rename one, or sync with --force to replace it",
                                 rel)
    appended = sorted(f for f in top if is_append_only(f))
    for name in sorted(appended, key=_is_branches):       # branch lines after the streams
        # ``files`` was measured first: a branch line sent never names an offset past
        # the stream bytes sent (its writer wrote those before the line)
        target.append(rel, name, run_dir, remote, sent,
                      files[name][0] if _is_branches(name) else None)
    for name in sorted(f for f in files if "/" in f or not (f.endswith(".json")
                                                              or is_append_only(f))):
        if remote.whole.get(name) != files[name][0]:
            try:
                target.put_file(rel, name, run_dir, sent)
            except FileNotFoundError:
                continue
    for name in sorted(metas, key=lambda n: n == layout.RUN_FILE):      # run.json last
        if remote.whole.get(name) is None or not remote.same_meta(name, metas[name]):
            target.put_bytes(rel, name, metas[name], sent)
    return uid, _parent(metas.get(layout.RUN_FILE), f"{run_dir}/{layout.RUN_FILE}")


def _holds(target: "_Target", rel: str) -> bool:
    """Whether the target holds a run (its run.json) under ``rel``."""
    try:
        return layout.RUN_FILE in target.listing(rel).whole
    except OSError:             # a planted link, say: not a run the copy can read
        return False


def _is_branches(name: str) -> bool:
    """rank 0's branches.jsonl or rank r's branches.rank<r>.jsonl."""
    stem, _, suffix = layout.BRANCHES_FILE.rpartition(".")
    return name == layout.BRANCHES_FILE or re.fullmatch(
        rf"{re.escape(stem)}\.rank\d+\.{re.escape(suffix)}", name) is not None


def _parent(meta: bytes | None, where: str) -> str | None:
    """The parent a run.json's bytes name (a fork), else None."""
    doc = _meta_doc(meta, where)
    return layout.fork_parent(doc) if doc is not None else None


class _Remote:
    """What the target holds for one run."""

    def __init__(self) -> None:
        self.whole: dict[str, int] = {}             # path -> size
        self.chunks: dict[str, dict[str, int]] = {}  # append file -> {object: size}
        self.meta_crc: dict[str, int] = {}          # metadata name -> CRC (when known)
        self.meta_md5: dict[str, str] = {}          # metadata name -> ETag (single PUT: MD5)

    def same_meta(self, name: str, data: bytes) -> bool:
        if name in self.meta_md5:
            return hashlib.md5(data).hexdigest() == self.meta_md5[name]
        return self.meta_crc.get(name) == zlib.crc32(data)


class _Target:
    """Where a sync writes: object storage or a path. A source file is named by
    its run folder and its path inside it, and read through the guarded layer."""

    def prefetch(self) -> None:
        """List everything at once (a shortcut for many runs)."""

    def flush(self, sent: Callable[[str, int, bool], None]) -> None:
        """Send what was queued: data first, metadata last."""

    def listing(self, rel: str) -> _Remote:
        raise NotImplementedError
    def read_meta(self, rel: str, name: str) -> bytes | None:
        raise NotImplementedError
    def append(self, rel: str, name: str, run_dir: Path, remote: _Remote,
               sent: Callable[[str, int, bool], None], upto: int | None = None) -> None:
        """Send what the target lacks of an append-only file (its first ``upto``
        bytes at most)."""
    def put_file(self, rel: str, name: str, run_dir: Path,
                 sent: Callable[[str, int, bool], None]) -> None: ...
    def put_bytes(self, rel: str, name: str, data: bytes,
                  sent: Callable[[str, int, bool], None]) -> None: ...


class _Source:
    """One run file opened once through the guarded layer (no link, regular only):
    the size it has now, and ranges of it."""

    def __init__(self, run_dir: Path, name: str) -> None:
        from expman._fsutil import open_under_stat
        self.fd, st = open_under_stat(run_dir, name, os.O_RDONLY)
        self.size = st.st_size

    def read(self, start: int, end: int) -> bytes:
        from expman._fsutil import read_range
        return read_range(self.fd, start, end)

    def copy_to(self, out: Any) -> int:
        """Write the whole file to ``out`` in CHUNK_BYTES pieces (memory stays one
        piece); the bytes written (fewer if it shrank meanwhile)."""
        pos = 0
        while pos < self.size:
            data = self.read(pos, min(self.size, pos + CHUNK_BYTES))
            if not data:
                break
            out.write(data)
            pos += len(data)
        return pos

    def __enter__(self) -> "_Source":
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


class _ObjectTarget(_Target):
    """Object storage: chunk objects for append-only files, whole objects else."""

    def __init__(self, fs: Any, root: str) -> None:
        self.fs, self.root = fs, root
        self.listed: dict[str, _Remote] | None = None
        self.data: dict[str, bytes] = {}
        self.late: dict[str, bytes] = {}            # branch lines: after the data they name
        self.metas: dict[str, bytes] = {}
        self.wholes: set[str] = set()               # queued artifacts (not appended data)
        self.queued = 0

    def prefetch(self) -> None:
        self.fs.invalidate_cache()
        try:
            found = self.fs.find(self.root, detail=True)
        except FileNotFoundError:
            found = {}
        runs: dict[str, dict[str, Any]] = {}
        for path, info in found.items():
            parts = path[len(self.root) + 1:].split("/", 2)
            if len(parts) == 3:
                runs.setdefault(f"{parts[0]}/{parts[1]}", {})[path] = info
        self.listed = {rel: self._remote(rel, items) for rel, items in runs.items()}

    def listing(self, rel: str) -> _Remote:
        if self.listed is not None:
            return self.listed.get(rel) or _Remote()
        self.fs.invalidate_cache()
        try:
            found = self.fs.find(f"{self.root}/{rel}", detail=True)
        except FileNotFoundError:
            found = {}
        return self._remote(rel, found)

    def read_meta(self, rel: str, name: str) -> bytes | None:
        from expman.remote import cat_bounded
        try:
            return cat_bounded(self.fs, f"{self.root}/{rel}/{name}")
        except FileNotFoundError:
            return None

    def _remote(self, rel: str, found: dict[str, Any]) -> _Remote:
        out = _Remote()
        run_root = f"{self.root}/{rel}"
        for path, info in found.items():
            r = path[len(run_root) + 1:]
            head, _, _ = r.rpartition("/")
            if head.endswith(CHUNKS_SUFFIX) and "/" not in head:
                out.chunks.setdefault(head[:-len(CHUNKS_SUFFIX)], {})[path] = int(info["size"])
            else:
                out.whole[r] = int(info["size"])
                if r.endswith(".json") and "/" not in r and int(info["size"]) < (1 << 20):
                    etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
                    if re.fullmatch(r"[0-9a-f]{32}", etag):
                        out.meta_md5[r] = etag
                    else:
                        out.meta_crc[r] = zlib.crc32(self.fs.cat_file(path))
        return out

    def flush(self, sent: Callable[[str, int, bool], None], data_only: bool = False) -> None:
        if self.data:
            batch, self.data, self.queued = self.data, {}, 0
            self.fs.pipe(batch)                      # concurrent PUTs, each whole or absent
            for path, data in batch.items():
                sent(path, len(data), path not in self.wholes)
                self.wholes.discard(path)
        if data_only:
            return
        if self.late:
            late, self.late = self.late, {}
            self.fs.pipe(late)
            for path, data in late.items():
                sent(path, len(data), True)
        metas, self.metas = self.metas, {}
        for last in (False, True):                   # run.json (what lists a run) last
            part = {p: d for p, d in metas.items() if p.endswith("/" + layout.RUN_FILE) == last}
            if part:
                self.fs.pipe(part)
                for path, data in part.items():
                    sent(path, len(data), False)

    def _queue(self, path: str, data: bytes, sent: Callable[[str, int, bool], None]) -> None:
        self.data[path] = data
        self.queued += len(data)
        if self.queued > PENDING_BYTES:
            self.flush(sent, data_only=True)

    def append(self, rel: str, name: str, run_dir: Path, remote: _Remote,
               sent: Callable[[str, int, bool], None], upto: int | None = None) -> None:
        with _Source(run_dir, name) as src:
            size = src.size if upto is None else min(src.size, upto)   # the snapshot
            links = chain(remote.chunks.get(name, {}))
            # keep the chunks the local file still matches, checked from the last one
            # back (an append-only file only ever changes at its tail); drop the rest
            keep = len(links)
            while keep:
                start, end, crc, _ = links[keep - 1]
                if end <= size and zlib.crc32(src.read(start, end)) == crc:
                    break
                keep -= 1
            if keep < len(links) or len(links) < len(remote.chunks.get(name, {})):
                stale = set(remote.chunks.get(name, {})) - {n for *_, n in links[:keep]}
                if stale:
                    self.fs.rm(sorted(stale))
            pos = links[keep - 1][1] if keep else 0
            prefix = f"{self.root}/{rel}/{name}{CHUNKS_SUFFIX}/"
            while pos < size:
                data = src.read(pos, min(size, pos + CHUNK_BYTES))
                end = pos + len(data)
                if end == pos:
                    break
                name_end = prefix + chunk_name(pos, end, zlib.crc32(data))
                if upto is None:
                    self._queue(name_end, data, sent)
                else:
                    self.late[name_end] = data
                pos = end

    def put_file(self, rel: str, name: str, run_dir: Path,
                 sent: Callable[[str, int, bool], None]) -> None:
        """A small artifact joins the batch of concurrent PUTs; a large one is
        streamed from the guarded descriptor (never re-opened by path)."""
        dst = f"{self.root}/{rel}/{name}"
        with _Source(run_dir, name) as src:
            if src.size <= CHUNK_BYTES:
                self.wholes.add(dst)
                self._queue(dst, src.read(0, src.size), sent)
                return
            with self.fs.open(dst, "wb") as out:
                pos = src.copy_to(out)
        sent(dst, pos, False)

    def put_bytes(self, rel: str, name: str, data: bytes,
                  sent: Callable[[str, int, bool], None]) -> None:
        self.metas[f"{self.root}/{rel}/{name}"] = data


class _PathTarget(_Target):
    """A local or mounted folder: a plain mirror, appended to in place. Written
    only through the guarded layer: a link planted anywhere below the target's
    root (a run folder, an experiment folder, a file) is refused, never followed,
    since other users may write into a shared mirror."""

    TAIL_CHECK = 1 << 16

    def __init__(self, root: Path) -> None:
        self.root = root

    def listing(self, rel: str) -> _Remote:
        from expman._fsutil import MAX_JSON_BYTES, lstat_under, read_under
        out = _Remote()
        try:
            st = lstat_under(self.root, rel)         # UnsafePathError for a link
        except FileNotFoundError:
            return out
        if not stat.S_ISDIR(st.st_mode):
            from expman.errors import UnsafePathError
            raise UnsafePathError(20, "the target's run folder is not a folder",
                                  str(self.root / rel))
        for r, (size, _mtime) in _files(self.root / rel).items():
            out.whole[r] = size
            if r.endswith(".json") and "/" not in r:
                out.meta_crc[r] = zlib.crc32(read_under(self.root, f"{rel}/{r}",
                                                        limit=MAX_JSON_BYTES))
        return out

    def read_meta(self, rel: str, name: str) -> bytes | None:
        from expman._fsutil import MAX_JSON_BYTES, read_under
        try:
            return read_under(self.root, f"{rel}/{name}", limit=MAX_JSON_BYTES)
        except FileNotFoundError:
            return None

    def append(self, rel: str, name: str, run_dir: Path, remote: _Remote,
               sent: Callable[[str, int, bool], None], upto: int | None = None) -> None:
        from expman._fsutil import open_under_stat, read_range
        with _Source(run_dir, name) as src:
            size = src.size if upto is None else min(src.size, upto)
            fd, st = open_under_stat(self.root, f"{rel}/{name}", os.O_RDWR | os.O_CREAT,
                                 make_dirs=True)
            try:
                have = st.st_size
                if have:
                    # the synced tail must still be the source's: else it was cut and rewritten
                    n = min(have, self.TAIL_CHECK)
                    if not (have <= size and read_range(fd, have - n, have)
                            == src.read(have - n, have)):
                        have = 0
                if have == size:
                    return
                os.ftruncate(fd, have)
                os.lseek(fd, have, os.SEEK_SET)
                pos = have
                while pos < size:
                    data = src.read(pos, min(size, pos + CHUNK_BYTES))
                    if not data:
                        break
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    pos += len(data)
                os.fsync(fd)
            finally:
                os.close(fd)
        sent(str(self.root / rel / name), pos - have, True)

    def put_file(self, rel: str, name: str, run_dir: Path,
                 sent: Callable[[str, int, bool], None]) -> None:
        from expman._fsutil import atomic_open_under
        with _Source(run_dir, name) as src, atomic_open_under(self.root, f"{rel}/{name}") as out:
            pos = src.copy_to(out)
        sent(str(self.root / rel / name), pos, False)

    def put_bytes(self, rel: str, name: str, data: bytes,
                  sent: Callable[[str, int, bool], None]) -> None:
        from expman._fsutil import atomic_open_under
        with atomic_open_under(self.root, f"{rel}/{name}") as f:
            f.write(data)
        sent(str(self.root / rel / name), len(data), False)


# ---- local state: only a shortcut; the target is the truth ------------------------------


def _load_state(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """(run id -> signature synced, run id -> uuid this machine put there)."""
    from expman._fsutil import read_json
    try:
        state = read_json(path)
    except (OSError, ValueError):
        return {}, {}
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        return {}, {}
    runs, owned = state.get("runs"), state.get("uuids")
    return (runs if isinstance(runs, dict) else {}), (owned if isinstance(owned, dict) else {})


def _save_state(path: Path, runs: dict[str, Any], owned: dict[str, str]) -> None:
    from expman._fsutil import atomic_write_json
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"version": STATE_VERSION, "runs": runs, "uuids": owned})
