"""System metrics, sampled off the hot path by a daemon thread.

Every ``interval`` seconds (``Experiment(system_metrics=10.0)`` by default;
``False`` or ``0`` turns it off) the sampler records into ``system/...`` series:

- this process: ``system/proc/cpu_percent`` (100 = one core), ``system/proc/rss_bytes``
  (the process plus its children, so DataLoader workers count), ``system/proc/threads``;
- this host, sampled by local rank 0 only (``LOCAL_RANK`` unset or ``0``):
  ``system/cpu_percent``, ``system/mem_used_bytes``, ``system/mem_percent``,
  disk and network rates ``system/disk_{read,write}_bytes_per_s`` and
  ``system/net_{sent,recv}_bytes_per_s``, and per GPU (when ``nvidia-ml-py`` is
  importable and a GPU is present) ``system/gpu{i}/util_percent``,
  ``.../mem_used_bytes``, ``.../mem_percent``, ``.../power_watts``, ``.../temp_c``.

Why a side channel: the samples must never advance the user's ``step=None``
counter, so they go through ``Core._log_side(metrics, step)``, which logs a row
with an explicit step and leaves the counter alone. The step of a system series
is its sample index (0, 1, 2, ...); its time axis is the record's wall-clock time.

psutil is the ``[system]`` extra. Without it the run gets one warning event
saying so and the sampler stays off. The thread holds only a weak reference to
the run, so an unclosed Experiment can still be collected.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from typing import Any, Callable, Protocol

__all__ = ["DEFAULT_INTERVAL", "SystemSampler", "start_for", "stop", "interval_from_option"]

DEFAULT_INTERVAL = 10.0
MIN_INTERVAL = 0.01
PREFIX = "system/"
INSTALL_HINT = "pip install 'expman-logger[system]'"


class Sink(Protocol):
    """What the sampler logs into: an Experiment, or a test double. It also needs
    ``_log_side(metrics, step)``, checked at start (cores before it lack it)."""

    def warn(self, msg: object) -> None: ...


def interval_from_option(value: object) -> float | None:
    """The sampling interval for ``system_metrics=``: seconds, or None when off."""
    from expman.errors import ExpmanTypeError, ExpmanValueError
    if value is False or value is None:
        return None
    if value is True:
        return DEFAULT_INTERVAL
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ExpmanTypeError(f"system_metrics must be seconds (a number) or False, "
                              f"got {type(value).__name__} ({value!r})")
    if value == 0:
        return None
    if not (value >= MIN_INTERVAL and value < float("inf")):
        raise ExpmanValueError(f"system_metrics must be 0/False (off) or at least "
                               f"{MIN_INTERVAL} s, got {value!r}")
    return float(value)


def samples_node() -> bool:
    """Node-wide metrics once per host: on local rank 0, or outside a launcher."""
    local = os.environ.get("LOCAL_RANK", "").strip()
    return local in ("", "0")


class _Gpus:
    """NVML handles, or nothing when nvidia-ml-py or a GPU is missing."""

    def __init__(self) -> None:
        self.nvml: Any = None
        self.handles: list[Any] = []
        try:
            import pynvml  # type: ignore[import-not-found,unused-ignore]
            pynvml.nvmlInit()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i)
                            for i in range(pynvml.nvmlDeviceGetCount())]
            self.nvml = pynvml
        except Exception:      # not installed, no driver, no GPU: no GPU series
            self.handles = []

    def sample(self, out: dict[str, float]) -> None:
        nv = self.nvml
        for i, h in enumerate(self.handles):
            p = f"{PREFIX}gpu{i}/"
            fields: list[tuple[str, Callable[[], float]]] = [
                ("util_percent", lambda: nv.nvmlDeviceGetUtilizationRates(h).gpu),
                ("mem_used_bytes", lambda: nv.nvmlDeviceGetMemoryInfo(h).used),
                ("mem_percent", lambda: 100.0 * nv.nvmlDeviceGetMemoryInfo(h).used
                 / max(nv.nvmlDeviceGetMemoryInfo(h).total, 1)),
                ("power_watts", lambda: nv.nvmlDeviceGetPowerUsage(h) / 1000.0),
                ("temp_c", lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
            ]
            for name, read in fields:
                try:
                    out[p + name] = float(read())
                except Exception:   # a field this GPU does not report
                    pass

    def close(self) -> None:
        if self.nvml is not None:
            try:
                self.nvml.nvmlShutdown()
            except Exception:
                pass
            self.nvml = None


class SystemSampler:
    """Reads process and host counters; ``sample()`` gives one row of ``system/...``.

    Rates are per second since the previous sample (the first sample's base is
    taken at construction).
    """

    def __init__(self, psutil: Any, *, node: bool | None = None, gpus: bool = True) -> None:
        self.psutil = psutil
        self.node = samples_node() if node is None else node
        self.proc = psutil.Process()
        self.prime()
        self.index = 0
        self._last_t = time.monotonic()
        self._last_io = self._io_counters()
        self.gpus = _Gpus() if (self.node and gpus) else None

    def prime(self) -> None:
        """Start the CPU clocks the next ``sample()`` measures from: psutil's first
        ``cpu_percent`` call only primes (it returns 0.0), and psutil keeps the
        node-wide base per calling thread, so the thread that samples primes too."""
        self.proc.cpu_percent(None)
        if self.node:
            self.psutil.cpu_percent(None)

    def _io_counters(self) -> tuple[float, float, float, float] | None:
        if not self.node:
            return None
        disk = net = None
        try:
            disk = self.psutil.disk_io_counters()
        except Exception:
            pass
        try:
            net = self.psutil.net_io_counters()
        except Exception:
            pass
        return (float(disk.read_bytes) if disk else float("nan"),
                float(disk.write_bytes) if disk else float("nan"),
                float(net.bytes_sent) if net else float("nan"),
                float(net.bytes_recv) if net else float("nan"))

    def sample(self) -> dict[str, float]:
        ps = self.psutil
        out: dict[str, float] = {}
        try:
            with self.proc.oneshot():
                out[PREFIX + "proc/cpu_percent"] = float(self.proc.cpu_percent(None))
                rss = self.proc.memory_info().rss
                out[PREFIX + "proc/threads"] = float(self.proc.num_threads())
            for child in self.proc.children(recursive=True):
                try:
                    rss += child.memory_info().rss
                except (ps.NoSuchProcess, ps.AccessDenied):
                    pass                    # gone between listing and reading
            out[PREFIX + "proc/rss_bytes"] = float(rss)
        except (ps.NoSuchProcess, ps.AccessDenied):
            pass
        if self.node:
            out[PREFIX + "cpu_percent"] = float(ps.cpu_percent(None))
            vm = ps.virtual_memory()
            out[PREFIX + "mem_used_bytes"] = float(vm.total - vm.available)
            out[PREFIX + "mem_percent"] = float(vm.percent)
            now, io = time.monotonic(), self._io_counters()
            dt = max(now - self._last_t, 1e-6)
            if io is not None and self._last_io is not None:
                for name, new, old in zip(
                        ("disk_read_bytes_per_s", "disk_write_bytes_per_s",
                         "net_sent_bytes_per_s", "net_recv_bytes_per_s"), io, self._last_io):
                    if new == new and old == old:         # counter present both times
                        out[PREFIX + name] = max(new - old, 0.0) / dt
            self._last_t, self._last_io = now, io
            if self.gpus is not None:
                self.gpus.sample(out)
        return out

    def close(self) -> None:
        if self.gpus is not None:
            self.gpus.close()


class SamplerThread:
    """The daemon thread: sample, ``sink._log_side(row, step=index)``, wait, repeat."""

    def __init__(self, sink: Sink, interval: float, sampler: SystemSampler) -> None:
        self._sink = weakref.ref(sink)
        self.interval = interval
        self.sampler = sampler
        self.samples = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="expman-sysmetrics", daemon=True)

    def start(self) -> "SamplerThread":
        self.thread.start()
        return self

    def _loop(self) -> None:
        try:
            self.sampler.prime()                  # in this thread: the first sample is real
            while not self._stop.wait(self.interval):
                sink = self._sink()
                if sink is None:
                    return                        # the run was collected
                row = self.sampler.sample()
                if row:
                    getattr(sink, "_log_side")(row, step=self.samples)
                    self.samples += 1
                del sink
        except Exception as e:    # the run closed under us, or a counter failed: stop quietly
            self.error = e
        finally:
            self.sampler.close()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop and join (never from the sampler's own thread, which cannot join itself)."""
        self._stop.set()
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(timeout)


def start_for(sink: Sink, option: object) -> SamplerThread | None:
    """Start sampling for a run per its ``system_metrics=`` option; None when off.

    ``None`` is the default: every DEFAULT_INTERVAL seconds when psutil is
    installed, quietly off when it is not. Asked for explicitly without psutil,
    the run is told (a warning event) and nothing starts.
    """
    explicit = option is not None
    interval = DEFAULT_INTERVAL if option is None else interval_from_option(option)
    if interval is None:
        return None
    if not hasattr(sink, "_log_side"):
        # a core without the side channel: logging through log_metrics would
        # advance the user's step counter, so no sampling at all
        return None
    try:
        import psutil  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        if explicit:
            sink.warn(f"system metrics are off: psutil is not installed ({INSTALL_HINT})")
        return None
    return SamplerThread(sink, interval, SystemSampler(psutil)).start()


def stop(sampler: SamplerThread | None, timeout: float = 5.0) -> None:
    if sampler is not None:
        sampler.stop(timeout)
