"""SPTEs and faults against the memslot layout: ``spte_for_unmapped_gfn``, ``fault_in_update_window``.

Vectorised over a block of installs/faults at a time (:func:`stream.row_blocks`): the timeline answers
"which slot certainly covered this gfn at this seq" and "which update window contains it" for
whole arrays, and each row's answer is its own, so blocks give the answers of the whole.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

import numpy as np

from kvmtrace.parsers.spilled import gather
from kvmtrace.replays import pfns
from kvmtrace.replays.detectors.context import Context
from kvmtrace.replays.findings import END, CheckOutcome, Finding
from kvmtrace.replays.memslots import ANCHOR_ZAPS, REMOVING_KINDS, MemslotChange, MemslotTimeline
from kvmtrace.replays.stream import row_blocks

#: Installs on no live memslot reported as findings: the first ones, in install order.
MAX_REPORTED = 256


def detect(ctx: Context) -> list[CheckOutcome]:
    return [_unmapped(ctx), _in_window(ctx)]


def _known_holes(ctx: Context, gfn: np.ndarray, seq: np.ndarray) -> np.ndarray:
    """gfns known to have lost their slot: inside a removed range, after that removal's window."""
    out = np.zeros(len(gfn), dtype=bool)
    # per removed range, from the earliest end of a window over it (a range removed over and over
    # is one pass, not one per removal)
    first_end: dict[tuple[int, int], int] = {}
    for c in ctx.timeline.changes:
        if c.kind in REMOVING_KINDS and c.old_npages and c.old_base_gfn is not None and c.window_end is not None:
            key = (c.old_base_gfn, c.old_npages)
            first_end[key] = min(first_end.get(key, c.window_end), c.window_end)
    for (base, n), end in first_end.items():
        out |= (seq > end) & (gfn >= np.uint64(base)) & (gfn < np.uint64(base + n))
    return out


def _unmapped(ctx: Context) -> CheckOutcome:
    cid = "spte_for_unmapped_gfn"
    tl = ctx.timeline
    if not tl.known:
        return CheckOutcome.skipped(cid, "memslot layout unknown (no kvm_set_user_memory lines; use --qemu-log or "
                                         "--memslots)")
    ins = ctx.installs
    if not len(ins["seq"]):
        return CheckOutcome.skipped(cid, "no leaf SPTE installs in the trace")
    checked = 0
    suspects: list[tuple[np.ndarray, np.ndarray]] = []  # seq and gfn of the first installs on no slot
    lifetimes, windows = tl.lifetime_spans(), tl.window_spans()
    for at in row_blocks(len(ins["seq"])):
        after = ins["seq"][at] > tl.known_from
        seq, gfn, as_id = ins["seq"][at][after], ins["gfn"][at][after], ins["as_id"][at][after]
        checked += len(seq)
        suspect = (lifetimes.at(gfn, seq, as_id) < 0) & (windows.at(gfn, seq) < 0)
        if not tl.complete:
            suspect &= _known_holes(ctx, gfn, seq)
        if sum(len(first) for first, _g in suspects) < MAX_REPORTED:  # the findings are the first ones'
            suspects.append((seq[suspect], gfn[suspect]))
    # The VMM writes its line after the ioctl returns: an install after the trace's last line may
    # belong to a slot created by an ioctl whose line lies beyond the end of a trace cut short.
    lines = [c.seq for c in tl.changes if c.seq is not None]
    last_line = max(lines) if lines else None
    findings = []
    for s, g in zip(np.concatenate([s for s, _g in suspects])[:MAX_REPORTED].tolist(),
                    np.concatenate([g for _s, g in suspects])[:MAX_REPORTED].tolist()):
        words = (f"present leaf SPTE installed for gfn {g:#x}, which no live memslot covers "
                 f"(layout {'complete' if tl.complete else 'partial: gfn of a removed slot'})")
        if last_line is not None and s > last_line:
            findings.append(Finding(cid, s, g, None, words + f", after the trace's last memslot line (seq "
                                    f"{last_line}): a create whose line the trace does not hold (cut short?) may "
                                    "cover it, so this is not certain", [last_line, s], severity="warning",
                                    horizon=_next_cover(ctx, g, s)))
        else:
            findings.append(Finding(cid, s, g, None, words, [s], horizon=_next_cover(ctx, g, s)))
    scope = "complete layout" if tl.complete else "partial layout (only gfns of removed slots are judged)"
    return CheckOutcome.of(cid, findings, f"{checked} install(s) checked against the {scope}")


