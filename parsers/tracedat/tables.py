"""Merged records → one Arrow table per event name plus the ``events`` table.

Records arrive already in global order (``seq``). They are grouped by event id with one stable
argsort, and each group's fields are decoded column by column (:mod:`parsers.tracedat.columns`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from parsers.schema import COMMON_FIELDS, EVENTS_SCHEMA, META_EVENT_ID, META_PRINT_FMT, META_SOURCE, META_SYSTEM
from parsers.tracedat.arrow import empty_table, numeric, strings
from parsers.tracedat.catalog import FTRACE_SYSTEM, FormatCatalog
from parsers.tracedat.columns import FieldReader, signed_element_type
from parsers.tracedat.factorize import factorize, lookup
from parsers.tracedat.formats import EventFormat, FieldSpec
from parsers.tracedat.metadata import comm_column

#: Common fields left out of per-event tables: ``common_type`` is the table itself and
#: ``common_pid`` is the ``pid`` column.
_DROPPED_COMMON = ("common_type", "common_pid")
BPRINT_EVENT = "bprint"
UNKNOWN_EVENT = "<unknown>"


@dataclass(frozen=True)
class Merged:
    """Data records in global order."""

    pos: np.ndarray  # int32/int64 payload offsets in the page buffer
    length: np.ndarray  # int32 payload lengths
    ts: np.ndarray  # int64 ns
    cpu: np.ndarray  # int16
    event_id: np.ndarray  # uint16 common_type
    pid: np.ndarray  # int32


def arrow_type(field: FieldSpec) -> pa.DataType:
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


def event_schema(fmt: EventFormat) -> pa.Schema:
    fields = list(COMMON_FIELDS)
    for f in fmt.fields:
        if f.name in _DROPPED_COMMON:
            continue
        if _is_bprint_fmt(fmt, f):
            fields += [pa.field("fmt", pa.string()), pa.field("fmt_addr", pa.uint64())]
            continue
        fields.append(pa.field(f.name, arrow_type(f)))
    meta = {META_SYSTEM: fmt.system.encode(), META_EVENT_ID: str(fmt.id).encode(),
            META_PRINT_FMT: fmt.print_fmt.encode(), META_SOURCE: b"tracedat"}
    return pa.schema(fields, metadata=meta)


def build_tables(merged: Merged, catalog: FormatCatalog, reader: FieldReader,
                 cmdlines: dict[int, str], printk: dict[int, str]
                 ) -> tuple[dict[str, pa.Table], pa.Table, dict[str, int], int]:
    """Return (tables by name, events table, counts by name, records of unknown event ids)."""
    n = len(merged.pos)
    seq = np.arange(n, dtype=np.int64)
    comm = comm_column(merged.pid, cmdlines)
    # Event ids are u16 (common_type): a stable sort on uint16 is a radix sort.
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
        if event_id not in catalog:
            unknown += len(rows)
            continue
        fmt = catalog.format(event_id)
        present_systems.add(fmt.system)
        name = catalog.table_names[event_id]
        tables[name] = _event_table(fmt, merged, rows, seq, comm, reader, printk)
        counts[name] = len(rows)
    for event_id in catalog.ids_of_systems(present_systems):  # the other events of those systems
        name = catalog.table_names[event_id]
        if name not in tables:
            tables[name] = empty_table(event_schema(catalog.format(event_id)))
    events = _events_table(merged, catalog, comm, seq)
    return tables, events, counts, unknown


def _event_table(fmt: EventFormat, merged: Merged, rows: np.ndarray, seq: np.ndarray, comm: pa.Array,
                 reader: FieldReader, printk: dict[int, str]) -> pa.Table:
    """One event's rows (``rows``: indices in global order) decoded field by field."""
    cols = [numeric(seq[rows]), numeric(merged.ts[rows]), numeric(merged.cpu[rows]),
            numeric(merged.pid[rows]), comm.take(numeric(rows))]
    pos, length = merged.pos[rows], merged.length[rows]
    block = reader.block(pos, max((f.offset + f.size for f in fmt.fields if not f.trailing), default=0))
    for f in fmt.fields:
        if f.name in _DROPPED_COMMON:
            continue
        if _is_bprint_fmt(fmt, f):  # the format string, then the raw address
            addr = reader.uint(pos + f.offset, f.size, f.offset & 3).astype(np.uint64)
            cols += [_printk_strings(addr, printk), numeric(addr)]
            continue
        cols.append(reader.column(f, pos, length, block))
    return pa.Table.from_arrays(cols, schema=event_schema(fmt))


def _is_bprint_fmt(fmt: EventFormat, field: FieldSpec) -> bool:
    return fmt.name == BPRINT_EVENT and fmt.system == FTRACE_SYSTEM and field.name == "fmt"


def _printk_strings(addr: np.ndarray, printk: dict[int, str]) -> pa.Array:
    """bprint's format string per row; an address missing from printk_formats stays as hex."""
    return lookup(addr, lambda a: printk.get(a, f"0x{a:x}"))


def _events_table(merged: Merged, catalog: FormatCatalog, comm: pa.Array, seq: np.ndarray) -> pa.Table:
    """The ``events`` table; an id without a format file shows as ``<unknown>`` (null system)."""
    ids, codes = factorize(merged.event_id)
    names = [catalog.table_names.get(i, UNKNOWN_EVENT) for i in ids]
    systems = [catalog.system(i) if i in catalog else None for i in ids]
    system_names = sorted({s for s in systems if s is not None})
    sys_index = np.array([system_names.index(s) if s is not None else -1 for s in systems] or [0], np.int32)
    row_sys = sys_index[codes]
    return pa.Table.from_arrays(
        [numeric(seq), numeric(merged.ts), numeric(merged.cpu), numeric(merged.pid), comm,
         pa.DictionaryArray.from_arrays(numeric(codes), strings(names)),
         pa.DictionaryArray.from_arrays(numeric(np.maximum(row_sys, 0), mask=row_sys < 0), strings(system_names))],
        schema=EVENTS_SCHEMA,
    )
