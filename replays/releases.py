"""Which kernel release produced a trace, and since which release a TDP-MMU behaviour holds.

A :class:`~kvmtrace.replays.profiles.KernelProfile` names a *bit-layout* era; behaviours that
changed inside one era (a fault treated as spurious from 6.13) need the release itself.
Each date below is the upstream release that first carried the commit cited beside it.
"""

from __future__ import annotations

import re

Release = tuple[int, int]

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

