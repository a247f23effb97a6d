"""The memslot timeline: which gfns were backed by which slot, when, and when that was in flux.

KVM traces nothing about memslots, but QEMU does (docs/qemu-memslot-lines.md): every
KVM_SET_USER_MEMORY_REGION is followed by a ``kvm_set_user_memory`` line, written to
``trace_marker`` (ftrace backend, so it lands in the trace as a ``print`` event) or to a ``-trace``
log, whose lines are placed on the trace by the kernel's response to each (:mod:`placement`). A
layout file (``--memslots``) is the layout at the start; the lines apply after it. Three message
formats exist (QEMU <= 7.2, 8.x, >= 9.0). A line is written *after* the ioctl,
so the kernel side of a change (the ``kvm_mmu_zap_all_fast`` of a delete, leaf zaps) comes first;
the interval from the kernel's first sign of the change to the line is the *update window*, in
which the layout is ambiguous. A delete followed by a create of an overlapping range (QEMU's way
to resize or to toggle read-only) keeps the window open until the create: the non-atomic
DELETE+CREATE of the 2022 "API to block and resume all running vcpus" thread (docs/threads.md §3).

Lab markers are hints only, never required (lab/README.md): ``kvmlab_memslot_move`` announces a
true KVM_MR_MOVE, for which QEMU would write no line at all; ``kvmlab_start ...
slot_zap_all_quirk=N`` states the zap policy of the whole trace. The kind of a change is always
told from the QEMU lines themselves, never from the lab's ``kvmlab_memslot_ioctl`` markers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from kvmtrace.parsers.errors import TraceError
from kvmtrace.replays.placement import LineChange, Placement, TraceFacts, place
from kvmtrace.replays.qemu_lines import (
    LogLine,
    SlotLine,
    parse_clear_dirty,
    parse_lab_get_dirty,
    parse_lab_move,
    parse_lab_quirk,
    parse_log_line,
    parse_set_memory,
)

KVM_MEM_LOG_DIRTY_PAGES = 0x1
KVM_MEM_READONLY = 0x2

#: The anchor of a window that starts at kernel events the change itself caused.
ANCHOR_ZAPS = "zaps of the ioctl thread"

#: Change kinds that take gfns away (and so open a window a fault can land in).
REMOVING_KINDS = frozenset({"delete", "move", "recreate"})

TIMELINE_SCHEMA = pa.schema([
    pa.field("seq", pa.int64()),  # the QEMU line (null when the source had no position)
    pa.field("window_start", pa.int64()),  # first seq at which the change may have been in effect
    pa.field("anchor", pa.string()),  # what window_start rests on
    pa.field("pid", pa.int32()),
    pa.field("as_id", pa.int16()),
    pa.field("slot", pa.int32()),  # as_id << 16 | id
    pa.field("kind", pa.string()),
    pa.field("base_gfn", pa.uint64()),
    pa.field("npages", pa.uint64()),
    pa.field("flags", pa.uint32()),
    pa.field("old_base_gfn", pa.uint64()),
    pa.field("old_npages", pa.uint64()),
    pa.field("old_flags", pa.uint32()),
    pa.field("userspace_addr", pa.uint64()),
    # where the row came from: "trace marker seq N", "QEMU log line N", "layout file slot N"
    pa.field("source", pa.string()),
    # how it was put on the trace: at its own marker, at the start (layout file), matched to the
    # kernel's response (QEMU log), or "unplaced: <why>"
    pa.field("placement", pa.string()),
    pa.field("confidence", pa.float64()),  # 1.0 for markers and the layout file; null when unplaced
])

#: Placement of the trace's own markers and of the layout file's slots.
AT_MARKER = "at its own trace_marker line"
AT_START = "start of the trace (layout file: the layout before the first event)"


@dataclass
class MemslotChange:
    """One change of the layout, with the window in which it was in flux."""

    seq: int | None
    window_start: int | None
    anchor: str
    pid: int
    as_id: int
    slot: int
    kind: str  # create | delete | move | flags | recreate | unchanged
    base_gfn: int
    npages: int
    flags: int
    old_base_gfn: int | None = None
    old_npages: int | None = None
    old_flags: int | None = None
    ua: int = 0
    source: str = ""  # where the line came from (TIMELINE_SCHEMA)
    window_end: int | None = None  # last seq of the window (the line, or the re-create's line)
    placement: str = AT_MARKER
    confidence: float | None = 1.0


@dataclass
class Lifetime:
    """A slot's gfn range while it was certainly in place: [from_seq, until_seq)."""

    as_id: int
    slot: int
    base_gfn: int
    npages: int
    flags: int
    from_seq: int
    until_seq: int  # exclusive; the start of the removing change's window, or +inf
    ua: int = 0  # userspace address of base_gfn (maps MMU-notifier hva ranges to gfns)


