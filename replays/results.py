"""What a replay returns: the contract between ``kvmtrace.replays`` and the reports.

The detectors fill ``findings`` and ``checks``; the models fill the object tables; the renderers
in ``kvmtrace.report`` read only what is declared here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa

from kvmtrace.parsers.spilled import release_all

# The check registry is replays/checks.py; these names are re-exported for the readers of results.
from kvmtrace.replays.checks import CHECK_IDS as CHECK_IDS
from kvmtrace.replays.checks import SEVERITY as SEVERITY
from kvmtrace.replays.threads import VcpuThreads

FINDINGS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("severity", pa.string(), nullable=False),  # error | warning | info
        pa.field("seq", pa.int64()),
        pa.field("ts", pa.int64()),
        pa.field("cpu", pa.int16()),
        pa.field("gfn", pa.uint64()),
        pa.field("slot", pa.int32()),  # as_id << 16 | slot id, as QEMU prints Slot#
        pa.field("message", pa.string(), nullable=False),
        pa.field("evidence", pa.list_(pa.int64()), nullable=False),  # seqs that prove it
    ]
)

CHECKS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # passed | failed | not_evaluated
        pa.field("reason", pa.string(), nullable=False),
        pa.field("findings", pa.int64(), nullable=False),
    ]
)

UNEXPLAINED_SCHEMA = pa.schema(
    [
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("event", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
    ]
)


@dataclass
class ReplayResult:
    """Everything one replay of one trace produced."""

    mmu: str  # "shadow" | "tdp" | "legacy_tdp" | "unknown"
    zap_policy: str  # "zap_all" | "zap_slot" | "unknown"
    profile: str  # name of the kernel profile used
    events: int  # kvmmmu events replayed
    explained_events: int
    shadow_pages: pa.Table  # replays.pages.PAGES_SCHEMA + one column per decoded role field
    spte_changes: pa.Table  # replays.journal.SPTE_CHANGES_SCHEMA, in seq order
    memslots: pa.Table  # replays.memslots.TIMELINE_SCHEMA, one row per change
    findings: pa.Table  # FINDINGS_SCHEMA
    checks: pa.Table  # CHECKS_SCHEMA, one row per CHECK_IDS entry, in that order
    unexplained: pa.Table  # UNEXPLAINED_SCHEMA
    #: "memslot" (per slot lifetime: faults, SPTEs installed, pages zapped/rebuilt) and "zap_all"
    #: (per kvm_mmu_zap_all_fast: pages obsoleted/zapped/rebuilt, rebuild_ns); see replays.summaries
    summaries: dict[str, pa.Table] = field(default_factory=dict)
    whatif: pa.Table | None = None  # replays.whatif.WHATIF_SCHEMA, two rows (policies) per delete/move
    assumptions: list[str] = field(default_factory=list)  # what the model assumed, in words
    limits: list[str] = field(default_factory=list)  # what the trace could not show
    mmu_evidence: list[str] = field(default_factory=list)  # what the ``mmu`` decision rests on, in words
    #: which thread ran which vCPU (kvm_entry's vcpu_id, or the lab's markers)
    vcpus: VcpuThreads = field(default_factory=lambda: VcpuThreads({}, ""))
    #: gives back the read pages of tables this result keeps on disk (:meth:`release_pages`)
    spilled_pages: Callable[[], None] | None = field(default=None, compare=False, repr=False)

    def release_pages(self) -> None:
        """Let the page cache, not the process, hold what was read of the SPTE-change table when
        it lies on disk (a long replay's): a pass over it brings its pages into the process,
        where they stay until given back (see :meth:`TraceData.release_pages`)."""
        if self.spilled_pages is not None:
            self.spilled_pages()
        release_all()  # and the other tables and arrays the replay keeps on disk

    @property
    def explained_share(self) -> float:
        return self.explained_events / self.events if self.events else 1.0
