"""Parse the trace.dat container (v6 linear layout, v7 sections and options chains).

The result is a :class:`kvmtrace.parsers.tracedat.layout.Container`: metadata blobs, options, and for each
buffer instance where its per-CPU page streams live. Byte layout: trace-cmd's trace-cmd.dat.v6/v7
documents, checked against ``trace-input.c`` where they disagree (v6 options end with a bare u16
0; v6 files carry a clock trailer after the flyrecord table when a TRACECLOCK option exists).
"""

from __future__ import annotations

import mmap
import re

from kvmtrace.parsers.errors import TraceError
from kvmtrace.parsers.tracedat.compress import Decompressor
from kvmtrace.parsers.tracedat.constants import (
    COMPRESSION_NONE,
    DONE_OPTION_SIZE,
    ENDIAN_BIG,
    ENDIAN_LITTLE,
    HEADER_EVENT_TAG,
    HEADER_PAGE_TAG,
    MAGIC,
    SECTION_FLAG_COMPRESSED,
    SECTION_HEADER_SIZE,
    SECTION_OPTIONS,
    SUPPORTED_VERSIONS,
    TAIL_FLYRECORD,
    TAIL_LATENCY,
    TAIL_OPTIONS,
    TAIL_SIZE,
    VERSION_SECTIONS,
    Option,
)
from kvmtrace.parsers.tracedat.cursor import Cursor
from kvmtrace.parsers.tracedat.layout import BufferSpec, Container, CpuStream, RawOption
from kvmtrace.parsers.tracedat.limits import MAX_CPUS, MAX_METADATA, MAX_SECTION, mib, page_size_problem
from kvmtrace.parsers.tracedat.salvage import cpus_with_events, salvage_top_buffer


def parse_container(buf: bytes | mmap.mmap, path: str) -> Container:
    """Read the initial header and dispatch to the v6 or v7 layout."""
    if not buf[: len(MAGIC)] == MAGIC:
        raise TraceError(f"{path}: not a trace.dat file (bad magic); expected a file written by trace-cmd")
    cur = Cursor(buf, len(MAGIC), path=path)
    raw_version = cur.cstr()
    if not raw_version.isdigit() or int(raw_version) not in SUPPORTED_VERSIONS:
        raise TraceError(
            f"{path}: unsupported trace.dat version {raw_version!r} (supported: 6, 7); "
            f"convert it with 'trace-cmd convert --file-version 7'"
        )
    endian = cur.u8()
    if endian not in (ENDIAN_LITTLE, ENDIAN_BIG):
        raise TraceError(f"{path}: corrupt trace.dat header (endianness byte {endian} at byte {cur.pos - 1})")
    cur.set_byte_order(endian == ENDIAN_BIG)
    long_size = cur.u8()
    page_size = cur.u32()
    problem = page_size_problem(page_size)
    if problem:
        raise TraceError(f"{path}: corrupt trace.dat header: {problem}")
    box = Container(path=path, version=int(raw_version), big_endian=cur.big_endian,
                    user_long_size=long_size, page_size=page_size)
    if box.version < VERSION_SECTIONS:
        _read_v6(cur, box)
    else:
        _read_v7(cur, box)
    return box


# ---------------------------------------------------------------- metadata pieces (v6 and v7)


def _read_header_info(cur: Cursor, box: Container) -> None:
    for tag in (HEADER_PAGE_TAG, HEADER_EVENT_TAG):
        got = cur.take(len(tag))
        if got != tag:
            raise TraceError(f"{box.path}: corrupt trace.dat: expected {tag[:-1].decode()!r} at byte "
                             f"{cur.base + cur.pos - len(tag)}")
        blob = cur.blob64()
        if tag == HEADER_PAGE_TAG:
            box.header_page = blob
        else:
            box.header_event = blob


def _read_ftrace_formats(cur: Cursor, box: Container) -> None:
    box.ftrace_formats = [cur.blob64() for _ in range(cur.u32())]