def _next_cover(ctx: Context, gfn: int, seq: int) -> int:
    """The verdict on an install at ``seq`` holds only if no later line shows a slot over ``gfn``
    whose update window began before it (the line comes after its ioctl): up to the first later
    line covering ``gfn``, or the trace's end when there is none."""
    later = [c.seq for c in ctx.timeline.changes
             if c.seq is not None and c.seq > seq and c.npages and c.base_gfn <= gfn < c.base_gfn + c.npages]
    return min(later, default=END)


@dataclass(frozen=True)
class WindowHit:
    """Faults and installs on one gfn inside one change's update window that mean the same thing."""

    change: int  # index into timeline.changes
    gfn: int
    what: str  # "mmio_exit" (DELETE+CREATE, docs/threads.md §3) | "invalid_slot_fault" (a slot being removed)
    seqs: tuple[int, ...]
    pids: tuple[int, ...]
    pfn: int


def _in_window(ctx: Context) -> CheckOutcome:
    """Faults inside a delete's, move's or re-creation's update window, told apart by what KVM found.

    Kernel facts (virt/kvm/kvm_main.c, kvm_set_memslot()): a delete or move first swaps in a copy of
    the slot marked KVM_MEMSLOT_INVALID and waits for SRCU readers, then zaps (the window's kernel
    anchor), then commits; x86 faults on an invalid slot return RET_PF_RETRY before the fault's
    kvm_mmu_spte_requested. So inside the window a fault either finds no slot (``KVM_PFN_NOSLOT``:
    the change was committed and the gfn is MMIO now), or finds a page of a slot that the kernel
    had already committed (the new range of a move, or a re-creation whose line comes later): not
    a finding. A NOSLOT fault on a range the VMM re-creates afterwards is the hazard of the 2022
    DELETE+CREATE thread (docs/threads.md §3): the guest's RAM access became an MMIO exit. A fault or
    install that finds a page of the old range after the kernel began zapping it contradicts the
    invalid-slot retry.
    """
    cid = "fault_in_update_window"
    tl = ctx.timeline
    windows = [c for c in tl.changes if c.kind in REMOVING_KINDS and c.seq is not None]
    if not windows:
        return CheckOutcome.skipped(cid, "no memslot delete or move with a position in the trace")
    f, ins = ctx.faults, ctx.installs
    # The faults' and the installs' hits, each found on its own arrays: joined first, the two
    # (and the windows' sorted copies of them) were 200 MiB at 51 M events, for a few hits.
    found = [_window_hits(tl, f["seq"], f["gfn"], f["pid"], f["pfn"]),
             _window_hits(tl, ins["seq"], ins["gfn"], ins["pid"], None)]
    seq, gfn, pid, pfn, kind, hit = (np.concatenate(column) for column in zip(*found))
    groups: dict[tuple[int, int, str], list[int]] = {}
    back_of = Recreations(tl.changes)
    benign = {"committed": 0, "removed": 0}
    for i in range(len(hit)):  # a loop over the few events inside windows only
        w, g = int(hit[i]), int(gfn[i])
        what = _meaning(back_of, w, g, int(seq[i]), int(kind[i]))
        if what in benign:
            benign[what] += 1
        else:
            groups.setdefault((w, g, what), []).append(int(i))
    findings = []
    for (w, g, what), rows in sorted(groups.items(), key=lambda kv: int(seq[kv[1][0]])):
        rows.sort(key=lambda r: int(seq[r]))
        h = WindowHit(w, g, what, tuple(int(seq[r]) for r in rows), tuple(sorted({int(pid[r]) for r in rows})),
                      int(pfn[rows[0]]))
        findings.append(_window_finding(ctx, h, back_of))
    return CheckOutcome.of(cid, findings, f"{len(windows)} update window(s) checked: {benign['committed']} fault(s)/"
                                          f"install(s) on ranges the kernel had already committed, "
                                          f"{benign['removed']} MMIO fault(s) on ranges removed for good or not yet "
                                          "created; none between a delete and its re-creation")


