"""Hostile and damaged trace.dat files: bounded memory, believable sizes, and the rest kept.

Every file here is a real recording with a few bytes patched or a section appended (the public
``sched_load`` files: v6 as recorded, v7/zstd as trace-cmd converted them; the lab's
``churn-zapslot.dat``). Each case names what the reader did before: allocate gigabytes for a few
kilobytes, read a different number of events than trace-cmd without saying so, or reject a
whole file for one bad page.
"""

from __future__ import annotations

import collections
import dataclasses
import struct
from pathlib import Path

import pyarrow as pa
import pytest
import zstandard
from bounded_read import read_bounded
from conftest import SAMPLES
from tracedat_builder import PlacedOption, append_options, content_of, patched, v7_options
from tracedat_oracle import cpu_rows, run_report

from kvmtrace.parsers.errors import TraceError, TraceWarning
from kvmtrace.parsers.schema import TraceData
from kvmtrace.parsers.tracedat import read_tracedat
from kvmtrace.parsers.tracedat.constants import MAGIC, SECTION_FLAG_COMPRESSED, TAIL_FLYRECORD, TAIL_OPTIONS, Option
from kvmtrace.parsers.tracedat.container import parse_container
from kvmtrace.parsers.tracedat.writer import EventSystem, write_tracedat

V6 = "sched_load.dat"
V7Z = "sched_load.v7zstd.dat"
#: A peak far below every bomb here (the smallest expands to 512 MiB) and above a normal read.
PEAK_LIMIT = 96 << 20


def zeros_frame(size: int) -> bytes:
    """A zstd frame of ``size`` zero bytes (its header carries the size), built 1 MiB at a time."""
    obj = zstandard.ZstdCompressor().compressobj(size=size)
    block = bytes(1 << 20)
    out = [obj.compress(block) for _ in range(size >> 20)]
    return b"".join(out) + obj.compress(bytes(size & ((1 << 20) - 1))) + obj.flush()


def assert_lost_one_run(damaged: list[tuple], whole: list[tuple]) -> tuple[int, int]:
    """``damaged`` is ``whole`` less one contiguous run of rows; return (run start, run length)."""
    i = next((k for k, (a, b) in enumerate(zip(damaged, whole)) if a != b), len(damaged))
    lost = len(whole) - len(damaged)
    assert lost > 0 and damaged == whole[:i] + whole[i + lost:]
    return i, lost


@pytest.fixture(scope="module")
def v6_raw(public_dir: Path) -> bytes:
    return (public_dir / V6).read_bytes()


@pytest.fixture(scope="module")
def v7_raw(public_dir: Path) -> bytes:
    return (public_dir / V7Z).read_bytes()


@pytest.fixture(scope="module")
def v6_whole(public_dir: Path) -> TraceData:
    return read_tracedat(public_dir / V6)


def _option(raw: bytes, option: Option) -> PlacedOption:
    return next(o for o in v7_options(raw) if o.id == option)


# ---------------------------------------------------------------- decompression bombs


def _cmdlines_section(raw: bytes, declared: int, frame: bytes) -> bytes:
    """``raw`` with its CMDLINES option pointing at a compressed section appended at the end."""
    payload = struct.pack("<II", len(frame), declared) + frame
    section = struct.pack("<HHIQ", Option.CMDLINES, SECTION_FLAG_COMPRESSED, 0, len(payload)) + payload
    return patched(raw, _option(raw, Option.CMDLINES).at, struct.pack("<Q", len(raw))) + section


@pytest.fixture(scope="module")
def frame_512m() -> bytes:
    return zeros_frame(512 << 20)


def test_metadata_section_declaring_4_gib(v7_raw: bytes, frame_512m: bytes, tmp_path: Path) -> None:
    """Was: 512 MiB (and for a 4 GiB frame 4.2 GB) decompressed before the size was checked."""
    out = tmp_path / "cmdlines4g.dat"
    out.write_bytes(_cmdlines_section(v7_raw, 0xFFFFFFFF, frame_512m))
    data, _, peak, err = read_bounded(out)
    assert data is None and err is not None
    message = str(err)
    assert "the CMDLINES section at byte" in message and "declares 4096 MiB uncompressed" in message
    assert "\n" not in message
    assert peak < PEAK_LIMIT, peak


