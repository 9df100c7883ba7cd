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
from pathlib import Path
from typing import Any

from expman import layout
from expman.errors import RunNotFoundError

__all__ = ["localize", "is_url", "cache_root", "filesystem", "CHUNKS_SUFFIX", "chunk_name",
           "parse_chunk", "is_append_only"]

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
        pull_run(fs, run_root, cache / exp / name)
    return cache


def _is_name(name: str) -> bool:
    from expman._fsutil import check_name
    try:
        check_name("name", name)
    except ValueError:
        return False
    return True


def _safe(rel: str) -> bool:
    parts = rel.split("/")
    return bool(parts) and all(p not in ("", ".", "..") and "\\" not in p and "\0" not in p
                               for p in parts)


def pull_run(fs: Any, root: str, local: Path) -> None:
    """Copy one run from ``root`` into ``local``: metadata read first, written last."""
    from expman._fsutil import atomic_open
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
            chunked.setdefault(head[:-len(CHUNKS_SUFFIX)], {})[path] = int(info["size"])
        elif "/" not in rel and rel.endswith(".json"):
            metas[rel] = b""
        else:
            wholes[rel] = int(info["size"])
    for rel in metas:                        # first: what the data must already cover
        metas[rel] = fs.cat_file(f"{root}/{rel}")
    local.mkdir(parents=True, exist_ok=True)
    for rel, chunks in chunked.items():
        _pull_chain(fs, chain(chunks), local / rel)
    for rel, size in wholes.items():
        dst = local / rel
        if dst.is_file() and dst.stat().st_size == size:
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(dst) as f:
            f.write(fs.cat_file(f"{root}/{rel}"))
    for rel in sorted(metas, key=lambda r: r == layout.RUN_FILE):    # run.json last
        with atomic_open(local / rel) as f:
            f.write(metas[rel])


def _pull_chain(fs: Any, links: list[tuple[int, int, int, str]], dst: Path) -> None:
    """Extend ``dst`` with the chunks past its length (or rebuild it if the remote
    chain no longer starts the way the cached copy does)."""
    import zlib
    have = dst.stat().st_size if dst.exists() else 0
    total = links[-1][1] if links else 0
    if have > total or (have and not _prefix_matches(dst, links, have)):
        have = 0
    mode = "r+b" if have else "wb"
    with open(dst, mode) as f:
        f.truncate(have)
        f.seek(have)
        for start, end, crc, name in links:
            if end <= have:
                continue
            data = fs.cat_file(name)
            if len(data) != end - start or zlib.crc32(data) != crc:
                break                        # replaced while we read: the next pull goes on
            f.write(data[max(have - start, 0):])
        f.flush()
        os.fsync(f.fileno())


def _prefix_matches(dst: Path, links: list[tuple[int, int, int, str]], have: int) -> bool:
    """The cached bytes end on, or inside, a chunk whose CRC they still match."""
    import zlib
    for start, end, crc, _ in links:
        if start < have <= end:
            if have < end:
                return True                  # mid-chunk: the chunk is re-read anyway
            with open(dst, "rb") as f:
                f.seek(start)
                return zlib.crc32(f.read(end - start)) == crc
    return False
