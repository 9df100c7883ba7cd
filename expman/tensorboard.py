"""``from expman.tensorboard import SummaryWriter``: a drop-in for
``torch.utils.tensorboard.SummaryWriter`` and ``tensorboardX.SummaryWriter``.

``log_dir`` is the run folder itself (``<base>/<experiment>/<run>``), so
``SummaryWriter("runs/exp1")`` writes the run ``runs/exp1`` under the base dir
``.``, and ``SummaryWriter()`` writes ``<base_dir()>/runs/<date>_<host><comment>``
as TensorBoard names it. What TensorBoard keeps, expman keeps, exactly:
scalars as metrics, hparams as params (their metrics as metrics), text as
messages, histograms as edges and counts, images and figures as PNG artifacts.
A method of the real writer that is not implemented here raises
``NotImplementedError`` naming it: nothing is silently dropped.

Neither torch nor tensorboard is imported by this module.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Mapping

from expman.errors import ExpmanTypeError, ExpmanValueError
from expman.experiment import Experiment
from expman.layout import RUN_FILE, base_dir as _base_dir

__all__ = ["SummaryWriter", "UNSUPPORTED"]

# Public methods of torch's and tensorboardX's SummaryWriter that expman does not
# store; each raises NotImplementedError naming itself (tests check the list is whole).
UNSUPPORTED = (
    "add_audio", "add_custom_scalars", "add_custom_scalars_marginchart",
    "add_custom_scalars_multilinechart", "add_embedding", "add_graph",
    "add_image_with_boxes", "add_mesh", "add_onnx_graph", "add_openvino_graph",
    "add_pr_curve", "add_pr_curve_raw", "add_tensor", "add_video", "export_scalars_to_json",
    "use_metadata",
)


def default_run_name(comment: str = "") -> str:
    """TensorBoard's default folder name: ``Nov29_02-10-00_host<comment>``."""
    return datetime.now().strftime("%b%d_%H-%M-%S") + "_" + socket.gethostname() + comment


def run_location(log_dir: str | os.PathLike[str] | None, comment: str = "",
                 base_dir: str | os.PathLike[str] | None = None) -> tuple[Path, str, str]:
    """(base dir, experiment, run name) for a log_dir: the run folder *is* log_dir."""
    if log_dir is None:
        return _base_dir(base_dir), "runs", default_run_name(comment)
    if base_dir is not None:
        raise ExpmanValueError("SummaryWriter: pass log_dir or base_dir, not both "
                               "(log_dir is the run folder itself)")
    folder = Path(os.path.abspath(os.fspath(log_dir)))
    if folder.parent == folder or folder.parent.parent == folder.parent:
        raise ExpmanValueError(f"SummaryWriter: log_dir {log_dir!r} needs two levels "
                               "(<experiment>/<run>) below some folder")
    return folder.parent.parent, folder.parent.name, folder.name


