"""Which kernel era, which MMU and which zap policy produced a trace, decided from the trace.

Each answer comes with the evidence in words, because the report shows it: a profile guessed from
the TDP non-present value, an MMU told by the ``direct`` role bit, a zap policy proven by the
``kvm_mmu_zap_all_fast`` events inside the memslot changes' windows.
"""

from __future__ import annotations

import numpy as np

from kvmtrace.parsers.schema import TraceData
from kvmtrace.replays import memslots as ms
from kvmtrace.replays.inputs import PAGE_EVENTS, roles_known
from kvmtrace.replays.profiles import KernelProfile, ept, profile_for, spte_flavour
from kvmtrace.replays.stream import numpy_column


def guess_profile(data: TraceData) -> tuple[KernelProfile, str]:
    """A profile for a trace without a kernel release (text input): the TDP MMU's non-present value
    (``old_spte`` of installs) tells 6.10+ (BIT(63)) from older (0); otherwise the newest."""
    t = data.tables.get("kvm_tdp_mmu_spte_changed")
    if t is not None and t.num_rows:
        old = numpy_column(t, "old_spte")
        zeros, bit63 = int((old == 0).sum()), int((old == np.uint64(1 << 63)).sum())
        if zeros > bit63:
            return profile_for("6.9"), "TDP non-present SPTEs are 0, so a kernel before 6.10 was assumed"
        return profile_for("6.12"), "TDP non-present SPTEs are BIT(63), so a 6.10+ kernel was assumed"
    return profile_for(None), "assumed the newest layout"


def detect_mmu(data: TraceData, profile: KernelProfile) -> str:
    """``tdp`` when TDP SPTE changes exist; else ``legacy_tdp`` when every page is direct (a TDP
    MMU of the legacy code maps guest-physical ranges only), ``shadow`` otherwise."""

    def rows(event: str) -> int:
        t = data.tables.get(event)
        return 0 if t is None else t.num_rows

    if rows("kvm_tdp_mmu_spte_changed"):
        return "tdp"
    roles = [numpy_column(data.tables[e], "role") for e in PAGE_EVENTS if rows(e)]
    if not roles or not roles_known(data):
        return "shadow" if rows("kvm_mmu_set_spte") else "unknown"
    role = np.concatenate(roles)
    direct = (role >> np.uint64(profile.role_field("direct").shift)) & np.uint64(1)
    return "legacy_tdp" if bool(direct.all()) else "shadow"


def spte_format(data: TraceData, profile: KernelProfile, mmu: str) -> KernelProfile:
    """The profile with the SPTE format the trace shows: TDP SPTEs on an Intel host are EPT entries
    (other A/D and MMIO bits); shadow paging always uses the x86 page-table format."""
    if mmu == "tdp":
        t = data.tables["kvm_tdp_mmu_spte_changed"]
        values = numpy_column(t, "new_spte")[numpy_column(t, "level", np.int64) == 1]
    elif mmu == "legacy_tdp" and "kvm_mmu_set_spte" in data.tables:
        values = numpy_column(data.tables["kvm_mmu_set_spte"], "spte")
    else:
        return profile
    return ept(profile) if spte_flavour(values, profile) == "EPT" else profile


def infer_zap_policy(tl: ms.MemslotTimeline, za_seq: np.ndarray, za_pid: np.ndarray,
                     profile: KernelProfile) -> tuple[str, str]:
    """The VM's policy, one for the whole trace (the quirk is per VM): a single delete/move with a
    zap-all proves zap-all; deletes/moves without one prove zap-slot; else the lab's hint."""
    removing = [c for c in tl.changes if c.kind in ms.REMOVING_KINDS and c.seq is not None]
    with_zap = sum(bool(np.any((za_seq >= c.window_start) & (za_seq <= c.seq) & (za_pid == c.pid))) for c in removing)
    hint = {0: "zap_slot", 1: "zap_all"}.get(tl.quirk_hint) if tl.quirk_hint is not None else None
    if removing:
        policy = "zap_all" if with_zap or hint == "zap_all" else "zap_slot"
        why = f"{with_zap} of {len(removing)} delete/move(s) had a kvm_mmu_zap_all_fast in their window"
        if hint and hint != policy:
            why += f" (the lab marker said {hint}; the trace wins)"
        return policy, why
    if hint:
        return hint, "no delete/move in the trace; lab marker kvmlab_start slot_zap_all_quirk"
    if profile.slot_zap_rule is None:
        return "zap_all", f"kernel era {profile.era} has no per-slot zap"
    return "unknown", "no delete or move in the trace"
