"""TensorBoard event files in and out, as library functions.

``import_tensorboard`` turns each folder of event files under a logdir into an
expman run: scalars (``simple_value`` and tensor-style) become metrics at their
step, hparams (the hparams plugin's session start) params, text messages
carrying tag, step and the original wall time; histograms (edges and counts)
and PNG images too. Anything else (audio, graphs, PR curves, ...) is counted
and named in a warning message of the run, not imported.

``export_tensorboard`` writes a run as an event file TensorBoard opens: metrics
as float64 scalar tensors (exact, unlike ``simple_value``'s float32), params as
hparams, messages as text, histograms as histogram protos, images as images.

Both use the ``tensorboard`` package's own reader and writer (the
``[tensorboard]`` extra); it is imported inside the functions.
"""

from __future__ import annotations

import os
import re
import stat
import struct
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

from expman.errors import ExpmanError, ExpmanValueError
from expman.layout import FAILED, FINISHED, RUNNING

__all__ = ["import_tensorboard", "export_tensorboard", "event_dirs", "read_records", "read_events"]

_EVENT_FILE = re.compile(r"tfevents")
_UNSAFE = re.compile(r'[\x00-\x1f<>:"/\\|?*]')


def _need_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ImportError("TensorBoard import/export needs the tensorboard package: "
                          "pip install 'expman-logger[tensorboard]'") from None


def event_dirs(logdir: Path) -> Iterator[tuple[Path, list[Path]]]:
    """Folders under logdir (itself included) holding event files, sorted, with
    their event files in name order (which is creation order). Only regular files
    count: a FIFO named like an event file would block the import, a link may lead
    anywhere (each is skipped with a warning)."""
    for root, dirs, files in sorted(os.walk(logdir)):
        dirs.sort()
        events = []
        for f in sorted(files):
            if not _EVENT_FILE.search(f):
                continue
            path = Path(root) / f
            try:
                regular = stat.S_ISREG(os.lstat(path).st_mode)
            except OSError:
                continue
            if regular:
                events.append(path)
            else:
                warnings.warn(f"expman: {path} is not a regular file (a link, a FIFO or a "
                              "device): not imported", RuntimeWarning, stacklevel=3)
        if events:
            yield Path(root), events


def _run_name(logdir: Path, folder: Path) -> str:
    rel = folder.relative_to(logdir).as_posix()
    name = logdir.name if rel == "." else rel.replace("/", "__")
    name = _UNSAFE.sub("_", name).strip(" .") or "run"
    return name


# ---- reading event files: TFRecord framing, checked ---------------------------------------------


def read_records(path: str | os.PathLike[str], problems: list[str] | None = None
                 ) -> Iterator[tuple[int, bytes]]:
    """The records of a TFRecord (event) file as ``(offset, payload)``.

    Opened through the guarded layer (a regular file, no link, never a FIFO). A
    record's length must fit in what the file holds (a crafted 2**63 never
    allocates). A record whose payload CRC fails is skipped and reading goes on
    after it (its length had a valid CRC); a length whose CRC fails cannot be
    trusted, so reading stops there; a record cut by the end of the file is a
    torn tail. Each is described in ``problems`` (file and offset), never silent.
    """
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    from expman._fsutil import open_regular
    problems = [] if problems is None else problems
    fd, st = open_regular(os.fspath(path), os.O_RDONLY)
    with os.fdopen(fd, "rb", buffering=1 << 20) as f:      # sequential: few system calls
        size, pos = st.st_size, 0
        while pos < size:
            head = f.read(12)
            if len(head) < 12:
                problems.append(f"{path}: torn record at offset {pos} ({size - pos} bytes)")
                return
            (length,), (crc,) = struct.unpack_from("<Q", head), struct.unpack_from("<I", head, 8)
            if masked_crc32c(head[:8]) != crc:
                problems.append(f"{path}: bad length checksum at offset {pos}; the "
                                f"{size - pos} bytes from there were not read")
                return
            if length > size - pos - 16:
                problems.append(f"{path}: record at offset {pos} declares {length} bytes, "
                                f"past the end of the file (torn or crafted)")
                return
            body = f.read(length + 4)
            if len(body) < length + 4:
                problems.append(f"{path}: torn record at offset {pos}")
                return
            payload = body[:length]
            if masked_crc32c(payload) != struct.unpack_from("<I", body, length)[0]:
                problems.append(f"{path}: bad checksum of the record at offset {pos}: skipped")
            else:
                yield pos, payload
            pos += 16 + length


