"""The replay loop: state-changing events merged by seq, fed to the shadow or TDP model.

One tight loop over plain lists (see :mod:`kvmtrace.replays.stream`), with checkpoints at memslot changes.
The shadow MMU's SPTE installs stay out of it and are settled afterwards with array operations
(:mod:`kvmtrace.replays.shadow_sptes`), because no page event depends on them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
from numpy.typing import DTypeLike

from kvmtrace.parsers.memory import release_freed_memory
from kvmtrace.parsers.schema import TraceData
from kvmtrace.parsers.spilled import KeptParts, give_back, kept
from kvmtrace.replays import memslots as ms
from kvmtrace.replays import sweep
from kvmtrace.replays.inputs import zap_all_event
from kvmtrace.replays.journal import Journal, Leaves, Snapshot, coded
from kvmtrace.replays.pages import PageBook
from kvmtrace.replays.profiles import KernelProfile
from kvmtrace.replays.shadow import ShadowModel
from kvmtrace.replays.shadow_sptes import Installs, SpteLifetimes, infer_owners
from kvmtrace.replays.stream import Columns, extract, merge_order, numpy_column, segments
from kvmtrace.replays.tdp import FROZEN_LOW, TdpModel

PAGE_FIELDS = ("gfn", "role", "mmu_valid_gen", "root_count", "unsync")

# Loop stream numbers (index into the list handed to merge_order).
GET, ZAP, SYNC, UNSYNC, ZAP_ALL, TDP_CHANGE, FAST_PF, SPLIT = range(8)
#: Rows of each stream per segment of the loop (:func:`segments`): each segment's fields are
#: made into lists, then dropped. A list holds ~40 bytes a value: at 256 K rows a segment's
#: were the walk's peak (+60 MiB at 54 M events); at 64 K the loop's CPU is the same.
BLOCK = 1 << 16


@dataclass(frozen=True)
class _Removal:
    """A delete/move the trace positions: ``tl.changes[index]`` with the fields the replay needs."""

    index: int
    seq: int
    window_start: int
    old_base_gfn: int
    old_npages: int


def _removals(tl: ms.MemslotTimeline) -> list[_Removal]:
    out = []
    for i, c in enumerate(tl.changes):
        if c.kind in ms.REMOVING_KINDS and c.seq is not None and c.old_npages:
            # a positioned removal always has its window and the range it removed
            assert c.window_start is not None and c.old_base_gfn is not None
            out.append(_Removal(i, c.seq, c.window_start, c.old_base_gfn, c.old_npages))
    return out


def walk(data: TraceData, profile: KernelProfile, mmu: str, zap_policy: str, tl: ms.MemslotTimeline,
          journal: Journal, pages: PageBook, roles_known: bool) -> None:
    """Feed the state-changing events, merged by seq, to the model: one tight loop over lists.

    The shadow MMU's SPTE installs stay out of the loop: they are settled afterwards with array
    operations (:mod:`kvmtrace.replays.shadow_sptes`), because no page event depends on them.
    ``pages`` is frozen (:meth:`PageBook.freeze`) as soon as nothing writes it any more: the
    settling's largest steps come after its owners, and the book kept on disk is not under them."""
    tdp = mmu == "tdp"
    streams: list[Columns | None] = [
        extract(data, "kvm_mmu_get_page", (*PAGE_FIELDS, "created")),
        extract(data, "kvm_mmu_prepare_zap_page", PAGE_FIELDS),
        extract(data, "kvm_mmu_sync_page", PAGE_FIELDS),
        extract(data, "kvm_mmu_unsync_page", PAGE_FIELDS),
        extract(data, zap_all_event(data), ("mmu_valid_gen",)),
        extract(data, "kvm_tdp_mmu_spte_changed", ("as_id", "gfn", "level", "old_spte", "new_spte")) if tdp else None,
        extract(data, "fast_page_fault", ("cr2_or_gpa", "old_spte", "new_spte")) if tdp else None,
        extract(data, "kvm_mmu_split_huge_page", ("gfn", "level")) if tdp else None,
    ]
    removals = _removals(tl)
    cp_keys: list[int] = []
    cp_what: list[tuple[int, str]] = []
    for rm in removals:
        cp_keys += [2 * rm.window_start - 1, 2 * rm.seq + 1]
        cp_what += [(rm.index, "start"), (rm.index, "end")]
    changed = streams[TDP_CHANGE]
    if changed is not None:
        streams[TDP_CHANGE] = _without_nonpresent_churn(changed, profile)
    cp_rows = np.argsort(np.asarray(cp_keys, dtype=np.int64), kind="stable")
    cp_sorted = np.asarray(cp_keys, dtype=np.int64)[cp_rows]
    model: TdpModel | ShadowModel = TdpModel(profile, journal, pages) if tdp else \
        ShadowModel(profile, journal, pages, roles_known)
    page_sets, page_at = _walk_events(data, streams, model, journal, pages, cp_sorted, cp_rows, cp_what)
    if isinstance(model, ShadowModel):
        _settle_shadow_sptes(data, profile, zap_policy, tl, journal, pages, model, removals, page_sets, page_at)
    else:
        pages.freeze()  # the walk was the TDP book's last writer


