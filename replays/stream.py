"""Pre-extracted event columns and the merged walk order.

The replay loop must not touch pyarrow scalars or build dict rows per event: each event type the
models consume is pulled out once as plain Python lists (``tolist`` on whole columns is a C loop),
and the walk order is one ``argsort`` over the concatenated seqs. Checkpoints (memslot changes)
are merged into the same order with half-step keys so they fall exactly between events.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from numpy.typing import DTypeLike

from kvmtrace.parsers.schema import TraceData


@dataclass
class Columns:
    """One event type's fields as Python lists (index = row), plus its seqs as numpy."""

    name: str
    seq: np.ndarray
    fields: dict[str, list[int]]  # integer fields (nulls read as 0)
    missing: tuple[str, ...] = ()  # requested fields the trace's format does not have


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
    n = table.num_rows
    out: dict[str, list[int]] = {}
    missing = []
    for f in ("pid", *fields):
        if f in table.column_names:
            col = table.column(f)
            out[f] = (col.fill_null(0) if col.null_count else col).to_pylist()
        else:
            missing.append(f)
            out[f] = [0] * n
    seq = numpy_column(table, "seq", np.int64)
    return Columns(event, seq, out, tuple(missing))


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