def read_events(path: str | os.PathLike[str], problems: list[str] | None = None
                ) -> Iterator[tuple[int, Any]]:
    """``(offset, Event)`` for each record of an event file that parses as one
    (read_records; a record that does not parse is a problem, not an abort)."""
    from google.protobuf.message import DecodeError
    from tensorboard.compat.proto import event_pb2
    problems = [] if problems is None else problems
    for offset, payload in read_records(path, problems):
        try:
            yield offset, event_pb2.Event.FromString(payload)
        except (DecodeError, RecursionError, ValueError) as e:
            problems.append(f"{path}: record at offset {offset} is not an Event ({e})")


# ---- import -------------------------------------------------------------------------------------


def import_tensorboard(logdir: str | os.PathLike[str], base_dir: str | os.PathLike[str] | None = None,
                       experiment: str | None = None,
                       report: list[dict[str, Any]] | None = None) -> list[Path]:
    """One expman run per writer folder; returns the new run folders.

    A writer folder is a folder of event files that is not a sub-writer. A
    sub-writer is a child folder of a writer folder that ``SummaryWriter`` made
    for it: ``add_scalars("acc", {"train": ...})`` writes tag ``acc`` into
    ``acc_train/``, imported into the writer's run as metric ``acc/train``;
    ``add_hparams`` writes into a child folder (a timestamp, or its
    ``run_name``), whose hparams become the writer's params and whose metrics
    its metrics. Any other child folder is a run of its own.

    The experiment is ``experiment`` or the logdir's name; a run is named after
    its folder relative to logdir ('a/b' -> 'a__b'). An existing run of that
    name is an error (RunExistsError), never merged into. Damage is never
    silent and never aborts the import: a bad record, an event with a negative
    step, a value with an empty or unusable tag or a tensor larger than its
    bytes is skipped, and named (file and offset) in a RuntimeWarning and in a
    warning message of the run. ``report``, when given, receives one dict per
    run: ``run`` (its folder), ``folders`` (writer and sub-writers), ``first_event_time``
    (Unix seconds or None), ``problems`` (how many) and ``skipped`` (what was
    not imported, by kind).
    """
    _need_tensorboard()
    from expman.layout import base_dir as _base
    root = Path(os.path.abspath(os.fspath(logdir)))
    if not root.is_dir():
        raise FileNotFoundError(2, f"import_tensorboard: no such folder: {root}", str(root))
    found = list(event_dirs(root))
    if not found:
        raise ExpmanValueError(f"import_tensorboard: no event files (*tfevents*) under {root}")
    name = experiment or (_UNSAFE.sub("_", root.name).strip(" .") or "tensorboard")
    base = _base(base_dir)
    made = [_import_writer(parts, base, name, _run_name(root, parts[0][0]), report)
            for parts in _writers(root, found)]
    return [p for p in made if p is not None]


# a part of a writer's run: its folder, its event files, and how its scalar tags are named
_Part = tuple[Path, list[Path], Callable[[str], str]]


def _same(tag: str) -> str:
    return tag


def _writers(root: Path, found: list[tuple[Path, list[Path]]]) -> list[list[_Part]]:
    """The writer folders, each with its sub-writers folded in (parents come first in
    ``found``, so a child's writer is known when the child is reached)."""
    writers: dict[Path, list[_Part]] = {}
    for folder, files in found:
        parent = writers.get(folder.parent) if folder != root else None
        rename = _sub_writer(folder, files) if parent is not None else None
        if parent is not None and rename is not None:
            parent.append((folder, files, rename))
        else:
            writers[folder] = [(folder, files, _same)]
    return list(writers.values())


