"""Raw words of a trace decoded the way a KVM maintainer reads them.

The trace carries SPTEs, role words and host pids; a reader of a bug report wants ``pfn 0x10ba01
P W U A D``, ``L2 indirect q0 wux 8-byte`` and ``vCPU 1``. The bit meanings come from the kernel
profile the replay used (:mod:`kvmtrace.replays.profiles`), so a 6.1 EPT trace and a 6.18
shadow trace each decode by their own layout. Nothing here changes an evidence line: decoded
text is printed beside it, so the line itself still greps in the user's copy of the trace.
"""

from __future__ import annotations

import numpy as np

from kvmtrace.replays.ledger import role_text
from kvmtrace.replays.profiles import ROLE_COLUMNS, KernelProfile

#: Bits named in a decoded SPTE, per SPTE flavour: (name, bit). Bit 7 is left out: it is the
#: page size in a non-leaf or large leaf but PAT in a 4 KiB leaf, and the value alone cannot say.
_SHADOW_BITS = (("P", 0), ("W", 1), ("U", 2), ("A", 5), ("D", 6), ("NX", 63))
_EPT_BITS = (("R", 0), ("W", 1), ("X", 2), ("A", 8), ("D", 9))


def spte_text(value: int, profile: KernelProfile) -> str:
    """``pfn 0x10ba01 P W U A D``; ``MMIO gen 0x12`` for an MMIO SPTE; ``non-present``."""
    if value == profile.nonpresent:
        return "non-present"
    arr = np.asarray([value], dtype=np.uint64)
    if profile.mmio(value):
        return f"MMIO gen {int(profile.mmio_generation(arr)[0]):#x}"
    if not profile.present(value):
        return f"not present ({value:#x})"
    bits = _EPT_BITS if profile.flavour == "EPT" else _SHADOW_BITS
    names = [name for name, bit in bits if value >> bit & 1]
    return f"pfn {int(profile.pfn(arr)[0]):#x} " + " ".join(names)


def gpa_range(base_gfn: int, npages: int) -> str:
    """A gfn range as the guest-physical addresses QEMU prints: ``0xfd000000-0xfdffffff``."""
    return f"{base_gfn << 12:#x}-{((base_gfn + npages) << 12) - 1:#x}" if npages else "-"


def role_word_text(word: int, profile: KernelProfile) -> str:
    """A role word decoded by the profile's layout (see :func:`kvmtrace.replays.ledger.role_text`)."""
    fields = {}
    for name in ROLE_COLUMNS:
        f = profile.role_field(name)
        fields[name] = None if f is None else word >> f.shift & ((1 << f.width) - 1)
    return role_text(fields)


def field_notes(name: str, fields: dict[str, object], profile: KernelProfile) -> list[str]:
    """Decoded forms of an event's SPTE and role fields (``old_spte: pfn 0x... P W``)."""
    out = []
    for key, value in fields.items():
        if not isinstance(value, int) or isinstance(value, bool):
            continue
        if key.endswith("spte") and key != "sptep":
            out.append(f"{key}: {spte_text(value, profile)}")
        elif key == "role":
            out.append(f"role: {role_word_text(value, profile)}")
    return out
