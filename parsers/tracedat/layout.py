"""What the trace.dat container holds, independent of file version.

:mod:`kvmtrace.parsers.tracedat.container` fills a :class:`Container` from a v6 (linear) or v7 (sectioned,
maybe compressed) file; everything downstream (format parsing, the page walk) works on this and
never looks at the version again.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CpuStream:
    """One CPU's ring-buffer pages in the file: ``size`` bytes at absolute ``offset``."""

    cpu: int
    offset: int
    size: int


@dataclass(frozen=True)
class BufferSpec:
    """One buffer instance (the top buffer has name ``""``)."""

    name: str
    clock: str | None
    page_size: int
    cpus: tuple[CpuStream, ...]
    compressed: bool = False  # v7: each CPU stream is a run of compressed chunks


@dataclass(frozen=True)
class RawOption:
    """An option as stored: id and payload bytes (interpreted by :mod:`kvmtrace.parsers.tracedat.options`)."""

    id: int
    payload: bytes


@dataclass
class Container:
    """The decoded container of one trace.dat file."""

    path: str
    version: int
    big_endian: bool
    user_long_size: int  # sizeof(long) of the recording tool, not of the kernel
    page_size: int
    compression: str = "none"
    header_page: bytes = b""
    header_event: bytes = b""
    ftrace_formats: list[bytes] = field(default_factory=list)
    event_formats: list[tuple[str, bytes]] = field(default_factory=list)  # (system, format text)
    kallsyms: bytes = b""
    printk: bytes = b""
    cmdlines: bytes = b""
    cpus: int = 0
    options: list[RawOption] = field(default_factory=list)
    buffers: list[BufferSpec] = field(default_factory=list)  # top buffer first
    clock: str | None = None  # TRACECLOCK option / v6 clock trailer
    latency: bool = False  # a text ("latency") buffer instead of ring-buffer pages
    warnings: list[str] = field(default_factory=list)
    metadata_bytes: int = 0  # metadata read so far (v7), against the cap of tracedat.limits
