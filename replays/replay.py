"""``replay(data)``: walk one trace through the MMU model and collect tables, checks and findings.

Order of work: pick the kernel profile; build the memslot timeline (from the trace's own QEMU
lines unless the caller passes a QEMU log or a layout); decide which MMU produced the trace and
which zap policy it used; walk the state-changing events in global seq order through the shadow
or TDP model (with checkpoints at memslot changes); then run the detectors, the what-if and the
summaries on what the model recorded. Events that change no MMU state (guest page-table walks,
``kvm_mmu_spte_requested``, MMIO checks) never enter the loop.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from parsers.errors import TraceError
from parsers.schema import META_SYSTEM, TraceData
from replays import memslots as ms
from replays.detectors import run_all
from replays.detectors.context import Context
from replays.findings import LostWindows, finalize
from replays.journal import Journal, Snapshot, coded
from replays.pages import PageBook
from replays.profiles import KernelProfile, decode_role, profile_for
from replays.results import ReplayResult
from replays.shadow import ShadowModel
from replays.shadow_sptes import Installs, SpteLifetimes, infer_owners
from replays.stream import Columns, extract, merge_order, numpy_column
from replays.summaries import memslot_summary, zap_all_summary
from replays.tdp import FROZEN_LOW, TdpModel
from replays.whatif import whatif

#: The kvmmmu events, for readers that leave the ``system`` column empty.
KVMMMU_EVENTS = frozenset({
    "kvm_mmu_pagetable_walk", "kvm_mmu_paging_element", "kvm_mmu_set_accessed_bit", "kvm_mmu_set_dirty_bit",
    "kvm_mmu_walker_error", "kvm_mmu_get_page", "kvm_mmu_sync_page", "kvm_mmu_unsync_page",
    "kvm_mmu_prepare_zap_page", "mark_mmio_spte", "handle_mmio_page_fault", "fast_page_fault",
    "kvm_mmu_zap_all_fast", "kvm_mmu_invalidate_zap_all_pages", "check_mmio_spte", "kvm_mmu_set_spte",
    "kvm_mmu_spte_requested", "kvm_tdp_mmu_spte_changed", "kvm_mmu_split_huge_page",
})
PAGE_FIELDS = ("gfn", "role", "mmu_valid_gen", "root_count", "unsync")

# Loop stream numbers (index into the list handed to merge_order).
GET, ZAP, SYNC, UNSYNC, ZAP_ALL, TDP_CHANGE, FAST_PF, SPLIT = range(8)

def replay(data: TraceData, *, kernel: str | None = None, memslots: dict | None = None,
           qemu_log_lines: list[str] | None = None) -> ReplayResult:
    """Replay ``data`` against the simulated MMU.

    ``kernel`` overrides the trace's kernel release; ``memslots`` is a parsed ``--memslots`` JSON
    layout; ``qemu_log_lines`` the lines of a QEMU ``-trace`` log (the caller reads the file).
    """
    require_events(data)
    assumptions: list[str] = []
    limits: list[str] = []
    if kernel is None and data.info.kernel is None:
        profile, why = _guess_profile(data)
        assumptions.append(f"the trace names no kernel (pass --kernel to say it); {why}: {profile.name}")
    else:
        profile = profile_for(kernel or data.info.kernel)
    kv_seq, kv_pid, kv_zap = _kvmmmu_events(data, profile)
    timeline = _timeline(data, memslots, qemu_log_lines, kv_seq, kv_pid, kv_zap)
    mmu = _detect_mmu(data, profile)
    zap_all_seqs, zap_all_pids = _seq_pid(data, _zap_all_event(data))
    zap_policy, why = _zap_policy(timeline, zap_all_seqs, zap_all_pids, profile)
    assumptions.append(f"zap policy {zap_policy}: {why}")

    roles = _roles_known(data)
    if not roles:
        limits.append("role words are not in this input (text output prints only some role bits): page "
                      "identities are ambiguous, SPTE owners and the per-slot zap rule cannot be evaluated, and "
                      "shadow vs legacy TDP MMU cannot be told apart")
    journal = Journal()
    pages = PageBook()
    _walk(data, profile, mmu, zap_policy, timeline, journal, pages, roles)

    faults = _faults(data)
    ctx = Context(profile, mmu, zap_policy, roles, timeline, journal, pages, journal.installs(), faults,
                  _cols(data, "check_mmio_spte", ("kvm_gen", "spte_gen")), _cols(data, "mark_mmio_spte", ("gfn", "gen")),
                  _cols(data, "handle_mmio_page_fault", ("gfn",)), zap_all_seqs, zap_all_pids)
    lost = LostWindows(data.gaps, data.events)
    if lost:
        limits.append(f"{len(lost.lo)} lost-event window(s): findings that depend on them are warnings, not errors")
    locate = SeqIndex(data)
    findings, checks = finalize(run_all(ctx), lost, locate)

    unexplained = journal.unexplained_table()
    limits.extend(_limits(mmu, timeline))
    assumptions.extend(_assumptions(mmu))
    return ReplayResult(
        mmu=mmu, zap_policy=zap_policy, profile=profile.name,
        events=len(kv_seq), explained_events=len(kv_seq) - unexplained.num_rows,
        shadow_pages=pages.table(profile), spte_changes=journal.spte_changes(), memslots=timeline.table(),
        findings=findings, checks=checks, unexplained=unexplained,
        summaries={"memslot": memslot_summary(ctx), "zap_all": zap_all_summary(ctx, locate)},
        whatif=whatif(ctx), assumptions=assumptions, limits=limits + timeline.notes,
    )


def _guess_profile(data: TraceData) -> tuple[KernelProfile, str]:
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


def decoded_table(data: TraceData, event: str, kernel: str | None = None) -> pa.Table:
    """A page-event table with its role word decoded into columns (for reports and notebooks)."""
    return decode_role(data.table(event), profile_for(kernel or data.info.kernel))


# -- inputs ----------------------------------------------------------------------------------------
#: Events the kernel emits while carrying out a memslot change on the ioctl thread.
ZAP_EVENTS = frozenset({"kvm_mmu_zap_all_fast", "kvm_mmu_invalidate_zap_all_pages", "kvm_mmu_prepare_zap_page",
                        "kvm_mmu_sync_page"})


def _zap_all_event(data: TraceData) -> str:
    """The fast zap-all tracepoint's name: ``kvm_mmu_zap_all_fast`` (5.4+), or its 3.11-5.0 form."""
    old = data.tables.get("kvm_mmu_invalidate_zap_all_pages")
    return "kvm_mmu_invalidate_zap_all_pages" if old is not None and old.num_rows else "kvm_mmu_zap_all_fast"


