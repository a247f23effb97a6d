"""What the replay reads from a trace besides the model's own streams: which events are kvmmmu
events (and which of them are zaps), columns of the events the detectors use, seq lookups.

Readers may leave the ``system`` column empty; the event names of the kvmmmu system are listed
here once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kvmtrace.parsers.errors import TraceError
from kvmtrace.parsers.schema import META_SYSTEM, TraceData
from kvmtrace.parsers.spilled import KeptParts
from kvmtrace.parsers.text.assemble import META_TEXT_FORMS
from kvmtrace.parsers.text.catalog import META_ROLE_UNPRINTED
from kvmtrace.replays.profiles import KernelProfile
from kvmtrace.replays.stream import numpy_column
from kvmtrace.replays.tdp import FROZEN_LOW

#: The kvmmmu events, for readers that leave the ``system`` column empty.
KVMMMU_EVENTS = frozenset({
    "kvm_mmu_pagetable_walk", "kvm_mmu_paging_element", "kvm_mmu_set_accessed_bit", "kvm_mmu_set_dirty_bit",
    "kvm_mmu_walker_error", "kvm_mmu_get_page", "kvm_mmu_sync_page", "kvm_mmu_unsync_page",
    "kvm_mmu_prepare_zap_page", "mark_mmio_spte", "handle_mmio_page_fault", "fast_page_fault",
    "kvm_mmu_zap_all_fast", "kvm_mmu_invalidate_zap_all_pages", "check_mmio_spte", "kvm_mmu_set_spte",
    "kvm_mmu_spte_requested", "kvm_tdp_mmu_spte_changed", "kvm_mmu_split_huge_page",
})
#: Events the kernel emits while carrying out a memslot change on the ioctl thread.
ZAP_EVENTS = frozenset({"kvm_mmu_zap_all_fast", "kvm_mmu_invalidate_zap_all_pages", "kvm_mmu_prepare_zap_page",
                        "kvm_mmu_sync_page"})


def zap_all_event(data: TraceData) -> str:
    """The fast zap-all tracepoint's name: ``kvm_mmu_zap_all_fast`` (5.4+), or its 3.11-5.0 form."""
    old = data.tables.get("kvm_mmu_invalidate_zap_all_pages")
    return "kvm_mmu_invalidate_zap_all_pages" if old is not None and old.num_rows else "kvm_mmu_zap_all_fast"


def kvmmmu_names(data: TraceData, leave_out: frozenset[str] = frozenset()) -> list[str]:
    """The kvmmmu events with rows (but those of ``leave_out``), from the per-event tables (their
    schema metadata names the system; the name list covers readers that leave it out)."""
    return [name for name, t in data.tables.items() if t.num_rows and name not in leave_out
            and (name in KVMMMU_EVENTS or (t.schema.metadata or {}).get(META_SYSTEM) == b"kvmmmu")]


#: Seqs of the trace whose kvmmmu rows :func:`kvmmmu_events` puts in order at a time.
SEQ_WINDOW = 1 << 22


