"""Write a trace.dat container (v6 or v7) from metadata texts and raw per-CPU ring-buffer pages.

Why our own writer: ``trace-cmd record`` cannot run on every host (here ftrace_enabled is
read-only, and containers rarely ship trace-cmd), yet everything downstream — the project
reader, ``trace-cmd report``, KernelShark — wants a trace.dat. The kernel already hands us every
piece verbatim (format files, ``trace_pipe_raw`` pages), so writing the container is only
framing. The same writer lets the tests manufacture the variants no real recording has
(zlib, big-endian containers).

The layout follows trace-cmd's ``trace-output.c`` (v6: one linear stream; v7: sections located
through an options section, metadata compressed as blocks, per-CPU data as chunk streams). Page
bytes are copied untouched: the writer never decodes records, so the page byte order is the
caller's business and only the container integers follow ``big_endian``.
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

import zstandard

from kvmtrace.parsers.errors import TraceError
from kvmtrace.parsers.output import atomic_file
from kvmtrace.parsers.tracedat.constants import (
    COMPRESS_BLOCK_HEADER_SIZE,
    COMPRESSION_NONE,
    COMPRESSION_ZLIB,
    COMPRESSION_ZSTD,
    ENDIAN_BIG,
    ENDIAN_LITTLE,
    HEADER_EVENT_TAG,
    HEADER_PAGE_TAG,
    MAGIC,
    PAGES_IN_CHUNK,
    SECTION_FLAG_COMPRESSED,
    SECTION_HEADER_SIZE,
    SUPPORTED_VERSIONS,
    TAIL_FLYRECORD,
    TAIL_OPTIONS,
    Option,
)

COMPRESSIONS = (COMPRESSION_NONE, COMPRESSION_ZSTD, COMPRESSION_ZLIB)
#: Raw pages: bytes, or a read-only map of a file holding them (long recordings stay on disk).
PageBytes = bytes | mmap.mmap


@dataclass(frozen=True)
class EventSystem:
    """One event system (``kvmmmu``, ``kvm``, ...) and the ``format`` file text of each event."""

    name: str
    formats: tuple[bytes, ...]


@dataclass(frozen=True)
class TraceDatContent:
    """Everything a trace.dat holds, as the kernel gave it (texts are the tracefs files' bytes).

    ``cpu_data[i]`` is CPU *i*'s run of whole ring-buffer pages (``page_size`` bytes each,
    possibly empty); its length is the file's CPU count. ``clock`` is the selected trace clock
    (``"global"``); ``trace_clock`` the whole ``trace_clock`` file, which trace-cmd stores as
    the TRACECLOCK option. ``cpu_stats`` are the ``per_cpu/cpuN/stats`` texts (CPUSTAT options).
    """

    page_size: int
    header_page: bytes
    header_event: bytes
    ftrace_formats: tuple[bytes, ...]
    systems: tuple[EventSystem, ...]
    cpu_data: tuple[PageBytes, ...]
    kallsyms: bytes = b""
    printk_formats: bytes = b""
    cmdlines: bytes = b""
    clock: str | None = None
    trace_clock: bytes | None = None
    uname: str | None = None
    version: str | None = None
    trace_id: int | None = None
    cpu_stats: tuple[bytes, ...] = ()
    #: sizeof(long) of the recording user space (the reader takes the kernel's from header_page).
    user_long_size: int = 8

    def __post_init__(self) -> None:
        for cpu, data in enumerate(self.cpu_data):
            if len(data) % self.page_size:
                raise ValueError(f"CPU {cpu}: {len(data)} bytes is not a whole number of {self.page_size}-byte pages")


@dataclass
class _Packer:
    """Container integers in the file's byte order."""

    big_endian: bool
    prefix: str = field(init=False)

    def __post_init__(self) -> None:
        self.prefix = ">" if self.big_endian else "<"

    def u16(self, v: int) -> bytes:
        return struct.pack(self.prefix + "H", v)

    def u32(self, v: int) -> bytes:
        return struct.pack(self.prefix + "I", v)

    def u64(self, v: int) -> bytes:
        return struct.pack(self.prefix + "Q", v)


def _compressor(name: str) -> tuple[Callable[[bytes], bytes], str]:
    """Return (compress function, version string written in the v7 header) for ``name``."""
    if name == COMPRESSION_ZSTD:
        cctx = zstandard.ZstdCompressor()
        return cctx.compress, ".".join(map(str, zstandard.ZSTD_VERSION))
    if name == COMPRESSION_ZLIB:
        # A plain RFC 1950 stream, as trace-cmd's compress2() writes. trace-cmd asks for level 9;
        # on ring-buffer pages that is ~9x slower than the default level for ~3% less size.
        return zlib.compress, zlib.ZLIB_VERSION
    raise TraceError(f"unknown compression {name!r}: use one of {', '.join(COMPRESSIONS)}")


