"""What the replay reads from every event of a trace, gathered a window at a time.

Most of a long trace's events are the guest page-table walker's (35 M of the 56 M events of the
lab's long recording) and every event has a row in the ``events`` table, yet the replay asks
those rows only a few questions, each answered by a scan in ``seq`` order with a little state
carried per thread or CPU:

- for each ``print`` row (a memslot line), the seq of its thread's last walker event before it:
  the memslot update window starts after the thread's last non-zap kvmmmu event
  (:func:`kvmtrace.replays.memslots.from_prints`), and walker events are never zaps;
- how many ``kvm_mmu_spte_requested`` faults followed a guest page-table walk on their thread
  (the shadow-paging sign of :func:`kvmtrace.replays.classify.detect_mmu`);
- for each lost-event gap, its CPU's last event before it, and each CPU's last event
  (:class:`kvmtrace.replays.findings.LostWindows`);
- how many walker events there are (they count as kvmmmu events explained without a model step);
- which thread is which vCPU (``kvm_entry``'s vcpu_id) and which vendor's exits these are
  (``kvm_exit``'s isa): a recording with ``-e kvm`` is mostly these two events.

All but the last is read from each window's ``events`` table (seq, pid, CPU, event name) and
gaps; the last from the two events' tables, which a windowed read decodes for the digest only. So
a trace read in windows keeps only the tables the replay and report read in full
(:mod:`kvmtrace.replays.needs`), and :class:`DigestBuilder` sees every window once. A trace in
memory is cut into the same windows (:func:`digest_of`): both paths answer through one code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from kvmtrace.parsers.schema import TraceData
from kvmtrace.replays.needs import DIGESTED_EVENTS, FAULT_EVENT, PRINT_EVENT, WALK_EVENTS
from kvmtrace.replays.stream import numpy_column
from kvmtrace.replays.threads import entry_pairs

#: The gap side of a window that no record followed (a CPU's stream ended in lost events).
END = np.iinfo(np.int64).max
#: Events per window of :func:`digest_of` (as a long trace.dat's windowed read).
WINDOW = 1 << 21
#: Pids below this (all of Linux's: pid_max is at most 2^22) are coded through a lookup table.
_PID_TABLE = 1 << 23

_WALK, _FAULT, _PRINT = 0, 1, 2


@dataclass
class Digest:
    """The answers (module docstring). Seqs are the trace's; -1 means "none"."""

    walker_events: int = 0
    #: ``print`` seqs (ascending) and, for each, its thread's last walker event before it
    print_seq: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    walk_before_print: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    faults: int = 0
    faults_after_walks: int = 0
    #: per lost-event gap: its CPU's last event before it (``lo``) and the first seq after it
    #: (``hi``; END where no record followed)
    gap_lo: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    gap_hi: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    #: CPU -> its last event's seq; ``events``: every event seen
    cpu_last: dict[int, int] = field(default_factory=dict)
    events: int = 0
    #: the distinct (pid, vcpu_id) of ``kvm_entry`` and ``isa`` values of ``kvm_exit``
    #: (:data:`kvmtrace.replays.needs.DIGESTED_EVENTS`: a ``-e kvm`` recording is mostly these two)
    entry_pairs: set[tuple[int, int | None]] = field(default_factory=set)
    exit_isas: set[int] = field(default_factory=set)

    def walked_before(self, print_seq: int) -> int:
        """The seq of the last walker event of ``print_seq``'s thread before it (-1: none)."""
        i = int(np.searchsorted(self.print_seq, print_seq))
        if i < len(self.print_seq) and self.print_seq[i] == print_seq:
            return int(self.walk_before_print[i])
        return -1


