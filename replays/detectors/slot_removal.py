"""What a memslot delete or move left alive: ``dangling_spte`` (shadow pages the per-slot rule
must zap, ``memslot_zap_miss``, live in :mod:`zap_rules`).

It reads the model's snapshot taken just after the change's QEMU line (by then the ioctl has
returned, so every zap the kernel owed is done).

* ``dangling_spte``: a present leaf SPTE still maps a gfn of the old range. Exact on the TDP MMU
  (every leaf zap is traced; entries of roots invalidated by a zap-all are unreachable and not
  counted). On the shadow MMU only where a zap-all was owed (the VM's policy is zap-all), since
  then every page of the old generation must be zapped, and only for SPTEs whose owning page the
  model could infer.
"""

from __future__ import annotations

import numpy as np

from kvmtrace.replays.detectors.context import Context, span
from kvmtrace.replays.findings import CheckOutcome, Finding
from kvmtrace.replays.pages import NONE

SHADOW_KINDS = ("shadow", "legacy_tdp")


def detect(ctx: Context) -> list[CheckOutcome]:
    return [_dangling(ctx)]


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