def _sub_writer(folder: Path, files: list[Path]) -> Callable[[str], str] | None:
    """How a sub-writer's scalar tags are named in its writer's run, or None if the
    folder is not one: add_hparams' folder holds the hparams plugin's session start;
    add_scalars' folder ``<main>_<key>`` holds only scalars tagged ``<main>`` ('/' in
    it written as '_'), named ``<main>/<key>``."""
    hparams, tags = False, set()        # tags: (tag, a scalar?)
    for path in files:
        for _, event in _events_of(path, []):         # problems: named by the import itself
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name if value.HasField("metadata") else ""
                if plugin == "hparams":
                    hparams = True
                    continue
                tags.add((value.tag, plugin in ("", "scalars")
                          and value.WhichOneof("value") in ("simple_value", "tensor")))
    if hparams:
        return _same
    if not tags or not all(scalar and tag and len(folder.name) > len(tag) + 1
                           and folder.name.startswith(tag.replace("/", "_") + "_")
                           for tag, scalar in tags):
        return None
    return lambda tag: f"{tag}/{folder.name[len(tag) + 1:]}"


MAX_REPORTED = 20          # problems named one by one; the rest are counted


def _decode_error() -> type[Exception]:
    from google.protobuf.message import DecodeError
    error: type[Exception] = DecodeError
    return error


# what a crafted value can raise: it skips that value, never the import
_VALUE_ERRORS: tuple[type[BaseException], ...] = (ExpmanError, ValueError, TypeError,
                                                 OverflowError, RecursionError)


