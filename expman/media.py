"""Histograms and images as run data: validation, binning and PNG encoding.

Kept out of ``experiment.py`` so ``Experiment.log_histogram``/``log_image`` stay
thin and ``log_metrics`` never meets any of this. Neither numpy nor PIL is
needed: arrays are binned and PNG-encoded with numpy when the caller passes
numpy arrays (they already have it), and plain lists are binned in Python; the
PNG encoder is zlib + struct. Storage is described in docs/format.md (media).
"""

from __future__ import annotations

import io
import math
import os
import struct
import zlib
from bisect import bisect_right
from pathlib import Path
from typing import Any

from expman.errors import ExpmanTypeError, ExpmanValueError
from expman.layout import ARTIFACTS_DIR, MEDIA_DIR

__all__ = ["check_tag", "check_step", "histogram_record", "image_to_png", "encode_png",
           "media_relpath", "tag_parts", "PNG_SIGNATURE", "MAX_BINS"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_BINS = 10_000          # an events.jsonl line stays far below MAX_EVENT_LINE
MAX_TAG = 1024
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
             *(f"LPT{i}" for i in range(1, 10))}


def check_tag(tag: object, where: str = "tag") -> str:
    """A tag is a non-empty str without NUL or newlines ('train/loss_hist')."""
    if not isinstance(tag, str):
        raise ExpmanTypeError(f"{where} must be a str, got {type(tag).__name__} ({tag!r:.60})")
    if not tag or len(tag) > MAX_TAG or any(c in tag for c in "\x00\n\r"):
        raise ExpmanValueError(f"{where} {tag!r:.80} must be 1-{MAX_TAG} characters "
                               "without NUL or line breaks")
    return tag


def check_step(step: object, where: str = "step") -> int | None:
    """None, or a non-negative int (numpy integers and 0-d integer tensors too)."""
    if step is None:
        return None
    if isinstance(step, bool) or isinstance(step, float):
        raise ExpmanTypeError(f"{where} must be a non-negative int, got {step!r}")
    try:
        value = int(step.__index__())  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        item = getattr(step, "item", None)   # a 0-d integer tensor
        got = item() if callable(item) else None
        if not isinstance(got, int) or isinstance(got, bool):
            raise ExpmanTypeError(
                f"{where} must be a non-negative int, got {type(step).__name__} ({step!r:.60})") from None
        value = got
    if value < 0 or value >= 2**63:
        raise ExpmanValueError(f"{where} must be a non-negative 64-bit int, got {value}")
    return value


# ---- histograms --------------------------------------------------------------------------------


def _as_flat_floats(values: Any, tag: str) -> Any:
    """A flat float64 numpy array for array-likes that come from numpy/torch, else a list."""
    mod = type(values).__module__.split(".")[0]
    if mod == "torch":
        values = values.detach().cpu().numpy()
        mod = "numpy"
    if mod == "numpy":
        import numpy as np
        arr = np.asarray(values)
        if arr.dtype.kind not in "biuf":
            raise ExpmanTypeError(f"log_histogram({tag!r}): values must be numbers, "
                                  f"got an array of {arr.dtype}")
        return arr.astype(np.float64).ravel()
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ExpmanTypeError(f"log_histogram({tag!r}): values must be a sequence or array of "
                              f"numbers, got {type(values).__name__}")
    out = []
    for i, v in enumerate(values):
        try:
            if isinstance(v, (str, bytes)):
                raise TypeError
            out.append(float(v))
        except (TypeError, ValueError):
            raise ExpmanTypeError(f"log_histogram({tag!r}): values[{i}] is not a number: "
                                  f"{v!r:.60}") from None
    return out