class DigestBuilder:
    """Builds a :class:`Digest` from windows given in seq order, carrying per thread its last
    walker event and whether its last walk-or-fault was a walk, and per CPU its last event."""

    def __init__(self) -> None:
        self.digest = Digest()
        self._last_walk: dict[int, int] = {}  # pid -> seq of its last walker event
        self._walked: dict[int, bool] = {}  # pid -> its last walk-or-fault was a walk
        self._prints: list[tuple[np.ndarray, np.ndarray]] = []
        self._gaps: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, window: TraceData) -> None:
        self._exits(window.tables.get("kvm_entry"), window.tables.get("kvm_exit"))
        ev_seq = numpy_column(window.events, "seq", np.int64)
        self._threads(ev_seq, numpy_column(window.events, "pid", np.int32), _kinds(window.events))
        self._cpus(ev_seq, numpy_column(window.events, "cpu", np.int16), window.gaps)

    def _threads(self, seq: np.ndarray, pid: np.ndarray, kind: np.ndarray) -> None:
        """The walks, faults and prints of one window (its events in seq order), by thread."""
        at = np.flatnonzero(kind >= 0)
        seq, pid, kind = seq[at], pid[at], kind[at]
        self.digest.walker_events += int(np.count_nonzero(kind == _WALK))
        if not len(seq):
            return
        order = np.argsort(_small_codes(pid), kind="stable")  # rows are in seq order: now (thread, seq)
        seq, pid, kind = seq[order], pid[order], kind[order]
        del order
        starts = np.flatnonzero(np.r_[True, pid[1:] != pid[:-1]])
        group = np.cumsum(np.r_[False, pid[1:] != pid[:-1]])
        carried = np.array([self._last_walk.get(p, -1) for p in pid[starts].tolist()], np.int64)
        # each row's thread's last walk up to it: a running maximum that restarts at each thread
        # (offset by thread so that one thread's walks never reach the next one's rows)
        span = int(seq.max()) + 2
        walk_key = np.where(kind == _WALK, seq, -1) + group * span
        last_walk = np.maximum.accumulate(np.maximum(walk_key, carried[group] + group * span)) - group * span
        printed = kind == _PRINT
        if printed.any():
            self._prints.append((seq[printed], last_walk[printed]))
        ends = np.r_[starts[1:], len(seq)] - 1
        for p, w in zip(pid[starts].tolist(), last_walk[ends].tolist()):
            if w >= 0:
                self._last_walk[p] = w
        self._faults_after_walks(pid, kind)

    def _faults_after_walks(self, pid: np.ndarray, kind: np.ndarray) -> None:
        """Count faults whose thread's previous walk-or-fault (prints aside) was a walk."""
        keep = kind != _PRINT
        pid, walk = pid[keep], kind[keep] == _WALK
        if not len(pid):
            return
        first = np.r_[True, pid[1:] != pid[:-1]]
        prev_walk = np.r_[False, walk[:-1]]
        starts = np.flatnonzero(first)
        prev_walk[starts] = [self._walked.get(p, False) for p in pid[starts].tolist()]
        fault = ~walk
        self.digest.faults += int(fault.sum())
        self.digest.faults_after_walks += int((fault & prev_walk).sum())
        ends = np.r_[starts[1:], len(pid)] - 1
        for p, w in zip(pid[starts].tolist(), walk[ends].tolist()):
            self._walked[p] = bool(w)

    def _exits(self, entry: pa.Table | None, exit_: pa.Table | None) -> None:
        """The threads' vCPU ids (:mod:`kvmtrace.replays.threads`) and the exits' vendor
        (:mod:`kvmtrace.replays.leaf_proof`), the only things read of these two events."""
        self.digest.entry_pairs.update(entry_pairs(entry))
        if exit_ is not None and exit_.num_rows and "isa" in exit_.column_names:
            self.digest.exit_isas.update(np.unique(numpy_column(exit_, "isa", np.int64)).tolist())

    def _cpus(self, ev_seq: np.ndarray, ev_cpu: np.ndarray, gaps: pa.Table) -> None:
        """Each gap's CPU's last event before it, and each CPU's last event so far."""
        d = self.digest
        d.events += len(ev_seq)
        if gaps is not None and gaps.num_rows:
            g_cpu = numpy_column(gaps, "cpu", np.int64)
            g_seq = gaps.column("seq").fill_null(END).to_numpy().astype(np.int64)
            lo = np.full(len(g_seq), -1, np.int64)
            for cpu in np.unique(g_cpu).tolist():
                mine = ev_seq[ev_cpu == cpu]  # events are in seq order, so each CPU's seqs are sorted
                sel = g_cpu == cpu
                i = np.searchsorted(mine, g_seq[sel]) - 1  # the CPU's last event before the gap
                before = d.cpu_last.get(cpu, -1)
                lo[sel] = np.where(i >= 0, mine[i.clip(0)] if len(mine) else before, before)
            self._gaps.append((lo, g_seq))
        if len(ev_seq):
            order = np.argsort(ev_cpu, kind="stable")  # int16: a radix sort; each CPU's rows in seq order
            by_cpu = ev_cpu[order]
            ends = np.flatnonzero(np.r_[by_cpu[1:] != by_cpu[:-1], True])
            for cpu, s in zip(by_cpu[ends].tolist(), ev_seq[order[ends]].tolist()):
                d.cpu_last[cpu] = s

    def finish(self) -> Digest:
        d = self.digest
        if self._prints:
            d.print_seq = np.concatenate([s for s, _ in self._prints])
            d.walk_before_print = np.concatenate([w for _, w in self._prints])
            order = np.argsort(d.print_seq, kind="stable")
            d.print_seq, d.walk_before_print = d.print_seq[order], d.walk_before_print[order]
        if self._gaps:
            d.gap_lo = np.concatenate([lo for lo, _ in self._gaps])
            d.gap_hi = np.concatenate([hi for _, hi in self._gaps])
        self._prints, self._gaps = [], []
        return d


