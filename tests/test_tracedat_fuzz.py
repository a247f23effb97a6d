"""Fuzzing the trace.dat reader: headers, options, sections and pages of real files.

Sources: the public ``sched_load`` recording as trace-cmd wrote it (v6: metadata blobs, a CPU
table, raw pages) and as ``trace-cmd convert`` made it v7/zstd (options chain, compressed
metadata sections, compressed chunks per CPU). Each example damages one region of one source
(the initial header, the options / CPU table, the metadata sections, the pages or chunks) with
one to three mutations: a number the reader interprets (a size, an offset, a count, a page's
timestamp or commit word, a record header) set to a boundary value, a digit of a format file's
offset, size or array length changed, a byte anywhere in the region set to any value, or a cut.
Hypothesis runs derandomized (the same examples every run) with a bounded number of examples:
deterministic, well under a minute.

What is asserted, for every example:

1. The read returns, or raises :class:`TraceError` with a one-line message; nothing else.
2. Peak traced memory stays under ``4 x`` the undamaged read's peak plus 32 MiB per mutation
   (a mutated chunk header may declare up to 16 MiB, which the reader then allocates; nothing
   else may grow with what the file claims).
3. Damage in one CPU's pages or chunks never changes another CPU's events (ts, pid, event).
4. If the reader raised no warning, its events per CPU are the undamaged file's (the damage hit
   nothing that is read) or else exactly what ``trace-cmd report`` reads from the same damaged
   file. This is "never silently different": the format has no checksums, so a flipped byte
   that still decodes is read as trace-cmd reads it; whatever the reader recovers from or
   skips is said in a warning.
"""

from __future__ import annotations

import collections
import re
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pytest
from bounded_read import read_bounded
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from tracedat_builder import options_chain
from tracedat_oracle import run_report

from kvmtrace.parsers.schema import TraceData
from kvmtrace.parsers.tracedat.constants import MAGIC, TAIL_FLYRECORD, TAIL_OPTIONS, Option
from kvmtrace.parsers.tracedat.container import parse_container
from kvmtrace.parsers.tracedat.limits import MAX_CHUNK

SOURCES = {"v6": "sched_load.dat", "v7": "sched_load.v7zstd.dat"}
REGIONS = ("header", "options", "sections", "pages")
#: Boundary values for mutated numbers (sizes, offsets, counts, commit words, record headers),
#: cut to each field's width.
U64 = (0, 1, 4, 29, 30, 31, 4095, 4096, 4097, 5000, 0x7FFF, 0x8000, 1 << 24, 0x7FFFFFFF, 0x80000000,
       0xFFFFFFFF, 1 << 31 | 100, 1 << 32, 1 << 40, (1 << 63) - 1, (1 << 64) - 1)


@dataclass(frozen=True)
class Span:
    """Bytes ``[start, end)`` of the file; ``cpu`` when they belong to one CPU's data."""

    start: int
    end: int
    cpu: int | None = None


@dataclass(frozen=True)
class Field:
    """A number the reader interprets (a size, offset, count, commit word, record header)."""

    at: int
    width: int  # 1, 2, 4 or 8 bytes
    cpu: int | None = None


@dataclass(frozen=True)
class Region:
    spans: tuple[Span, ...]  # for byte flips and cuts
    fields: tuple[Field, ...]  # for boundary values
    digits: tuple[int, ...] = ()  # format files' numbers (offset, size, array length) as text


@dataclass(frozen=True)
class Source:
    """An undamaged file: its bytes, its regions, its events per CPU, its read's peak."""

    raw: bytes = field(repr=False)
    regions: dict[str, Region] = field(repr=False)
    per_cpu: dict[int, list[tuple]] = field(repr=False)
    peak: int


def _initial_header(raw: bytes, version: int) -> tuple[int, list[Field]]:
    """End of the initial header and its numbers: endianness, long size, page size (v7: and the
    offset of the first options section)."""
    at = len(MAGIC) + 2
    fields = [Field(at, 1), Field(at + 1, 1), Field(at + 2, 4)]
    end = at + 6
    if version == 7:
        end = raw.index(b"\0", raw.index(b"\0", end) + 1) + 1  # compression name and version
        fields.append(Field(end, 8))
        end += 8
    return end, fields


