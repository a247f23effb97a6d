"""Where the lines of a QEMU ``-trace`` log go in the trace: matched to the kernel's response, not
to the wall clock alone.

A log's timestamps are QEMU's clock (gettimeofday, or nothing at all), never the trace's, so a
line is placed by what the kernel did for its ioctl, all of which happens before QEMU writes the
line (docs/qemu-memslot-lines.md §3):

* **zap response**: a delete/move/recreate's ``kvm_mmu_zap_all_fast``, or the zaps of pages or
  leaf SPTEs in the old range, on one thread. The line comes after the burst, and the previous
  line before its first zap.
* **memslot generation**: each memslot swap adds 2 to the generation of address space 0 (5.1+;
  ``kvm_swap_active_memslots``), and ``check_mmio_spte``/``mark_mmio_spte`` print it. An
  observation of fewer swaps than a line's ioctl makes puts the line after it; one of more swaps
  puts it before. Used when the log starts with the VM (its first line creates slot 0).
* **clock**: the responses fix the log clock's offset to the trace clock (drift is negligible
  over a recording); every line then has a time window, as wide as the spread of the ioctls'
  return latencies.
* **outside KVM_RUN**: where the ioctl thread is a vCPU thread (the lab, single-threaded VMMs),
  it issues ioctls only between its ``kvm_userspace_exit`` and its next ``kvm_entry``. Without a
  zap response, the clock offsets that put every timed line in such a stretch are candidates;
  the thread's own leaf installs must then hit live slots (an assumption that the kernel did not
  install into a removed range, said in the notes), and a placement is taken only if it holds
  at least MIN_SHARE of the consistent offset range (a uniform prior on the offset).

A line is placed only where its admissible interval holds no event that touches its gfns (a
fault, install, page or MMIO SPTE in its old or new range): then every position inside gives the
same replay. Otherwise before and after such an event fit equally, and the line stays unplaced.
Confidence: 1.0 when kernel responses, generations and the log's order alone bound the line; 0.9
when the clock was needed; 0.9 x the offset-range share when the clock came from the stretches
outside KVM_RUN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import DTypeLike

from kvmtrace.parsers.schema import TraceData
from kvmtrace.replays.event_passes import EventPasses
from kvmtrace.replays.inputs import zap_all_event
from kvmtrace.replays.needs import NOTIFIER_EVENTS
from kvmtrace.replays.profiles import KernelProfile
from kvmtrace.replays.qemu_lines import LogLine
from kvmtrace.replays.stream import numpy_column

INF = np.iinfo(np.int64).max
#: least clock tolerance (s): log timestamps have µs resolution and the line follows the ioctl's
#: return by some µs
MIN_TOLERANCE = 50e-6
#: pause (ns) that separates two zap runs of one thread
RUN_GAP = 50_000
#: longest time (ns) from an ioctl's last zap to QEMU's line (synchronize_srcu, QEMU's own work)
LATENCY = 25e6
#: share of the consistent clock-offset range one placement must hold to be taken
MIN_SHARE = 0.9
#: memslot generation step per swap on x86 (two address spaces; kvm_swap_active_memslots adds
#: the number of address spaces; 2 per swap in the 6.12 recordings)
GEN_STEP = 2
#: events whose gfn says what they touch
_GFN_EVENTS = ("kvm_mmu_set_spte", "kvm_tdp_mmu_spte_changed", "kvm_mmu_spte_requested", "kvm_mmu_get_page",
               "kvm_mmu_prepare_zap_page", "mark_mmio_spte")


@dataclass
class TraceFacts:
    """What placement reads from the trace, as seq-sorted arrays, and questions about every
    event (``events``: passes over the ``events`` table, never every event's columns at once)."""

    events: EventPasses
    zap_seq: np.ndarray  # page zaps, leaf zaps (gfn) and zap-alls (gfn -1)
    zap_pid: np.ndarray
    zap_gfn: np.ndarray
    zap_all: np.ndarray  # bool per zap
    touch_seq: np.ndarray  # events naming a gfn
    touch_gfn: np.ndarray
    gen_seq: np.ndarray  # memslot generation observations
    gen: np.ndarray
    notifier_seq: np.ndarray  # MMU-notifier events: zaps right after one are not an ioctl's
    notifier_pid: np.ndarray
    uexit_seq: np.ndarray  # kvm_userspace_exit: a vCPU thread leaves KVM_RUN (and may issue ioctls)
    uexit_pid: np.ndarray
    entry_seq: np.ndarray  # kvm_entry: it is back in the guest
    entry_pid: np.ndarray
    inst_seq: np.ndarray  # present leaf installs (kvm_mmu_set_spte): seq, pid, gfn
    inst_pid: np.ndarray
    inst_gfn: np.ndarray


def _cat(parts: list[np.ndarray], dtype: DTypeLike) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.empty(0, dtype)


def _seqs_pids(data: TraceData, event: str) -> tuple[np.ndarray, np.ndarray]:
    t = data.tables.get(event)
    if t is None or not t.num_rows:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return numpy_column(t, "seq", np.int64), numpy_column(t, "pid", np.int64)


def _installs(data: TraceData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = data.tables.get("kvm_mmu_set_spte")
    if t is None or not t.num_rows:
        e = np.empty(0, np.int64)
        return e, e, e
    return (numpy_column(t, "seq", np.int64), numpy_column(t, "pid", np.int64), numpy_column(t, "gfn", np.int64))


def facts_from(data: TraceData, profile: KernelProfile) -> TraceFacts:
    zs: list[np.ndarray] = []
    zp: list[np.ndarray] = []
    zg: list[np.ndarray] = []
    za: list[np.ndarray] = []
    ts_: list[np.ndarray] = []
    tg: list[np.ndarray] = []
    gs: list[np.ndarray] = []
    gv: list[np.ndarray] = []
    t = data.tables.get("kvm_mmu_prepare_zap_page")
    if t is not None and t.num_rows:
        zs.append(numpy_column(t, "seq", np.int64))
        zp.append(numpy_column(t, "pid", np.int64))
        zg.append(numpy_column(t, "gfn", np.int64))
        za.append(np.zeros(t.num_rows, bool))
    t = data.tables.get("kvm_tdp_mmu_spte_changed")
    if t is not None and t.num_rows:
        old, new = numpy_column(t, "old_spte"), numpy_column(t, "new_spte")
        gone = profile.is_present(old) & ~profile.is_present(new)
        zs.append(numpy_column(t, "seq", np.int64)[gone])
        zp.append(numpy_column(t, "pid", np.int64)[gone])
        zg.append(numpy_column(t, "gfn", np.int64)[gone])
        za.append(np.zeros(int(gone.sum()), bool))
    t = data.tables.get(zap_all_event(data))
    if t is not None and t.num_rows:
        zs.append(numpy_column(t, "seq", np.int64))
        zp.append(numpy_column(t, "pid", np.int64))
        zg.append(np.full(t.num_rows, -1, np.int64))
        za.append(np.ones(t.num_rows, bool))
    for name in _GFN_EVENTS:
        t = data.tables.get(name)
        if t is not None and t.num_rows and "gfn" in t.column_names:
            ts_.append(numpy_column(t, "seq", np.int64))
            tg.append(numpy_column(t, "gfn", np.int64))
    if profile.version >= (5, 1):  # the generation counts swaps from 5.1 (u64, update-in-progress bit 63)
        for name, col in (("check_mmio_spte", "kvm_gen"), ("mark_mmio_spte", "gen")):
            t = data.tables.get(name)
            if t is not None and t.num_rows and col in t.column_names:
                gs.append(numpy_column(t, "seq", np.int64))
                gv.append(numpy_column(t, col, np.int64))
    notifiers = [_seqs_pids(data, name) for name, t in data.tables.items()
                 if name in NOTIFIER_EVENTS and t.num_rows]  # the VMM unmapping or aging memory
    nseq = _cat([s for s, _ in notifiers], np.int64)
    no = np.argsort(nseq, kind="stable")
    zseq = _cat(zs, np.int64)
    zo = np.argsort(zseq, kind="stable")
    tseq = _cat(ts_, np.int64)
    to = np.argsort(tseq, kind="stable")
    gseq = _cat(gs, np.int64)
    go = np.argsort(gseq, kind="stable")
    return TraceFacts(EventPasses(data), zseq[zo], _cat(zp, np.int64)[zo], _cat(zg, np.int64)[zo],
                      _cat(za, bool)[zo], tseq[to], _cat(tg, np.int64)[to], gseq[go], _cat(gv, np.int64)[go],
                      nseq[no], _cat([p for _, p in notifiers], np.int64)[no], *_seqs_pids(data, "kvm_userspace_exit"),
                      *_seqs_pids(data, "kvm_entry"), *_installs(data))


@dataclass
class Placement:
    """Where one log line went: after event ``after`` (None: unplaced), how, and how sure."""

    after: int | None
    how: str
    confidence: float | None
    pid: int
    response: int | None = None  # first seq of its zap response, where one was matched


@dataclass
class LineChange:
    """What a line does, told by replaying the log's lines in order (memslots.change_kind)."""

    kind: str
    swaps: int
    as_id: int
    ranges: list[tuple[int, int]]  # old and new gfn ranges [lo, hi)
    removes: tuple[int, int] | None  # old range of a delete/move/recreate


def _bursts(f: TraceFacts, zap_ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first, last) seq of the zap run each zap belongs to: a run is a thread's consecutive zaps
    in its own event stream; a non-zap event of the thread ends it, and so does a pause of more
    than RUN_GAP (one ioctl zaps back to back; the next ioctl comes after QEMU's own work).
    ``zap_ts``: the running time at each zap."""
    first = np.empty(len(f.zap_seq), np.int64)
    last = np.empty(len(f.zap_seq), np.int64)
    for pid in np.unique(f.zap_pid):
        zi = np.flatnonzero(f.zap_pid == pid)
        pos = f.events.ranks(int(pid), f.zap_seq[zi])  # places in the thread's own events
        t = zap_ts[zi]
        new = np.ones(len(zi), bool)
        new[1:] = (pos[1:] - pos[:-1] > 1) | (t[1:] - t[:-1] > RUN_GAP)
        run = np.cumsum(new) - 1
        starts = zi[new]
        ends = np.append(zi[np.flatnonzero(new)[1:] - 1], zi[-1])
        first[zi] = f.zap_seq[starts][run]
        last[zi] = f.zap_seq[ends][run]
    return first, last


@dataclass(frozen=True)
class Clock:
    """The log clock on the trace clock: ``trace_ns = log_s * 1e9 + offset``. A line is written
    after its ioctl returned, so each response gives ``offset >= end_ns - log_ns``; the largest of
    these (the quickest return) is taken, and the others' spread bounds how much later than the
    mapped time a line can really be."""

    offset: float
    spread: float

    def window(self, ts: float) -> tuple[float, float]:
        t = ts * 1e9 + self.offset
        return t - MIN_TOLERANCE * 1e9, t + self.spread + MIN_TOLERANCE * 1e9


def _match(cands: list[tuple[float, int, int, int, int]], timed: bool,
           why: list[list[str]]) -> tuple[dict[int, tuple[int, int, int]], Clock | None, str]:
    """Which zap run answers which line, and the clock. With log timestamps, every (line, run)
    pair proposes an offset; the true one is shared by all lines up to each ioctl's return latency
    (below LATENCY), so the window of that width holding pairs of the most lines wins; among such
    windows the earliest (zaps that follow a line, e.g. of the range it re-creates, give larger
    offsets), and two that lie more than LATENCY apart fit equally and match nothing. Inside the
    window the pairs must keep the log's order (later lines, later runs). Without timestamps, the first
    run after the previous line's, in order."""
    out: dict[int, tuple[int, int, int]] = {}
    if not cands:
        return out, None, ""
    if not timed:
        after = -1
        for _off, k, first, last, pid in sorted(cands, key=lambda c: (c[1], c[2])):
            if k not in out and first > after:
                out[k] = (first, last, pid)
                after = last
        return out, None, ""
    cands.sort()
    offs = np.array([c[0] for c in cands])

    windows = []
    for i in range(len(cands)):
        j = int(np.searchsorted(offs, offs[i] + LATENCY, "right"))
        chain = _chain(cands[i:j])
        windows.append((-len(chain), float(offs[i]), chain))
    windows.sort(key=lambda w: (w[0], w[1]))
    best = windows[0]
    rival = next((w for w in windows[1:] if w[0] == best[0] and w[1] - best[1] > LATENCY), None)
    if rival is not None:
        return out, None, ("zap responses fit two clock offsets equally (a workload that repeats itself): no line "
                           "placed by them")
    chosen = {c[1]: c for c in best[2]}
    for k, (_off, _, first, last, pid) in chosen.items():
        out[k] = (first, last, pid)
    used = [chosen[k][0] for k in out]
    return out, Clock(max(used), max(used) - min(used)), ""


@dataclass(frozen=True)
class Stretches:
    """The stretches a vCPU thread spent outside KVM_RUN (:func:`_outside_run`): start and end
    seqs, and the running time at each."""

    ex: np.ndarray
    end: np.ndarray
    ex_ts: np.ndarray
    end_ts: np.ndarray


def _outside_run(f: TraceFacts, thread: int) -> Stretches:
    """Every stretch the vCPU thread spent outside KVM_RUN: from the trace's start to its first
    kvm_entry, and from each of its kvm_userspace_exit to its next kvm_entry (its next event
    where kvm_entry is not traced; the last one to the trace's end). A VMM that issues memslot
    ioctls from a vCPU thread (the lab, single-threaded VMMs) can only do so inside one of these."""
    ex = np.unique(f.uexit_seq[f.uexit_pid == thread])
    if not len(ex):
        return Stretches(ex, ex, ex, ex)
    span = f.events.span
    back = np.unique(f.entry_seq[f.entry_pid == thread])
    if len(back):
        nxt = np.searchsorted(back, ex, "right")
        end = np.where(nxt < len(back), back[np.minimum(nxt, len(back) - 1)], span.last)
        first_back = int(back[0])
    else:  # the thread's own next event
        after = f.events.next_of(thread, np.concatenate(([-1], ex)))
        end = np.where(after[1:] >= 0, after[1:], span.last)
        first_back = int(after[0])
    starts, ends = np.concatenate(([span.first], ex)), np.concatenate(([first_back], end))
    at = f.events.ts_at(np.concatenate((starts, ends)))
    return Stretches(starts, ends, at[:len(starts)], at[len(starts):])


def _run_clock(lines: Sequence[LogLine], run: Stretches) -> tuple[list[Clock], str]:
    """The log clock from the stretches outside KVM_RUN: every line must fall in one, so the
    offset ranges that put every timed line inside one are the candidate clocks."""
    timed = np.array([ln.ts for ln in lines if ln.ts is not None], dtype=np.float64)
    if not len(timed) or not len(run.ex):
        return [], ""
    t0 = run.ex_ts.astype(np.float64)
    t1 = run.end_ts.astype(np.float64)
    lo = (t0[None, :] - timed[:, None] * 1e9).ravel()
    hi = (t1[None, :] - timed[:, None] * 1e9).ravel()
    xs = np.concatenate((lo, hi))
    ds = np.concatenate((np.ones(len(lo), np.int64), -np.ones(len(hi), np.int64)))
    order = np.lexsort((-ds, xs))
    xs, count = xs[order], np.cumsum(ds[order])
    full = np.flatnonzero(count == len(timed))
    if not len(full):
        return [], (f"no clock offset puts all {len(timed)} timed lines inside the ioctl thread's stretches "
                      f"outside KVM_RUN: not used")
    segs = [(xs[i], xs[i + 1]) for i in full if i + 1 < len(xs)]
    merged = [list(segs[0])]
    for a, b in segs[1:]:
        if a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [Clock(a, b - a) for a, b in merged], ""


def _stretches(clock: Clock, lines: Sequence[LogLine], run: Stretches) -> list[int]:
    """The start seq of the stretch outside KVM_RUN each timed line falls in under ``clock``."""
    out = []
    for ln in lines:
        if ln.ts is not None:
            i = int(np.searchsorted(run.ex_ts, ln.ts * 1e9 + clock.offset, "right")) - 1
            out.append(int(run.ex[max(i, 0)]))
    return out


def _unmapped_installs(clock: Clock, lines: Sequence[LogLine], changes: Sequence[LineChange], f: TraceFacts,
                       run: Stretches, thread: int) -> int:
    """How many of the ioctl thread's own leaf installs would hit a gfn no slot of the log covers,
    with the lines at the stretches this clock puts them in. The thread cannot run the guest during
    its own ioctl, so with the right clock its installs land only where a slot is live."""
    if any(ln.ts is None for ln in lines):
        return 0
    pos = _stretches(clock, lines, run)
    mine = f.inst_pid == thread
    seq, gfn = f.inst_seq[mine], f.inst_gfn[mine]
    covered = np.zeros(len(seq), bool)
    touched = np.zeros(len(seq), bool)
    live: dict[int, tuple[int, int, int]] = {}
    for x, ln in zip([*pos, INF], [*lines, None]):
        for slot, (a, b, since) in list(live.items()):
            if ln is None or ln.line.slot == slot:
                covered |= (seq >= since) & (seq < x) & (gfn >= a) & (gfn < b)
                touched |= (gfn >= a) & (gfn < b)
                if ln is not None:
                    del live[slot]
        if ln is not None and ln.line.size:
            live[ln.line.slot] = (ln.line.gpa >> 12, (ln.line.gpa + ln.line.size) >> 12, x)
    return int((touched & ~covered).sum())


def _chain(pairs: list[tuple[float, int, int, int, int]]) -> list[tuple[float, int, int, int, int]]:
    """The longest set of (line, run) pairs in which later lines have later runs (one run per
    line): a consistent assignment, found by patience sorting on the runs' first seqs."""
    order = sorted(pairs, key=lambda c: (c[1], -c[2]))
    tails: list[int] = []  # run first seq ending a chain of each length
    ends: list[int] = []  # index into order of that pair
    back = [-1] * len(order)
    for n, c in enumerate(order):
        i = int(np.searchsorted(tails, c[2]))
        back[n] = ends[i - 1] if i else -1
        if i == len(tails):
            tails.append(c[2])
            ends.append(n)
        else:
            tails[i], ends[i] = c[2], n
    out = []
    n = ends[-1] if ends else -1
    while n != -1:
        out.append(order[n])
        n = back[n]
    return out[::-1]


def _after_notifier(f: TraceFacts, zaps: np.ndarray) -> np.ndarray:
    """Whether each of the zaps (indices) directly follows an MMU-notifier event of its thread:
    every event between the two is a zap of that thread (an ioctl's zaps follow the thread's last
    event from long before)."""
    z = f.zap_seq[zaps]
    k = np.searchsorted(f.notifier_seq, z) - 1
    has = k >= 0
    n = np.where(has, f.notifier_seq[k.clip(0)] if len(f.notifier_seq) else -1, -1)
    out = np.zeros(len(zaps), bool)
    if not has.any():
        return out
    pid = f.zap_pid[zaps]
    same = has & (np.where(has, f.notifier_pid[k.clip(0)] if len(f.notifier_pid) else -1, -1) == pid)
    between = f.events.data.events_in(n + 1, z - 1)  # events strictly between the two
    for p in np.unique(pid[same]):
        own = f.zap_seq[f.zap_pid == p]  # the thread's zaps, in seq order
        i = np.flatnonzero(same & (pid == p))
        mine = np.searchsorted(own, z[i]) - np.searchsorted(own, n[i], "right")
        out[i] = between[i] == mine
    return out


def touching(f: TraceFacts, ranges: list[tuple[int, int]], lo: int, hi: int) -> np.ndarray:
    i, j = np.searchsorted(f.touch_seq, [lo + 1, hi]) if hi != INF else (np.searchsorted(f.touch_seq, lo + 1),
                                                                         len(f.touch_seq))
    g = f.touch_gfn[i:j]
    m = np.zeros(len(g), bool)
    for a, b in ranges:
        m |= (g >= a) & (g < b)
    return f.touch_seq[i:j][m]


def place(lines: Sequence[LogLine], changes: Sequence[LineChange], f: TraceFacts,
          complete: bool) -> tuple[list[Placement], list[str]]:
    """Place every line; ``complete`` says the log starts with the VM (generations count from 0)."""
    n = len(lines)
    lo = np.full(n, -1, np.int64)
    hi = np.full(n, INF, np.int64)
    why: list[list[str]] = [[] for _ in range(n)]
    notes: list[str] = []
    _generations(changes, f, complete, lo, hi, why, notes)
    # zap responses on the ioctl thread: the log's pid where the trace has that thread (QEMU's main
    # thread), else any one thread
    pids_in_trace = f.events.span.pids
    thread = next((ln.pid for ln in lines if ln.pid is not None and ln.pid in pids_in_trace), None)
    cands: list[tuple[float, int, int, int, int]] = []  # (offset ns, line, first, last, pid)
    removing = len(f.zap_seq) and any(c.removes is not None for c in changes)
    if removing:
        zap_ts = f.events.ts_at(f.zap_seq)
        first_of, last_of = _bursts(f, zap_ts)
        heads = np.unique(np.searchsorted(f.zap_seq, first_of))  # each run's first zap
        after_notifier = dict(zip(heads.tolist(), _after_notifier(f, heads).tolist()))
    for k, c in enumerate(changes):
        if c.removes is None or not removing:
            continue
        a, b = c.removes
        # (not bounded below by the generations: a delete zaps between its two swaps)
        cand = (f.zap_seq < hi[k]) & (f.zap_all | ((f.zap_gfn >= a) & (f.zap_gfn < b)))
        if thread is not None:
            cand &= f.zap_pid == thread
        seen: set[int] = set()
        line_ts = lines[k].ts
        for zi in np.flatnonzero(cand):
            key = int(first_of[zi])
            if key in seen:
                continue
            seen.add(key)
            if after_notifier[int(np.searchsorted(f.zap_seq, key))]:
                continue
            run_last = int(last_of[zi])
            off = float(zap_ts[np.searchsorted(f.zap_seq, run_last)]) - line_ts * 1e9 if line_ts is not None else 0.0
            cands.append((off, k, key, run_last, int(f.zap_pid[zi])))
    resp, clock, note = _match(cands, any(ln.ts is not None for ln in lines), why)
    if note:
        notes.append(note)
    # a vCPU thread issues its memslot ioctls only while outside KVM_RUN
    none = np.empty(0, np.int64)
    run = _outside_run(f, thread) if thread is not None else Stretches(none, none, none, none)
    ex, end = run.ex, run.end
    by_installs = 0.0
    if clock is None and len(ex):
        fits, note = _run_clock(lines, run)
        if note:
            notes.append(note)
        n_fits = len(fits)
        if n_fits > 1:
            assert thread is not None  # ex is empty without a thread
            clean = [c for c in fits if not _unmapped_installs(c, lines, changes, f, run, thread)]
            # fits that put every line in the same stretch are one placement; with no prior on the
            # offset, each placement is as likely as the width of its offset range
            groups: dict[tuple[int, ...], list[Clock]] = {}
            for fit in clean:
                groups.setdefault(tuple(_stretches(fit, lines, run)), []).append(fit)
            weight = {k: sum(c.spread + 1.0 for c in g) for k, g in groups.items()}
            total = sum(weight.values())
            best = max(weight, key=lambda s: weight[s]) if weight else None
            share = weight[best] / total if best is not None else 0.0
            if share >= MIN_SHARE:
                assert best is not None  # share is 0.0 without one
                g = groups[best]
                lo_off = min(c.offset for c in g)
                fits = [Clock(lo_off, max(c.offset + c.spread for c in g) - lo_off)]
                by_installs = share
                notes.append(f"the log fits the ioctl thread's stretches outside KVM_RUN at {n_fits} separate "
                             f"clock offsets; {len(groups)} placement(s) keep every leaf the thread installed inside "
                             f"a live slot (assuming the kernel did not install into a removed range), and one of "
                             f"them holds {share:.0%} of their offset range: taken")
            else:
                notes.append(f"the log fits the ioctl thread's stretches outside KVM_RUN at {len(clean)} clock offsets "
                             f"consistent with the thread's own installs, none with {MIN_SHARE:.0%} of the offset "
                             f"range: not used")
                fits = []
        if len(fits) == 1:
            clock = fits[0]
            notes.append(f"log clock from the ioctl thread {thread}'s stretches outside KVM_RUN (kvm_userspace_exit "
                         f"to its next kvm_entry), ± {clock.spread / 1e3:.0f} µs")
    for k, (first, last, pid) in resp.items():
        lo[k] = max(lo[k], last)
        why[k].append(f"after its kernel response: zaps seq {first}..{last} on thread {pid}")
        if k:
            hi[k - 1] = min(hi[k - 1], first)
    # the log's order: each line after the previous one's evidence, before the next one's
    lo = np.maximum.accumulate(lo)
    hi = np.minimum.accumulate(hi[::-1])[::-1]
    out: list[Placement] = []
    prev = -1
    # each timed line's clock window as a seq range, for all lines in one pass
    windows = {k: clock.window(ln.ts) for k, ln in enumerate(lines) if clock is not None and ln.ts is not None}
    below, above = f.events.time_bounds(np.array([w[0] for w in windows.values()]),
                                        np.array([w[1] for w in windows.values()])) if windows else ((), ())
    bounds = dict(zip(windows, zip(np.asarray(below).tolist(), np.asarray(above).tolist())))
    for k, (ln, c) in enumerate(zip(lines, changes)):
        pid = resp[k][2] if k in resp else (thread if thread is not None else (ln.pid or 0))
        low, high, used = max(int(lo[k]), prev), int(hi[k]), False
        if k in windows:
            t0, t1 = windows[k]
            cl, ch = bounds[k]
            used = cl > low or ch < high
            low, high = max(low, cl), min(high, ch)
            why[k].append(f"log clock: trace ts {t0 / 1e9:.6f}..{t1 / 1e9:.6f} s")
        if len(ex):
            i = int(np.searchsorted(ex, low, "right")) - 1  # the stretch the line can be in, if one
            if i >= 0 and end[i] >= high:
                why[k].append(f"thread {thread} outside KVM_RUN from seq {int(ex[i])}")
            elif i + 1 < len(ex) and end[i + 1] >= high and ex[i + 1] < high:
                low = max(low, int(ex[i + 1]))
                why[k].append(f"thread {thread} outside KVM_RUN from seq {int(ex[i + 1])}")
        if low >= high:
            out.append(Placement(None, "unplaced: the evidence conflicts (" + "; ".join(why[k]) + ")", None, pid))
            continue
        if low == -1 and high == INF:
            out.append(Placement(None, "unplaced: no kernel response, generation or clock places it", None, pid))
            continue
        hits = touching(f, c.ranges, low, high)
        if len(hits):
            out.append(Placement(None, f"unplaced: events touching its gfns (seq {int(hits[0])}"
                                       f"{'...' if len(hits) > 1 else ''}) lie where it may be; before and after "
                                       f"them fit equally", None, pid))
            continue
        prev = low
        conf = (round(0.9 * by_installs, 2) if by_installs else 0.9) if used else 1.0
        out.append(Placement(low, f"after seq {low}: " + "; ".join(why[k] or ["the log's order"]), conf, pid,
                             resp[k][0] if k in resp else None))
    return out, notes


def _generations(changes: Sequence[LineChange], f: TraceFacts, complete: bool, lo: np.ndarray, hi: np.ndarray,
                 why: list[list[str]], notes: list[str]) -> None:
    """Bounds from the memslot generations the trace prints: an observation of fewer swaps than
    line k's ioctl completes puts k after it; one of more swaps puts k before it."""
    if not len(f.gen):
        return
    if not complete:
        notes.append("the log does not start with the VM (its first line is not the creation of slot 0): memslot "
                     "generations cannot be counted and are not used for placement")
        return
    n = len(changes)
    cum = np.cumsum([c.swaps if c.as_id == 0 else 0 for c in changes])
    done = f.gen // GEN_STEP
    if np.any(np.diff(done) < 0) or done.max() > (cum[-1] if n else 0):
        notes.append("memslot generations in the trace do not follow the log's changes (a line missing, or "
                     "another VM): not used for placement")
        return
    for k, c in enumerate(changes):
        if c.as_id != 0 or not c.swaps:
            continue
        a = int(np.searchsorted(done, cum[k], "left")) - 1
        b = int(np.searchsorted(done, cum[k], "right"))
        if a >= 0:
            lo[k] = max(lo[k], f.gen_seq[a])
            why[k].append(f"generation {int(f.gen[a])} at seq {int(f.gen_seq[a])} (its swaps not all done)")
        if b < len(done):
            hi[k] = min(hi[k], f.gen_seq[b])
            why[k].append(f"generation {int(f.gen[b])} at seq {int(f.gen_seq[b])} (the next ioctl had begun)")