def test_frame_larger_than_its_declared_size(v7_raw: bytes, frame_512m: bytes, tmp_path: Path) -> None:
    """A block declaring 4 KiB whose zstd frame says 512 MiB: was 512 MiB allocated (the zstd
    binding sizes its output from the frame header, whatever limit it is given)."""
    out = tmp_path / "liar.dat"
    out.write_bytes(_cmdlines_section(v7_raw, 4096, frame_512m))
    _data, _, peak, err = read_bounded(out)
    assert err is not None and "(expected 4096 bytes, got more)" in str(err)
    assert peak < PEAK_LIMIT, peak


def _cpu_stream(raw: bytes, cpu: int, chunks: list[tuple[bytes, int]]) -> bytes:
    """``raw`` (v7) with ``cpu``'s data replaced by a chunk stream appended at the end: chunks
    of (compressed frame, declared size). The BUFFER option keeps its length: only that CPU's
    offset and size change."""
    buf = _option(raw, Option.BUFFER)
    p = buf.payload
    name_end = p.index(b"\0", 8)
    clock_end = p.index(b"\0", name_end + 1)
    count_at = clock_end + 1 + 4
    (count,) = struct.unpack_from("<I", p, count_at)
    stream = struct.pack("<I", len(chunks)) + b"".join(struct.pack("<II", len(f), n) + f for f, n in chunks)
    for i in range(count):
        entry = count_at + 4 + i * 20
        if struct.unpack_from("<I", p, entry)[0] == cpu:
            new = struct.pack("<QQ", len(raw), len(stream) - 4)
            return patched(raw, buf.at + entry + 4, new) + stream
    raise AssertionError(f"CPU {cpu} has no stream")


def test_chunks_declaring_64_mib_each(v7_raw: bytes, public_dir: Path, tmp_path: Path) -> None:
    """48 chunks of 64 MiB on one CPU (was: 3 GB taken). A chunk may hold 16 MiB (trace-cmd
    writes 10 pages): the CPU's stream is corrupt from there, the other CPUs are read."""
    out = tmp_path / "chunks64.dat"
    out.write_bytes(_cpu_stream(v7_raw, 5, [(zeros_frame(64 << 20), 64 << 20)] * 48))
    data, said, peak, err = read_bounded(out)
    assert err is None and data is not None
    assert any("CPU 5 lost 48 compressed chunk(s)" in m and "declares 64 MiB uncompressed" in m for m in said), said
    whole = read_tracedat(public_dir / V7Z)
    for cpu in range(5):
        assert cpu_rows(data, cpu) == cpu_rows(whole, cpu)
    assert cpu_rows(data, 5) == [] and cpu_rows(whole, 5)
    assert peak < PEAK_LIMIT, peak


def test_cpu_data_beyond_the_total_cap(v7_raw: bytes, tmp_path: Path) -> None:
    """70 chunks of 16 MiB (each within the chunk cap): 1120 MiB from a 1 MiB file is refused
    before anything is allocated (was: allocated and decompressed)."""
    out = tmp_path / "total.dat"
    out.write_bytes(_cpu_stream(v7_raw, 5, [(zeros_frame(16 << 20), 16 << 20)] * 70))
    _data, _, peak, err = read_bounded(out)
    assert err is not None and "the CPU data declares 1" in str(err) and "(at most 1024 MiB)" in str(err)
    assert peak < PEAK_LIMIT, peak


# ---------------------------------------------------------------- page size, CPU count, offsets


def _buffer_page_size_at(raw: bytes) -> int:
    buf = _option(raw, Option.BUFFER)
    clock_end = buf.payload.index(b"\0", buf.payload.index(b"\0", 8) + 1)
    return buf.at + clock_end + 1