def kvmmmu_events(data: TraceData, profile: KernelProfile, leave_out: frozenset[str] = frozenset(),
                  pids: frozenset[int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seqs, pids and "is a zap" of every kvmmmu event (but those of ``leave_out``; only those of
    the threads ``pids`` where given), in seq order (:func:`kvmmmu_names`). Zaps (zap-all, page
    zaps, a TDP SPTE going non-present) are what a memslot ioctl emits.

    Most of a trace's events are kvmmmu events, so the event tables (each in seq order) are
    merged a window of :data:`SEQ_WINDOW` seqs at a time, a record batch of each read at a time,
    and the result is kept as it comes (:class:`KeptParts`: on disk when long). One sort of
    every row held three row-sized arrays at once (1.2 GB at 56 M events); a bitmap over the
    trace's seqs was 5 bytes an event even where only a few threads' rows were wanted (the
    timeline's peak: 470 MiB at 52 M events)."""
    names = kvmmmu_names(data, leave_out)
    wanted = None if pids is None else np.asarray(sorted(pids), np.int64)
    streams = [_Rows(_rows_of(data, name, profile, wanted)) for name in names]
    out = KeptParts("the kvmmmu events of this replay")
    while True:
        first = [s.first() for s in streams]
        if all(f is None for f in first):
            break
        end = min(f for f in first if f is not None) + SEQ_WINDOW
        seq, pid, zap = (np.concatenate(column) for column in zip(*(s.below(end) for s in streams)))
        order = np.argsort(seq, kind="stable")  # seqs are distinct: any merge is this order
        out.append({"seq": seq[order], "pid": pid[order], "zap": zap[order]})
    got = out.arrays()
    if got is None:
        return np.empty(0, np.int64), np.empty(0, np.int32), np.empty(0, bool)
    return got["seq"], got["pid"], got["zap"]


class _Rows:
    """One event's rows (seq, pid, zap flag) in seq order, read a batch at a time as asked."""

    def __init__(self, batches: Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        self._batches = batches
        self._held: list[np.ndarray] = [np.empty(0, np.int64), np.empty(0, np.int32), np.empty(0, bool)]
        self._done = False

    def _more(self) -> bool:
        """Read the next batch (False: there is none)."""
        got = None if self._done else next(self._batches, None)
        if got is None:
            self._done = True
            return False
        self._held = [np.concatenate((h, g)) for h, g in zip(self._held, got)]
        return True

    def first(self) -> int | None:
        """The seq of the next row not yet taken (None: none left)."""
        while not len(self._held[0]):
            if not self._more():
                return None
        return int(self._held[0][0])

    def below(self, end: int) -> list[np.ndarray]:
        """The rows not yet taken with seq below ``end``."""
        while len(self._held[0]) and self._held[0][-1] < end and self._more():
            pass
        cut = int(np.searchsorted(self._held[0], end, side="left"))
        taken = [h[:cut] for h in self._held]
        self._held = [h[cut:] for h in self._held]
        return taken


def _rows_of(data: TraceData, name: str, profile: KernelProfile,
             wanted: np.ndarray | None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """seq, pid and zap flag of the event ``name`` (of the threads ``wanted`` only, where given),
    a record batch at a time, the pages each read given back (see
    :meth:`TraceData.release_pages`)."""
    t = data.tables[name]
    for batch in t.select([c for c in ("seq", "pid", "new_spte") if c in t.column_names]).to_batches():
        seq = numpy_column(batch, "seq", np.int64)
        pid = numpy_column(batch, "pid", np.int32)
        zap = _zaps(name, batch, profile)
        if wanted is not None:
            mine = np.isin(pid, wanted)
            seq, pid, zap = seq[mine], pid[mine], zap[mine]
        yield seq, pid, zap
        data.release_pages()


def _zaps(name: str, t: pa.Table | pa.RecordBatch, profile: KernelProfile) -> np.ndarray:
    if name != "kvm_tdp_mmu_spte_changed":
        return np.full(t.num_rows, name in ZAP_EVENTS)
    new = numpy_column(t, "new_spte")
    zap: np.ndarray = (new == np.uint64(profile.nonpresent)) | (new == np.uint64(profile.nonpresent | FROZEN_LOW))
    return zap


def seq_pid(data: TraceData, event: str) -> tuple[np.ndarray, np.ndarray]:
    t = data.tables.get(event)
    if t is None or t.num_rows == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return numpy_column(t, "seq", np.int64), numpy_column(t, "pid", np.int64)


def columns(data: TraceData, event: str, fields: tuple[str, ...]) -> dict[str, np.ndarray]:
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


#: The fault columns' types: narrow where the values are small (26 bytes a fault instead of 40).
FAULT_TYPES = {"seq": np.int64, "gfn": np.uint64, "pfn": np.uint64, "level": np.uint8, "pid": np.int32}


def fault_columns(data: TraceData) -> dict[str, np.ndarray]:
    """seq, gfn, pfn, level and thread of every ``kvm_mmu_spte_requested`` (:data:`FAULT_TYPES`;
    a field the trace lacks reads 0). Kept through the detectors, the consequences and the
    what-if, on disk when there are many: read a record batch at a time into :class:`KeptParts`
    (every column of every fault in 64-bit words before going to disk was the replay's peak,
    +80 MiB at 52 M events)."""
    t = data.tables.get("kvm_mmu_spte_requested")
    parts = KeptParts("the faults of this replay")
    for batch in [] if t is None else t.to_batches():
        parts.append({name: numpy_column(batch, name, dtype) if name in batch.schema.names
                      else np.zeros(batch.num_rows, dtype) for name, dtype in FAULT_TYPES.items()})
        data.release_pages()
    return parts.arrays() or {name: np.empty(0, dtype) for name, dtype in FAULT_TYPES.items()}


class SeqIndex:
    """``(ts, cpu)`` of a seq, from the ``events`` table (:meth:`TraceData.events_at`), asked for
    in batches (:meth:`ask`) and then answered one at a time. A binary search through a mapped
    ``events`` table per finding brought every page it touched into the process (+174 MiB for
    the 4 400 findings of a 10 M-event trace); one read of many seqs does not, and a read per
    seq would cost a chunk each."""

    def __init__(self, data: TraceData):
        self.data = data
        self.known: dict[int, tuple[int | None, int | None]] = {}

    def ask(self, seqs: Iterable[int]) -> None:
        """Look ``seqs`` up at once, for the calls that follow."""
        new = np.unique(np.fromiter((s for s in seqs if s not in self.known), np.int64))
        if not len(new):
            return
        found, at = self.data.events_at(new, ("ts", "cpu"))
        for seq, hit, ts, cpu in zip(new.tolist(), found.tolist(), at["ts"].tolist(), at["cpu"].tolist()):
            self.known[seq] = (ts, cpu) if hit else (None, None)

    def __call__(self, seq: int) -> tuple[int | None, int | None]:
        if seq not in self.known:
            self.ask((seq,))
        return self.known[seq]


PAGE_EVENTS = ("kvm_mmu_get_page", "kvm_mmu_prepare_zap_page", "kvm_mmu_sync_page", "kvm_mmu_unsync_page")
#: Every bit of a role word.
WHOLE = 0xFFFFFFFF


@dataclass(frozen=True)
class RoleWords:
    """Which bits of the page events' role words the input carries.

    A trace.dat stores the word; text prints some of its fields (which ones depends on the kernel
    era and on the printer), and its reader gives ``role_partial`` (the printed bits in place,
    every other bit 0) and ``role_mask`` (the printed bits) with ``role`` null. Page identities
    and every role predicate then work on ``role & mask``: :meth:`applied` puts that word in
    ``role`` so the models and detectors read one column whatever the input."""

    mask: int  # bits carried by every page-event row
    unprinted: str = ""  # the reader's note of what its forms leave out (text), "" for whole words
    #: the text forms of the rows without a word (the reader's era labels, e.g. "5.4+")
    forms: frozenset[str] = frozenset()

    def complete(self, profile: KernelProfile) -> bool:
        """Every field of this era's role word is carried: two pages share an identity only if
        they are one page."""
        return not profile.uncarried(self.mask)

    def missing(self, profile: KernelProfile) -> str:
        """The era's fields not carried, as ``cr0_wp (bit 13), smm (bits 24-31)``."""
        return ", ".join(f.words() for f in profile.uncarried(self.mask))

    def limit(self, profile: KernelProfile) -> str:
        """The report's limit: which role bits the input lacks and what each costs the replay."""
        gone = {f.name for f in profile.uncarried(self.mask)}
        costs = ["pages that differ only in these bits share one identity: a page created while another of its "
                 "identity lives is not flagged (the two may differ in these bits); the model keeps both, a zap ends "
                 "the newest, and the older one's liveness is unknown from then on (shadow_pages.shared_seq; "
                 "memslot_zap_miss does not judge it); an 'existing' lookup of a zapped identity is not flagged",
                 "the shadow_pages table leaves these fields null"]
        if "smm" in gone:
            costs.append("SPTEs of SMM pages count in address space 0")
        if "guest_mode" in gone:
            costs.append("a nested guest's indirect pages are told from the guest's own only by direct pages at a "
                         "TDP root level (MMU evidence)")
        if "passthrough" in gone:
            costs.append("memslot_zap_miss takes every indirect page for one with guest PTEs except an indirect "
                         "level-5 root, the only page passthrough marks, which it does not judge")
        if "invalid" in gone:
            costs.append("the final zap of an invalid root is recognised by root_count 0 alone")
        note = f" (the text reader: {self.unprinted})" if self.unprinted else ""
        if self.flipped(profile):
            note += "; for this kernel bit 4 is gpte_is_8_bytes, set where the text prints '8-byte'"
        return f"role bits not in this input: {self.missing(profile)}{note}. What that costs: " + "; ".join(costs)

    def flipped(self, profile: KernelProfile) -> int:
        """Bits the replay must invert in ``role_partial``: the reader puts the 5.4+ print's
        "4-byte" in bit 4 as 5.17+ has it (has_4_byte_gpte); on 5.4-5.16 that bit is
        gpte_is_8_bytes (named cr4_pae here), the inverse."""
        bit4 = profile.role_field("cr4_pae")
        return bit4.bits if self.forms == {"5.4+"} and bit4 is not None and bit4.bits & self.mask else 0

    def applied(self, data: TraceData, profile: KernelProfile) -> TraceData:
        """``data`` with ``role`` of every page event replaced by the carried bits: the word where
        it is known, else ``role_partial`` (in ``profile``'s sense), masked alike so that
        identities compare."""
        if self.mask == WHOLE:
            return data
        flip = self.flipped(profile)
        tables = dict(data.tables)
        for name in PAGE_EVENTS:
            t = tables.get(name)
            if t is None or not t.num_rows:
                continue
            role = t.column("role")
            if "role_partial" in t.column_names:
                partial = t.column("role_partial")
                if flip:
                    partial = pc.bit_wise_xor(partial, pa.scalar(flip, partial.type))
                role = pc.coalesce(role, partial)
            word = pc.bit_wise_and(role.fill_null(0), pa.scalar(self.mask, role.type))
            tables[name] = t.set_column(t.schema.get_field_index("role"), t.schema.field("role"), word)
        return replace(data, tables=tables)


#: Why a page event whose lines lack the gfn cannot serve the page model.
NO_GFN = ("its lines here carry no gfn (trace-cmd report's kvm plugin prints the gfn only for kvm_mmu_get_page), "
          "so it cannot be matched to its page")


def without_gfn(data: TraceData) -> dict[str, int]:
    """Page events -> how many of their rows lack the gfn: the page model cannot use those rows."""
    out = {}
    for name in PAGE_EVENTS:
        t = data.tables.get(name)
        if t is not None and t.num_rows and t.column("gfn").null_count:
            out[name] = t.column("gfn").null_count
    return out


def unusable_events(data: TraceData) -> dict[str, str]:
    """Event -> why it is in the input but cannot be evidence (for the evidence gate)."""
    return {name: NO_GFN for name in without_gfn(data)}


def page_limits(data: TraceData, words: RoleWords, profile: KernelProfile) -> list[str]:
    """The report's limits of the page events: role bits not carried, rows without a gfn."""
    out = [] if words.complete(profile) else [words.limit(profile)]
    lacking = without_gfn(data)
    if lacking:
        rows = ", ".join(f"{n} {name}" for name, n in lacking.items())
        out.append(f"page events without a gfn ({rows}): {NO_GFN}; the page model leaves them out, so pages end "
                   "only by generation, and the checks that need page zaps are not evaluated")
    return out


def model_input(data: TraceData, words: RoleWords, profile: KernelProfile) -> TraceData:
    """The page events as the models read them: role words reduced to the carried bits; rows
    without a gfn left out (no page can be named from them; :func:`unusable_events` makes the
    checks that need them not_evaluated); a generation that is not printed (the kvm plugin, 5.1-5.3
    and pre-3.11 kernels) taken from the fast zap-alls around each row. A lookup finds only pages of
    the current generation (is_obsolete_sp), and each zap-all names the generation it ends, so a
    row's generation is that of the first zap-all after it, or the one after the last."""
    data = words.applied(data, profile)
    tables = dict(data.tables)
    za = tables.get(zap_all_event(data))
    za_seq = numpy_column(za, "seq", np.int64) if za is not None and za.num_rows else np.empty(0, np.int64)
    za_gen = numpy_column(za, "mmu_valid_gen", np.int64) if len(za_seq) else np.empty(0, np.int64)
    for name in PAGE_EVENTS:
        t = tables.get(name)
        if t is None or not t.num_rows:
            continue
        if t.column("gfn").null_count:
            t = t.filter(pc.is_valid(t.column("gfn")))
        gen = t.column("mmu_valid_gen")
        if gen.null_count and len(za_seq):
            seq = numpy_column(t, "seq", np.int64)
            i = np.searchsorted(za_seq, seq)
            after = 1 - za_gen[-1] if profile.gen_toggles else za_gen[-1] + 1
            derived = np.where(i < len(za_gen), za_gen[np.minimum(i, len(za_gen) - 1)], after)
            known = pc.is_valid(gen).to_numpy(zero_copy_only=False)
            filled = np.where(known, numpy_column(t, "mmu_valid_gen", np.int64), derived)
            t = t.set_column(t.schema.get_field_index("mmu_valid_gen"), t.schema.field("mmu_valid_gen"),
                             pa.array(filled).cast(gen.type))
        tables[name] = t
    return replace(data, tables=tables)


def role_words(data: TraceData) -> RoleWords:
    """The role bits every page-event row carries: all where ``role`` is set, ``role_mask`` where
    the text reader left it null, none where a reader left it null without saying more."""
    mask = WHOLE
    notes: list[str] = []
    forms: set[str] = set()
    for name in PAGE_EVENTS:
        t = data.tables.get(name)
        if t is None or not t.num_rows or not t.column("role").null_count:
            continue
        if "role_mask" not in t.column_names:
            return RoleWords(0, f"{name}: role words are null")
        unknown = pc.is_null(t.column("role")).to_numpy(zero_copy_only=False)
        mask &= int(np.bitwise_and.reduce(numpy_column(t, "role_mask", np.uint64)[unknown]))
        meta = t.schema.metadata or {}
        note = meta.get(META_ROLE_UNPRINTED, b"").decode()
        if note and note not in notes:
            notes.append(note)
        forms.update(f.strip() for f in meta.get(META_TEXT_FORMS, b"").decode().split(",") if f.strip())
    return RoleWords(mask, "; ".join(notes), frozenset(forms))


def require_events(data: TraceData, walker_events: int = 0) -> None:
    """Raise a one-line TraceError when the trace has no kvmmmu events at all (``walker_events``:
    the guest walker's, where ``data`` does not hold their rows)."""
    if not walker_events and not any(t.num_rows for name, t in data.tables.items() if name in KVMMMU_EVENTS):
        raise TraceError(f"{data.info.path}: no kvmmmu events in this trace; record with -e kvmmmu")