def _walk_events(data: TraceData, streams: list[Columns | None], model: TdpModel | ShadowModel, journal: Journal,
                 pages: PageBook, cp_sorted: np.ndarray, cp_rows: np.ndarray,
                 cp_what: list[tuple[int, str]]) -> tuple[sweep.LiveSets, dict[tuple[int, str], int]]:
    """The loop over the merged events, a segment at a time; the live pages at each checkpoint, as
    one :class:`~kvmtrace.replays.sweep.LiveSets` the snapshots share, and each checkpoint's key
    in it (a TDP model's snapshots go to the journal; the shadow MMU's are made when its SPTEs
    are settled). Its own function so that the last segment's field lists (~80 MiB on a 20
    M-event churn recording) are let go before the shadow SPTEs are settled."""
    names = [s.name if s is not None else "" for s in streams]
    page_sets = sweep.LiveSets()
    page_at: dict[tuple[int, str], int] = {}
    CHECK = len(streams)
    for lo, hi in segments(streams, BLOCK):
        seq_arrays, fields = _segment(streams, lo, hi)
        data.release_pages()  # the segment's fields are lists now
        c_lo = 0 if lo is None else int(np.searchsorted(cp_sorted, 2 * lo - 1))
        c_hi = len(cp_sorted) if hi is None else int(np.searchsorted(cp_sorted, 2 * hi - 1))
        kinds, rows = merge_order(seq_arrays, cp_sorted[c_lo:c_hi], cp_rows[c_lo:c_hi])
        seqs = [q.tolist() for q in seq_arrays]
        get, zap, syn, uns, za, tc, fp, sp = fields
        for kind, r in zip(kinds.tolist(), rows.tolist()):
            if kind == TDP_CHANGE:
                assert isinstance(model, TdpModel)  # TDP_CHANGE, FAST_PF and SPLIT are read only for the TDP MMU
                model.change(seqs[kind][r], tc["pid"][r], tc["as_id"][r], tc["gfn"][r], tc["level"][r],
                             tc["old_spte"][r], tc["new_spte"][r])
            elif kind == GET:
                model.get_page(seqs[kind][r], get["pid"][r], get["gfn"][r], get["role"][r],
                               get["mmu_valid_gen"][r], get["root_count"][r], get["created"][r])
            elif kind == ZAP:
                model.zap_page(seqs[kind][r], zap["gfn"][r], zap["role"][r], zap["mmu_valid_gen"][r],
                               zap["root_count"][r])
            elif kind == SYNC or kind == UNSYNC:
                cols = syn if kind == SYNC else uns
                if isinstance(model, TdpModel):
                    journal.unexplained.append((seqs[kind][r], names[kind], "the TDP MMU never syncs pages"))
                else:
                    model.sync_page(seqs[kind][r], cols["gfn"][r], cols["role"][r], cols["mmu_valid_gen"][r],
                                    cols["root_count"][r], kind == UNSYNC)
            elif kind == ZAP_ALL:
                model.zap_all(seqs[kind][r], za["mmu_valid_gen"][r])
            elif kind == FAST_PF:
                assert isinstance(model, TdpModel)
                model.fast_fix(seqs[kind][r], fp["cr2_or_gpa"][r], fp["old_spte"][r], fp["new_spte"][r])
            elif kind == SPLIT:
                assert isinstance(model, TdpModel)
                model.split(seqs[kind][r], sp["gfn"][r], sp["level"][r])
            elif kind == CHECK:
                at = page_at[cp_what[r]] = len(page_at)
                ids = model.live_ids()
                page_sets.add(at, ids.astype(np.int32) if len(pages) < 2**31 else ids)
                if isinstance(model, TdpModel):
                    journal.snapshots[cp_what[r]] = model.snapshot(page_sets, at)
    page_sets.seal("the live pages of this replay's snapshots")
    return page_sets, page_at


def _segment(streams: list[Columns | None], lo: int | None,
             hi: int | None) -> tuple[list[np.ndarray], list[dict[str, list[int]]]]:
    """Each stream's seqs (numpy) and fields (lists) in seq range ``[lo, hi)`` (None: open)."""
    seqs: list[np.ndarray] = []
    fields: list[dict[str, list[int]]] = []
    for s in streams:
        if s is None:
            seqs.append(np.empty(0, np.int64))
            fields.append({})
            continue
        first = 0 if lo is None else s.rows_before(lo)
        last = s.table.num_rows if hi is None else s.rows_before(hi)
        q, f = s.block(first, last)
        seqs.append(q)
        fields.append(f)
    return seqs, fields


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