def _read_event_formats(cur: Cursor, box: Container) -> None:
    for _ in range(cur.u32()):
        system = cur.cstr()
        box.event_formats.extend((system, cur.blob64()) for _ in range(cur.u32()))


def _read_kallsyms(cur: Cursor, box: Container) -> None:
    box.kallsyms = cur.blob32()


def _read_printk(cur: Cursor, box: Container) -> None:
    box.printk = cur.blob32()


def _read_cmdlines(cur: Cursor, box: Container) -> None:
    box.cmdlines = cur.blob64()


_METADATA_READERS = {
    Option.HEADER_INFO: _read_header_info,
    Option.FTRACE_EVENTS: _read_ftrace_formats,
    Option.EVENT_FORMATS: _read_event_formats,
    Option.KALLSYMS: _read_kallsyms,
    Option.PRINTK: _read_printk,
    Option.CMDLINES: _read_cmdlines,
}


def _clock_from_text(text: str) -> str | None:
    """The selected clock: the bracketed word of a ``trace_clock`` file, or the text itself."""
    m = re.search(r"\[([^\]]+)\]", text)
    if m:
        return m.group(1)
    text = text.strip("\0\n ")
    return text or None


def _cpu_count(n: int, box: Container) -> int:
    """A v6 CPU count: it sizes the table of CPU data that follows, so it must be believable."""
    if n > MAX_CPUS:
        raise TraceError(f"{box.path}: corrupt trace.dat: {n} CPUs (more than the {MAX_CPUS} any Linux build has)")
    return n


# ---------------------------------------------------------------- v6


def _read_v6(cur: Cursor, box: Container) -> None:
    _read_header_info(cur, box)
    _read_ftrace_formats(cur, box)
    _read_event_formats(cur, box)
    _read_kallsyms(cur, box)
    _read_printk(cur, box)
    _read_cmdlines(cur, box)
    box.cpus = _cpu_count(cur.u32(), box)
    tail = cur.take(TAIL_SIZE)
    if tail == TAIL_OPTIONS:
        while (opt_id := cur.u16()) != 0:
            box.options.append(RawOption(opt_id, cur.take(cur.u32())))
        tail = cur.take(TAIL_SIZE)
    opts = {o.id: o for o in box.options}
    if Option.CPUCOUNT in opts:
        box.cpus = _cpu_count(cur.number(opts[Option.CPUCOUNT].payload, "I"), box)
    if tail == TAIL_LATENCY:
        box.latency = True
        return
    if tail != TAIL_FLYRECORD:
        raise TraceError(f"{box.path}: corrupt trace.dat: unknown section {tail!r} at byte {cur.pos - TAIL_SIZE}")
    top = _read_v6_flyrecord(cur, box, "", box.cpus, Option.TRACECLOCK in opts)
    box.buffers.append(top)
    for opt in box.options:
        if opt.id == Option.BUFFER:
            offset = cur.number(opt.payload, "Q")
            name = opt.payload[8:].split(b"\0", 1)[0].decode("utf-8", "replace")
            sub = cur.at(offset)
            if sub.take(TAIL_SIZE) != TAIL_FLYRECORD:
                raise TraceError(f"{box.path}: corrupt trace.dat: buffer {name!r} has no flyrecord at byte {offset}")
            box.buffers.append(_read_v6_flyrecord(sub, box, name, box.cpus, True))


def _read_v6_flyrecord(cur: Cursor, box: Container, name: str, cpus: int, has_clock: bool) -> BufferSpec:
    streams = tuple(CpuStream(cpu, cur.u64(), cur.u64()) for cpu in range(cpus))
    clock = None
    if has_clock and cur.remaining >= 8:
        text = cur.blob64().decode("utf-8", "replace")
        clock = _clock_from_text(text)
        if not name:
            box.clock = clock
    return BufferSpec(name=name, clock=clock, page_size=box.page_size, cpus=streams)


