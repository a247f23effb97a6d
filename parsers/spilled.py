"""Arrow tables that grow with a trace, kept in temporary files and mapped back.

Why: a long trace's read for one analysis keeps the rows of the events the replay reads (54 bytes
a row; 352 MiB of ``kvm_tdp_mmu_spte_changed`` in a 10 M-event TDP trace); held in the process,
they grow with the trace. A :class:`SpilledTable` is
appended to an unlinked temporary file as Arrow IPC record batches and read back as a table over a
read-only memory map of that file: the same schema, values and chunks, with no copy. The page
cache holds the bytes; a consumer brings into the process only the pages of the columns it reads
(nothing reads ``common_flags``), and those are clean file pages, which the kernel takes back
under memory pressure rather than failing. The file is unlinked from the start and its space
freed with the last buffer that maps it: nothing is left behind, whatever happens.
"""

from __future__ import annotations

import itertools
import mmap
import tempfile
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import IO, TypeVar

import numpy as np
import pyarrow as pa

from kvmtrace.parsers.errors import TraceError
from kvmtrace.parsers.memory import release_freed_memory

T = TypeVar("T")


def temporary_file(prefix: str, what: str) -> IO[bytes]:
    """An unlinked temporary file in ``TMPDIR`` for ``what`` (words for the error message)."""
    try:
        return tempfile.TemporaryFile(prefix=prefix)
    except OSError as err:
        raise no_room(what, err) from None


def no_room(what: str, err: OSError) -> TraceError:
    """The error for a temporary file that cannot be created or written (a full disk)."""
    return TraceError(f"cannot keep {what} in {tempfile.gettempdir()} ({err.strerror})",
                      hint="set TMPDIR to a disk with more room")


