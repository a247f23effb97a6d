"""Distinct values and per-row codes of an integer column, without sorting the rows.

Used to look up per-pid comms, per-id event names and per-address printk formats once per
distinct value: a trace has millions of rows but only a handful of pids and event ids. For a
narrow value range (pids, event ids) a presence table indexed by value does it in O(n); wide
ranges (kernel addresses) fall back to ``np.unique``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa

from kvmtrace.parsers.tracedat.arrow import numeric, strings

#: Largest value range handled with a presence table (a 16 M-entry bool + int32 table).
_TABLE_RANGE = 1 << 24


def factorize(values: np.ndarray) -> tuple[list[int], np.ndarray]:
    """Return (distinct values ascending, int32 code of each row into them)."""
    uniques, (codes,) = factorize_chunks([values])
    return uniques, codes


def factorize_chunks(chunks: Sequence[np.ndarray]) -> tuple[list[int], list[np.ndarray]]:
    """:func:`factorize` over the chunks of one column: the distinct values of all of them, and
    each chunk's codes into that one list (so that the chunks share one dictionary)."""
    filled = [c for c in chunks if len(c)]
    if not filled:
        return [], [np.empty(0, np.int32) for _ in chunks]
    lo, hi = min(int(c.min()) for c in filled), max(int(c.max()) for c in filled)
    if hi - lo < _TABLE_RANGE:
        present = np.zeros(hi - lo + 1, bool)
        for c in filled:
            present[(c - c.dtype.type(lo)).astype(np.int64)] = True
        code_of = np.cumsum(present, dtype=np.int32) - 1
        codes = [code_of[(c - c.dtype.type(lo)).astype(np.int64)] for c in chunks]
        return [v + lo for v in np.flatnonzero(present).tolist()], codes
    uniques = np.unique(np.concatenate([np.unique(c) for c in filled]))
    return uniques.tolist(), [np.searchsorted(uniques, c).astype(np.int32) for c in chunks]


def lookup(values: np.ndarray, name_of: Callable[[int], str]) -> pa.Array:
    """``name_of(v)`` for every row, computed once per distinct value, as a string array."""
    uniques, codes = factorize(values)
    return strings([name_of(v) for v in uniques]).take(numeric(codes))