def _import_writer(parts: list[_Part], base: Path, experiment: str, run_name: str,
                   report: list[dict[str, Any]] | None) -> Path | None:
    """One run from a writer folder's event files and its sub-writers', or None if
    they hold no summaries (torch's SummaryWriter leaves such files in a parent of
    add_hparams' runs)."""
    # the raw events as written (read_events): EventFileLoader's compatibility pass would
    # turn histograms into left/right/count tensors whose last edge is the max, not the limit
    from expman.experiment import MAX_WALL_TIME, Experiment
    folder = parts[0][0]
    exp: Experiment | None = None
    skipped: dict[str, int] = {}
    problems: list[str] = []
    first: float | None = None      # the run's span: its first and last event
    last: float | None = None
    try:
        for _, files, rename in parts:
            plugins: dict[str, str] = {}      # tag -> plugin; TF writes metadata on first use only
            for path in files:
                for offset, event in _events_of(path, problems):
                    if not event.HasField("summary") or not event.summary.value:
                        continue
                    if exp is None:
                        exp = Experiment(experiment, run_name, base, capture_env=False,
                                         handle_signals=False, system_metrics=False)
                        exp.info(f"imported from TensorBoard event files in {folder}")
                    wall = float(event.wall_time)
                    if not 0 <= wall < MAX_WALL_TIME:       # NaN, negative: not a time
                        problems.append(f"{path}: event at offset {offset} has wall_time "
                                        f"{wall!r}: its {len(event.summary.value)} values "
                                        "skipped")
                        continue
                    first = wall if first is None else min(first, wall)
                    last = wall if last is None else max(last, wall)
                    step = int(event.step)
                    if step < 0:
                        problems.append(f"{path}: event at offset {offset} has step {step}: "
                                        f"its {len(event.summary.value)} values skipped")
                        continue
                    scalars: dict[str, float] = {}
                    for value in event.summary.value:
                        if value.HasField("metadata") and value.metadata.plugin_data.plugin_name:
                            plugins[value.tag] = value.metadata.plugin_data.plugin_name
                        try:
                            _import_value(exp, value, rename(value.tag), plugins.get(value.tag, ""),
                                          step, wall, scalars, skipped)
                        except _VALUE_ERRORS as e:
                            problems.append(f"{path}: value {value.tag!r:.80} of the event at "
                                            f"offset {offset} skipped: {e}")
                    _log_scalars(exp, scalars, step, wall, f"{path}: event at offset {offset}",
                                 problems)
        if exp is not None and skipped:
            exp.warn("not imported from TensorBoard: " + ", ".join(
                f"{kind} ({n})" for kind, n in sorted(skipped.items())))
        if problems:
            text = "; ".join(problems[:MAX_REPORTED]) + (
                f"; and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else "")
            if exp is not None:
                exp.warn(f"TensorBoard import: {len(problems)} problems: {text}")
            warnings.warn(f"expman: importing {folder}: {text}", RuntimeWarning, stacklevel=3)
    except BaseException:
        if exp is not None:
            exp.close(FAILED)
        raise
    if exp is None:
        return None
    exp.close(start_time=first, end_time=last)
    if report is not None:
        report.append({"run": exp.run_dir, "folders": [str(p[0]) for p in parts],
                       "first_event_time": first, "last_event_time": last, "problems": len(problems),
                       "skipped": dict(sorted(skipped.items()))})
    return exp.run_dir


def _events_of(path: Path, problems: list[str]) -> Iterator[tuple[int, Any]]:
    """read_events, an error reading the file (unreadable, or swapped for a FIFO
    or a link meanwhile) ending that file as a problem, not the import."""
    events = read_events(path, problems)
    while True:
        try:
            item = next(events)
        except StopIteration:
            return
        except OSError as e:
            problems.append(f"{path}: not read further ({e})")
            return
        yield item


def _log_scalars(exp: Any, scalars: dict[str, float], step: int, wall_time: float, where: str,
                 problems: list[str]) -> None:
    """Log an event's scalars together; if the call refuses one (an empty or
    over-long tag), each alone, so only the bad ones are lost (and named)."""
    if not scalars:
        return
    try:
        exp.log_metrics_at(scalars, step, wall_time=wall_time)
        return
    except (ExpmanError, ValueError, TypeError):
        pass
    for tag, value in scalars.items():
        try:
            exp.log_metrics_at({tag: value}, step, wall_time=wall_time)
        except (ExpmanError, ValueError, TypeError) as e:
            problems.append(f"{where}: scalar {tag!r:.80} skipped: {e}")


# A tensor declares its shape; its values are what its bytes hold. make_ndarray
# fills the declared shape, so 60 bytes could ask for gigabytes: the shape must
# fit the values present (a scalar: exactly one).
_DTYPE_BYTES = {1: 4, 2: 8, 3: 4, 4: 1, 5: 2, 6: 1, 8: 8, 9: 8, 10: 1, 14: 2, 17: 2, 18: 16,
                19: 2, 22: 4, 23: 8}


def _tensor_elements(tensor: Any) -> int:
    """How many elements the declared shape holds (ValueError if negative or unknown)."""
    n = 1
    for dim in tensor.tensor_shape.dim:
        if dim.size < 0:
            raise ExpmanValueError(f"tensor dimension {dim.size} is negative")
        n *= dim.size
        if n > 1 << 40:
            break
    return n


def _checked_ndarray(tensor: Any, most: int | None = None) -> Any:
    """tensor_util.make_ndarray, once the declared shape is known to fit the bytes
    present (and ``most`` elements)."""
    from tensorboard.util import tensor_util
    n = _tensor_elements(tensor)
    if tensor.tensor_content:
        width = _DTYPE_BYTES.get(int(tensor.dtype))
        present = len(tensor.tensor_content) // width if width else 0
    else:
        present = max(len(tensor.float_val), len(tensor.double_val), len(tensor.int_val),
                      len(tensor.int64_val), len(tensor.bool_val), len(tensor.string_val),
                      len(tensor.half_val), len(tensor.uint32_val), len(tensor.uint64_val))
    if n > present or (most is not None and n > most):
        raise ExpmanValueError(f"tensor declares {n} elements but holds {present}")
    return tensor_util.make_ndarray(tensor)


def _import_value(exp: Any, value: Any, tag: str, plugin: str, step: int, wall_time: float,
                  scalars: dict[str, float], skipped: dict[str, int]) -> None:
    """One summary value into the run; a scalar is gathered into ``scalars`` under
    ``tag`` (its name in the run: a sub-writer's tag renamed)."""
    kind = value.WhichOneof("value")
    if kind in ("simple_value", "tensor", "histo", "image") and not value.tag:
        raise ExpmanValueError("the tag is empty")
    if kind == "simple_value":
        if tag in scalars:                    # a second value for a tag in one event
            exp.log_metrics_at(dict(scalars), step, wall_time=wall_time)
            scalars.clear()
        scalars[tag] = float(value.simple_value)
    elif kind == "tensor" and plugin == "scalars":
        x = float(_checked_ndarray(value.tensor, most=1).item())
        if tag in scalars:
            exp.log_metrics_at(dict(scalars), step, wall_time=wall_time)
            scalars.clear()
        scalars[tag] = x
    elif kind == "tensor" and plugin == "text":
        arr = _checked_ndarray(value.tensor)
        texts = [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)
                 for x in arr.ravel().tolist()]
        exp.log_text(value.tag, "\n".join(texts), step, wall_time=wall_time)
    elif kind == "histo" and _import_histogram(exp, value.tag, value.histo, step, wall_time):
        pass
    elif kind == "image" and value.image.encoded_image_string.startswith(b"\x89PNG\r\n\x1a\n"):
        exp.log_image(value.tag, value.image.encoded_image_string, step, wall_time=wall_time)
    elif plugin == "hparams":
        from tensorboard.plugins.hparams import plugin_data_pb2
        try:
            data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
        except _decode_error() as e:
            raise ExpmanValueError(f"hparams metadata does not parse ({e})") from None
        if data.WhichOneof("data") == "session_start_info":
            exp.log_params({k: _hparam_value(v) for k, v in data.session_start_info.hparams.items()})
    else:
        label = plugin or kind or "empty"
        skipped[label] = skipped.get(label, 0) + 1