def _check_edges(edges: Any, tag: str) -> list[float]:
    try:
        out = [float(e) for e in (edges.tolist() if hasattr(edges, "tolist") else edges)]
    except (TypeError, ValueError):
        raise ExpmanTypeError(f"log_histogram({tag!r}): edges must be numbers") from None
    if len(out) < 2 or len(out) > MAX_BINS + 1:
        raise ExpmanValueError(f"log_histogram({tag!r}): edges needs 2 to {MAX_BINS + 1} "
                               f"values, got {len(out)}")
    if not all(math.isfinite(e) for e in out) or any(b <= a for a, b in zip(out, out[1:])):
        raise ExpmanValueError(f"log_histogram({tag!r}): edges must be finite and strictly "
                               f"increasing, got {out[:8]}{' ...' if len(out) > 8 else ''}")
    return out


def _check_counts(counts: Any, n: int, tag: str) -> list[int | float]:
    raw = counts.tolist() if hasattr(counts, "tolist") else list(counts)
    if len(raw) != n:
        raise ExpmanValueError(f"log_histogram({tag!r}): {len(raw)} counts for {n} bins "
                               "(counts needs len(edges) - 1 values)")
    out: list[int | float] = []
    for i, c in enumerate(raw):
        if isinstance(c, bool) or not isinstance(c, (int, float)):
            raise ExpmanTypeError(f"log_histogram({tag!r}): counts[{i}] is not a number: {c!r:.60}")
        if not math.isfinite(c) or c < 0:
            raise ExpmanValueError(f"log_histogram({tag!r}): counts[{i}] must be finite and "
                                   f">= 0, got {c!r}")
        out.append(int(c) if isinstance(c, int) or float(c).is_integer() else float(c))
    return out


def histogram_record(tag: str, values: Any = None, bins: int = 64, edges: Any = None,
                     counts: Any = None) -> dict[str, Any]:
    """The stored form of one histogram: ``edges`` (n+1 floats) and ``counts`` (n).

    Either ``edges`` and ``counts`` exactly as given, or ``values`` binned into
    ``bins`` equal-width bins over [min, max] (or into the given ``edges``; values
    outside them are not counted, as numpy does). Non-finite values are not
    binned; their number is kept as ``nonfinite``. From values it also keeps
    ``min``, ``max``, ``num``, ``sum`` and ``sum_squares`` (TensorBoard's fields).
    """
    check_tag(tag)
    if values is None:
        if edges is None or counts is None:
            raise ExpmanValueError(f"log_histogram({tag!r}): pass values, or both edges and counts")
        e = _check_edges(edges, tag)
        return {"edges": e, "counts": _check_counts(counts, len(e) - 1, tag)}
    if counts is not None:
        raise ExpmanValueError(f"log_histogram({tag!r}): pass values or counts, not both")
    if isinstance(bins, bool) or not isinstance(bins, int) or not 1 <= bins <= MAX_BINS:
        raise ExpmanValueError(f"log_histogram({tag!r}): bins must be an int in [1, {MAX_BINS}], "
                               f"got {bins!r}")
    data = _as_flat_floats(values, tag)
    fixed = _check_edges(edges, tag) if edges is not None else None
    if isinstance(data, list):
        finite = [v for v in data if math.isfinite(v)]
        nonfinite = len(data) - len(finite)
        e, c = _bin_python(finite, bins, fixed)
        stats = (min(finite), max(finite), math.fsum(finite),
                 math.fsum(v * v for v in finite)) if finite else None
        num = len(finite)
    else:
        import numpy as np
        mask = np.isfinite(data)
        finite = data[mask]
        nonfinite = int(data.size - finite.size)
        num = int(finite.size)
        if fixed is not None:
            cnt, edg = np.histogram(finite, bins=np.asarray(fixed))
        elif num:
            lo, hi = float(finite.min()), float(finite.max())
            cnt, edg = np.histogram(finite, bins=bins, range=_span(lo, hi))
        else:
            cnt, edg = np.zeros(bins, dtype=np.int64), np.linspace(0.0, 1.0, bins + 1)
        e, c = [float(x) for x in edg], [int(x) for x in cnt]
        stats = (float(finite.min()), float(finite.max()), float(finite.sum()),
                 float(np.dot(finite, finite))) if num else None
    record: dict[str, Any] = {"edges": e, "counts": c, "num": num}
    if stats is not None:
        record.update(min=stats[0], max=stats[1], sum=stats[2], sum_squares=stats[3])
    if nonfinite:
        record["nonfinite"] = nonfinite
    return record


