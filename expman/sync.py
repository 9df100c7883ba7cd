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

Credentials and endpoint: the standard ``AWS_*`` environment variables
(``AWS_ENDPOINT_URL`` included) or ``storage_options`` (passed to fsspec).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import zlib
from pathlib import Path
from typing import Any, Callable

from expman import layout
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
         batch: int = 16) -> dict[str, Any]:
    """Copy every run under ``base_dir`` to ``url`` (any fsspec URL or a path),
    sending only what the target lacks. Returns counts: ``runs``, ``objects``
    written, ``bytes_appended`` (append-only files), ``bytes_whole``
    (metadata and artifacts), ``seconds``, ``errors`` (run id -> message).
    ``progress(path, nbytes)`` is called after each object written. To object
    storage, ``batch`` runs go up together (concurrent requests): all their data,
    then all their metadata."""
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
    state = {} if verify else _load_state(state_path)
    counts = {"runs": 0, "objects": 0, "bytes_appended": 0, "bytes_whole": 0}
    errors: dict[str, str] = {}
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
                _sync_run(run_dir, rel, target, sent)
                done.append((rel, sig))
            except OSError as e:
                errors[rel] = f"{type(e).__name__}: {e}"
        try:
            target.flush(sent)                # the group's data, then its metadata
        except OSError as e:
            for rel, _ in done:
                errors[rel] = f"{type(e).__name__}: {e}"
            continue
        state.update(done)
        if time.perf_counter() - saved > 1.0:      # a shortcut only: no fsync per run
            _save_state(state_path, state)
            saved = time.perf_counter()
    _save_state(state_path, state)
    return {**counts, "seconds": time.perf_counter() - t0, "errors": errors}


# ---- one run ---------------------------------------------------------------------------


def _signature(run_dir: Path) -> list[Any]:
    """What changes when anything in the run folder changes (names, sizes, mtimes)."""
    out = []
    for path in sorted(_files(run_dir)):
        try:
            st = os.stat(run_dir / path)
        except OSError:
            continue
        out.append([path, st.st_size, st.st_mtime_ns])
    return out