@dataclass
class MemslotTimeline:
    """Everything the replay knows about memslots, with the seqs it is anchored at."""

    changes: list[MemslotChange] = field(default_factory=list)
    lifetimes: list[Lifetime] = field(default_factory=list)
    clear_dirty: list[tuple[int, int, int, int]] = field(default_factory=list)  # seq, slot, first gfn, npages
    get_dirty: list[tuple[int, int]] = field(default_factory=list)  # seq, slot
    known_from: int | None = None  # seq from which the layout is known (None: never)
    complete: bool = False  # True: gfns outside every slot are known to be unmapped
    quirk_hint: int | None = None  # kvmlab_start slot_zap_all_quirk=N
    source: str = "none"
    notes: list[str] = field(default_factory=list)

    @property
    def known(self) -> bool:
        return self.known_from is not None

    # -- vectorised queries ----------------------------------------------------------------------
    def lifetime_at(self, gfn: np.ndarray, seq: np.ndarray, as_id: np.ndarray | None = None) -> np.ndarray:
        """Index into ``lifetimes`` of the slot that certainly covered each (gfn, seq), or -1
        (:meth:`lifetime_spans`, for rows asked at once)."""
        return self.lifetime_spans().at(gfn, seq, as_id)

    def lifetime_spans(self) -> Spans:
        """The lifetimes as :class:`Spans` answering their index, for a caller that asks a block of
        rows at a time."""
        lts = self.lifetimes
        return Spans(np.asarray([lt.from_seq for lt in lts], np.int64),
                     np.asarray([lt.until_seq for lt in lts], np.int64) - 1,  # until_seq is exclusive
                     tuple(((lt.base_gfn, lt.npages),) for lt in lts), np.arange(len(lts), dtype=np.int64),
                     np.asarray([lt.as_id for lt in lts], np.int64))

    def slot_at(self, gfn: np.ndarray, seq: np.ndarray, as_id: np.ndarray | None = None) -> np.ndarray:
        """Slot (as<<16|id) that certainly covered each (gfn, seq), or -1."""
        idx = self.lifetime_at(gfn, seq, as_id)
        slots = np.asarray([lt.slot for lt in self.lifetimes] + [-1], dtype=np.int64)
        out: np.ndarray = slots[idx]
        return out

    def window_of(self, gfn: np.ndarray, seq: np.ndarray, kinds: frozenset[str] | None = None,
                  positioned: bool = False, certain: bool = False) -> np.ndarray:
        """Index into ``changes`` of an update window containing (gfn, seq) and touching gfn, or -1
        (:meth:`window_spans`, for rows asked at once)."""
        return self.window_spans(kinds, positioned, certain).at(gfn, seq)

    def window_spans(self, kinds: frozenset[str] | None = None, positioned: bool = False,
                     certain: bool = False) -> Spans:
        """The update windows as :class:`Spans` answering their change's index.

        ``positioned`` leaves out changes whose position is unknown (QEMU logs), whose windows
        span the whole trace. ``certain`` keeps only the part of each window in which the change
        was surely under way: from the kernel's zaps if it left some, else from the line."""
        # A later change with the same window and ranges takes every row an earlier one would:
        # only the last of each is applied (a QEMU log's unplaced lines all span the whole trace,
        # and 8 500 of them over one range took 25 s).
        last: dict[tuple[int, int, tuple[tuple[int, int], ...]], int] = {}
        for k, c in enumerate(self.changes):
            if c.window_start is None or c.window_end is None or (kinds is not None and c.kind not in kinds):
                continue
            if positioned and c.seq is None:
                continue
            start = c.window_start if not certain or c.anchor == ANCHOR_ZAPS else c.seq
            if start is None:
                continue
            ranges = tuple((base, n) for base, n in ((c.base_gfn, c.npages), (c.old_base_gfn, c.old_npages))
                           if base is not None and n)
            key = (start, c.window_end, ranges)
            last.pop(key, None)
            last[key] = k  # in change order, each key at its last change
        return Spans(np.asarray([start for start, _e, _r in last], np.int64),
                     np.asarray([end for _s, end, _r in last], np.int64),
                     tuple(ranges for _s, _e, ranges in last), np.asarray(list(last.values()), np.int64))

    def hva_to_gfns(self, seqs: list[int], starts: list[int], ends: list[int]) -> list[list[tuple[int, int]]]:
        """For each MMU-notifier event (``seqs[e]``, ``starts[e]``, ``ends[e]``): the gfn ranges
        [lo, hi) backed by host addresses [start, end) at its seq, in lifetime order.

        One sweep over the events in seq order, holding the lifetimes live at each: a pass over
        every lifetime per event made this quadratic in trace length (18 s for the 17 000 unmaps
        of a 106 M-event trace against its 17 000 lifetimes)."""
        mapped = sorted((lt.from_seq, k) for k, lt in enumerate(self.lifetimes) if lt.ua)
        out: list[list[tuple[int, int]]] = [[] for _ in seqs]
        live: list[int] = []
        taken = 0
        for e in sorted(range(len(seqs)), key=seqs.__getitem__):
            seq = seqs[e]
            while taken < len(mapped) and mapped[taken][0] <= seq:
                live.append(mapped[taken][1])
                taken += 1
            live = sorted(k for k in live if seq < self.lifetimes[k].until_seq)
            for k in live:
                lt = self.lifetimes[k]
                lo, hi = max(starts[e], lt.ua), min(ends[e], lt.ua + (lt.npages << 12))
                if lo < hi:
                    out[e].append((lt.base_gfn + ((lo - lt.ua) >> 12), lt.base_gfn + ((hi - lt.ua + 0xFFF) >> 12)))
        return out

    def table(self) -> pa.Table:
        cols: dict[str, list[Any]] = {f.name: [] for f in TIMELINE_SCHEMA}
        for c in self.changes:
            row = dict(seq=c.seq, window_start=c.window_start, anchor=c.anchor, pid=c.pid, as_id=c.as_id,
                       slot=c.slot, kind=c.kind, base_gfn=c.base_gfn, npages=c.npages, flags=c.flags,
                       old_base_gfn=c.old_base_gfn, old_npages=c.old_npages, old_flags=c.old_flags,
                       userspace_addr=c.ua, source=c.source, placement=c.placement, confidence=c.confidence)
            for k, v in row.items():
                cols[k].append(v)
        return pa.table(cols, schema=TIMELINE_SCHEMA)


