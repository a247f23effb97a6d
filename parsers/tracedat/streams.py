"""Load one buffer instance's per-CPU page streams into a single page buffer.

Each CPU's pages are copied (or decompressed) back to back into one uint8 array so that every
record has one integer address; the page walk and the field gathers index it directly. Sizes are
known before any data is touched (stream sizes, or the chunk headers of compressed streams), so
the buffer is allocated once and filled in place: no intermediate copies. A file cut short keeps
every complete page and reports what was lost.
"""

from __future__ import annotations

import io
import itertools
from dataclasses import dataclass

import numpy as np

from kvmtrace.parsers.errors import TraceError
from kvmtrace.parsers.tracedat.compress import Chunk, Decompressor, chunk_table, chunk_table_in_file
from kvmtrace.parsers.tracedat.constants import COMPRESS_CHUNK_COUNT_SIZE, PAGES_IN_CHUNK
from kvmtrace.parsers.tracedat.cursor import Cursor
from kvmtrace.parsers.tracedat.formats import PageHeader
from kvmtrace.parsers.tracedat.layout import BufferSpec, Container, CpuStream
from kvmtrace.parsers.tracedat.limits import mib, page_data_cap
from kvmtrace.parsers.tracedat.pages import PageData

#: Spare bytes after the last page: lets word views read one word past any record.
PAD = 16


@dataclass
class StreamPlan:
    """How one CPU's bytes get into the page buffer."""

    stream: CpuStream
    size: int  # whole-page bytes it contributes
    raw: bytes = b""  # compressed streams: the stream as stored
    chunks: tuple[Chunk, ...] = ()


def _check_overlap(box: Container, spec: BufferSpec, file_size: int) -> None:
    """CPU streams of one buffer are disjoint in every file trace-cmd writes; overlapping ones
    would decode the same pages twice (and cost their size once per CPU that claims them)."""
    extra = COMPRESS_CHUNK_COUNT_SIZE if spec.compressed else 0
    spans = sorted((s.offset, s.cpu, min(s.offset + s.size + extra, file_size)) for s in spec.cpus if s.size)
    for (start, cpu, end), (nstart, ncpu, _) in itertools.pairwise(spans):
        if nstart < end:
            raise TraceError(f"{box.path}: corrupt trace.dat: the data of CPU {ncpu} (from byte {nstart}) overlaps "
                             f"that of CPU {cpu} (bytes {start}..{end})")


def plan_streams(f: io.BufferedReader, file_size: int, box: Container, spec: BufferSpec, page: int,
                 warnings: list[str], *, keep_raw: bool = True) -> list[StreamPlan]:
    """Per CPU with data (ascending CPU): how many whole-page bytes it holds and, for compressed
    streams, its chunks; what a cut or damaged file lost is appended to ``warnings``.

    ``keep_raw``: hold each compressed stream's bytes in its plan (the whole-file read
    decompresses them all at once); without it only the chunk headers are read, and the
    windowed read fetches each run's chunks from the file when it needs them."""
    _check_overlap(box, spec, file_size)
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
            stored = min(expected, file_size - stream.offset)
            if keep_raw:
                f.seek(stream.offset)
                raw = f.read(stored)
                chunks, lost, corrupt = chunk_table(Cursor(raw, big_endian=box.big_endian, path=box.path,
                                                           base=stream.offset), len(raw))
            else:
                raw = b""
                chunks, lost, corrupt = chunk_table_in_file(f, stream.offset, stored, box.big_endian, box.path)
            size = sum(c.size for c in chunks)
            if corrupt:
                warnings.append(f"{box.path}: corrupt trace.dat: CPU {stream.cpu} lost {lost} compressed chunk(s) "
                                f"(up to {lost * PAGES_IN_CHUNK} pages): {corrupt}; kept {size // page} pages")
            elif lost or stored < expected:
                warnings.append(
                    f"{box.path}: file cut short: CPU {stream.cpu} lost {lost} compressed chunk(s) "
                    f"(up to {lost * PAGES_IN_CHUNK} pages); kept {size // page} complete pages"
                )
            if size % page and not (corrupt or lost):
                warnings.append(f"{box.path}: corrupt trace.dat: CPU {stream.cpu}'s chunks hold {size} bytes, not "
                                f"a whole number of {page}-byte pages; the last {size % page} bytes are dropped")
            plans.append(StreamPlan(stream, size - size % page, raw, tuple(chunks)))
        else:
            avail = max(0, min(stream.size, file_size - stream.offset))
            whole = avail - avail % page
            if avail < stream.size:
                warnings.append(
                    f"{box.path}: file cut short: CPU {stream.cpu} lost {stream.size - avail} of "
                    f"{stream.size} bytes (about {(stream.size - avail + page - 1) // page} pages)"
                )
            elif avail % page:
                # trace-cmd reads a size that ends inside a page as that whole page.
                whole += page if stream.offset + whole + page <= file_size else 0
                warnings.append(f"{box.path}: corrupt trace.dat: CPU {stream.cpu}'s data is {stream.size} bytes, "
                                f"not a whole number of {page}-byte pages; read as {whole // page} page(s)"
                                f"{', as trace-cmd reads it' if whole > avail else ''}")
            plans.append(StreamPlan(stream, whole))
    total = sum(p.size for p in plans)
    if spec.compressed and total > page_data_cap(file_size):
        raise TraceError(f"{box.path}: corrupt trace.dat: the CPU data declares {mib(total)} uncompressed, more "
                         f"than a {mib(file_size)} file can hold (at most {mib(page_data_cap(file_size))})")
    return plans


