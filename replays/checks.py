"""The one registry of every check the replay runs: id, severity, meaning, the events it needs, the
kernels it applies to.

Why one table: the README's finding table, the JSON schema's enums, the report's ``not_evaluated``
reasons and the detectors' severities were each written by hand in a different place and drifted.
Everything that names a check reads it from :data:`CHECKS` (after Perfetto's ``stats.h``: one
registry of every diagnostic with its name, severity and meaning). The meanings are the contract
of ``docs/checks.md``; the kernel facts behind them are cited in the detectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Severity(StrEnum):
    """How bad a finding is. ``error`` is what ``--fail-on error`` gates on."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


class Status(StrEnum):
    """What one check concluded on one trace."""

    PASSED = "passed"
    FAILED = "failed"
    NOT_EVALUATED = "not_evaluated"


class MmuKind(StrEnum):
    """Which KVM MMU produced the trace."""

    SHADOW = "shadow"
    TDP = "tdp"  # the TDP MMU (tdp_mmu=Y)
    LEGACY_TDP = "legacy_tdp"  # the legacy MMU with EPT/NPT (tdp_mmu=0, or kernels before 5.10)
    UNKNOWN = "unknown"


class ZapPolicy(StrEnum):
    """What KVM does to shadow pages when a memslot is deleted or moved."""

    ZAP_ALL = "zap_all"
    ZAP_SLOT = "zap_slot"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Check:
    """One check: its finding id, the severity of its findings, what a finding means, the events
    without which it cannot be evaluated, and the kernels whose behaviour it describes."""

    id: str
    severity: Severity
    meaning: str
    requires: tuple[str, ...]
    kernels: str


CHECKS: tuple[Check, ...] = (
    Check(
        "dangling_spte", Severity.ERROR,
        "after a memslot delete or move completed, a leaf SPTE still maps a gfn of the old range and "
        "no traced or provable zap removed it",
        ("kvm_mmu_set_spte|kvm_tdp_mmu_spte_changed", "memslot changes"),
        "all; exact on the TDP MMU, on the shadow MMU only where the zap policy is traced (zap-all)",
    ),
    Check(
        "memslot_zap_miss", Severity.ERROR,
        "a delete or move under a per-slot zap policy left alive a shadow page that the running "
        "kernel's rule must zap",
        ("kvm_mmu_get_page", "kvm_mmu_prepare_zap_page", "memslot changes"),
        "5.1-5.2.10 (4e103134b862) and 6.12+ with KVM_X86_QUIRK_SLOT_ZAP_ALL disabled",
    ),
    Check(
        "spte_for_unmapped_gfn", Severity.ERROR,
        "a present leaf SPTE was installed for a gfn no live memslot covers, outside any update window",
        ("kvm_mmu_set_spte|kvm_tdp_mmu_spte_changed", "memslot changes"),
        "all",
    ),
    Check(
        "obsolete_sp_used", Severity.ERROR,
        "after kvm_mmu_zap_all_fast, a shadow page of the obsolete generation was returned as existing "
        "or got new SPTEs",
        ("kvm_mmu_get_page", "kvm_mmu_zap_all_fast"),
        "3.11+ (fast invalidate, mmu_valid_gen)",
    ),
    Check(
        "dirty_bit_lost", Severity.ERROR,
        "a present writable+dirty leaf SPTE was overwritten for the same pfn with Dirty clear, and no "
        "racing fault, dirty-log clear or untraced kernel path explains it",
        ("kvm_tdp_mmu_spte_changed",),
        "TDP MMU (5.10+); KVM's own D clears (dirty logging) are traced on every release",
    ),
    Check(
        "dirty_bit_race", Severity.INFO,
        "two vCPUs faulted on the same gfn; the second, resolving its own fault, rewrote the first one's "
        "W=1,D=1 SPTE with W=1,D=0 for the same pfn (make_spte() leaves Dirty clear when the old SPTE is "
        "writable; handle_changed_spte() marks the old pfn dirty, dirty-log clearing flushes TLBs): benign",
        ("kvm_tdp_mmu_spte_changed", "kvm_mmu_spte_requested"),
        "TDP MMU 5.10-6.12; from 6.13 (386d69f9f29b) such a fault is spurious and rewrites nothing",
    ),
    Check(
        "stale_mmio_spte", Severity.ERROR,
        "an MMIO SPTE older than the memslot generation was treated as valid, or an MMIO fault was "
        "handled for a gfn a live memslot covers",
        ("mark_mmio_spte|handle_mmio_page_fault", "memslot changes"),
        "3.10+ (MMIO generation in SPTEs)",
    ),
    Check(
        "fault_in_update_window", Severity.WARNING,
        "a vCPU's fault found no memslot between a delete and the re-creation of its range, so the guest's "
        "RAM access became an MMIO exit to the VMM (DELETE and CREATE are not atomic); or a fault or SPTE "
        "found a page of a slot the kernel was already removing (KVM_MEMSLOT_INVALID)",
        ("kvm_mmu_set_spte|kvm_tdp_mmu_spte_changed|kvm_mmu_pagetable_walk", "memslot changes"),
        "all",
    ),
    Check(
        "zap_of_unknown_sp", Severity.INFO,
        "kvm_mmu_prepare_zap_page for a page never seen created; normal for traces that start late",
        ("kvm_mmu_prepare_zap_page",),
        "all",
    ),
)

#: id -> Check
BY_ID: dict[str, Check] = {c.id: c for c in CHECKS}
#: every check id, in report order
CHECK_IDS: tuple[str, ...] = tuple(c.id for c in CHECKS)
#: id -> severity of its findings
SEVERITY: dict[str, Severity] = {c.id: c.severity for c in CHECKS}


def markdown_table() -> str:
    """The registry as the README's check table (a test keeps the README equal to it)."""
    rows = ["| id | severity | meaning | kernels |", "| --- | --- | --- | --- |"]
    rows += [f"| `{c.id}` | {c.severity} | {c.meaning} | {c.kernels} |" for c in CHECKS]
    return "\n".join(rows)
