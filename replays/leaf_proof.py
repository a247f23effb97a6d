"""What the trace proves about a leaf SPTE that a memslot delete or move had to remove, where the
kernel removes it without an event.

The legacy MMU (EPT/NPT with ``tdp_mmu=0``, the 2019 reporters' setup) drops the old range's leaf
SPTEs through the rmaps (``kvm_unmap_gfn_range`` / ``kvm_zap_rmapp``), which no tracepoint shows.
Only what happened next can tell whether a leaf went away, and only two kinds of event do:

* **a re-install**: ``kvm_mmu_set_spte`` for the same gfn and level. The guest faulted there, which
  a present leaf of full permissions makes impossible, so the old one was gone;
* **a hardware fault** on a gfn the leaf covers (``kvm_page_fault``, the NPF / EPT-violation exit):
  its error code says whether the nested page table entry was present. SVM prints ``exit_info_1``
  (``npf_interception``): bit 0 set is a protection fault on a present entry, bit 3 (RSVD) an MMIO
  SPTE. VMX prints the exit qualification (``handle_ept_violation``): bits 3-5 are the entry's
  read/write/execute permissions, all clear when no entry maps the address. A not-present fault
  proves the leaf was gone; a fault on a present entry that nothing re-installed since the change
  is the old leaf itself, still mapping a removed range: a dangling SPTE.

A leaf the model still holds under a larger leaf installed after it is unreachable: installing a
huge leaf over a page-table pointer unlinks that table (``mmu_set_spte`` -> ``drop_parent_pte``,
untraced), so no access can show its fate either.

Either proof shows a removal somewhere between the change and the event, so it is the change's only if
nothing else could have removed the leaf in between: no other delete/move of a range covering it,
no traced zap of the page holding it, no MMU-notifier unmap (``kvm_unmap_hva_range``). Everything
else is "not provable": the guest never touched the range again, so the trace cannot tell.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field

import numpy as np

from kvmtrace.parsers.schema import TraceData
from kvmtrace.parsers.spilled import releasing
from kvmtrace.replays.digest import Digest
from kvmtrace.replays.gfn_index import FirstInstall, GfnIndex, leaf_keys
from kvmtrace.replays.journal import Leaves, Snapshot
from kvmtrace.replays.memslots import MemslotChange
from kvmtrace.replays.stream import numpy_column

#: ``kvm_exit``'s isa field (arch/x86/kvm/trace.h: KVM_ISA_VMX, KVM_ISA_SVM)
ISA_VMX, ISA_SVM = 1, 2
#: SVM NPF exit_info_1 bits (the #PF error-code layout: PFERR_PRESENT_MASK, PFERR_RSVD_MASK)
_NPF_PRESENT, _NPF_RSVD = 1 << 0, 1 << 3
#: VMX EPT-violation exit qualification: the entry was readable / writable / executable
_EPT_RWX = 0x38

PROVED, DANGLING, UNPROVABLE = "removed", "dangling", "not_provable"


@dataclass
class LeafEvidence:
    """The events that can show a leaf's fate, as seq-sorted arrays (empty when not traced)."""

    fault_seq: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    fault_gfn: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))
    fault_pid: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    #: 1: an entry mapped the address (protection fault), 0: no entry, -1: an MMIO SPTE
    fault_present: np.ndarray = field(default_factory=lambda: np.empty(0, np.int8))
    notifier_seq: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    #: why hardware faults are not used ("" when they are)
    faults_unread: str = ""