def _without_nonpresent_churn(cols: Columns, profile: KernelProfile) -> Columns:
    """Leave out TDP changes from one non-present value to another: removing a page table traces
    all 512 children, most of them never present (tests/data/nested/README.md;
    docs/tracepoints.md §1.7). They change nothing."""
    quiet = np.asarray([profile.nonpresent, profile.nonpresent | FROZEN_LOW], dtype=np.uint64)

    def changes(t: pa.Table) -> np.ndarray:
        return ~(np.isin(numpy_column(t, "old_spte"), quiet) & np.isin(numpy_column(t, "new_spte"), quiet))

    return replace(cols, keep=changes)


def _settle_shadow_sptes(data: TraceData, profile: KernelProfile, zap_policy: str, tl: ms.MemslotTimeline,
                         journal: Journal, pages: PageBook, model: ShadowModel,
                         removals: list[_Removal], page_sets: sweep.LiveSets,
                         page_at: dict[tuple[int, str], int]) -> None:
    """Owners, lifetimes and snapshots of every shadow SPTE, after the page walk."""
    t = data.tables.get("kvm_mmu_set_spte")
    if t is not None and t.num_rows:
        # thread and level narrow: the columns are held for the whole settling (and the level by
        # the snapshots to the end); on disk when long (37 bytes an install, 267 MiB at 7 M), a
        # record batch at a time (a column made whole first was 57 MiB at 7 M installs, with as
        # many of the table's pages read), their pages given back between the settling's steps
        def column(name: str, dtype: DTypeLike = np.uint64) -> np.ndarray:
            parts = KeptParts("the SPTE installs of this replay")
            for batch in t.to_batches():
                parts.append({name: numpy_column(batch, name, dtype)})
                data.release_pages()  # the table's pages this batch read (all six columns: 340 MiB at 7 M)
            values = parts.arrays()
            assert values is not None  # the table has rows
            return values[name]

        ins = Installs(column("seq", np.int64), column("pid", np.int32), column("gfn"), column("spte"),
                       column("sptep"), column("level", np.int8))
    else:
        empty = np.empty(0, np.uint64)
        ins = Installs(np.empty(0, np.int64), np.empty(0, np.int32), empty, empty, empty, np.empty(0, np.int8))
    release_freed_memory()  # the columns' copies made on the way to disk
    owner = infer_owners(ins, model.lookups(), pages, profile)
    pages.freeze()  # the owners were the book's last writer (its SPTE pages): the settling's peaks come after
    give_back()
    rmap_zaps: list[tuple[int, int, int, str]] = []
    um = data.tables.get("kvm_unmap_hva_range")
    if um is not None and um.num_rows:
        seqs = um.column("seq").to_pylist()
        for seq, ranges in zip(seqs, tl.hva_to_gfns(seqs, um.column("start").to_pylist(),
                                                    um.column("end").to_pylist())):
            rmap_zaps += [(2 * seq, lo, hi, "MMU-notifier unmap (rmap zap, untraced)") for lo, hi in ranges]
    if zap_policy != "zap_all":
        rmap_zaps += [(2 * rm.seq + 1, rm.old_base_gfn, rm.old_base_gfn + rm.old_npages,
                       "per-slot zap of leaf SPTEs (rmap, untraced)") for rm in removals]
    rmap_zaps.sort()
    life = SpteLifetimes(ins, owner, pages, profile, rmap_zaps)
    give_back()
    life.to_journal(journal)
    give_back()
    _mmio_marks(data, journal)
    journal.obsolete_uses.extend(life.obsolete_uses(pages))
    journal.obsolete_uses.sort()
    by_index = {rm.index: rm for rm in removals}
    # "end": everything traced up to the change's line, but before the untraced per-slot rmap
    # zap the model applies at 2 * rm.seq + 1 (the what-if counts what that zap destroys)
    keys = {(i, when): 2 * by_index[i].window_start - 1 if when == "start" else 2 * by_index[i].seq
            for i, when in page_at}
    alive_at = life.alive_at(list(keys.values()))
    # the installs' own columns as they are kept (on disk when long): a copy was a second file of them
    leaves = Leaves(gfn=ins.gfn, level=ins.level, installed=ins.seq,
                    **kept({"as_id": life.as_id, "owner": owner.astype(np.int32),
                            "obsolete_root": np.zeros(len(ins.seq), bool)}, "the leaves of this replay's snapshots"))
    for (i, when), at in page_at.items():
        journal.snapshots[(i, when)] = Snapshot(page_sets, at, leaves, alive_at, keys[(i, when)])
