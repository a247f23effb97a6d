"""SPTEs and faults against the memslot layout: ``spte_for_unmapped_gfn``, ``fault_in_update_window``.

Vectorised over all installs/faults at once: the timeline answers "which slot certainly covered
this gfn at this seq" and "which update window contains it" for whole arrays.
"""

from __future__ import annotations

import numpy as np

from kvmtrace.replays.detectors.context import Context
from kvmtrace.replays.findings import END, CheckOutcome, Finding
from kvmtrace.replays.memslots import ANCHOR_ZAPS, REMOVING_KINDS, MemslotChange


def detect(ctx: Context) -> list[CheckOutcome]:
    return [_unmapped(ctx), _in_window(ctx)]


def _known_holes(ctx: Context, gfn: np.ndarray, seq: np.ndarray) -> np.ndarray:
    """gfns known to have lost their slot: inside a removed range, after that removal's window."""
    out = np.zeros(len(gfn), dtype=bool)
    for c in ctx.timeline.changes:
        if c.kind in REMOVING_KINDS and c.old_npages and c.window_end is not None:
            out |= (seq > c.window_end) & (gfn >= np.uint64(c.old_base_gfn)) & (gfn < np.uint64(c.old_base_gfn + c.old_npages))
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
    after = ins["seq"] > tl.known_from
    seq, gfn, as_id = ins["seq"][after], ins["gfn"][after], ins["as_id"][after]
    covered = tl.slot_at(gfn, seq, as_id) >= 0
    in_window = tl.window_of(gfn, seq) >= 0
    suspect = ~covered & ~in_window
    if not tl.complete:
        suspect &= _known_holes(ctx, gfn, seq)
    findings = [
        Finding(cid, int(s), int(g), None,
                f"present leaf SPTE installed for gfn {int(g):#x}, which no live memslot covers "
                f"(layout {'complete' if tl.complete else 'partial: gfn of a removed slot'})",
                [int(s)], horizon=_next_cover(ctx, int(g), int(s)))
        for s, g in zip(seq[suspect][:256], gfn[suspect][:256])
    ]
    scope = "complete layout" if tl.complete else "partial layout (only gfns of removed slots are judged)"
    return CheckOutcome.of(cid, findings, f"{int(after.sum())} install(s) checked against the {scope}")


def _next_cover(ctx: Context, gfn: int, seq: int) -> int:
    """The verdict on an install at ``seq`` holds only if no later line shows a slot over ``gfn``
    whose update window began before it (the line comes after its ioctl): up to the first later
    line covering ``gfn``, or the trace's end when there is none."""
    later = [c.seq for c in ctx.timeline.changes
             if c.seq is not None and c.seq > seq and c.npages and c.base_gfn <= gfn < c.base_gfn + c.npages]
    return min(later, default=END)


def _in_window(ctx: Context) -> CheckOutcome:
    cid = "fault_in_update_window"
    tl = ctx.timeline
    windows = [c for c in tl.changes if c.kind in REMOVING_KINDS and c.seq is not None]
    if not windows:
        return CheckOutcome.skipped(cid, "no memslot delete or move with a position in the trace")
    seq = np.concatenate([ctx.faults["seq"], ctx.installs["seq"]])
    gfn = np.concatenate([ctx.faults["gfn"], ctx.installs["gfn"]])
    hit = tl.window_of(gfn, seq, REMOVING_KINDS, positioned=True, certain=True)
    findings = []
    for w in np.unique(hit[hit >= 0]):
        c = tl.changes[int(w)]
        m = hit == w
        s, g = seq[m], gfn[m]
        order = np.argsort(s)
        findings.append(Finding(
            cid, int(s[order[0]]), int(g[order[0]]), c.slot,
            _window_words(c, int(m.sum())),
            [int(x) for x in s[order][:32]] + [c.window_start if c.anchor == ANCHOR_ZAPS else c.seq, c.window_end]))
    return CheckOutcome.of(cid, findings, f"{len(windows)} update window(s) checked, no fault inside (a window "
                                          "counts from the kernel's zaps, or from the line when the kernel left none)")


def _window_words(c: MemslotChange, hits: int) -> str:
    """The finding's message: which update window, bounded by which events."""
    start = c.window_start if c.anchor == ANCHOR_ZAPS else c.seq
    since = "the kernel's zaps" if c.anchor == ANCHOR_ZAPS else f"its {c.kind} line"
    if c.window_end != c.seq:
        return (f"{hits} fault(s)/install(s) on gfns of slot {c.slot} between its {c.kind} and its re-creation "
                f"(seq {start}..{c.window_end}: from {since} to the re-creating line); a delete and the create "
                f"that replaces it are not one atomic update, so the vCPU saw the range change under it")
    return (f"{hits} fault(s)/install(s) on gfns of slot {c.slot} while its {c.kind} was under way "
            f"(seq {start}..{c.window_end}: from {since} to its line)")