# ---- metadata blobs: identical bytes in v6 (inline) and v7 (section payloads) -----------------


def _header_info(c: TraceDatContent, p: _Packer) -> bytes:
    return (
        HEADER_PAGE_TAG + p.u64(len(c.header_page)) + c.header_page
        + HEADER_EVENT_TAG + p.u64(len(c.header_event)) + c.header_event
    )


def _formats(formats: tuple[bytes, ...], p: _Packer) -> bytes:
    return p.u32(len(formats)) + b"".join(p.u64(len(f)) + f for f in formats)


def _event_formats(c: TraceDatContent, p: _Packer) -> bytes:
    out = [p.u32(len(c.systems))]
    for system in c.systems:
        out.append(system.name.encode() + b"\0" + _formats(system.formats, p))
    return b"".join(out)


def _metadata(c: TraceDatContent, p: _Packer) -> list[tuple[Option, str, bytes]]:
    """(section id, description, payload) of each metadata blob, in trace-cmd's order."""
    return [
        (Option.HEADER_INFO, "headers", _header_info(c, p)),
        (Option.FTRACE_EVENTS, "ftrace events", _formats(c.ftrace_formats, p)),
        (Option.EVENT_FORMATS, "events format", _event_formats(c, p)),
        (Option.KALLSYMS, "kallsyms", p.u32(len(c.kallsyms)) + c.kallsyms),
        (Option.PRINTK, "printk", p.u32(len(c.printk_formats)) + c.printk_formats),
        (Option.CMDLINES, "command lines", p.u64(len(c.cmdlines)) + c.cmdlines),
    ]


def _info_options(c: TraceDatContent, p: _Packer) -> list[tuple[int, bytes]]:
    """Descriptive options common to v6 and v7 (clock, uname, version, trace id, CPU stats)."""
    opts: list[tuple[int, bytes]] = []
    if c.trace_clock is not None:
        opts.append((Option.TRACECLOCK, c.trace_clock + b"\0"))
    if c.uname is not None:
        opts.append((Option.UNAME, c.uname.encode() + b"\0"))
    if c.version is not None:
        opts.append((Option.VERSION, c.version.encode() + b"\0"))
    if c.trace_id is not None:
        opts.append((Option.TRACEID, p.u64(c.trace_id)))
    opts.extend((Option.CPUSTAT, stat + b"\0") for stat in c.cpu_stats)
    return opts


def _option_records(opts: list[tuple[int, bytes]], p: _Packer) -> bytes:
    return b"".join(p.u16(oid) + p.u32(len(data)) + data for oid, data in opts)


def _initial_header(version: int, c: TraceDatContent, p: _Packer) -> bytes:
    return (
        MAGIC + str(version).encode() + b"\0"
        + bytes([ENDIAN_BIG if p.big_endian else ENDIAN_LITTLE, c.user_long_size])
        + p.u32(c.page_size)
    )


def _pad_to_page(f: IO[bytes], page_size: int) -> None:
    pos = f.tell()
    f.write(b"\0" * (-pos % page_size))


# ---- v6 ---------------------------------------------------------------------------------------


def _write_v6(f: IO[bytes], c: TraceDatContent, p: _Packer) -> None:
    f.write(_initial_header(6, c, p))
    for _, _, payload in _metadata(c, p):
        f.write(payload)
    f.write(p.u32(len(c.cpu_data)))
    # v6 ends its option list with a bare u16 0 (no size word).
    f.write(TAIL_OPTIONS + _option_records(_info_options(c, p), p) + p.u16(Option.DONE))
    f.write(TAIL_FLYRECORD)
    table_at = f.tell()
    f.write(b"\0" * 16 * len(c.cpu_data))
    if c.trace_clock is not None:
        # With a TRACECLOCK option the reader expects the selected clock right after the table.
        clock = f"[{c.clock or 'local'}]".encode()
        f.write(p.u64(len(clock)) + clock)
    table = []
    for data in c.cpu_data:
        _pad_to_page(f, c.page_size)
        table.append(p.u64(f.tell()) + p.u64(len(data)))
        f.write(data)
    f.seek(table_at)
    f.write(b"".join(table))


# ---- v7 ---------------------------------------------------------------------------------------


class _StringTable:
    """The STRINGS section: section descriptions are offsets into it."""

    def __init__(self) -> None:
        self.data = bytearray()

    def add(self, s: str) -> int:
        offset = len(self.data)
        self.data += s.encode() + b"\0"
        return offset