def _pages(raw: bytes, spans: tuple[Span, ...], page_size: int) -> list[Field]:
    """Per page: its timestamp, its commit word, its first record header and that record's array[0]."""
    return [Field(p + off, width, s.cpu) for s in spans for p in range(s.start, s.end, page_size)
            for off, width in ((0, 8), (8, 8), (16, 4), (20, 4))]


def _chunks(raw: bytes, spans: tuple[Span, ...]) -> list[Field]:
    """Per CPU stream: the chunk count, then each chunk's compressed and uncompressed sizes."""
    fields = []
    for s in spans:
        fields.append(Field(s.start, 4, s.cpu))
        at = s.start + 4
        for _ in range(struct.unpack_from("<I", raw, s.start)[0]):
            fields += [Field(at, 4, s.cpu), Field(at + 4, 4, s.cpu)]
            at += 8 + struct.unpack_from("<I", raw, at)[0]
    return fields


def _v7_regions(raw: bytes) -> dict[str, Region]:
    box = parse_container(raw, "v7")
    header_end, header_fields = _initial_header(raw, 7)
    chain = options_chain(raw)
    options = tuple(Span(o.at - 6, o.at + len(o.payload)) for o in chain)
    option_fields = [f for o in chain for f in (Field(o.at - 6, 2), Field(o.at - 4, 4))]
    option_fields += [Field(o.at, 8 if len(o.payload) >= 8 else 4) for o in chain if len(o.payload) >= 4]
    sections, section_fields = [], []
    for o in chain:
        if Option.HEADER_INFO <= o.id <= Option.CMDLINES:
            at = struct.unpack("<Q", o.payload)[0]
            sections.append(Span(at, at + 16 + struct.unpack_from("<Q", raw, at + 8)[0]))
            # id, flags, size; then the compressed block's own sizes
            section_fields += [Field(at, 2), Field(at + 2, 2), Field(at + 8, 8), Field(at + 16, 4), Field(at + 20, 4)]
    pages = tuple(Span(s.offset, s.offset + 4 + s.size, s.cpu) for s in box.buffers[0].cpus)
    return {"header": Region((Span(0, header_end),), tuple(header_fields)),
            "options": Region(options, tuple(option_fields)),
            "sections": Region(tuple(sections), tuple(section_fields)),
            "pages": Region(pages, tuple(_chunks(raw, pages)))}


def _v6_regions(raw: bytes) -> dict[str, Region]:
    box = parse_container(raw, "v6")
    header_end, header_fields = _initial_header(raw, 6)
    cpus_at = raw.index(TAIL_OPTIONS) - 4
    table = raw.index(TAIL_FLYRECORD) + len(TAIL_FLYRECORD)
    # Metadata: every length word (u64 before each header and format blob, u32 counts).
    meta = raw[:cpus_at]
    lengths = [Field(m.start() + len(m.group()), 8) for m in re.finditer(rb"header_page\0|header_event\0", meta)]
    lengths += [Field(m.start() - 8, 8) for m in re.finditer(rb"name: ", meta)]
    digits = tuple(m.start(1) for m in re.finditer(rb"(?:offset:|size:|signed:|\[)(\d)", meta))
    pages = tuple(Span(s.offset, s.offset + s.size, s.cpu) for s in box.buffers[0].cpus)
    return {"header": Region((Span(0, header_end),), tuple(header_fields)),
            "sections": Region((Span(header_end, cpus_at),), tuple(lengths), digits),
            # the CPU count, the options list and the table of CPU data (offset, size per CPU)
            "options": Region((Span(cpus_at, table + 16 * box.cpus),),
                              (Field(cpus_at, 4), *(Field(table + 8 * i, 8) for i in range(2 * box.cpus)))),
            "pages": Region(pages, tuple(_pages(raw, pages, box.page_size)))}


def _per_cpu(data: TraceData) -> dict[int, list[tuple]]:
    ev = data.events
    out: dict[int, list[tuple]] = collections.defaultdict(list)
    names = ev["event"].cast(pa.string()).to_pylist()
    for cpu, ts, pid, name in zip(ev["cpu"].to_pylist(), ev["ts"].to_pylist(), ev["pid"].to_pylist(), names):
        out[cpu].append((ts, pid, name))
    return dict(out)


