"""Page generations and identities: ``obsolete_sp_used`` and ``zap_of_unknown_sp``.

After ``kvm_mmu_zap_all_fast`` the kernel's page lookup skips every page of the old generation
(``for_each_valid_sp`` checks ``is_obsolete_sp``) and a fault that finds its root obsolete retries,
so an obsolete page must never be returned as ``existing`` nor receive a new SPTE. The model records
both facts as it walks; this module only words them.
"""

from __future__ import annotations

from kvmtrace.replays.detectors.context import Context
from kvmtrace.replays.findings import CheckOutcome, Finding
from kvmtrace.replays.journal import ROOT_FREED, ROOT_IN_USE


def detect(ctx: Context) -> list[CheckOutcome]:
    return [_obsolete(ctx), _unknown(ctx)]


def _obsolete(ctx: Context) -> CheckOutcome:
    cid = "obsolete_sp_used"
    if ctx.mmu == "tdp":
        return CheckOutcome.skipped(cid, "the TDP MMU invalidates roots instead of using page generations")
    if ctx.mmu == "unknown":
        return CheckOutcome.skipped(cid, "no shadow-page events")
    if not len(ctx.zap_all_seqs):
        return CheckOutcome.skipped(cid, "no kvm_mmu_zap_all_fast in the trace: no page became obsolete")
    findings = [Finding(cid, seq, gfn, None, msg, ev) for seq, gfn, _, ev, msg in ctx.journal.obsolete_uses]
    return CheckOutcome.of(cid, findings, f"{len(ctx.zap_all_seqs)} zap-all generation change(s); no obsolete page "
                                          "was returned or given SPTEs")


def _unknown(ctx: Context) -> CheckOutcome:
    cid = "zap_of_unknown_sp"
    findings = [Finding(cid, seq, gfn, None, _unknown_words(gfn, role, kind), [seq])
                for seq, gfn, role, kind in ctx.journal.unknown_zaps]
    return CheckOutcome.of(cid, findings, "every zapped page was seen before its zap, and every invalid root's "
                                          "final zap followed its first")


def _unknown_words(gfn: int, role: int, kind: str) -> str:
    """What a zap of a page the trace never showed was, in mmu.c's terms (see ShadowModel.zap_page)."""
    page = f"kvm_mmu_prepare_zap_page of page gfn {gfn:#x} role {role:#x}"
    if kind == ROOT_FREED:
        return (f"{page}: the final free of an invalid root (role.invalid set, root_count 0). Its first zap, made "
                "while vCPUs still used it, only marked it invalid; mmu_free_root_page zaps it again when the last "
                "vCPU drops it (typically after kvm_mmu_zap_all_fast). That first zap predates the trace start")
    if kind == ROOT_IN_USE:
        return (f"{page}: a root still used by vCPUs (root_count > 0), created before the trace started; this zap "
                "marks it invalid, and its final free follows when the last vCPU drops it")
    return f"{page} never seen before: it was created before the trace started"
