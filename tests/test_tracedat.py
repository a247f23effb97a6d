"""trace.dat reader: container variants, hand-made pages, damaged files, errors.

Real recordings come first: ``trace-cmd convert`` turns them into v6 / v7-none / v7-zstd files
that must read identically, and the project writer re-frames their real pages with zlib. Pages
built by hand (tests/tracedat_builder.py) cover what no real recording has: a big-endian
machine, time extends and absolute time stamps at chosen places, large-record encodings, padding,
stored and unknown lost-event counts, arrays, instances, TIME_SHIFT/TSC2NSEC/DATE/OFFSET options,
two systems sharing an event name. Where trace-cmd can read the hand-made file (all but zlib),
the expected values are checked twice: by hand and by the oracle. Hypothesis drives two
properties: random record sequences read as trace-cmd reads them, and damaged files end in a
result or a one-line TraceError, never a crash.
"""

from __future__ import annotations

import dataclasses
import struct
import subprocess
import warnings
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tracedat_builder import (
    Data,
    Padding,
    TimeExtend,
    TimeStamp,
    append_options,
    build_page,
    build_tracedat,
    content_of,
    v7_options,
)
from tracedat_oracle import assert_matches, cpu_rows, run_report

from kvmtrace.parsers.errors import TraceError, TraceWarning
from kvmtrace.parsers.schema import TraceData
from kvmtrace.parsers.tracedat import read_tracedat
from kvmtrace.parsers.tracedat.constants import Option
from kvmtrace.parsers.tracedat.container import parse_container
from kvmtrace.parsers.tracedat.salvage import cpus_with_events
from kvmtrace.parsers.tracedat.writer import EventSystem, TraceDatContent

NESTED_FILE = "tdp-boot-small-kt.dat"  # v7 zstd, 6.12 kernel, kvmmmu + kvm events
V6_FILE = "sched_load.dat"  # v6 without options (old trace-cmd)
V6_32BIT_FILE = "trace.dat"  # v6, 32-bit ARM kernel (4-byte commit word)


def assert_same(a: TraceData, b: TraceData) -> None:
    """Identical decoded content (tables, events, gaps, counts), whatever the container."""
    assert a.events.equals(b.events)
    assert a.tables.keys() == b.tables.keys()
    for name in a.tables:
        assert a.tables[name].equals(b.tables[name], check_metadata=True), name
    assert a.gaps.equals(b.gaps)
    assert dict(a.info.event_counts) == dict(b.info.event_counts)
    # Not the clock: for a source that never stored one, trace-cmd convert writes whatever the
    # converting host's tracefs trace_clock says at that moment.
    assert (a.info.cpus, a.info.long_size, a.info.kernel) == (b.info.cpus, b.info.long_size, b.info.kernel)


def convert(trace_cmd: str, src: Path, dst: Path, version: int, compression: str) -> Path:
    subprocess.run([trace_cmd, "convert", "--file-version", str(version), "--compression", compression,
                    "-i", str(src), "-o", str(dst)], check=True, capture_output=True)
    return dst


@pytest.fixture(scope="module")
def v6_nested(tmp_path_factory: pytest.TempPathFactory, nested_dir: Path, trace_cmd: str) -> Path:
    """The kvmmmu recording as an uncompressed v6 file (template for hand-made files)."""
    return convert(trace_cmd, nested_dir / NESTED_FILE, tmp_path_factory.mktemp("v6") / "n.dat", 6, "none")


# ---------------------------------------------------------------- container variants of real files


@pytest.mark.parametrize("version,compression", [(6, "none"), (7, "none"), (7, "zstd")])
@pytest.mark.parametrize("source", ["nested", "public"])
def test_converted_variants_read_identically(source: str, version: int, compression: str, tmp_path: Path,
                                             nested_dir: Path, public_dir: Path, trace_cmd: str) -> None:
    src = nested_dir / NESTED_FILE if source == "nested" else public_dir / V6_FILE
    out = convert(trace_cmd, src, tmp_path / "c.dat", version, compression)
    original, converted = read_tracedat(src), read_tracedat(out)
    assert converted.info.version == version
    assert converted.info.compression == (compression if version == 7 else "none")
    assert_same(original, converted)


