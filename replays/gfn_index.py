"""Rows of a seq-ordered table in a seq window whose gfn lies in a range, without scanning the table.

Why: the per-change analyses (consequences, the zap ledger, the what-if, the report's fault
table) ask, for every memslot delete or move, which installs, faults or SPTE changes touched
the slot's gfns in some window of the trace. A mask over the whole table per change made them
quadratic in trace length (14 of 22 s on a 6 M-event trace with 384 deletes), and an index on
gfn alone was not enough: a slot that is deleted and re-created over and over (the lab's
``multi``; QEMU's VGA and ROM slots) has most of the trace's faults in its range.

So the rows are cut into blocks of consecutive rows (time), and each block is sorted by gfn:
one sorted array of ``block << 52 | gfn`` (x86 gfns are below 2**52). A question costs one
binary search per block of its window plus the rows it returns.

:class:`FirstInstall` answers the narrower question the consequences and the leaf proofs both
ask: the first install of a given leaf (gfn and level) after a seq.
"""

from __future__ import annotations

import numpy as np

from kvmtrace.parsers.spilled import KeptParts, releasing
from kvmtrace.replays.neighbours import KeyCarry

#: x86 guest-physical addresses have at most 52 bits, so gfns fit in 40: 12 bits name the block.
_GFN_BITS = 52
_MAX_BLOCKS = 1 << (64 - _GFN_BITS)
_MIN_BLOCK = 1 << 12
#: Rows an index sorts at a time (whole blocks).
SLAB = 1 << 20