def edges_from_limits(low: float, limits: list[float], counts: list[float]
                      ) -> tuple[list[float], list[float]] | None:
    """TensorBoard's right-edge-only buckets as (edges, counts), or None if they
    do not form a histogram.

    torch and tensorboardX write numpy's edges whole as the limits, after an
    empty first bucket ending at the first edge: that reads back exactly.
    Otherwise the first bucket is taken to start at ``low`` (the minimum).
    """
    if len(limits) != len(counts) or not counts:
        return None
    if counts[0] == 0 and len(counts) >= 2:
        edges, counts = list(limits), list(counts[1:])
    else:
        edges = [low, *limits]
    if not all(map(math.isfinite, edges)) or any(b <= a for a, b in zip(edges, edges[1:])):
        return None
    return edges, counts


def _span(lo: float, hi: float) -> tuple[float, float]:
    """numpy's own rule for a degenerate range: one value v bins over [v-0.5, v+0.5]."""
    return (lo - 0.5, hi + 0.5) if lo == hi else (lo, hi)


def _bin_python(values: list[float], bins: int, fixed: list[float] | None
                ) -> tuple[list[float], list[int]]:
    """numpy.histogram's result for plain lists, without numpy."""
    if fixed is None:
        if values:
            lo, hi = _span(min(values), max(values))
        else:
            lo, hi = 0.0, 1.0
        edges = [lo + (hi - lo) * i / bins for i in range(bins)] + [hi]
    else:
        edges = fixed
    counts = [0] * (len(edges) - 1)
    last = len(edges) - 2
    for v in values:
        if v < edges[0] or v > edges[-1]:
            continue
        i = min(bisect_right(edges, v) - 1, last)    # the last bin is closed on the right
        counts[i] += 1
    return edges, counts


# ---- images ------------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(pixels: bytes, width: int, height: int, channels: int) -> bytes:
    """An 8-bit PNG from row-major pixel bytes (1 gray, 2 gray+alpha, 3 RGB, 4 RGBA)."""
    color = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    stride = width * channels
    if len(pixels) != stride * height:
        raise ExpmanValueError(f"encode_png: {len(pixels)} bytes for {width}x{height}x{channels}")
    raw = b"".join(b"\x00" + pixels[y * stride:(y + 1) * stride] for y in range(height))
    return (PNG_SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b""))


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ExpmanValueError("not a PNG image (no PNG signature and IHDR chunk)")
    w, h = struct.unpack(">II", data[16:24])
    return int(w), int(h)


