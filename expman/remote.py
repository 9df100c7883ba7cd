"""Runs at a URL, and the layout ``expman.sync`` gives them there.

``localize(url)`` turns ``s3://bucket/prefix`` (a base dir) or
``s3://bucket/prefix/<experiment>/<run>`` (one run) into a local folder the
reader opens as usual, so ``open_run`` and ``list_runs`` take URLs by calling
it first. A plain path or ``file://`` URL is returned as it is: ``sync`` to a
mounted path writes an ordinary run folder.

On object storage, which has no append, an append-only file (``metrics.bin``,
``events.jsonl``, any ``*.bin``/``*.jsonl`` stream) is stored as numbered
chunk objects ``<file>.chunks/<start>-<end>-<crc32>``: the file is the
contiguous chain of chunks from byte 0. Metadata (``*.json``) and artifacts are
whole objects. The local copy lives in a cache folder ($EXPMAN_CACHE_DIR, else
$XDG_CACHE_HOME/expman or ~/.cache/expman) and is refreshed incrementally: only
chunks past the cached length are fetched.

Consistency: ``sync`` uploads a run's metadata after its data, and ``localize``
reads the metadata first and the data after, then writes the data locally
before the metadata, so a reader never sees a run.json that points past the
data it has.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import warnings
from pathlib import Path
from collections.abc import Iterator
from typing import Any

from expman import layout
from expman.errors import RunNotFoundError

__all__ = ["localize", "is_url", "cache_root", "filesystem", "CHUNKS_SUFFIX", "chunk_name",
           "parse_chunk", "is_append_only", "cat_bounded"]

CHUNKS_SUFFIX = ".chunks"
CACHE_ENV = "EXPMAN_CACHE_DIR"
_CHUNK_RE = re.compile(r"^(\d{20})-(\d{20})-([0-9a-f]{8})$")


def is_url(target: str | os.PathLike[str]) -> bool:
    """True for ``scheme://...`` other than ``file://`` (a local path needs no copy)."""
    text = os.fspath(target)
    return isinstance(text, str) and "://" in text and not text.startswith("file://")


def is_append_only(name: str) -> bool:
    """Files a writer only appends to: metric streams and event logs."""
    return name.endswith((".bin", ".jsonl"))


def chunk_name(start: int, end: int, crc: int) -> str:
    return f"{start:020d}-{end:020d}-{crc & 0xFFFFFFFF:08x}"


def parse_chunk(name: str) -> tuple[int, int, int] | None:
    m = _CHUNK_RE.match(name)
    if not m:
        return None
    start, end = int(m.group(1)), int(m.group(2))
    return (start, end, int(m.group(3), 16)) if end > start else None


def chain(chunks: dict[str, int]) -> list[tuple[int, int, int, str]]:
    """The contiguous chain from byte 0 of ``{object name: size}`` chunks:
    ``[(start, end, crc, name)]``. A chunk whose size disagrees with its name
    (or that does not continue the chain) is not part of the file."""
    by_start: dict[int, tuple[int, int, int, str]] = {}
    for name, size in chunks.items():
        parsed = parse_chunk(name.rsplit("/", 1)[-1])
        if parsed and parsed[1] - parsed[0] == size:
            by_start.setdefault(parsed[0], (*parsed, name))
    out, pos = [], 0
    while pos in by_start:
        out.append(by_start[pos])
        pos = by_start[pos][1]
    return out


def cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "expman"


