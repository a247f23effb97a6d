"""Load one buffer instance's per-CPU page streams into a single page buffer.

Each CPU's pages are copied (or decompressed) back to back into one uint8 array so that every
record has one integer address; the page walk and the field gathers index it directly. Sizes are
known before any data is touched (stream sizes, or the chunk headers of compressed streams), so
the buffer is allocated once and filled in place: no intermediate copies. A file cut short keeps
every complete page and reports what was lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from kvmtrace.parsers.tracedat.compress import Chunk, Decompressor, chunk_table
from kvmtrace.parsers.tracedat.constants import COMPRESS_CHUNK_COUNT_SIZE, PAGES_IN_CHUNK
from kvmtrace.parsers.tracedat.cursor import Cursor
from kvmtrace.parsers.tracedat.formats import PageHeader
from kvmtrace.parsers.tracedat.layout import BufferSpec, Container, CpuStream
from kvmtrace.parsers.tracedat.pages import PageData

#: Spare bytes after the last page: lets word views read one word past any record.
_PAD = 16


@dataclass
class _Plan:
    """How one CPU's bytes get into the page buffer."""

    stream: CpuStream
    size: int  # whole-page bytes it contributes
    raw: bytes = b""  # compressed streams: the stream as stored
    chunks: tuple[Chunk, ...] = ()


def _plan(f: BinaryIO, file_size: int, box: Container, spec: BufferSpec, page: int,
          warnings: list[str]) -> list[_Plan]:
    plans = []
    for stream in sorted(spec.cpus, key=lambda s: s.cpu):
        if stream.size == 0:
            continue
        if stream.offset >= file_size:
            warnings.append(f"{box.path}: file cut short: CPU {stream.cpu}'s data should start at byte "
                            f"{stream.offset}, past the end of the file ({file_size} bytes); no pages kept")
            continue
        if spec.compressed:
            # The stored size does not count the leading u32 chunk count (trace-cmd 3.1 writer).
            expected = stream.size + COMPRESS_CHUNK_COUNT_SIZE
            f.seek(stream.offset)
            raw = f.read(min(expected, file_size - stream.offset))
            chunks, lost = chunk_table(Cursor(raw, big_endian=box.big_endian, path=box.path,
                                              base=stream.offset), len(raw))
            size = sum(c.size for c in chunks)
            if lost or len(raw) < expected:
                warnings.append(
                    f"{box.path}: file cut short: CPU {stream.cpu} lost {lost} compressed chunk(s) "
                    f"(up to {lost * PAGES_IN_CHUNK} pages); kept {size // page} complete pages"
                )
            plans.append(_Plan(stream, size - size % page, raw, tuple(chunks)))
        else:
            avail = max(0, min(stream.size, file_size - stream.offset))
            if avail < stream.size:
                warnings.append(
                    f"{box.path}: file cut short: CPU {stream.cpu} lost {stream.size - avail} of "
                    f"{stream.size} bytes (about {(stream.size - avail + page - 1) // page} pages)"
                )
            plans.append(_Plan(stream, avail - avail % page))
    return plans


def load_pages(f: BinaryIO, file_size: int, box: Container, spec: BufferSpec, header: PageHeader,
               warnings: list[str]) -> PageData:
    page = spec.page_size or box.page_size
    plans = _plan(f, file_size, box, spec, page, warnings)
    buf = np.zeros(sum(p.size for p in plans) + _PAD, np.uint8)
    out = memoryview(buf)
    dec = Decompressor(box.compression, box.path) if spec.compressed else None
    starts, cpus, origins = [], [], []
    at = 0
    for plan in plans:
        if dec is not None:
            raw = memoryview(plan.raw)
            filled = 0
            for c in plan.chunks:
                n = min(c.size, plan.size - filled)
                if n <= 0:
                    break
                target = out[at + filled : at + filled + c.size] if n == c.size else memoryview(bytearray(c.size))
                dec.into(raw[c.offset : c.offset + c.csize], target, plan.stream.offset + c.offset)
                if n != c.size:  # a last partial page: keep the whole pages only
                    out[at + filled : at + filled + n] = target[:n]
                filled += n
        else:
            f.seek(plan.stream.offset)
            f.readinto(out[at : at + plan.size])
        n_pages = plan.size // page
        within = np.arange(n_pages, dtype=np.int64) * page
        starts.append(at + within)
        cpus.append(np.full(n_pages, plan.stream.cpu, np.int16))
        origins.append(within if dec is not None else plan.stream.offset + within)
        at += plan.size
    return PageData(
        buf=buf,
        starts=np.concatenate(starts) if starts else np.empty(0, np.int64),
        cpu=np.concatenate(cpus) if cpus else np.empty(0, np.int16),
        big_endian=box.big_endian,
        header=header,
        origin=np.concatenate(origins) if origins else np.empty(0, np.int64),
        compressed=dec is not None,
    )
