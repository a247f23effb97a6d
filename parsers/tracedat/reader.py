"""``read_tracedat``: a trace.dat file → :class:`kvmtrace.parsers.schema.TraceData` per buffer instance.

Pipeline: container (v6/v7) and format files (:mod:`kvmtrace.parsers.tracedat.meta`) → per
instance: pages → page walk (vectorised over pages) → timestamps in ns → merge of the CPUs →
columnar field decode → Arrow tables.

Two ways through it, with the same result (``tests/test_stream_windows.py``): a buffer whose
pages fit in :data:`WHOLE_PAGES_LIMIT` is decoded at once (every page in one buffer, one stable
sort for the order: the fastest for the traces most users send); a larger one a window at a time
(:mod:`kvmtrace.parsers.tracedat.windows`), its windows joined at the end, so that the pages,
records and merge arrays held are one window's, not the trace's (1.6 GB beside a 56 M-event
trace), and the arrays are small enough to be refilled rather than faulted in afresh.
"""

from __future__ import annotations

import io
import os
import warnings as _warnings
from collections.abc import Callable

from kvmtrace.parsers.errors import TraceWarning
from kvmtrace.parsers.schema import TraceData
from kvmtrace.parsers.tracedat.columns import FieldReader
from kvmtrace.parsers.tracedat.gaps import gap_table
from kvmtrace.parsers.tracedat.layout import BufferSpec
from kvmtrace.parsers.tracedat.merge import merge_records
from kvmtrace.parsers.tracedat.meta import FileMeta, corrupt_note, open_file, open_meta, unknown_note
from kvmtrace.parsers.tracedat.pages import walk
from kvmtrace.parsers.tracedat.streams import load_pages, plan_streams
from kvmtrace.parsers.tracedat.tables import event_tables, events_table
from kvmtrace.parsers.tracedat.windows import _WindowReader, window_reader

#: Page bytes (uncompressed) up to which a buffer is decoded at once. Measured (bench/RESULTS.md,
#: "trace.dat reader: windows for large buffers"): up to ~20 M events (570 MB of pages) the
#: decode at once is as fast and ``analyze`` peaks lower with it (its single-chunk tables are read
#: as numpy without copies); at 56 M events (1.6 GB) the windows read in 24 s instead of 36 s
#: and 4.8 GB instead of 5.8 GB, and ``analyze`` is faster and peaks lower with them.
WHOLE_PAGES_LIMIT = 1 << 30
#: Events per window of a larger buffer: larger than a streaming window (its pieces are kept
#: anyway), so that numpy's arrays reach the 4 MB from which it asks for transparent huge pages.
WHOLE_READ_WINDOW = 1 << 21
#: Events per window of a read for one analysis (:func:`read_kept`), whose kept rows go to disk as
#: they come: the window is then what the read holds. Measured (bench/RESULTS.md, "the kept rows
#: on disk"): 2^19 reads as fast as 2^21 and peaks 240-370 MiB lower; 2^18 saves little more.
KEPT_READ_WINDOW = 1 << 19


def read_tracedat(path: str | os.PathLike[str], instance: str | None = None) -> TraceData:
    """Read a trace-cmd trace.dat (v6 or v7).

    ``instance`` selects a buffer instance by name; by default the top buffer is returned and the
    others are in ``.instances``.
    """
    spath = os.fspath(path)
    with open_file(spath) as f:
        meta, size = open_meta(f, spath)
        wanted = meta.spec(instance)
        results: dict[str, TraceData] = {}
        for spec in meta.box.buffers:
            if instance is None or spec.name == instance:
                results[spec.name] = read_buffer(f, size, meta, spec)
    main = results.pop(wanted.name)
    main.instances = results  # the other buffers, when the top one was asked for
    return main


def read_kept(path: str | os.PathLike[str], keep: Callable[[str, str | None], bool],
              observe: Callable[[TraceData], None], *, decode: Callable[[str, str | None], bool] | None = None,
              instance: str | None = None, events_per_window: int = KEPT_READ_WINDOW,
              pages_per_run: int | None = None) -> TraceData:
    """One buffer instance with only the rows of the events ``keep(name, system)`` accepts.

    Each window is first shown to ``observe``: its ``events`` table (every event of the window:
    an analysis gathers there what it needs of the others), gaps and info, and the tables of the
    kept events, whose rows are then kept, and of those ``decode`` accepts besides (shown, not
    kept); the other events' fields are never decoded. The
    result is what :func:`read_tracedat` gives, less the other events' rows: their tables are
    empty (``TraceData.left_out`` names them; ``info`` still counts them); the ``events`` table
    has every row. Both lie on disk, mapped back (:mod:`kvmtrace.parsers.tracedat.spill`,
    :mod:`kvmtrace.parsers.spilled`; :meth:`TraceData.release_pages` gives back the pages a pass
    read). Memory: one window (:func:`kvmtrace.parsers.tracedat.windows.iter_windows`).
    """
    with window_reader(path, instance, events_per_window, pages_per_run) as reader:
        return reader.kept(keep, observe, decode)


def read_buffer(f: io.BufferedReader, size: int, meta: FileMeta, spec: BufferSpec,
                whole_pages_limit: int = WHOLE_PAGES_LIMIT) -> TraceData:
    """One buffer instance, decoded at once or in joined windows (module docstring)."""
    plans = plan_streams(f, size, meta.box, spec, spec.page_size, [], keep_raw=False)  # notes: the read's own
    if sum(p.size for p in plans) <= whole_pages_limit:
        return read_all_pages(f, size, meta, spec)
    return _WindowReader(f, size, meta, spec, WHOLE_READ_WINDOW, None).whole()


def read_all_pages(f: io.BufferedReader, size: int, meta: FileMeta, spec: BufferSpec) -> TraceData:
    """One buffer instance decoded at once: every page in one buffer, one stable sort by each
    CPU's running maximum timestamp for trace-cmd's order (:func:`merge_records`)."""
    box, opts, catalog = meta.box, meta.opts, meta.catalog
    notes: list[str] = list(box.warnings)
    pages = load_pages(f, size, box, spec, meta.header, notes)
    records, flags, corrupt = walk(pages)
    if corrupt:
        notes.append(corrupt_note(box.path, corrupt))
    reader = FieldReader(pages.buf, box.big_endian)
    merged, order = merge_records(records, pages, reader, catalog, opts)
    gaps, lost, lost_unknown = gap_table(records, flags, pages, order, opts)
    # Peak memory: free each intermediate as soon as its last user is done (records and order
    # now; the page buffer and payload offsets once the per-event tables are decoded).
    del records, order
    tables, counts, unknown = event_tables(merged, catalog, reader, meta.cmdlines, meta.printk,
                                           meta.header.data_size)
    ts, cpu, pid, event_id = merged.ts, merged.cpu, merged.pid, merged.event_id
    del merged, reader, pages
    events = events_table(ts, cpu, pid, event_id, catalog, meta.cmdlines)
    if unknown:
        notes.append(unknown_note(box.path, unknown))
    for note in notes:
        _warnings.warn(note, TraceWarning, stacklevel=4)
    info = meta.info(spec, counts, lost, lost_unknown,
                     int(ts.min()) if len(ts) else None,  # min/max: a CPU clock may step back
                     int(ts.max()) if len(ts) else None, notes)
    return TraceData(info=info, events=events, tables=tables, gaps=gaps)
