"""Which kernel release produced a trace, and since which release a TDP-MMU behaviour holds.

A :class:`~kvmtrace.replays.profiles.KernelProfile` names a *bit-layout* era; behaviours that
changed inside one era (an untraced D/A clear, a fault treated as spurious) need the release itself.
Each date below is the upstream release that first carried the commit cited beside it.
"""

from __future__ import annotations

import re

Release = tuple[int, int]

#: 1e0f42985ffa / 891f11596068 (6.4): clear_dirty_gfn_range(), clear_dirty_pt_masked() and
#: age_gfn_range() clear D/A bits with tdp_mmu_clear_spte_bits(), bypassing handle_changed_spte()
#: and so the kvm_tdp_mmu_spte_changed tracepoint. Before 6.4 those clears were traced.
UNTRACED_AD_CLEARS: Release = (6, 4)
#: 386d69f9f29b (6.13): tdp_mmu_map_handle_target_level() returns RET_PF_SPURIOUS when the present
#: leaf SPTE already allows the faulting access. Before it, a vCPU that lost the race to fault a gfn
#: in rewrote the winner's SPTE through make_spte(), which leaves Dirty clear when the old SPTE is
#: writable ("goto out"): W=1,D=1 became W=1,D=0 for the same pfn.
SPURIOUS_TDP_FAULTS: Release = (6, 13)

_RELEASE = re.compile(r"^\s*(\d+)\.(\d+)")


def release_of(kernel: str | None) -> Release | None:
    """``(major, minor)`` of a release string (``"6.12.107+deb12-amd64"`` -> ``(6, 12)``), or None."""
    m = _RELEASE.match(kernel or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def at_least(release: Release | None, since: Release) -> bool:
    """Whether ``release`` has a behaviour introduced in ``since``. An unknown release is taken as
    the newest kernel, as the replay takes the newest profile for it (and says so)."""
    return release is None or release >= since
