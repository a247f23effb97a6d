"""Giving freed memory back to the system after a large step.

A read's window columns are numpy arrays of a few MB, which glibc serves from its heap; once a
column is joined (by Arrow, from its own allocator) they are freed, but glibc keeps freed heap
memory for reuse by itself, and nothing of its heap is reused by Arrow. Joined column by column,
the read's resident memory would still grow by everything it let go (about 0.6 GB beside a
10 M-event trace). ``malloc_trim`` returns the free pages of the heap, so the join costs one
column. Arrow's own allocator (mimalloc or jemalloc) likewise keeps what a step freed (the
replay's sorted and filtered copies of its largest tables: 90 MiB at 51 M events) until told to
give it back. Elsewhere (another C library) the heap part does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

import pyarrow as pa


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Return the free pages of the C heap (glibc) and of Arrow's allocator to the system."""
    pa.default_memory_pool().release_unused()
    if _TRIM is not None:
        _TRIM(0)
