"""``stale_mmio_spte``: an MMIO SPTE trusted although the memslots changed since it was made.

Two traced symptoms: an MMIO fault emulated for a gfn a live memslot certainly covers
(``handle_mmio_page_fault`` outside any update window), and a generation that goes backwards — a
``check_mmio_spte`` or ``mark_mmio_spte`` carrying a generation older than one the kernel already
reported as current (the MMIO generation is a 19-bit counter on 5.13+, so a jump of more than
half its range is a wrap, not a step back). A vCPU may legitimately still read the old memslots
until the update's ``synchronize_srcu``; so a step back only counts against generations seen
before a QEMU line (written after the ioctl returned) that precedes the stale use.
"""

from __future__ import annotations

import numpy as np

from kvmtrace.replays.detectors.context import Context
from kvmtrace.replays.findings import CheckOutcome, Finding

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
    # Generations, in seq order. Once a QEMU line is written, the ioctl (and its synchronize_srcu)
    # is over: no vCPU may still report as current a generation older than one seen before it.
    seq = np.concatenate([checks["seq"], marks["seq"]])
    gen = np.concatenate([checks["kvm_gen"], marks["gen"]]).astype(np.int64)
    order = np.argsort(seq, kind="stable")
    seq, gen = seq[order], gen[order]
    half = 1 << (GEN_BITS - 1)
    wraps = np.r_[0, np.cumsum(np.diff(gen) < -half)]  # a 19-bit counter wraps after 2**19 updates
    gen = gen + (wraps << GEN_BITS)
    lines = np.sort(np.asarray([c.seq for c in tl.changes if c.seq is not None], dtype=np.int64))
    if len(seq) and len(lines):
        running = np.maximum.accumulate(gen)
        at_line = np.searchsorted(seq, lines) - 1  # last generation event before each line
        published = np.where(at_line >= 0, running[at_line.clip(0)], -1)
        where = np.searchsorted(lines, seq) - 1  # last line before each event
        floor = np.where(where >= 0, published[where.clip(0)], -1)
        stale = gen < floor
        for k in np.flatnonzero(stale)[:64]:
            line = int(lines[where[k]])
            first = int(seq[np.argmax(gen == floor[k])])
            findings.append(Finding(cid, int(seq[k]), None, None,
                                    f"MMIO generation {int(gen[k]) % (1 << GEN_BITS):#x} used as current after "
                                    f"generation {int(floor[k]) % (1 << GEN_BITS):#x} was published "
                                    f"(seen at seq {first}, memslot line at seq {line})",
                                    [first, line, int(seq[k])]))
    return [CheckOutcome.of(cid, findings, f"{len(checks['seq'])} MMIO check(s) and {len(faults['seq'])} MMIO "
                                           "fault(s) consistent with the memslot generation")]
