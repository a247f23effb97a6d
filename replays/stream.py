"""Pre-extracted event columns and the merged walk order.

The replay loop must not touch pyarrow scalars or build dict rows per event: each event type the
models consume is pulled out as plain Python lists (``tolist`` on whole columns is a C loop), a
block of rows at a time so that the lists held stay small however long the trace, and the walk
order is an ``argsort`` over the concatenated seqs of each segment of the trace
(:func:`segments`). Checkpoints (memslot changes) are merged into the same order with half-step
keys so they fall exactly between events.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np
import pyarrow as pa
from numpy.typing import DTypeLike

from kvmtrace.parsers.schema import TraceData
from kvmtrace.parsers.spilled import release_all, releasing


@dataclass(frozen=True)
class Columns:
    """One event type's rows the loop reads, found by seq in the table's own chunks and read a
    block at a time (:meth:`block`): the fields as Python lists, which for a whole TDP trace's
    ``kvm_tdp_mmu_spte_changed`` rows took ~90 bytes an event (+900 MiB at 10 M events), and no
    array over every row either (the seqs alone are 8 bytes a row; where the table is kept on disk,
    a whole column would also map every page of it)."""

    name: str
    table: pa.Table
    fields: tuple[str, ...]  # "pid" and the requested fields the table has
    missing: tuple[str, ...] = ()  # requested fields the trace's format does not have (read as 0)
    keep: Callable[[pa.Table], np.ndarray] | None = None  # which rows of a block the loop reads; None: all
    chunks: tuple[pa.Array, ...] = ()  # the seq column's non-empty chunks
    starts: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))  # their first rows, and the end
    lasts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # their last seqs

    @classmethod
    def of(cls, name: str, table: pa.Table, fields: tuple[str, ...], missing: tuple[str, ...]) -> Columns:
        chunks = tuple(c for c in table.column("seq").chunks if len(c))
        starts = np.cumsum([0, *(len(c) for c in chunks)], dtype=np.int64)
        lasts = np.asarray([c[-1].as_py() for c in chunks], np.int64)
        return cls(name, table, fields, missing, None, chunks, starts, lasts)

    def rows_before(self, seq: int) -> int:
        """How many rows have a seq below ``seq`` (a binary search in one chunk)."""
        k = int(np.searchsorted(self.lasts, seq))
        if k == len(self.chunks):
            return int(self.starts[-1])
        return int(self.starts[k] + np.searchsorted(self.chunks[k].to_numpy(), seq))

    def seq_at(self, row: int) -> int:
        k = int(np.searchsorted(self.starts, row, side="right")) - 1
        return int(self.chunks[k].to_numpy()[row - self.starts[k]])

    def block(self, lo: int, hi: int) -> tuple[np.ndarray, dict[str, list[int]]]:
        """The seqs and the fields (as lists; nulls read as 0) of rows ``lo`` to ``hi`` that
        :attr:`keep` keeps."""
        t = self.table.slice(lo, hi - lo)
        if self.keep is not None and t.num_rows:
            t = t.filter(pa.array(self.keep(t)))
        out: dict[str, list[int]] = {}
        for f in self.fields:
            col = t.column(f)
            out[f] = (col.fill_null(0) if col.null_count else col).to_pylist()
        for f in self.missing:
            out[f] = [0] * t.num_rows
        return numpy_column(t, "seq", np.int64), out


def numpy_rows(table: pa.Table, name: str, rows: np.ndarray, dtype: DTypeLike = np.uint64) -> np.ndarray:
    """Rows ``rows`` of a column as numpy (nulls read as 0), gathered chunk by chunk.

    Why not ``column.take``: on a chunked column it joins every chunk first (pyarrow 26: a take
    of 100 rows out of 14 M copied the whole column), and a long table's chunks lie on disk,
    where a chunk's values are read in place, only the pages of the rows asked for are read, and
    those are given back after each chunk (:func:`release_all`): rows spread over a whole
    column read every page of it (114 MiB of a 14 M-row int64 column)."""
    column = table.column(name)
    out = np.empty(len(rows), dtype)
    starts = np.cumsum([0, *(len(c) for c in column.chunks)])
    order: np.ndarray | None = None  # rows in ascending order (a mask's) are chunk by chunk already
    if len(rows) > 1 and not bool(np.all(rows[1:] >= rows[:-1])):
        order = np.argsort(rows, kind="stable")
    bounds = np.searchsorted(rows if order is None else rows[order], starts)
    for k in range(column.num_chunks):
        at = slice(bounds[k], bounds[k + 1]) if order is None else order[bounds[k]:bounds[k + 1]]
        if bounds[k + 1] > bounds[k]:
            chunk = column.chunk(k)
            values = (chunk.fill_null(0) if chunk.null_count else chunk).to_numpy(zero_copy_only=False)
            out[at] = values[rows[at] - starts[k]]
            release_all()
    return out


#: Rows a per-row step answers at a time (:func:`row_blocks`).
ROW_BLOCK = 1 << 20


def row_blocks(n: int) -> Iterator[slice]:
    """Rows ``0..n`` a :data:`ROW_BLOCK` at a time, the pages each block read given back after it
    (a long trace's columns lie on disk).

    Why: a step whose answer for a row is the row's own (which slot covered a gfn at a seq, which
    update window holds it) needs only a block's columns and temporaries at once; over every
    install and fault of a 52 M-event trace, the layout check's were the detectors' peak (~200 MiB
    over what the replay holds) and the memslot summary's the replay's (+40 MiB)."""
    for lo in releasing(range(0, n, ROW_BLOCK), every=1):
        yield slice(lo, lo + ROW_BLOCK)


def numpy_column(table: pa.Table | pa.RecordBatch, name: str, dtype: DTypeLike = np.uint64) -> np.ndarray:
    """A column as numpy; nulls (e.g. text readers' hashed pointers) become 0."""
    col = table.column(name)
    if col.null_count:
        col = col.fill_null(0)
    return np.asarray(col.to_numpy(zero_copy_only=False)).astype(dtype, copy=False)


def extract(data: TraceData, event: str, fields: tuple[str, ...]) -> Columns | None:
    """Columns of ``event`` (None when the trace has no such event). Absent fields read as 0."""
    table = data.tables.get(event)
    if table is None or table.num_rows == 0:
        return None
    have = tuple(f for f in ("pid", *fields) if f in table.column_names)
    missing = tuple(f for f in ("pid", *fields) if f not in have)
    return Columns.of(event, table, have, missing)


def segments(streams: list[Columns | None], rows: int) -> list[tuple[int | None, int | None]]:
    """Seq ranges ``[lo, hi)`` (None: open) that cut the streams' merged order into pieces with at
    most ``rows`` rows of each stream: the seq of every ``rows``-th row of each is a cut."""
    cuts = sorted({s.seq_at(r) for s in streams if s is not None for r in range(rows, s.table.num_rows, rows)})
    bounds: list[int | None] = [None, *cuts, None]
    return list(pairwise(bounds))


def merge_order(streams: list[np.ndarray], checkpoints: np.ndarray | None = None,
                checkpoint_rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Walk order over several seq arrays: ``(which stream, row)`` sorted by seq.

    Event keys are ``2*seq``; checkpoint keys are given already doubled by the caller (odd keys,
    ``2*seq - 1`` for "just before seq", ``2*seq + 1`` for "just after"); checkpoints get the
    stream number ``len(streams)`` and their ``checkpoint_rows`` (default: their positions);
    checkpoints with one key keep their given order.
    """
    keys = [2 * s for s in streams]
    kinds = [np.full(len(s), i, dtype=np.int16) for i, s in enumerate(streams)]
    rows = [np.arange(len(s), dtype=np.int64) for s in streams]
    if checkpoints is not None and len(checkpoints):
        keys.append(checkpoints)
        kinds.append(np.full(len(checkpoints), len(streams), dtype=np.int16))
        rows.append(np.arange(len(checkpoints), dtype=np.int64) if checkpoint_rows is None else checkpoint_rows)
    if not keys:
        return np.empty(0, np.int16), np.empty(0, np.int64)
    k = np.concatenate(keys)
    order = np.argsort(k, kind="stable")
    return np.concatenate(kinds)[order], np.concatenate(rows)[order]