class GfnIndex:
    """The rows of one table (in its order, which is seq order) by time block and gfn."""

    def __init__(self, gfn: np.ndarray, seq: np.ndarray) -> None:
        n = len(gfn)
        self.seq = np.asarray(seq)
        self.gfn = np.asarray(gfn, dtype=np.uint64)
        self.block = max(_MIN_BLOCK, -(-n // _MAX_BLOCKS))
        self.blocks = -(-n // self.block)
        # sorted a slab of whole time blocks at a time (the blocks are the keys' high bits, so the
        # slabs' orders follow each other), the order int32 where rows allow, on disk as it comes
        # when long: the whole at once was ~36 bytes a row in passing (the faults' index, +170
        # MiB at the consequences' peak on a 52 M-event churn recording)
        index = np.int32 if n < 2**31 else np.int64
        parts = KeptParts("a gfn index of this replay")
        # a damaged or hand-made input may carry values no gfn can have: kept aside (found a slab
        # at a time too), checked one by one
        wides: list[np.ndarray] = [np.empty(0, np.int64)]
        step = max(1, SLAB // self.block) * self.block
        for lo in releasing(range(0, n, step), every=1):
            gfn = self.gfn[lo:lo + step]
            composite = np.arange(lo, lo + len(gfn), dtype=np.uint64)
            composite //= np.uint64(self.block)
            composite <<= np.uint64(_GFN_BITS)
            wide = (gfn >> np.uint64(_GFN_BITS)) != 0
            # a wide value's row is left out of the order below: its key is its block's alone
            composite[~wide] |= gfn[~wide]
            order = np.argsort(composite, kind="stable")
            if wide.any():
                wides.append(np.flatnonzero(wide) + lo)
                order = order[~wide[order]]
            parts.append({"order": (order + lo).astype(index), "sorted": composite[order]})
        self._wide = np.concatenate(wides)
        held = parts.arrays() or {"order": np.empty(0, index), "sorted": np.empty(0, np.uint64)}
        self._order, self._sorted = held["order"], held["sorted"]

    def _rows(self, first: int, last: int, lo: int, hi: int) -> np.ndarray:
        """Rows of blocks ``first..last`` (inclusive) with ``lo <= gfn < hi``, block by block
        (then the wide values, in any block)."""
        wide = None
        if len(self._wide):
            w = self._wide[(self._wide >= first * self.block) & (self._wide < (last + 1) * self.block)]
            wide = w[(self.gfn[w] >= np.uint64(max(lo, 0))) & (self.gfn[w] < np.uint64(min(hi, (1 << 64) - 1)))]
        lo, hi = max(lo, 0), min(hi, 1 << _GFN_BITS)
        rows: np.ndarray = np.empty(0, np.int64)
        if lo < hi:
            b = np.arange(first, last + 1, dtype=np.uint64) << np.uint64(_GFN_BITS)
            starts = np.searchsorted(self._sorted, b + np.uint64(lo))
            ends = np.searchsorted(self._sorted, b + np.uint64(hi))  # hi may be 2**52: the next block
            counts = ends - starts
            total = int(counts.sum())
            if total:
                # the positions starts[i]..ends[i]-1 of every block, as one array
                rows = self._order[np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(total)]
        return rows if wide is None or not len(wide) else np.concatenate((rows, wide))

    def rows_in(self, lo: int, hi: int, since: int | None = None, until: int | None = None) -> np.ndarray:
        """Rows (ascending, so in seq order) with ``lo <= gfn < hi`` and ``since <= seq < until``."""
        a = 0 if since is None else int(np.searchsorted(self.seq, since, side="left"))
        z = len(self.seq) if until is None else int(np.searchsorted(self.seq, until, side="left"))
        if a >= z:
            return np.empty(0, np.int64)
        rows = self._rows(a // self.block, (z - 1) // self.block, lo, hi)
        return np.sort(rows[(rows >= a) & (rows < z)])

    def first_in(self, lo: int, hi: int, since: int, keep: np.ndarray | None = None) -> int | None:
        """The first row with ``lo <= gfn < hi`` and ``seq >= since`` (and ``keep[row]``), or None.
        Blocks are read in growing batches from ``since``, so a row found soon costs little."""
        a = int(np.searchsorted(self.seq, since, side="left"))
        if a >= len(self.seq):
            return None
        first, batch = a // self.block, 1
        while first < self.blocks:
            last = min(first + batch - 1, self.blocks - 1)
            rows = self._rows(first, last, lo, hi)
            rows = rows[rows >= a]
            if keep is not None:
                rows = rows[keep[rows]]
            if len(rows):
                return int(rows.min())
            first, batch = last + 1, 2 * batch
        return None


def leaf_keys(gfn: np.ndarray, level: np.ndarray) -> np.ndarray:
    """One integer per (gfn, level): gfns are below 2**52, levels below 16."""
    return (gfn.astype(np.uint64) << np.uint64(4)) | level.astype(np.uint64)


class FirstInstall:
    """The first install of given leaves (gfn, level) after a seq, by binary search.

    The installs (in seq order) are cut into slabs of :data:`SLAB` rows; per slab, its distinct
    leaves (sorted) and its rows sorted by (leaf rank in the slab, row) as one integer
    ``rank * SLAB + offset``. A question searches the slab of its seq and the ones after it
    until each leaf asked for is found; a leaf installed last before the seq (each leaf's last
    install is kept, one row per distinct leaf) is not looked for, or the question would read
    every later slab for it. Why slabs: the index made by one sort of every install's leaf held
    its keys, order and ranks at once, ~33 bytes an install (+220 MiB in passing at 52 M events,
    the consequences' peak); a slab's are a slab's."""

    def __init__(self, ins: dict[str, np.ndarray]) -> None:
        self.seq = ins["seq"]
        self.n = len(self.seq)
        self.slab = SLAB
        rows, leaves = KeptParts("an install index of this replay"), KeptParts("an install index of this replay")
        counts = [0]
        self.last = KeyCarry(row=np.int64)  # each leaf's last install
        for lo in releasing(range(0, self.n, self.slab), every=1):
            keys = leaf_keys(ins["gfn"][lo:lo + self.slab], ins["level"][lo:lo + self.slab])
            order = np.argsort(keys, kind="stable")
            keys = keys[order]
            first = np.ones(len(keys), bool)
            first[1:] = keys[1:] != keys[:-1]
            self.last.put(keys[first], self.last.find(keys[first]), row=lo + order[np.r_[first[1:], True]])
            leaves.append({"leaf": keys[first]})
            counts.append(int(first.sum()))
            rank = np.cumsum(first, dtype=np.int64)
            rank -= 1
            rank *= self.slab
            rank += order
            rows.append({"sorted": rank})
        #: where each slab's distinct leaves start in :attr:`leaves`
        self.bounds = np.cumsum(counts)
        self.leaves = (leaves.arrays() or {"leaf": np.empty(0, np.uint64)})["leaf"]
        # held through the consequences and the leaf proofs, read a few rows per question
        self.sorted = (rows.arrays() or {"sorted": np.empty(0, np.int64)})["sorted"]

    def after(self, seq: int, leaves: np.ndarray) -> np.ndarray:
        """Rows (ascending) of the first install after ``seq`` of each of ``leaves`` that has one."""
        if not self.n or not len(leaves):
            return np.empty(0, np.int64)
        left = np.unique(leaves)
        since = int(np.searchsorted(self.seq, seq, side="right"))
        carried = self.last.find(left)
        seen = carried.seen
        seen[seen] = self.last.get(carried, "row") >= since  # installed again after the seq
        left = left[seen]
        found: list[np.ndarray] = [np.empty(0, np.int64)]
        for s in range(since // self.slab, len(self.bounds) - 1):
            if not len(left):
                break
            lo = s * self.slab
            slab_leaves = self.leaves[self.bounds[s]:self.bounds[s + 1]]
            at = np.searchsorted(slab_leaves, left).clip(0, len(slab_leaves) - 1)
            here = slab_leaves[at] == left
            rank = at[here].astype(np.int64)
            composite = self.sorted[lo:lo + self.slab]
            pos = np.searchsorted(composite, rank * self.slab + max(since - lo, 0))
            inside = pos < len(composite)
            got = composite[pos[inside]]
            hit = got // self.slab == rank[inside]
            found.append(lo + got[hit] % self.slab)
            answered = np.flatnonzero(here)[np.flatnonzero(inside)[hit]]
            left = np.delete(left, answered)
        return np.sort(np.concatenate(found))
