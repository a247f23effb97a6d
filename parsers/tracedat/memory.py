"""Giving freed memory back to the system while a read joins its windows.

A window's columns are numpy arrays of a few MB, which glibc serves from its heap; once a column
is joined (by Arrow, from its own allocator) they are freed, but glibc keeps freed heap memory
for reuse by itself, and nothing of its heap is reused by Arrow. Joined column by column, the
read's resident memory would still grow by everything it let go (about 0.6 GB beside a 10 M-event
trace). ``malloc_trim`` returns the free pages of the heap, so the join costs one column.
Elsewhere (another C library) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Return the C heap's free pages to the system (glibc), or do nothing."""
    if _TRIM is not None:
        _TRIM(0)
