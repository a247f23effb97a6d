"""Kernel eras as data: what each x86 KVM release does when a memslot is deleted or moved, which
zap tracepoints it has, and which role / SPTE / MMIO layouts it uses, each fact with its source.

Why a table: the 2019 per-memslot zap was first modelled from a *proposal* in its mailing-list
thread (the level+1 alignment mask; docs/threads.md §1) instead of from the code that shipped, and
nothing said so. Here each rule names the kernel file and function it comes from, the releases it
applies to, whether it ever shipped, and how the fact was checked (:class:`Checked`), so a report
can say which rule it applied and why. :mod:`profiles` keeps the bit layouts themselves; this
module says where they come from.

Release boundaries below the minor version matter once: 4e103134b862 (per-memslot zap, 5.1) was
reverted in 5.2.11 stable (d012a06ab1d2, back to ``kvm_mmu_zap_all``) and fast invalidation came
back in 5.2.16 / 5.3 (002c5f73c508) without its tracepoint, which returned renamed in 5.4.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from enum import StrEnum

from kvmtrace.parsers.errors import TraceError


class Checked(StrEnum):
    """How a fact was checked."""

    SOURCE = "read in the kernel source at that release"
    PATCH = "read in the posted patch or stable-queue mail"
    REFERENCE = "taken from the project's tracepoint reference (docs/tracepoints.md), not re-read"


@dataclass(frozen=True)
class Cite:
    """Where a fact comes from: kernel file, function (or type), the release or commit read."""

    file: str
    function: str
    at: str
    checked: Checked

    def __str__(self) -> str:
        return f"{self.file}: {self.function} ({self.at}; {self.checked.value})"


class Pages(StrEnum):
    """Which shadow pages a memslot-removal rule zaps (leaf SPTEs are :class:`Leaves`)."""

    ALL = "all"  # every page (slow zap-all, or the fast zap's obsolete generation)
    GFN_MATCH = "gfn_match"  # valid pages with sp->gfn inside the slot, any role
    GPTES = "gptes"  # valid indirect, non-passthrough pages with sp->gfn inside the slot
    LEVEL_MASK = "level_mask"  # pages whose gfn lies in the slot aligned to the level above (proposal)


@dataclass(frozen=True)
class ZapRule:
    """What the kernel destroys when a memslot is deleted or moved."""

    name: str
    pages: Pages
    leaves: str  # how leaf SPTEs into the slot go away, and whether that is traced
    kernels: str  # releases that run it ("never" for a proposal)
    shipped: bool
    words: str  # one sentence for findings
    cite: Cite

    def label(self) -> str:
        """The rule as a report names it, saying when it is only a hypothesis."""
        if not self.shipped:
            return f"{self.name} (a hypothesis that never shipped: {self.words})"
        return f"{self.name} ({self.kernels}: {self.words})"


_THREAD_2019 = "the 2019 'Zap only the relevant pages when removing a memslot' thread (kvm@vger; docs/threads.md §1)"
RULES: dict[str, ZapRule] = {r.name: r for r in (
    ZapRule("zap_all", Pages.ALL, "with their pages (each page zap is traced)", "2.6.x-3.10, 5.2.11-5.2.15", True,
            "every shadow page is zapped, one kvm_mmu_prepare_zap_page each",
            Cite("arch/x86/kvm/mmu.c", "kvm_mmu_zap_all()", "5.2.11 (revert d012a06ab1d2); 3.x", Checked.PATCH)),
    ZapRule("zap_all_fast", Pages.ALL, "with their pages, as the obsolete generation is zapped", "3.11-5.0, 5.2.16+",
            True, "mmu_valid_gen is bumped and every page of the old generation is zapped",
            Cite("arch/x86/kvm/mmu/mmu.c", "kvm_mmu_invalidate_zap_pages_in_memslot() -> kvm_mmu_zap_all_fast()",
                 "torvalds/linux@005ba37cb89b (5.6)", Checked.SOURCE)),
    ZapRule("gfn_2019", Pages.GFN_MATCH, "through the rmaps (slot_handle_all_level + kvm_zap_rmapp), untraced",
            "5.1.x, 5.2.0-5.2.10", True,
            "leaf SPTEs leave through the rmaps (untraced); then, for each gfn of the slot, every valid page in "
            "the hash bucket with sp->gfn == gfn is zapped, whatever its role (direct or indirect)",
            Cite("arch/x86/kvm/mmu.c", "kvm_mmu_invalidate_zap_pages_in_memslot() of 4e103134b862",
                 f"5.1; the removed lines of the 2019-08-20 rewrite in {_THREAD_2019}, and the 2024-09-27 "
                 "'fix KVM_X86_QUIRK_SLOT_ZAP_ALL for shadow MMU' mail that reintroduces it", Checked.PATCH)),
    ZapRule("gptes", Pages.GPTES, "through the rmaps on the shadow MMU (untraced); the TDP MMU's leaf zap is traced",
            "6.12+ with KVM_X86_QUIRK_SLOT_ZAP_ALL disabled", True,
            "upstream zap-slot rule: every valid indirect, non-passthrough page whose gfn lies in the slot is zapped "
            "(for_each_gfn_valid_sp_with_gptes), leaf SPTEs through kvm_unmap_gfn_range",
            Cite("arch/x86/kvm/mmu/mmu.c", "kvm_mmu_zap_memslot() / kvm_mmu_zap_memslot_pages_and_flush()",
                 "6.12 (aa8d1f48d353 and the 2024-09/10 shadow-MMU fixes on kvm@vger)", Checked.PATCH)),
    ZapRule("level_mask_2019", Pages.LEVEL_MASK, "with their pages", "never", False,
            "pages of level <= the slot's largest page level whose gfn lies in the slot's range aligned to "
            "512**level (the level+1 mask of the proposed rewrite)",
            Cite("arch/x86/kvm/mmu.c", "proposed kvm_mmu_invalidate_zap_pages_in_memslot() rewrite",
                 f"{_THREAD_2019}; never merged (the fix was the revert to zap-all)", Checked.PATCH)),
)}


@dataclass(frozen=True)
class Era:
    """One stretch of releases with the same memslot-removal behaviour and layouts."""

    first: tuple[int, int, int]
    name: str
    removal: str  # RULES key: what a delete/move does by default
    zap_slot: str | None  # RULES key under the per-slot policy, None where the kernel has none
    zap_events: tuple[str, ...]  # tracepoints a memslot removal can emit
    role: str
    role_cite: Cite
    spte: str
    spte_cite: Cite
    mmio: str
    mmio_cite: Cite


_PAGE = "kvm_mmu_prepare_zap_page"
_KVM_HOST = "arch/x86/include/asm/kvm_host.h"
_ROLE_B = ("B: level 0-3, cr4_pae 4, quadrant 5-6, pad 7-12, direct 13, access 14-16, invalid 17, nxe 18, cr0_wp 19, "
           "smep_andnot_wp 20")
_E0 = Era(
    (2, 6, 35), "2.6.35-3.10", "zap_all", None, ("kvm_mmu_prepare_zap_page (kvm_mmu_zap_page before the rename)",),
    _ROLE_B, Cite(_KVM_HOST, "union kvm_mmu_page_role", "3.6, 3.10.33", Checked.REFERENCE),
    "present: pte & PT_PRESENT_MASK and not MMIO; non-present 0",
    Cite("arch/x86/kvm/mmu.c", "is_shadow_present_pte()", "3.6", Checked.REFERENCE),
    "no MMIO generation in SPTEs (3.1-3.10: MMIO SPTEs carry gfn and access only)",
    Cite("arch/x86/kvm/mmu.c", "mark_mmio_spte()", "3.6", Checked.REFERENCE))
_GEN311 = ("generation bits 0-8 in SPTE bits 3-11, 9-18 in 52-61 (3.17+: bit 0 never stored, update in "
           "progress = odd generation)")
_E311 = replace(_E0, first=(3, 11, 0), name="3.11-4.1", removal="zap_all_fast",
                zap_events=("kvm_mmu_invalidate_zap_all_pages", _PAGE), mmio=_GEN311,
                mmio_cite=Cite("arch/x86/kvm/mmu.c", "generation_mmio_spte_mask()", "3.11 backport, 4.4",
                               Checked.REFERENCE))
_E42 = replace(_E311, first=(4, 2, 0), name="4.2-4.12",
               role="C: level 0-3, cr4_pae 4, quadrant 5-6, direct 7, access 8-10, invalid 11, nxe 12, cr0_wp 13, "
                    "smep_andnot_wp 14, smap_andnot_wp 15, smm 24-31",
               role_cite=Cite(_KVM_HOST, "union kvm_mmu_page_role", "4.4", Checked.REFERENCE))
_E413 = replace(_E42, first=(4, 13, 0), name="4.13-4.19", role=_E42.role + ", ad_disabled 16")
_E420 = replace(_E413, first=(4, 20, 0), name="4.20-5.0", role=_E413.role + ", guest_mode 17")
_GEN501 = ("generation bits 0-8 in SPTE bits 3-11, high part in 52-61 (stored shifted by one until 34c0f6f2695a, "
           "5.10); update in progress = BIT(63) of the memslots generation, checked in check_mmio_spte()")
_E51 = replace(_E420, first=(5, 1, 0), name="5.1-5.2.10 (per-memslot zap of 4e103134b862)", removal="gfn_2019",
               zap_slot="gfn_2019", zap_events=(_PAGE,), mmio=_GEN501,
               mmio_cite=Cite("arch/x86/kvm/mmu.c", "generation_mmio_spte_mask() (cae7ed3c2cb0)", "5.1",
                              Checked.REFERENCE))
_E5211 = replace(_E51, first=(5, 2, 11), name="5.2.11-5.2.15 (revert to kvm_mmu_zap_all)", removal="zap_all",
                 zap_slot=None)
_E5216 = replace(_E5211, first=(5, 2, 16), name="5.2.16-5.3 (fast zap back, untraced)", removal="zap_all_fast")
_E54 = replace(_E5216, first=(5, 4, 0), name="5.4-5.5 (kvm_mmu_zap_all_fast)",
               zap_events=("kvm_mmu_zap_all_fast", _PAGE))
_E56 = replace(_E54, first=(5, 6, 0), name="5.6-5.9",
               spte="present: spte != 0 and not MMIO; MMIO: bits 52-53 == 3 (SPTE_SPECIAL_MASK)",
               spte_cite=Cite("arch/x86/kvm/mmu/mmu.c", "is_mmio_spte(), SPTE_SPECIAL_MASK",
                              "torvalds/linux@005ba37cb89b (5.6)", Checked.SOURCE),
               mmio="generation bits 0-8 in SPTE bits 3-11, 9-17 in 54-62",
               mmio_cite=Cite("arch/x86/kvm/mmu/mmu.c", "generation_mmio_spte_mask()",
                              "torvalds/linux@005ba37cb89b (5.6)", Checked.SOURCE))
_E510 = replace(_E56, first=(5, 10, 0), name="5.10-5.12 (TDP MMU: kvm_tdp_mmu_spte_changed)",
                zap_events=("kvm_mmu_zap_all_fast", _PAGE, "kvm_tdp_mmu_spte_changed"))
_E513 = replace(_E510, first=(5, 13, 0), name="5.13-5.16 (MMU-present bit 11)",
                spte="present: bit 11 (SPTE_MMU_PRESENT_MASK); non-present 0",
                spte_cite=Cite("arch/x86/kvm/mmu/spte.h", "is_shadow_present_pte()", "~5.15 (006100212d7f)",
                               Checked.REFERENCE),
                mmio="generation bits 0-7 in SPTE bits 3-10, 8-18 in 52-62",
                mmio_cite=Cite("arch/x86/kvm/mmu/spte.h", "MMIO_SPTE_GEN_LOW/HIGH_*", "~5.15 (006100212d7f)",
                               Checked.REFERENCE))
_E517 = replace(_E513, first=(5, 17, 0), name="5.17-5.18 (has_4_byte_gpte)",
                role=_E420.role.replace("cr4_pae 4", "has_4_byte_gpte 4 (inverted sense)"))
_E519 = replace(_E517, first=(5, 19, 0), name="5.19-6.9 (passthrough)", role=_E517.role + ", passthrough 18",
                role_cite=Cite(_KVM_HOST, "union kvm_mmu_page_role", "~6.8 (004a0aa56ede)", Checked.REFERENCE))
_E610 = replace(_E519, first=(6, 10, 0), name="6.10-6.11 (non-present BIT(63))",
                spte="present: bit 11; non-present SHADOW_NONPRESENT_VALUE = BIT(63)",
                spte_cite=Cite("arch/x86/kvm/mmu/spte.h", "SHADOW_NONPRESENT_VALUE", "6.10", Checked.REFERENCE))
_E612 = replace(_E610, first=(6, 12, 0), name="6.12+ (KVM_X86_QUIRK_SLOT_ZAP_ALL)", zap_slot="gptes")

#: Oldest first; a release belongs to the last era whose ``first`` is <= it.
ERAS: tuple[Era, ...] = (_E0, _E311, _E42, _E413, _E420, _E51, _E5211, _E5216, _E54, _E56, _E510, _E513, _E517,
                         _E519, _E610, _E612)

_RELEASE = re.compile(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?")


def release(kernel: str) -> tuple[int, int, int] | None:
    """``"5.2.11-arch1"`` -> (5, 2, 11); ``"6.12"`` -> (6, 12, 0); None when not MAJOR.MINOR[...]."""
    m = _RELEASE.match(kernel)
    return (int(m[1]), int(m[2]), int(m[3] or 0)) if m else None


def era_for(version: tuple[int, int, int] | None) -> Era:
    """The era of a release (None: the newest, as for a trace that names no kernel)."""
    if version is None:
        return ERAS[-1]
    found = ERAS[0]
    for era in ERAS:
        if era.first <= version:
            found = era
    return found


def rule(name: str) -> ZapRule:
    """A rule by name, with the known names in the error (the ``zap_rule=`` parameter)."""
    try:
        return RULES[name]
    except KeyError:
        raise TraceError(f"unknown zap rule {name!r}; known: {', '.join(RULES)}") from None