@pytest.mark.parametrize("page_size", [1 << 31, 8192])
def test_buffer_option_page_size_is_not_the_top_buffers(page_size: int, tmp_path: Path, trace_cmd: str) -> None:
    """trace-cmd reads the top buffer with the file header's page size and reads all 49,770
    events; the reader read 0 (2^31) or half (8192) without a word. Now: all, and a warning."""
    src = SAMPLES / "churn-zapslot.dat"
    raw = src.read_bytes()
    at = _buffer_page_size_at(raw)
    assert struct.unpack_from("<I", raw, at)[0] == 4096
    out = tmp_path / "ps.dat"
    out.write_bytes(patched(raw, at, struct.pack("<I", page_size)))
    with pytest.warns(TraceWarning, match=f"says page size {page_size}.*read with the file header's 4096"):
        data = read_tracedat(out)
    assert data.info.total_events == len(run_report(trace_cmd, out).events) == 49_770
    assert data.events.equals(read_tracedat(src).events)


@pytest.mark.parametrize("page_size,message", [
    (12288, "page size 12288 is not a power of two"),
    (1 << 31, "page size 2147483648 is not a power of two between 4096 and 134217728"),
    (8192, "the file header's page size 8192 disagrees with header_page (pages of 16 + 4080 bytes)"),
])
def test_header_page_size(page_size: int, message: str, v6_raw: bytes, tmp_path: Path) -> None:
    """Was: 12288 accepted (read at a 12 KiB stride), 8192 read half the pages."""
    at = len(MAGIC) + len(b"6\0") + 2
    assert struct.unpack_from("<I", v6_raw, at)[0] == 4096
    out = tmp_path / "hps.dat"
    out.write_bytes(patched(v6_raw, at, struct.pack("<I", page_size)))
    with pytest.raises(TraceError) as err:
        read_tracedat(out)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_v6_cpu_count_beyond_any_linux(v6_raw: bytes, tmp_path: Path) -> None:
    """The v6 CPU count sizes the CPU table that follows: 100000 is refused (was: 1.6 MB of
    page data read as that table)."""
    at = v6_raw.index(TAIL_OPTIONS) - 4  # the count, then an empty options list, then the table
    assert struct.unpack_from("<I", v6_raw, at)[0] == 6
    out = tmp_path / "cpus.dat"
    out.write_bytes(patched(v6_raw, at, struct.pack("<I", 100_000)))
    with pytest.raises(TraceError, match="100000 CPUs \\(more than the 32768 any Linux build has\\)"):
        read_tracedat(out)


def test_v7_cpucount_option_beyond_any_linux(v7_raw: bytes, public_dir: Path, tmp_path: Path) -> None:
    """Was: ``cpus=100000`` reported as is. The BUFFER option lists the CPUs; it wins, with a warning."""
    out = tmp_path / "cpucount.dat"
    out.write_bytes(patched(v7_raw, _option(v7_raw, Option.CPUCOUNT).at, struct.pack("<I", 100_000)))
    with pytest.warns(TraceWarning, match="corrupt CPUCOUNT option \\(100000 CPUs"):
        data = read_tracedat(out)
    assert data.info.cpus == 6
    assert data.events.equals(read_tracedat(public_dir / V7Z).events)


def test_section_offset_past_the_end(v7_raw: bytes, tmp_path: Path) -> None:
    out = tmp_path / "offset.dat"
    out.write_bytes(patched(v7_raw, _option(v7_raw, Option.CMDLINES).at, struct.pack("<Q", len(v7_raw) + 10)))
    with pytest.raises(TraceError, match=f"truncated at byte {len(v7_raw)}: the CMDLINES section should be at byte "
                                         f"{len(v7_raw) + 10}, past the end of the file"):
        read_tracedat(out)


def test_overlapping_cpu_streams(v6_raw: bytes, tmp_path: Path) -> None:
    """Two CPUs naming the same bytes: was read twice (and, with 32768 CPUs, 32768 times)."""
    table = v6_raw.index(TAIL_FLYRECORD) + len(TAIL_FLYRECORD)
    cpu0 = v6_raw[table : table + 8]
    out = tmp_path / "overlap.dat"
    out.write_bytes(patched(v6_raw, table + 16, cpu0))
    with pytest.raises(TraceError, match=r"the data of CPU 1 \(from byte \d+\) overlaps that of CPU 0"):
        read_tracedat(out)


