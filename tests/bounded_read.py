"""Reading a trace.dat the way the hostile-input and fuzz tests need it: warnings collected,
errors caught, and the read's peak Python allocation measured (tracemalloc), so a test can
bound what a damaged or malicious file makes the reader allocate."""

from __future__ import annotations

import tracemalloc
import warnings
from pathlib import Path

from kvmtrace.parsers.errors import TraceError, TraceWarning
from kvmtrace.parsers.schema import TraceData
from kvmtrace.parsers.tracedat import read_tracedat


def read_bounded(path: Path) -> tuple[TraceData | None, list[str], int, TraceError | None]:
    """Read ``path`` under tracemalloc: (data or None, warnings, peak bytes, error or None)."""
    tracemalloc.start()
    data = err = None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TraceWarning)
            try:
                data = read_tracedat(path)
            except TraceError as e:
                err = e
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return data, [str(w.message) for w in caught], peak, err