def _window_hits(tl: MemslotTimeline, seq: np.ndarray, gfn: np.ndarray, pid: np.ndarray,
                 pfn: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """seq, gfn, pid, pfn, pfn kind and change index of the rows (faults, or installs where
    ``pfn`` is None: a RAM page) inside the surely-under-way part of a positioned delete's or
    move's update window, in row order."""
    found = [(np.empty(0, np.int64), np.empty(0, np.int64))]
    windows = tl.window_spans(REMOVING_KINDS, positioned=True, certain=True)
    for at in row_blocks(len(seq)):
        hit = windows.at(gfn[at].astype(np.uint64, copy=False), seq[at])
        rows = np.flatnonzero(hit >= 0)
        found.append((rows + at.start, hit[rows]))  # the rows inside a window are few
    rows = np.concatenate([r for r, _h in found])
    hit = np.concatenate([h for _r, h in found])
    # the hits lie all over the trace: read where the columns are on disk, every page of them
    # stayed in the process (+280 MiB of the installs' at 109 M events, the detectors' peak)
    got = gather([seq, gfn, pid] if pfn is None else [seq, gfn, pid, pfn], rows)
    if pfn is None:
        got_pfn = np.zeros(len(rows), np.uint64)
        kind = np.full(len(rows), pfns.PfnKind.RAM, np.int8)
    else:
        got_pfn = got[3].astype(np.uint64)
        kind = pfns.kinds(got_pfn).astype(np.int8)
    return got[0].astype(np.int64), got[1].astype(np.uint64), got[2].astype(np.int64), got_pfn, kind, hit


def _covers(c: MemslotChange, g: int) -> bool:
    return bool(c.npages) and c.base_gfn <= g < c.base_gfn + c.npages


def _on_old(c: MemslotChange, g: int) -> bool:
    if not c.old_npages or c.old_base_gfn is None:
        return False
    return c.old_base_gfn <= g < c.old_base_gfn + c.old_npages


class Recreations:
    """Which change brings gfn ``g`` back after change ``w`` removed it (:meth:`after`).

    Why an index: the question is asked for every fault and install inside an update window
    (189 000 times on a 53 M-event recording), and a scan of the later changes for each made the
    check quadratic in trace length (3.8 s of the detectors' 5.8 s there, four times that at twice
    the length). A VMM re-creates its slots with few distinct ranges, so the creating changes are
    grouped by range and each question is one binary search per range that covers ``g``."""

    def __init__(self, changes: list[MemslotChange]) -> None:
        self.changes = changes
        by_range: dict[tuple[int, int], list[int]] = {}
        for i, n in enumerate(changes):
            if n.seq is not None and n.kind != "delete" and n.npages:
                by_range.setdefault((n.base_gfn, n.npages), []).append(i)
        self._ranges = [(base, base + npages, rows) for (base, npages), rows in by_range.items()]

    def after(self, w: int, g: int) -> MemslotChange | None:
        """``w`` itself when it is a one-line re-creation covering ``g``, else the first later
        positioned change (not a delete) whose new range covers it."""
        c = self.changes[w]
        if c.kind == "recreate" and _covers(c, g):
            return c
        firsts = [rows[k] for lo, hi, rows in self._ranges if lo <= g < hi
                  for k in [bisect_right(rows, w)] if k < len(rows)]
        return self.changes[min(firsts)] if firsts else None


def _meaning(back_of: Recreations, w: int, g: int, s: int, kind: int) -> str:
    """What one fault/install at seq ``s`` on gfn ``g`` inside change ``w``'s window means."""
    c = back_of.changes[w]
    if kind != pfns.PfnKind.NOSLOT:
        if _covers(c, g) and c.kind != "delete":
            return "committed"  # a page of the new range: the kernel had committed the change
        back = back_of.after(w, g)
        if (c.seq is not None and s > c.seq and back is not None and back.window_start is not None
                and back.seq is not None and back.window_start <= s <= back.seq):
            return "committed"  # after the delete, on the re-created slot, inside the re-creation's window
        return "invalid_slot_fault"
    if not _on_old(c, g) or c.kind == "move":
        return "removed"  # the new range before its commit, or the old place of a moved slot
    return "mmio_exit" if back_of.after(w, g) is not None else "removed"


def _window_finding(ctx: Context, h: WindowHit, back_of: Recreations) -> Finding:
    c = ctx.timeline.changes[h.change]
    start = c.window_start if c.anchor == ANCHOR_ZAPS else c.seq
    assert c.seq is not None and start is not None  # the change of a window hit has its line and window
    who = f"vCPU thread{'s' if len(h.pids) > 1 else ''} {', '.join(map(str, h.pids))}"
    n = f"{len(h.seqs)} time{'s' if len(h.seqs) > 1 else ''}"
    if h.what == "mmio_exit":
        back = back_of.after(h.change, h.gfn)
        assert back is not None and back.seq is not None  # "mmio_exit": a later change brings the gfn back
        mark = _mmio_mark(ctx, h.gfn, h.seqs[0], back.seq)
        spte = f" and installed an MMIO SPTE (mark_mmio_spte, seq {mark})" if mark is not None else ""
        if c.kind == "recreate":
            deleted = "the delete half of its re-creation (QEMU logs the pair with one line)"
        elif c.anchor == ANCHOR_ZAPS:
            deleted = f"the kernel committed its delete (its zaps began at seq {start}; VMM's line at seq {c.seq})"
        else:
            deleted = f"its delete (VMM's line at seq {c.seq})"
        msg = (f"{who} faulted {n} on gfn {h.gfn:#x} of slot {c.slot} after {deleted} and before its re-creation "
               f"(VMM's line at seq {back.seq}): KVM found no memslot for the gfn (KVM_PFN_NOSLOT){spte}, so the "
               "guest's RAM access became an MMIO exit to the VMM. A delete and the create that replaces it are two "
               "KVM_SET_USER_MEMORY_REGION calls, not one atomic update (every kernel); a VMM must keep vCPUs out "
               "of the range across the pair")
        evidence = list(h.seqs[:32]) + ([mark] if mark is not None else []) + [start, c.seq, back.seq]
    else:
        what = pfns.name(h.pfn) if h.pfn else "an SPTE install"
        msg = (f"{who} got {what} for gfn {h.gfn:#x} of slot {c.slot} ({n}) inside the update window of its "
               f"{c.kind} (seq {start}..{c.window_end}), where no committed slot covered the gfn: KVM retries "
               "faults on a slot being deleted or moved (KVM_MEMSLOT_INVALID) and resolves a gfn no slot covers "
               "as KVM_PFN_NOSLOT, so no fault may find, and no SPTE may map, a page of the old range here")
        evidence = [*h.seqs[:32], start, c.seq]
    return Finding("fault_in_update_window", h.seqs[0], h.gfn, c.slot, msg, evidence)


def _mmio_mark(ctx: Context, g: int, after: int, until: int | None) -> int | None:
    """Seq of the first mark_mmio_spte for ``g`` at or after ``after`` (and before ``until``)."""
    marks = ctx.mmio_marks
    m = (marks["gfn"] == np.uint64(g)) & (marks["seq"] >= after)
    if until is not None:
        m &= marks["seq"] <= until
    hits = marks["seq"][m]
    return int(hits.min()) if len(hits) else None
