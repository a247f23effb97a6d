"""Same-pfn Dirty clears on the TDP MMU: ``dirty_bit_lost`` and the known race ``dirty_bit_race``.

The TDP MMU traces every SPTE write it makes through handle_changed_spte(), so a present W=1,D=1
leaf rewritten for the same pfn with D=0 is visible. Three kernel paths do that on purpose:

* **Dirty logging.** The slot has KVM_MEM_LOG_DIRTY_PAGES, or userspace fetched/cleared its dirty
  log since the SPTE was installed (``kvm_clear_dirty_log`` / lab ``kvmlab_get_dirty_log`` lines):
  the D bit was harvested into the bitmap. These clears are traced on every release: from 6.4
  (1e0f42985ffa) clear_dirty_pt_masked() bypasses handle_changed_spte() but calls the tracepoint
  itself, and clear_dirty_gfn_range() writes through tdp_mmu_set_spte_atomic().
* **A racing fault (the 2024 make_spte() thread, docs/threads.md §2).** Two vCPUs fault on the
  same gfn; the first installs W=1,D=1, the second, which itself requested the gfn
  (``kvm_mmu_spte_requested`` just before its write), runs make_spte() with the first one's SPTE
  as ``old_spte``. make_spte() skips setting Dirty when the old SPTE is already writable
  ("goto out"), so W=1,D=1 becomes W=1,D=0. Upstream judged it benign (handle_changed_spte()
  marks the old pfn dirty when its SPTE loses D, and dirty-log clearing flushes TLBs) and from
  6.13 (386d69f9f29b) treats a fault that the present SPTE already allows as spurious, so the
  overwrite no longer happens. Kernels 5.10-6.12: the info ``dirty_bit_race``.
* Anything else loses the fact that the guest wrote the page: ``dirty_bit_lost``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kvmtrace.replays.detectors.context import Context
from kvmtrace.replays.findings import CheckOutcome, Finding
from kvmtrace.replays.memslots import KVM_MEM_LOG_DIRTY_PAGES, Lifetime, MemslotTimeline
from kvmtrace.replays.releases import SPURIOUS_TDP_FAULTS


@dataclass(frozen=True)
class DirtyClear:
    """One traced same-pfn W=1,D=1 -> D=0 overwrite (a row of ``Journal.dirty_clears``)."""

    seq: int
    gfn: int
    level: int
    as_id: int
    installed: int  # seq of the overwritten SPTE's install (-1: it predates the trace)
    old: int
    new: int
    pid: int  # thread that wrote the new value
    installer: int  # thread that installed the old one (-1: unknown)


def detect(ctx: Context) -> list[CheckOutcome]:
    lost, race = "dirty_bit_lost", "dirty_bit_race"
    if ctx.mmu != "tdp":
        why = "only the TDP MMU traces SPTE overwrites; shadow dirty-log changes are untraced"
        return [CheckOutcome.skipped(lost, why), CheckOutcome.skipped(race, why)]
    tl = ctx.timeline
    if not tl.known:
        why = ("memslot flags unknown (no kvm_set_user_memory lines): cannot tell dirty logging from a lost dirty "
               "bit")
        return [CheckOutcome.skipped(lost, why), CheckOutcome.skipped(race, why)]
    clears = [DirtyClear(*row) for row in ctx.journal.dirty_clears]
    logging = DirtyLogging(ctx.timeline, clears)
    unlogged = [(i, c) for i, c in enumerate(clears) if not logging.logged(i, c)]
    faults = ctx.faults
    requests = OwnRequests(faults, ctx.profile.pfn_mask)
    racy = ctx.release is None or ctx.release < SPURIOUS_TDP_FAULTS  # unknown: the race is possible
    lost_findings, race_findings = [], []
    unknowable = racy and not len(faults["seq"])  # the race's evidence is not in the input
    for i, c in unlogged:
        req = requests.of(c) if c.new & ctx.profile.writable_mask else None
        sl = logging.slot(i)
        if req is not None and racy:
            race_findings.append(Finding(race, c.seq, c.gfn, sl, _race_words(ctx, c, req), [c.installed, req, c.seq]))
        elif unknowable and c.new & ctx.profile.writable_mask:
            lost_findings.append(Finding(lost, c.seq, c.gfn, sl, _lost_words(ctx, c, None) +
                                         "; kvm_mmu_spte_requested is not in the trace, so the two-vCPU racing fault "
                                         "(make_spte() before 6.13) cannot be ruled out", [c.installed, c.seq],
                                         severity="warning"))
        else:
            lost_findings.append(Finding(lost, c.seq, c.gfn, sl, _lost_words(ctx, c, req),
                                         [c.installed, c.seq] if req is None else [c.installed, req, c.seq]))
    explained = len(clears) - len(unlogged)
    out = [CheckOutcome.of(lost, lost_findings, f"{len(clears)} same-pfn Dirty clear(s): {explained} by dirty "
                                                f"logging, {len(race_findings)} by a racing fault")]
    if not len(faults["seq"]):
        out.append(CheckOutcome.skipped(race, "kvm_mmu_spte_requested is not in the trace: which vCPU faulted on the "
                                              "gfn cannot be told"))
    else:
        out.append(CheckOutcome.of(race, race_findings, "no same-pfn Dirty clear by a racing fault"))
    return out


class DirtyLogging:
    """Per clear (by its index in ``clears``): the slot that covered its gfn, and whether that
    slot logs dirty pages or had its dirty log fetched or cleared since the SPTE's install.

    Why built once: a migration trace (dirty logging on the TDP MMU) has a same-pfn Dirty clear
    for every page each pass harvests, and as many dirty-log clears as passes times slots; a
    scan of the slot lifetimes and of every harvest per clear made the check quadratic (8 000
    clears against 800 harvests: 0.5 s; a million clears, hours)."""

    def __init__(self, tl: MemslotTimeline, clears: list[DirtyClear]) -> None:
        gfns = np.asarray([c.gfn for c in clears], np.uint64)
        self._slots = tl.slot_at(gfns, np.asarray([c.seq for c in clears], np.int64)).tolist()
        self._lifetimes: dict[int, list[Lifetime]] = {}
        for lt in tl.lifetimes:
            self._lifetimes.setdefault(lt.slot, []).append(lt)
        harvests: dict[int, list[int]] = {}
        for seq, slot in [(s, h) for s, h, _, _ in tl.clear_dirty] + list(tl.get_dirty):
            harvests.setdefault(slot & 0xFFFF, []).append(seq)
        self._harvests = {k: np.sort(np.asarray(v, np.int64)) for k, v in harvests.items()}

    def slot(self, i: int) -> int | None:
        sl = self._slots[i]
        return sl if sl >= 0 else None

    def logged(self, i: int, c: DirtyClear) -> bool:
        sl = self.slot(i)
        if sl is None:
            return False
        # the slot's first lifetime in place at the clear (its flags then)
        lt = next((lt for lt in self._lifetimes.get(sl, ()) if lt.from_seq <= c.seq < lt.until_seq), None)
        if lt is not None and lt.flags & KVM_MEM_LOG_DIRTY_PAGES:
            return True
        seqs = self._harvests.get(sl & 0xFFFF)
        if seqs is None:
            return False
        k = int(np.searchsorted(seqs, c.installed, side="left"))  # the first harvest at or after the install
        return k < len(seqs) and int(seqs[k]) <= c.seq


class OwnRequests:
    """:meth:`of`: the writer's own ``kvm_mmu_spte_requested`` for a cleared leaf, if it is that
    thread's last request before the write: the write was its fault being resolved
    (tdp_mmu_map_handle_target_level). Each thread's requests are found once (a mask over every
    fault per clear was quadratic)."""

    def __init__(self, faults: dict[str, np.ndarray], pfn_mask: int) -> None:
        self.faults, self.pfn_mask = faults, pfn_mask
        self._rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # thread -> its rows and their seqs

    def of(self, c: DirtyClear) -> int | None:
        faults = self.faults
        if c.pid not in self._rows:
            rows = np.flatnonzero(faults["pid"] == c.pid)
            self._rows[c.pid] = rows, faults["seq"][rows]
        mine, seqs = self._rows[c.pid]
        before = int(np.searchsorted(seqs, c.seq, side="left"))  # fault_columns come in seq order
        if not before:
            return None
        k = mine[before - 1]
        shift = np.uint64(9 * (c.level - 1))
        pfn = (c.new & self.pfn_mask) >> 12
        if (faults["gfn"][k] >> shift != np.uint64(c.gfn) >> shift
                or faults["pfn"][k] >> shift != np.uint64(pfn) >> shift):
            return None
        return int(faults["seq"][k])


def _race_words(ctx: Context, c: DirtyClear, req: int) -> str:
    by = f"thread {c.installer}" if c.installer >= 0 else "another vCPU"
    when = f"seq {c.installed}" if c.installed >= 0 else "before the trace"
    kernel = ("" if ctx.release is not None else
              " (the trace does not name its kernel: this holds if it predates 6.13)")
    return (f"racing faults on gfn {c.gfn:#x}: {by} installed a W=1,D=1 level-{c.level} SPTE ({when}); vCPU thread "
            f"{c.pid}, which had requested the same gfn itself (kvm_mmu_spte_requested, seq {req}), then rewrote it "
            f"with W=1,D=0 for the same pfn ({c.old:#x} -> {c.new:#x}). make_spte() does not set Dirty when the old "
            "SPTE is already writable, and before 6.13 the TDP MMU did not treat a fault the present SPTE already "
            "allows as spurious (386d69f9f29b). Benign: handle_changed_spte() marks the old pfn dirty when its SPTE "
            f"loses D, and dirty-log clearing flushes TLBs. TDP MMU, kernels 5.10-6.12{kernel}")


def _lost_words(ctx: Context, c: DirtyClear, req: int | None) -> str:
    why = "with no dirty logging or dirty-log clear since it was installed"
    if req is not None:
        why += (f"; the writer had requested the gfn (seq {req}), but from 6.13 such a fault is spurious "
                "(386d69f9f29b) and must not rewrite the SPTE")
    elif not c.new & ctx.profile.writable_mask:
        why += ", and the new SPTE is not writable (not make_spte() on a racing fault)"
    else:
        why += ", and the writing thread had not faulted on it (no kvm_mmu_spte_requested for it just before)"
    return (f"level-{c.level} SPTE for gfn {c.gfn:#x} went {c.old:#x} -> {c.new:#x}: same pfn, Dirty cleared {why}; "
            "the guest's write to the page is no longer recorded")
