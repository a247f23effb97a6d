"""Questions about every event's seq, time and thread, answered in passes over the ``events``
table a chunk at a time.

Why: placing a QEMU log's lines (:mod:`kvmtrace.replays.placement`) asks where each thread's
events lie, what the trace clock read at a few hundred seqs and which events fall in a time
window. Holding seq, time and pid of every event for that was 24 bytes an event, and it made an
analysis with a QEMU log read every event of the trace (several GB at 50 M events). Each
question here is one pass over the ``events`` table (:meth:`TraceData.event_chunks`: on disk
for a read for the analysis, read back a chunk at a time), answering a batch of queries, so
memory holds one chunk and the answers.

Times are the running maximum of the timestamps in seq order, as placement compares them: a
trace's clock may step back across CPUs, and a line's time window must cover a seq range.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kvmtrace.parsers.schema import TraceData
from kvmtrace.replays.stream import numpy_column

INF = np.iinfo(np.int64).max


@dataclass(frozen=True)
class Span:
    """The first and last seq of the trace, and every thread (pid) that has an event."""

    first: int
    last: int
    pids: frozenset[int]


class EventPasses:
    """Batched questions about the ``events`` table of ``data`` (see the module docstring)."""

    def __init__(self, data: TraceData):
        self.data = data

    def _chunks(self, columns: tuple[str, ...] = ("seq", "ts", "pid"),
                names: frozenset[str] = frozenset()) -> Iterator[dict[str, np.ndarray]]:
        """Each chunk's columns, ``ts`` as the running maximum from the trace's start; with
        ``names``, ``named``: whether each event is one of them."""
        top = np.iinfo(np.int64).min
        for t in self.data.event_chunks():
            if not t.num_rows:
                continue
            out = {c: numpy_column(t, c, np.int64) for c in columns}
            if "ts" in out:
                out["ts"] = np.maximum(np.maximum.accumulate(out["ts"]), top)
                top = int(out["ts"][-1])
            if names:
                event = t.column("event")
                if pa.types.is_dictionary(event.type):
                    event = pc.cast(event, event.type.value_type)
                out["named"] = pc.is_in(event, pa.array(sorted(names), event.type)).to_numpy(zero_copy_only=False)
            yield out
        self.data.release_pages()  # a pass's pages of a table kept on disk

    @cached_property
    def span(self) -> Span:
        first, last, pids = INF, -1, set()
        for c in self._chunks(("seq", "pid")):
            first, last = min(first, int(c["seq"][0])), int(c["seq"][-1])
            pids.update(np.unique(c["pid"]).tolist())
        return Span(first if last >= 0 else -1, last, frozenset(pids))

    def ts_at(self, seqs: np.ndarray) -> np.ndarray:
        """The running time at the first event whose seq is at or after each of ``seqs`` (the
        trace's last time past its end)."""
        seqs = np.asarray(seqs, np.int64)
        out = np.zeros(len(seqs), np.int64)
        order = np.argsort(seqs, kind="stable")
        q = seqs[order]
        done = last = 0
        for c in self._chunks(("seq", "ts")):
            upto = int(np.searchsorted(q, c["seq"][-1], "right"))
            if upto > done:
                out[order[done:upto]] = c["ts"][np.searchsorted(c["seq"], q[done:upto])]
                done = upto
            last = int(c["ts"][-1])
        if done < len(q):
            out[order[done:]] = last
        return out

    def ranks(self, pid: int, seqs: np.ndarray) -> np.ndarray:
        """How many events of thread ``pid`` come before each of ``seqs``."""
        seqs = np.asarray(seqs, np.int64)
        out = np.zeros(len(seqs), np.int64)
        order = np.argsort(seqs, kind="stable")
        q = seqs[order]
        base = done = 0
        for c in self._chunks(("seq", "pid")):
            own = c["seq"][c["pid"] == pid]
            upto = int(np.searchsorted(q, c["seq"][-1], "right"))
            if upto > done:
                out[order[done:upto]] = base + np.searchsorted(own, q[done:upto])
                done = upto
            base += len(own)
        out[order[done:]] = base
        return out

    def next_of(self, pid: int, seqs: np.ndarray) -> np.ndarray:
        """The seq of thread ``pid``'s first event after each of ``seqs`` (-1: none)."""
        seqs = np.asarray(seqs, np.int64)
        out = np.full(len(seqs), -1, np.int64)
        order = np.argsort(seqs, kind="stable")
        q = seqs[order]
        done = 0
        for c in self._chunks(("seq", "pid")):
            own = c["seq"][c["pid"] == pid]
            if not len(own):
                continue
            upto = int(np.searchsorted(q, own[-1], "left"))  # queries before the chunk's last own event
            if upto > done:
                out[order[done:upto]] = own[np.searchsorted(own, q[done:upto], "right")]
                done = upto
        return out

    def last_of(self, pid: int, names: Iterable[str], before: np.ndarray) -> np.ndarray:
        """The seq of thread ``pid``'s last event named one of ``names`` before each of ``before``
        (-1: none)."""
        before = np.asarray(before, np.int64)
        out = np.full(len(before), -1, np.int64)
        for c in self._chunks(("seq", "pid"), frozenset(names)):
            own = c["seq"][(c["pid"] == pid) & c["named"]]
            if not len(own):
                continue
            pos = np.searchsorted(own, before) - 1
            found = pos >= 0
            out[found] = own[pos[found]]  # later chunks hold later events
        return out

    def time_bounds(self, t0: np.ndarray, t1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per window ``[t0, t1]``: the seq of the last event whose running time is below
        ``t0`` (-1: none), and of the first whose running time is above ``t1`` (INF: none)."""
        t0, t1 = np.asarray(t0, np.float64), np.asarray(t1, np.float64)
        below = np.full(len(t0), -1, np.int64)
        above = np.full(len(t1), INF, np.int64)
        for c in self._chunks(("seq", "ts")):
            ts = c["ts"]
            i = np.searchsorted(ts, t0) - 1
            below[i >= 0] = c["seq"][i[i >= 0]]  # the running time only grows: later chunks win
            j = np.searchsorted(ts, t1, "right")
            new = (j < len(ts)) & (above == INF)
            above[new] = c["seq"][j[new]]
        return below, above

