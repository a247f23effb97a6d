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

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import DTypeLike

from kvmtrace.parsers.spilled import releasing

#: Keys a segment of a :class:`KeyCarry` holds before it is cut in two (a put copies only the
#: segments its new keys fall in).
SEGMENT = 1 << 16


@dataclass(frozen=True)
class Found:
    """Where :meth:`KeyCarry.find` placed each of its keys: the segment, the place in it, and
    whether the key is carried there."""

    segment: np.ndarray
    at: np.ndarray
    seen: np.ndarray

    def spans(self) -> Iterator[tuple[int, int, int]]:
        """``(segment, lo, hi)``: the keys ``lo..hi`` that fall in one segment (keys ascending,
        so each segment's are consecutive)."""
        if not len(self.segment):
            return
        cut = (np.flatnonzero(self.segment[1:] != self.segment[:-1]) + 1).tolist()
        for lo, hi in zip([0, *cut], [*cut, len(self.segment)]):
            yield int(self.segment[lo]), lo, hi


class KeyCarry:
    """Named values per 64-bit key (an address), carried from one block of rows to the next.

    The keys are kept sorted in segments of up to two :data:`SEGMENT` keys, each with its values,
    so a block finds its keys with binary searches and a new key copies one segment. Why
    segments: one sorted array per column was copied whole by every block's new keys, and the
    copy sat on top of the carry (8 bytes a key, with 3.85 M SPTE addresses carried at 54 M
    events, at the shadow settling's peak), with the allocator's heap fragmented by the growing
    copies."""

    def __init__(self, **columns: DTypeLike) -> None:
        self.dtypes = {name: np.dtype(dtype) for name, dtype in columns.items()}
        self._keys: list[np.ndarray] = []
        self._values: list[dict[str, np.ndarray]] = []
        self._firsts = np.empty(0, np.uint64)  # each segment's first key

    def __len__(self) -> int:
        return sum(len(k) for k in self._keys)

    def find(self, keys: np.ndarray) -> Found:
        """For distinct ascending ``keys``: each one's place among the carried keys, and whether
        it is carried (then :meth:`get` reads its values)."""
        segment = np.searchsorted(self._firsts, keys, side="right")
        segment -= 1
        segment.clip(0, out=segment)
        found = Found(segment, np.zeros(len(keys), np.int64), np.zeros(len(keys), bool))
        if not self._keys:
            return found
        for s, lo, hi in found.spans():
            carried, asked = self._keys[s], keys[lo:hi]
            at = np.searchsorted(carried, asked)
            seen = at < len(carried)
            seen[seen] = carried[at[seen]] == asked[seen]
            found.at[lo:hi], found.seen[lo:hi] = at, seen
        return found

    def get(self, found: Found, name: str) -> np.ndarray:
        """The carried ``name`` of the keys :meth:`find` found carried (``found.seen``), in their order."""
        parts = [np.empty(0, self.dtypes[name])]
        for s, lo, hi in found.spans():
            seen = found.seen[lo:hi]
            if seen.any():
                parts.append(self._values[s][name][found.at[lo:hi][seen]])
        return np.concatenate(parts)

    def put(self, keys: np.ndarray, found: Found, **values: np.ndarray) -> None:
        """Carry ``values`` for ``keys`` (as :meth:`find` placed them), replacing what was carried."""
        if not self._keys:
            for lo in range(0, len(keys), SEGMENT):
                self._keys.append(np.array(keys[lo:lo + SEGMENT], np.uint64))
                self._values.append({name: np.array(values[name][lo:lo + SEGMENT], dtype)
                                     for name, dtype in self.dtypes.items()})
        else:
            for s, lo, hi in reversed(list(found.spans())):  # from the last: a cut segment moves only later ones
                seen, at = found.seen[lo:hi], found.at[lo:hi]
                carried = self._values[s]
                for name, value in values.items():
                    carried[name][at[seen]] = value[lo:hi][seen]
                if seen.all():
                    continue
                new = at[~seen]
                for name, value in values.items():
                    carried[name] = np.insert(carried[name], new, value[lo:hi][~seen])
                self._keys[s] = np.insert(self._keys[s], new, keys[lo:hi][~seen])
                if len(self._keys[s]) > 2 * SEGMENT:
                    self._cut(s)
        self._firsts = np.asarray([k[0] for k in self._keys], np.uint64)

    def _cut(self, s: int) -> None:
        """Segment ``s`` as segments of :data:`SEGMENT` keys (copies: a view would keep the whole)."""
        keys, values = self._keys[s], self._values[s]
        cuts = range(0, len(keys), SEGMENT)
        self._keys[s:s + 1] = [keys[lo:lo + SEGMENT].copy() for lo in cuts]
        self._values[s:s + 1] = [{name: v[lo:lo + SEGMENT].copy() for name, v in values.items()} for lo in cuts]


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
        found = last.find(key)
        prev[rows[head][found.seen]] = last.get(found, "row")
        last.put(key, found, row=rows[np.r_[~same, True]])
        before = prev[rows]
        linked = before >= 0
        nxt[before[linked]] = rows[linked]
    return Neighbours(prev, nxt)
