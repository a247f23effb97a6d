"""Every number of the trace.dat format, in one place.

The reader and the writer (:mod:`kvmtrace.parsers.tracedat.writer`) must agree on each
byte; defining the constants once keeps a typo on one side from being "confirmed" by the other.
Values are trace-cmd's (``trace-cmd-private.h``, ``trace-cmd.h``) and the kernel ring buffer's
(``ring_buffer.h``, libtraceevent ``kbuffer-parse.c``).
"""

from __future__ import annotations

from enum import IntEnum

#: First 10 bytes of every trace.dat: 0x17 0x08 0x44 then "tracing".
MAGIC = b"\x17\x08\x44tracing"
SUPPORTED_VERSIONS = (6, 7)
#: First version with sections, options chains and compression.
VERSION_SECTIONS = 7

#: Endianness byte of the initial header.
ENDIAN_LITTLE = 0
ENDIAN_BIG = 1

#: v6 header strings ("header_page\0", "header_event\0") that precede the two header blobs.
HEADER_PAGE_TAG = b"header_page\0"
HEADER_EVENT_TAG = b"header_event\0"

#: v6 10-byte tail tags.
TAIL_OPTIONS = b"options  \0"
TAIL_LATENCY = b"latency  \0"
TAIL_FLYRECORD = b"flyrecord\0"
TAIL_SIZE = 10


class Option(IntEnum):
    """Option ids (v6 and v7); v7 reuses them as section ids."""

    DONE = 0
    DATE = 1
    CPUSTAT = 2
    BUFFER = 3
    TRACECLOCK = 4
    UNAME = 5
    HOOK = 6
    OFFSET = 7
    CPUCOUNT = 8
    VERSION = 9
    PROCMAPS = 10
    TRACEID = 11
    TIME_SHIFT = 12
    GUEST = 13
    TSC2NSEC = 14
    STRINGS = 15
    HEADER_INFO = 16
    FTRACE_EVENTS = 17
    EVENT_FORMATS = 18
    KALLSYMS = 19
    PRINTK = 20
    CMDLINES = 21
    BUFFER_TEXT = 22
    BTF_FILE = 23
    LAST_BOOT_INFO = 24
    MODULES_FILE = 25


#: v7 section ids are option ids (the OPTIONS section is id 0 = DONE).
Section = Option
SECTION_OPTIONS = Option.DONE

#: v7 section header: u16 id, u16 flags, u32 description string id, u64 size.
SECTION_HEADER_SIZE = 16
SECTION_FLAG_COMPRESSED = 1 << 0
#: v7 DONE option payload: u64 offset of the next options section (0 = last).
DONE_OPTION_SIZE = 8

#: Compression names as written in the v7 initial header.
COMPRESSION_NONE = "none"
COMPRESSION_ZSTD = "zstd"
COMPRESSION_ZLIB = "zlib"
#: Block header (u32 compressed size, u32 uncompressed size); chunked streams start with u32 count.
COMPRESS_BLOCK_HEADER_SIZE = 8
COMPRESS_CHUNK_COUNT_SIZE = 4
#: Pages per compressed chunk that trace-cmd writes (readers must accept any).
PAGES_IN_CHUNK = 10

#: Ring-buffer record type_len values (kernel enum ring_buffer_type).
TYPE_LEN_DATA_MAX = 28  # 1..28: data, payload length type_len * 4; 0: length in array[0]
TYPE_LEN_PADDING = 29
TYPE_LEN_TIME_EXTEND = 30
TYPE_LEN_TIME_STAMP = 31
#: time_delta bits in a record header; TIME_EXTEND/TIME_STAMP hold array[0] << TS_SHIFT | delta.
TS_SHIFT = 27
TS_DELTA_MASK = (1 << TS_SHIFT) - 1
TYPE_LEN_MASK = 0x1F
#: Bits of the running timestamp an absolute TIME_STAMP record does not carry.
TS_MSB = 0xF8 << 56
#: Record alignment in the ring buffer.
RB_ALIGNMENT = 4

#: Page header commit word: flags in the top bits, committed byte count in the low 27.
COMMIT_MISSING_EVENTS = 1 << 31
COMMIT_MISSING_STORED = 1 << 30
COMMIT_SIZE_MASK = (1 << 27) - 1
#: Offset of the u64 page timestamp in every page.
PAGE_TIMESTAMP_OFFSET = 0
PAGE_COMMIT_OFFSET = 8
