"""v7 section decompression: whole-section blocks and chunked per-CPU streams.

trace-cmd compresses each metadata section as one block and each CPU's ring-buffer pages as a
run of chunks (10 pages per chunk by default); both are plain zstd frames or zlib streams, so the
standard Python decoders read them.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import zstandard

from kvmtrace.parsers.errors import TraceError
from kvmtrace.parsers.tracedat.constants import COMPRESSION_NONE, COMPRESSION_ZLIB, COMPRESSION_ZSTD
from kvmtrace.parsers.tracedat.cursor import Cursor
from kvmtrace.parsers.tracedat.limits import MAX_CHUNK, MAX_METADATA, MAX_SECTION, mib

SUPPORTED = (COMPRESSION_NONE, COMPRESSION_ZSTD, COMPRESSION_ZLIB)
#: Metadata blocks are decompressed this much at a time.
_STEP = 1 << 20


class Decompressor:
    """Decompresses blocks with the file's algorithm; one zstd context is reused for speed.

    Output never exceeds the size the file declares for the block (checked against the caps of
    :mod:`kvmtrace.parsers.tracedat.limits` first): a zstd frame carries its own content size and
    ``ZstdDecompressor.decompress`` would allocate that, whatever ``max_output_size`` says, so
    every block goes through a bounded stream instead.
    """

    def __init__(self, algorithm: str, path: str):
        if algorithm not in SUPPORTED:
            raise TraceError(
                f"{path}: unknown compression {algorithm!r} (supported: zstd, zlib, none); "
                f"convert it with 'trace-cmd convert --compression zstd'"
            )
        self.algorithm = algorithm
        self.path = path
        self._zstd = zstandard.ZstdDecompressor() if algorithm == COMPRESSION_ZSTD else None

    def block(self, cur: Cursor, what: str, cap: int) -> bytes:
        """One compressed section payload (u32 compressed size, u32 size, data) of section ``what``,
        refused if it declares more than ``cap`` bytes."""
        where = cur.base + cur.pos
        csize, size = cur.u32(), cur.u32()
        if size > cap:
            raise TraceError(f"{self.path}: corrupt trace.dat: the {what} section at byte {where} declares "
                             f"{mib(size)} uncompressed, more than the {mib(cap)} metadata may take "
                             f"(at most {mib(MAX_SECTION)} a section, {mib(MAX_METADATA)} in all)")
        out = b"".join(self._pieces(memoryview(cur.take(csize)), size, where))
        if len(out) != size:
            raise TraceError(f"{self.path}: corrupt {self.algorithm} data at byte {where} "
                             f"(expected {size} bytes, got {'more' if len(out) > size else len(out)})")
        return out

    def _pieces(self, data: memoryview | bytes, size: int, where: int) -> Iterator[bytes]:
        """The block's output in pieces of at most :data:`_STEP` bytes, ending one byte past
        ``size``: memory follows what the data really holds, not what its header claims."""
        left = size + 1
        try:
            if self._zstd is None:
                z = zlib.decompressobj()
                while left > 0:
                    piece = z.decompress(data, min(_STEP, left))
                    data = z.unconsumed_tail
                    if not piece:
                        return
                    left -= len(piece)
                    yield piece
            else:
                with self._zstd.stream_reader(data) as reader:
                    while left > 0:
                        piece = reader.read(min(_STEP, left))
                        if not piece:
                            return
                        left -= len(piece)
                        yield piece
        except (zstandard.ZstdError, zlib.error) as err:
            raise TraceError(f"{self.path}: corrupt {self.algorithm} data at byte {where} ({err})") from None

    def into(self, data: memoryview, out: memoryview, where: int) -> None:
        """Decompress one block straight into ``out``, which must be exactly its size."""
        done = 0
        try:
            if self._zstd is None:
                got = zlib.decompressobj().decompress(data, len(out) + 1)
                done = len(got)
                if done == len(out):
                    out[:] = got
            else:
                with self._zstd.stream_reader(data) as reader:
                    while done < len(out):
                        n = reader.readinto(out[done:])
                        if n == 0:
                            break
                        done += n
                    done += len(reader.read(1))  # more than declared: as corrupt as less
        except (zstandard.ZstdError, zlib.error) as err:
            raise TraceError(f"{self.path}: corrupt {self.algorithm} data at byte {where} ({err})") from None
        if done != len(out):
            raise TraceError(f"{self.path}: corrupt {self.algorithm} data at byte {where} "
                             f"(expected {len(out)} bytes, got {'more' if done > len(out) else done})")


@dataclass(frozen=True)
class Chunk:
    """One compressed chunk of a per-CPU stream: where its data is and how big it gets."""

    offset: int  # of the compressed bytes, relative to the stream start
    csize: int
    size: int


def chunk_table(cur: Cursor, end: int) -> tuple[list[Chunk], int, str | None]:
    """The chunks of a chunked stream ending before ``end``: (complete chunks, chunks lost, why).

    A file cut inside the stream keeps every complete chunk (the caller warns); chunks hold
    whole pages, so what survives is still decodable. A chunk that declares more than
    :data:`MAX_CHUNK` is corrupt; its size cannot be believed, so nothing after it can be placed
    and the rest of the stream is lost with it (``why`` says so; None for a cut).
    """
    count = cur.u32()
    limit = min(end, len(cur.buf))
    return _chunks(count, cur.pos, limit, cur.base, lambda pos: bytes(cur.buf[pos : pos + 8]), cur.big_endian)


def chunk_table_in_file(f: BinaryIO, offset: int, end: int, big_endian: bool, path: str
                        ) -> tuple[list[Chunk], int, str | None]:
    """:func:`chunk_table` of the stream at ``offset`` of file ``f`` (``end`` bytes long at most,
    cut by the file's end), reading only the chunk headers: a windowed read plans a stream
    without holding its compressed bytes."""
    f.seek(offset)
    head = f.read(min(4, end))
    cur = Cursor(head, big_endian=big_endian, path=path, base=offset)
    count = cur.u32()

    def header_at(pos: int) -> bytes:
        f.seek(offset + pos)
        return f.read(8)

    return _chunks(count, 4, end, offset, header_at, big_endian)


def _chunks(count: int, pos: int, limit: int, base: int, header_at: Callable[[int], bytes], big_endian: bool
            ) -> tuple[list[Chunk], int, str | None]:
    """The walk of :func:`chunk_table` from the first chunk header at ``pos`` (relative to the
    stream start ``base``), reading each 8-byte header with ``header_at``."""
    chunks: list[Chunk] = []
    order = ">II" if big_endian else "<II"
    for i in range(count):
        if pos + 8 > limit:
            return chunks, count - i, None
        where = base + pos
        csize, size = struct.unpack(order, header_at(pos))
        pos += 8
        if size > MAX_CHUNK:
            return chunks, count - i, (f"its compressed chunk at byte {where} declares {mib(size)} uncompressed "
                                       f"(a chunk may hold {mib(MAX_CHUNK)})")
        if pos + csize > limit:
            return chunks, count - i, None
        chunks.append(Chunk(pos, csize, size))
        pos += csize
    return chunks, 0, None