def _read(path: Path) -> tuple[TraceData | None, list[str], int]:
    """(data, or None after a TraceError, which must be one line; warnings; peak bytes)."""
    data, said, peak, err = read_bounded(path)
    assert err is None or "\n" not in str(err), str(err)
    return data, said, peak


class Corpus(dict):
    """The undamaged sources by name (printed short in hypothesis' falsifying examples)."""

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(f"<sources {sorted(self)}>")


@pytest.fixture(scope="module")
def sources(public_dir: Path) -> Corpus:
    out = Corpus()
    for name, file in SOURCES.items():
        raw = (public_dir / file).read_bytes()
        regions = _v6_regions(raw) if name == "v6" else _v7_regions(raw)
        data, said, peak = _read(public_dir / file)
        assert data is not None and not said
        out[name] = Source(raw, regions, _per_cpu(data), peak)
    return out


_mutation = st.tuples(
    st.floats(0, 1, exclude_max=True),  # which span or field of the region, then where in the span
    st.floats(0, 1, exclude_max=True),
    st.one_of(
        st.tuples(st.just("field"), st.sampled_from(U64)),  # reduced to the field's width
        st.tuples(st.just("digit"), st.integers(0, 9)),  # a format file's number, one digit changed
        st.tuples(st.just("byte"), st.integers(0, 255)),
        st.tuples(st.just("cut"), st.just(0)),
    ),
)


def _damage(src: Source, region: str, mutations: list) -> tuple[bytes, set[int | None], bool]:
    """Apply ``mutations`` to ``region``; return (bytes, CPUs whose data they touched, cut)."""
    reg = src.regions[region]
    raw = bytearray(src.raw)
    touched: set[int | None] = set()
    for which, where, (kind, value) in mutations:
        if kind == "digit" and reg.digits:
            raw[reg.digits[int(which * len(reg.digits))]] = ord(str(value))
            continue
        if kind == "field" and reg.fields:
            f = reg.fields[int(which * len(reg.fields))]
            raw[f.at : f.at + f.width] = (value % (1 << (8 * f.width))).to_bytes(f.width, "little")
            touched.add(f.cpu)
            continue
        span = reg.spans[int(which * len(reg.spans))]
        at = span.start + int(where * (span.end - span.start))
        touched.add(span.cpu)
        if kind == "cut":
            return bytes(raw[:at]), touched, True
        raw[at] = value
    return bytes(raw), touched, False


def _trace_cmd_per_cpu(trace_cmd: str, path: Path) -> dict[int, int] | None:
    """Events per CPU as ``trace-cmd report`` reads them; None if it refuses the file."""
    try:
        report = run_report(trace_cmd, path)
    except subprocess.CalledProcessError:
        return None
    return dict(collections.Counter(e.cpu for e in report.events))


@settings(max_examples=300, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(source=st.sampled_from(sorted(SOURCES)), region=st.sampled_from(REGIONS),
       mutations=st.lists(_mutation, min_size=1, max_size=3))
def test_fuzz(source: str, region: str, mutations: list, sources: Corpus, tmp_path: Path, trace_cmd: str) -> None:
    src = sources[source]
    damaged, touched, cut = _damage(src, region, mutations)
    path = tmp_path / "fuzzed.dat"
    path.write_bytes(damaged)
    data, said, peak = _read(path)
    assert peak <= 4 * src.peak + len(mutations) * 2 * MAX_CHUNK, (peak, said)
    event(f"{source} {region}: {'refused' if data is None else 'warned' if said else 'silent'}")
    if data is None:
        return
    ours = _per_cpu(data)
    if region == "pages" and not cut:
        for cpu, rows in src.per_cpu.items():
            if cpu not in touched:  # only that CPU's data was damaged
                assert ours.get(cpu, []) == rows, (cpu, said)
    if said:
        return
    # Silent: the damage changed nothing we read, or we read what trace-cmd reads.
    counts = {cpu: len(rows) for cpu, rows in ours.items()}
    if counts != {cpu: len(rows) for cpu, rows in src.per_cpu.items()}:
        assert counts == _trace_cmd_per_cpu(trace_cmd, path), counts
