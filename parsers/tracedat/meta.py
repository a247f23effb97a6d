"""What a trace.dat says before its first page (container, format files, options, header page,
cmdlines, printk formats, CPU statistics), and the notes a read ends with.

Every read of the file starts here (:mod:`kvmtrace.parsers.tracedat.windows`), so every window
and the whole read agree on every fact.
"""

from __future__ import annotations

import io
import mmap
import os
from dataclasses import dataclass
from typing import BinaryIO

from kvmtrace.parsers.errors import TraceError
from kvmtrace.parsers.schema import CpuStats, TraceInfo
from kvmtrace.parsers.tracedat.catalog import FormatCatalog
from kvmtrace.parsers.tracedat.constants import Option
from kvmtrace.parsers.tracedat.container import parse_container
from kvmtrace.parsers.tracedat.cpustat import cpu_stats_by_buffer, merge_lost
from kvmtrace.parsers.tracedat.formats import PageHeader, parse_header_page
from kvmtrace.parsers.tracedat.layout import BufferSpec, Container
from kvmtrace.parsers.tracedat.metadata import kernel_release, parse_cmdlines, parse_printk
from kvmtrace.parsers.tracedat.options import Options, decode_options

#: Files from trace-cmd versions that did not store the clock were recorded with the kernel's
#: default clock; ``trace-cmd convert`` writes "local" for them too.
DEFAULT_CLOCK = "local"


@dataclass(frozen=True)
class FileMeta:
    """What a trace.dat says before its first page: the container and everything decoded from
    it that every buffer instance shares."""

    box: Container
    opts: Options
    header: PageHeader
    catalog: FormatCatalog
    cmdlines: dict[int, str]
    printk: dict[int, str]
    stats: dict[str, tuple[CpuStats, ...]]  # CPUSTAT by buffer name

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.box.buffers)

    def spec(self, instance: str | None) -> BufferSpec:
        """The buffer instance asked for (None: the top buffer); a missing one is a TraceError."""
        names = self.names
        if instance is not None and instance not in names:
            raise TraceError(f"{self.box.path}: no buffer instance {instance!r}; this file has "
                             f"{[n for n in names if n] or 'only the top buffer'}")
        wanted = "" if instance is None else instance
        if wanted not in names:
            raise TraceError(f"{self.box.path}: no top-level buffer in this trace.dat")
        return next(b for b in self.box.buffers if b.name == wanted)

    def others(self, spec: BufferSpec) -> tuple[str, ...]:
        """The names of the file's other buffer instances."""
        return tuple(n for n in self.names if n and n != spec.name)

    def info(self, spec: BufferSpec, counts: dict[str, int], lost: dict[int, int], lost_unknown: dict[int, int],
             first_ts: int | None, last_ts: int | None, notes: list[str]) -> TraceInfo:
        """The :class:`TraceInfo` of buffer ``spec`` given what its pages held."""
        box, opts, header = self.box, self.opts, self.header
        lost, lost_unknown = merge_lost(lost, lost_unknown, self.stats.get(spec.name, ()))
        return TraceInfo(
            path=box.path, source="tracedat", version=box.version, compression=box.compression,
            cpus=max(box.cpus, 1 + max((s.cpu for s in spec.cpus), default=-1)),
            clock=opts.clock or box.clock or spec.clock or DEFAULT_CLOCK,
            kernel=kernel_release(opts.uname), uname=opts.uname, tracer_version=opts.version,
            long_size=header.commit_size, page_size=spec.page_size, big_endian=box.big_endian,
            event_counts=dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
            lost_events=lost, lost_unknown=lost_unknown, first_ts=first_ts, last_ts=last_ts,
            instances=self.others(spec), warnings=tuple(notes), cpu_stats=self.stats.get(spec.name, ()),
            cut_short=any("file cut short" in n or "was cut short" in n for n in notes),
        )


def open_meta(f: BinaryIO, spath: str) -> tuple[FileMeta, int]:
    """Parse the container of the open file ``f`` (named ``spath``); returns it with the file size."""
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
    meta = FileMeta(box=box, opts=opts, header=header, catalog=FormatCatalog(box, header.commit_size),
                    cmdlines=parse_cmdlines(box.cmdlines), printk=parse_printk(box.printk),
                    stats=cpu_stats_by_buffer([o.payload for o in box.options if o.id == Option.CPUSTAT]))
    return meta, size


def open_file(spath: str) -> io.BufferedReader:
    """Open a trace.dat for reading; a failure is a one-line TraceError."""
    try:
        return open(spath, "rb")
    except OSError as err:
        raise TraceError(f"{spath}: cannot open ({err.strerror})") from None


def corrupt_note(path: str, corrupt: list[tuple[int, str]]) -> str:
    """The warning for pages the walk found corrupt (per kind: how many, the first one)."""
    return (f"{path}: corrupt trace.dat: {sum(n for n, _ in corrupt)} corrupt page(s) read in part or "
            f"not at all (first: {corrupt[0][1]}); their events are lost, counted as gaps of unknown size")


def unknown_note(path: str, unknown: int) -> str:
    """The warning for records whose event id has no format file."""
    return f"{path}: {unknown} records with an event id that has no format file were skipped"