# ---------------------------------------------------------------- v7


def _section_payload(cur: Cursor, box: Container, dec: Decompressor, offset: int,
                     expect: int | None = None) -> tuple[int, Cursor]:
    """Read the section header at ``offset``; return (id, cursor over the (decompressed) payload)."""
    what = "options" if expect in (None, SECTION_OPTIONS) else _name(expect)
    if offset + SECTION_HEADER_SIZE > len(cur.buf):
        raise TraceError(f"{box.path}: truncated at byte {len(cur.buf)}: the {what} section should be at byte "
                         f"{offset}, past the end of the file; it was cut short (or that offset is corrupt), "
                         f"re-copy or re-record it")
    head = cur.at(offset)
    sec_id, flags = head.u16(), head.u16()
    head.u32()  # description: an id into the STRINGS sections, informational only
    size = head.u64()
    if expect is not None and sec_id != expect:
        raise TraceError(f"{box.path}: corrupt trace.dat: expected section {expect} at byte {offset}, found {sec_id}")
    start = head.pos
    if start + size > len(cur.buf):  # the whole section must be in the file
        raise head.truncated(size)
    section = Cursor(cur.buf[start : start + size], big_endian=box.big_endian, path=box.path, base=start)
    if flags & SECTION_FLAG_COMPRESSED and size:
        # Every metadata byte counts, so that many options naming one section cannot multiply it.
        payload = dec.block(section, what, max(0, min(MAX_SECTION, MAX_METADATA - box.metadata_bytes)))
        box.metadata_bytes += len(payload)
        return sec_id, Cursor(payload, big_endian=box.big_endian, path=box.path, base=start)
    box.metadata_bytes += size
    if box.metadata_bytes > MAX_METADATA:
        raise TraceError(f"{box.path}: corrupt trace.dat: its metadata sections hold more than "
                         f"{mib(MAX_METADATA)} in all")
    return sec_id, section


def _name(section_id: int) -> str:
    """A section's name for messages (``CMDLINES``), or its number if unknown."""
    try:
        return Option(section_id).name
    except ValueError:
        return str(section_id)


def _section_fits(cur: Cursor, offset: int) -> bool:
    """Whether the whole section at ``offset`` (header and payload) is inside the file."""
    if offset + SECTION_HEADER_SIZE > len(cur.buf):
        return False
    return offset + SECTION_HEADER_SIZE + cur.number(cur.buf[offset + 8 : offset + 16], "Q") <= len(cur.buf)


