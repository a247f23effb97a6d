"""Hand-made ring-buffer pages and trace.dat files, for what no real recording has.

Real recordings never contain zlib sections, big-endian containers, or time extends and
absolute time stamps at chosen places; the reader still has to get them right. This module
builds kernel-format ring-buffer pages from a list of records (the encoding of
``kernel/trace/ring_buffer.c``: small and large data records, TIME_EXTEND, absolute TIME_STAMP,
padding, missed-events flags, either byte order) and writes them with the project writer
(:func:`kvmtrace.parsers.tracedat.writer.write_tracedat`) into a file whose metadata (event
formats, header_page, ...) comes from a REAL recording — see :func:`content_of`.

Typical use::

    content = content_of(v6_file)                         # metadata of a real recording
    page = build_page(ts0, [Data(payload), TimeExtend(1 << 30), Data(payload2, delta=3)])
    build_tracedat(out, content, [[page], []], compression="zlib")
"""

from __future__ import annotations

import dataclasses
import os
import struct
from dataclasses import dataclass

from kvmtrace.parsers.tracedat.constants import (
    COMMIT_MISSING_EVENTS,
    COMMIT_MISSING_STORED,
    COMPRESSION_NONE,
    MAGIC,
    RB_ALIGNMENT,
    TS_DELTA_MASK,
    TS_SHIFT,
    TYPE_LEN_DATA_MAX,
    TYPE_LEN_PADDING,
    TYPE_LEN_TIME_EXTEND,
    TYPE_LEN_TIME_STAMP,
    Option,
)
from kvmtrace.parsers.tracedat.container import parse_container
from kvmtrace.parsers.tracedat.cursor import Cursor
from kvmtrace.parsers.tracedat.formats import parse_header_page
from kvmtrace.parsers.tracedat.streams import load_pages
from kvmtrace.parsers.tracedat.writer import EventSystem, TraceDatContent, write_tracedat

# ---- records -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Data:
    """A data record: ``payload`` (padded to 4 bytes) ``delta`` after the previous record.

    Payloads of up to 112 bytes use the small encoding (type_len = words) unless ``large`` forces
    the type_len 0 form (array[0] = length + 4), as the kernel does on 8-byte-aligned arches.
    """

    payload: bytes
    delta: int = 0
    large: bool = False


@dataclass(frozen=True)
class TimeExtend:
    """TIME_EXTEND (type 30): adds ``delta`` (up to 59 bits) to the running time stamp."""

    delta: int


@dataclass(frozen=True)
class TimeStamp:
    """Absolute TIME_STAMP (type 31): sets the low 59 bits of the running time stamp to ``ts``."""

    ts: int


@dataclass(frozen=True)
class Padding:
    """A discarded event / filler of ``size`` bytes (>= 8) with time delta ``delta`` (non-zero)."""

    size: int
    delta: int = 1


Record = Data | TimeExtend | TimeStamp | Padding


def _header_word(type_len: int, delta: int, big_endian: bool) -> int:
    """The u32 ``type_len:5, time_delta:27`` bitfield as the compiler lays it out per byte order."""
    if delta > TS_DELTA_MASK:
        raise ValueError(f"time delta {delta} needs a TimeExtend (max {TS_DELTA_MASK})")
    return (type_len << TS_SHIFT | delta) if big_endian else (delta << 5 | type_len)


def encode_record(rec: Record, *, big_endian: bool = False) -> bytes:
    """The bytes of one ring-buffer record."""
    order = ">" if big_endian else "<"

    def word(type_len: int, delta: int, *array: int) -> bytes:
        return struct.pack(f"{order}{1 + len(array)}I", _header_word(type_len, delta, big_endian), *array)

    if isinstance(rec, Data):
        body = rec.payload + b"\0" * (-len(rec.payload) % RB_ALIGNMENT)
        words = len(body) // RB_ALIGNMENT
        if not rec.large and 0 < words <= TYPE_LEN_DATA_MAX:
            return word(words, rec.delta) + body
        return word(0, rec.delta, len(body) + 4) + body
    if isinstance(rec, (TimeExtend, TimeStamp)):
        value = rec.delta if isinstance(rec, TimeExtend) else rec.ts
        kind = TYPE_LEN_TIME_EXTEND if isinstance(rec, TimeExtend) else TYPE_LEN_TIME_STAMP
        return word(kind, value & TS_DELTA_MASK, value >> TS_SHIFT)
    if rec.size < 8 or rec.size % RB_ALIGNMENT:
        raise ValueError("padding size must be a multiple of 4 and at least 8")
    return word(TYPE_LEN_PADDING, rec.delta, rec.size - 4) + b"\0" * (rec.size - 8)


