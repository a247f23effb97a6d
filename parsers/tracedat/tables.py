"""Merged records → one Arrow table per event name plus the ``events`` table.

Records arrive already in global order (``seq``). They are grouped by event id with one stable
argsort, and each group's fields are decoded column by column (:mod:`kvmtrace.parsers.tracedat.columns`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from kvmtrace.parsers.errors import TraceError
from kvmtrace.parsers.schema import (
    COMMON_FIELDS,
    EVENTS_SCHEMA,
    META_EVENT_ID,
    META_FIELD_NAME,
    META_PRINT_FMT,
    META_SOURCE,
    META_SYSTEM,
    field_columns,
)
from kvmtrace.parsers.tracedat.arrow import empty_table, numeric, strings
from kvmtrace.parsers.tracedat.catalog import FTRACE_SYSTEM, FormatCatalog
from kvmtrace.parsers.tracedat.columns import FieldReader
from kvmtrace.parsers.tracedat.factorize import factorize, lookup
from kvmtrace.parsers.tracedat.formats import EventFormat, FieldSpec
from kvmtrace.parsers.tracedat.merge import Merged
from kvmtrace.parsers.tracedat.metadata import comm_column

#: Common fields left out of per-event tables: ``common_type`` is the table itself and
#: ``common_pid`` is the ``pid`` column.
_DROPPED_COMMON = ("common_type", "common_pid")
BPRINT_EVENT = "bprint"
UNKNOWN_EVENT = "<unknown>"


def _int_type(size: int, signed: bool) -> pa.DataType:
    return getattr(pa, f"{'int' if signed else 'uint'}{size * 8}")()


def arrow_type(field: FieldSpec) -> pa.DataType:
    """The Arrow type :meth:`FieldReader.column` produces for ``field``."""
    if field.is_string:
        return pa.string()
    if field.is_int_list:
        value = _int_type(field.element_size, field.element_signed)
        return pa.list_(value) if field.dynamic else pa.list_(value, field.array_len)
    if field.is_array:
        return pa.binary()
    if field.size == 1 and field.type.strip() == "bool":
        return pa.bool_()
    if field.size not in (1, 2, 4, 8):
        return pa.binary()
    return _int_type(field.size, field.signed)


def event_schema(fmt: EventFormat) -> pa.Schema:
    """The common columns, then the format's fields named by :func:`field_columns`."""
    own: list[tuple[str, pa.DataType]] = []
    for f in fmt.fields:
        if f.name in _DROPPED_COMMON:
            continue
        if _is_bprint_fmt(fmt, f):
            own += [("fmt", pa.string()), ("fmt_addr", pa.uint64())]
            continue
        own.append((f.name, arrow_type(f)))
    fields = list(COMMON_FIELDS)
    for (name, typ), column in zip(own, field_columns([name for name, _ in own])):
        fields.append(pa.field(column, typ, metadata=None if column == name else {META_FIELD_NAME: name.encode()}))
    meta = {META_SYSTEM: fmt.system.encode(), META_EVENT_ID: str(fmt.id).encode(),
            META_PRINT_FMT: fmt.print_fmt.encode(), META_SOURCE: b"tracedat"}
    return pa.schema(fields, metadata=meta)


def event_tables(merged: Merged, catalog: FormatCatalog, reader: FieldReader, cmdlines: dict[int, str],
                 printk: dict[int, str], record_limit: int, first_seq: int = 0,
                 only: frozenset[str] | None = None) -> tuple[dict[str, pa.Table], dict[str, int], int]:
    """Return (tables by name, counts by name, records of unknown event ids).

    ``record_limit``: a page's data area, which no record exceeds (see :func:`_event_table`).
    ``first_seq``: the seq of ``merged``'s first record (non-zero for a window of a trace).
    ``only``: decode the tables of these events only (a read that keeps only them); the others
    are counted, and their tables are left out.
    """
    # Event ids are u16 (common_type): a stable sort on uint16 is a radix sort. Its output, split
    # per event, is each table's rows in global order: their indices ARE the seq column.
    order = np.argsort(merged.event_id, kind="stable")
    bounds = np.flatnonzero(np.diff(merged.event_id[order])) + 1
    groups = np.split(order, bounds) if len(order) else []
    del order
    tables: dict[str, pa.Table] = {}
    counts: dict[str, int] = {}
    unknown = 0
    while groups:
        rows = groups.pop(0)
        event_id = int(merged.event_id[rows[0]])
        if event_id not in catalog:
            unknown += len(rows)
            continue
        name = catalog.table_names[event_id]
        counts[name] = len(rows)
        if only is not None and name not in only:
            continue
        tables[name] = _event_table(catalog.format(event_id), merged, rows, reader, cmdlines, printk, record_limit,
                                    catalog.path, first_seq)
    return with_system_tables(tables, catalog) if only is None else tables, counts, unknown