def test_zlib_sections_and_chunks(v6_nested: Path, tmp_path: Path, nested_dir: Path) -> None:
    """zlib (which this trace-cmd build cannot write): the real pages, re-framed by the writer."""
    out = tmp_path / "z.dat"
    build_tracedat(out, content_of(v6_nested), [[c] for c in content_of(v6_nested).cpu_data],
                   version=7, compression="zlib")
    data = read_tracedat(out)
    assert data.info.compression == "zlib"
    assert_same(read_tracedat(nested_dir / NESTED_FILE), data)


# ---------------------------------------------------------------- hand-made pages

SPTE_ID = 1588  # kvm_tdp_mmu_spte_changed in the 6.12 recording (format checked below)
SPTE_FORMAT_LINES = (
    "field:u64 gfn;\toffset:8;\tsize:8;\tsigned:0;",
    "field:u64 old_spte;\toffset:16;\tsize:8;\tsigned:0;",
    "field:u64 new_spte;\toffset:24;\tsize:8;\tsigned:0;",
    "field:u8 level;\toffset:32;\tsize:1;\tsigned:0;",
    "field:u8 as_id;\toffset:33;\tsize:1;\tsigned:0;",
)


def spte_payload(pid: int, gfn: int, old: int, new: int, level: int, *, big_endian: bool = False) -> bytes:
    """A kvm_tdp_mmu_spte_changed record laid out by hand from its format file (36 bytes)."""
    o = ">" if big_endian else "<"
    return struct.pack(o + "HBBiQQQBBxx", SPTE_ID, 1, 2, pid, gfn, old, new, level, 0)


def test_spte_format_is_what_the_payloads_assume(v6_nested: Path) -> None:
    systems = content_of(v6_nested).systems
    text = next(t.decode() for system in systems for t in system.formats if b"ID: 1588\n" in t)
    assert "name: kvm_tdp_mmu_spte_changed" in text
    for line in SPTE_FORMAT_LINES:
        assert line in text


def _timing_pages(big_endian: bool) -> tuple[list[list[bytes]], list[int]]:
    """Two CPUs; every record kind; returns pages and the expected timestamps in file order."""
    t0, abs_ts = 5_000_000_000, 7_000_000_000
    ext = (1 << 30) + 17

    def p(gfn: int) -> bytes:
        return spte_payload(100 + gfn, gfn, 1 << 63, 0x1000 | gfn, 1 + gfn % 4, big_endian=big_endian)

    cpu0 = build_page(t0, [
        Data(p(1)),                                 # t0
        TimeExtend(ext), Data(p(2), delta=5),       # t0 + ext + 5
        TimeStamp(abs_ts), Data(p(3), delta=7),     # abs + 7
        Padding(16, delta=3), Data(p(4), delta=2, large=True),  # abs + 12 (padding delta counts)
    ], big_endian=big_endian)
    cpu0b = build_page(abs_ts + 100, [Data(p(5)), Data(p(6), delta=(1 << 27) - 1)],
                       big_endian=big_endian, missed_events=42)
    cpu1 = build_page(t0 + 1, [Data(p(7)), Data(p(8), delta=0)], big_endian=big_endian, missed_events=0)
    expected = [t0, t0 + ext + 5, abs_ts + 7, abs_ts + 12, abs_ts + 100, abs_ts + 100 + (1 << 27) - 1,
                t0 + 1, t0 + 1]
    return [[cpu0, cpu0b], [cpu1]], expected


