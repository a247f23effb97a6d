"""What the replay and its report read of a trace, declared in one place.

An analysis reads every row of a few events (the MMU model's, the faults, the memslot lines, the
exits and notifier calls that place and explain them) and only a digest of the rest
(:mod:`kvmtrace.replays.digest`). Declaring the first set lets a long trace be read in windows
keeping just those rows (``kvmtrace analyze`` on a large trace.dat), the way an analysis in LISA
names the events it requires. The equivalence tests hold the declaration to the code: every
sample and recording gives the same replay and report from a read that keeps only these events.
"""

from __future__ import annotations

from kvmtrace.replays.inputs import KVMMMU_EVENTS

#: The guest page-table walker's events: most of a shadow-paged trace, read only as a digest.
WALK_EVENTS = ("kvm_mmu_pagetable_walk", "kvm_mmu_paging_element", "kvm_mmu_set_accessed_bit",
               "kvm_mmu_set_dirty_bit", "kvm_mmu_walker_error")
#: The fault every mapping emits (kvm_mmu_spte_requested), and trace_marker lines (memslot lines).
FAULT_EVENT = "kvm_mmu_spte_requested"
PRINT_EVENT = "print"
#: MMU-notifier calls: what the host's mm asked of KVM (placement and leaf evidence read them).
NOTIFIER_EVENTS = frozenset({"kvm_unmap_hva_range", "kvm_set_spte_hva", "kvm_age_hva", "kvm_test_age_hva",
                             "kvm_age_gfn", "kvm_test_age_gfn", "kvm_set_spte_gfn"})
#: Events read row by row besides the kvmmmu system's: memslot lines, the leaf evidence (hardware
#: faults, MMIO exits) and the notifier calls.
KEPT_OTHER_EVENTS = frozenset({PRINT_EVENT, "kvm_mmio", "kvm_page_fault"}) | NOTIFIER_EVENTS
#: Read row by row too where a QEMU log's lines are placed: when a vCPU thread leaves KVM_RUN and
#: comes back (:mod:`kvmtrace.replays.placement`). ``kvm_entry`` is a large part of a trace with
#: hardware exits traced, so only an analysis with a QEMU log keeps them.
LOG_EVENTS = frozenset({"kvm_userspace_exit", "kvm_entry"})
#: Events of which an analysis reads only a field, gathered by the digest a window at a time:
#: ``kvm_entry``'s ``vcpu_id`` (which thread is which vCPU) and ``kvm_exit``'s ``isa`` (the vendor).
DIGESTED_EVENTS = frozenset({"kvm_entry", "kvm_exit"})


def keeps(name: str, system: str | None) -> bool:
    """Whether an analysis reads the rows of event ``name`` (of ``system``, where the reader says):
    every kvmmmu event but the walker's, and :data:`KEPT_OTHER_EVENTS`."""
    bare = name.split(":", 1)[-1]
    if bare in WALK_EVENTS:
        return False
    return bare in KEPT_OTHER_EVENTS or bare in KVMMMU_EVENTS or system == "kvmmmu"


def keeps_with_log(name: str, system: str | None) -> bool:
    """:func:`keeps` for an analysis with a QEMU log: also :data:`LOG_EVENTS`."""
    return keeps(name, system) or name.split(":", 1)[-1] in LOG_EVENTS


def decodes(name: str, system: str | None) -> bool:
    """Whether a windowed read for an analysis decodes event ``name``'s fields: the kept events'
    and those the digest reads (:data:`DIGESTED_EVENTS`)."""
    return keeps(name, system) or name.split(":", 1)[-1] in DIGESTED_EVENTS


def decodes_with_log(name: str, system: str | None) -> bool:
    """:func:`decodes` for an analysis with a QEMU log."""
    return decodes(name, system) or name.split(":", 1)[-1] in LOG_EVENTS
