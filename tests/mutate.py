"""Derive a trace from a real one by removing or altering events: what a kernel bug would have done.

Mutation tests inject exactly one known bug into a real recording (drop the zap the kernel owed,
rewrite one field of one event) and check that the detectors name it. Keeping this next to the
replay makes each mutation a one-liner and guarantees the derived data has the reader's schema.
The same goes for the inputs users actually send, which the cut properties derive: a recording
made with fewer events enabled (:func:`keeping`) and two runs in one file (:func:`concatenated`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

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


def rows(data: TraceData, event: str, where: pa.Array | None = None) -> list[dict[str, Any]]:
    """The rows of one event (optionally filtered by a boolean mask) as dicts: for picking targets."""
    t = data.tables.get(event)
    if t is None:
        return []
    out: list[dict[str, Any]] = (t.filter(where) if where is not None else t).to_pylist()
    return out


def seqs_between(data: TraceData, event: str, lo: int, hi: int) -> np.ndarray:
    """Seqs of ``event`` with ``lo <= seq <= hi``."""
    t = data.tables.get(event)
    if t is None:
        return np.empty(0, np.int64)
    s = np.asarray(t.column("seq").to_numpy(), dtype=np.int64)
    return s[(s >= lo) & (s <= hi)]


def keeping(data: TraceData, events: Iterable[str]) -> TraceData:
    """A copy of ``data`` with only the named events (a recording made with fewer events enabled).

    Seqs are kept, so evidence still points into the original file; gaps are kept as they were,
    since a buffer's losses do not depend on which of its events one looks at afterwards."""
    names = set(events)
    tables = {name: t for name, t in data.tables.items() if name in names}
    mask = pc.is_in(data.events.column("event").cast(pa.string()), value_set=pa.array(sorted(names), pa.string()))
    counts = {name: t.num_rows for name, t in tables.items() if t.num_rows}
    return replace(data, tables=tables, events=data.events.filter(mask), info=replace(data.info, event_counts=counts))


def concatenated(first: TraceData, second: TraceData) -> TraceData:
    """``second`` appended after ``first``, as one recording of two runs back to back: the second's
    seqs continue after the first's and its timestamps start one nanosecond after the first's last.

    Tables of one event in both are concatenated (schemas promoted: two kernels may differ in a
    field); the first recording's info (kernel, clock) describes the whole."""
    seq_shift = (pc.max(first.events.column("seq")).as_py() or 0) + 1 if first.events.num_rows else 0
    first_ts = pc.min(second.events.column("ts")).as_py() if second.events.num_rows else 0
    last_ts = pc.max(first.events.column("ts")).as_py() if first.events.num_rows else 0
    ts_shift = (last_ts or 0) + 1 - (first_ts or 0)

    def shifted(t: pa.Table) -> pa.Table:
        for name, by in (("seq", seq_shift), ("ts", ts_shift)):
            if name in t.column_names and t.num_rows:
                i = t.schema.get_field_index(name)
                t = t.set_column(i, t.schema.field(i), pc.add(t.column(name), pa.scalar(by, t.schema.field(i).type)))
        return t

    def joined(a: pa.Table | None, b: pa.Table) -> pa.Table:
        b = shifted(b)
        if a is None:
            return b
        return pa.concat_tables([a, b.replace_schema_metadata(a.schema.metadata)], promote_options="permissive")

    tables = dict(first.tables)
    for name, t in second.tables.items():
        tables[name] = joined(tables.get(name), t)
    events = joined(first.events, second.events).unify_dictionaries().combine_chunks()
    gaps = joined(first.gaps, second.gaps)
    counts = {name: t.num_rows for name, t in tables.items() if t.num_rows}
    info = replace(first.info, event_counts=counts, last_ts=(second.info.last_ts + ts_shift)
                   if second.info.last_ts is not None else first.info.last_ts,
                   lost_events={c: first.info.lost_events.get(c, 0) + second.info.lost_events.get(c, 0)
                                for c in set(first.info.lost_events) | set(second.info.lost_events)},
                   warnings=first.info.warnings + second.info.warnings)
    return replace(first, tables=tables, events=events, gaps=gaps, info=info)