@pytest.mark.parametrize("big_endian", [False, True], ids=["le", "be"])
@pytest.mark.parametrize("version,compression", [(6, "none"), (7, "zlib"), (7, "zstd")])
def test_hand_made_pages(big_endian: bool, version: int, compression: str, v6_nested: Path,
                         tmp_path: Path, trace_cmd: str) -> None:
    pages, expected = _timing_pages(big_endian)
    out = tmp_path / "h.dat"
    build_tracedat(out, content_of(v6_nested), pages, version=version, compression=compression,
                   big_endian=big_endian)
    data = read_tracedat(out)
    assert data.info.big_endian is big_endian
    spte = data.table("kvm_tdp_mmu_spte_changed")
    file_order = sorted(range(spte.num_rows), key=lambda i: spte["gfn"][i].as_py())
    assert [spte["ts"][i].as_py() for i in file_order] == expected
    assert spte["gfn"].to_pylist() == [1, 7, 8, 2, 3, 4, 5, 6]  # merged by (ts, cpu)
    assert spte["old_spte"].to_pylist() == [1 << 63] * 8
    assert spte["new_spte"].to_pylist() == [0x1000 | g for g in spte["gfn"].to_pylist()]
    assert spte["level"].to_pylist() == [1 + g % 4 for g in spte["gfn"].to_pylist()]
    assert spte["pid"].to_pylist() == [100 + g for g in spte["gfn"].to_pylist()]
    assert spte["common_flags"].to_pylist() == [1] * 8 and spte["common_preempt_count"].to_pylist() == [2] * 8
    assert spte.schema.field("gfn").type == pa.uint64() and spte.schema.field("level").type == pa.uint8()
    assert data.gaps.to_pylist() == [
        {"cpu": 0, "ts": 7_000_000_100, "seq": 6, "lost": 42},
        {"cpu": 1, "ts": 5_000_000_001, "seq": 1, "lost": None},
    ]
    assert dict(data.info.lost_events) == {0: 42} and dict(data.info.lost_unknown) == {1: 1}
    if compression != "zlib":  # this trace-cmd build has no zlib; the hand values above still hold
        assert_matches(data, run_report(trace_cmd, out))


def test_merge_when_a_cpu_goes_back_in_time(v6_nested: Path, tmp_path: Path, trace_cmd: str) -> None:
    """trace-cmd merges CPUs by their *next* record, so a CPU whose clock steps back (a later page
    with an earlier time stamp) is not sorted globally. Hand-worked order: heads 1000|700 → 700;
    1000|1005 → 1000; 1010|1005 → 1005; then CPU 0's 1010 and its stepped-back 500."""

    def p(gfn: int) -> bytes:
        return spte_payload(1, gfn, 0, 0, 1)

    cpu0 = [build_page(1000, [Data(p(1)), Data(p(2), delta=10)]), build_page(500, [Data(p(3))])]
    cpu1 = [build_page(700, [Data(p(4))]), build_page(1005, [Data(p(5))])]
    out = tmp_path / "back.dat"
    build_tracedat(out, content_of(v6_nested), [cpu0, cpu1], version=6, compression="none")
    data = read_tracedat(out)
    assert data.table("kvm_tdp_mmu_spte_changed")["gfn"].to_pylist() == [4, 1, 5, 2, 3]
    assert data.events["ts"].to_pylist() == [700, 1000, 1005, 1010, 500]
    assert_matches(data, run_report(trace_cmd, out))


def test_array_fields(small_template: Template, tmp_path: Path, trace_cmd: str) -> None:
    """Arrays no real recording here has, laid out by hand from the 6.12 format files:
    dma_unmap_sg (ID 368): __data_loc char[] device @8, __data_loc u64[] addrs @12, enum dir @16,
    unsigned long attrs @24; ipi_raise (ID 289): __data_loc unsigned long[] target_cpus @8,
    const char *reason @16; kernel_stack (ID 4): int size @8, unsigned long caller[8] @16."""
    addrs = [0x1000, 0xFFFF_FFFF_0000_0001, 42]
    dma = (struct.pack("<HBBiIIIIQ", 368, 0, 0, 9, 6 << 16 | 32, 24 << 16 | 40, 2, 0, 0x30)
           + b"nvme0\0\0\0" + struct.pack("<3Q", *addrs))
    ipi = struct.pack("<HBBiIIQ", 289, 0, 0, 9, 16 << 16 | 24, 0, 0xFFFFFFFF81000000) + struct.pack("<2Q", 5, 1 << 63)
    stack = struct.pack("<HBBiiI8Q", 4, 0, 0, 9, 3, 0, *range(0xA0, 0xA8))
    page = build_page(1000, [Data(dma), Data(ipi, delta=1), Data(stack, delta=1)])
    out = tmp_path / "arrays.dat"
    build_tracedat(out, small_template.content, [[page]], version=6, compression="none")
    data = read_tracedat(out)
    row = data.table("dma_unmap_sg").to_pylist()[0]
    assert (row["device"], row["addrs"], row["dir"], row["attrs"]) == ("nvme0", addrs, 2, 0x30)
    assert data.table("dma_unmap_sg").schema.field("addrs").type == pa.list_(pa.uint64())
    ipi_row = data.table("ipi_raise").to_pylist()[0]
    assert ipi_row["target_cpus"] == [5, 1 << 63] and ipi_row["reason"] == 0xFFFFFFFF81000000
    stack_row = data.table("kernel_stack").to_pylist()[0]
    assert stack_row["size"] == 3 and stack_row["caller"] == list(range(0xA0, 0xA8))
    assert data.table("kernel_stack").schema.field("caller").type == pa.list_(pa.uint64(), 8)
    assert_matches(data, run_report(trace_cmd, out))