def _files(run_dir: Path) -> list[str]:
    """Relative paths of the run's files; temp files (dot names), symlinks and the
    writer locks (meaningful only on the writer's machine) skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(run_dir):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")
                       and not os.path.islink(os.path.join(dirpath, d))]
        for name in filenames:
            full = os.path.join(dirpath, name)
            if name.startswith(".") or os.path.islink(full) or layout.is_machine_local(name):
                continue
            found.append(os.path.relpath(full, run_dir).replace(os.sep, "/"))
    return found


def _sync_run(run_dir: Path, rel: str, target: "_Target",
              sent: Callable[[str, int, bool], None]) -> None:
    files = _files(run_dir)
    top = [f for f in files if "/" not in f]
    metas = {}
    for name in sorted(f for f in top if f.endswith(".json")):
        try:
            metas[name] = (run_dir / name).read_bytes()      # before the data is measured
        except FileNotFoundError:
            pass
    remote = target.listing(rel)
    for name in sorted(f for f in top if is_append_only(f)):
        target.append(rel, name, run_dir / name, remote, sent)
    for name in sorted(f for f in files if "/" in f or not (f.endswith(".json")
                                                              or is_append_only(f))):
        src = run_dir / name
        try:
            size = src.stat().st_size
        except FileNotFoundError:
            continue
        if remote.whole.get(name) != size:
            target.put_file(rel, name, src, sent)
    for name in sorted(metas, key=lambda n: n == layout.RUN_FILE):      # run.json last
        if remote.whole.get(name) is None or not remote.same_meta(name, metas[name]):
            target.put_bytes(rel, name, metas[name], sent)


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
    """Where a sync writes: object storage or a path."""

    def prefetch(self) -> None:
        """List everything at once (a shortcut for many runs)."""

    def flush(self, sent: Callable[[str, int, bool], None]) -> None:
        """Send what was queued: data first, metadata last."""

    def listing(self, rel: str) -> _Remote:
        raise NotImplementedError
    def append(self, rel: str, name: str, src: Path, remote: _Remote,
               sent: Callable[[str, int, bool], None]) -> None: ...
    def put_file(self, rel: str, name: str, src: Path,
                 sent: Callable[[str, int, bool], None]) -> None: ...
    def put_bytes(self, rel: str, name: str, data: bytes,
                  sent: Callable[[str, int, bool], None]) -> None: ...


def _read_range(src: Path, start: int, end: int) -> bytes:
    with open(src, "rb") as f:
        f.seek(start)
        return f.read(end - start)


class _ObjectTarget(_Target):
    """Object storage: chunk objects for append-only files, whole objects else."""

    def __init__(self, fs: Any, root: str) -> None:
        self.fs, self.root = fs, root
        self.listed: dict[str, _Remote] | None = None
        self.data: dict[str, bytes] = {}
        self.files: list[tuple[str, str, int]] = []
        self.metas: dict[str, bytes] = {}
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
                sent(path, len(data), True)
        if data_only:
            return
        if self.files:
            files, self.files = self.files, []
            self.fs.put([f[0] for f in files], [f[1] for f in files])
            for _, path, size in files:
                sent(path, size, False)
        metas, self.metas = self.metas, {}
        for last in (False, True):                   # run.json (what lists a run) last
            part = {p: d for p, d in metas.items() if p.endswith("/" + layout.RUN_FILE) == last}
            if part:
                self.fs.pipe(part)
                for path, data in part.items():
                    sent(path, len(data), False)

    def append(self, rel: str, name: str, src: Path, remote: _Remote,
               sent: Callable[[str, int, bool], None]) -> None:
        size = src.stat().st_size                    # the snapshot: bytes on disk now
        links = chain(remote.chunks.get(name, {}))
        # keep the chunks the local file still matches, checked from the last one
        # back (an append-only file only ever changes at its tail); drop the rest
        keep = len(links)
        while keep:
            start, end, crc, _ = links[keep - 1]
            if end <= size and zlib.crc32(_read_range(src, start, end)) == crc:
                break
            keep -= 1
        if keep < len(links) or len(links) < len(remote.chunks.get(name, {})):
            stale = set(remote.chunks.get(name, {})) - {n for *_, n in links[:keep]}
            if stale:
                self.fs.rm(sorted(stale))
        pos = links[keep - 1][1] if keep else 0
        prefix = f"{self.root}/{rel}/{name}{CHUNKS_SUFFIX}/"
        while pos < size:
            end = min(size, pos + CHUNK_BYTES)
            data = _read_range(src, pos, end)
            end = pos + len(data)
            if end == pos:
                break
            self.data[prefix + chunk_name(pos, end, zlib.crc32(data))] = data
            self.queued += len(data)
            if self.queued > PENDING_BYTES:
                self.flush(sent, data_only=True)
            pos = end

    def put_file(self, rel: str, name: str, src: Path,
                 sent: Callable[[str, int, bool], None]) -> None:
        self.files.append((str(src), f"{self.root}/{rel}/{name}", src.stat().st_size))

    def put_bytes(self, rel: str, name: str, data: bytes,
                  sent: Callable[[str, int, bool], None]) -> None:
        self.metas[f"{self.root}/{rel}/{name}"] = data


class _PathTarget(_Target):
    """A local or mounted folder: a plain mirror, appended to in place."""

    TAIL_CHECK = 1 << 16

    def __init__(self, root: Path) -> None:
        self.root = root

    def listing(self, rel: str) -> _Remote:
        out = _Remote()
        run_root = self.root / rel
        if not run_root.is_dir():
            return out
        for r in _files(run_root):
            out.whole[r] = (run_root / r).stat().st_size
            if r.endswith(".json") and "/" not in r:
                out.meta_crc[r] = zlib.crc32((run_root / r).read_bytes())
        return out

    def append(self, rel: str, name: str, src: Path, remote: _Remote,
               sent: Callable[[str, int, bool], None]) -> None:
        size = src.stat().st_size
        dst = self.root / rel / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        have = dst.stat().st_size if dst.exists() else 0
        if have:
            # the synced tail must still be the source's: else it was cut and rewritten
            n = min(have, self.TAIL_CHECK)
            ok = have <= size and _read_range(dst, have - n, have) == \
                _read_range(src, have - n, have)
            if not ok:
                have = 0
        if have == size and dst.exists():
            return
        with open(dst, "r+b" if dst.exists() else "wb") as f:
            f.truncate(have)
            f.seek(have)
            pos = have
            while pos < size:
                data = _read_range(src, pos, min(size, pos + CHUNK_BYTES))
                if not data:
                    break
                f.write(data)
                pos += len(data)
            f.flush()
            os.fsync(f.fileno())
        sent(str(dst), pos - have, True)

    def put_file(self, rel: str, name: str, src: Path,
                 sent: Callable[[str, int, bool], None]) -> None:
        import shutil
        from expman._fsutil import atomic_open
        dst = self.root / rel / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        with open(src, "rb") as fin, atomic_open(dst) as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
        sent(str(dst), dst.stat().st_size, False)

    def put_bytes(self, rel: str, name: str, data: bytes,
                  sent: Callable[[str, int, bool], None]) -> None:
        from expman._fsutil import atomic_open
        dst = self.root / rel / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(dst) as f:
            f.write(data)
        sent(str(dst), len(data), False)


# ---- local state: only a shortcut; the target is the truth ------------------------------


def _load_state(path: Path) -> dict[str, Any]:
    from expman._fsutil import read_json
    try:
        state = read_json(path)
    except (OSError, ValueError):
        return {}
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        return {}
    runs = state.get("runs")
    return runs if isinstance(runs, dict) else {}


def _save_state(path: Path, runs: dict[str, Any]) -> None:
    from expman._fsutil import atomic_write_json
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"version": STATE_VERSION, "runs": runs})
