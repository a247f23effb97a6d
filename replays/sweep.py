"""What was alive at each of many moments, in one pass over time.

Why: the zap ledger, the shadow snapshots and the SPTE owners ask "which pages or SPTEs were
alive at this memslot change?" once per change. A mask over every row per change made them
quadratic in trace length; here the moments are taken in time order and only the rows still
alive are kept between them, so each moment costs the live set, not the trace.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

import numpy as np

from kvmtrace.replays import stream


def alive_at(begin: np.ndarray, end: np.ndarray, times: Iterable[int],
             labels: np.ndarray | None = None) -> LiveSets:
    """For each time ``t``: the rows (ascending) with ``begin[row] < t <= end[row]``, or their
    ``labels`` (``labels[rows]``, for rows that index a subset of a larger table).

    Rows are int32 when they fit. The sets are held as :class:`LiveSets` (each as its difference
    from a recent full set): a long trace asks about thousands of moments whose live sets share
    most of their rows."""
    begin = np.asarray(begin)
    if len(begin) < 2 or bool(np.all(begin[1:] >= begin[:-1])):
        # rows already in time order (installs, SPTE changes): no sort, no sorted copy of every row
        return alive_in_order(len(begin), lambda lo, hi: (begin[lo:hi], end[lo:hi]), times, labels)
    index: type[np.signedinteger] = np.int32 if len(begin) < 2**31 else np.int64
    order = np.argsort(begin, kind="stable").astype(index, copy=False)
    first = begin[order]
    out = LiveSets(labels)
    active = np.empty(0, dtype=index)
    added = 0
    for t in sorted(set(times)):
        k = int(np.searchsorted(first, t, side="left"))  # these began before t
        if k > added:
            active = np.concatenate((active, order[added:k]))
            added = k
        active = active[end[active] >= t]
        out.add(t, np.sort(active))
    return out


def alive_in_order(n: int, spans: Callable[[int, int], tuple[np.ndarray, np.ndarray]], times: Iterable[int],
                   labels: np.ndarray | None = None) -> LiveSets:
    """:func:`alive_at` of ``n`` rows in begin order whose ``(begin, end)`` ``spans(lo, hi)``
    gives for rows ``lo..hi``, asked :data:`~kvmtrace.replays.stream.ROW_BLOCK` rows at a time as the
    sweep reaches them (a block out of order is an error).

    Why: only the live rows and their ends are held, with one block of the rest; the shadow
    MMU's installs made whole arrays of their times first (16 bytes an install, ~100 MiB at the
    settling's peak at 52 M events)."""
    index: type[np.signedinteger] = np.int32 if n < 2**31 else np.int64
    out = LiveSets(labels)
    active, active_end = np.empty(0, dtype=index), np.empty(0, np.int64)
    added = block_lo = 0
    begin = end = np.empty(0, np.int64)  # the block of rows block_lo.. the sweep is in
    for t in sorted(set(times)):
        while True:
            if added == block_lo + len(begin):  # the block is all added: the next one
                if added >= n:
                    break
                last = begin[-1] if len(begin) else None
                block_lo = added
                begin, end = spans(added, min(added + stream.ROW_BLOCK, n))
                if bool(np.any(begin[1:] < begin[:-1])) or (last is not None and begin[0] < last):
                    raise ValueError("alive_in_order: the rows are not in begin order")
            k = block_lo + int(np.searchsorted(begin, t, side="left"))  # rows below k began before t
            if k > added:
                active = np.concatenate((active, np.arange(added, k, dtype=index)))
                active_end = np.concatenate((active_end, end[added - block_lo:k - block_lo]))
                added = k
            if added < block_lo + len(begin):  # the block's next row begins at t or later
                break
        alive = active_end >= t
        active, active_end = active[alive], active_end[alive]
        out.add(t, active)
    return out


class LiveSets(Mapping[int, np.ndarray]):
    """Sorted live sets by time, each stored as a keyframe (a full set) or as the rows it adds to
    and the positions it removes from the last keyframe; rebuilt on lookup.

    Why: every one of these sets was held at once, and on a long trace they were the largest
    thing the replay kept (the shadow snapshots of 17 000 memslot changes of a 51 M-event
    recording: 269 MiB), though consecutive sets differ by a few rows. A new keyframe is taken
    when the difference passes half the keyframe, so a lookup costs about one set's size, and
    under steady drift the differences hold about a quarter of the sets' rows; the recording's
    churn comes back to the same sets, and they hold a twentieth (long-10m: 0.60 M of 12.9 M)."""

    def __init__(self, labels: np.ndarray | None = None):
        self._labels = labels
        self._frames: list[np.ndarray] = []
        #: time -> (keyframe index, rows added to it, positions in it removed)
        self._sets: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}

    def add(self, t: int, rows: np.ndarray) -> None:
        """Record the sorted set ``rows`` at ``t`` (times are added in increasing order)."""
        if self._frames:
            frame = self._frames[-1]
            pos = np.searchsorted(rows, frame).clip(max=max(len(rows) - 1, 0))
            kept = (rows[pos] == frame) if len(rows) else np.zeros(len(frame), bool)
            back = np.searchsorted(frame, rows).clip(max=max(len(frame) - 1, 0))
            new = rows[frame[back] != rows] if len(frame) else rows
            removed = np.flatnonzero(~kept)
            if len(new) + len(removed) <= len(frame) // 2:
                self._sets[t] = (len(self._frames) - 1, new, removed.astype(rows.dtype, copy=False))
                return
        self._frames.append(rows)
        self._sets[t] = (len(self._frames) - 1, rows[:0], rows[:0])

    def __getitem__(self, t: int) -> np.ndarray:
        i, new, removed = self._sets[t]
        rows = self._frames[i]
        if len(removed):
            rows = np.delete(rows, removed)
        if len(new):
            rows = np.sort(np.concatenate((rows, new)))
        return rows if self._labels is None else self._labels[rows]

    @property
    def held(self) -> int:
        """Rows held in all: the keyframes' and the differences'."""
        return sum(len(f) for f in self._frames) + sum(len(a) + len(r) for _, a, r in self._sets.values())

    def __iter__(self) -> Iterator[int]:
        return iter(self._sets)

    def __len__(self) -> int:
        return len(self._sets)
