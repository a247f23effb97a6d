"""What a model saw while it walked the trace: the raw material of the tables and the detectors.

Models only record facts here (a transition, an install, a contradiction, a snapshot at a memslot
change); the detectors decide what the facts mean. Lists are appended in the loop and turned into
numpy/Arrow once at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from numpy.typing import ArrayLike

from kvmtrace.parsers.spilled import KeptParts, SpilledTable, kept, merged
from kvmtrace.replays.results import UNEXPLAINED_SCHEMA

#: What a zap of a page never seen was (Journal.unknown_zaps): a page created before the trace
#: started; a root still in use (root_count > 0), created before the trace started, which the zap
#: only marks invalid; the final free of an invalid root whose first zap predates the trace.
PREDATES, ROOT_IN_USE, ROOT_FREED = "predates", "root_in_use", "root_freed"

#: Rows :meth:`Journal.change` holds as Python objects before it makes them a table: ~360 bytes
#: a change as ten lists (230 MiB for a 10 M-event TDP trace), ~50 as a table.
ROWS_PER_CHUNK = 1 << 16
#: Changes from which the built SPTE-change table is kept on disk and mapped back
#: (:mod:`kvmtrace.parsers.spilled`): ~53 bytes a change, 127 MiB of a 51 M-event shadow trace
#: held to the end of the report otherwise.
ROWS_ON_DISK = 1 << 20
#: Rows of that table sorted and written at a time: a piece's take and sort are columns of these
#: (at 256 K they were ~40 MiB of the replay's peak at 52 M events, with no CPU gained).
ROWS_PER_WRITE = 1 << 16

SPTE_CHANGES_SCHEMA = pa.schema([
    pa.field("seq", pa.int64(), nullable=False),
    pa.field("key", pa.uint64(), nullable=False),  # shadow: sptep (physical); TDP: 0
    pa.field("as_id", pa.int16(), nullable=False),
    pa.field("gfn", pa.uint64(), nullable=False),
    pa.field("level", pa.int8(), nullable=False),
    pa.field("old_spte", pa.uint64()),  # null: not known to the model
    pa.field("new_spte", pa.uint64()),  # null: removed without a value (inferred zap)
    pa.field("page", pa.int64()),  # owning page id when inferred
    # present | mmio | zapped | zapped_inferred | nonpresent (dictionary-encoded: few distinct values)
    pa.field("state", pa.dictionary(pa.int8(), pa.string()), nullable=False),
    pa.field("reason", pa.dictionary(pa.int8(), pa.string()), nullable=False),
])


def _sorted_on_disk(t: pa.Table, read: Callable[[], None]) -> tuple[pa.Table, SpilledTable]:
    """``t``'s rows in seq order, written to a temporary file about :data:`ROWS_PER_WRITE` rows
    at a time and mapped back: the sorted table is never whole in the process (the sort of a
    51 M-event trace's 2.4 M changes was the replay's peak, 170 MiB more than its parts), and the
    page cache holds the result. Each of ``t``'s batches is in seq order (the loop's rows, and
    each part :meth:`Journal.add_changes` took), so the pieces are a merge of them
    (:func:`merged`): an argsort of every change's seq was the replay's peak again at 52 M events.
    ``read()`` gives back the pages of the parts kept on disk after each piece: every piece
    gathers from all over them (270 MiB of them were in the process at 106 M events)."""
    spilled = SpilledTable("the SPTE changes of this replay")
    for piece in merged(t, "seq", ROWS_PER_WRITE):
        spilled.append(piece)
        read()
    mapped = spilled.table()
    assert mapped is not None  # t has rows
    return mapped, spilled


class Parts:
    """Pieces of a table appended in order, held in memory while the whole is small.

    Why: the SPTE-change parts grew with the trace for the whole walk (110 MiB of a 51 M-event
    shadow trace), though a table that large goes to disk once built (:data:`ROWS_ON_DISK`).
    From that size on, the pieces held are written to a temporary file every
    :data:`ROWS_PER_WRITE` rows and mapped back at the end: the same pieces, in order."""

    def __init__(self, what: str, on_disk: int | None = None, per_write: int | None = None) -> None:
        """``on_disk``/``per_write``: the sizes of :data:`ROWS_ON_DISK`/:data:`ROWS_PER_WRITE` for
        another table than the SPTE changes (None: those)."""
        self.rows = 0
        self._on_disk = ROWS_ON_DISK if on_disk is None else on_disk
        self._per_write = ROWS_PER_WRITE if per_write is None else per_write
        self._held: list[pa.Table] = []
        self._held_rows = 0
        self._disk = SpilledTable(what)

    def append(self, t: pa.Table) -> None:
        self._held.append(t)
        self.rows += t.num_rows
        self._held_rows += t.num_rows
        if self.rows >= self._on_disk and self._held_rows >= self._per_write:
            for piece in self._held:
                self._disk.append(piece)
            self._held, self._held_rows = [], 0

    def tables(self) -> list[pa.Table]:
        """Every piece, in order (the written ones as one table over the file's map); may be
        called once."""
        written = self._disk.table()
        return [*([written] if written is not None else []), *self._held]

    def release(self) -> None:
        """Give back the pages of the written pieces this process has read (the map stays valid)."""
        self._disk.release()


def coded(codes: np.ndarray, vocabulary: list[str]) -> pa.DictionaryArray:
    """Strings with few distinct values, given as int codes into ``vocabulary``: no string pass."""
    return pa.DictionaryArray.from_arrays(pa.array(np.asarray(codes, dtype=np.int8)), pa.array(vocabulary, pa.string()))


@dataclass(frozen=True)
class Leaves:
    """Present leaf SPTEs, one row each. Level and address space are int8 and the owner int32:
    the shadow MMU's snapshots hold a row of every install of the trace (23 bytes, not 41)."""

    gfn: np.ndarray
    level: np.ndarray  # int8
    as_id: np.ndarray  # int8
    owner: np.ndarray  # int32: page id or -1
    installed: np.ndarray  # seq of the install
    obsolete_root: np.ndarray  # TDP: entry belongs to an invalidated root (bool)

    def take(self, rows: np.ndarray) -> Leaves:
        return Leaves(self.gfn[rows], self.level[rows], self.as_id[rows], self.owner[rows], self.installed[rows],
                      self.obsolete_root[rows])


@dataclass(frozen=True)
class Snapshot:
    """Live state just before (``start``) or just after (``end``) a memslot change's window: the
    live page ids, and the live present leaf SPTEs as rows of a table the snapshots share (the
    shadow MMU's installs). Both are looked up in live sets the snapshots share
    (:class:`kvmtrace.replays.sweep.LiveSets`, which holds each set as its difference from a
    recent one), so that a long trace's thousands of snapshots do not each hold a copy of their
    leaves (506 MB of 1.8 GB on a 10 M-event recording as six columns; 269 MiB at 51 M events
    as four bytes a live leaf) or of their pages (29 MiB in 50 000 arrays at 52 M events)."""

    page_sets: Mapping[int, np.ndarray]  # ``page_sets[page_at]``: the live page ids, ascending
    page_at: int
    source: Leaves
    live: Mapping[int, np.ndarray] | None = None  # ``live[at]``: the live leaves' rows of ``source``; None: all
    at: int = 0

    def pages(self) -> np.ndarray:
        """The live page ids, ascending (creation order), as int64 (built on each call: take it once per use)."""
        return self.page_sets[self.page_at].astype(np.int64, copy=False)

    def leaves(self) -> Leaves:
        """The live leaves' columns (built on each call: take it once per use)."""
        return self.source if self.live is None else self.source.take(self.live[self.at])


@dataclass
class Journal:
    """Facts recorded by one model run."""

    unexplained: list[tuple[int, str, str]] = field(default_factory=list)
    # spte_changes columns
    c_seq: list[int] = field(default_factory=list)
    c_key: list[int] = field(default_factory=list)
    c_as: list[int] = field(default_factory=list)
    c_gfn: list[int] = field(default_factory=list)
    c_level: list[int] = field(default_factory=list)
    c_old: list[int | None] = field(default_factory=list)
    c_new: list[int | None] = field(default_factory=list)
    c_page: list[int | None] = field(default_factory=list)
    c_state: list[str] = field(default_factory=list)
    c_reason: list[str] = field(default_factory=list)
    # present leaf installs: seq, gfn, level, as_id, pid
    i_seq: list[int] = field(default_factory=list)
    i_gfn: list[int] = field(default_factory=list)
    i_level: list[int] = field(default_factory=list)
    i_as: list[int] = field(default_factory=list)
    i_pid: list[int] = field(default_factory=list)
    #: (seq, gfn, page, evidence seqs, message): an obsolete page returned or given SPTEs
    obsolete_uses: list[tuple[int, int, int, list[int], str]] = field(default_factory=list)
    #: (seq, gfn, role, what it was: PREDATES | ROOT_IN_USE | ROOT_FREED): kvm_mmu_prepare_zap_page
    #: of a page never seen
    unknown_zaps: list[tuple[int, int, int, str]] = field(default_factory=list)
    #: (seq, gfn, level, as_id, install seq, old, new, writer pid, installer pid): W+D leaf
    #: overwritten, same pfn, D clear
    dirty_clears: list[tuple[int, int, int, int, int, int, int, int, int]] = field(default_factory=list)
    #: (seq, traced gen, pages made obsolete)
    zap_alls: list[tuple[int, int, int]] = field(default_factory=list)
    #: (change index, "start" | "end") -> Snapshot
    snapshots: dict[tuple[int, str], Snapshot] = field(default_factory=dict)
    #: the rows of :meth:`change`, as Arrow tables of SPTE_CHANGES_SCHEMA every ROWS_PER_CHUNK rows
    row_chunks: Parts = field(default_factory=lambda: Parts("the SPTE changes of this replay"))
    #: columnar additions (shadow SPTEs): Arrow tables of SPTE_CHANGES_SCHEMA / install arrays
    change_chunks: Parts = field(default_factory=lambda: Parts("the SPTE changes of this replay"))
    install_parts: KeptParts = field(default_factory=lambda: KeptParts("the SPTE installs of this replay"))
    #: the present installs once :meth:`installs` has put them together
    installed: dict[str, np.ndarray] | None = None
    #: the SPTE-change table once :meth:`spte_changes` has built it, and its file when on disk
    changes: pa.Table | None = None
    changes_on_disk: SpilledTable | None = None

    def change(self, seq: int, key: int, as_id: int, gfn: int, level: int, old: int | None, new: int | None,
               page: int | None, state: str, reason: str) -> None:
        if len(self.c_seq) >= ROWS_PER_CHUNK:
            self.row_chunks.append(self._row_changes())
            self._clear_rows()
        self.c_seq.append(seq)
        self.c_key.append(key)
        self.c_as.append(as_id)
        self.c_gfn.append(gfn)
        self.c_level.append(level)
        self.c_old.append(old)
        self.c_new.append(new)
        self.c_page.append(page)
        self.c_state.append(state)
        self.c_reason.append(reason)

    def install(self, seq: int, gfn: int, level: int, as_id: int, pid: int) -> None:
        self.i_seq.append(seq)
        self.i_gfn.append(gfn)
        self.i_level.append(level)
        self.i_as.append(as_id)
        self.i_pid.append(pid)

    def add_changes(self, *, seq: ArrayLike, key: ArrayLike, as_id: ArrayLike, gfn: ArrayLike, level: ArrayLike,
                    old: ArrayLike, old_valid: ArrayLike, new: ArrayLike, new_valid: ArrayLike, page: ArrayLike,
                    state: pa.DictionaryArray, reason: pa.DictionaryArray) -> None:
        """Many transitions at once (numpy arrays; ``*_valid`` False makes the value null; ``state`` and
        ``reason`` are :func:`coded` arrays), kept in seq order (a stable sort where they are not):
        :meth:`spte_changes` merges the parts."""
        page_ids = np.asarray(page, dtype=np.int64)
        seqs = np.asarray(seq, np.int64)
        part = pa.table({
            "seq": pa.array(seqs),
            "key": pa.array(np.asarray(key, np.uint64)),
            "as_id": pa.array(np.asarray(as_id).astype(np.int16)),
            "gfn": pa.array(np.asarray(gfn, np.uint64)),
            "level": pa.array(np.asarray(level).astype(np.int8)),
            "old_spte": pa.array(np.asarray(old, np.uint64), mask=~np.asarray(old_valid, bool)),
            "new_spte": pa.array(np.asarray(new, np.uint64), mask=~np.asarray(new_valid, bool)),
            "page": pa.array(page_ids, mask=page_ids < 0),
            "state": state,
            "reason": reason,
        }, schema=SPTE_CHANGES_SCHEMA)
        if len(seqs) > 1 and not bool(np.all(seqs[1:] >= seqs[:-1])):
            part = part.take(pa.array(np.argsort(seqs, kind="stable")))
        self.change_chunks.append(part)

    def add_installs(self, seq: ArrayLike, gfn: ArrayLike, level: ArrayLike, as_id: ArrayLike, pid: ArrayLike) -> None:
        """Many installs at once (the shadow MMU's, a part of the trace's at a time: on disk as
        they come when many, as :meth:`installs` keeps them; held, they were ~150 MiB of the
        walk's peak at 52 M events)."""
        self.install_parts.append({"seq": np.asarray(seq, np.int64), "gfn": np.asarray(gfn, np.uint64),
                                   "level": np.asarray(level).astype(np.int8),
                                   "as_id": np.asarray(as_id).astype(np.int8),
                                   "pid": np.asarray(pid).astype(np.int32)})

    def installs(self) -> dict[str, np.ndarray]:
        """Present leaf installs, in seq order. The journal then holds these arrays in place of
        their parts (one copy of every install, kept to the end of the report: 42 MiB twice at
        53 M events when it was 40 bytes an install; level and address space are int8 and the
        thread int32 now, 22 bytes), on disk when there are many (:func:`kept`: read-only)."""
        if self.installed is not None:
            return self.installed
        out: dict[str, np.ndarray] = {
            "seq": np.asarray(self.i_seq, dtype=np.int64),
            "gfn": np.asarray(self.i_gfn, dtype=np.uint64),
            "level": np.asarray(self.i_level, dtype=np.int8),
            "as_id": np.asarray(self.i_as, dtype=np.int8),
            "pid": np.asarray(self.i_pid, dtype=np.int32),
        }
        for rows in (self.i_seq, self.i_gfn, self.i_level, self.i_as, self.i_pid):
            rows.clear()
        added = self.install_parts.arrays()
        if added is not None:
            out = {k: np.concatenate((v, added[k])) for k, v in out.items()} if len(out["seq"]) else added
        seq = out["seq"]
        if len(seq) > 1 and not bool(np.all(seq[1:] >= seq[:-1])):
            order = np.argsort(seq, kind="stable")
            out = {k: v[order] for k, v in out.items()}
        # the parts add_installs kept on disk (read-only: the shadow MMU's), in order, are not
        # written again; anything concatenated or sorted here is new
        self.installed = out if not out["seq"].flags.writeable else kept(out, "the SPTE installs of this replay")
        return self.installed

    def spte_changes(self) -> pa.Table:
        """Every SPTE transition, in seq order. The journal then holds that table in place of its
        parts (the rows appended one at a time, the columnar chunks): the detectors have read
        them, and the replay's last steps ran with both copies of its largest table alive (110 MiB
        twice at 51 M events), the rows as Python objects besides. A large table is kept on disk
        (:data:`ROWS_ON_DISK`)."""
        if self.changes is not None:
            return self.changes
        self.row_chunks.append(self._row_changes())
        self._clear_rows()
        columnar = self.change_chunks.rows > 0
        t = pa.concat_tables([*self.row_chunks.tables(), *self.change_chunks.tables()]).unify_dictionaries()
        rows, columns = self.row_chunks, self.change_chunks

        def read() -> None:
            rows.release()
            columns.release()

        # the loop's rows are in seq order, and so is each columnar part, but not the parts together
        if t.num_rows >= ROWS_ON_DISK:
            t, self.changes_on_disk = _sorted_on_disk(t, read)
        elif columnar:
            t = t.take(pa.array(np.argsort(t.column("seq").to_numpy(), kind="stable")))
        elif t.column("seq").num_chunks > 1:
            t = t.combine_chunks()
        self.row_chunks = self.change_chunks = Parts("the SPTE changes of this replay")
        self.changes = t
        return t

    def release_pages(self) -> None:
        """Give back the pages of the SPTE-change table on disk that this process has read
        (:meth:`kvmtrace.parsers.spilled.SpilledTable.release`; the table stays valid)."""
        if self.changes_on_disk is not None:
            self.changes_on_disk.release()

    def _clear_rows(self) -> None:
        for column in (self.c_seq, self.c_key, self.c_as, self.c_gfn, self.c_level, self.c_old, self.c_new,
                       self.c_page, self.c_state, self.c_reason):
            column.clear()

    def _row_changes(self) -> pa.Table:
        return pa.table({
            "seq": pa.array(self.c_seq, pa.int64()),
            "key": pa.array(self.c_key, pa.uint64()),
            "as_id": pa.array(self.c_as, pa.int16()),
            "gfn": pa.array(self.c_gfn, pa.uint64()),
            "level": pa.array(self.c_level, pa.int8()),
            "old_spte": pa.array(self.c_old, pa.uint64()),
            "new_spte": pa.array(self.c_new, pa.uint64()),
            "page": pa.array(self.c_page, pa.int64()),
            "state": pa.array(self.c_state, pa.string()).dictionary_encode().cast(
                SPTE_CHANGES_SCHEMA.field("state").type),
            "reason": pa.array(self.c_reason, pa.string()).dictionary_encode().cast(
                SPTE_CHANGES_SCHEMA.field("reason").type),
        }, schema=SPTE_CHANGES_SCHEMA)

    def unexplained_table(self) -> pa.Table:
        if not self.unexplained:
            return UNEXPLAINED_SCHEMA.empty_table()
        s, e, r = zip(*self.unexplained)
        return pa.table({"seq": pa.array(s, pa.int64()), "event": pa.array(e, pa.string()),
                         "reason": pa.array(r, pa.string())}, schema=UNEXPLAINED_SCHEMA)
