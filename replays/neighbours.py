"""Per row of a table in time order, the previous and the next row with the same key, and the
carry that makes such questions a block of rows at a time.

Why: the shadow settling asks, for every ``kvm_mmu_set_spte``, which install came before it at
the same ``sptep`` (its old value) and which one comes next (its overwrite), and which page owns
each SPTE page's installs. One stable sort of every install's key answered these, but held the
order, the sorted keys and their masks at once: ~30 bytes an install at the settling's peak, the
largest step of a 100 M-event recording. Here the rows are taken a block at a time, in order, and
what each key's last row left is carried from block to block (:class:`KeyCarry`): one entry per
distinct key (a VM's SPTE addresses are reused as its page tables are freed and built again, so
it stays small).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import DTypeLike

from kvmtrace.parsers.spilled import releasing


class KeyCarry:
    """Named values per 64-bit key (an address), carried from one block of rows to the next.
    The keys are kept sorted, so a block finds its keys with one binary search."""

    def __init__(self, **columns: DTypeLike) -> None:
        self.keys = np.empty(0, np.uint64)
        self.values = {name: np.empty(0, dtype) for name, dtype in columns.items()}

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For distinct ascending ``keys``: each one's place among the carried keys, and whether
        it is carried (then ``values[name][at[seen]]`` are its values)."""
        at = np.searchsorted(self.keys, keys)
        seen = at < len(self.keys)
        seen[seen] = self.keys[at[seen]] == keys[seen]
        return at, seen

    def put(self, keys: np.ndarray, at: np.ndarray, seen: np.ndarray, **values: np.ndarray) -> None:
        """Carry ``values`` for ``keys`` (as :meth:`find` placed them), replacing what was carried."""
        new = at[~seen]
        for name, value in values.items():
            self.values[name][at[seen]] = value[seen]
            self.values[name] = np.insert(self.values[name], new, value[~seen])
        self.keys = np.insert(self.keys, new, keys[~seen])


@dataclass
class Neighbours:
    """``prev[row]`` and ``next[row]``: the previous and next row (in the rows' order) with the
    same key, -1 where there is none. int32 where the rows allow."""

    prev: np.ndarray
    next: np.ndarray


def neighbours(n: int, keys_of: Callable[[np.ndarray], np.ndarray], order: np.ndarray | None,
               block: int) -> Neighbours:
    """Neighbours of ``n`` rows by key, ``block`` rows at a time. ``keys_of(rows)`` gives the
    (uint64) keys of some rows; ``order`` is the rows' time order (None: as they are). Rows with
    equal keys are neighbours in that order."""
    index = np.int32 if n < 2**31 else np.int64
    prev = np.full(n, -1, dtype=index)
    nxt = np.full(n, -1, dtype=index)
    last = KeyCarry(row=index)  # each key's last row in the blocks so far
    # each block: the pages it read of arrays on disk, and what the allocator kept of its temporaries
    for lo in releasing(range(0, n, block), every=1):
        rows = np.arange(lo, min(n, lo + block), dtype=index) if order is None else order[lo:lo + block].astype(index)
        keys = np.asarray(keys_of(rows), dtype=np.uint64)
        by_key = np.argsort(keys, kind="stable")  # each key's rows stay in time order
        keys, rows = keys[by_key], rows[by_key]
        del by_key
        same = keys[1:] == keys[:-1]
        prev[rows[1:][same]] = rows[:-1][same]
        head = np.r_[True, ~same]  # a key's first row in the block, and below its last
        key = keys[head]
        at, seen = last.find(key)
        prev[rows[head][seen]] = last.values["row"][at[seen]]
        last.put(key, at, seen, row=rows[np.r_[~same, True]])
        before = prev[rows]
        found = before >= 0
        nxt[before[found]] = rows[found]
    return Neighbours(prev, nxt)