def _import_histogram(exp: Any, tag: str, histo: Any, step: int, wall_time: float) -> bool:
    """A HistogramProto back to edges and counts (media.edges_from_limits)."""
    from expman.media import edges_from_limits
    got = edges_from_limits(float(histo.min), [float(x) for x in histo.bucket_limit],
                            [float(c) for c in histo.bucket])
    if got is None:
        return False
    exp.log_histogram(tag, step=step, edges=got[0], counts=got[1], wall_time=wall_time)
    return True


def _hparam_value(v: Any) -> Any:
    kind = v.WhichOneof("kind")
    if kind == "number_value":
        x = float(v.number_value)
        return int(x) if x.is_integer() and abs(x) < 2**53 else x
    if kind == "string_value":
        return str(v.string_value)
    if kind == "bool_value":
        return bool(v.bool_value)
    return None


# ---- export -------------------------------------------------------------------------------------


def export_tensorboard(run: Any, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``run`` (a Run from open_run, or a run folder) as one event file in
    ``out_dir``; returns the file's path."""
    _need_tensorboard()
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    if not hasattr(run, "metrics"):
        from expman.reader import open_run
        run = open_run(run)
    out = Path(os.fspath(out_dir))
    out.mkdir(parents=True, exist_ok=True)
    writer = EventFileWriter(str(out))
    try:
        start = float(run.meta.get("start_time") or 0.0)
        for summary, step, wall in _hparams_summaries(run, start):
            writer.add_event(event_pb2.Event(wall_time=wall, step=step, summary=summary))
        for wall, step, values in _metric_events(run):
            writer.add_event(event_pb2.Event(wall_time=wall, step=step,
                                             summary=summary_pb2.Summary(value=values)))
        for wall, step, value in _event_values(run):
            writer.add_event(event_pb2.Event(wall_time=wall, step=step,
                                             summary=summary_pb2.Summary(value=[value])))
    finally:
        writer.close()
    # the writer names its file (time, host, pid, counter); _file_name is where
    path = Path(getattr(writer, "_file_name", ""))
    if not path.is_file():
        path = max(out.glob("*tfevents*"), key=lambda p: p.stat().st_mtime_ns)
    return path


def _scalar_metadata() -> Any:
    from tensorboard.compat.proto import summary_pb2
    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
        data_class=summary_pb2.DATA_CLASS_SCALAR)


def _metric_events(run: Any) -> Iterator[tuple[float, int, list[Any]]]:
    """Points in logged order, one event per (record time, step): float64 tensors."""
    from tensorboard.compat.proto import summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
    import heapq
    # merged by time, but each metric's points stay in logged order whatever the
    # clock did (equal stamps, a step back): heapq.merge never reorders one input
    points = heapq.merge(*([(float(t), int(step), name, float(value))
                            for step, value, t in zip(s.steps, s.values, s.times)]
                           for name, s in run.metrics.items()), key=lambda p: p[0])
    meta = _scalar_metadata()
    seen: set[str] = set()
    group: list[Any] = []
    key: tuple[float, int] | None = None
    for t, step, name, value in points:
        if key is not None and (t, step) != key:
            yield key[0], key[1], group
            group = []
        key = (t, step)
        tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_DOUBLE, double_val=[value],
                                        tensor_shape=tensor_shape_pb2.TensorShapeProto())
        v = summary_pb2.Summary.Value(tag=name, tensor=tensor)
        if name not in seen:
            v.metadata.CopyFrom(meta)
            seen.add(name)
        group.append(v)
    if group and key is not None:
        yield key[0], key[1], group


