"""v7 section decompression: whole-section blocks and chunked per-CPU streams.

trace-cmd compresses each metadata section as one block and each CPU's ring-buffer pages as a
run of chunks (10 pages per chunk by default); both are plain zstd frames or zlib streams, so the
standard Python decoders read them.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import zstandard

from kvmtrace.parsers.errors import TraceError
from kvmtrace.parsers.tracedat.constants import COMPRESSION_NONE, COMPRESSION_ZLIB, COMPRESSION_ZSTD
from kvmtrace.parsers.tracedat.cursor import Cursor

SUPPORTED = (COMPRESSION_NONE, COMPRESSION_ZSTD, COMPRESSION_ZLIB)
#: Largest uncompressed chunk believed (trace-cmd writes 10 pages; sub-buffers are <= 1 MiB).
MAX_CHUNK = 1 << 26


class Decompressor:
    """Decompresses blocks with the file's algorithm; one zstd context is reused for speed."""

    def __init__(self, algorithm: str, path: str):
        if algorithm not in SUPPORTED:
            raise TraceError(
                f"{path}: unknown compression {algorithm!r} (supported: zstd, zlib, none); "
                f"convert it with 'trace-cmd convert --compression zstd'"
            )
        self.algorithm = algorithm
        self.path = path
        self._zstd = zstandard.ZstdDecompressor() if algorithm == COMPRESSION_ZSTD else None

    def _one(self, data: bytes, size: int, where: int) -> bytes:
        try:
            if self._zstd is not None:
                out = self._zstd.decompress(data, max_output_size=size)
            else:
                out = zlib.decompress(data)
        except (zstandard.ZstdError, zlib.error) as err:
            raise TraceError(f"{self.path}: corrupt {self.algorithm} data at byte {where} ({err})") from None
        if len(out) != size:
            raise TraceError(
                f"{self.path}: corrupt {self.algorithm} data at byte {where} "
                f"(expected {size} bytes, got {len(out)})"
            )
        return out

    def block(self, cur: Cursor) -> bytes:
        """One compressed section payload: u32 compressed size, u32 size, data."""
        where = cur.base + cur.pos
        csize, size = cur.u32(), cur.u32()
        return self._one(cur.take(csize), size, where)

    def into(self, data: memoryview, out: memoryview, where: int) -> None:
        """Decompress one chunk straight into ``out`` (exactly its uncompressed size)."""
        if self._zstd is None:
            out[:] = self._one(bytes(data), len(out), where)
            return
        try:
            with self._zstd.stream_reader(data) as reader:
                done = 0
                while done < len(out):
                    n = reader.readinto(out[done:])
                    if n == 0:
                        break
                    done += n
        except zstandard.ZstdError as err:
            raise TraceError(f"{self.path}: corrupt {self.algorithm} data at byte {where} ({err})") from None
        if done != len(out):
            raise TraceError(f"{self.path}: corrupt {self.algorithm} data at byte {where} "
                             f"(expected {len(out)} bytes, got {done})")


@dataclass(frozen=True)
class Chunk:
    """One compressed chunk of a per-CPU stream: where its data is and how big it gets."""

    offset: int  # of the compressed bytes, relative to the stream start
    csize: int
    size: int


def chunk_table(cur: Cursor, end: int) -> tuple[list[Chunk], int]:
    """The chunks of a chunked stream ending before ``end``: (complete chunks, chunks lost).

    A file cut inside the stream keeps every complete chunk (the caller warns); chunks hold
    whole pages, so what survives is still decodable.
    """
    count = cur.u32()
    chunks: list[Chunk] = []
    limit = min(end, len(cur.buf))
    for i in range(count):
        if cur.pos + 8 > limit:
            return chunks, count - i
        where = cur.base + cur.pos
        csize, size = cur.u32(), cur.u32()
        if size > MAX_CHUNK:
            raise TraceError(f"{cur.path}: corrupt compressed chunk at byte {where} (claims {size} bytes)")
        if cur.pos + csize > limit:
            return chunks, count - i
        chunks.append(Chunk(cur.pos, csize, size))
        cur.pos += csize
    return chunks, 0