def test_cpu_size_inside_a_page(v6_raw: bytes, tmp_path: Path, trace_cmd: str) -> None:
    """CPU 2's size set to 1 byte (found by the fuzz harness): was 0 of its events, silently;
    trace-cmd reads that size as the whole page (78 events). Now: as trace-cmd, with a warning."""
    table = v6_raw.index(TAIL_FLYRECORD) + len(TAIL_FLYRECORD)
    out = tmp_path / "size1.dat"
    out.write_bytes(patched(v6_raw, table + 16 * 2 + 8, struct.pack("<Q", 1)))
    with pytest.warns(TraceWarning, match="CPU 2's data is 1 bytes, not a whole number of 4096-byte pages; read as "
                                          "1 page\\(s\\), as trace-cmd reads it"):
        data = read_tracedat(out)
    theirs = collections.Counter(e.cpu for e in run_report(trace_cmd, out).events)
    assert collections.Counter(data.events["cpu"].to_pylist()) == theirs and theirs[2] == 78


def test_short_option_payload(v7_raw: bytes, tmp_path: Path) -> None:
    """An option too short for its number (a CPUCOUNT of 2 bytes): was a struct.error traceback."""
    out = tmp_path / "short.dat"
    out.write_bytes(append_options(v7_raw, [(Option.CPUCOUNT, b"\x06\x00")]))
    with pytest.raises(TraceError, match="an option of 2 bytes is too short for its value"):
        read_tracedat(out)


# ---------------------------------------------------------------- one corrupt page or chunk


def _page_of(raw: bytes, cpu: int, index: int) -> int:
    box = parse_container(raw, "x")
    stream = next(s for s in box.buffers[0].cpus if s.cpu == cpu)
    return stream.offset + index * box.page_size


def test_corrupt_page_keeps_the_rest(v6_raw: bytes, v6_whole: TraceData, tmp_path: Path, trace_cmd: str) -> None:
    """Page 3 of CPU 1 with a commit size past its data area. Was: the whole file rejected.
    trace-cmd stops reading CPU 1 there; the reader skips that page only and says so."""
    page = _page_of(v6_raw, 1, 3)
    out = tmp_path / "page.dat"
    out.write_bytes(patched(v6_raw, page + 8, struct.pack("<Q", 5000)))
    with pytest.warns(TraceWarning, match=f"1 corrupt page\\(s\\).*CPU 1 at offset {page}: commit size 5000"):
        data = read_tracedat(out)
    for cpu in (0, 2, 3, 4, 5):
        assert cpu_rows(data, cpu) == cpu_rows(v6_whole, cpu)
    start, _ = assert_lost_one_run(cpu_rows(data, 1), cpu_rows(v6_whole, 1))
    theirs = collections.Counter(e.cpu for e in run_report(trace_cmd, out).events)
    assert theirs[1] == start  # trace-cmd keeps CPU 1's pages before the bad one, as we do
    assert dict(data.info.lost_unknown) == {1: 1}
    gap = data.gaps.to_pylist()
    assert [(g["cpu"], g["lost"]) for g in gap] == [(1, None)]
    assert data.events["cpu"][gap[0]["seq"]].as_py() == 1  # the first event after the skipped page
    assert data.events["ts"][gap[0]["seq"]].as_py() == cpu_rows(data, 1)[start][0]


def test_corrupt_record_cuts_its_page(v6_raw: bytes, v6_whole: TraceData, tmp_path: Path) -> None:
    """Page 1 of CPU 2 whose first record claims 8000 bytes (type_len 0, array[0] = 8000): the
    page's records are lost, the pages after it are read. Was: the whole file rejected."""
    page = _page_of(v6_raw, 2, 1)
    out = tmp_path / "record.dat"
    out.write_bytes(patched(v6_raw, page + 16, struct.pack("<II", 0, 8000)))
    with pytest.warns(TraceWarning, match="record at byte 16 runs past the page's committed data"):
        data = read_tracedat(out)
    for cpu in (0, 1, 3, 4, 5):
        assert cpu_rows(data, cpu) == cpu_rows(v6_whole, cpu)
    assert_lost_one_run(cpu_rows(data, 2), cpu_rows(v6_whole, 2))
    assert dict(data.info.lost_unknown) == {2: 1}