def test_event_name_shared_by_two_systems(small_template: Template, tmp_path: Path, trace_cmd: str) -> None:
    """Hand-made: a second system ("zsys", after the real ones) with its own event of the same
    name (ID 60000). The later one's table is qualified as ``system:name``."""
    text = next(t for system in small_template.content.systems for t in system.formats if b"ID: 1588\n" in t)
    twin = EventSystem("zsys", (text.replace(b"ID: 1588\n", b"ID: 60000\n"),))
    content = dataclasses.replace(small_template.content, systems=(*small_template.content.systems, twin))
    other = struct.pack("<H", 60000) + spte_payload(1, 2, 0, 0, 1)[2:]
    page = build_page(1000, [Data(spte_payload(1, 1, 0, 0, 1)), Data(other, delta=1)])
    out = tmp_path / "twins.dat"
    build_tracedat(out, content, [[page]], version=6, compression="none")
    data = read_tracedat(out)
    assert data.table("kvm_tdp_mmu_spte_changed")["gfn"].to_pylist() == [1]
    assert data.table("kvmmmu:kvm_tdp_mmu_spte_changed")["gfn"].to_pylist() == [1]
    assert data.table("zsys:kvm_tdp_mmu_spte_changed")["gfn"].to_pylist() == [2]
    assert data.events["event"].cast(pa.string()).to_pylist() == [
        "kvm_tdp_mmu_spte_changed", "zsys:kvm_tdp_mmu_spte_changed"]
    assert data.events["system"].cast(pa.string()).to_pylist() == ["kvmmmu", "zsys"]
    assert_matches(data, run_report(trace_cmd, out))


def test_event_id_without_format(small_template: Template, tmp_path: Path) -> None:
    """Hand-made: a record whose common_type has no format file (65000)."""
    stray = struct.pack("<H", 65000) + spte_payload(1, 2, 0, 0, 1)[2:]
    page = build_page(1000, [Data(spte_payload(1, 1, 0, 0, 1)), Data(stray, delta=1)])
    out = tmp_path / "stray.dat"
    build_tracedat(out, small_template.content, [[page]], version=6, compression="none")
    with pytest.warns(TraceWarning, match="1 records with an event id that has no format file"):
        data = read_tracedat(out)
    assert data.events["event"].cast(pa.string()).to_pylist() == ["kvm_tdp_mmu_spte_changed", "<unknown>"]
    assert data.events["system"].cast(pa.string()).to_pylist() == ["kvmmmu", None]
    assert dict(data.info.event_counts) == {"kvm_tdp_mmu_spte_changed": 1}


@pytest.mark.parametrize("big_endian", [False, True], ids=["le", "be"])
def test_32bit_kernel_pages(big_endian: bool, public_dir: Path, tmp_path: Path, trace_cmd: str) -> None:
    """4-byte commit word and data at offset 12; a __data_loc string; a 4-byte unsigned long
    (the big-endian variant stands for a 32-bit big-endian machine, which no stored file is)."""
    template = content_of(public_dir / V6_32BIT_FILE)
    assert b"size:4;" in template.header_page.split(b"commit")[1][:40]
    # cdev_update (ID 358): __data_loc char[] type @8 (string at 16, 8 bytes), unsigned long target @12.
    order = ">" if big_endian else "<"
    payload = struct.pack(order + "HBBiII", 358, 0, 0, 42, 8 << 16 | 16, 12345) + b"gpu-x\0\0\0"
    page = build_page(1000, [Data(payload), Data(payload, delta=9)], long_size=4, missed_events=3,
                      big_endian=big_endian)
    out = tmp_path / "32.dat"
    build_tracedat(out, template, [[page]] + [[] for _ in template.cpu_data[1:]], version=6,
                   compression="none", big_endian=big_endian)
    data = read_tracedat(out)
    assert (data.info.long_size, data.info.big_endian) == (4, big_endian)
    cdev = data.table("cdev_update")
    assert cdev.select(["ts", "pid", "type", "target"]).to_pylist() == [
        {"ts": 1000, "pid": 42, "type": "gpu-x", "target": 12345},
        {"ts": 1009, "pid": 42, "type": "gpu-x", "target": 12345},
    ]
    assert cdev.schema.field("target").type == pa.uint32()
    assert data.gaps["lost"].to_pylist() == [3]
    assert_matches(data, run_report(trace_cmd, out))


