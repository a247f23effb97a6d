"""What a memslot delete or move left alive: ``dangling_spte`` (shadow pages the per-slot rule
must zap, ``memslot_zap_miss``, live in :mod:`zap_rules`).

It reads the model's snapshot taken just after the change's QEMU line (by then the ioctl has
returned, so every zap the kernel owed is done).

* ``dangling_spte``: a present leaf SPTE still maps a gfn of the old range. Exact on the TDP MMU
  (every leaf zap is traced; entries of roots invalidated by a zap-all are unreachable and not
  counted). On the shadow MMU only where a zap-all was owed (the VM's policy is zap-all), since
  then every page of the old generation must be zapped, and only for SPTEs whose owning page the
  model could infer. On the legacy MMU in TDP mode under zap-slot the leaf zaps are untraced; what
  the guest did next proves or disproves each removal (:mod:`leaf_proof`): a re-install or a
  not-present fault proves it, a fault on a present entry nothing re-installed is a dangling leaf,
  and a range the guest never touched again is named as not provable.
"""

from __future__ import annotations

import numpy as np

from kvmtrace.parsers.spilled import releasing
from kvmtrace.replays.detectors.context import Context, span
from kvmtrace.replays.findings import CheckOutcome, Finding
from kvmtrace.replays.journal import Leaves
from kvmtrace.replays.leaf_proof import DANGLING, PROVED, UNPROVABLE, LeafFate
from kvmtrace.replays.pages import NONE

SHADOW_KINDS = ("shadow", "legacy_tdp")
#: leaves named per fate and change in the check's reason
SHOWN = 3


def detect(ctx: Context) -> list[CheckOutcome]:
    return [_dangling(ctx)]


def _overlapping(leaves: Leaves, base: int, npages: int) -> np.ndarray:
    lo = leaves.gfn
    hi = lo + span(leaves.level)
    hit: np.ndarray = (lo < np.uint64(base + npages)) & (hi > np.uint64(base))
    return hit


def _dangling(ctx: Context) -> CheckOutcome:
    cid = "dangling_spte"
    removals = ctx.positioned_removals()
    if not removals:
        return CheckOutcome.skipped(cid, "no memslot delete or move with a position in the trace")
    if ctx.mmu not in ("tdp", *SHADOW_KINDS):
        return CheckOutcome.skipped(cid, "no SPTE events to replay")
    findings: list[Finding] = []
    checked = unverifiable = skipped_slot = 0
    slot_fates = ctx.untraced_leaf_fates
    reported: set[tuple[int, int, int, int]] = set()  # (as_id, level, gfn, install seq)
    # a sentinel row at the end: owner NONE (-1) indexes it, so a trace without pages is no special case
    zap_seq = np.append(ctx.pages.column("zap_seq"), NONE)
    for i, c in releasing(removals, every=64):  # each reads a snapshot's leaves (on disk when long)
        snap = ctx.journal.snapshots.get((i, "end"))
        if snap is None:
            continue
        # a positioned removal: its line, window and old range are known
        assert c.seq is not None and c.window_start is not None
        assert c.old_base_gfn is not None and c.old_npages is not None
        leaves = snap.leaves()
        hit = _overlapping(leaves, c.old_base_gfn, c.old_npages) & ~leaves.obsolete_root
        if ctx.mmu in SHADOW_KINDS:
            if not ctx.expects_zap_all(c):
                # zap-slot: leaf SPTEs leave through untraced rmap zaps; on legacy TDP the guest's
                # next accesses judge them (slot_fates)
                skipped_slot += ctx.mmu != "legacy_tdp"
                continue
            unknown = hit & (leaves.owner == NONE)
            unverifiable += int(unknown.sum())
            owner = leaves.owner
            alive = (leaves.owner != NONE) & ((zap_seq[owner] == NONE) | (zap_seq[owner] > c.seq))
            hit &= alive
        checked += 1
        for k in np.flatnonzero(hit)[:64]:
            gfn, level = int(leaves.gfn[k]), int(leaves.level[k])
            spte = (int(leaves.as_id[k]), level, gfn, int(leaves.installed[k]))
            if spte in reported:
                continue  # the same stale SPTE, still there at a later delete: one missing zap, one finding
            reported.add(spte)
            findings.append(Finding(
                cid, c.seq, gfn, c.slot,
                f"after {c.kind} of slot {c.slot} (gfns {c.old_base_gfn:#x}+{c.old_npages:#x}) a level-{level} "
                f"leaf SPTE for gfn {gfn:#x} installed at seq {int(leaves.installed[k])} is still present: KVM zaps "
                "the old range before the delete or move completes (kvm_arch_flush_shadow_memslot), and no "
                "traced or provable zap removed this SPTE",
                [int(leaves.installed[k]), c.window_start, c.seq]))
    proved = _judge_untraced(slot_fates, findings, reported)
    if not checked and not proved:
        if slot_fates:
            return CheckOutcome.skipped(cid, "zap-slot on the legacy MMU (leaf zaps untraced): "
                                        + _per_change(slot_fates))
        return CheckOutcome.skipped(cid, "every delete/move ran under the zap-slot policy, whose leaf zaps the "
                                         "shadow MMU does not trace")
    note = f"{checked} delete/move(s) checked"
    if slot_fates:
        note = (f"{note}; " if checked else "") + "zap-slot on the legacy MMU (leaf zaps untraced), from what the " \
            "guest did next: " + _per_change(slot_fates)
    if skipped_slot:
        note += f"; {skipped_slot} under zap-slot not checkable (untraced rmap zaps)"
    if unverifiable:
        note += f"; {unverifiable} SPTE(s) in range with no inferable owner page not judged"
    return CheckOutcome.of(cid, findings, note + (", no SPTE left in a removed range" if checked else ""), note)


def _judge_untraced(fates: list[LeafFate], findings: list[Finding], reported: set[tuple[int, int, int, int]]) -> int:
    """Findings for proven dangling leaves; returns how many leaves were judged either way."""
    judged = 0
    for f in fates:
        if f.fate == DANGLING and (0, f.level, f.gfn, f.installed) not in reported:
            reported.add((0, f.level, f.gfn, f.installed))
            findings.append(Finding("dangling_spte", f.change_seq, f.gfn, f.slot, f.detail, list(f.evidence)))
        judged += f.fate in (DANGLING, PROVED)
    return judged


def _per_change(fates: list[LeafFate]) -> str:
    """Per delete/move, which leaves the trace proves removed and which it cannot judge, and why
    (the first few of each; every leaf is a row of the consequences table)."""
    by: dict[int, list[LeafFate]] = {}
    for f in fates:
        by.setdefault(f.change_seq, []).append(f)
    parts = []
    for seq, fs in sorted(by.items()):
        words = []
        for kind, label in ((PROVED, "proved removed"), (DANGLING, "dangling"), (UNPROVABLE, "not provable")):
            mine = [f for f in fs if f.fate == kind]
            if mine:
                more = f" (+{len(mine) - SHOWN} more)" if len(mine) > SHOWN else ""
                words.append(f"{len(mine)} {label}: " + "; ".join(f"{f.leaf}: {f.detail}" for f in mine[:SHOWN]) + more)
        parts.append(f"{seq} ({fs[0].change_kind}): " + " / ".join(words))
    proved = sum(f.fate == PROVED for f in fates)
    dangling = sum(f.fate == DANGLING for f in fates)
    return (f"{proved} of {len(fates)} leaf removal(s) proved, {dangling} dangling, "
            f"{len(fates) - proved - dangling} not provable; per change seq: " + " | ".join(parts))
