"""What the pfn of a fault says: a page of RAM, no memslot, or an error (include/linux/kvm_host.h).

``kvm_mmu_spte_requested`` prints the fault's ``pfn``, and KVM encodes in it what it found. A
normal pfn has its top 12 bits clear. ``KVM_PFN_NOSLOT`` (bit 63) means no memslot covers the
gfn: KVM then installs an MMIO SPTE (with MMIO caching) or emulates, i.e. the access exits to the
VMM as MMIO. Error pfns (``KVM_PFN_ERR_MASK``, bits 52-62) mean a memslot covers the gfn but its
host page could not be had. The values only ever grew: FAULT, HWPOISON and RO_FAULT are old,
SIGPENDING came with interruptible faults (2022), NEEDS_IO with the kvm_follow_pfn rework (2024);
none was renumbered, so one table decodes every era. ``kvm_pfn_t`` is 64 bits on every host.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

KVM_PFN_ERR_MASK = 0x7FF << 52
KVM_PFN_ERR_NOSLOT_MASK = 0xFFF << 52
KVM_PFN_NOSLOT = 1 << 63

#: error pfn -> its name in kvm_host.h
ERROR_NAMES: dict[int, str] = {
    KVM_PFN_ERR_MASK: "KVM_PFN_ERR_FAULT",
    KVM_PFN_ERR_MASK + 1: "KVM_PFN_ERR_HWPOISON",
    KVM_PFN_ERR_MASK + 2: "KVM_PFN_ERR_RO_FAULT",
    KVM_PFN_ERR_MASK + 3: "KVM_PFN_ERR_SIGPENDING",
    KVM_PFN_ERR_MASK + 4: "KVM_PFN_ERR_NEEDS_IO",
}


class PfnKind(IntEnum):
    """What KVM found for a gfn."""

    RAM = 0  # a host page of the memslot
    NOSLOT = 1  # no memslot: the access becomes MMIO
    ERROR = 2  # a memslot, but no host page (is_error_pfn)


def kinds(pfn: np.ndarray) -> np.ndarray:
    """:class:`PfnKind` codes (int8) of an array of pfns, as is_noslot_pfn()/is_error_pfn() tell them."""
    pfn = np.asarray(pfn, dtype=np.uint64)
    out = np.full(len(pfn), PfnKind.RAM, dtype=np.int8)
    out[(pfn & np.uint64(KVM_PFN_ERR_MASK)) != 0] = PfnKind.ERROR
    out[pfn == np.uint64(KVM_PFN_NOSLOT)] = PfnKind.NOSLOT
    return out


def name(pfn: int) -> str:
    """``KVM_PFN_NOSLOT``, the error's name, or the pfn in hex."""
    if pfn == KVM_PFN_NOSLOT:
        return "KVM_PFN_NOSLOT"
    if pfn & KVM_PFN_ERR_MASK:
        return ERROR_NAMES.get(pfn, f"error pfn {pfn:#x}")
    return f"pfn {pfn:#x}"
