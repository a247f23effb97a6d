"""A trace.dat decoded in windows of merged events, in memory bounded by the window, not the trace.

:func:`iter_windows` yields a buffer instance as a sequence of :class:`TraceData` windows of
``events_per_window`` events each, so that a trace of any length can be converted (and, later,
replayed) in constant memory. :func:`kvmtrace.parsers.tracedat.read_tracedat` reads a large buffer
as windows joined at the end (:meth:`_WindowReader.whole`). Concatenating the windows gives
exactly what a decode of every page at once gives
(:func:`kvmtrace.parsers.tracedat.reader.read_all_pages`): the same per-event Arrow schemas, the
same ``seq`` numbers, the same global order, the same gaps.

How the global order survives the cut. trace-cmd's order is a stable sort of all records by
(running maximum of the CPU's timestamps, CPU, file order) (:mod:`.merge`). Within
one CPU that key never decreases, so the merge is a k-way merge of per-CPU streams: each CPU's
pages are read and walked a *run* (up to ``pages_per_run`` pages) at a time, and a record may
leave the merge once no CPU can still produce a record that sorts before it. The CPU whose last
loaded key is smallest (ties: lowest CPU) bounds what every later record can be, so everything up
to that bound is emitted and that CPU's next run is loaded. Each CPU then holds at most one run
not yet emitted, whatever the trace's length.

Gaps (pages flagged with lost events, or damaged) point at the seq of their CPU's next record,
which may only be merged several runs later; they stay open until it is, and each window carries
the gap rows whose seq falls in it (the last window also those no record followed, seq null).

What a window holds: ``events``, ``tables`` (one per event name of its records, plus the empty
tables of the other events of their systems, as the whole read has) and ``gaps``, each in
seq order. ``info`` is the trace's :class:`TraceInfo` as of the end of that window (event counts,
lost events, first/last timestamps so far); the last window's ``info`` is the whole trace's and
equals the whole read's. Warnings are issued once, after the last window is built.

Limits of the equivalence with a decode of every page at once, all on damaged files whose CPUs
span more than one run (by default a run is up to 256 MB of pages over all CPUs): a record cut
short on the last page of a run marks that page (rather than the CPU's next page) as the gap;
the warning about corrupt pages names the first such page in run order; a chunk that fails to
decompress is reported per run, not per CPU. Fields that reach past the end of their record
(only a corrupt format asks for them) read the next bytes of the same page, as a decode of every
page at once does, but past the end of the page they read another page of the window.
"""

from __future__ import annotations

import dataclasses
import io
import os
import warnings as _warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from kvmtrace.parsers.errors import TraceWarning
from kvmtrace.parsers.memory import release_freed_memory
from kvmtrace.parsers.schema import COMMON_NAMES, GAPS_SCHEMA, TraceData, TraceInfo
from kvmtrace.parsers.spilled import SpilledTable
from kvmtrace.parsers.tracedat.arrow import empty_table, numeric
from kvmtrace.parsers.tracedat.catalog import FormatCatalog
from kvmtrace.parsers.tracedat.columns import FieldReader
from kvmtrace.parsers.tracedat.compress import Chunk, Decompressor
from kvmtrace.parsers.tracedat.layout import BufferSpec
from kvmtrace.parsers.tracedat.merge import Merged, to_ns
from kvmtrace.parsers.tracedat.meta import FileMeta, corrupt_note, open_file, open_meta, unknown_note
from kvmtrace.parsers.tracedat.metadata import comm_chunks
from kvmtrace.parsers.tracedat.pages import PageData, walk
from kvmtrace.parsers.tracedat.spill import SpilledEvents
from kvmtrace.parsers.tracedat.streams import PAD, StreamPlan, decompress_stream, plan_streams
from kvmtrace.parsers.tracedat.tables import event_tables, events_table, with_system_tables

#: Events per streamed window by default: about 40 MB of decoded window (~160 bytes an event at its peak).
DEFAULT_WINDOW = 1 << 18
#: Page bytes all CPUs' runs may hold together; a run is at most :data:`MAX_RUN_PAGES` pages. Large
#: runs amortise the page walk's per-step cost (one numpy step per record rank, for all pages).
RUN_BUDGET = 256 << 20
MAX_RUN_PAGES = 1024


