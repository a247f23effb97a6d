"""Recover the CPU data of a v7 file cut short after its data began.

trace-cmd writes the options that locate each CPU's data (the BUFFER option) in an options
section *after* the data, so a v7 file cut anywhere in its data has lost them. The metadata
options come first and survive, and the BUFFER section's own header is intact; with compression,
each CPU's stream inside it is self-delimiting (page-aligned, a u32 chunk count, then
size-prefixed chunks). That is enough to find every stream that began before the cut.

Which CPU each stream belongs to is not in the section: trace-cmd writes the CPUs that recorded
something in ascending order. The CPUSTAT options (written before the data by ``trace-cmd
record``) say how many events each CPU's buffer gave up ("read events"), so the streams are
assigned, in order, to the CPUs with events; without CPUSTAT they are numbered 0, 1, ... (exact
when every CPU recorded events), and the warning says which rule was used.
"""

from __future__ import annotations

import struct

from kvmtrace.parsers.tracedat.constants import (
    COMPRESS_CHUNK_COUNT_SIZE,
    SECTION_FLAG_COMPRESSED,
    SECTION_HEADER_SIZE,
    Option,
)
from kvmtrace.parsers.tracedat.cpustat import cpu_stats_by_buffer
from kvmtrace.parsers.tracedat.cursor import Cursor
from kvmtrace.parsers.tracedat.layout import BufferSpec, Container, CpuStream


def _sections(cur: Cursor, start: int) -> list[tuple[int, int, int, int]]:
    """(id, flags, offset of the payload, size) of every section header from ``start`` on."""
    found = []
    pos = start
    while pos + SECTION_HEADER_SIZE <= len(cur.buf):
        head = cur.at(pos)
        sec_id, flags = head.u16(), head.u16()
        head.u32()
        size = head.u64()
        found.append((sec_id, flags, head.pos, size))
        pos = head.pos + size
    return found


def cpus_with_events(cpustat: list[bytes]) -> list[int]:
    """CPUs whose CPUSTAT text reports read events, ascending (top buffer's stats only)."""
    top = cpu_stats_by_buffer(cpustat).get("", ())
    return [s.cpu for s in top if s.read_events]


def salvage_top_buffer(cur: Cursor, box: Container, first_section: int,
                       cpu_ids: list[int]) -> BufferSpec | None:
    """The top buffer's CPU streams found by walking the BUFFER section; None if not possible.

    ``cpu_ids``: the CPUs that recorded events, ascending (empty: unknown, number in file order).
    """
    for sec_id, flags, start, size in _sections(cur, first_section):
        if sec_id != Option.BUFFER:
            continue
        if not flags & SECTION_FLAG_COMPRESSED:
            return None  # uncompressed: nothing marks where one CPU's pages end
        end = min(start + size, len(cur.buf))
        streams: list[CpuStream] = []
        e = ">" if box.big_endian else "<"
        pos = start
        while True:
            pos = -(-pos // box.page_size) * box.page_size  # each stream starts page-aligned
            if pos + COMPRESS_CHUNK_COUNT_SIZE > end:
                break
            (count,) = struct.unpack_from(e + "I", cur.buf, pos)
            if count == 0:
                break
            at = pos + COMPRESS_CHUNK_COUNT_SIZE
            for _ in range(count):
                if at + 8 > end:
                    break
                csize = struct.unpack_from(e + "I", cur.buf, at)[0]
                at += 8 + csize
            at = min(at, end)
            cpu = cpu_ids[len(streams)] if len(streams) < len(cpu_ids) else len(streams)
            streams.append(CpuStream(cpu, pos, at - pos - COMPRESS_CHUNK_COUNT_SIZE))
            pos = at
        return BufferSpec(name="", clock=None, page_size=box.page_size, cpus=tuple(streams), compressed=True)
    return None