# ---------------------------------------------------------------- damaged files and errors


def test_cut_short_keeps_complete_pages(v6_nested: Path, tmp_path: Path) -> None:
    full = read_tracedat(v6_nested)
    raw = v6_nested.read_bytes()
    out = tmp_path / "cut.dat"
    out.write_bytes(raw[: len(raw) - 3 * 4096 - 100])  # the last CPU loses 3 pages and a bit
    with pytest.warns(TraceWarning, match="cut short"):
        data = read_tracedat(out)
    assert any("cut short" in w for w in data.info.warnings)
    assert 0 < data.info.total_events < full.info.total_events
    last_cpu = max(full.events["cpu"].to_pylist())
    for cpu in set(full.events["cpu"].to_pylist()) - {last_cpu}:
        assert data.events.filter(pa.compute.equal(data.events["cpu"], cpu)).num_rows == \
            full.events.filter(pa.compute.equal(full.events["cpu"], cpu)).num_rows


@pytest.mark.parametrize("cut", [40_000, 60_000, 10_000])
def test_cut_short_v7_zstd_salvages_the_streams(cut: int, nested_dir: Path, tmp_path: Path) -> None:
    """v7 writers put the options that locate the CPU data after it; a v7 zstd file cut in its
    data still yields every complete chunk of every CPU stream that began before the cut: each
    CPU's events are a prefix of the full file's, decoded identically."""
    src = nested_dir / NESTED_FILE
    raw = src.read_bytes()
    out = tmp_path / "cutz.dat"
    out.write_bytes(raw[: len(raw) - cut])
    with pytest.warns(TraceWarning) as caught:
        data = read_tracedat(out)
    said = [str(w.message) for w in caught]
    assert any("options that locate the CPU data were lost" in m for m in said), said
    assert any("file cut short" in m for m in said), said
    assert any("assigned to the CPUs whose CPUSTAT reports events" in w for w in data.info.warnings)
    full = read_tracedat(src)
    assert 0 < data.info.total_events < full.info.total_events
    for cpu in (0, 1):
        part, whole = cpu_rows(data, cpu), cpu_rows(full, cpu)
        assert part == whole[: len(part)]
        spte = data.table("kvm_tdp_mmu_spte_changed")
        spte_full = full.table("kvm_tdp_mmu_spte_changed")
        mine = spte.filter(pa.compute.equal(spte["cpu"], cpu)).drop_columns(["seq"])
        theirs = spte_full.filter(pa.compute.equal(spte_full["cpu"], cpu)).drop_columns(["seq"])
        assert mine.to_pylist() == theirs.slice(0, mine.num_rows).to_pylist()  # comm dictionaries differ


def test_salvage_cpu_numbers_from_cpustat(nested_dir: Path) -> None:
    """The recording's own CPUSTAT options (CPU 0: 11 read events, CPU 1: 16281); a CPU whose
    buffer gave up nothing wrote no stream, so the streams belong to the others (hand-edited)."""
    box = parse_container((nested_dir / NESTED_FILE).read_bytes(), NESTED_FILE)
    stats = [o.payload for o in box.options if o.id == Option.CPUSTAT]
    assert cpus_with_events(stats) == [0, 1]
    assert cpus_with_events([stats[0].replace(b"read events: 11", b"read events: 0"), stats[1]]) == [1]


def test_cut_short_v7_uncompressed_is_an_error(nested_dir: Path, tmp_path: Path, trace_cmd: str) -> None:
    """Without compression nothing marks where one CPU's pages end: only the position is said."""
    v7 = convert(trace_cmd, nested_dir / NESTED_FILE, tmp_path / "v7.dat", 7, "none")
    raw = v7.read_bytes()
    out = tmp_path / "cut.dat"
    out.write_bytes(raw[: len(raw) - 100_000])
    with pytest.raises(TraceError, match=f"truncated at byte {len(raw) - 100_000} "):
        read_tracedat(out)