def load_pages(f: io.BufferedReader, file_size: int, box: Container, spec: BufferSpec, header: PageHeader,
               warnings: list[str]) -> PageData:
    """Every whole page of every CPU of ``spec``; damaged chunks read as empty pages (and warn)."""
    page = spec.page_size
    plans = plan_streams(f, file_size, box, spec, page, warnings)
    buf = np.zeros(sum(p.size for p in plans) + PAD, np.uint8)
    out = buf.data
    dec = Decompressor(box.compression, box.path) if spec.compressed else None
    starts, cpus, origins = [], [], []
    damaged_at: list[int] = []  # buffer offsets of chunks that failed to decompress
    at = 0
    for plan in plans:
        if dec is not None:
            decompress_stream(dec, plan, out[at : at + plan.size], damaged_at, at, warnings, box.path)
        else:
            f.seek(plan.stream.offset)
            f.readinto(out[at : at + plan.size])
        n_pages = plan.size // page
        within = np.arange(n_pages, dtype=np.int64) * page
        starts.append(at + within)
        cpus.append(np.full(n_pages, plan.stream.cpu, np.int16))
        origins.append(within if dec is not None else plan.stream.offset + within)
        at += plan.size
    all_starts = np.concatenate(starts) if starts else np.empty(0, np.int64)
    damaged = np.zeros(len(all_starts), bool)
    if damaged_at and len(all_starts):  # the page each failed chunk starts in
        damaged[np.maximum(np.searchsorted(all_starts, np.array(damaged_at, np.int64), side="right") - 1, 0)] = True
    return PageData(
        buf=buf,
        starts=all_starts,
        cpu=np.concatenate(cpus) if cpus else np.empty(0, np.int16),
        big_endian=box.big_endian,
        header=header,
        origin=np.concatenate(origins) if origins else np.empty(0, np.int64),
        compressed=dec is not None,
        damaged=damaged,
    )


def decompress_stream(dec: Decompressor, plan: StreamPlan, out: memoryview, damaged_at: list[int], base: int,
                       warnings: list[str], path: str) -> None:
    """Decompress one CPU's chunks into ``out``; a chunk that fails is left as zeros (empty pages)."""
    raw = memoryview(plan.raw)
    filled = 0
    bad: list[str] = []
    for c in plan.chunks:
        n = min(c.size, plan.size - filled)
        if n <= 0:
            break
        target = out[filled : filled + c.size] if n == c.size else memoryview(bytearray(c.size))
        try:
            dec.into(raw[c.offset : c.offset + c.csize], target, plan.stream.offset + c.offset)
        except TraceError as err:
            target[:] = bytes(len(target))
            damaged_at.append(base + filled)
            bad.append(str(err).removeprefix(f"{path}: "))
        if n != c.size:  # a last partial page: keep the whole pages only
            out[filled : filled + n] = target[:n]
        filled += n
    if bad:
        warnings.append(f"{path}: corrupt trace.dat: CPU {plan.stream.cpu} lost {len(bad)} compressed chunk(s) "
                        f"that do not decompress (first: {bad[0]}); their pages are read as empty and "
                        f"counted as gaps of unknown size")
