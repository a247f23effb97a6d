"""``read_tracedat``: a trace.dat file → :class:`kvmtrace.parsers.schema.TraceData` per buffer instance.

Pipeline: container (v6/v7) → format files → per instance: load pages → page walk (vectorised
over pages) → timestamps in ns → merge CPUs → columnar field decode → Arrow tables.
"""

from __future__ import annotations

import mmap
import os
import warnings as _warnings
from typing import BinaryIO

from kvmtrace.parsers.errors import TraceError, TraceWarning
from kvmtrace.parsers.schema import CpuStats, TraceData, TraceInfo
from kvmtrace.parsers.tracedat.columns import FieldReader
from kvmtrace.parsers.tracedat.constants import Option
from kvmtrace.parsers.tracedat.container import parse_container
from kvmtrace.parsers.tracedat.cpustat import cpu_stats_by_buffer, merge_lost
from kvmtrace.parsers.tracedat.catalog import FormatCatalog
from kvmtrace.parsers.tracedat.formats import PageHeader, parse_header_page
from kvmtrace.parsers.tracedat.layout import BufferSpec, Container
from kvmtrace.parsers.tracedat.gaps import gap_table
from kvmtrace.parsers.tracedat.merge import merge_records
from kvmtrace.parsers.tracedat.metadata import kernel_release, parse_cmdlines, parse_printk
from kvmtrace.parsers.tracedat.options import Options, decode_options
from kvmtrace.parsers.tracedat.pages import walk
from kvmtrace.parsers.tracedat.streams import load_pages
from kvmtrace.parsers.tracedat.tables import event_tables, events_table


#: Files from trace-cmd versions that did not store the clock were recorded with the kernel's
#: default clock; ``trace-cmd convert`` writes "local" for them too.
DEFAULT_CLOCK = "local"


def read_tracedat(path: str | os.PathLike[str], instance: str | None = None) -> TraceData:
    """Read a trace-cmd trace.dat (v6 or v7).

    ``instance`` selects a buffer instance by name; by default the top buffer is returned and the
    others are in ``.instances``.
    """
    spath = os.fspath(path)
    try:
        f = open(spath, "rb")
    except OSError as err:
        raise TraceError(f"{spath}: cannot open ({err.strerror})") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise TraceError(f"{spath}: empty file, not a trace.dat")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            box = parse_container(mm, spath)
        if box.latency:
            raise TraceError(f"{spath}: a latency-format trace.dat (text, no ring-buffer pages) is not "
                             f"supported; run 'trace-cmd report' on it and read the text instead")
        opts = decode_options(box.options, box.big_endian)
        header = parse_header_page(box.header_page.decode("utf-8", "replace"), spath, box.page_size)
        catalog = FormatCatalog(box, header.commit_size)
        cmdlines = parse_cmdlines(box.cmdlines)
        printk = parse_printk(box.printk)
        names = tuple(b.name for b in box.buffers)
        if instance is not None and instance not in names:
            raise TraceError(f"{spath}: no buffer instance {instance!r}; this file has "
                             f"{[n for n in names if n] or 'only the top buffer'}")
        wanted = "" if instance is None else instance
        if wanted not in names:
            raise TraceError(f"{spath}: no top-level buffer in this trace.dat")
        stats = cpu_stats_by_buffer([o.payload for o in box.options if o.id == Option.CPUSTAT])
        results: dict[str, TraceData] = {}
        for spec in box.buffers:
            if instance is None or spec.name == instance:
                others = tuple(n for n in names if n and n != spec.name)
                results[spec.name] = _read_buffer(f, size, box, spec, opts, catalog, header, cmdlines, printk,
                                                  others, stats.get(spec.name, ()))
    main = results.pop(wanted)
    main.instances = results  # the other buffers, when the top one was asked for
    return main


def _read_buffer(f: BinaryIO, size: int, box: Container, spec: BufferSpec, opts: Options, catalog: FormatCatalog,
                 header: PageHeader, cmdlines: dict[int, str], printk: dict[int, str],
                 others: tuple[str, ...], stats: tuple[CpuStats, ...]) -> TraceData:
    notes: list[str] = list(box.warnings)
    pages = load_pages(f, size, box, spec, header, notes)
    records, flags, corrupt = walk(pages)
    if corrupt:
        notes.append(f"{box.path}: corrupt trace.dat: {sum(n for n, _ in corrupt)} corrupt page(s) read in part or "
                     f"not at all (first: {corrupt[0][1]}); their events are lost, counted as gaps of "
                     f"unknown size")
    reader = FieldReader(pages.buf, box.big_endian)
    merged, order = merge_records(records, pages, reader, catalog, opts)
    gaps, lost, lost_unknown = gap_table(records, flags, pages, order, opts)
    lost, lost_unknown = merge_lost(lost, lost_unknown, stats)
    # Peak memory: free each intermediate as soon as its last user is done (records and order
    # now; the page buffer and payload offsets once the per-event tables are decoded).
    del records, order
    tables, counts, unknown = event_tables(merged, catalog, reader, cmdlines, printk, header.data_size)
    ts, cpu, pid, event_id = merged.ts, merged.cpu, merged.pid, merged.event_id
    del merged, reader, pages
    events = events_table(ts, cpu, pid, event_id, catalog, cmdlines)
    if unknown:
        notes.append(f"{box.path}: {unknown} records with an event id that has no format file were skipped")
    for note in notes:
        _warnings.warn(note, TraceWarning, stacklevel=3)
    info = TraceInfo(
        path=box.path, source="tracedat", version=box.version, compression=box.compression,
        cpus=max(box.cpus, 1 + max((s.cpu for s in spec.cpus), default=-1)),
        clock=opts.clock or box.clock or spec.clock or DEFAULT_CLOCK,
        kernel=kernel_release(opts.uname), uname=opts.uname, tracer_version=opts.version,
        long_size=header.commit_size, page_size=spec.page_size, big_endian=box.big_endian,
        event_counts=dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        lost_events=lost, lost_unknown=lost_unknown,
        first_ts=int(ts.min()) if len(ts) else None,  # min/max: a CPU clock may step back
        last_ts=int(ts.max()) if len(ts) else None,
        instances=others, warnings=tuple(notes), cpu_stats=stats,
        cut_short=any("file cut short" in n or "was cut short" in n for n in notes),
    )
    return TraceData(info=info, events=events, tables=tables, gaps=gaps)