def _patched(src: Path, dst: Path, offset: int, new: bytes) -> Path:
    raw = bytearray(src.read_bytes())
    raw[offset : offset + len(new)] = new
    dst.write_bytes(bytes(raw))
    return dst


def test_errors_are_one_line(v6_nested: Path, nested_dir: Path, tmp_path: Path) -> None:
    cut = tmp_path / "meta.dat"
    cut.write_bytes(v6_nested.read_bytes()[:500])
    cases = {
        "not a trace.dat": _patched(v6_nested, tmp_path / "magic.dat", 0, b"\x00"),
        "unsupported trace.dat version '9'": _patched(v6_nested, tmp_path / "ver.dat", 10, b"9"),
        "unknown compression 'zstq'": _patched(nested_dir / NESTED_FILE, tmp_path / "comp.dat", 18, b"zstq"),
        "truncated at byte 500": cut,
    }
    for message, path in cases.items():
        with pytest.raises(TraceError) as err:
            read_tracedat(path)
        text = str(err.value)
        assert message in text and "\n" not in text, text


def test_pre_2631_kernel_is_refused(v6_nested: Path, tmp_path: Path) -> None:
    """No header_page: the old ring-buffer encoding, refused with a one-line reason."""
    out = tmp_path / "old.dat"
    content = content_of(v6_nested)
    build_tracedat(out, dataclasses.replace(content, header_page=b""), [[c] for c in content.cpu_data],
                   version=6, compression="none")
    with pytest.raises(TraceError, match=r"pre-2\.6\.31 kernel"):
        read_tracedat(out)


def test_info_fields(nested_dir: Path) -> None:
    """TraceInfo against the recording's own facts (trace-cmd dump / counts file)."""
    info = read_tracedat(nested_dir / NESTED_FILE).info
    assert (info.version, info.compression, info.cpus, info.clock) == (7, "zstd", 2, "global")
    assert info.kernel == "6.12.107+deb12-amd64" and info.uname.startswith("Linux ")
    assert info.tracer_version.startswith("3.1.6")
    assert (info.long_size, info.page_size, info.big_endian) == (8, 4096, False)
    counts = (nested_dir / NESTED_FILE.replace(".dat", ".counts.txt")).read_text()
    assert f"total_events {info.total_events}" in counts
    assert info.event_counts["kvm_tdp_mmu_spte_changed"] == 2590
    assert info.first_ts == 14_750_309_028 and info.instances == ()


def test_bprint_format_strings(public_dir: Path) -> None:
    """bprint's fmt address resolves through the printk formats; the args stay raw bytes.

    Expected values from ``trace-cmd report`` (pretty mode) of the first bprint event:
    ``enqueue_task_fair: evt=util_est_rq step=pre pid=6972 comm=sudo cpu=1 ...``.
    """
    bprint = read_tracedat(public_dir / "example_rtapp.dat").table("bprint")
    assert bprint.schema.field("fmt").type == pa.string() and bprint.schema.field("fmt_addr").type == pa.uint64()
    assert bprint.schema.field("buf").type == pa.binary()
    first = bprint.slice(0, 1).to_pylist()[0]
    assert first["fmt"] == ("evt=util_est_rq step=pre pid=%d comm=%s cpu=%d rq=%p event=enqueue "
                            "t_avg=%lu t_est=%lu q_avg=%lu q_est=%lu")
    assert first["fmt_addr"] == 0xFFFFFFC0008F3B50
    assert struct.unpack_from("<i", first["buf"])[0] == 6972 and b"sudo\0" in first["buf"]
    assert not any(f.startswith("0x") for f in bprint["fmt"].to_pylist())


def _append_options(src: Path, dst: Path, options: list[tuple[int, bytes]]) -> bytes:
    """Hand-made: ``options`` appended to an uncompressed LE v7 file (tracedat_builder.append_options).
    Returns the top BUFFER option's payload, for building instance options from it."""
    raw = src.read_bytes()
    dst.write_bytes(append_options(raw, options))
    return next(o.payload for o in v7_options(raw) if o.id == Option.BUFFER)


def _add_instance(src: Path, dst: Path, name: str) -> None:
    """Hand-made: a second BUFFER option (instance ``name``) that points at the top buffer's
    pages. Real multi-instance recordings need ``trace-cmd record -B``; none is stored."""
    top = _append_options(src, dst, [])
    name_end = 8 + top[8:].index(b"\0")
    _append_options(src, dst, [(Option.BUFFER, top[:8] + name.encode() + top[name_end:])])


