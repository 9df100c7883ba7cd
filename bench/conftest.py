"""Shared fixtures for the pytest-benchmark suites in bench/ (not part of `pytest`'s default run).

    pytest bench/ --benchmark-only            # or: -p no:randomly, --benchmark-json=...

Timings are reported by pytest-benchmark, never asserted.
"""

from __future__ import annotations

import gc

import pytest


@pytest.fixture
def no_gc():
    """The cyclic GC off for the measurement (pytest-benchmark's disable_gc covers
    only the timed rounds; this also covers the warm-up)."""
    was = gc.isenabled()
    gc.disable()
    yield
    if was:
        gc.enable()