def _read_v7(cur: Cursor, box: Container) -> None:
    box.compression = cur.cstr()
    cur.cstr()  # compression library version: informational
    dec = Decompressor(box.compression, box.path)
    first_options = cur.u64()
    first_section = cur.pos
    offset, seen = first_options, set()
    cut_at: TraceError | None = None
    while offset:
        if offset in seen:
            raise TraceError(f"{box.path}: corrupt trace.dat: options chain loops at byte {offset}")
        seen.add(offset)
        if offset > first_options and not _section_fits(cur, offset):
            # A later options section lost to a cut (trace-cmd writes it after the data).
            cut_at = cur.at(offset).truncated(SECTION_HEADER_SIZE)
            break
        _, opts = _section_payload(cur, box, dec, offset, expect=SECTION_OPTIONS)
        offset = 0
        while opts.remaining:
            opt_id, size = opts.u16(), opts.u32()
            payload = opts.take(size)
            if opt_id == Option.DONE:
                if size >= DONE_OPTION_SIZE:
                    offset = cur.number(payload, "Q")
                break
            box.options.append(RawOption(opt_id, payload))
    for opt in box.options:
        if opt.id in _METADATA_READERS:
            sec_off = cur.number(opt.payload, "Q")
            _, sec = _section_payload(cur, box, dec, sec_off, expect=opt.id)
            _METADATA_READERS[Option(opt.id)](sec, box)
        elif opt.id == Option.CPUCOUNT:
            box.cpus = cur.number(opt.payload, "I")
            if box.cpus > MAX_CPUS:  # informational in v7: each BUFFER option lists its CPUs
                box.warnings.append(f"{box.path}: corrupt CPUCOUNT option ({box.cpus} CPUs, more than the "
                                    f"{MAX_CPUS} any Linux build has); the CPUs are taken from the data")
                box.cpus = 0
        elif opt.id == Option.BUFFER:
            box.buffers.append(_read_v7_buffer(cur, box, opt.payload))
        elif opt.id == Option.BUFFER_TEXT:
            box.latency = True
    if cut_at is not None and not any(b.name == "" for b in box.buffers):
        with_events = cpus_with_events([o.payload for o in box.options if o.id == Option.CPUSTAT])
        top = salvage_top_buffer(cur, box, first_section, with_events)
        if top is None or not top.cpus:
            raise cut_at
        rule = ("assigned to the CPUs whose CPUSTAT reports events" if len(top.cpus) <= len(with_events)
                else "numbered in file order (exact if every CPU recorded events)")
        box.warnings.append(
            f"{box.path}: file cut short at byte {len(cur.buf)}: the options that locate the CPU data "
            f"were lost; recovered {len(top.cpus)} CPU stream(s) from the buffer section, {rule}"
        )
        box.buffers.append(top)
    box.buffers = sorted((_with_page_size(b, box) for b in box.buffers), key=lambda b: b.name != "")
    if box.buffers and box.clock is None:
        box.clock = box.buffers[0].clock
    if box.compression == COMPRESSION_NONE:
        box.buffers = [BufferSpec(b.name, b.clock, b.page_size, b.cpus, False) for b in box.buffers]


def _with_page_size(spec: BufferSpec, box: Container) -> BufferSpec:
    """The page size a buffer is read with, as trace-cmd reads it.

    trace-cmd reads the top buffer with the file header's page size and ignores the one in its
    BUFFER option; other instances use their own (``trace-input.c``). A value that cannot be a
    page size is not used: the header's is, and a warning says so.
    """
    if spec.page_size == box.page_size:
        return spec
    label = "the top buffer" if not spec.name else f"buffer {spec.name!r}"
    problem = page_size_problem(spec.page_size)
    if spec.name and problem is None:
        return spec
    box.warnings.append(f"{box.path}: the BUFFER option of {label} says page size {spec.page_size}"
                        f"{f' ({problem})' if problem else ''}; read with the file header's {box.page_size}, "
                        f"as trace-cmd does")
    return BufferSpec(spec.name, spec.clock, box.page_size, spec.cpus, spec.compressed)


def _read_v7_buffer(cur: Cursor, box: Container, payload: bytes) -> BufferSpec:
    opt = Cursor(payload, big_endian=box.big_endian, path=box.path)
    sec_offset = opt.u64()
    name = opt.cstr()
    clock = opt.cstr() or None
    page_size = opt.u32()
    streams = tuple(CpuStream(opt.u32(), opt.u64(), opt.u64()) for _ in range(opt.u32()))
    cpus = [s.cpu for s in streams]
    if len(set(cpus)) != len(cpus) or any(c >= MAX_CPUS for c in cpus):
        raise TraceError(f"{box.path}: corrupt trace.dat: buffer {name!r} lists CPUs {cpus[:8]}")
    head = cur.at(sec_offset)
    if head.u16() != Option.BUFFER:
        raise TraceError(f"{box.path}: corrupt trace.dat: buffer {name!r} section missing at byte {sec_offset}")
    compressed = bool(head.u16() & SECTION_FLAG_COMPRESSED)
    return BufferSpec(name=name, clock=clock, page_size=page_size, cpus=streams, compressed=compressed)
