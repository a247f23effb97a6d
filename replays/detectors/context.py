"""What every detector may read: the replay's facts, never the trace files."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from kvmtrace.replays.gfn_index import GfnIndex
from kvmtrace.replays.journal import Journal
from kvmtrace.replays.leaf_proof import LeafEvidence, LeafFate, leaf_fates
from kvmtrace.replays.memslots import MemslotChange, MemslotTimeline
from kvmtrace.replays.pages import PageBook
from kvmtrace.replays.profiles import KernelProfile
from kvmtrace.replays.releases import Release


@dataclass
class Context:
    profile: KernelProfile
    mmu: str  # shadow | tdp | legacy_tdp | unknown
    zap_policy: str  # zap_all | zap_slot | unknown
    roles_known: bool  # False when the input lacks some role bits (text): pages.role_mask says which
    timeline: MemslotTimeline
    journal: Journal
    pages: PageBook
    installs: dict[str, np.ndarray]  # Journal.installs()
    faults: dict[str, np.ndarray]  # seq, gfn, pfn, level, pid of kvm_mmu_spte_requested
    mmio_checks: dict[str, np.ndarray]  # seq, kvm_gen, spte_gen of check_mmio_spte
    mmio_marks: dict[str, np.ndarray]  # seq, gfn, gen of mark_mmio_spte
    mmio_faults: dict[str, np.ndarray]  # seq, gfn of handle_mmio_page_fault
    zap_all_seqs: np.ndarray  # seqs of kvm_mmu_zap_all_fast
    zap_all_pids: np.ndarray
    release: Release | None = None  # (major, minor) of the traced kernel; None: not named
    leaf_evidence: LeafEvidence = field(default_factory=LeafEvidence)  # hardware faults, notifier unmaps

    @cached_property
    def faults_by_gfn(self) -> GfnIndex:
        return GfnIndex(self.faults["gfn"], self.faults["seq"])

    @cached_property
    def untraced_leaf_fates(self) -> list[LeafFate]:
        """Legacy MMU in TDP mode: the fate of every leaf a zap-slot delete/move had to remove, as
        the guest's next accesses show it (:mod:`kvmtrace.replays.leaf_proof`); empty on other MMUs
        and under zap-all (whose zaps are traced). Read by ``dangling_spte`` and the consequences:
        worked out once."""
        if self.mmu != "legacy_tdp":
            return []
        removals = self.positioned_removals()
        slot = {i for i, c in removals if not self.expects_zap_all(c)}
        if not slot:
            return []
        return [f for f in leaf_fates(removals, self.journal.snapshots, self.installs, self.leaf_evidence,
                                      self.pages.column("zap_seq")) if f.change in slot]

    def zapped_all_in(self, c: MemslotChange) -> int | None:
        """Seq of the kvm_mmu_zap_all_fast the ioctl thread emitted inside c's window, if any."""
        if c.seq is None or c.window_start is None:
            return None
        m = (self.zap_all_seqs >= c.window_start) & (self.zap_all_seqs <= c.seq) & (self.zap_all_pids == c.pid)
        hits = self.zap_all_seqs[m]
        return int(hits[0]) if len(hits) else None

    def expects_zap_all(self, c: MemslotChange) -> bool:
        """Whether the kernel owed c a zap-all: it emitted one, or the VM's policy is zap-all."""
        return self.zapped_all_in(c) is not None or self.zap_policy == "zap_all"

    def positioned_removals(self) -> list[tuple[int, MemslotChange]]:
        """Removing changes with a position in the trace, with their index in the timeline."""
        return [(i, c) for i, c in enumerate(self.timeline.changes)
                if c.kind in ("delete", "move", "recreate") and c.seq is not None and c.old_npages]


def span(level: np.ndarray) -> np.ndarray:
    """Number of gfns a leaf at ``level`` maps (1, 512, 512**2...)."""
    gfns: np.ndarray = np.left_shift(np.uint64(1), (9 * (level.astype(np.uint64) - np.uint64(1))))
    return gfns