@dataclass(frozen=True)
class Spans:
    """Seq intervals ``[first, last]``, each over a few gfn ranges and answering an index (a
    lifetime's, an update window's change): what :meth:`MemslotTimeline.lifetime_at` and
    :meth:`MemslotTimeline.window_of` ask of each row, made once.

    Why: a long trace's rows are asked a block at a time (:func:`kvmtrace.replays.stream.row_blocks`),
    and a visit of every interval per block made those callers quadratic in trace length (blocks
    × lifetimes: the layout checks and the memslot summary took 6× the time at 2.5× the trace);
    here a block visits only the intervals that hold some of its seqs. Each interval only looks
    at the rows inside it (a slice of the seq-sorted rows); a later interval's answer overwrites
    an earlier one's."""

    first: np.ndarray  # int64
    last: np.ndarray  # int64, inclusive
    ranges: tuple[tuple[tuple[int, int], ...], ...]  # (base gfn, npages) per interval
    answer: np.ndarray  # int64
    as_id: np.ndarray | None = None  # the address space of each interval (lifetimes)

    def at(self, gfn: np.ndarray, seq: np.ndarray, as_id: np.ndarray | None = None) -> np.ndarray:
        """The answer of the last interval holding each (gfn, seq) (in ``as_id``'s address space,
        where given), or -1."""
        out = np.full(len(gfn), -1, dtype=np.int64)
        order, sseq = _seq_order(seq)
        g = _in_order(gfn.astype(np.uint64, copy=False), order)
        a = _in_order(as_id, order) if as_id is not None and self.as_id is not None else None
        lo = np.searchsorted(sseq, self.first, side="left")
        hi = np.searchsorted(sseq, self.last, side="right")
        for s in np.flatnonzero(hi > lo).tolist():
            i, j = int(lo[s]), int(hi[s])
            touch = np.zeros(j - i, dtype=bool)
            for base, n in self.ranges[s]:
                touch |= (g[i:j] >= base) & (g[i:j] < base + n)
            if a is not None:
                assert self.as_id is not None
                touch &= a[i:j] == self.as_id[s]
            out[_rows(order, i, j, touch)] = self.answer[s]
        return out


