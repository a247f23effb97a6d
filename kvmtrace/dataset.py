"""A trace as a Parquet dataset, written window by window (the writer of ``kvmtrace convert``).

Layout of the folder (one trace per folder)::

    events.parquet                  every event in seq order: seq, ts, cpu, pid, comm, event, system
    gaps.parquet                    lost-event gaps (cpu, ts, seq, lost); no rows when nothing was lost
    event=<NAME>/part-0.parquet     one event's rows in seq order: seq, ts, cpu, pid, comm, its fields

Why this shape: every event has its own columns (a ``kvm_mmu_set_spte`` row shares nothing with
a ``kvm_exit`` row beyond the common columns), so one file per event keeps exact types without a
union schema, and the hive ``event=NAME`` folders let a query engine read one event, or the
common columns of all of them with the event name as a column:

- polars: ``pl.scan_parquet(folder / "event=kvm_exit")``; all events' common columns:
  ``pl.scan_parquet(f"{folder}/event=*/*.parquet", hive_partitioning=True, extra_columns="ignore")``;
- pyarrow: ``pyarrow.dataset.dataset(folder, partitioning="hive", schema=<common columns + event>,
  ignore_prefixes=["events.", "gaps.", ".", "_"])``;
- DuckDB: ``read_parquet('folder/event=*/*.parquet', hive_partitioning=true, union_by_name=true)``.

``NAME`` is the table name with every character outside ``[A-Za-z0-9_.~-]`` percent-encoded
(``sched%3Asched_switch`` for a second system's ``sched_switch``), which hive readers decode back.
Only events that occur get a folder; the empty tables of the other events of their systems are
not written.

Row groups follow the read windows: each window of the trace adds one row group to
``events.parquet`` (a window longer than twice :data:`EVENTS_ROW_GROUP_ROWS`, such as a whole
trace read at once, is split evenly); an event's rows are buffered until
:data:`ROW_GROUP_ROWS` of them (or the end) and written as one row group, so a rare event does not
become thousands of one-row groups. A buffer of many windows' slivers is merged into one table
every :data:`HELD_TABLES` windows: each held table costs a few hundred bytes of Arrow and numpy
objects per column however few its rows, and an event rarer than one in
:data:`ROW_GROUP_ROWS` would otherwise hold one table per window of the whole trace. Memory is
the window plus those buffers (at most :data:`ROW_GROUP_ROWS` rows per event and
:data:`HELD_BYTES` in all: past it the largest buffers are written early, as smaller row groups),
never the trace. The one part that does grow is each writer's footer, kept until the file is
closed: about 870 bytes per column chunk, which these row group sizes make ~0.1 byte per event
(10 MB per 100 M events).

Only columns that repeat are dictionary-encoded (:func:`dictionary_columns`): Parquet's default
tries a dictionary on every column and falls back to plain encoding on the ones that do not
repeat (``seq``, ``ts``, addresses, SPTEs), which tripled the writing time and made the files
larger.

Every file carries the trace's facts in its Parquet key-value metadata (:data:`META_TRACE`: a
JSON object of the reader's :class:`TraceInfo`: kernel, clock, CPUs, lost events per CPU, CPU
stats, counts, first/last timestamps, warnings; :data:`META_VERSION`: the kvmtrace version that
wrote it). They are known only once the last window is read, and Parquet stores them in the
footer, so they are added just before each file is closed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq

from kvmtrace.parsers import read
from kvmtrace.parsers.detect import STDIN, open_input
from kvmtrace.parsers.schema import TraceData, TraceInfo
from kvmtrace.parsers.tracedat.windows import DEFAULT_WINDOW, iter_windows
from kvmtrace.version import __version__

EVENTS_FILE = "events.parquet"
GAPS_FILE = "gaps.parquet"
PART_FILE = "part-0.parquet"
PARTITION = "event"
META_TRACE = "kvmtrace.trace"
META_VERSION = "kvmtrace.version"
#: Rows an event's buffer holds before it is written as one row group (the last one: what is left).
ROW_GROUP_ROWS = 1 << 17
#: Rows of an ``events.parquet`` row group at least (narrow rows: 7 columns): a default window is one.
EVENTS_ROW_GROUP_ROWS = DEFAULT_WINDOW
#: Tables an event's buffer may hold before they are merged into one.
HELD_TABLES = 16
#: Bytes all events' buffers may hold together; past it the largest buffers are written early.
HELD_BYTES = 32 << 20


def partition_dir(name: str) -> str:
    """The folder of event table ``name``: ``event=<NAME>``, percent-encoded as hive readers expect."""
    return f"{PARTITION}={quote(name, safe='')}"


def info_metadata(info: TraceInfo) -> dict[str, str]:
    """The key-value metadata every file of the dataset carries."""
    facts = dataclasses.asdict(info)
    for key in ("lost_events", "lost_unknown"):  # JSON object keys are strings
        facts[key] = {str(cpu): n for cpu, n in facts[key].items()}
    return {META_TRACE: json.dumps(facts, sort_keys=True), META_VERSION: __version__}


def read_metadata(path: str | Path) -> dict:
    """The trace facts of one file of a dataset (``events.parquet`` or any part), as a dict,
    with ``kvmtrace_version`` added."""
    meta = pq.read_metadata(path).metadata or {}
    facts = json.loads(meta[META_TRACE.encode()])
    facts["kvmtrace_version"] = meta[META_VERSION.encode()].decode()
    return facts


def trace_windows(path: str | os.PathLike[str], *, instance: str | None = None, strict: bool = False,
                  events_per_window: int = DEFAULT_WINDOW) -> Iterator[TraceData]:
    """The trace at ``path`` as windows: a trace.dat in a regular file is read window by window
    (:func:`kvmtrace.parsers.tracedat.windows.iter_windows`); text, and a trace.dat on a pipe
    (spooled to a temporary file by the reader), are read whole and yielded as one window."""
    spath = os.fspath(path)
    regular = spath != STDIN and os.path.exists(spath) and stat.S_ISREG(os.stat(spath).st_mode)
    if regular:
        with open_input(spath) as src:
            kind = src.kind
        if kind == "tracedat":
            yield from iter_windows(spath, instance=instance, events_per_window=events_per_window)
            return
    yield read(spath, instance=instance, strict=strict)


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """The columns worth a Parquet dictionary: Arrow dictionary columns (``comm``, ``event``,
    ``system``) and strings. Every other column is numeric and mostly distinct per row (``seq``,
    ``ts``, addresses) or small enough that plain encoding and compression do as well."""
    return [f.name for f in schema
            if pa.types.is_dictionary(f.type) or pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]


def row_group_size(rows: int, row_group_rows: int) -> int:
    """Rows per row group when ``rows`` are written at once: as even as possible and none below
    ``row_group_rows`` (unless ``rows`` is), so that a buffer just past the mark is one row group
    rather than a full one and a sliver (each row group costs footer metadata, kept in memory
    until the file is closed)."""
    groups = max(1, rows // row_group_rows)
    return max(1, -(-rows // groups))


def parquet_writer(path: Path, schema: pa.Schema) -> pq.ParquetWriter:
    """A writer for one file of the dataset (dictionary pages only where they pay, see above)."""
    return pq.ParquetWriter(path, schema, use_dictionary=dictionary_columns(schema))


class _EventFile:
    """One event's part file: rows buffered up to a row group, then written as one."""

    def __init__(self, path: Path, schema: pa.Schema):
        path.parent.mkdir()
        self.writer = parquet_writer(path, schema)
        self.path = path
        self.held: list[pa.Table] = []
        self.rows = self.nbytes = 0

    def add(self, table: pa.Table, row_group_rows: int) -> None:
        self.held.append(table)
        self.rows += table.num_rows
        self.nbytes += table.nbytes
        if self.rows >= row_group_rows:
            self.flush(row_group_rows)
        elif len(self.held) >= HELD_TABLES:
            self.held = [pa.concat_tables(self.held).combine_chunks()]
            self.nbytes = self.held[0].nbytes

    def flush(self, row_group_rows: int) -> None:
        if self.held:
            table = pa.concat_tables(self.held)
            self.writer.write_table(table, row_group_size=row_group_size(self.rows, row_group_rows))
        self.held, self.rows, self.nbytes = [], 0, 0