@pytest.mark.parametrize("version", [7, 6])
def test_buffer_instances(version: int, public_dir: Path, tmp_path: Path, trace_cmd: str) -> None:
    """v7 instance built by hand; the v6 one is trace-cmd's own conversion of it (v6 keeps each
    instance's flyrecord table at the offset its BUFFER option names)."""
    v7 = convert(trace_cmd, public_dir / V6_32BIT_FILE, tmp_path / "v7.dat", 7, "none")
    out = tmp_path / "inst.dat"
    _add_instance(v7, out, "second")
    if version == 6:
        out = convert(trace_cmd, out, tmp_path / "inst6.dat", 6, "none")
    report = run_report(trace_cmd, out)
    assert list(report.instances) == ["second"], report.describe()
    top = read_tracedat(out)
    assert top.info.version == version
    assert top.info.instances == ("second",) and list(top.instances) == ["second"]
    assert_matches(top, report)
    second = read_tracedat(out, instance="second")
    assert second.info.instances == () and second.instances == {}
    report.events = report.instances["second"]
    assert_matches(second, report)
    assert_matches(top.instances["second"], report)
    with pytest.raises(TraceError, match="no buffer instance 'third'; this file has \\['second'\\]"):
        read_tracedat(out, instance="third")


# ---------------------------------------------------------------- random pages vs trace-cmd

_record = st.one_of(
    st.builds(lambda d, large: ("data", d, large), st.integers(0, (1 << 27) - 1), st.booleans()),
    st.builds(lambda d: ("extend", d), st.integers(0, (1 << 40))),
    st.builds(lambda t: ("stamp", t), st.integers(0, 1 << 50)),
    st.builds(lambda size, d: ("pad", size, d), st.integers(2, 16).map(lambda w: w * 4), st.integers(0, 1000)),
)
_page = st.tuples(st.integers(0, 1 << 48), st.lists(_record, min_size=0, max_size=40),
                  st.sampled_from([None, 0, 7]))


@dataclasses.dataclass(frozen=True)
class Template:
    """Metadata for hand-made files (kept out of hypothesis' printed examples)."""

    content: TraceDatContent = dataclasses.field(repr=False)


@pytest.fixture(scope="module")
def small_template(v6_nested: Path) -> Template:
    """The recording's metadata without its 7.6 MB kallsyms (nothing here needs symbols)."""
    return Template(dataclasses.replace(content_of(v6_nested), kallsyms=b""))


@settings(max_examples=25, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cpus=st.lists(st.lists(_page, min_size=1, max_size=3), min_size=1, max_size=2), big_endian=st.booleans())
def test_random_pages_match_trace_cmd(cpus: list, big_endian: bool, small_template: Template,
                                      tmp_path: Path, trace_cmd: str) -> None:
    """Hand-made (random) record sequences of every kind, read by us and by trace-cmd."""
    gfn = iter(range(1, 10**6))
    pages = []
    expected_gaps, printed_gaps = [], []
    for cpu, cpu_pages in enumerate(cpus):
        for _, records, missed in cpu_pages:
            if missed is not None:
                expected_gaps.append((cpu, missed or -1))
                # trace-cmd prints its marker only when the page's first record is an event
                # (kbuffer_missed_events: "only the first event can have missed events").
                if records and records[0][0] == "data":
                    printed_gaps.append((cpu, missed or -1))
    for cpu_pages in cpus:
        built = []
        for ts, records, missed in cpu_pages:
            recs = []
            for r in records:
                if r[0] == "data":
                    recs.append(Data(spte_payload(7, next(gfn), 1, 2, 3, big_endian=big_endian), delta=r[1],
                                     large=r[2]))
                elif r[0] == "extend":
                    recs.append(TimeExtend(r[1]))
                elif r[0] == "stamp":
                    recs.append(TimeStamp(r[1]))
                else:
                    recs.append(Padding(r[1], delta=r[2]))
            built.append(build_page(ts, recs, big_endian=big_endian, missed_events=missed))
        pages.append(built)
    out = tmp_path / f"rand{next(gfn)}.dat"
    build_tracedat(out, small_template.content, pages, version=6, compression="none", big_endian=big_endian)
    data = read_tracedat(out)
    report = run_report(trace_cmd, out)
    assert_matches(data, report)
    ours = [(c, -1 if n is None else n) for c, n in zip(data.gaps["cpu"].to_pylist(), data.gaps["lost"].to_pylist())]
    assert sorted(ours) == sorted(expected_gaps)
    assert sorted((c, -1 if n is None else n) for c, n in report.dropped) == sorted(printed_gaps)