def _seq_order(seq: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """A stable seq order (None: the input is sorted already, as a trace's columns are) and the
    sorted seqs. None rather than an identity order: with it, the other columns are read in
    place instead of copied (a 52 M-event trace's installs: 57 MiB a column)."""
    seq = np.asarray(seq, dtype=np.int64)
    if len(seq) < 2 or bool(np.all(seq[1:] >= seq[:-1])):
        return None, seq
    order = np.argsort(seq, kind="stable")
    return order, seq[order]


def _in_order(values: np.ndarray, order: np.ndarray | None) -> np.ndarray:
    return values if order is None else values[order]


def _rows(order: np.ndarray | None, i: int, j: int, mask: np.ndarray) -> np.ndarray:
    """The input rows of the sorted positions ``i:j`` where ``mask`` holds."""
    at = np.flatnonzero(mask)
    return at + i if order is None else order[i:j][at]


class _Builder:
    """Turns QEMU lines into changes and lifetimes, in order."""

    def __init__(self, source: str):
        self.tl = MemslotTimeline(source=source)
        self.live: dict[int, tuple[int, int, int, int, int]] = {}  # slot -> base_gfn, npages, flags, from_seq, ua
        self.pending_delete: dict[int, MemslotChange] = {}  # as_id -> last delete awaiting re-create

    def _close(self, slot: int, until: int) -> None:
        base, n, flags, start, ua = self.live.pop(slot)
        self.tl.lifetimes.append(Lifetime(slot >> 16, slot, base, n, flags, start, until, ua))

    def _open(self, slot: int, base: int, n: int, flags: int, start: int, ua: int) -> None:
        self.live[slot] = (base, n, flags, start, ua)

    def seed(self, slots: Sequence[SlotLine]) -> None:
        """The starting layout (a layout file): slots live from the first event on; the trace's own
        lines then apply on top of it."""
        for s in slots:
            base, n = s.gpa >> 12, s.size >> 12
            self._open(s.slot, base, n, s.flags, 0, s.ua)
            self.tl.changes.append(MemslotChange(None, None, "layout file", 0, s.as_id, s.slot, "create", base, n,
                                                 s.flags, ua=s.ua, source=f"layout file slot {s.slot}",
                                                 placement=AT_START))
        if slots:
            self.tl.known_from = 0
            self.tl.complete = True

    def add(self, line: SlotLine, window_start: int | None, anchor: str, source: str = "",
            placement: str = AT_MARKER, confidence: float | None = 1.0, opens_at: int | None = None) -> None:
        """Apply one line. ``opens_at`` is the first seq the new range certainly covers: the line's
        own seq for a marker; for a QEMU log line placed after event X, X + 1."""
        if line.ret != 0:
            self.tl.notes.append(f"{source or f'seq {line.seq}'}: kvm_set_user_memory slot {line.slot} failed "
                                 f"(ret={line.ret}); ignored")
            return
        seq = line.seq if line.seq is not None else -1
        opens = seq if opens_at is None else opens_at
        start = window_start if window_start is not None else seq
        base, n = line.gpa >> 12, line.size >> 12
        old = self.live.get(line.slot)
        if self.tl.known_from is None:
            self.tl.known_from = seq
        kind = change_kind(old[:3] if old else None, line)
        if kind == "delete":
            ob, on, of = (old[0], old[1], old[2]) if old else (base, None, None)
            if old:
                self._close(line.slot, start)
            ch = MemslotChange(line.seq, start, anchor, line.pid, line.as_id, line.slot, kind, ob, 0, 0, ob, on, of,
                               line.ua)
        elif kind == "create":
            ch = MemslotChange(line.seq, start, anchor, line.pid, line.as_id, line.slot, kind, base, n, line.flags,
                               ua=line.ua)
            self._open(line.slot, base, n, line.flags, opens, line.ua)
        else:
            assert old is not None  # flags, unchanged, move and recreate all need a live slot
            ob, on, of, _, _ = old
            self._close(line.slot, start if kind not in ("flags", "unchanged") else opens)
            self._open(line.slot, base, n, line.flags, opens, line.ua)
            ch = MemslotChange(line.seq, start, anchor, line.pid, line.as_id, line.slot, kind, base, n, line.flags,
                               ob, on, of, line.ua)
        ch.source = source or f"trace marker seq {line.seq}"
        ch.placement, ch.confidence = placement, confidence
        ch.window_end = line.seq
        # DELETE+CREATE is not atomic (docs/threads.md §3): a delete followed by a create overlapping
        # its range keeps the window open.
        prev = self.pending_delete.pop(line.as_id, None)
        if kind == "create" and prev is not None and prev.old_npages and _overlap(prev, base, n):
            prev.window_end = line.seq
        if kind == "delete":
            self.pending_delete[line.as_id] = ch
        self.tl.changes.append(ch)

    def finish(self) -> MemslotTimeline:
        for slot in list(self.live):
            self._close(slot, np.iinfo(np.int64).max)
        return self.tl


def change_kind(old: tuple[int, int, int] | None, line: SlotLine) -> str:
    """What a line does to its slot, given the slot's live (base_gfn, npages, flags) or None."""
    base, n = line.gpa >> 12, line.size >> 12
    if line.size == 0:
        return "delete"
    if old is None:
        return "create"
    ob, on, of = old
    if (ob, on, of) == (base, n, line.flags):
        return "unchanged"  # repeats the live slot (e.g. one the layout file gave): a no-op
    if (ob, on) == (base, n) and not ((of ^ line.flags) & KVM_MEM_READONLY):
        return "flags"
    if on == n and ob != base:
        return "move"
    return "recreate"  # QEMU: read-only toggle or resize is a delete + create in one line


#: memslot swaps (generation bumps) one ioctl of each kind makes: DELETE and MOVE first install an
#: invalid copy of the slot, then the final layout (kvm_set_memslot); QEMU's one-line recreate is
#: a DELETE and a CREATE; a line repeating the live slot changes nothing (no swap).
SWAPS = {"create": 1, "flags": 1, "unchanged": 0, "delete": 2, "move": 2, "recreate": 3}


def _overlap(c: MemslotChange, base: int, n: int) -> bool:
    return c.old_base_gfn is not None and c.old_base_gfn < base + n and base < c.old_base_gfn + (c.old_npages or 0)


#: What marks a ``print`` line as a memslot change (QEMU's trace line, the lab's move marker).
_LINE_MARKS = ("kvm_set_user_memory", "kvmlab_memslot_move")


def line_threads(print_table: pa.Table | None) -> frozenset[int]:
    """The threads that wrote memslot lines: a line's window (:func:`_window_start`) reads only
    its own thread's kernel events."""
    if print_table is None or not print_table.num_rows or "buf" not in print_table.column_names:
        return frozenset()
    # as from_prints tests them (a trace's marker lines are few: tens of thousands in 51 M events)
    pids, bufs = print_table.column("pid").to_pylist(), print_table.column("buf").to_pylist()
    return frozenset(pid for pid, buf in zip(pids, bufs) if buf and any(mark in buf for mark in _LINE_MARKS))


def from_prints(print_table: pa.Table | None, kvmmmu_seq: np.ndarray, kvmmmu_pid: np.ndarray,
                kvmmmu_zap: np.ndarray | None = None, start: Sequence[SlotLine] = (),
                walked: Callable[[int], int] | None = None) -> MemslotTimeline:
    """Build the timeline from ``ftrace:print`` events (``buf`` column) of the trace itself.

    ``kvmmmu_seq``/``kvmmmu_pid``/``kvmmmu_zap`` (sorted by seq; ``zap`` marks zap events) anchor
    each change's window on the kernel side, which comes before the line (see _window_start).
    ``start`` is the layout before the trace (a layout file, :func:`parse_layout`): the lines of the
    trace apply after it, so a slot the trace moves is not taken to stay where the file put it.
    ``walked``, where the kvmmmu arrays leave out the guest walker's events (never zaps), gives for
    a line's seq the seq of its thread's last walker event before it (-1: none;
    :meth:`kvmtrace.replays.digest.Digest.walked_before`).
    """
    if kvmmmu_zap is None:
        kvmmmu_zap = np.zeros(len(kvmmmu_seq), dtype=bool)
    b = _Builder("ftrace+layout" if start else "ftrace")
    b.seed(start)
    if print_table is None or print_table.num_rows == 0 or "buf" not in print_table.column_names:
        return b.finish()
    seqs = print_table.column("seq").to_pylist()
    pids = print_table.column("pid").to_pylist()
    bufs = print_table.column("buf").to_pylist()
    last_line: dict[int, int] = {}  # pid -> seq of its previous memslot line
    for seq, pid, buf in zip(seqs, pids, bufs):
        if not buf:
            continue
        if any(mark in buf for mark in _LINE_MARKS):
            line = parse_set_memory(buf, seq, pid) if "kvm_set_user_memory" in buf else parse_lab_move(buf, seq, pid)
            if line is None:
                continue
            ws, anchor = _window_start(seq, pid, last_line.get(pid), kvmmmu_seq, kvmmmu_pid, kvmmmu_zap,
                                       walked(seq) if walked is not None else -1)
            b.add(line, ws, anchor)
            last_line[pid] = seq
        elif "kvm_clear_dirty_log" in buf:
            cleared = parse_clear_dirty(buf)
            if cleared:
                b.tl.clear_dirty.append((seq, *cleared))
        elif "dirty_log" in buf and "kvmlab_" in buf:
            slot = parse_lab_get_dirty(buf)
            if slot is not None:
                b.tl.get_dirty.append((seq, slot))
        elif "kvmlab_start" in buf:
            quirk = parse_lab_quirk(buf)
            if quirk is not None:
                b.tl.quirk_hint = quirk
                b.tl.complete = True  # the lab starts its VM inside the trace: every slot is seen
    tl = b.finish()
    if tl.changes and not tl.complete:
        first = tl.changes[0]
        # QEMU creates AS 0 slot 0 first at VM start: a trace that shows it saw the whole layout.
        tl.complete = first.kind == "create" and first.slot == 0
    return tl


def _window_start(seq: int, pid: int, prev_line: int | None, kvmmmu_seq: np.ndarray, kvmmmu_pid: np.ndarray,
                  kvmmmu_zap: np.ndarray, walked: int = -1) -> tuple[int, str]:
    """Where a change may have started. The ioctl thread is inside KVM_SET_USER_MEMORY_REGION from
    some point after its previous line until this one, and emits nothing but zaps while there; a
    single-threaded VMM's thread is also a vCPU, whose last fault bounds the ioctl's start. So:
    the first of the zaps that end the thread's events before the line, else just after the
    thread's last other kernel event, else just after its previous line. ``walked``: the thread's
    last guest-walker event before the line where the arrays leave the walker's events out."""
    lo = prev_line + 1 if prev_line is not None else 0
    i, j = np.searchsorted(kvmmmu_seq, [lo, seq])
    own = i + np.flatnonzero(kvmmmu_pid[i:j] == pid)
    walk = walked if walked >= lo else -1
    if not len(own) and walk < 0:
        return lo, "previous memslot line of the same thread"
    not_zap = own[~kvmmmu_zap[own]]
    last_other = max(int(kvmmmu_seq[not_zap[-1]]) if len(not_zap) else -1, walk)
    tail = own[kvmmmu_seq[own] > last_other]
    if len(tail):
        return int(kvmmmu_seq[tail[0]]), ANCHOR_ZAPS
    return last_other + 1, "after the ioctl thread's last vCPU event"


def log_changes(lines: Sequence[LogLine], start: Sequence[SlotLine] = ()) -> list[LineChange]:
    """What each log line does (kind, swaps, gfn ranges), replaying the lines on ``start``."""
    live = {s.slot: (s.gpa >> 12, s.size >> 12, s.flags) for s in start}
    out = []
    for ln in lines:
        s = ln.line
        old = live.get(s.slot)
        kind = change_kind(old, s)
        new = (s.gpa >> 12, (s.gpa + s.size) >> 12)
        ranges = [r for r in ((old[0], old[0] + old[1]) if old else None, new if s.size else None) if r]
        removes = (old[0], old[0] + old[1]) if old and kind in REMOVING_KINDS else None
        out.append(LineChange(kind, SWAPS[kind] if (kind != "delete" or old) else 0, s.as_id, ranges, removes))
        if s.size:
            live[s.slot] = (s.gpa >> 12, s.size >> 12, s.flags)
        else:
            live.pop(s.slot, None)
    return out


def from_log(texts: Iterable[str], facts: TraceFacts, kvmmmu_seq: np.ndarray, kvmmmu_pid: np.ndarray,
             kvmmmu_zap: np.ndarray, start: Sequence[SlotLine] = (),
             left_out: frozenset[str] = frozenset()) -> MemslotTimeline:
    """Build the timeline from a QEMU ``-trace`` log, each line placed on the trace by the kernel's
    response to it (:mod:`placement`). A line that cannot be placed keeps no position: its slot is
    uncertain for the whole trace, and checks that need the position skip it.

    ``left_out``: kvmmmu events (never zaps: the guest walker's) the ``kvmmmu_*`` arrays leave
    out; a line's window then looks up its thread's last one in a pass over the trace's events."""
    texts = list(texts)
    lines = [ln for n, t in enumerate(texts, 1) if (ln := parse_log_line(t, n)) is not None]
    if not lines:
        raise TraceError("the QEMU log has no kvm_set_user_memory lines; run QEMU with -trace kvm_set_user_memory")
    failed = [ln for ln in lines if ln.line.ret != 0]
    lines = [ln for ln in lines if ln.line.ret == 0]
    changes = log_changes(lines, start)
    complete = not start and bool(lines) and changes[0].kind == "create" and lines[0].line.slot == 0
    placed, notes = place(lines, changes, facts, complete)
    b = _Builder("qemu_log")
    b.seed(start)
    b.tl.quirk_hint = next((q for t in texts if (q := parse_lab_quirk(t)) is not None), None)
    b.tl.notes.extend(notes)
    b.tl.notes.extend(f"QEMU log line {ln.lineno}: slot {ln.line.slot} failed (ret={ln.line.ret}); ignored"
                      for ln in failed)
    walked = _last_left_out(facts, placed, left_out)
    last: dict[int, int] = {}
    unplaced: set[int] = set()
    for ln, pl in zip(lines, placed):
        src = f"QEMU log line {ln.lineno}"
        if pl.after is None:
            ln.line.seq, ln.line.pid = None, pl.pid
            b.add(ln.line, None, "QEMU log (unplaced)", src, pl.how, None)
            unplaced.add(ln.line.slot)
            b.tl.notes.append(f"{src} (slot {ln.line.slot}) {pl.how}; checks that need its position skip it")
            continue
        ln.line.seq, ln.line.pid = pl.after, pl.pid
        if pl.response is not None:
            ws, anchor = pl.response, ANCHOR_ZAPS
        else:
            ws, anchor = _window_start(pl.after + 1, pl.pid, last.get(pl.pid), kvmmmu_seq, kvmmmu_pid, kvmmmu_zap,
                                       walked.get((pl.pid, pl.after), -1))
        b.add(ln.line, ws, anchor, src, pl.how, pl.confidence, opens_at=pl.after + 1)
        last[pl.pid] = pl.after
    tl = b.finish()
    if not start:
        tl.complete = complete and not unplaced
    if unplaced:
        inf = np.iinfo(np.int64).max
        tl.lifetimes = [lt for lt in tl.lifetimes if lt.slot not in unplaced]
        for c in tl.changes:
            if c.seq is None and c.source.startswith("QEMU log"):
                c.window_start, c.window_end = (0, inf) if c.kind in REMOVING_KINDS else (None, None)
    return tl


def _last_left_out(facts: TraceFacts, placed: Sequence[Placement],
                   left_out: frozenset[str]) -> dict[tuple[int, int], int]:
    """Per placed line without a kernel response (by thread and ``after`` seq): its thread's last event
    of ``left_out`` at or before it (-1: none), one pass over the events per thread."""
    out: dict[tuple[int, int], int] = {}
    if not left_out:
        return out
    by_pid: dict[int, list[int]] = {}
    for pl in placed:
        if pl.after is not None and pl.response is None:
            by_pid.setdefault(pl.pid, []).append(pl.after)
    for pid, afters in by_pid.items():
        found = facts.events.last_of(pid, left_out, np.asarray(afters, np.int64) + 1)
        out.update(((pid, a), w) for a, w in zip(afters, found.tolist()))
    return out


def parse_layout(layout: dict[str, Any]) -> list[SlotLine]:
    """The slots of a layout file (``--memslots`` JSON):
    ``{"slots": [{"slot", "as_id", "gpa", "size", "flags", "userspace_addr"}]}``."""
    try:
        out = []
        for s in layout["slots"]:
            as_id = int(s.get("as_id", 0))
            out.append(SlotLine(None, 0, as_id, (as_id << 16) | int(s["slot"]), int(str(s.get("flags", 0)), 0),
                                int(str(s["gpa"]), 0), int(str(s["size"]), 0),
                                int(str(s.get("userspace_addr", 0)), 0), 0))
    except (KeyError, TypeError, ValueError) as e:
        raise TraceError(f"memslot layout: expected {{\"slots\": [{{\"slot\", \"gpa\", \"size\"}}...]}} "
                         f"({e})") from None
    return out


def from_layout(layout: dict[str, Any]) -> MemslotTimeline:
    """A layout file alone (a trace without memslot lines): the slots stay for the whole trace."""
    b = _Builder("layout")
    b.seed(parse_layout(layout))
    return b.finish()