def leaf_evidence(data: TraceData, digest: Digest) -> LeafEvidence:
    """Hardware faults decoded by the vendor ``kvm_exit`` names (the digest's ``exit_isas``: the
    exits' rows need not be kept), and MMU-notifier unmaps."""
    out = LeafEvidence()
    t = data.tables.get("kvm_unmap_hva_range")
    if t is not None and t.num_rows:
        out.notifier_seq = np.sort(numpy_column(t, "seq", np.int64))
    pf = data.tables.get("kvm_page_fault")
    if pf is None or not pf.num_rows or not {"fault_address", "error_code"} <= set(pf.column_names):
        out.faults_unread = "no kvm_page_fault events"
        return out
    isa = sorted(digest.exit_isas)
    if len(isa) != 1 or int(isa[0]) not in (ISA_VMX, ISA_SVM):
        out.faults_unread = "kvm_exit does not name one vendor (isa), so kvm_page_fault's error code cannot be read"
        return out
    code = numpy_column(pf, "error_code").astype(np.uint64)
    if int(isa[0]) == ISA_SVM:
        present = np.where(code & np.uint64(_NPF_RSVD), -1, (code & np.uint64(_NPF_PRESENT)) != 0).astype(np.int8)
    else:
        present = ((code & np.uint64(_EPT_RWX)) != 0).astype(np.int8)
    seq = numpy_column(pf, "seq", np.int64)
    order = np.argsort(seq, kind="stable")
    out.fault_seq, out.fault_present = seq[order], present[order]
    out.fault_gfn = (numpy_column(pf, "fault_address").astype(np.uint64) >> np.uint64(12))[order]
    out.fault_pid = numpy_column(pf, "pid", np.int64)[order]
    return out


@dataclass(frozen=True)
class LeafFate:
    """What the trace proves about one leaf a change had to remove."""

    change: int  # index into the timeline
    change_seq: int  # the change's line
    change_kind: str  # delete | move | recreate
    slot: int
    gfn: int
    level: int
    installed: int  # seq of the leaf's install
    fate: str  # PROVED | DANGLING | NOT_PROVABLE
    seq: int  # the event that shows it (the change's line when nothing does)
    detail: str
    evidence: tuple[int, ...]  # the install, the change's line, the events that show the fate

    @property
    def leaf(self) -> str:
        return f"level-{self.level} leaf for gfn {self.gfn:#x} (installed at seq {self.installed})"


def _covers(gfn: int, level: int) -> tuple[int, int]:
    n = 1 << (9 * (level - 1))
    return gfn, gfn + n


def leaf_fates(changes: list[tuple[int, MemslotChange]], snapshots: dict[tuple[int, str], Snapshot],
               installs: dict[str, np.ndarray], ev: LeafEvidence, page_zap_seq: np.ndarray) -> list[LeafFate]:
    """Per positioned removal ``(index, MemslotChange)``, the fate of every leaf the model held in
    its old range just before its window (``snapshots[(i, "start")]``)."""
    out: list[LeafFate] = []
    ask = Lookups(changes, installs, ev, page_zap_seq)
    for n, (i, c) in enumerate(releasing(changes, every=64)):  # each reads a snapshot's leaves (on disk when long)
        snap = snapshots.get((i, "start"))
        if snap is None:
            continue
        assert c.old_base_gfn is not None and c.old_npages is not None  # a positioned removal
        lo, hi = c.old_base_gfn, c.old_base_gfn + c.old_npages
        leaves = snap.leaves()
        for k in range(len(leaves.gfn)):
            g, lvl = int(leaves.gfn[k]), int(leaves.level[k])
            a, b = _covers(g, lvl)
            if not (a < hi and lo < b):
                continue
            out.append(_fate(i, c, n, leaves, int(leaves.as_id[k]), g, lvl, int(leaves.installed[k]),
                             int(leaves.owner[k]), ask))
    return out


