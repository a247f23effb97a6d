"""What a memslot delete or move left alive: ``dangling_spte`` and ``memslot_zap_miss``.

Both read the model's snapshot taken just after the change's QEMU line (by then the ioctl has
returned, so every zap the kernel owed is done).

* ``dangling_spte``: a present leaf SPTE still maps a gfn of the old range. Exact on the TDP MMU
  (every leaf zap is traced; entries of roots invalidated by a zap-all are unreachable and not
  counted). On the shadow MMU only where a zap-all was owed (the VM's policy is zap-all), since
  then every page of the old generation must be zapped, and only for SPTEs whose owning page the
  model could infer.
* ``memslot_zap_miss``: under the zap-slot policy (no zap-all in the window), a live, valid shadow
  page the kernel's rule must zap. Upstream rule ("gptes", 6.12+): indirect, non-passthrough pages
  whose gfn lies in the slot (kvm_mmu_zap_memslot_pages_and_flush). 2019 range rule (seed 000):
  every page whose gfn lies in ``[base & mask, last & mask]``, ``mask = ~(512**level - 1)``.
"""

from __future__ import annotations

import numpy as np

from kvmtrace.replays.detectors.context import Context, span
from kvmtrace.replays.findings import CheckOutcome, Finding
from kvmtrace.replays.pages import NONE

SHADOW_KINDS = ("shadow", "legacy_tdp")


def detect(ctx: Context) -> list[CheckOutcome]:
    return [_dangling(ctx), _zap_miss(ctx)]


def _overlapping(snap, base: int, npages: int) -> np.ndarray:
    lo = snap.gfn
    hi = lo + span(snap.level)
    return (lo < np.uint64(base + npages)) & (hi > np.uint64(base))


def _dangling(ctx: Context) -> CheckOutcome:
    cid = "dangling_spte"
    removals = ctx.positioned_removals()
    if not removals:
        return CheckOutcome.skipped(cid, "no memslot delete or move with a position in the trace")
    if ctx.mmu not in ("tdp",) + SHADOW_KINDS:
        return CheckOutcome.skipped(cid, "no SPTE events to replay")
    findings: list[Finding] = []
    checked = unverifiable = skipped_slot = 0
    reported: set[tuple[int, int, int, int]] = set()  # (as_id, level, gfn, install seq)
    # a sentinel row at the end: owner NONE (-1) indexes it, so a trace without pages is no special case
    zap_seq = np.append(np.asarray(ctx.pages.zap_seq, dtype=np.int64), NONE)
    for i, c in removals:
        snap = ctx.journal.snapshots.get((i, "end"))
        if snap is None:
            continue
        hit = _overlapping(snap, c.old_base_gfn, c.old_npages) & ~snap.obsolete_root
        if ctx.mmu in SHADOW_KINDS:
            if not ctx.expects_zap_all(c):
                skipped_slot += 1  # zap-slot: leaf SPTEs leave through untraced rmap zaps
                continue
            unknown = hit & (snap.owner == NONE)
            unverifiable += int(unknown.sum())
            owner = snap.owner
            alive = (snap.owner != NONE) & ((zap_seq[owner] == NONE) | (zap_seq[owner] > c.seq))
            hit &= alive
        checked += 1
        for k in np.flatnonzero(hit)[:64]:
            gfn, level = int(snap.gfn[k]), int(snap.level[k])
            spte = (int(snap.as_id[k]), level, gfn, int(snap.installed[k]))
            if spte in reported:
                continue  # the same stale SPTE, still there at a later delete: one missing zap, one finding
            reported.add(spte)
            findings.append(Finding(
                cid, c.seq, gfn, c.slot,
                f"after {c.kind} of slot {c.slot} (gfns {c.old_base_gfn:#x}+{c.old_npages:#x}) a level-{level} "
                f"leaf SPTE for gfn {gfn:#x} installed at seq {int(snap.installed[k])} is still present: KVM zaps "
                "the old range before the delete or move completes (kvm_arch_flush_shadow_memslot), and no "
                "traced or provable zap removed this SPTE",
                [int(snap.installed[k]), c.window_start, c.seq]))
    if not checked:
        return CheckOutcome.skipped(cid, "every delete/move ran under the zap-slot policy, whose leaf zaps the "
                                         "shadow MMU does not trace")
    note = f"{checked} delete/move(s) checked"
    if skipped_slot:
        note += f"; {skipped_slot} under zap-slot not checkable (untraced rmap zaps)"
    if unverifiable:
        note += f"; {unverifiable} SPTE(s) in range with no inferable owner page not judged"
    return CheckOutcome.of(cid, findings, note + ", no SPTE left in a removed range", note)


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