class SummaryWriter:
    """Writes into one expman run; see the module docstring for the mapping.

    ``experiment=`` logs into an open ``Experiment`` instead (left open by
    ``close()``); extra keyword arguments (``tags``, ``capture_output``, ...)
    go to ``Experiment``. ``walltime`` arguments are accepted and not used:
    expman stamps each record with its own clock.
    """

    def __init__(self, log_dir: str | os.PathLike[str] | None = None, comment: str = "",
                 purge_step: int | None = None, max_queue: int = 10, flush_secs: int = 120,
                 filename_suffix: str = "", *, experiment: Experiment | None = None,
                 base_dir: str | os.PathLike[str] | None = None,
                 logdir: str | os.PathLike[str] | None = None, **experiment_kwargs: Any) -> None:
        if logdir is not None:                  # tensorboardX's spelling
            if log_dir is not None:
                raise ExpmanValueError("SummaryWriter: pass log_dir or logdir, not both")
            log_dir = logdir
        if purge_step is not None:
            raise NotImplementedError("SummaryWriter(purge_step=...): expman keeps every record "
                                      "as logged and never purges steps")
        if experiment is not None:
            if log_dir is not None or base_dir is not None or experiment_kwargs:
                raise ExpmanValueError("SummaryWriter(experiment=...) takes no log_dir, base_dir "
                                       "or Experiment arguments")
            self._exp, self._owned = experiment, False
        else:
            base, name, run = run_location(log_dir, comment, base_dir)
            folder = base / name / run
            if folder.is_dir() and not (folder / RUN_FILE).is_file():
                if any(folder.iterdir()):
                    raise ExpmanValueError(
                        f"SummaryWriter: log_dir {folder} holds files but no expman run (TensorBoard "
                        "event files?); pick another log_dir, or keep TensorBoard writing there and "
                        "use expman.integrations.tensorboard.patch()")
                folder.rmdir()          # an empty folder made beforehand becomes the run
            experiment_kwargs.setdefault("resume", (folder / RUN_FILE).is_file())
            self._exp, self._owned = Experiment(name, run, base, **experiment_kwargs), True
        self._closed = False

    # ---- what expman stores ------------------------------------------------------------------
    @property
    def experiment(self) -> Experiment:
        """The run this writer logs into."""
        return self._exp

    def get_logdir(self) -> str:
        return str(self._exp.run_dir)

    @property
    def log_dir(self) -> str:
        return str(self._exp.run_dir)

    logdir = log_dir          # tensorboardX's spelling

    def add_scalar(self, tag: str, scalar_value: Any, global_step: int | None = None,
                   walltime: float | None = None, new_style: bool = False,
                   double_precision: bool = False, display_name: str = "",
                   summary_description: str = "") -> None:
        """One metric point (float64, exactly as given); the display options of
        torch and tensorboardX are accepted and not used."""
        if type(scalar_value) is not float:          # the common case skips a call
            scalar_value = _number(tag, scalar_value)
        self._exp.log_metrics({tag: scalar_value}, global_step)     # names a non-str tag

    def add_scalars(self, main_tag: str, tag_scalar_dict: Mapping[str, Any],
                    global_step: int | None = None, walltime: float | None = None) -> None:
        """Metrics ``main_tag/tag`` for each entry, in one record at one step."""
        if not isinstance(tag_scalar_dict, Mapping):
            raise ExpmanTypeError(f"add_scalars({main_tag!r}): tag_scalar_dict must be a dict, "
                                  f"got {type(tag_scalar_dict).__name__}")
        self._exp.log_metrics({f"{_tag(main_tag)}/{_tag(k)}": _number(f"{main_tag}/{k}", v)
                               for k, v in tag_scalar_dict.items()}, global_step)

    def add_hparams(self, hparam_dict: Mapping[str, Any], metric_dict: Mapping[str, Any],
                    hparam_domain_discrete: Mapping[str, Any] | None = None,
                    run_name: str | None = None, global_step: int | None = None,
                    name: str | None = None) -> None:
        """hparams become params; the metric values become metrics of this run.

        (TensorBoard writes them into a sub-run named ``run_name``; here they
        belong to the run itself.)
        """
        if not isinstance(hparam_dict, Mapping) or not isinstance(metric_dict, Mapping):
            raise ExpmanTypeError("add_hparams: hparam_dict and metric_dict must be dicts")
        self._exp.log_params({k: _param(v) for k, v in hparam_dict.items()})
        if metric_dict:
            self._exp.log_metrics({_tag(k): _number(k, v) for k, v in metric_dict.items()},
                                  global_step)

    def add_text(self, tag: str, text_string: str, global_step: int | None = None,
                 walltime: float | None = None) -> None:
        """A message (level info) carrying ``tag`` and ``step``."""
        self._exp.log_text(_tag(tag), str(text_string), global_step)

    def add_histogram(self, tag: str, values: Any, global_step: int | None = None,
                      bins: Any = "tensorflow", walltime: float | None = None,
                      max_bins: int | None = None) -> None:
        """Edges and counts, exactly. ``bins``: an int (equal bins), a sequence of
        edges, a numpy rule name ('auto', 'fd', ...); 'tensorflow' (the default)
        means 64 equal bins over [min, max]."""
        tag = _tag(tag)
        data = _to_numpy(values)
        if isinstance(bins, str) and bins != "tensorflow":
            import numpy as np
            finite = np.asarray(data, dtype=np.float64).ravel()
            finite = finite[np.isfinite(finite)]
            edges = np.histogram_bin_edges(finite, bins=bins) if finite.size else None
            self._exp.log_histogram(tag, data, global_step, edges=edges)
        elif isinstance(bins, int) and not isinstance(bins, bool):
            self._exp.log_histogram(tag, data, global_step, bins=bins)
        elif bins == "tensorflow":
            self._exp.log_histogram(tag, data, global_step, bins=max_bins or 64)
        else:
            self._exp.log_histogram(tag, data, global_step, edges=bins)

    def add_histogram_raw(self, tag: str, min: float, max: float, num: int, sum: float,
                          sum_squares: float, bucket_limits: Any, bucket_counts: Any,
                          global_step: int | None = None, walltime: float | None = None) -> None:
        """TensorBoard's bucket form (right edges only) as edges and counts: the
        limits are the edges when the first bucket is empty (torch's layout), else
        the first bucket starts at ``min``. Other forms raise, naming the tag."""
        from expman.media import edges_from_limits
        limits = [float(x) for x in _to_numpy(bucket_limits).tolist()] \
            if hasattr(bucket_limits, "tolist") else [float(x) for x in bucket_limits]
        counts = [float(c) for c in (_to_numpy(bucket_counts).tolist()
                                     if hasattr(bucket_counts, "tolist") else bucket_counts)]
        got = edges_from_limits(float(min), limits, counts)
        if got is None:
            raise ExpmanValueError(
                f"add_histogram_raw({tag!r}): {len(limits)} bucket_limits and {len(counts)} "
                "bucket_counts do not form a histogram (equal lengths, increasing finite limits, "
                "min below the first limit or an empty first bucket)")
        self._exp.log_histogram(_tag(tag), step=global_step, edges=got[0], counts=got[1])

    def add_image(self, tag: str, img_tensor: Any, global_step: int | None = None,
                  walltime: float | None = None, dataformats: str = "CHW") -> None:
        """A PNG artifact at ``artifacts/media/<tag>/<step>.png`` (floats in [0, 1])."""
        if isinstance(img_tensor, (str, bytes, os.PathLike)):
            self._exp.log_image(_tag(tag), img_tensor, global_step)
        else:
            self._exp.log_image(_tag(tag), _to_numpy(img_tensor), global_step,
                                dataformats=dataformats)

    def add_images(self, tag: str, img_tensor: Any, global_step: int | None = None,
                   walltime: float | None = None, dataformats: str = "NCHW") -> None:
        """Each image of the batch as its own PNG, in batch order, under one tag and
        step (``<step>.png``, ``<step>_1.png``, ...), where TensorBoard tiles a grid."""
        import numpy as np
        batch = np.asarray(_to_numpy(img_tensor))
        fmt = dataformats.upper()
        if len(fmt) != batch.ndim or fmt[0] != "N":
            raise ExpmanValueError(f"add_images({tag!r}): dataformats {dataformats!r} does not fit "
                                   f"a batch of shape {batch.shape} (use 'NCHW', 'NHWC', 'NHW')")
        for image in batch:
            self._exp.log_image(_tag(tag), image, global_step, dataformats=fmt[1:])

    def add_figure(self, tag: str, figure: Any, global_step: int | None = None,
                   close: bool = True, walltime: float | None = None) -> None:
        """A matplotlib figure as a PNG artifact; closed afterwards unless close=False."""
        if isinstance(figure, list):
            raise NotImplementedError("SummaryWriter.add_figure with a list of figures is not "
                                      "supported by expman; log each figure with its own tag")
        try:
            self._exp.log_image(_tag(tag), figure, global_step)
        finally:
            if close:
                import matplotlib.pyplot as plt
                plt.close(figure)

    def flush(self) -> None:
        if not self._closed:
            self._exp.flush()

    def close(self) -> None:
        """Close the run (FINISHED) if this writer opened it. Idempotent."""
        if not self._closed:
            self._closed = True
            if self._owned:
                self._exp.close()

    def __enter__(self) -> "SummaryWriter":
        return self

    def __exit__(self, tp: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._owned:
            self._closed = True
            self._exp.__exit__(tp, exc, tb)      # an exception marks the run FAILED
        else:
            self.close()

    def __repr__(self) -> str:
        return f"<expman.tensorboard.SummaryWriter {self._exp.run_dir}>"


def _unsupported(name: str) -> Callable[..., Any]:
    def method(self: SummaryWriter, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            f"SummaryWriter.{name} is not supported by expman's SummaryWriter; it stores "
            "scalars, hparams, text, histograms, images and figures (docs/integrations.md)")
    method.__name__ = name
    method.__doc__ = f"Not supported: raises NotImplementedError naming {name}."
    return method


for _name in UNSUPPORTED:
    setattr(SummaryWriter, _name, _unsupported(_name))


def _tag(tag: object) -> str:
    if not isinstance(tag, str):
        raise ExpmanTypeError(f"SummaryWriter: a tag must be a str, got {type(tag).__name__} "
                              f"({tag!r:.60})")
    return tag


def _number(tag: str, value: Any) -> Any:
    """Numbers, numpy scalars and one-element tensors or arrays as they are
    (log_metrics takes them); a str refused with TensorBoard's reason."""
    if isinstance(value, str):
        raise ExpmanTypeError(f"SummaryWriter: the value of {tag!r} must be a number, got str "
                              f"({value!r:.60}); caffe2 blob names are not supported")
    return value


def _param(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    return value


def _to_numpy(value: Any) -> Any:
    if type(value).__module__.split(".")[0] == "torch":
        return value.detach().cpu().numpy()
    return value