class Lookups:
    """What every leaf's fate asks of the whole trace, answered through indexes built once.

    Why: the legacy MMU in TDP mode under zap-slot (the 2019 scenario) asks, for every leaf in
    every removed range, for the first re-install, install and hardware fault after the change,
    and for any later removal or notifier unmap before it: each a mask over every install,
    fault or change made the check grow with removals x leaves x trace length."""

    def __init__(self, changes: list[tuple[int, MemslotChange]], installs: dict[str, np.ndarray], ev: LeafEvidence,
                 page_zap_seq: np.ndarray) -> None:
        self.changes, self.ev, self.page_zap_seq = changes, ev, page_zap_seq
        self.install_seq = installs["seq"]
        self._installs = GfnIndex(installs["gfn"], installs["seq"])
        self._reinstalls = FirstInstall(installs)
        self._faults = GfnIndex(ev.fault_gfn, ev.fault_seq)
        self._fault_read = ev.fault_present >= 0  # not an MMIO SPTE
        # the later removals by range (the ranges a VMM removes are few), as positions in ``changes``
        by_range: dict[tuple[int, int], list[int]] = {}
        for n, (_, d) in enumerate(changes):
            if d.window_start is not None and d.old_base_gfn is not None and d.old_npages is not None:
                by_range.setdefault((d.old_base_gfn, d.old_npages), []).append(n)
        self._ranges = []
        for (base, npages), positions in by_range.items():
            starts = np.asarray([changes[n][1].window_start for n in positions], np.int64)
            suffix_min = np.minimum.accumulate(starts[::-1])[::-1]  # the earliest window from each position on
            self._ranges.append((base, base + npages, positions, starts, suffix_min))

    def reinstall(self, after: int, g: int, lvl: int) -> int | None:
        """Seq of the first ``kvm_mmu_set_spte`` of gfn ``g`` at level ``lvl`` after seq ``after``."""
        rows = self._reinstalls.after(after, leaf_keys(np.asarray([g], np.uint64), np.asarray([lvl])))
        return int(self.install_seq[rows[0]]) if len(rows) else None

    def first_install(self, after: int, a: int, b: int) -> int | None:
        """Seq of the first install into gfns [a, b) after seq ``after``."""
        row = self._installs.first_in(a, b, after + 1)
        return int(self.install_seq[row]) if row is not None else None

    def first_fault(self, after: int, a: int, b: int) -> int | None:
        """Row (of the hardware faults) of the first fault on gfns [a, b) after seq ``after``, on
        a present or absent entry (not an MMIO SPTE)."""
        return self._faults.first_in(a, b, after + 1, keep=self._fault_read)

    def later_removal(self, n: int, a: int, b: int, until: int) -> MemslotChange | None:
        """The first removal after position ``n`` of ``changes`` over a range meeting [a, b) whose
        window began before ``until``."""
        best: int | None = None
        for lo, hi, positions, starts, suffix_min in self._ranges:
            if not (lo < b and a < hi):
                continue
            j = bisect_right(positions, n)
            if j == len(positions) or suffix_min[j] >= until:
                continue
            while starts[j] >= until:  # one of these began before ``until`` (suffix_min)
                j += 1
            best = positions[j] if best is None else min(best, positions[j])
        return self.changes[best][1] if best is not None else None

    def notifier_unmap(self, after: int, until: int) -> int | None:
        """Seq of the first MMU-notifier unmap strictly between ``after`` and ``until``."""
        seqs = self.ev.notifier_seq
        k = int(np.searchsorted(seqs, after, side="right"))
        return int(seqs[k]) if k < len(seqs) and seqs[k] < until else None


