"""``stale_mmio_spte``: an MMIO SPTE trusted although the memslots changed since it was made.

Two traced symptoms: an MMIO fault emulated for a gfn a live memslot certainly covers
(``handle_mmio_page_fault`` outside any update window), and a generation that goes backwards — a
``check_mmio_spte`` or ``mark_mmio_spte`` carrying a generation older than one the kernel already
reported as current (the MMIO generation is a 19-bit counter on 5.13+, so a jump of more than
half its range is a wrap, not a step back). A vCPU may legitimately still read the old memslots
until the update's ``synchronize_srcu``; so a step back only counts once a QEMU line (written
after the ioctl returned) lies between the newer generation and the older one.
"""

from __future__ import annotations

import numpy as np

from replays.detectors.context import Context
from replays.findings import CheckOutcome, Finding

GEN_BITS = 19


def detect(ctx: Context) -> list[CheckOutcome]:
    cid = "stale_mmio_spte"
    checks, marks, faults = ctx.mmio_checks, ctx.mmio_marks, ctx.mmio_faults
    if not (len(checks["seq"]) or len(faults["seq"])):
        return [CheckOutcome.skipped(cid, "no check_mmio_spte / handle_mmio_page_fault events (MMIO caching off "
                                          "or not traced)")]
    findings = []
    tl = ctx.timeline
    if tl.known and len(faults["seq"]):
        seq, gfn = faults["seq"], faults["gfn"]
        slot = tl.slot_at(gfn, seq)
        bad = (slot >= 0) & (tl.window_of(gfn, seq) < 0)
        for s, g, sl in zip(seq[bad][:64], gfn[bad][:64], slot[bad][:64]):
            findings.append(Finding(cid, int(s), int(g), int(sl), f"MMIO fault emulated for gfn {int(g):#x}, which "
                                    f"memslot {int(sl)} covers", [int(s)]))
    # generations, in seq order: the current generation never goes back
    seq = np.concatenate([checks["seq"], marks["seq"]])
    gen = np.concatenate([checks["kvm_gen"], marks["gen"]]).astype(np.int64)
    order = np.argsort(seq, kind="stable")
    seq, gen = seq[order], gen[order]
    half = 1 << (GEN_BITS - 1)
    lines = np.sort(np.asarray([c.seq for c in tl.changes if c.seq is not None], dtype=np.int64))
    high, high_seq = None, None
    for s, g in zip(seq.tolist(), gen.tolist()):
        if high is None or 0 < g - high < half or g - high < -half:
            high, high_seq = g, s
        elif g != high and high - g < half and np.searchsorted(lines, s) > np.searchsorted(lines, high_seq):
            findings.append(Finding(cid, s, None, None, f"MMIO generation {g:#x} used after generation {high:#x} "
                                    f"was already current (seq {high_seq})", [high_seq, s]))
    return [CheckOutcome.of(cid, findings, f"{len(checks['seq'])} MMIO check(s) and {len(faults['seq'])} MMIO "
                                           "fault(s) consistent with the memslot generation")]
