"""Rows of a seq-ordered table whose gfn lies in a range, without scanning the table.

Why: the per-change analyses (consequences, the zap ledger, the what-if) ask, for every memslot
delete or move, which installs, faults or SPTE changes touched the slot's gfns. A mask over the
whole table per change made them quadratic in trace length: on four copies of the benchmark
recording (6 M events, 384 deletes) they took 14 of 22 seconds. Sorting the gfns once makes
each question cost the rows in the range.
"""

from __future__ import annotations

import numpy as np


class GfnIndex:
    """The rows of one table (in its order, which is seq order) grouped by gfn."""

    def __init__(self, gfn: np.ndarray) -> None:
        self._order = np.argsort(gfn, kind="stable")
        self._sorted = np.asarray(gfn)[self._order]

    def rows_in(self, lo: int, hi: int) -> np.ndarray:
        """Indices, ascending (so in seq order), of the rows with ``lo <= gfn < hi``."""
        a, b = np.searchsorted(self._sorted, np.asarray([lo, hi], dtype=self._sorted.dtype))
        return np.sort(self._order[a:b])