def default_run_pages(cpus: int, page_size: int) -> int:
    """Pages per run: :data:`RUN_BUDGET` shared by the CPUs, between 16 and :data:`MAX_RUN_PAGES`."""
    return min(MAX_RUN_PAGES, max(16, RUN_BUDGET // page_size // max(cpus, 1)))


@dataclass
class _Run:
    """One CPU's run of whole pages, kept until its last record is in a window."""

    buf: np.ndarray  # uint8, the pages back to back (+ PAD)
    pages: int
    left: int  # records not yet in a window


class _CpuPages:
    """One CPU's pages, read (or decompressed) a run at a time from the file."""

    def __init__(self, f: io.BufferedReader, plan: StreamPlan, page: int, run_pages: int, dec: Decompressor | None,
                 path: str, notes: list[str]):
        self.f, self.plan, self.page, self.run_pages, self.dec = f, plan, page, run_pages, dec
        self.path, self.notes = path, notes
        self.done_bytes = 0  # of this CPU's (decompressed) page data
        self.next_chunk = 0
        # The chunk table as three arrays: one Chunk object per 10 pages (~180 bytes with its
        # ints) would be the one part of the read that grows with the trace.
        table = np.array([(c.offset, c.csize, c.size) for c in plan.chunks], np.int64).reshape(-1, 3)
        self.chunk_offset, self.chunk_csize = table[:, 0].copy(), table[:, 1].copy()
        self.chunk_end = np.cumsum(table[:, 2])  # decompressed bytes up to the end of each chunk
        self.plan = dataclasses.replace(plan, chunks=())

    @property
    def finished(self) -> bool:
        return self.done_bytes >= self.plan.size

    def read(self) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
        """The next run: (buffer, pages, origin of each page, damaged flag of each page)."""
        if self.dec is None:
            size = min(self.run_pages * self.page, self.plan.size - self.done_bytes)
            buf = np.zeros(size + PAD, np.uint8)
            self.f.seek(self.plan.stream.offset + self.done_bytes)
            self.f.readinto(buf.data[:size])
            origin_base = self.plan.stream.offset + self.done_bytes
            damaged_at: list[int] = []
        else:
            buf, size, damaged_at = self._decompress_run()
            origin_base = self.done_bytes
        n = size // self.page
        origin = origin_base + np.arange(n, dtype=np.int64) * self.page
        damaged = np.zeros(n, bool)
        if damaged_at and n:
            damaged[np.minimum(np.array(damaged_at, np.int64) // self.page, n - 1)] = True
        self.done_bytes += size
        return buf, n, origin, damaged

    def _decompress_run(self) -> tuple[np.ndarray, int, list[int]]:
        """Chunks up to about ``run_pages`` pages (ending on a page boundary), decompressed."""
        end, n, page = self.chunk_end, len(self.chunk_end), self.page
        first = self.next_chunk
        base = int(end[first - 1]) if first else 0
        # The fewest chunks that reach run_pages pages, then up to the next page boundary.
        last = min(int(np.searchsorted(end, base + self.run_pages * page)) + 1, n)
        while last < n and (int(end[last - 1]) - base) % page:
            last += 1
        self.next_chunk = last
        total = int(end[last - 1]) - base if last > first else 0
        size = min(total, self.plan.size - self.done_bytes)
        size -= size % page
        if last == first:
            self.done_bytes = self.plan.size  # nothing left that holds a whole page
            return np.zeros(PAD, np.uint8), 0, []
        offset, csize = self.chunk_offset[first:last], self.chunk_csize[first:last]
        start = int(offset[0])
        self.f.seek(self.plan.stream.offset + start)
        raw = self.f.read(int(offset[-1] + csize[-1]) - start)
        sizes = np.diff(end[first:last], prepend=base)
        chunks = zip(offset.tolist(), csize.tolist(), sizes.tolist())
        # The run's chunks are relative to its first; so is the stream, so that a chunk that fails
        # to decompress is named by its byte in the file.
        stream = dataclasses.replace(self.plan.stream, offset=self.plan.stream.offset + start)
        sub = StreamPlan(stream, size, raw, tuple(Chunk(o - start, c, z) for o, c, z in chunks))
        buf = np.zeros(size + PAD, np.uint8)
        damaged_at: list[int] = []
        assert self.dec is not None
        decompress_stream(self.dec, sub, buf.data[:size], damaged_at, 0, self.notes, self.path)
        return buf, size, damaged_at


@dataclass
class _Pending:
    """Records of one CPU walked but not yet merged (file order; keys never decrease)."""

    key: np.ndarray  # int64 running maximum of ts
    ts: np.ndarray  # int64 ns
    pos: np.ndarray  # payload offset in its run's buffer
    length: np.ndarray  # int32
    run: np.ndarray  # int32 run id
    first_ordinal: int  # this CPU's ordinal (file-order index) of the first pending record

    def take(self, k: int) -> _Pending:
        """Remove and return the first ``k`` records."""
        head = _Pending(self.key[:k], self.ts[:k], self.pos[:k], self.length[:k], self.run[:k], self.first_ordinal)
        self.key, self.ts, self.pos = self.key[k:], self.ts[k:], self.pos[k:]
        self.length, self.run = self.length[k:], self.run[k:]
        self.first_ordinal += k
        return head


@dataclass
class _Gap:
    """A gap row waiting for the seq of its CPU's record ``ordinal``."""

    cpu: int
    ts: int | None
    lost: int | None
    ordinal: int
    seq: int | None = None


@dataclass
class _Out:
    """Merged records not yet in a window, in pieces (concatenated when a window is cut)."""

    pieces: list[tuple[np.ndarray, ...]] = field(default_factory=list)
    count: int = 0

    def add(self, arrays: tuple[np.ndarray, ...]) -> None:
        self.pieces.append(arrays)
        self.count += len(arrays[0])

    def cut(self, n: int) -> tuple[np.ndarray, ...]:
        """The first ``n`` records (ts, pos, length, run, cpu), as new arrays.

        Only the pieces the window takes are copied: a run's merge can leave many windows'
        records at once, and copying the rest at every cut (or returning views into it) made
        the cost and the memory of a run grow with the square of its windows."""
        taken: list[tuple[np.ndarray, ...]] = []
        need = n
        while need:
            piece = self.pieces[0]
            if len(piece[0]) <= need:
                taken.append(self.pieces.pop(0))
                need -= len(piece[0])
            else:
                taken.append(tuple(a[:need] for a in piece))
                self.pieces[0] = tuple(a[need:] for a in piece)
                need = 0
        self.count -= n
        return tuple(np.concatenate(cols) for cols in zip(*taken))


@dataclass
class _Part:
    """One window decoded: its tables, the columns of its ``events`` rows (first seq, ts, cpu,
    pid, event id), the gaps that point into it, and the trace's info as of its end."""

    tables: dict[str, pa.Table]
    first_seq: int
    records: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    gaps: pa.Table
    info: TraceInfo
    counts: dict[str, int]  # this window's events by name


_COMM = COMMON_NAMES.index("comm")
_PID = COMMON_NAMES.index("pid")


def _with_comm(spilled: SpilledTable, schema: pa.Schema, cmdlines: dict[int, str]) -> tuple[pa.Table, SpilledTable]:
    """A kept table mapped back from disk with its ``comm`` column put back (``schema``: the
    table's own), and where the column's codes went: to disk too, so none of it stays in the process."""
    table = spilled.table()
    assert table is not None  # only tables with rows are spilled
    field = schema.field(_COMM)
    codes = SpilledTable(spilled.what)
    for chunk in comm_chunks([c.to_numpy() for c in table.column(_PID).chunks], cmdlines):
        codes.append(pa.table([chunk], schema=pa.schema([field])))
    spilled.release()  # the pid column's pages, read for the codes
    comm = codes.table()
    assert comm is not None
    return table.add_column(_COMM, field, comm.column(0)), codes


class _Joined:
    """The windows of one buffer, held as decoded, until they are joined into one read.

    A per-event table's columns are its windows' pieces as they are (Arrow chunks: no copy).
    Two things are rebuilt: ``comm``, so that every chunk shares the one dictionary the
    whole-file read gives the column (the comms of its distinct pids, ascending), and the
    ``events`` table, built once from the records' joined columns: consumers look seqs up in
    it and read its columns as numpy arrays, which only one chunk gives without a copy.

    With ``keep`` (a read for one analysis), only the tables of those events are held, the
    others are named in ``left_out``, and the records go to disk as they come
    (:class:`kvmtrace.parsers.tracedat.spill.SpilledEvents`), from where the ``events`` table is
    mapped back whole. The kept tables go to disk too (:class:`kvmtrace.parsers.spilled.SpilledTable`,
    without ``comm``, whose codes into the one dictionary are known only at the end and follow
    them there): a long trace's kept rows are the page cache's to hold, not the process's."""

    def __init__(self, keep: frozenset[str] | None = None) -> None:
        self.keep = keep
        self.parts: dict[str, list[pa.Table]] = {}
        self.spilled_parts: dict[str, SpilledTable] = {}  # with keep: the kept tables, without comm
        self.schemas: dict[str, pa.Schema] = {}  # with keep: the kept tables' own
        self.mapped: list[SpilledTable] = []  # with keep: what the joined tables map
        self.records: tuple[list[np.ndarray], ...] = ([], [], [], [])  # ts, cpu, pid, event_id
        #: where only some events' rows are kept, every record still has its ``events`` row: on disk
        self.spilled = SpilledEvents() if keep is not None else None
        self.left_out: set[str] = set()  # events that occur but whose rows are not kept
        self.gap_parts: list[pa.Table] = []

    def add(self, part: _Part) -> None:
        if self.keep is not None:
            self.left_out.update(n for n in part.counts if n not in self.keep)
        for name, table in part.tables.items():
            if self.keep is not None and name not in self.keep:
                continue  # decoded for the observer only
            if self.keep is not None and table.num_rows:
                self.schemas.setdefault(name, table.schema)
                spill = self.spilled_parts.setdefault(name, SpilledTable(f"the {name} rows of this trace"))
                spill.append(table.remove_column(_COMM))
                continue
            held = self.parts.setdefault(name, [])
            if table.num_rows:
                held.append(table)
        if self.spilled is not None:
            self.spilled.add(part.first_seq, *part.records)
        else:
            for held_records, array in zip(self.records, part.records):
                held_records.append(array)
        if part.gaps.num_rows:
            self.gap_parts.append(part.gaps)

    def tables(self, catalog: FormatCatalog, cmdlines: dict[int, str]) -> dict[str, pa.Table]:
        """One table per event, in the whole-file read's order (:func:`with_system_tables`)."""
        present = {}
        for name in [n for n, held in self.parts.items() if held]:
            held = self.parts.pop(name)
            field = held[0].schema.field(_COMM)
            comms = comm_chunks([t.column(_PID).chunk(0).to_numpy() for t in held], cmdlines)
            present[name] = pa.concat_tables([t.set_column(_COMM, field, c) for t, c in zip(held, comms)])
        for name, spilled in self.spilled_parts.items():
            present[name], codes = _with_comm(spilled, self.schemas[name], cmdlines)
            self.mapped += [spilled, codes]
        self.spilled_parts.clear()
        return with_system_tables(present, catalog, frozenset(self.left_out))

    def release_pages(self) -> None:
        """Give back the pages of the kept tables this process has read (:meth:`TraceData.release_pages`)."""
        for spilled in self.mapped:
            spilled.release()

    def joined_records(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``ts, cpu, pid, event_id`` of every record, each joined and its pieces let go."""
        ts, cpu, pid, event_id = (self._join_records(i) for i in range(4))
        return ts, cpu, pid, event_id

    def events(self, catalog: FormatCatalog, cmdlines: dict[int, str]) -> pa.Table:
        """The ``events`` table, built once from the records' joined columns (or the spilled ones)."""
        if self.spilled is not None:
            return self.spilled.table(catalog, cmdlines)
        return events_table(*self.joined_records(), catalog, cmdlines)

    def _join_records(self, i: int) -> np.ndarray:
        held = self.records[i]
        joined = np.concatenate(held) if len(held) != 1 else held[0]
        held.clear()
        release_freed_memory()
        return joined

    def gaps(self) -> pa.Table:
        """The gap rows in the whole-file read's order: by CPU, then page (their seqs ascend
        within a CPU; one no record followed has no seq and is that CPU's last)."""
        if not self.gap_parts:
            return empty_table(GAPS_SCHEMA)
        return pa.concat_tables(self.gap_parts).sort_by([("cpu", "ascending"), ("seq", "ascending")])


class _WindowReader:
    """The state of one windowed read: per-CPU sources, pending records, open gaps, totals."""

    def __init__(self, f: io.BufferedReader, size: int, meta: FileMeta, spec: BufferSpec, events_per_window: int,
                 pages_per_run: int | None):
        box = meta.box
        self.meta, self.spec = meta, spec
        self.notes: list[str] = list(box.warnings)
        page = spec.page_size
        self.page = page
        plans = plan_streams(f, size, box, spec, page, self.notes, keep_raw=False)
        run_pages = pages_per_run or default_run_pages(len(plans), page)
        dec = Decompressor(box.compression, box.path) if spec.compressed else None
        self.sources = {p.stream.cpu: _CpuPages(f, p, page, run_pages, dec, box.path, self.notes) for p in plans}
        self.window = events_per_window
        self.pending: dict[int, _Pending] = {}
        self.last_key: dict[int, int | None] = {c: None for c in self.sources}  # None: nothing loaded yet
        self.carry: dict[int, int | None] = {c: None for c in self.sources}  # running max so far
        self.ordinals: dict[int, int] = {c: 0 for c in self.sources}  # records walked per CPU
        self.runs: dict[int, _Run] = {}
        self.next_run = 0
        self.gaps: dict[int, list[_Gap]] = {c: [] for c in self.sources}  # open, by CPU, in file order
        self.resolved: list[_Gap] = []
        self.out = _Out()
        self.merged = 0  # records merged (the next one's seq)
        self.seq = 0  # first seq of the next window
        self.corrupt: list[tuple[int, str]] = []
        self.counts: dict[str, int] = {}
        self.unknown = 0
        self.lost: dict[int, int] = {}
        self.lost_unknown: dict[int, int] = {}
        self.first_ts: int | None = None
        self.last_ts: int | None = None
        #: decode only the tables of these events (:meth:`kept`); None: every event's
        self.only: frozenset[str] | None = None
        self.type_field = meta.catalog.common_field("common_type")
        self.pid_field = meta.catalog.common_field("common_pid")

    # ------------------------------------------------------------------ the merge

    def windows(self) -> Iterator[TraceData]:
        for part in self._parts():
            yield self._window(part)

    def whole(self) -> TraceData:
        """The whole buffer as one :class:`TraceData`: the windows joined (:class:`_Joined`).

        Why (for a large buffer, :mod:`kvmtrace.parsers.tracedat.reader`): decoding a window at a
        time bounds the pages, records and merge arrays held to one window's.
        """
        return self._join(_Joined())

    def kept(self, keep: Callable[[str, str | None], bool], observe: Callable[[TraceData], None],
             decode: Callable[[str, str | None], bool] | None = None) -> TraceData:
        """The buffer with only the rows of the events ``keep(name, system)`` accepts, joined
        from windows each of which ``observe`` sees first
        (:func:`kvmtrace.parsers.tracedat.reader.read_kept`). Events ``decode`` accepts are
        decoded for ``observe`` but not held; the other events' fields are never decoded: a
        window has their rows in its ``events`` table only."""
        catalog = self.meta.catalog
        names = {name: catalog.system(i) for i, name in catalog.table_names.items()}
        kept = frozenset(name for name, system in names.items() if keep(name, system))
        self.only = kept | {name for name, system in names.items() if decode is not None and decode(name, system)}
        return self._join(_Joined(kept), observe)

    def _join(self, joined: _Joined, observe: Callable[[TraceData], None] | None = None) -> TraceData:
        info: TraceInfo | None = None
        for part in self._parts():
            if observe is not None:
                observe(self._window(part))
            joined.add(part)
            info = part.info
        release_freed_memory()  # the windows' decode buffers: Arrow's allocations will not reuse them
        assert info is not None  # _parts yields at least the last window
        meta = self.meta
        tables = joined.tables(meta.catalog, meta.cmdlines)
        events = joined.events(meta.catalog, meta.cmdlines)
        return TraceData(info=info, events=events, tables=tables, gaps=joined.gaps(),
                         left_out=frozenset(joined.left_out),
                         spilled_rows=joined.spilled.rows_at if joined.spilled is not None else None,
                         spilled_chunks=joined.spilled.chunks if joined.spilled is not None else None,
                         spilled_pages=joined.release_pages if joined.mapped else None)

    def _parts(self) -> Iterator[_Part]:
        yielded = False
        while True:
            live = [c for c, s in self.sources.items() if not s.finished]
            limiting = min(live, key=lambda c: (self.last_key[c] is not None, self.last_key[c] or 0, c)) \
                if live else None
            if limiting is None:
                self._emit(None)
            elif (bound := self.last_key[limiting]) is not None:
                self._emit((bound, limiting))
            # Keep one record back until the end: the last window must be cut after every
            # page is read, so that it carries the whole trace's info and the gaps left open.
            while self.out.count > self.window:
                yield self._decode(self.window, last=False)
                yielded = True
            if limiting is None:
                break
            self._load(limiting)
        if self.out.count or not yielded or self.resolved or any(self.gaps.values()):
            yield self._decode(self.out.count, last=True)

    def _load(self, cpu: int) -> None:
        """Read and walk the next run of ``cpu``; its records become pending, its flagged pages gaps."""
        src = self.sources[cpu]
        buf, n, origin, damaged = src.read()
        starts = np.arange(n, dtype=np.int64) * self.page
        pages = PageData(buf=buf, starts=starts, cpu=np.full(n, cpu, np.int16), big_endian=self.meta.box.big_endian,
                         header=self.meta.header, origin=origin, compressed=src.dec is not None, damaged=damaged)
        records, flags, corrupt = walk(pages)
        self.corrupt += corrupt
        count = len(records.pos)
        ts = to_ns(records.ts, np.full(count, cpu, np.int16), self.meta.opts)
        # The CPU's running maximum carries over from its previous run: the keys (and so the
        # bound the merge waits for) are exactly the whole-file merge's.
        key = np.maximum.accumulate(ts) if count else ts.copy()
        if count and (carried := self.carry[cpu]) is not None:
            np.maximum(key, carried, out=key)
        if count:
            self.carry[cpu] = self.last_key[cpu] = int(key[-1])
        run_id = self.next_run
        self.next_run += 1
        if count:
            self.runs[run_id] = _Run(buf, n, count)
        base = self.ordinals[cpu]
        missed = np.flatnonzero(flags.missed | pages.damaged)
        if missed.size:
            first = records.first_of_page()[missed] + base
            page_damaged = pages.damaged[missed]
            raw = flags.ts[missed]
            no_ts = page_damaged & (raw == 0)
            at = to_ns(raw, np.full(len(missed), cpu, np.int16), self.meta.opts)
            lost = np.where(page_damaged, -1, flags.lost[missed])
            for o, t, nt, lo in zip(first.tolist(), at.tolist(), no_ts.tolist(), lost.tolist()):
                self.gaps[cpu].append(_Gap(cpu, None if nt else t, lo if lo >= 0 else None, o))
        # Only the limiting CPU is loaded, and the merge just emitted all of its records.
        assert cpu not in self.pending or not len(self.pending[cpu].key)
        self.pending[cpu] = _Pending(key, ts, records.pos, records.length, np.full(count, run_id, np.int32), base)
        self.ordinals[cpu] = base + count

    def _emit(self, bound: tuple[int, int] | None) -> None:
        """Merge every pending record that sorts at or before ``bound`` (None: all of them)."""
        heads: list[tuple[int, _Pending]] = []
        for cpu in sorted(self.pending):
            p = self.pending[cpu]
            if bound is None:
                k = len(p.key)
            else:
                k = int(np.searchsorted(p.key, bound[0], side="right" if cpu <= bound[1] else "left"))
            if k:
                heads.append((cpu, p.take(k)))
        if not heads:
            return
        key = np.concatenate([h.key for _, h in heads])
        order = np.argsort(key, kind="stable")  # CPU-ordered concatenation: ties go to the lower CPU
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order))
        at = 0
        for cpu, h in heads:
            k = len(h.key)
            open_gaps = self.gaps[cpu]
            while open_gaps and open_gaps[0].ordinal < h.first_ordinal + k:
                g = open_gaps.pop(0)
                g.seq = self.merged + int(rank[at + g.ordinal - h.first_ordinal])
                self.resolved.append(g)
            at += k
        cpu_col = np.concatenate([np.full(len(h.key), cpu, np.int16) for cpu, h in heads])
        self.out.add((*(np.concatenate([getattr(h, name) for _, h in heads])[order]
                        for name in ("ts", "pos", "length", "run")), cpu_col[order]))
        self.merged += len(order)

    # ------------------------------------------------------------------ one window

    def _window(self, part: _Part) -> TraceData:
        events = events_table(*part.records, self.meta.catalog, self.meta.cmdlines, part.first_seq)
        return TraceData(info=part.info, events=events, tables=part.tables, gaps=part.gaps)

    def _decode(self, n: int, last: bool) -> _Part:
        """The next ``n`` merged records decoded: their tables, the columns of their ``events`` rows,
        the gaps that point into them and the info so far."""
        ts, pos, length, run, cpu = self.out.cut(n) if n else (np.empty(0, np.int64), np.empty(0, np.int32),
                                                               np.empty(0, np.int32), np.empty(0, np.int32),
                                                               np.empty(0, np.int16))
        first_seq = self.seq
        self.seq += n
        buf, wpos = self._gather(pos, run)
        meta, catalog = self.meta, self.meta.catalog
        reader = FieldReader(buf, meta.box.big_endian)
        (type_off, type_size), (pid_off, pid_size) = self.type_field, self.pid_field
        merged = Merged(
            pos=wpos, length=length, ts=ts, cpu=cpu,
            event_id=reader.uint(wpos + type_off, type_size, type_off & 3).astype(np.uint16),
            pid=reader.integers(wpos + pid_off, pid_size, True, pid_off & 3).astype(np.int32, copy=False),
        )
        tables, counts, unknown = event_tables(merged, catalog, reader, meta.cmdlines, meta.printk,
                                               meta.header.data_size, first_seq, self.only)
        for name, c in counts.items():
            self.counts[name] = self.counts.get(name, 0) + c
        self.unknown += unknown
        if n:
            lo, hi = int(ts.min()), int(ts.max())
            self.first_ts = lo if self.first_ts is None else min(self.first_ts, lo)
            self.last_ts = hi if self.last_ts is None else max(self.last_ts, hi)
        gaps = self._gap_rows(self.seq, last)
        notes = list(self.notes)
        if last:
            if self.corrupt:
                notes.append(corrupt_note(meta.box.path, self.corrupt))
            if self.unknown:
                notes.append(unknown_note(meta.box.path, self.unknown))
            for note in notes:
                _warnings.warn(note, TraceWarning, stacklevel=5)
        info = meta.info(self.spec, self.counts, self.lost, self.lost_unknown, self.first_ts, self.last_ts, notes)
        return _Part(tables, first_seq, (ts, cpu, merged.pid, merged.event_id), gaps, info, counts)

    def _gather(self, pos: np.ndarray, run: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The pages the window's records lie on, copied back to back, and the records' offsets
        in that copy. Whole pages (not just the records' bytes) so that every field reads what
        it reads in the whole-file buffer; runs whose records are all in windows are freed.

        A run is one CPU's pages and a CPU's records are merged in file order, so the pages a
        window needs from a run are one contiguous range: one slice copy per run."""
        page = self.page
        if not len(pos):
            return np.zeros(PAD, np.uint8), pos
        lo = int(run.min())
        rid = (run - lo).astype(np.intp)
        nruns = int(rid.max()) + 1
        first = np.full(nruns, np.iinfo(np.int64).max, np.int64)
        last = np.full(nruns, -1, np.int64)
        pos64 = pos.astype(np.int64)
        np.minimum.at(first, rid, pos64)
        np.maximum.at(last, rid, pos64)
        used = np.flatnonzero(last >= 0)
        first_page, end_page = first[used] // page, last[used] // page + 1
        sizes = (end_page - first_page) * page
        base = np.zeros(nruns, np.int64)  # where each run's range starts in the copy, minus its first byte
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        base[used] = starts - first_page * page
        total = int(sizes.sum())
        buf = np.empty(total + PAD, np.uint8)
        buf[total:] = 0
        counts = np.bincount(rid, minlength=nruns)
        for r, a, b, at in zip(used.tolist(), first_page.tolist(), end_page.tolist(), starts.tolist()):
            held = self.runs[lo + r]
            buf[at : at + (b - a) * page] = held.buf[a * page : b * page]
            held.left -= int(counts[r])
            if held.left == 0:
                del self.runs[lo + r]
        new_pos = base[rid] + pos64
        return buf, new_pos.astype(np.int32 if len(buf) < 2**31 else np.int64)

    def _gap_rows(self, end_seq: int, last: bool) -> pa.Table:
        """The resolved gaps whose seq is before ``end_seq`` (the last window: every gap left)."""
        rows = [g for g in self.resolved if last or (g.seq is not None and g.seq < end_seq)]
        self.resolved = [g for g in self.resolved if not (last or (g.seq is not None and g.seq < end_seq))]
        if last:
            for cpu in sorted(self.gaps):
                rows += self.gaps[cpu]
                self.gaps[cpu] = []
        rows.sort(key=lambda g: (g.seq is None, g.seq if g.seq is not None else 0, g.cpu))
        for g in rows:
            if g.lost is None:
                self.lost_unknown[g.cpu] = self.lost_unknown.get(g.cpu, 0) + 1
            else:
                self.lost[g.cpu] = self.lost.get(g.cpu, 0) + g.lost
        if not rows:
            return empty_table(GAPS_SCHEMA)
        cpus = np.array([g.cpu for g in rows], np.int16)
        ts = np.array([g.ts or 0 for g in rows], np.int64)
        seq = np.array([g.seq or 0 for g in rows], np.int64)
        lost = np.array([g.lost or 0 for g in rows], np.int64)
        return pa.Table.from_arrays(
            [numeric(cpus), numeric(ts, mask=np.array([g.ts is None for g in rows])),
             numeric(seq, mask=np.array([g.seq is None for g in rows])),
             numeric(lost, mask=np.array([g.lost is None for g in rows]))],
            schema=GAPS_SCHEMA,
        )


def iter_windows(path: str | os.PathLike[str], *, instance: str | None = None,
                 events_per_window: int = DEFAULT_WINDOW, pages_per_run: int | None = None) -> Iterator[TraceData]:
    """Yield one buffer instance of a trace.dat (default: the top buffer) as windows of
    ``events_per_window`` merged events (the last may be shorter; a trace without events gives
    one empty window). ``pages_per_run``: pages read per CPU at a time (default: see
    :func:`default_run_pages`); tests force it small so that run boundaries fall everywhere.

    Memory: the decoded window, plus at most one run per CPU, plus the pages the window's records
    lie on. The file stays open while the windows are consumed.
    """
    with window_reader(path, instance, events_per_window, pages_per_run) as reader:
        yield from reader.windows()


@contextmanager
def window_reader(path: str | os.PathLike[str], instance: str | None, events_per_window: int,
                  pages_per_run: int | None) -> Iterator[_WindowReader]:
    """The windowed reader of one buffer instance, its file open for the ``with`` block: what
    :func:`iter_windows` and :func:`kvmtrace.parsers.tracedat.reader.read_kept` share."""
    if events_per_window < 1:
        raise ValueError("events_per_window must be at least 1")
    spath = os.fspath(path)
    with open_file(spath) as f:
        meta, size = open_meta(f, spath)
        yield _WindowReader(f, size, meta, meta.spec(instance), events_per_window, pages_per_run)

