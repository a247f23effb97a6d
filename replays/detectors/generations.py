"""Page generations and identities: ``obsolete_sp_used`` and ``zap_of_unknown_sp``.

After ``kvm_mmu_zap_all_fast`` the kernel's page lookup skips every page of the old generation
(``for_each_valid_sp`` checks ``is_obsolete_sp``) and a fault that finds its root obsolete retries,
so an obsolete page must never be returned as ``existing`` nor receive a new SPTE. The model records
both facts as it walks; this module only words them.
"""

from __future__ import annotations

from kvmtrace.replays.detectors.context import Context
from kvmtrace.replays.findings import CheckOutcome, Finding


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
    findings = [
        Finding(cid, seq, gfn, None, f"kvm_mmu_prepare_zap_page of page gfn {gfn:#x} role {role:#x} never seen "
                                     "before (it predates the trace start)", [seq])
        for seq, gfn, role in ctx.journal.unknown_zaps
    ]
    return CheckOutcome.of(cid, findings, "every zapped page was seen before its zap")