def _write_v7(f: IO[bytes], c: TraceDatContent, p: _Packer, compression: str) -> None:
    compress, comp_version = (None, "") if compression == COMPRESSION_NONE else _compressor(compression)
    strings = _StringTable()

    def section(sid: int, desc: str, payload: bytes, compressible: bool = True) -> int:
        offset = f.tell()
        flags = 0
        if compress is not None and compressible:
            flags = SECTION_FLAG_COMPRESSED
            packed = compress(payload)
            payload = p.u32(len(packed)) + p.u32(len(payload)) + packed
        f.write(p.u16(sid) + p.u16(flags) + p.u32(strings.add(desc)) + p.u64(len(payload)) + payload)
        return offset

    f.write(_initial_header(7, c, p) + compression.encode() + b"\0" + comp_version.encode() + b"\0")
    options_ptr_at = f.tell()
    f.write(p.u64(0))

    opts: list[tuple[int, bytes]] = []
    for sid, desc, payload in _metadata(c, p):
        opts.append((sid, p.u64(section(sid, desc, payload))))

    buffer_at = _write_buffer_section(f, c, p, compress, strings.add("buffer flyrecord "))
    opts.extend(_info_options(c, p))
    opts.append((Option.CPUCOUNT, p.u32(len(c.cpu_data))))
    opts.append((Option.BUFFER, buffer_at))
    opts.append((Option.DONE, p.u64(0)))  # v7 DONE carries the next options section's offset
    options_at = section(Option.DONE, "options", _option_records(opts, p), compressible=False)
    section(Option.STRINGS, "strings", bytes(strings.data))
    f.seek(options_ptr_at)
    f.write(p.u64(options_at))


def _write_chunk_stream(f: IO[bytes], data: PageBytes, page_size: int, compress: Callable[[bytes], bytes],
                        p: _Packer) -> int:
    """Write a per-CPU chunk stream (u32 count, then {u32 compressed, u32 uncompressed, data}),
    one chunk in memory at a time; return its size as trace-cmd stores it (without the count)."""
    step = PAGES_IN_CHUNK * page_size
    f.write(p.u32(-(-len(data) // step)))
    size = 0
    for i in range(0, len(data), step):
        chunk = data[i : i + step]
        packed = compress(chunk)
        f.write(p.u32(len(packed)) + p.u32(len(chunk)) + packed)
        size += COMPRESS_BLOCK_HEADER_SIZE + len(packed)
    return size


def _write_buffer_section(
    f: IO[bytes], c: TraceDatContent, p: _Packer, compress: Callable[[bytes], bytes] | None, desc_id: int
) -> bytes:
    """Write the top instance's BUFFER section; return the BUFFER option payload that locates it."""
    section_at = f.tell()
    flags = SECTION_FLAG_COMPRESSED if compress is not None else 0
    f.write(p.u16(Option.BUFFER) + p.u16(flags) + p.u32(desc_id) + p.u64(0))
    cpus = []
    for cpu, data in enumerate(c.cpu_data):
        if not data:
            continue  # the BUFFER option lists only CPUs that have data
        _pad_to_page(f, c.page_size)
        at = f.tell()
        if compress is None:
            f.write(data)
            size = len(data)
        else:
            size = _write_chunk_stream(f, data, c.page_size, compress, p)
        cpus.append(p.u32(cpu) + p.u64(at) + p.u64(size))
    end = f.tell()
    f.seek(section_at + SECTION_HEADER_SIZE - 8)
    f.write(p.u64(end - section_at - SECTION_HEADER_SIZE))
    f.seek(end)
    clock = (c.clock or "local").encode()
    return (
        p.u64(section_at) + b"\0" + clock + b"\0" + p.u32(c.page_size) + p.u32(len(cpus)) + b"".join(cpus)
    )


# ---- entry point --------------------------------------------------------------------------------


def write_tracedat(
    path: str | os.PathLike[str],
    content: TraceDatContent,
    *,
    version: int = 7,
    compression: str = COMPRESSION_ZSTD,
    big_endian: bool = False,
) -> None:
    """Write ``content`` to ``path`` atomically: a temp file beside it, renamed when complete.

    ``compression`` applies to v7 only (v6 has none). Nothing half-written is left behind on
    error: the temp file is removed and ``path`` is untouched.
    """
    if version not in SUPPORTED_VERSIONS:
        raise TraceError(f"cannot write trace.dat version {version}: use 6 or 7")
    if compression not in COMPRESSIONS:
        raise TraceError(f"unknown compression {compression!r}: use one of {', '.join(COMPRESSIONS)}")
    if version == 6 and compression != COMPRESSION_NONE:
        raise TraceError("trace.dat version 6 has no compression", hint="pass {compression} none, or version 7")
    packer = _Packer(big_endian)
    with atomic_file(path, "w+b") as f:
        if version == 6:
            _write_v6(f, content, packer)
        else:
            _write_v7(f, content, packer, compression)