def test_corrupt_chunk_keeps_the_rest(v7_raw: bytes, public_dir: Path, tmp_path: Path) -> None:
    """CPU 3's second compressed chunk with its zstd magic destroyed. Was: the whole file
    rejected; now its pages are lost, counted as a gap, and everything else is read."""
    box = parse_container(v7_raw, "x")
    stream = next(s for s in box.buffers[0].cpus if s.cpu == 3)
    (count,) = struct.unpack_from("<I", v7_raw, stream.offset)
    assert count >= 2
    csize = struct.unpack_from("<I", v7_raw, stream.offset + 4)[0]
    second = stream.offset + 4 + 8 + csize + 8
    out = tmp_path / "chunk.dat"
    out.write_bytes(patched(v7_raw, second, b"\xde\xad\xbe\xef"))
    with pytest.warns(TraceWarning, match="CPU 3 lost 1 compressed chunk\\(s\\) that do not decompress"):
        data = read_tracedat(out)
    whole = read_tracedat(public_dir / V7Z)
    for cpu in (0, 1, 2, 4, 5):
        assert cpu_rows(data, cpu) == cpu_rows(whole, cpu)
    assert_lost_one_run(cpu_rows(data, 3), cpu_rows(whole, 3))
    assert dict(data.info.lost_unknown) == {3: 1}
    assert [(g["cpu"], g["ts"], g["lost"]) for g in data.gaps.to_pylist()] == [(3, None, None)]


# ---------------------------------------------------------------- corrupt format files


def _with_format(public_dir: Path, tmp_path: Path, event: bytes, old: bytes, new: bytes) -> Path:
    """sched_load.dat rewritten (v6) with one line of one event's format file replaced."""
    content = content_of(public_dir / V6)
    done = []

    def edit(texts: tuple[bytes, ...]) -> tuple[bytes, ...]:
        out = []
        for text in texts:
            if b"name: " + event + b"\n" in text:
                assert old in text
                text = text.replace(old, new)
                done.append(event)
            out.append(text)
        return tuple(out)

    content = dataclasses.replace(content, ftrace_formats=edit(content.ftrace_formats),
                                  systems=tuple(EventSystem(s.name, edit(s.formats)) for s in content.systems))
    assert done == [event]
    out = tmp_path / "format.dat"
    write_tracedat(out, content, version=6, compression="none")
    return out


def test_field_beyond_any_record(public_dir: Path, tmp_path: Path) -> None:
    """A field at offset 2^32-1: was a 1.56 TiB allocation (numpy MemoryError)."""
    out = _with_format(public_dir, tmp_path, b"sched_switch", b"offset:8;\tsize:16;", b"offset:4294967295;\tsize:16;")
    _data, _, peak, err = read_bounded(out)
    assert err is not None and "corrupt event format sched_switch: field prev_comm at offset 4294967295" in str(err)
    assert peak < PEAK_LIMIT


def test_common_type_outside_the_common_header(public_dir: Path, tmp_path: Path) -> None:
    """common_type read at offset 4000 of every record: was an IndexError past the page buffer."""
    out = _with_format(public_dir, tmp_path, b"wakeup", b"common_type;\toffset:0;", b"common_type;\toffset:4000;")
    with pytest.raises(TraceError, match="common_type at offset 4000 \\(2 bytes\\), outside the records' 8-byte"):
        read_tracedat(out)


def test_array_whose_elements_do_not_tile_it(public_dir: Path, v6_whole: TraceData, tmp_path: Path) -> None:
    """``u8 prev_comm[32]`` in 16 bytes: was an Arrow error (16 values per row for lists of 32);
    now the 16 bytes, as bytes."""
    out = _with_format(public_dir, tmp_path, b"sched_switch", b"char prev_comm[16];", b"u8 prev_comm[32];")
    table = read_tracedat(out).table("sched_switch")
    assert table.schema.field("prev_comm").type == pa.binary()
    names = v6_whole.table("sched_switch")["prev_comm"].to_pylist()
    assert [b.split(b"\0", 1)[0].decode() for b in table["prev_comm"].to_pylist()] == names