def build_page(
    timestamp: int,
    records: list[Record],
    *,
    page_size: int = 4096,
    long_size: int = 8,
    big_endian: bool = False,
    missed_events: int | None = None,
) -> bytes:
    """One ring-buffer sub-buffer: u64 time stamp, ``long`` commit word, records, zero fill.

    ``missed_events``: None = no loss; 0 = MISSING_EVENTS without a count (the kernel had no
    room to store it); n > 0 = MISSING_EVENTS | MISSING_STORED with n stored after the data.
    """
    order = ">" if big_endian else "<"
    long_fmt = order + ("Q" if long_size == 8 else "I")
    data = b"".join(encode_record(r, big_endian=big_endian) for r in records)
    commit = len(data)
    if missed_events is not None:
        commit |= COMMIT_MISSING_EVENTS
        if missed_events > 0:
            commit |= COMMIT_MISSING_STORED
            data += struct.pack(long_fmt, missed_events)
    page = struct.pack(order + "Q", timestamp) + struct.pack(long_fmt, commit) + data
    if len(page) > page_size:
        raise ValueError(f"records need {len(page)} bytes, more than a {page_size}-byte page")
    return page + b"\0" * (page_size - len(page))


def build_tracedat(
    path: str | os.PathLike[str],
    template: TraceDatContent,
    cpu_pages: list[list[bytes]],
    **writer_options: object,
) -> None:
    """Write ``template``'s metadata with hand-made pages (``cpu_pages[cpu]``) to ``path``.

    ``writer_options`` go to :func:`write_tracedat` (version, compression, big_endian).
    """
    content = dataclasses.replace(
        template,
        cpu_data=tuple(b"".join(pages) for pages in cpu_pages),
        cpu_stats=(),
    )
    write_tracedat(path, content, **writer_options)  # type: ignore[arg-type]


# ---- metadata of a real recording --------------------------------------------------------------


def content_of(path: str | os.PathLike[str], *, decompress: bool = False) -> TraceDatContent:
    """Everything in an *uncompressed* trace.dat (e.g. ``trace-cmd convert --file-version 6
    --compression none`` of a real recording), read with the project's container parser.

    The pages are sliced straight out of the file, so the writer under test gets exactly the
    kernel's bytes; its output is then judged by trace-cmd, not by this reader. ``decompress``
    also accepts a compressed v7 file, whose pages are then decompressed by the reader's loader
    (for tests that need many pages of a real recording, not a judge of the loader).
    """
    data = open(path, "rb").read()
    box = parse_container(data, os.fspath(path))
    top = box.buffers[0]
    cpu_data = [b""] * box.cpus
    if box.compression != COMPRESSION_NONE:
        if not decompress:
            raise ValueError(f"{path}: compressed ({box.compression}); convert it with --compression none")
        header = parse_header_page(box.header_page.decode(), os.fspath(path), box.page_size)
        with open(path, "rb") as f:
            pages = load_pages(f, len(data), box, top, header, [])
        for cpu in sorted(set(pages.cpu.tolist())):
            starts = pages.starts[pages.cpu == cpu]
            cpu_data[cpu] = pages.buf[int(starts[0]) : int(starts[-1]) + top.page_size].tobytes()
    else:
        for stream in top.cpus:
            cpu_data[stream.cpu] = data[stream.offset : stream.offset + stream.size]
    systems: dict[str, list[bytes]] = {}
    for system, text in box.event_formats:
        systems.setdefault(system, []).append(text)
    opts: dict[int, list[bytes]] = {}
    for opt in box.options:
        opts.setdefault(opt.id, []).append(opt.payload)

    def text(oid: int) -> str | None:
        return opts[oid][0].rstrip(b"\0").decode() if oid in opts else None

    order = ">" if box.big_endian else "<"
    return TraceDatContent(
        page_size=top.page_size,
        header_page=box.header_page,
        header_event=box.header_event,
        ftrace_formats=tuple(box.ftrace_formats),
        systems=tuple(EventSystem(name, tuple(formats)) for name, formats in systems.items()),
        cpu_data=tuple(cpu_data),
        kallsyms=box.kallsyms,
        printk_formats=box.printk,
        cmdlines=box.cmdlines,
        clock=top.clock or box.clock,
        trace_clock=opts[Option.TRACECLOCK][0].rstrip(b"\0") if Option.TRACECLOCK in opts else None,
        uname=text(Option.UNAME),
        version=text(Option.VERSION),
        trace_id=struct.unpack(order + "Q", opts[Option.TRACEID][0])[0] if Option.TRACEID in opts else None,
        cpu_stats=tuple(s.rstrip(b"\0") for s in opts.get(Option.CPUSTAT, [])),
        user_long_size=box.user_long_size,
    )


