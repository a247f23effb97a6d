"""Which checks the input can decide at all: a check whose evidence cannot be in the trace is
``not_evaluated`` with the reason, whatever its detector concluded.

Why a gate after the detectors rather than a test in each: a trace recorded with fewer events
enabled (``-e kvmmmu:kvm_mmu_set_spte``), or filtered by event type afterwards, lacks whole
kinds of evidence, and the detectors read the model's facts, not the trace: a model that saw no
``kvm_mmu_prepare_zap_page`` keeps every shadow page alive and so every SPTE too, and a detector
would read that as SPTEs left dangling. What a missing event type hides depends on the MMU, so the
requirements are the registry's (replays/checks.py) plus, per MMU, the events the model itself
needs to reach the facts the check reads.

An event type counts as present when the reader produced its table, even an empty one: trace.dat
files carry the format of every event that was enabled, so an empty table means "enabled, never
fired" — evidence of absence. Text input only has tables for events that occur, so there an
event that never fired cannot be told from one that was not recorded, and the check says so.
"""

from __future__ import annotations

from collections.abc import Mapping

from kvmtrace.parsers.schema import TraceData
from kvmtrace.replays.checks import CHECKS, MmuKind
from kvmtrace.replays.findings import CheckOutcome

#: Registry requirements that are not event names: the layout, known or not.
NOT_EVENTS = frozenset({"memslot changes"})

#: What the shadow-MMU model needs beyond the registry, per check: SPTE lifetimes end at their
#: owning page's zap (kvm_mmu_prepare_zap_page) and owners are found through the lookups
#: (kvm_mmu_get_page); without them every SPTE ever installed would look alive.
SHADOW_NEEDS: dict[str, tuple[str, ...]] = {
    "dangling_spte": ("kvm_mmu_get_page", "kvm_mmu_prepare_zap_page"),
    "obsolete_sp_used": ("kvm_mmu_prepare_zap_page", "kvm_mmu_set_spte"),
    "spte_for_unmapped_gfn": ("kvm_mmu_set_spte",),
}
#: Needs on every MMU beyond the registry: a zap of a page "never seen" means something only if
#: the lookups that would have shown it were recorded.
ALWAYS_NEEDS: dict[str, tuple[str, ...]] = {
    "zap_of_unknown_sp": ("kvm_mmu_get_page",),
}
#: What each event is needed for, for the reason text.
WHY = {
    "kvm_mmu_prepare_zap_page": "page zaps end the lifetime of a page and of its SPTEs",
    "kvm_mmu_get_page": "page lookups tell which page owns an SPTE and which pages exist",
    "kvm_mmu_set_spte": "the shadow MMU's leaf installs",
    "kvm_mmu_zap_all_fast": "the fast zap-all changes the page generation",
    "kvm_tdp_mmu_spte_changed": "the TDP MMU's SPTE changes",
    "kvm_mmu_spte_requested": "the faults that requested an SPTE",
    "mark_mmio_spte": "MMIO SPTEs and their generations",
}


def _required(check_id: str, registry: tuple[str, ...], mmu: str) -> list[tuple[str, ...]]:
    """Groups of alternatives (one of each group must be present) for ``check_id`` on ``mmu``."""
    groups = [tuple(r.split("|")) for r in registry if r not in NOT_EVENTS]
    extra = ALWAYS_NEEDS.get(check_id, ())
    if mmu in (MmuKind.SHADOW, MmuKind.LEGACY_TDP):
        extra += SHADOW_NEEDS.get(check_id, ())
    return groups + [(e,) for e in extra]


#: Why a check that needs the memslot layout cannot run without one.
NO_LAYOUT = ("memslot layout unknown: no kvm_set_user_memory lines in the trace (QEMU writes them with "
             "-trace kvm_set_user_memory); pass --qemu-log or --memslots")


def absent_evidence(data: TraceData, mmu: str, layout_known: bool,
                    unusable: Mapping[str, str] | None = None) -> dict[str, str]:
    """Check id -> why it cannot be evaluated, for the checks whose events are not in ``data``
    or are there but ``unusable`` (event -> why, e.g. page zaps printed without their gfn), and
    (``layout_known`` False) the checks that judge against the memslot layout."""
    where = ("text output lists only events that occurred" if data.info.source == "text"
             else "not recorded, or filtered out")
    unusable = unusable or {}
    out: dict[str, str] = {}
    for check in CHECKS:
        why = []
        groups = _required(check.id, check.requires, mmu)
        missing = [g for g in groups if not any(e in data.tables for e in g)]
        if missing:
            names = "; ".join(" or ".join(g) for g in missing)
            whys = "; ".join(WHY[g[0]] for g in missing if g[0] in WHY)
            why.append(f"not in this input ({where}): {names}" + (f" ({whys})" if whys else ""))
        for g in groups:
            if g not in missing and all(e in unusable for e in g if e in data.tables):
                why += [f"{e} {unusable[e]}" for e in g if e in data.tables]
        if not layout_known and "memslot changes" in check.requires:
            why.append(NO_LAYOUT)
        if why:
            out[check.id] = "; ".join(why)
    return out


def gate(outcomes: list[CheckOutcome], absent: dict[str, str]) -> list[CheckOutcome]:
    """The detectors' outcomes, with every check of ``absent`` ``not_evaluated`` (also the ones no
    detector produced)."""
    kept = [o for o in outcomes if o.id not in absent]
    return kept + [CheckOutcome.skipped(cid, why) for cid, why in absent.items()]
