"""Interpreter settings for the bulk paths (the consumer's loop, ``tillflow load``).

Both allocate a few small objects per record, most of which live for a batch:
with CPython's default thresholds the cyclic garbage collector runs every 700
allocations and keeps re-scanning the batch in hand, about a third of the
consumer's decoding time. Their objects form no cycles, so collecting far less
often costs nothing in memory; it is still collected, never disabled.
"""
from __future__ import annotations

import contextlib
import gc
import sys
from collections.abc import Iterator

GC_THRESHOLDS = (100_000, 50, 100)


@contextlib.contextmanager
def bulk_mode(*, switch_interval: float | None = None) -> Iterator[None]:
    """Raise the collector's thresholds (and optionally shorten the GIL switch interval) for the block."""
    thresholds = gc.get_threshold()
    interval = sys.getswitchinterval()
    gc.set_threshold(*(max(a, b) for a, b in zip(GC_THRESHOLDS, thresholds)))
    if switch_interval is not None:
        sys.setswitchinterval(min(interval, switch_interval))
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        sys.setswitchinterval(interval)