def _kvmmmu_events(data: TraceData, profile: KernelProfile) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seqs, pids and "is a zap" of every kvmmmu event, in seq order, from the per-event tables
    (their schema metadata names the system; the name list covers readers that leave it out).
    Zaps (zap-all, page zaps, a TDP SPTE going non-present) are what a memslot ioctl emits."""
    seqs, pids, zaps = [], [], []
    for name, t in data.tables.items():
        meta = t.schema.metadata or {}
        if t.num_rows and (name in KVMMMU_EVENTS or meta.get(META_SYSTEM) == b"kvmmmu"):
            seqs.append(numpy_column(t, "seq", np.int64))
            pids.append(numpy_column(t, "pid", np.int64))
            if name == "kvm_tdp_mmu_spte_changed":
                new = numpy_column(t, "new_spte")
                zaps.append((new == np.uint64(profile.nonpresent)) | (new == np.uint64(profile.nonpresent | FROZEN_LOW)))
            else:
                zaps.append(np.full(t.num_rows, name in ZAP_EVENTS))
    if not seqs:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, bool)
    seq, pid, zap = np.concatenate(seqs), np.concatenate(pids), np.concatenate(zaps)
    order = np.argsort(seq, kind="stable")
    return seq[order], pid[order], zap[order]


def _seq_pid(data: TraceData, event: str) -> tuple[np.ndarray, np.ndarray]:
    t = data.tables.get(event)
    if t is None or t.num_rows == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return numpy_column(t, "seq", np.int64), numpy_column(t, "pid", np.int64)


def _cols(data: TraceData, event: str, fields: tuple[str, ...]) -> dict[str, np.ndarray]:
    t = data.tables.get(event)
    out = {"seq": np.empty(0, np.int64), **{f: np.empty(0, np.uint64) for f in fields}}
    if t is None or t.num_rows == 0:
        return out
    out["seq"] = numpy_column(t, "seq", np.int64)
    for f in fields:
        if f in t.column_names:
            out[f] = numpy_column(t, f)
        else:
            out[f] = np.zeros(t.num_rows, np.uint64)
    return out


def _faults(data: TraceData) -> dict[str, np.ndarray]:
    f = _cols(data, "kvm_mmu_spte_requested", ("gfn",))
    seq, pid = _seq_pid(data, "kvm_mmu_spte_requested")
    f["pid"] = pid
    return f


class SeqIndex:
    """``(ts, cpu)`` of a seq, by binary search in the ordered ``events`` table (findings cite few seqs)."""

    def __init__(self, data: TraceData):
        self.seq = numpy_column(data.events, "seq", np.int64)
        self.ts = numpy_column(data.events, "ts", np.int64)
        self.cpu = numpy_column(data.events, "cpu", np.int64)

    def __call__(self, seq: int) -> tuple[int | None, int | None]:
        i = int(np.searchsorted(self.seq, seq))
        if i < len(self.seq) and self.seq[i] == seq:
            return int(self.ts[i]), int(self.cpu[i])
        return None, None


def _timeline(data: TraceData, layout: dict | None, lines: list[str] | None, kv_seq: np.ndarray,
              kv_pid: np.ndarray, kv_zap: np.ndarray) -> ms.MemslotTimeline:
    if layout is not None:
        return ms.from_layout(layout)
    if lines is not None:
        return ms.from_lines(lines)
    return ms.from_prints(data.tables.get("print"), kv_seq, kv_pid, kv_zap)


PAGE_EVENTS = ("kvm_mmu_get_page", "kvm_mmu_prepare_zap_page", "kvm_mmu_sync_page", "kvm_mmu_unsync_page")


def _roles_known(data: TraceData) -> bool:
    """Whether the page events carry their role words. Text output prints only some role bits, so
    the text reader leaves ``role`` null (with a note in the table's metadata)."""
    return not any(e in data.tables and data.tables[e].num_rows and data.tables[e].column("role").null_count
                   for e in PAGE_EVENTS)


def _detect_mmu(data: TraceData, profile: KernelProfile) -> str:
    def rows(event: str) -> int:
        t = data.tables.get(event)
        return 0 if t is None else t.num_rows

    if rows("kvm_tdp_mmu_spte_changed"):
        return "tdp"
    roles = [numpy_column(data.tables[e], "role") for e in PAGE_EVENTS if rows(e)]
    if not roles or not _roles_known(data):
        return "shadow" if rows("kvm_mmu_set_spte") else "unknown"
    role = np.concatenate(roles)
    direct = (role >> np.uint64(profile.role_field("direct").shift)) & np.uint64(1)
    return "legacy_tdp" if bool(direct.all()) else "shadow"


def _zap_policy(tl: ms.MemslotTimeline, za_seq: np.ndarray, za_pid: np.ndarray,
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
    if profile.version < (6, 12) and profile.slot_zap_rule != "range_2019":
        return "zap_all", f"kernel {profile.version[0]}.{profile.version[1]} has no per-slot zap"
    return "unknown", "no delete or move in the trace"


# -- the loop --------------------------------------------------------------------------------------
def _walk(data: TraceData, profile: KernelProfile, mmu: str, zap_policy: str, tl: ms.MemslotTimeline,
          journal: Journal, pages: PageBook, roles_known: bool) -> None:
    """Feed the state-changing events, merged by seq, to the model: one tight loop over lists.

    The shadow MMU's SPTE installs stay out of the loop: they are settled afterwards with array
    operations (:mod:`replays.shadow_sptes`), because no page event depends on them."""
    tdp = mmu == "tdp"
    streams: list[Columns | None] = [
        extract(data, "kvm_mmu_get_page", PAGE_FIELDS + ("created",)),
        extract(data, "kvm_mmu_prepare_zap_page", PAGE_FIELDS),
        extract(data, "kvm_mmu_sync_page", PAGE_FIELDS),
        extract(data, "kvm_mmu_unsync_page", PAGE_FIELDS),
        extract(data, _zap_all_event(data), ("mmu_valid_gen",)),
        extract(data, "kvm_tdp_mmu_spte_changed", ("as_id", "gfn", "level", "old_spte", "new_spte")) if tdp else None,
        extract(data, "fast_page_fault", ("cr2_or_gpa", "old_spte", "new_spte")) if tdp else None,
        extract(data, "kvm_mmu_split_huge_page", ("gfn", "level")) if tdp else None,
    ]
    removals = [(i, c) for i, c in enumerate(tl.changes)
                if c.kind in ms.REMOVING_KINDS and c.seq is not None and c.old_npages]
    cp_keys, cp_what = [], []
    for i, c in removals:
        cp_keys += [2 * c.window_start - 1, 2 * c.seq + 1]
        cp_what += [(i, "start"), (i, "end")]
    if streams[TDP_CHANGE] is not None:
        streams[TDP_CHANGE] = _drop_nonpresent_churn(data, streams[TDP_CHANGE], profile)
    kinds, rows = merge_order([s.seq if s is not None else np.empty(0, np.int64) for s in streams],
                              np.asarray(cp_keys, dtype=np.int64))
    model: TdpModel | ShadowModel = TdpModel(profile, journal, pages) if tdp else \
        ShadowModel(profile, journal, pages, roles_known)
    seqs = [s.seq.tolist() if s is not None else [] for s in streams]
    get, zap, syn, uns, za, tc, fp, sp = [s.fields if s is not None else {} for s in streams]
    page_sets: dict[tuple[int, str], np.ndarray] = {}
    CHECK = len(streams)
    for kind, r in zip(kinds.tolist(), rows.tolist()):
        if kind == TDP_CHANGE:
            model.change(seqs[kind][r], tc["pid"][r], tc["as_id"][r], tc["gfn"][r], tc["level"][r],
                         tc["old_spte"][r], tc["new_spte"][r])
        elif kind == GET:
            model.get_page(seqs[kind][r], get["pid"][r], get["gfn"][r], get["role"][r], get["mmu_valid_gen"][r],
                           get["root_count"][r], get["created"][r])
        elif kind == ZAP:
            model.zap_page(seqs[kind][r], zap["gfn"][r], zap["role"][r], zap["mmu_valid_gen"][r], zap["root_count"][r])
        elif kind == SYNC or kind == UNSYNC:
            c = syn if kind == SYNC else uns
            if tdp:
                journal.unexplained.append((seqs[kind][r], streams[kind].name, "the TDP MMU never syncs pages"))
            else:
                model.sync_page(seqs[kind][r], c["gfn"][r], c["role"][r], c["mmu_valid_gen"][r], c["root_count"][r],
                                kind == UNSYNC)
        elif kind == ZAP_ALL:
            model.zap_all(seqs[kind][r], za["mmu_valid_gen"][r])
        elif kind == FAST_PF:
            model.fast_fix(seqs[kind][r], fp["cr2_or_gpa"][r], fp["old_spte"][r], fp["new_spte"][r])
        elif kind == SPLIT:
            model.split(seqs[kind][r], sp["gfn"][r], sp["level"][r])
        elif kind == CHECK:
            if tdp:
                journal.snapshots[cp_what[r]] = model.snapshot()
            else:
                page_sets[cp_what[r]] = model.live_pages()
    if not tdp:
        _settle_shadow_sptes(data, profile, zap_policy, tl, journal, pages, model, removals, page_sets)


def _mmio_marks(data: TraceData, journal: Journal) -> None:
    """Shadow MMU: ``mark_mmio_spte`` installs an MMIO SPTE (keyed by the SPTE's virtual address,
    which no other shadow event shares; its value is not traced, only gfn, access and generation)."""
    t = data.tables.get("mark_mmio_spte")
    if t is None or not t.num_rows:
        return
    n = t.num_rows
    zero = np.zeros(n, np.uint64)
    journal.add_changes(seq=numpy_column(t, "seq", np.int64), key=numpy_column(t, "sptep"), as_id=np.zeros(n),
                        gfn=numpy_column(t, "gfn"), level=np.zeros(n), old=zero, old_valid=np.zeros(n, bool),
                        new=zero, new_valid=np.zeros(n, bool), page=np.full(n, -1),
                        state=coded(np.zeros(n), ["mmio"]), reason=coded(np.zeros(n), ["mark_mmio_spte"]))


def _drop_nonpresent_churn(data: TraceData, cols: Columns, profile: KernelProfile) -> Columns:
    """Leave out TDP changes from one non-present value to another: removing a page table traces
    all 512 children, most of them never present (nested/README.md). They change nothing."""
    t = data.table("kvm_tdp_mmu_spte_changed")
    quiet = np.asarray([profile.nonpresent, profile.nonpresent | FROZEN_LOW], dtype=np.uint64)
    keep = ~(np.isin(numpy_column(t, "old_spte"), quiet) & np.isin(numpy_column(t, "new_spte"), quiet))
    if keep.all():
        return cols
    idx = np.flatnonzero(keep).tolist()
    return Columns(cols.name, cols.seq[keep], {k: [v[i] for i in idx] for k, v in cols.fields.items()}, cols.missing)


def _settle_shadow_sptes(data: TraceData, profile: KernelProfile, zap_policy: str, tl: ms.MemslotTimeline,
                         journal: Journal, pages: PageBook, model: ShadowModel,
                         removals: list[tuple[int, ms.MemslotChange]],
                         page_sets: dict[tuple[int, str], np.ndarray]) -> None:
    """Owners, lifetimes and snapshots of every shadow SPTE, after the page walk."""
    t = data.tables.get("kvm_mmu_set_spte")
    if t is not None and t.num_rows:
        ins = Installs(numpy_column(t, "seq", np.int64), numpy_column(t, "pid", np.int64), numpy_column(t, "gfn"),
                       numpy_column(t, "spte"), numpy_column(t, "sptep"), numpy_column(t, "level", np.int64))
    else:
        empty = np.empty(0, np.uint64)
        ins = Installs(np.empty(0, np.int64), np.empty(0, np.int64), empty, empty, empty, np.empty(0, np.int64))
    owner = infer_owners(ins, model.lookups(), pages, profile)
    rmap_zaps: list[tuple[int, int, int, str]] = []
    um = data.tables.get("kvm_unmap_hva_range")
    if um is not None and um.num_rows:
        for seq, start, end in zip(um.column("seq").to_pylist(), um.column("start").to_pylist(),
                                   um.column("end").to_pylist()):
            rmap_zaps += [(2 * seq, lo, hi, "MMU-notifier unmap (rmap zap, untraced)")
                          for lo, hi in tl.hva_to_gfns(start, end, seq)]
    if zap_policy != "zap_all":
        rmap_zaps += [(2 * c.seq + 1, c.old_base_gfn, c.old_base_gfn + c.old_npages,
                       "per-slot zap of leaf SPTEs (rmap, untraced)") for _, c in removals]
    rmap_zaps.sort()
    life = SpteLifetimes(ins, owner, pages, profile, rmap_zaps)
    life.to_journal(journal)
    _mmio_marks(data, journal)
    journal.obsolete_uses.extend(life.obsolete_uses(pages))
    journal.obsolete_uses.sort()
    for (i, when), live_pages in page_sets.items():
        c = tl.changes[i]
        key = 2 * c.window_start - 1 if when == "start" else 2 * c.seq + 1
        alive = life.alive_at(key)
        journal.snapshots[(i, when)] = Snapshot(
            pages=live_pages, gfn=ins.gfn[alive], level=ins.level[alive], as_id=life.as_id[alive],
            owner=owner[alive], installed=ins.seq[alive], obsolete_root=np.zeros(int(alive.sum()), bool))


def _limits(mmu: str, tl: ms.MemslotTimeline) -> list[str]:
    out = []
    if mmu in ("shadow", "legacy_tdp"):
        out.append("shadow MMU: leaf SPTE zaps, write protection, dirty-log clears and rmap unmaps are not traced; "
                   "SPTE ownership is inferred from the SPTE page and the faulting vCPU's last page at that level")
    if mmu == "tdp":
        out.append("TDP MMU: entries carry no root; after a zap-all, old-root teardown is told apart from the new "
                   "root's build by the old_spte value only")
    if not tl.known:
        out.append("memslot layout unknown: layout checks are not evaluated")
    elif not tl.complete:
        out.append("memslot layout partial (the trace started after the VM was built): only gfns of removed slots "
                   "count as unmapped")
    return out


def _assumptions(mmu: str) -> list[str]:
    return [
        "guest page-table walker events, kvm_mmu_spte_requested and MMIO checks change no SPTE state: they count "
        "as explained without a model step",
        "a page seen first through an 'existing' lookup, sync or zap predates the trace",
    ] + (["a kvm_mmu_set_spte into an SPTE page of a zapped page means the page's memory was reused"]
         if mmu != "tdp" else
         ["a TDP change whose old_spte is non-present while the model holds a present copy of that key comes "
          "from another root (roots are not traced), so both copies are kept",
          "Accessed/Dirty bits that appear in an old_spte were set by the CPU's page walker"])


def require_events(data: TraceData) -> None:
    """Raise a one-line TraceError when the trace has no kvmmmu events at all."""
    if not any(t.num_rows for name, t in data.tables.items() if name in KVMMMU_EVENTS):
        raise TraceError(f"{data.info.path}: no kvmmmu events in this trace; record with -e kvmmmu")