def test_tsc2nsec_date_offset(public_dir: Path, tmp_path: Path, trace_cmd: str) -> None:
    """Timestamp options as trace-cmd applies them: (ts * mult) >> shift, + DATE µs, + OFFSET.
    Hand-made options on a real file; expected values by hand and by trace-cmd."""
    v7 = convert(trace_cmd, public_dir / V6_32BIT_FILE, tmp_path / "v7.dat", 7, "none")
    raw_first = read_tracedat(v7).info.first_ts
    out = tmp_path / "opts.dat"
    _append_options(v7, out, [
        (Option.TSC2NSEC, struct.pack("<IIQ", 3, 1, 999)),  # the offset 999 is not applied
        (Option.DATE, b"0x10\0"),
        (Option.OFFSET, b"-5000\0"),
    ])
    data = read_tracedat(out)
    assert data.info.first_ts == raw_first * 3 // 2 + 16_000 - 5000
    assert_matches(data, run_report(trace_cmd, out))


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damage=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=20),
       cut=st.one_of(st.none(), st.floats(0, 1)))
def test_damaged_files_fail_cleanly(damage: list, cut: float | None, zstd_small: bytes, tmp_path: Path) -> None:
    """Random byte damage or truncation anywhere: a result or a TraceError, never a crash."""
    raw = bytearray(zstd_small)
    for where, value in damage:
        raw[int(where * len(raw))] = value
    if cut is not None:
        raw = raw[: int(cut * len(raw))]
    out = tmp_path / "damaged.dat"
    out.write_bytes(bytes(raw))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TraceWarning)
            read_tracedat(out)
    except TraceError as err:
        assert "\n" not in str(err)


@pytest.fixture(scope="module")
def zstd_small(tmp_path_factory: pytest.TempPathFactory, public_dir: Path, trace_cmd: str) -> bytes:
    """A small real recording as v7 zstd (sections, options chain, chunks: most to damage)."""
    out = tmp_path_factory.mktemp("z") / "z.dat"
    return convert(trace_cmd, public_dir / V6_32BIT_FILE, out, 7, "zstd").read_bytes()


@pytest.mark.parametrize("interpolate", [True, False])
@pytest.mark.parametrize("fractions", [True, False])
def test_time_shift_matches_trace_cmd(interpolate: bool, fractions: bool, public_dir: Path, tmp_path: Path,
                                      trace_cmd: str) -> None:
    """A guest file's TIME_SHIFT samples (hand-made, appended to a real file): per CPU, sorted
    and de-duplicated samples, interpolated offsets, scaling; trace-cmd is the judge."""
    v7 = convert(trace_cmd, public_dir / V6_32BIT_FILE, tmp_path / "v7.dat", 7, "none")
    plain = read_tracedat(v7)
    lo, hi = plain.info.first_ts, plain.info.last_ts
    mid = (lo + hi) // 2
    cpus = [  # (times, offsets, scalings, fraction bits); CPU 1 unsorted with a duplicate time
        ([lo - 10, mid, hi + 10], [1000, -50_000, 7_777_777], [1, 1, 1], [0, 0, 0]),
        ([hi, lo, mid, mid], [-3, 5_000_000, 12, 99], [3, 3, 3, 3], [1, 1, 1, 1]),
        ([mid], [123_456], [1], [0]),
    ]
    payload = struct.pack("<QII", 42, 1 if interpolate else 0, len(cpus))
    for times, offsets, scalings, _ in cpus:
        payload += struct.pack(f"<I{len(times)}Q{len(times)}q{len(times)}Q", len(times), *times, *offsets, *scalings)
    if fractions:
        for times, _, _, bits in cpus:
            payload += struct.pack(f"<{len(times)}Q", *bits)
    out = tmp_path / "guest.dat"
    _append_options(v7, out, [(Option.TIME_SHIFT, payload)])
    data = read_tracedat(out)
    assert not data.events["ts"].equals(plain.events["ts"])
    assert_matches(data, run_report(trace_cmd, out))