def _hparams_summaries(run: Any, start: float) -> Iterator[tuple[Any, int, float]]:
    """The hparams plugin's experiment, session start and session end, as torch writes them."""
    if not run.params:
        return
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    from expman.readmodel import flatten_params
    ssi = plugin_data_pb2.SessionStartInfo(start_time_secs=start)
    infos = []
    for k, v in flatten_params(run.params).items():     # the one naming rule: a.b, lists as JSON
        if v is None:
            continue
        if isinstance(v, bool):
            ssi.hparams[k].bool_value = v
            dtype = "DATA_TYPE_BOOL"
        elif isinstance(v, (int, float)):
            ssi.hparams[k].number_value = v
            dtype = "DATA_TYPE_FLOAT64"
        else:
            ssi.hparams[k].string_value = v
            dtype = "DATA_TYPE_STRING"
        infos.append(api_pb2.HParamInfo(name=k, type=api_pb2.DataType.Value(dtype)))
    metrics = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=name)) for name in run.metrics]
    exp = api_pb2.Experiment(hparam_infos=infos, metric_infos=metrics)
    status = "STATUS_SUCCESS" if run.status == FINISHED else (
        "STATUS_RUNNING" if run.status == RUNNING else "STATUS_FAILURE")
    sei = plugin_data_pb2.SessionEndInfo(status=api_pb2.Status.Value(status),
                                         end_time_secs=float(run.meta.get("end_time") or start))
    for tag, data in ((metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=exp)),
                      (metadata.SESSION_START_INFO_TAG,
                       plugin_data_pb2.HParamsPluginData(session_start_info=ssi)),
                      (metadata.SESSION_END_INFO_TAG,
                       plugin_data_pb2.HParamsPluginData(session_end_info=sei))):
        data.version = metadata.PLUGIN_DATA_VERSION
        md = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(
            plugin_name=metadata.PLUGIN_NAME, content=data.SerializeToString()))
        yield summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, metadata=md)]), 0, start


def _event_values(run: Any) -> Iterator[tuple[float, int, Any]]:
    """Messages as text, histograms and images, from run.events."""
    from tensorboard.compat.proto import summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
    from expman.media_read import histograms, images
    text_md = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="text"),
        data_class=summary_pb2.DATA_CLASS_TENSOR)
    for ev in run.events:
        if ev.get("kind") != "message" or not isinstance(ev.get("msg"), str):
            continue
        tag = ev.get("tag") if isinstance(ev.get("tag"), str) else f"messages/{ev.get('level', 'info')}"
        step = ev.get("step") if isinstance(ev.get("step"), int) else int(ev.get("seq") or 0)
        tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[ev["msg"].encode()],
                                        tensor_shape=tensor_shape_pb2.TensorShapeProto())
        yield float(ev.get("time") or 0.0), max(step, 0), summary_pb2.Summary.Value(
            tag=tag, tensor=tensor, metadata=text_md)
    for tag, hists in histograms(run).items():
        for h in hists:
            num = float(sum(h.counts))
            # torch's layout: every edge as a limit, after an empty first bucket
            histo = summary_pb2.HistogramProto(
                min=h.edges[0], max=h.edges[-1], num=num, sum=float(h.stats.get("sum", 0.0)),
                sum_squares=float(h.stats.get("sum_squares", 0.0)),
                bucket_limit=h.edges, bucket=[0.0, *(float(c) for c in h.counts)])
            yield float(h.time or 0.0), h.step, summary_pb2.Summary.Value(tag=tag, histo=histo)
    channels = {0: 1, 4: 2, 2: 3, 6: 4}
    for tag, imgs in images(run).items():
        for im in imgs:
            try:
                png = im.read_bytes()
            except (OSError, ValueError):        # gone, or not a regular file
                continue
            image = summary_pb2.Summary.Image(height=im.height, width=im.width,
                                              colorspace=channels.get(png[25], 3) if len(png) > 25 else 3,
                                              encoded_image_string=png)
            yield float(im.time or 0.0), im.step, summary_pb2.Summary.Value(tag=tag, image=image)
