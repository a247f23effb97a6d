"""What was alive at each of many moments, in one pass over time.

Why: the zap ledger, the shadow snapshots and the SPTE owners ask "which pages or SPTEs were
alive at this memslot change?" once per change. A mask over every row per change made them
quadratic in trace length; here the moments are taken in time order and only the rows still
alive are kept between them, so each moment costs the live set, not the trace.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from kvmtrace.parsers.spilled import kept
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
    out.seal("the live sets of this replay")
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
    out.seal("the live sets of this replay")
    return out


class LiveSets(Mapping[int, np.ndarray]):
    """Sorted live sets by time, each stored as a keyframe (a full set) or as the rows it adds to
    and the positions it removes from the last keyframe; rebuilt on lookup.

    Why: every one of these sets was held at once, and on a long trace they were the largest
    thing the replay kept (the shadow snapshots of 17 000 memslot changes of a 51 M-event
    recording: 269 MiB), though consecutive sets differ by a few rows. A new keyframe is taken
    when the difference passes half the keyframe, so a lookup costs about one set's size, and
    under steady drift the differences hold about a quarter of the sets' rows; the recording's
    churn comes back to the same sets, and they hold a twentieth (long-10m: 0.60 M of 12.9 M).

    Once every set is added, :meth:`seal` joins the keyframes and differences into one array kept
    as :func:`~kvmtrace.parsers.spilled.kept` keeps arrays (on disk when long), with the pieces'
    bounds as offsets: held as one small array each, they were ~100 bytes of array header a
    difference on top of their rows (46 MiB at 54 M events, from the settling to the report's end)."""

    def __init__(self, labels: np.ndarray | None = None):
        self._labels = labels
        #: the keyframes, then each set's added rows and removed positions; joined by :meth:`seal`
        self._pieces: list[np.ndarray] = []
        self._last_frame = -1  # the last keyframe's piece
        self._times: list[int] = []
        self._frame_of: list[int] = []  # per set, its keyframe's piece
        self._diff_of: list[int] = []  # per set, its added rows' piece (its removed positions' is next); -1: none
        self._sealed: _Sealed | None = None

    def add(self, t: int, rows: np.ndarray) -> None:
        """Record the sorted set ``rows`` at ``t`` (times are added in increasing order)."""
        if self._sealed is not None:
            raise ValueError("LiveSets.add: the sets are sealed")
        if self._times and t <= self._times[-1]:
            raise ValueError(f"LiveSets.add: time {t} is not after {self._times[-1]}")
        if self._last_frame >= 0:
            frame = self._pieces[self._last_frame]
            pos = np.searchsorted(rows, frame).clip(max=max(len(rows) - 1, 0))
            kept = (rows[pos] == frame) if len(rows) else np.zeros(len(frame), bool)
            back = np.searchsorted(frame, rows).clip(max=max(len(frame) - 1, 0))
            new = rows[frame[back] != rows] if len(frame) else rows
            removed = np.flatnonzero(~kept)
            if len(new) + len(removed) <= len(frame) // 2:
                self._times.append(t)
                self._frame_of.append(self._last_frame)
                self._diff_of.append(len(self._pieces))
                self._pieces += [new, removed.astype(rows.dtype, copy=False)]
                return
        self._last_frame = len(self._pieces)
        self._pieces.append(rows)
        self._times.append(t)
        self._frame_of.append(self._last_frame)
        self._diff_of.append(-1)

    def seal(self, what: str) -> None:
        """No set is added from now on: the pieces are joined into one array, kept as
        :func:`~kvmtrace.parsers.spilled.kept` keeps arrays (``what`` names them for its errors)."""
        if self._sealed is not None:
            return
        dtype = self._pieces[0].dtype if self._pieces else np.dtype(np.int32)
        cuts = np.cumsum([0, *(len(p) for p in self._pieces)], dtype=np.int64)
        rows = np.concatenate(self._pieces) if self._pieces else np.empty(0, dtype)
        self._sealed = _Sealed(kept({"rows": rows}, what)["rows"], cuts, np.asarray(self._times, np.int64),
                               np.asarray(self._frame_of, np.int64), np.asarray(self._diff_of, np.int64))
        self._pieces, self._times, self._frame_of, self._diff_of = [], [], [], []

    def __getitem__(self, t: int) -> np.ndarray:
        if self._sealed is None:
            i = bisect.bisect_left(self._times, t)
            if i == len(self._times) or self._times[i] != t:
                raise KeyError(t)
            frame, diff = self._frame_of[i], self._diff_of[i]
        else:
            i = int(np.searchsorted(self._sealed.times, t))
            if i == len(self._sealed.times) or self._sealed.times[i] != t:
                raise KeyError(t)
            frame, diff = int(self._sealed.frame_of[i]), int(self._sealed.diff_of[i])
        rows = self._piece(frame)
        if diff >= 0:
            new, removed = self._piece(diff), self._piece(diff + 1)
            if len(removed):
                rows = np.delete(rows, removed)
            if len(new):
                rows = np.sort(np.concatenate((rows, new)))
        return rows if self._labels is None else self._labels[rows]

    def _piece(self, k: int) -> np.ndarray:
        if self._sealed is None:
            return self._pieces[k]
        return self._sealed.rows[self._sealed.cuts[k]:self._sealed.cuts[k + 1]]

    @property
    def held(self) -> int:
        """Rows held in all: the keyframes' and the differences'."""
        return len(self._sealed.rows) if self._sealed is not None else sum(len(p) for p in self._pieces)

    def __iter__(self) -> Iterator[int]:
        return iter(self._sealed.times.tolist() if self._sealed is not None else list(self._times))

    def __len__(self) -> int:
        return len(self._sealed.times) if self._sealed is not None else len(self._times)


@dataclass(frozen=True)
class _Sealed:
    """A sealed :class:`LiveSets`: every piece in ``rows``, piece ``k`` at ``cuts[k]:cuts[k + 1]``;
    per set (by ascending time), its keyframe's piece and its difference's (-1: none)."""

    rows: np.ndarray
    cuts: np.ndarray
    times: np.ndarray
    frame_of: np.ndarray
    diff_of: np.ndarray