# ---- damaging real files ------------------------------------------------------------------------


@dataclass(frozen=True)
class PlacedOption:
    """A v7 option as found in an (uncompressed) options section: where its payload is."""

    id: int
    at: int  # file offset of the payload
    payload: bytes


def options_chain(raw: bytes) -> list[PlacedOption]:
    """Every option of a little-endian v7 file, DONE options included, following the options
    chain (as trace-cmd writes them, options sections are not compressed)."""
    cur = Cursor(raw, len(MAGIC))
    cur.cstr(), cur.u8(), cur.u8(), cur.u32(), cur.cstr(), cur.cstr()
    offset, found = cur.u64(), []
    while offset:
        sec = cur.at(offset)
        sec_id, flags = sec.u16(), sec.u16()
        sec.u32()
        end = sec.u64() + sec.pos
        assert sec_id == Option.DONE and not flags, "not an uncompressed options section"
        offset = 0
        while sec.pos < end:
            opt_id, size = sec.u16(), sec.u32()
            found.append(PlacedOption(opt_id, sec.pos, sec.take(size)))
            if opt_id == Option.DONE:
                offset = struct.unpack("<Q", found[-1].payload)[0]
                break
    return found


def v7_options(raw: bytes) -> list[PlacedOption]:
    """Every option of a little-endian v7 file with the file offset of its payload."""
    return [o for o in options_chain(raw) if o.id != Option.DONE]


def append_options(raw: bytes, options: list[tuple[int, bytes]]) -> bytes:
    """``raw`` (little-endian v7) with ``options`` in an options section appended at the end
    and chained from its last DONE option, as trace-cmd itself chains them."""
    done = [o for o in options_chain(raw) if o.id == Option.DONE][-1]
    body = b"".join(struct.pack("<HI", i, len(p)) + p for i, p in options) + struct.pack("<HIQ", Option.DONE, 8, 0)
    return (patched(raw, done.at, struct.pack("<Q", len(raw)))
            + struct.pack("<HHIQ", Option.DONE, 0, 0, len(body)) + body)


def patched(raw: bytes, offset: int, new: bytes) -> bytes:
    """``raw`` with ``new`` written over the bytes at ``offset``."""
    out = bytearray(raw)
    out[offset : offset + len(new)] = new
    return bytes(out)


# ---- long traces from a real recording -----------------------------------------------------------


def repeated_tracedat(src: str | os.PathLike[str], out: str | os.PathLike[str], copies: int,
                      **writer_options: object) -> None:
    """Write ``out``: ``src``'s pages repeated ``copies`` times per CPU, each copy's page time
    stamps moved past the previous copy (by twice the recording's span plus one second), so the
    result reads as one long recording of the same workload. Hand-made, not recorded: a stand-in
    for a long trace where none can be recorded. The pages are assembled in temporary files next
    to ``out`` and mapped, so memory stays small however long the result.

    Records with an absolute TIME_STAMP (rare: the kernel writes them after long idle periods
    on some kernels) keep their original time; the reader's merge orders them as trace-cmd would.
    """
    import mmap
    import tempfile

    import numpy as np

    content = content_of(src, decompress=True)
    page = content.page_size
    order = "<u8"  # the page header's u64 time stamp; every recording here is little-endian
    stamps = [np.frombuffer(d, np.uint8).reshape(-1, page)[:, :8].copy().view(order).ravel()
              for d in content.cpu_data if len(d)]
    first = min(int(s.min()) for s in stamps)
    last = max(int(s.max()) for s in stamps)
    span = 2 * (last - first) + 1_000_000_000
    folder = os.path.dirname(os.path.abspath(out))
    mapped: list[mmap.mmap | bytes] = []
    files = []
    try:
        for data in content.cpu_data:
            if not len(data):
                mapped.append(b"")
                continue
            tmp = tempfile.TemporaryFile(dir=folder)
            files.append(tmp)
            pages = np.frombuffer(data, np.uint8).reshape(-1, page).copy()
            ts = pages[:, :8].copy().view(order).ravel()
            for k in range(copies):
                pages[:, :8] = (ts + np.uint64(k * span)).astype(order).view(np.uint8).reshape(-1, 8)
                tmp.write(pages.tobytes())
            tmp.flush()
            mapped.append(mmap.mmap(tmp.fileno(), 0, access=mmap.ACCESS_READ))
        write_tracedat(out, dataclasses.replace(content, cpu_data=tuple(mapped)), **writer_options)  # type: ignore[arg-type]
    finally:
        for m in mapped:
            if isinstance(m, mmap.mmap):
                m.close()
        for tmp in files:
            tmp.close()
