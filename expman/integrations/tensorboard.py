"""``patch()``: existing ``SummaryWriter`` code also logs into expman.

Like wandb's ``sync_tensorboard=True``: after ``patch()``, every
``torch.utils.tensorboard.SummaryWriter`` and ``tensorboardX.SummaryWriter``
(instances made before or after) keeps writing its event files as usual and
also logs the same calls into an expman run, through
``expman.tensorboard.SummaryWriter``. The run for a writer whose log_dir is
``.../<parent>/<name>`` is ``<base_dir>/<experiment or parent>/<name>``
(TensorBoard's own files stay in log_dir; expman's run is a separate folder).

Calls made by the real writer to itself (``add_figure`` calling
``add_image``, ``add_hparams`` making a child writer) are not logged twice.
A method expman does not store is passed to TensorBoard only. ``unpatch()``
restores the classes.
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path
from typing import Any, Callable

__all__ = ["patch", "unpatch", "MIRRORED"]

# The calls mirrored into expman (the rest go to TensorBoard only).
MIRRORED = ("add_scalar", "add_scalars", "add_hparams", "add_text", "add_histogram",
            "add_histogram_raw", "add_image", "add_images", "add_figure", "flush", "close")
_ATTR = "_expman_writer"

_lock = threading.Lock()
_patched: dict[type, dict[str, Any]] = {}
_settings: dict[str, Any] = {}
_busy = threading.local()        # inside a patched call: nested calls are TensorBoard's own


def _writer_classes() -> list[type]:
    classes: list[type] = []
    try:
        from torch.utils.tensorboard import SummaryWriter as TorchWriter
        classes.append(TorchWriter)
    except ImportError:
        pass
    try:
        from tensorboardX import SummaryWriter as XWriter
        classes.append(XWriter)
    except ImportError:
        pass
    return classes


def patch(base_dir: str | os.PathLike[str] | None = None, experiment: str | None = None,
          **experiment_kwargs: Any) -> list[type]:
    """Mirror SummaryWriter calls into expman runs; returns the classes patched.

    ``base_dir`` follows expman's rule (argument, $EXPMAN_DIR, ./experiments);
    ``experiment`` names the experiment (default: the log_dir's parent folder
    name); other keyword arguments go to each ``Experiment``. Raises ImportError
    when neither torch's tensorboard nor tensorboardX is installed.
    """
    classes = _writer_classes()
    if not classes:
        raise ImportError("expman.integrations.tensorboard.patch() needs torch (with the "
                          "tensorboard package) or tensorboardX: pip install 'expman-logger[tensorboard]'")
    with _lock:
        _settings.clear()
        _settings.update(base_dir=base_dir, experiment=experiment, kwargs=experiment_kwargs)
        for cls in classes:
            if cls in _patched:
                continue
            originals = {name: cls.__dict__[name] for name in MIRRORED if name in cls.__dict__}
            for name, fn in originals.items():
                setattr(cls, name, _mirror(name, fn))
            _patched[cls] = originals
    return classes


def unpatch() -> None:
    """Restore the SummaryWriter classes. Mirrored runs stay open until their
    writer closes (or the process exits)."""
    with _lock:
        for cls, originals in _patched.items():
            for name, fn in originals.items():
                setattr(cls, name, fn)
        _patched.clear()


def is_patched() -> bool:
    return bool(_patched)


def _mirror(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(_busy, "on", False):
            return original(self, *args, **kwargs)
        _busy.on = True
        try:
            if name == "add_figure":     # before TensorBoard renders and closes the figure
                figure_args = dict(kwargs, close=False)
                _shadow(self, create=True).add_figure(*args[:3], **figure_args)
                return original(self, *args, **kwargs)
            result = original(self, *args, **kwargs)
            shadow = _shadow(self, create=name not in ("flush", "close"))
            if shadow is not None:
                getattr(shadow, name)(*args, **kwargs)
            return result
        finally:
            _busy.on = False
    return method


def _shadow(writer: Any, create: bool) -> Any:
    """The expman writer mirroring ``writer``, made on its first logging call."""
    shadow = writer.__dict__.get(_ATTR)
    if shadow is not None or not create:
        return shadow
    from expman.layout import base_dir
    from expman.tensorboard import SummaryWriter
    get = getattr(writer, "get_logdir", None)         # torch; tensorboardX keeps .logdir
    log_dir = Path(os.path.abspath(get() if callable(get) else writer.logdir))
    experiment = _settings.get("experiment") or log_dir.parent.name or "tensorboard"
    root = base_dir(_settings.get("base_dir"))
    shadow = SummaryWriter(root / experiment / log_dir.name, **_settings.get("kwargs", {}))
    writer.__dict__[_ATTR] = shadow
    return shadow