def with_system_tables(present: dict[str, pa.Table], catalog: FormatCatalog,
                       left_out: frozenset[str] = frozenset()) -> dict[str, pa.Table]:
    """The tables of the events that occur, by event id, then an empty table for every other event
    of their systems (so ``table("kvm_mmu_zap_page")`` exists, with 0 rows, when kvmmmu was on).
    ``left_out``: events that occur but whose rows a read did not keep (empty tables; their
    systems count too)."""
    id_of = {name: event_id for event_id, name in catalog.table_names.items()}
    tables = {name: present[name] if name in present else empty_table(event_schema(catalog.format(id_of[name])))
              for name in sorted({*present, *left_out}, key=id_of.__getitem__)}
    systems = {catalog.system(id_of[name]) for name in tables}
    for event_id in catalog.ids_of_systems(systems):
        name = catalog.table_names[event_id]
        if name not in tables:
            tables[name] = empty_table(event_schema(catalog.format(event_id)))
    return tables


def _event_table(fmt: EventFormat, merged: Merged, rows: np.ndarray, reader: FieldReader,
                 cmdlines: dict[int, str], printk: dict[int, str], record_limit: int, path: str,
                 first_seq: int) -> pa.Table:
    """One event's rows (``rows``: their index in ``merged``, ascending; seq is ``first_seq`` + index)
    decoded field by field.

    The fixed fields are gathered as one (rows x width) block; a field placed beyond any record
    (past a page's data area) can only come from a corrupt format and would make that block
    as large as its offset claims, so it is refused.
    """
    width = max((f.offset + f.size for f in fmt.fields if not f.trailing), default=0)
    if width > record_limit:
        far = max((f for f in fmt.fields if not f.trailing), key=lambda f: f.offset + f.size)
        raise TraceError(f"{path}: corrupt event format {fmt.name}: field {far.name} at offset {far.offset} "
                         f"({far.size} bytes) lies beyond any record ({record_limit} bytes)")
    pid = merged.pid[rows]
    cols = [numeric(rows + first_seq if first_seq else rows), numeric(merged.ts[rows]), numeric(merged.cpu[rows]),
            numeric(pid), comm_column(pid, cmdlines)]
    pos, length = merged.pos[rows], merged.length[rows]
    block = reader.block(pos, width)
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


def events_table(ts: np.ndarray, cpu: np.ndarray, pid: np.ndarray, event_id: np.ndarray,
                 catalog: FormatCatalog, cmdlines: dict[int, str], first_seq: int = 0) -> pa.Table:
    """The ``events`` table (its first row has seq ``first_seq``); an id without a format file
    shows as ``<unknown>`` (null system)."""
    ids, codes = factorize(event_id)
    names, system_names, sys_index = event_dictionaries(ids, catalog)
    row_sys = sys_index[codes]
    return pa.Table.from_arrays(
        [numeric(np.arange(first_seq, first_seq + len(ts), dtype=np.int64)), numeric(ts), numeric(cpu), numeric(pid),
         comm_column(pid, cmdlines),
         pa.DictionaryArray.from_arrays(numeric(codes), names),
         pa.DictionaryArray.from_arrays(numeric(np.maximum(row_sys, 0), mask=row_sys < 0), system_names)],
        schema=EVENTS_SCHEMA,
    )


def event_dictionaries(ids: list[int], catalog: FormatCatalog) -> tuple[pa.Array, pa.Array, np.ndarray]:
    """For the distinct event ids of an ``events`` table (ascending): the ``event`` column's
    dictionary, the ``system`` column's (its systems, sorted), and each id's code in the latter
    (-1: no format file, a null system)."""
    names = [catalog.table_names.get(i, UNKNOWN_EVENT) for i in ids]
    systems = [catalog.system(i) if i in catalog else None for i in ids]
    system_names = sorted({s for s in systems if s is not None})
    sys_index = np.array([system_names.index(s) if s is not None else -1 for s in systems] or [0], np.int32)
    return strings(names), strings(system_names), sys_index
