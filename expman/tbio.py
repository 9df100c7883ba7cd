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
from pathlib import Path
from typing import Any, Iterator

from expman.errors import ExpmanValueError
from expman.layout import FAILED, FINISHED, RUNNING

__all__ = ["import_tensorboard", "export_tensorboard", "event_dirs"]

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
    their event files in name order (which is creation order)."""
    for root, dirs, files in sorted(os.walk(logdir)):
        dirs.sort()
        events = sorted(Path(root) / f for f in files if _EVENT_FILE.search(f))
        if events:
            yield Path(root), events


def _run_name(logdir: Path, folder: Path) -> str:
    rel = folder.relative_to(logdir).as_posix()
    name = logdir.name if rel == "." else rel.replace("/", "__")
    name = _UNSAFE.sub("_", name).strip(" .") or "run"
    return name


# ---- import -------------------------------------------------------------------------------------


def import_tensorboard(logdir: str | os.PathLike[str], base_dir: str | os.PathLike[str] | None = None,
                       experiment: str | None = None) -> list[Path]:
    """One expman run per folder of event files; returns the new run folders.

    The experiment is ``experiment`` or the logdir's name; a run is named after
    its folder relative to logdir ('a/b' -> 'a__b'). An existing run of that
    name is an error (RunExistsError), never merged into.
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
    made = [_import_folder(folder, files, base, name, _run_name(root, folder))
            for folder, files in found]
    return [p for p in made if p is not None]


def _import_folder(folder: Path, files: list[Path], base: Path, experiment: str,
                   run_name: str) -> Path | None:
    """One run from one folder's event files, or None if they hold no summaries
    (torch's SummaryWriter leaves such files in a parent of add_hparams' runs)."""
    # the raw events as written: EventFileLoader's compatibility pass would turn
    # histograms into left/right/count tensors whose last edge is the max, not the limit
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
    from expman.experiment import Experiment
    from expman.media import check_step
    exp: Experiment | None = None
    plugins: dict[str, str] = {}          # tag -> plugin; TF writes metadata on first use only
    skipped: dict[str, int] = {}
    try:
        for path in files:
            for event in LegacyEventFileLoader(str(path)).Load():
                if not event.HasField("summary") or not event.summary.value:
                    continue
                if exp is None:
                    exp = Experiment(experiment, run_name, base, capture_env=False,
                                     handle_signals=False)
                    exp.info(f"imported from TensorBoard event files in {folder}")
                step = int(event.step)
                check_step(step, f"step of an event in {path}")
                scalars: dict[str, float] = {}
                for value in event.summary.value:
                    if value.HasField("metadata") and value.metadata.plugin_data.plugin_name:
                        plugins[value.tag] = value.metadata.plugin_data.plugin_name
                    _import_value(exp, value, plugins.get(value.tag, ""), step,
                                  float(event.wall_time), scalars, skipped)
                if scalars:
                    exp.log_metrics(scalars, step)
        if exp is not None and skipped:
            exp.warn("not imported from TensorBoard: " + ", ".join(
                f"{kind} ({n})" for kind, n in sorted(skipped.items())))
    except BaseException:
        if exp is not None:
            exp.close(FAILED)
        raise
    if exp is None:
        return None
    exp.close()
    return exp.run_dir


def _import_value(exp: Any, value: Any, plugin: str, step: int, wall_time: float,
                  scalars: dict[str, float], skipped: dict[str, int]) -> None:
    from tensorboard.util import tensor_util
    kind = value.WhichOneof("value")
    if kind == "simple_value":
        if value.tag in scalars:              # a second value for a tag in one event
            exp.log_metrics(dict(scalars), step)
            scalars.clear()
        scalars[value.tag] = float(value.simple_value)
    elif kind == "tensor" and plugin == "scalars":
        if value.tag in scalars:
            exp.log_metrics(dict(scalars), step)
            scalars.clear()
        scalars[value.tag] = float(tensor_util.make_ndarray(value.tensor).item())
    elif kind == "tensor" and plugin == "text":
        arr = tensor_util.make_ndarray(value.tensor)
        texts = [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)
                 for x in arr.ravel().tolist()]
        exp._log_event({"kind": "message", "level": "info", "time": wall_time,
                        "msg": "\n".join(texts), "tag": value.tag, "step": step})
    elif kind == "histo" and _import_histogram(exp, value.tag, value.histo, step):
        pass
    elif kind == "image" and value.image.encoded_image_string.startswith(b"\x89PNG\r\n\x1a\n"):
        exp.log_image(value.tag, value.image.encoded_image_string, step)
    elif plugin == "hparams":
        from tensorboard.plugins.hparams import plugin_data_pb2
        data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
        if data.WhichOneof("data") == "session_start_info":
            exp.log_params({k: _hparam_value(v) for k, v in data.session_start_info.hparams.items()})
    else:
        label = plugin or kind or "empty"
        skipped[label] = skipped.get(label, 0) + 1


def _import_histogram(exp: Any, tag: str, histo: Any, step: int) -> bool:
    """A HistogramProto back to edges and counts (media.edges_from_limits)."""
    from expman.media import edges_from_limits
    got = edges_from_limits(float(histo.min), [float(x) for x in histo.bucket_limit],
                            [float(c) for c in histo.bucket])
    if got is None:
        return False
    exp.log_histogram(tag, step=step, edges=got[0], counts=got[1])
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
    import orjson
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
    ssi = plugin_data_pb2.SessionStartInfo(start_time_secs=start)
    infos = []
    from expman.readmodel import flatten_params
    for k, v in flatten_params(run.params).items():
        if isinstance(v, bool):
            ssi.hparams[k].bool_value = v
            dtype = "DATA_TYPE_BOOL"
        elif isinstance(v, (int, float)):
            ssi.hparams[k].number_value = v
            dtype = "DATA_TYPE_FLOAT64"
        elif isinstance(v, str):
            ssi.hparams[k].string_value = v
            dtype = "DATA_TYPE_STRING"
        elif v is None:
            continue
        else:                                   # lists: their JSON text
            ssi.hparams[k].string_value = orjson.dumps(v).decode()
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
            except OSError:
                continue
            image = summary_pb2.Summary.Image(height=im.height, width=im.width,
                                              colorspace=channels.get(png[25], 3) if len(png) > 25 else 3,
                                              encoded_image_string=png)
            yield float(im.time or 0.0), im.step, summary_pb2.Summary.Value(tag=tag, image=image)