def _fate(i: int, c: MemslotChange, n: int, leaves: Leaves, as_id: int, g: int, lvl: int, installed: int, owner: int,
          ask: Lookups) -> LeafFate:
    a, b = _covers(g, lvl)
    assert c.seq is not None  # a positioned removal
    change_seq = c.seq  # the narrowed type, for fate() below

    def fate(kind: str, seq: int, detail: str, *evidence: int) -> LeafFate:
        return LeafFate(i, change_seq, c.kind, c.slot, g, lvl, installed, kind, seq, detail,
                        (installed, change_seq, *evidence))

    # the first re-install of the same gfn and level, and the first hardware fault on gfns it covers
    ev = ask.ev
    reinstall = ask.reinstall(c.seq, g, lvl)
    first_install = ask.first_install(c.seq, a, b)
    k = ask.first_fault(c.seq, a, b)
    fs = int(ev.fault_seq[k]) if k is not None else None
    who = f"vCPU thread {int(ev.fault_pid[k])}, gfn {int(ev.fault_gfn[k]):#x}" if k is not None else ""
    # fs is not None exactly when k is not None (spelled out for the type checker)
    if k is not None and fs is not None and ev.fault_present[k] == 1 and \
            (first_install is None or first_install > fs):
        other = _other_removal(c, n, a, b, fs, owner, ask)
        if not other:
            return fate(DANGLING, fs, f"fault on a present entry at seq {fs} ({who}; a protection fault) with "
                                      f"nothing installed there since the {c.kind}: the old leaf still mapped the "
                                      f"removed range", fs)
    proofs: list[tuple[int, str]] = []
    if k is not None and fs is not None and ev.fault_present[k] == 0:
        proofs.append((fs, f"fault with no entry present at seq {fs} ({who})"))
    if reinstall is not None:
        proofs.append((reinstall, f"installed again at seq {reinstall}"))
    if not proofs:
        above = _replaced_by(leaves, as_id, g, lvl, installed)
        if above is not None:
            return fate(UNPROVABLE, c.seq, f"unreachable since seq {above[0]}, when a level-{above[1]} leaf over it "
                                           "replaced its page table (drop_parent_pte): it stays in the rmaps until the "
                                           "zap, but no access can reach it, so nothing the guest does can show "
                                           "whether it was removed", above[0])
        why = f"; {ev.faults_unread}" if ev.faults_unread else ""
        return fate(UNPROVABLE, c.seq, f"the guest never touched gfns {a:#x}-{b - 1:#x} again (no fault or install "
                                       f"there afterwards{why}): the trace cannot show whether it was removed")
    first = min(s for s, _ in proofs)
    said = "; ".join(w for _, w in sorted(proofs))
    other = _other_removal(c, n, a, b, first, owner, ask)
    if other:
        return fate(UNPROVABLE, first, f"gone by seq {first} ({said}), but {other} could also have removed it",
                    first)
    return fate(PROVED, first, f"{said}; nothing else removed it in between", *sorted(s for s, _ in proofs))


def _replaced_by(leaves: Leaves, as_id: int, g: int, lvl: int, since: int) -> tuple[int, int] | None:
    """(install seq, level) of a larger leaf the model holds over gfn ``g``, installed after the
    leaf itself: the legacy MMU unlinked the page table the leaf is in when it installed that one."""
    lo = leaves.gfn
    hi = lo + (np.uint64(1) << (np.uint64(9) * (leaves.level.astype(np.uint64) - np.uint64(1))))
    m = (leaves.level > lvl) & (lo <= np.uint64(g)) & (hi > np.uint64(g)) & (leaves.installed > since) & \
        (leaves.as_id == as_id)
    if not m.any():
        return None
    k = int(np.flatnonzero(m)[0])
    return int(leaves.installed[k]), int(leaves.level[k])


def _other_removal(c: MemslotChange, n: int, a: int, b: int, until: int, owner: int, ask: Lookups) -> str:
    """Something other than change ``c`` (at position ``n``) that may have removed a leaf over
    [a, b) before ``until``."""
    assert c.seq is not None  # a positioned removal
    d = ask.later_removal(n, a, b, until)
    if d is not None:
        return f"the {d.kind} at seq {d.seq}"
    zap_seq = ask.page_zap_seq
    if owner >= 0 and owner < len(zap_seq) and c.seq < zap_seq[owner] < until:
        return f"the traced zap of its page at seq {int(zap_seq[owner])}"
    unmap = ask.notifier_unmap(c.seq, until)
    if unmap is not None:
        return f"the MMU-notifier unmap at seq {unmap}"
    return ""