def _small_codes(values: np.ndarray) -> np.ndarray:
    """Codes of ``values`` in the order of their distinct values, as uint16 where there are few
    (a window's threads), so that a stable sort on them is a radix sort."""
    lo, hi = int(values.min()), int(values.max())
    if lo >= 0 and hi < _PID_TABLE:
        present = np.zeros(hi + 1, bool)
        present[values] = True
        distinct = np.flatnonzero(present)
        if len(distinct) < 1 << 16:
            table = np.zeros(hi + 1, np.uint16)
            table[distinct] = np.arange(len(distinct), dtype=np.uint16)
            coded: np.ndarray = table[values]
            return coded
    codes: np.ndarray = np.unique(values, return_inverse=True)[1]
    return codes


def _kinds(events: pa.Table) -> np.ndarray:
    """Each event's kind for the digest (walk, fault, print; -1 for the others), read from the
    ``events`` table's names (a code per distinct name, not a string per row)."""
    kinds = {**dict.fromkeys(WALK_EVENTS, _WALK), FAULT_EVENT: _FAULT, PRINT_EVENT: _PRINT}
    column = events.column("event")
    if not pa.types.is_dictionary(column.type):
        column = column.dictionary_encode()
    parts = []
    for chunk in column.chunks:
        kind_of = np.array([kinds.get(name, -1) for name in chunk.dictionary.to_pylist()] or [-1], np.int8)
        parts.append(kind_of[chunk.indices.to_numpy(zero_copy_only=False)])
    return np.concatenate(parts) if parts else np.empty(0, np.int8)


def digest_of(data: TraceData, events_per_window: int = WINDOW) -> Digest:
    """The digest of a trace held in memory, taken a seq range at a time (the same windows a
    windowed read gives), so that its merges hold one window's arrays, not the trace's."""
    b = DigestBuilder()
    seqs = {name: numpy_column(data.tables[name], "seq", np.int64) for name in DIGESTED_EVENTS if name in data.tables}
    ev_seq = numpy_column(data.events, "seq", np.int64)
    gap_seq = data.gaps.column("seq").fill_null(END).to_numpy().astype(np.int64) if data.gaps.num_rows \
        else np.empty(0, np.int64)
    last = int(ev_seq[-1]) + 1 if len(ev_seq) else 0
    for lo in range(0, max(last, 1), events_per_window):
        hi = lo + events_per_window if lo + events_per_window < last else END  # the last takes the open gaps
        in_window = (gap_seq >= lo) & ((gap_seq < hi) | (hi == END))
        b.add(TraceData(info=data.info, events=_rows(data.events, ev_seq, lo, hi),
                        tables={name: _rows(data.tables[name], seqs[name], lo, hi) for name in seqs},
                        gaps=data.gaps.filter(pa.array(in_window)) if len(gap_seq) else data.gaps))
    return b.finish()


def _rows(table: pa.Table, seq: np.ndarray, lo: int, hi: int) -> pa.Table:
    """The rows of a table in seq order with ``lo <= seq < hi`` (a slice: no copy)."""
    a, z = np.searchsorted(seq, [lo, hi])
    return table.slice(int(a), int(z - a))
