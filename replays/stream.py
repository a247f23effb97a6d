"""Pre-extracted event columns and the merged walk order.

The replay loop must not touch pyarrow scalars or build dict rows per event: each event type the
models consume is pulled out as plain Python lists (``tolist`` on whole columns is a C loop), a
block of rows at a time so that the lists held stay small however long the trace, and the walk
order is one ``argsort`` over the concatenated seqs. Checkpoints (memslot changes)
are merged into the same order with half-step keys so they fall exactly between events.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
from numpy.typing import DTypeLike

from kvmtrace.parsers.schema import TraceData


@dataclass(frozen=True)
class Columns:
    """One event type's rows the loop reads: their seqs as numpy, their fields as Python lists
    made a block of rows at a time (:meth:`block`). All at once, the lists of a TDP trace's
    ``kvm_tdp_mmu_spte_changed`` rows took ~90 bytes an event (+900 MiB at 10 M events)."""

    name: str
    table: pa.Table
    seq: np.ndarray
    fields: tuple[str, ...]  # "pid" and the requested fields the table has
    missing: tuple[str, ...] = ()  # requested fields the trace's format does not have (read as 0)
    rows: np.ndarray | None = None  # the table rows read (ascending); None: every row

    def where(self, keep: np.ndarray) -> Columns:
        """Only the rows (of those read) where ``keep`` is set."""
        if keep.all():
            return self
        rows = np.flatnonzero(keep) if self.rows is None else self.rows[keep]
        return replace(self, seq=self.seq[keep], rows=rows)

    def block(self, lo: int, hi: int) -> dict[str, list[int]]:
        """The fields of read rows ``lo`` to ``hi`` as lists (index = row - lo; nulls read as 0)."""
        t = self.table.slice(lo, hi - lo) if self.rows is None else self.table.take(pa.array(self.rows[lo:hi]))
        out: dict[str, list[int]] = {}
        for f in self.fields:
            col = t.column(f)
            out[f] = (col.fill_null(0) if col.null_count else col).to_pylist()
        for f in self.missing:
            out[f] = [0] * (hi - lo)
        return out


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
    return Columns(event, table, numpy_column(table, "seq", np.int64), have, missing)


def merge_order(streams: list[np.ndarray], checkpoints: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Walk order over several seq arrays: ``(which stream, row)`` sorted by seq.

    Event keys are ``2*seq``; checkpoint keys are given already doubled by the caller (odd keys,
    ``2*seq - 1`` for "just before seq", ``2*seq + 1`` for "just after"); checkpoints get the
    stream number ``len(streams)``.
    """
    keys = [2 * s for s in streams]
    kinds = [np.full(len(s), i, dtype=np.int16) for i, s in enumerate(streams)]
    rows = [np.arange(len(s), dtype=np.int64) for s in streams]
    if checkpoints is not None and len(checkpoints):
        keys.append(checkpoints)
        kinds.append(np.full(len(checkpoints), len(streams), dtype=np.int16))
        rows.append(np.arange(len(checkpoints), dtype=np.int64))
    if not keys:
        return np.empty(0, np.int16), np.empty(0, np.int64)
    k = np.concatenate(keys)
    order = np.argsort(k, kind="stable")
    return np.concatenate(kinds)[order], np.concatenate(rows)[order]
