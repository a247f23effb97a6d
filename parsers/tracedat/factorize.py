"""Distinct values and per-row codes of an integer column, without sorting the rows.

Used to look up per-pid comms, per-id event names and per-address printk formats once per
distinct value: a trace has millions of rows but only a handful of pids and event ids. For a
narrow value range (pids, event ids) a presence table indexed by value does it in O(n); wide
ranges (kernel addresses) fall back to ``np.unique``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa

from kvmtrace.parsers.tracedat.arrow import numeric, strings

#: Largest value range handled with a presence table (a 16 M-entry bool + int32 table).
_TABLE_RANGE = 1 << 24


def factorize(values: np.ndarray) -> tuple[list[int], np.ndarray]:
    """Return (distinct values ascending, int32 code of each row into them)."""
    if len(values) == 0:
        return [], np.empty(0, np.int32)
    lo, hi = int(values.min()), int(values.max())
    if hi - lo < _TABLE_RANGE:
        shifted = (values - values.dtype.type(lo)).astype(np.int64)
        present = np.zeros(hi - lo + 1, bool)
        present[shifted] = True
        code_of = np.cumsum(present, dtype=np.int32) - 1
        return [v + lo for v in np.flatnonzero(present).tolist()], code_of[shifted]
    uniques, codes = np.unique(values, return_inverse=True)
    return uniques.tolist(), codes.ravel().astype(np.int32)


def lookup(values: np.ndarray, name_of: Callable[[int], str]) -> pa.Array:
    """``name_of(v)`` for every row, computed once per distinct value, as a string array."""
    uniques, codes = factorize(values)
    return strings([name_of(v) for v in uniques]).take(numeric(codes))
