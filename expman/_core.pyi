"""Type stubs for expman's compiled core (``expman/_core.pyx``). Private: import from ``expman``.

Keep in step with the .pyx: ``tests/test_typing.py`` runs mypy's stubtest on
the built module when mypy is installed.
"""

import os
from array import array
from typing import Any, Callable, Final, TypeAlias

from typing_extensions import Buffer, disjoint_base

from expman.errors import WriterError

FORMAT_VERSION: Final[int]
HEADER_SIZE: Final[int]

# metric name -> (steps 'q', times 'd' in seconds, values 'd'), in logged order
_Columns: TypeAlias = dict[str, tuple[array[int], array[float], array[float]]]

def file_header() -> bytes: ...
def crc32(data: Buffer, crc: int = 0) -> int: ...
def loss_record(rows: int, events: int, errors: int, last_errno: int = 0,
                wall_ns: int = 0) -> bytes: ...
def decode_metrics(
    data: Buffer, offset: int = 0, keys: dict[int, str] | None = None, salvage: bool = False
) -> tuple[_Columns, dict[int, str], dict[str, Any]]: ...
def decimate_minmax(x: Buffer, y: Buffer, pixels: int) -> array[int]: ...

@disjoint_base
class Core:
    """The hot half of an Experiment: key table, ring producer, writer thread."""

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None: ...
    def _log_at(self, metrics: dict[str, Any], step: int | None, time_us: int) -> None: ...
    def _log_side(self, metrics: dict[str, Any], step: int) -> None: ...
    def flush(self, timeout: float | None = None) -> bool: ...
    def stats(self) -> dict[str, int]: ...
    @property
    def last_step(self) -> int | None: ...
    # private: used by expman.experiment and the tests
    def _start(
        self,
        fd_metrics: int,
        metrics_size: int,
        fd_events: int,
        events_size: int,
        *,
        metrics_path: str | os.PathLike[str],
        buffer_size: int,
        flush_interval: float,
        heartbeat_interval: float,
        on_full: str,
        on_error: str,
        block_timeout: float,
        keys: dict[str, int] | None = None,
        last_step: int | None = None,
        seq_base: int = 0,
        fsync_interval: float | None = None,
        loss_fd: int = -1,
        loss_base: tuple[int, int, int] = (0, 0, 0),
    ) -> None: ...
    def _log_event(self, event: dict[str, Any]) -> None: ...
    def _stop(self, timeout: float | None = None) -> bool: ...
    def _after_fork_child(self) -> None: ...
    def _pending_error(self) -> WriterError | None: ...
    def _owner_pid(self) -> Any: ...
    def _summary(
        self,
    ) -> tuple[int, dict[str, tuple[int, int, int, int, int, float, float, float, float]],
               int] | None: ...
    def _set_last_step(self, step: int) -> None: ...
    def _set_fault(self, write_every: int = 0, fsync_every: int = 0, err: int = 0) -> None: ...
    def _native_watch(
        self, rules: list[tuple[Any, ...]], match: Callable[[str], tuple[bool, list[int]]]
    ) -> None: ...
    def _native_watch_take(
        self,
    ) -> tuple[list[tuple[int, str, int, float, float, float, int, float]], list[int],
               list[float], int]: ...
