"""``memslot_zap_miss``: shadow pages a per-slot zap left alive that the kernel's rule must zap.

Reads the model's snapshot taken just after the change's QEMU line (by then the ioctl has
returned, so every zap the kernel owed is done). Under the zap-slot policy (no zap-all in the
window), a live, valid shadow page the rule names is a miss. Upstream rule ("gptes", 6.12+):
indirect, non-passthrough pages whose gfn lies in the slot (kvm_mmu_zap_memslot_pages_and_flush).
2019 range rule (seed 000): every page whose gfn lies in ``[base & mask, last & mask]``,
``mask = ~(512**level - 1)``.
"""

from __future__ import annotations

import numpy as np

from kvmtrace.replays.detectors.context import Context
from kvmtrace.replays.detectors.slot_removal import SHADOW_KINDS
from kvmtrace.replays.findings import CheckOutcome, Finding
from kvmtrace.replays.pages import NONE


def detect(ctx: Context) -> list[CheckOutcome]:
    return [_zap_miss(ctx)]


def zap_rule_mask(ctx: Context, gfn: np.ndarray, role: np.ndarray, base: int, npages: int) -> np.ndarray:
    """Pages the per-slot zap must destroy for the old range ``[base, base+npages)``, by profile rule."""
    p = ctx.profile
    field = p.role_field
    level = (role >> np.uint64(field("level").shift)) & np.uint64(0xF)
    if p.slot_zap_rule == "range_2019":
        mask = ~(np.left_shift(np.uint64(1), np.uint64(9) * level) - np.uint64(1))
        last = np.uint64(base + npages - 1)
        return (gfn >= (np.uint64(base) & mask)) & (gfn <= (last & mask))
    direct = (role >> np.uint64(field("direct").shift)) & np.uint64(1)
    pt = field("passthrough")
    passthrough = (role >> np.uint64(pt.shift)) & np.uint64(1) if pt else np.zeros_like(direct)
    return (direct == 0) & (passthrough == 0) & (gfn >= np.uint64(base)) & (gfn < np.uint64(base + npages))


RULE_WORDS = {
    "gptes": "upstream zap-slot rule: indirect, non-passthrough pages whose gfn lies in the slot",
    "range_2019": "2019 range rule: pages whose gfn lies in the slot's range aligned to the level above",
}


def _zap_miss(ctx: Context) -> CheckOutcome:
    cid = "memslot_zap_miss"
    if ctx.mmu not in SHADOW_KINDS:
        return CheckOutcome.skipped(cid, "TDP MMU pages are direct: the per-slot zap of shadow pages has nothing to "
                                         "zap" if ctx.mmu == "tdp" else "no shadow-page events")
    if not ctx.roles_known:
        return CheckOutcome.skipped(cid, "role words are not in this input (text output): which pages are indirect "
                                         "cannot be told")
    removals = [(i, c) for i, c in ctx.positioned_removals() if not ctx.expects_zap_all(c)]
    if not removals:
        return CheckOutcome.skipped(cid, "no memslot delete or move under the zap-slot policy in the trace")
    pages = ctx.pages.arrays()
    findings: list[Finding] = []
    for i, c in removals:
        snap = ctx.journal.snapshots.get((i, "end"))
        if snap is None or not len(snap.pages):
            continue
        ids = snap.pages
        valid = pages["obsolete_seq"][ids] == NONE
        must = zap_rule_mask(ctx, pages["gfn"][ids], pages["role"][ids], c.old_base_gfn, c.old_npages)
        for p in ids[valid & must & (pages["first_seq"][ids] < c.seq)][:64]:
            p = int(p)
            findings.append(Finding(
                cid, c.seq, int(pages["gfn"][p]), c.slot,
                f"{c.kind} of slot {c.slot} (gfns {c.old_base_gfn:#x}+{c.old_npages:#x}) left shadow page {p} "
                f"(gfn {int(pages['gfn'][p]):#x} role {int(pages['role'][p]):#x}) alive; "
                f"{RULE_WORDS[ctx.profile.slot_zap_rule]}",
                [int(pages["first_seq"][p]), c.window_start, c.seq]))
    rule = RULE_WORDS[ctx.profile.slot_zap_rule]
    return CheckOutcome.of(cid, findings, f"{len(removals)} zap-slot delete/move(s) checked with the {rule}",
                           f"rule applied: {rule}")