class SpilledTable:
    """One table written a piece at a time (:meth:`append`) and mapped back whole (:meth:`table`).

    The pieces must share one schema; dictionary columns may change their dictionary from piece
    to piece (the IPC stream format carries each). :meth:`table` may be called once."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.rows = 0
        self._file: IO[bytes] | None = None
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None
        self._map: mmap.mmap | None = None

    def append(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        try:
            if self._writer is None:
                self._file = temporary_file("kvmtrace-table-", self.what)
                self._writer = pa.ipc.new_stream(self._file, table.schema)
            self._writer.write_table(table)
        except OSError as err:
            raise no_room(self.what, err) from None
        self.rows += table.num_rows

    def table(self) -> pa.Table | None:
        """The pieces as one table over a map of the file (its chunks are the pieces' batches);
        None when nothing was appended."""
        if self._writer is None or self._file is None:
            return None
        try:
            self._writer.close()
            self._file.flush()
        except OSError as err:
            raise no_room(self.what, err) from None
        # The map holds its own descriptor: the file's space is freed with the last buffer over it.
        self._map = _mapped(self._file)
        self._file.close()
        self._writer = self._file = None
        return pa.ipc.open_stream(pa.py_buffer(self._map)).read_all()

    def release(self) -> None:
        """Give back the pages of the map this process has read. A page read through a map stays
        in the process's resident set until it is unmapped, so a pass over a column would count
        the whole column against the process; after this, the pages are the page cache's again
        (a later read maps them back, from memory while the cache holds them)."""
        if self._map is not None and _DONTNEED is not None:
            self._map.madvise(_DONTNEED)


#: Rows from which :func:`kept` keeps arrays on disk: below it the file, the map and the page
#: faults cost more than the memory they would save.
ARRAYS_ON_DISK = 1 << 20


def kept(arrays: Mapping[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    """``arrays`` as the replay keeps them: :func:`on_disk` when one has :data:`ARRAYS_ON_DISK`
    rows or more, else as they are."""
    if max((len(a) for a in arrays.values()), default=0) >= ARRAYS_ON_DISK:
        return on_disk(arrays, what)
    return dict(arrays)


def kept_table(table: pa.Table, what: str, schema: pa.Schema, order: np.ndarray | None = None) -> pa.Table:
    """``table``'s rows in ``order`` (None: as they are) cast to ``schema``, as the replay keeps
    it: with :data:`ARRAYS_ON_DISK` rows or more, gathered, cast and written to disk a piece at a
    time (:func:`in_order`) and mapped back (:class:`SpilledTable`), so that neither the ordered
    copy nor the cast one (dictionary codes made strings, say) is ever whole in the process."""
    if table.num_rows < ARRAYS_ON_DISK:
        return (table if order is None else table.take(pa.array(order))).cast(schema)
    spilled = SpilledTable(what)
    for piece in in_order(table, order, ARRAYS_ON_DISK):
        spilled.append(piece.cast(schema))
    mapped = spilled.table()
    assert mapped is not None  # the table has rows
    return mapped


class KeptParts:
    """Arrays of the same names appended a part at a time and joined once (:meth:`arrays`), kept as
    :func:`kept` keeps a whole: from :data:`ARRAYS_ON_DISK` rows in all, each name's parts are
    written to its own unlinked temporary file as they come and mapped back read-only.

    Why: arrays made a part at a time (the shadow MMU's installs, a part of its settling at a
    time) were joined whole in the process before going to disk: 22 bytes an install at once
    (~150 MiB of the walk's peak at 52 M events)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.rows = 0
        self._held: list[dict[str, np.ndarray]] = []
        self._files: dict[str, tuple[IO[bytes], np.dtype]] = {}

    def append(self, arrays: Mapping[str, np.ndarray]) -> None:
        """One part: 1-D arrays of one length, the same names and dtypes as every other part."""
        part = {name: np.ascontiguousarray(values) for name, values in arrays.items()}
        self.rows += max((len(v) for v in part.values()), default=0)
        self._held.append(part)
        if self.rows >= ARRAYS_ON_DISK:
            self._write()

    def arrays(self) -> dict[str, np.ndarray] | None:
        """Every part joined, in order (None: nothing appended); may be called once."""
        if not self._files:
            held, self._held = self._held, []
            return {name: np.concatenate([p[name] for p in held]) for name in held[0]} if held else None
        self._write()
        out: dict[str, np.ndarray] = {}
        try:
            for name, (file, dtype) in self._files.items():
                with file:
                    file.flush()
                    out[name] = np.frombuffer(_mapped(file), dtype)
        except OSError as err:
            raise no_room(self.what, err) from None
        self._files = {}
        return out

    def _write(self) -> None:
        """Append the parts held to their names' files."""
        try:
            for part in self._held:
                for name, values in part.items():
                    if name not in self._files:
                        self._files[name] = (temporary_file("kvmtrace-arrays-", self.what), values.dtype)
                    file, dtype = self._files[name]
                    if values.ndim != 1 or values.dtype != dtype:
                        raise ValueError(f"a part of {self.what} is not a column of {dtype}: {name}")
                    file.write(values.view(np.uint8).data)
        except OSError as err:
            raise no_room(self.what, err) from None
        self._held = []


def in_order(table: pa.Table, order: np.ndarray | None, rows: int) -> Iterator[pa.Table]:
    """``table``'s rows in ``order`` (None: as they are), ``rows`` at a time. Each piece is
    gathered from the batches that hold its rows: pyarrow's take over a chunked table joins every
    chunk first (a copy of the whole table, for a take of any size)."""
    batches = table.to_batches()
    if order is None:
        for batch in batches:
            for lo in range(0, batch.num_rows, rows):
                yield pa.Table.from_batches([batch.slice(lo, rows)])
        return
    starts = np.cumsum([0, *(b.num_rows for b in batches)], dtype=np.int64)
    for i in range(0, len(order), rows):
        piece = order[i:i + rows]
        part = np.searchsorted(starts, piece, side="right") - 1
        by_part = np.argsort(part, kind="stable")  # the piece's rows, batch by batch
        taken = [batches[k].take(pa.array(piece[by_part][part[by_part] == k] - starts[k]))
                 for k in np.unique(part).tolist()]
        gathered = pa.Table.from_batches(taken, schema=table.schema).combine_chunks()
        yield gathered.take(pa.array(np.argsort(by_part, kind="stable")))


def merged(table: pa.Table, key: str, rows: int) -> Iterator[pa.Table]:
    """``table``'s rows in the order of its int64 column ``key`` (ties in table order), about
    ``rows`` at a time, where each of its batches is in that order already: the batches (runs)
    merged a range of keys at a time, each range's rows found in each run by binary search.

    Why: the alternative, an argsort of the whole column (joined first), held two 8-byte arrays
    of every row at once: the SPTE changes of a 52 M-event trace, 14 M rows, 226 MiB, the
    replay's peak. The ranges are cut at every few rows of every run, so that a piece holds
    at most about one and a half times ``rows``."""
    batches = [b for b in table.to_batches() if b.num_rows]
    keys = [b.column(key).to_numpy() for b in batches]
    step = max(1, rows // (2 * max(1, len(batches))))  # each run's every step-th key is a sample
    per = max(1, rows // step)  # samples a piece spans
    runs_samples = [np.empty(0, np.int64)]
    for k in keys:  # a run's samples read a little of every page of its keys (on disk when long)
        runs_samples.append(k[::step].copy())
        release_all()  # those pages, before the next run's are read
    samples = np.sort(np.concatenate(runs_samples))
    del runs_samples
    cuts: list[int | None] = [None, *np.unique(samples[per::per]).tolist(), None]
    del samples
    for lo, hi in itertools.pairwise(cuts):
        parts = []
        for batch, k in zip(batches, keys):
            a = 0 if lo is None else int(np.searchsorted(k, lo, side="left"))
            z = len(k) if hi is None else int(np.searchsorted(k, hi, side="left"))
            if z > a:
                parts.append(batch.slice(a, z - a))
        if parts:
            piece = pa.Table.from_batches(parts, schema=table.schema).combine_chunks()
            yield piece.take(pa.array(np.argsort(piece.column(key).to_numpy(), kind="stable")))


def on_disk(arrays: Mapping[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    """``arrays`` written to one unlinked temporary file and mapped back: read-only arrays of the
    same dtypes, shapes and values, whose pages the page cache holds (given back by
    :func:`release_all`).

    Why: the replay keeps arrays with a row per install, per fault or per live leaf from the walk
    to the end of the report (~570 MiB at 52 M events of a memslot-dense trace); each step reads a
    few of them, and held in the process they added up whatever step ran. Read-only, so a consumer
    that would change them in place fails instead of writing to a file others read."""
    out: dict[str, np.ndarray] = {}
    place: dict[str, tuple[int, np.dtype, tuple[int, ...]]] = {}
    file = temporary_file("kvmtrace-arrays-", what)
    try:
        with file:
            at = 0
            for name, values in arrays.items():
                values = np.ascontiguousarray(values)
                if not values.nbytes:
                    out[name] = values.copy()
                    continue
                at += file.write(bytes(-at % 64))  # each array on its own aligned start
                place[name] = (at, values.dtype, values.shape)
                at += file.write(values.reshape(-1).view(np.uint8).data)
            file.flush()
            mapped = _mapped(file) if place else None
    except OSError as err:
        raise no_room(what, err) from None
    for name, (start, dtype, shape) in place.items():
        count = int(np.prod(shape))
        out[name] = np.frombuffer(mapped, dtype, count, start).reshape(shape)  # type: ignore[arg-type]
    return {name: out[name] for name in arrays}


def release_all() -> None:
    """Give back the read pages of every map this process holds (tables and arrays kept on disk):
    a replay calls it between steps, so that a step's reads do not add up with the next's."""
    if _DONTNEED is not None:
        for m in list(_MAPS):
            m.madvise(_DONTNEED)


#: Rows of the gathered arrays :func:`gather` reads before it gives their pages back.
GATHER_SPAN = 1 << 18


def gather(columns: Sequence[np.ndarray], rows: np.ndarray) -> list[np.ndarray]:
    """``[c[rows] for c in columns]`` (columns of one length), read in row order a span of
    :data:`GATHER_SPAN` rows at a time, with the pages of the maps given back (:func:`release_all`)
    after each span when the columns are long enough to be kept on disk.

    Why: rows scattered over a long array kept on disk (each install's previous one at its
    address, say) touch every page of it, and read at once those pages stayed in the process
    until the next release: 170 MiB of the shadow settling's peak at 52 M events."""
    n = len(columns[0]) if columns else 0
    if n < ARRAYS_ON_DISK:
        return [c[rows] for c in columns]
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    out = [np.empty(len(rows), c.dtype) for c in columns]
    cuts = np.searchsorted(ordered, np.arange(GATHER_SPAN, n, GATHER_SPAN)).tolist()
    for lo, hi in zip([0, *cuts], [*cuts, len(rows)]):
        if lo < hi:
            for into, c in zip(out, columns):
                into[order[lo:hi]] = c[ordered[lo:hi]]
            release_all()
    return out


def give_back() -> None:
    """Between two steps of a replay or a report: the read pages of every map (:func:`release_all`)
    and what the allocators kept of the last step's temporaries (:func:`release_freed_memory`),
    so that a step's reads and leftovers do not sit under the next one's peak (the shadow
    settling's steps varied by ~60 MiB from run to run with what the C heap had kept of the last)."""
    release_all()
    release_freed_memory()


def releasing(items: Iterable[T], every: int = 256) -> Iterator[T]:
    """``items``, with :func:`release_all` and :func:`release_freed_memory` after every ``every``
    of them: a loop over a long trace's memslot changes reads a little of the arrays on disk per
    change, all of them by its end (+150 MiB of a 20 M-event churn recording's in one step), and
    the allocators keep what its iterations freed (the consequences' loop: ~160 MiB at 52 M
    events); this keeps a few changes' of both."""
    for k, item in enumerate(items, 1):
        yield item
        if k % every == 0:
            give_back()


def _mapped(file: IO[bytes]) -> mmap.mmap:
    """A read-only map of ``file`` (which may then be closed: the map holds its own descriptor,
    and the file's space is freed with the last buffer over the map), known to :func:`release_all`."""
    m = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    _MAPS.add(m)
    return m


#: madvise(MADV_DONTNEED) where the platform has it: on a shared read-only file map it drops the
#: process's mappings of the pages, not their contents.
_DONTNEED: int | None = getattr(mmap, "MADV_DONTNEED", None)
#: Every live map of this module's files (a map leaves the set when its last buffer is gone).
_MAPS: weakref.WeakSet[mmap.mmap] = weakref.WeakSet()
