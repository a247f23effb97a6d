"""Merged records → one Arrow table per event name plus the ``events`` table.

Records arrive already in global order (``seq``). They are grouped by event id with one stable
argsort, and each group's fields are decoded column by column (:mod:`parsers.tracedat.columns`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from parsers.schema import COMMON_FIELDS, EVENTS_SCHEMA, META_EVENT_ID, META_PRINT_FMT, META_SOURCE, META_SYSTEM
from parsers.tracedat.columns import FieldReader, signed_element_type
from parsers.tracedat.formats import EventFormat, FieldSpec
from parsers.tracedat.metadata import comm_column

#: Common fields left out of per-event tables: ``common_type`` is the table itself and
#: ``common_pid`` is the ``pid`` column.
_DROPPED_COMMON = ("common_type", "common_pid")
BPRINT_EVENT = "bprint"


@dataclass(frozen=True)
class Merged:
    """Data records in global order."""

    pos: np.ndarray  # int64 payload offsets in the page buffer
    length: np.ndarray  # int64 payload lengths
    ts: np.ndarray  # int64 ns
    cpu: np.ndarray  # int16
    event_id: np.ndarray  # int64 common_type
    pid: np.ndarray  # int32


def table_names(formats: list[EventFormat]) -> dict[int, str]:
    """Bare event names; a name already taken by an earlier system becomes ``system:name``."""
    names: dict[int, str] = {}
    taken: set[str] = set()
    for fmt in formats:
        name = fmt.name if fmt.name not in taken else f"{fmt.system}:{fmt.name}"
        taken.add(name)
        names[fmt.id] = name
    return names


def arrow_type(field: FieldSpec, long_size: int) -> pa.DataType:
    """The Arrow type :meth:`FieldReader.column` produces for ``field``."""
    if field.dynamic or field.trailing:
        if field.is_string:
            return pa.string()
        if field.trailing:
            return pa.binary()
        el = field.element_size
        return pa.list_(getattr(pa, f"{'int' if signed_element_type(field.type) else 'uint'}{el * 8}")())
    if field.array_len:
        if field.is_string:
            return pa.string()
        el = field.element_size
        return pa.list_(getattr(pa, f"{'int' if field.signed else 'uint'}{el * 8}")(), field.array_len)
    if field.size == 1 and field.type.strip() == "bool":
        return pa.bool_()
    if field.size not in (1, 2, 4, 8):
        return pa.binary()
    return getattr(pa, f"{'int' if field.signed else 'uint'}{field.size * 8}")()


def event_schema(fmt: EventFormat, long_size: int) -> pa.Schema:
    fields = list(COMMON_FIELDS)
    for f in fmt.fields:
        if f.name in _DROPPED_COMMON:
            continue
        if fmt.name == BPRINT_EVENT and fmt.system == "ftrace" and f.name == "fmt":
            fields += [pa.field("fmt", pa.string()), pa.field("fmt_addr", pa.uint64())]
            continue
        fields.append(pa.field(f.name, arrow_type(f, long_size)))
    meta = {META_SYSTEM: fmt.system.encode(), META_EVENT_ID: str(fmt.id).encode(),
            META_PRINT_FMT: fmt.print_fmt.encode(), META_SOURCE: b"tracedat"}
    return pa.schema(fields, metadata=meta)


def build_tables(merged: Merged, formats: list[EventFormat], reader: FieldReader,
                 cmdlines: dict[int, str], printk: dict[int, str], long_size: int
                 ) -> tuple[dict[str, pa.Table], pa.Table, dict[str, int], int]:
    """Return (tables by name, events table, counts by name, records of unknown event ids)."""
    n = len(merged.pos)
    by_id = {f.id: f for f in formats}
    names = table_names(formats)
    seq = np.arange(n, dtype=np.int64)
    comm = comm_column(merged.pid, cmdlines)
    order = np.argsort(merged.event_id, kind="stable")
    ids_sorted = merged.event_id[order]
    bounds = np.flatnonzero(np.diff(ids_sorted)) + 1
    groups = np.split(order, bounds) if n else []
    tables: dict[str, pa.Table] = {}
    counts: dict[str, int] = {}
    unknown = 0
    present_systems = set()
    for rows in groups:
        event_id = int(merged.event_id[rows[0]])
        fmt = by_id.get(event_id)
        if fmt is None:
            unknown += len(rows)
            continue
        present_systems.add(fmt.system)
        schema = event_schema(fmt, long_size)
        cols = [pa.array(seq[rows]), pa.array(merged.ts[rows]), pa.array(merged.cpu[rows]),
                pa.array(merged.pid[rows]), comm.take(pa.array(rows))]
        pos, length = merged.pos[rows], merged.length[rows]
        for f in fmt.fields:
            if f.name in _DROPPED_COMMON:
                continue
            col = reader.column(f, pos, length)
            if fmt.name == BPRINT_EVENT and fmt.system == "ftrace" and f.name == "fmt":
                addr = np.asarray(col.to_numpy(zero_copy_only=False), np.uint64)
                cols.append(_printk_strings(addr, printk))
                col = pa.array(addr, pa.uint64())
            cols.append(col)
        name = names[event_id]
        tables[name] = pa.Table.from_arrays(cols, schema=schema)
        counts[name] = len(rows)
    for fmt in formats:  # empty tables for the other events of every system that was recorded
        name = names[fmt.id]
        if fmt.system in present_systems and name not in tables:
            tables[name] = event_schema(fmt, long_size).empty_table()
    events = _events_table(merged, formats, names, comm, seq)
    return tables, events, counts, unknown


def _printk_strings(addr: np.ndarray, printk: dict[int, str]) -> pa.Array:
    uniq, inverse = np.unique(addr, return_inverse=True)
    texts = [printk.get(int(a), f"0x{int(a):x}") for a in uniq]
    return pa.array(texts, pa.string()).take(pa.array(inverse.astype(np.int64).ravel()))


def _events_table(merged: Merged, formats: list[EventFormat], names: dict[int, str],
                  comm: pa.Array, seq: np.ndarray) -> pa.Table:
    ids = sorted(names)
    id_arr = np.array(ids, np.int64)
    idx = np.searchsorted(id_arr, merged.event_id)
    idx = np.clip(idx, 0, max(len(ids) - 1, 0))
    known = (id_arr[idx] == merged.event_id) if len(ids) else np.zeros(len(seq), bool)
    by_id = {f.id: f for f in formats}
    event_dict = pa.array([names[i] for i in ids] + ["<unknown>"], pa.string())
    systems = sorted({f.system for f in formats})
    system_dict = pa.array(systems, pa.string())
    sys_index = np.array([systems.index(by_id[i].system) for i in ids], np.int32)
    ev_idx = np.where(known, idx, len(ids)).astype(np.int32)
    sys_idx = pa.array(np.where(known, sys_index[idx] if len(ids) else 0, 0).astype(np.int32),
                       mask=~known)
    return pa.Table.from_arrays(
        [pa.array(seq), pa.array(merged.ts), pa.array(merged.cpu), pa.array(merged.pid), comm,
         pa.DictionaryArray.from_arrays(pa.array(ev_idx), event_dict),
         pa.DictionaryArray.from_arrays(sys_idx, system_dict)],
        schema=EVENTS_SCHEMA,
    )