def filesystem(url: str, storage_options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for a URL. For s3://, credentials come
    from the AWS_* environment (AWS_ENDPOINT_URL included) unless given here."""
    try:
        import fsspec
    except ImportError:
        raise ImportError("URLs need fsspec (and s3fs for s3://): "
                          "pip install 'expman-logger[sync]'") from None
    opts = dict(storage_options or {})
    scheme = url.split("://", 1)[0] if "://" in url else "file"
    if scheme in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint and "endpoint_url" not in opts and \
                "endpoint_url" not in opts.get("client_kwargs", {}):
            opts["endpoint_url"] = endpoint
        opts.setdefault("skip_instance_cache", True)     # fresh listings on every call
    fs, path = fsspec.core.url_to_fs(url, **opts)
    return fs, path.rstrip("/")


def _cache_for(url: str) -> Path:
    return cache_root() / "remote" / hashlib.sha1(url.encode()).hexdigest()[:16]


def localize(url: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None,
             storage_options: dict[str, Any] | None = None) -> Path:
    """A local folder holding what is at ``url``: a base dir of runs, or one run.

    Not a URL: returned as a Path (``file://`` stripped). Otherwise the runs are
    copied (incrementally) into ``cache_dir`` (default: a folder per URL under
    cache_root()) and its path is returned: the base dir, or the run folder.
    """
    text = os.fspath(url)
    if not is_url(text):
        return Path(text[len("file://"):] if text.startswith("file://") else text)
    fs, root = filesystem(text, storage_options)
    cache = Path(os.fspath(cache_dir)) if cache_dir is not None else _cache_for(text)
    fs.invalidate_cache()
    if fs.exists(f"{root}/{layout.RUN_FILE}"):
        parts = root.split("/")
        if len(parts) < 2:
            raise RunNotFoundError(f"{text}: a run needs <experiment>/<run> in its URL")
        if not (_is_name(parts[-2]) and _is_name(parts[-1])):
            raise RunNotFoundError(f"{text}: {parts[-2]}/{parts[-1]} is not a run folder name")
        local = cache / parts[-2] / parts[-1]
        pull_run(fs, root, local)
        return local
    found = fs.glob(f"{root}/*/*/{layout.RUN_FILE}")
    if not found and not fs.exists(root):
        raise RunNotFoundError(f"nothing at {text}")
    for meta in sorted(found):
        run_root = meta.rsplit("/", 1)[0]
        exp, name = run_root.split("/")[-2:]
        if not (_is_name(exp) and _is_name(name)):
            continue                         # a crafted key never leads outside the cache
        try:                                 # one bad run never fails the others
            pull_run(fs, run_root, cache / exp / name)
        except (OSError, ValueError, MemoryError, RecursionError) as e:
            warnings.warn(f"expman: {text}: run {exp}/{name} not copied: {type(e).__name__}: {e}",
                          RuntimeWarning, stacklevel=2)
    return cache


def _is_name(name: str) -> bool:
    from expman._fsutil import check_name
    try:
        check_name("name", name)
    except ValueError:
        return False
    return True


def _safe(rel: str) -> bool:
    """A path inside a run folder: components that are usable names."""
    parts = rel.split("/")
    return bool(rel) and all(_is_name(p) for p in parts)


def cat_bounded(fs: Any, path: str, limit: int | None = None) -> bytes:
    """A metadata object's bytes, never more than ``limit`` (MAX_JSON_BYTES):
    a larger object is damage (CorruptRunError naming it), not read whole."""
    from expman._fsutil import MAX_JSON_BYTES
    from expman.errors import CorruptRunError
    limit = MAX_JSON_BYTES if limit is None else limit
    data = fs.cat_file(path, start=0, end=limit + 1)
    if len(data) > limit:
        raise CorruptRunError(f"{path}: larger than {limit} bytes, the cap for metadata")
    return bytes(data)


def pull_run(fs: Any, root: str, local: Path) -> None:
    """Copy one run from ``root`` into ``local``: metadata read first, written last.
    Objects are streamed to disk in pieces (memory stays at PIECE bytes whatever
    their size), metadata is capped, and every file is written through the
    guarded layer inside ``local``. A key that cannot be a file there (a chunk
    without a stem, a key that is also a prefix) is skipped with a warning."""
    from expman._fsutil import atomic_open_under
    listing = fs.find(root, detail=True)
    metas: dict[str, bytes] = {}
    chunked: dict[str, dict[str, int]] = {}
    wholes: dict[str, int] = {}
    for path, info in listing.items():
        rel = path[len(root) + 1:]
        if not _safe(rel) or info.get("type") == "directory":
            continue                         # nothing outside the run folder, ever
        head, _, tail = rel.rpartition("/")
        if head.endswith(CHUNKS_SUFFIX) and "/" not in head:
            stem = head[:-len(CHUNKS_SUFFIX)]
            if _safe(stem):
                chunked.setdefault(stem, {})[path] = int(info["size"])
        elif "/" not in rel and rel.endswith(".json"):
            metas[rel] = b""
        else:
            wholes[rel] = int(info["size"])
    for rel in list(metas):                  # first: what the data must already cover
        metas[rel] = cat_bounded(fs, f"{root}/{rel}")
    local.mkdir(parents=True, exist_ok=True)
    skipped: list[str] = []
    for rel, chunks in chunked.items():
        try:
            _pull_chain(fs, chain(chunks), local, rel)
        except OSError as e:
            skipped.append(f"{rel} ({e})")
    for rel, size in wholes.items():
        try:
            from expman._fsutil import lstat_under
            try:
                st = lstat_under(local, rel)
                if stat.S_ISREG(st.st_mode) and st.st_size == size:
                    continue
            except FileNotFoundError:
                pass
            with atomic_open_under(local, rel) as f:
                for piece in _pieces(fs, f"{root}/{rel}", 0, size):
                    f.write(piece)
        except OSError as e:
            skipped.append(f"{rel} ({e})")
    for rel in sorted(metas, key=lambda r: r == layout.RUN_FILE):    # run.json last
        with atomic_open_under(local, rel) as f:
            f.write(metas[rel])
    if skipped:
        warnings.warn(f"expman: {root}: not copied: " + "; ".join(skipped[:10]),
                      RuntimeWarning, stacklevel=3)


PIECE = 8 << 20


def _pieces(fs: Any, path: str, start: int, end: int) -> Iterator[bytes]:
    """An object's bytes [start, end) as ranged reads of at most PIECE bytes (one
    request each): memory stays at two pieces whatever the object's size."""
    pos = start
    while pos < end:
        piece = bytes(fs.cat_file(path, start=pos, end=min(end, pos + PIECE)))
        if not piece:
            return
        pos += len(piece)
        yield piece
        piece = b""                 # not held while the next one is fetched


def _pull_chain(fs: Any, links: list[tuple[int, int, int, str]], local: Path, rel: str) -> None:
    """Extend ``local/rel`` with the chunks past its length (or rebuild it if the
    remote chain no longer starts the way the cached copy does), each chunk
    streamed in pieces and checked against its CRC before the next."""
    import zlib

    from expman._fsutil import open_under_stat
    fd, st = open_under_stat(local, rel, os.O_RDWR | os.O_CREAT, make_dirs=True)
    try:
        have = st.st_size
        total = links[-1][1] if links else 0
        if have > total or (have and not _prefix_matches(fd, links, have)):
            have = 0
        os.ftruncate(fd, have)
        for start, end, crc, name in links:
            if end <= have:
                continue
            got, pos = 0, start
            for piece in _pieces(fs, name, 0, end - start):
                got = zlib.crc32(piece, got)
                skip = max(have - pos, 0)
                if skip < len(piece):
                    os.lseek(fd, pos + skip, os.SEEK_SET)
                    view = memoryview(piece)[skip:]
                    while view:
                        view = view[os.write(fd, view):]
                pos += len(piece)
            if pos != end or got != crc:
                os.ftruncate(fd, max(have, start))   # replaced while we read: next pull goes on
                break
            have = end
        os.fsync(fd)
    finally:
        os.close(fd)


def _prefix_matches(fd: int, links: list[tuple[int, int, int, str]], have: int) -> bool:
    """The cached bytes end on, or inside, a chunk whose CRC they still match."""
    import zlib

    from expman._fsutil import read_range
    for start, end, crc, _ in links:
        if start < have <= end:
            if have < end:
                return True                  # mid-chunk: the chunk is re-read anyway
            return zlib.crc32(read_range(fd, start, end)) == crc
    return False
