"""Load one buffer instance's per-CPU page streams into a single page buffer.

Each CPU's pages are copied (or decompressed) back to back into one uint8 array so that every
record has one integer address; the page walk and the field gathers index it directly. A file
cut short keeps every complete page and reports how many bytes/chunks were lost.
"""

from __future__ import annotations

from typing import BinaryIO

import numpy as np

from parsers.tracedat.compress import Decompressor
from parsers.tracedat.constants import COMPRESS_CHUNK_COUNT_SIZE
from parsers.tracedat.cursor import Cursor
from parsers.tracedat.formats import PageHeader
from parsers.tracedat.layout import BufferSpec, Container
from parsers.tracedat.pages import PageData

#: Spare bytes after the last page: lets word views read one word past any record.
_PAD = 16


def load_pages(f: BinaryIO, file_size: int, box: Container, spec: BufferSpec, header: PageHeader,
               warnings: list[str]) -> PageData:
    page = spec.page_size or box.page_size
    parts: list[tuple[int, bytes | None, int, int]] = []  # (cpu, data or None, file offset, size)
    dec = Decompressor(box.compression, box.path) if spec.compressed else None
    for stream in sorted(spec.cpus, key=lambda s: s.cpu):
        if stream.size == 0:
            continue
        if dec is not None:
            # The stored size does not count the leading u32 chunk count (trace-cmd 3.1 writer).
            expected = stream.size + COMPRESS_CHUNK_COUNT_SIZE
            f.seek(stream.offset)
            raw = f.read(expected)
            data, lost_chunks = dec.chunks(Cursor(raw, big_endian=box.big_endian, path=box.path,
                                                  base=stream.offset), len(raw))
            if lost_chunks or len(raw) < expected:
                warnings.append(
                    f"{box.path}: file cut short: CPU {stream.cpu} lost {lost_chunks} compressed chunk(s) "
                    f"(up to {lost_chunks * 10} pages); kept {len(data) // page} complete pages"
                )
            parts.append((stream.cpu, data, 0, len(data)))
        else:
            avail = max(0, min(stream.size, file_size - stream.offset))
            if avail < stream.size:
                warnings.append(
                    f"{box.path}: file cut short: CPU {stream.cpu} lost {stream.size - avail} of "
                    f"{stream.size} bytes (about {(stream.size - avail + page - 1) // page} pages)"
                )
            parts.append((stream.cpu, None, stream.offset, avail))
    sizes = [(size // page) * page for _, _, _, size in parts]
    buf = np.zeros(sum(sizes) + _PAD, np.uint8)
    starts, cpus = [], []
    at = 0
    for (cpu, data, offset, _), size in zip(parts, sizes):
        if data is not None:
            buf[at : at + size] = np.frombuffer(data, np.uint8, size)
        else:
            f.seek(offset)
            f.readinto(memoryview(buf)[at : at + size])
        n = size // page
        starts.append(at + np.arange(n, dtype=np.int64) * page)
        cpus.append(np.full(n, cpu, np.int16))
        at += size
    return PageData(
        buf=buf,
        starts=np.concatenate(starts) if starts else np.empty(0, np.int64),
        cpu=np.concatenate(cpus) if cpus else np.empty(0, np.int16),
        big_endian=box.big_endian,
        header=header,
    )
