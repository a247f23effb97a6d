"""Derive a trace from a real one by removing or altering events: what a kernel bug would have done.

Mutation tests inject exactly one known bug into a real recording (drop the zap the kernel owed,
rewrite one field of one event) and check that the detectors name it. Keeping this next to the
replay makes each mutation a one-liner and guarantees the derived data has the reader's schema.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kvmtrace.parsers.schema import TraceData
from kvmtrace.parsers.select import keep_rows, without_seqs


def without(data: TraceData, seqs: Iterable[int]) -> TraceData:
    """A copy of ``data`` without the events of ``seqs`` (from every table and from ``events``)."""
    return keep_rows(data, without_seqs(seqs))


def altered(data: TraceData, event: str, seq: int, **fields: object) -> TraceData:
    """A copy of ``data`` in which the ``event`` at ``seq`` has the given field values."""
    table = data.table(event)
    hit = pc.equal(table.column("seq"), seq)
    if not pc.any(hit).as_py():
        raise KeyError(f"no {event} event at seq {seq}")
    for name, value in fields.items():
        i = table.schema.get_field_index(name)
        col = table.column(name)
        table = table.set_column(i, name, pc.if_else(hit, pa.scalar(value, col.type), col))
    return replace(data, tables={**data.tables, event: table})


def rows(data: TraceData, event: str, where: pa.Array | None = None) -> list[dict]:
    """The rows of one event (optionally filtered by a boolean mask) as dicts: for picking targets."""
    t = data.tables.get(event)
    if t is None:
        return []
    return (t.filter(where) if where is not None else t).to_pylist()


def seqs_between(data: TraceData, event: str, lo: int, hi: int) -> np.ndarray:
    """Seqs of ``event`` with ``lo <= seq <= hi``."""
    t = data.tables.get(event)
    if t is None:
        return np.empty(0, np.int64)
    s = np.asarray(t.column("seq").to_numpy(), dtype=np.int64)
    return s[(s >= lo) & (s <= hi)]
