"""``dirty_bit_lost``: a writable+dirty leaf overwritten, same pfn, with Dirty clear (seed 001).

Clearing D on a present SPTE is legitimate only as dirty-log harvesting: the slot has
KVM_MEM_LOG_DIRTY_PAGES, or userspace cleared/fetched its dirty log (``kvm_clear_dirty_log`` /
lab ``kvmlab_get_dirty_log`` lines) since the SPTE was installed. Anything else loses the fact that
the guest wrote the page. Only the TDP MMU traces such overwrites.
"""

from __future__ import annotations

import numpy as np

from kvmtrace.replays.detectors.context import Context
from kvmtrace.replays.findings import CheckOutcome, Finding


def detect(ctx: Context) -> list[CheckOutcome]:
    cid = "dirty_bit_lost"
    if ctx.mmu != "tdp":
        return [CheckOutcome.skipped(cid, "only the TDP MMU traces SPTE overwrites; shadow dirty-log changes are "
                                          "untraced")]
    tl = ctx.timeline
    if not tl.known:
        return [CheckOutcome.skipped(cid, "memslot flags unknown (no kvm_set_user_memory lines): cannot tell "
                                          "dirty logging from a lost dirty bit")]
    gfn = np.asarray([d[1] for d in ctx.journal.dirty_clears], dtype=np.uint64)
    seq = np.asarray([d[0] for d in ctx.journal.dirty_clears], dtype=np.int64)
    slot = tl.slot_at(gfn, seq) if len(gfn) else np.empty(0, np.int64)
    harvest = [(s, sl) for s, sl, _, _ in tl.clear_dirty] + list(tl.get_dirty)
    findings = []
    for (s, g, level, as_id, installed, old, new), sl in zip(ctx.journal.dirty_clears, slot.tolist()):
        if sl >= 0 and tl.dirty_logging(sl, s):
            continue
        if any(installed <= hs <= s and (hsl & 0xFFFF) == (sl & 0xFFFF) for hs, hsl in harvest):
            continue
        findings.append(Finding(cid, s, g, sl if sl >= 0 else None,
                                f"level-{level} SPTE for gfn {g:#x} went {old:#x} -> {new:#x}: same pfn, Dirty "
                                "cleared with no dirty logging or dirty-log clear since it was installed",
                                [installed, s]))
    return [CheckOutcome.of(cid, findings, f"{len(ctx.journal.dirty_clears)} same-pfn Dirty clear(s), all "
                                           "explained by dirty logging")]