def _array_to_png(arr: Any, tag: str, dataformats: str | None) -> bytes:
    import numpy as np
    a = np.asarray(arr)
    fmt = (dataformats or "").upper() or _guess_format(a.shape, tag)
    if sorted(fmt) not in (sorted("HW"), sorted("HWC")) or len(fmt) != a.ndim:
        raise ExpmanValueError(f"log_image({tag!r}): dataformats {fmt!r} does not fit an array "
                               f"of shape {a.shape} (use 'HW', 'HWC' or 'CHW')")
    if "C" not in fmt:
        a, fmt = a[..., None] if fmt == "HW" else a.T[..., None], "HWC"
    a = np.transpose(a, [fmt.index(c) for c in "HWC"])
    h, w, c = a.shape
    if c not in (1, 2, 3, 4) or h == 0 or w == 0:
        raise ExpmanValueError(f"log_image({tag!r}): an image needs 1-4 channels and a non-empty "
                               f"height and width, got shape {a.shape} as {fmt}")
    if a.dtype == np.uint8:
        out = a
    elif a.dtype == np.bool_:
        out = a.astype(np.uint8) * 255
    elif a.dtype.kind in "iu":
        if a.size and (a.min() < 0 or a.max() > 255):
            raise ExpmanValueError(f"log_image({tag!r}): integer pixels must be in [0, 255], got "
                                   f"[{a.min()}, {a.max()}]")
        out = a.astype(np.uint8)
    elif a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise ExpmanValueError(f"log_image({tag!r}): float pixels contain NaN or infinity")
        # floats are in [0, 1], as in TensorBoard and matplotlib
        out = (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    else:
        raise ExpmanTypeError(f"log_image({tag!r}): pixels of dtype {a.dtype} are not supported")
    return encode_png(np.ascontiguousarray(out).tobytes(), w, h, c)


def _guess_format(shape: tuple[int, ...], tag: str) -> str:
    if len(shape) == 2:
        return "HW"
    if len(shape) == 3:
        if shape[-1] in (1, 2, 3, 4):
            return "HWC"
        if shape[0] in (1, 2, 3, 4):
            return "CHW"
    raise ExpmanValueError(f"log_image({tag!r}): cannot tell the layout of an array of shape "
                           f"{shape}; pass an HW, HWC or CHW array with 1-4 channels")


def image_to_png(image: Any, tag: str = "image", dataformats: str | None = None) -> bytes:
    """PNG bytes from PNG bytes, a path to a PNG (other formats through PIL when
    installed), a PIL image, a matplotlib figure, or an HW/HWC/CHW array or tensor."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        png_size(data) if data.startswith(PNG_SIGNATURE) else _not_png(tag, "bytes")
        return data
    if isinstance(image, (str, os.PathLike)):
        path = Path(os.fspath(image))
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(2, f"log_image({tag!r}): no such file: {path}", str(path)) from None
        if data.startswith(PNG_SIGNATURE):
            png_size(data)
            return data
        try:
            from PIL import Image
        except ImportError:
            _not_png(tag, str(path))
        with Image.open(path) as im:
            return _pil_to_png(im)
    mod = type(image).__module__.split(".")[0]
    if mod == "PIL":
        return _pil_to_png(image)
    if hasattr(image, "savefig") and hasattr(image, "canvas"):   # a matplotlib Figure
        buf = io.BytesIO()
        image.savefig(buf, format="png")
        return buf.getvalue()
    if mod == "torch":
        image = image.detach().cpu().numpy()
        mod = "numpy"
    if mod == "numpy":
        return _array_to_png(image, tag, dataformats)
    raise ExpmanTypeError(
        f"log_image({tag!r}): cannot make an image of {type(image).__name__}; pass PNG bytes, a "
        "path, a PIL image, a matplotlib figure, or an HW/HWC/CHW numpy array")


def _not_png(tag: str, what: str) -> None:
    raise ExpmanValueError(f"log_image({tag!r}): {what} is not a PNG image; pass PNG data, or "
                           "install Pillow to convert other formats")


def _pil_to_png(im: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _escape_component(comp: str) -> str:
    out = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else
                  "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass")) for c in comp)
    if not out:
        return "%"
    if out.upper() in _RESERVED:         # Windows device names stay usable elsewhere
        out = f"%{ord(out[0]):02X}{out[1:]}"
    return out


def tag_parts(tag: str) -> list[str]:
    """The tag's '/'-separated parts, each escaped as a file name (media_relpath)."""
    return [_escape_component(c) for c in tag.split("/")]


def media_relpath(tag: str, step: int, n: int = 0) -> str:
    """``artifacts/media/<escaped tag>/<step>.png`` (``<step>_<n>.png`` for a repeat).

    Each '/'-separated part of the tag is one folder; a character other than an
    ASCII letter, digit, '-' or '_' becomes %XX (its UTF-8 bytes), so a tag
    never escapes the media folder and the name works on every OS.
    """
    parts = tag_parts(tag)
    name = f"{step}.png" if n == 0 else f"{step}_{n}.png"
    return "/".join([ARTIFACTS_DIR, MEDIA_DIR, *parts, name])