def spill(parts: Iterable[_EventFile], held_bytes: int, row_group_rows: int) -> None:
    """Write the largest buffers until all of them hold at most ``held_bytes``: each event's buffer
    is bounded by a row group, but a trace of many events (or many events that stay under a row
    group until the end) would otherwise hold up to a row group of each."""
    by_size = sorted(parts, key=lambda p: p.nbytes, reverse=True)
    total = sum(p.nbytes for p in by_size)
    for part in by_size:
        if total <= held_bytes:
            break
        total -= part.nbytes
        part.flush(row_group_rows)


def write_dataset(windows: Iterable[TraceData], folder: Path, *, row_group_rows: int = ROW_GROUP_ROWS,
                  held_bytes: int = HELD_BYTES) -> TraceInfo:
    """Write ``windows`` (consecutive windows of one trace, or one whole trace) into the empty
    folder ``folder`` in the layout above; return the trace's info (the last window's).

    ``row_group_rows`` and ``held_bytes``: an event's row group and all buffers' budget (module
    docstring); tests make them small to reach the steady state on short traces.

    The caller makes it atomic (:func:`kvmtrace.parsers.output.atomic_dir`): on an error the
    files written so far are incomplete and the folder must be discarded.
    """
    events: pq.ParquetWriter | None = None
    gaps: pq.ParquetWriter | None = None
    parts: dict[str, _EventFile] = {}
    info: TraceInfo | None = None
    try:
        for window in windows:
            info = window.info
            if events is None:
                events = parquet_writer(folder / EVENTS_FILE, window.events.schema)
                gaps = parquet_writer(folder / GAPS_FILE, window.gaps.schema)
            if window.events.num_rows:
                rows = row_group_size(window.events.num_rows, max(row_group_rows, EVENTS_ROW_GROUP_ROWS))
                events.write_table(window.events, row_group_size=rows)
            if window.gaps.num_rows:
                assert gaps is not None
                gaps.write_table(window.gaps)
            for name, table in window.tables.items():
                if not table.num_rows:
                    continue
                if name not in parts:
                    parts[name] = _EventFile(folder / partition_dir(name) / PART_FILE, table.schema)
                parts[name].add(table, row_group_rows)
            spill(parts.values(), held_bytes, row_group_rows)
        if info is None or events is None or gaps is None:
            raise ValueError("write_dataset needs at least one window")
        meta = info_metadata(info)
        for part in parts.values():
            part.flush(row_group_rows)
            part.writer.add_key_value_metadata(meta)
        events.add_key_value_metadata(meta)
        gaps.add_key_value_metadata(meta)
    finally:
        for writer in [events, gaps, *(p.writer for p in parts.values())]:
            if writer is not None:
                writer.close()
    return info
