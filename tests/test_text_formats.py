"""Shapes of ftrace text: headers, compression, columns, gaps, counter clocks, errors.

Real text first: the upstream recordings' kernel text twins and the public excerpts. Where a
shape exists in no real file we have (a TGID column, tracefs LOST lines, counter-clock
timestamps, hyphenated task names), the test builds it from real lines by the one edit the
kernel's printer makes, and says so; the oracle is then the same lines parsed unedited.
"""

from __future__ import annotations

import gzip
import lzma
import re
from pathlib import Path

import polars as pl
import pytest
import zstandard
from typer.testing import CliRunner

from kvmtrace.parsers import read
from kvmtrace.parsers.errors import TraceError
from kvmtrace.parsers.schema import META_NULL_PREFIX
from kvmtrace.parsers.text import read_text

DATA = Path(__file__).parent / "data" / "text"


@pytest.fixture(scope="module")
def twin_lines(nested_dir) -> list[str]:
    """The first 3000 lines of a real tracefs ``trace`` (6.12, TDP MMU), header included."""
    with gzip.open(nested_dir / "tdp-churn-noquirk-small-kt.txt.gz", "rt") as f:
        return [next(f).rstrip("\n") for _ in range(3000)]


def _write(tmp_path: Path, lines: list[str], name: str = "t.txt") -> Path:
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return p


def _frames(data) -> dict[str, pl.DataFrame]:
    return {n: pl.from_arrow(t).drop("seq") for n, t in data.tables.items()}


def _same_tables(a, b) -> None:
    fa, fb = _frames(a), _frames(b)
    assert fa.keys() == fb.keys()
    for name in fa:
        assert fa[name].equals(fb[name]), name


def test_header_is_read(twin_lines, tmp_path):
    data = read_text(_write(tmp_path, twin_lines))
    assert data.info.cpus == 2  # "#P:2" in the header
    assert data.info.source == "text" and data.skipped == []


def test_trace_pipe_without_header_gives_same_tables(twin_lines, tmp_path):
    full = read_text(_write(tmp_path, twin_lines, "trace"))
    pipe = read_text(_write(tmp_path, [ln for ln in twin_lines if not ln.startswith("#")], "trace_pipe"))
    _same_tables(full, pipe)


@pytest.mark.parametrize("kind", ["gzip", "xz", "zstd"])
def test_compressed_text_is_detected_and_read(twin_lines, tmp_path, kind):
    raw = ("\n".join(twin_lines) + "\n").encode()
    packed = {"gzip": gzip.compress, "xz": lzma.compress, "zstd": zstandard.ZstdCompressor().compress}[kind](raw)
    p = tmp_path / "trace.bin"  # the name says nothing: detection is by content
    p.write_bytes(packed)
    data = read(p)
    assert data.info.compression == kind
    _same_tables(data, read_text(_write(tmp_path, twin_lines)))


def test_tgid_column(twin_lines, tmp_path):
    """Constructed: tracefs with ``record-tgid`` prints ``(tgid)`` after the task; none of our recordings has it."""
    with_tgid = [re.sub(r"^(\s*\S+-\d+)(\s+)\[", r"\1 (    268)\2[", ln) if not ln.startswith("#") else ln
                 for ln in twin_lines]
    assert with_tgid != twin_lines
    _same_tables(read_text(_write(tmp_path, with_tgid, "a")), read_text(_write(tmp_path, twin_lines, "b")))


def test_hyphenated_task_names(twin_lines, tmp_path):
    """Constructed: task names like ``tdxvm-13694`` (pid 13714) or ``CPU 0/KVM`` in place of ``kvmlab``."""
    for comm in ("tdxvm-13694", "CPU 0/KVM", "qemu-system-x86"):
        edited = [ln.replace("kvmlab-", f"{comm}-", 1) for ln in twin_lines]
        data = read_text(_write(tmp_path, edited))
        assert data.skipped == []
        comms = set(pl.from_arrow(data.events)["comm"].to_list())
        assert comm in comms and "kvmlab" not in comms


def test_lost_events_lines(twin_lines, tmp_path):
    """Constructed: tracefs prints ``CPU:N [LOST n EVENTS]`` before the next event of that CPU."""
    body = [ln for ln in twin_lines if not ln.startswith("#")]
    at = next(i for i, ln in enumerate(body) if "[001]" in ln and i > 100)
    lost = [*body[:at], "CPU:1 [LOST 1234 EVENTS]", *body[at:]]
    data = read_text(_write(tmp_path, lost))
    gaps = pl.from_arrow(data.gaps)
    assert gaps.select("cpu", "lost").rows() == [(1, 1234)]
    first_after = pl.from_arrow(data.events).filter(pl.col("seq") == gaps["seq"][0])
    assert first_after["cpu"][0] == 1 and data.info.lost_events == {1: 1234}


def test_trace_cmd_events_dropped_line():
    """Real: a ``trace-cmd report`` fixture of ARM-software/trappy with ``CPU:7 [204600 EVENTS DROPPED]``."""
    data = read_text(DATA / "trappy-report-events-dropped.txt")
    assert data.info.cpus == 8 and data.skipped == []
    assert data.info.total_events == 17  # counted by hand
    assert pl.from_arrow(data.gaps).rows() == [(7, 217_975_284_000, 0, 204600)]
    table = data.tables["sched_rq_runnable_load"]
    assert table.column("text").to_pylist() == ["cpu=7 load=127", "cpu=7 load=127"]
    assert META_NULL_PREFIX + b"text" in table.schema.metadata


def test_counter_clock_timestamps(twin_lines, tmp_path):
    """Constructed: with ``trace_clock`` counter/x86-tsc the timestamp is printed as an integer."""
    edited = [re.sub(r"(\s)(\d+)\.(\d{6}):", r"\1\2\3:", ln, count=1) for ln in twin_lines]
    ref = read_text(_write(tmp_path, twin_lines, "a"))
    got = read_text(_write(tmp_path, edited, "b"))
    assert (pl.from_arrow(got.events)["ts"] * 1000 == pl.from_arrow(ref.events)["ts"]).all()


def test_only_prose_is_an_error(tmp_path):
    p = _write(tmp_path, ["Hello,", "here is what I saw yesterday.", "Thanks"])
    with pytest.raises(TraceError, match="no trace events found: the input looks like text without any trace line"):
        read_text(p)


def test_cut_short_gzip_is_an_error(twin_lines, tmp_path):
    packed = gzip.compress(("\n".join(twin_lines)).encode())
    p = tmp_path / "cut.gz"
    p.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(TraceError, match="cannot read gzip text"):
        read(p)


def test_strict_accepts_clean_text(twin_lines, tmp_path):
    assert read_text(_write(tmp_path, twin_lines), strict=True).skipped == []


def test_info_command_on_text(nested_dir):
    from kvmtrace.cli import app

    result = CliRunner().invoke(app, ["info", str(nested_dir / "tdp-boot-small-kt.txt.gz")])
    assert result.exit_code == 0, result.output
    assert "format:       text, gzip" in result.output
    assert "skipped lines: 0" in result.output
    assert re.search(r"kvm_tdp_mmu_spte_changed\s+2590", result.output)  # counts file: 2590


def test_role_word_only_where_the_text_carries_every_bit(tmp_path):
    """Constructed from the printers' format strings (no public trace of these two forms was found):
    a 2.6.3x kernel line prints every role bit of its layout, and the kvm plugin prints the word
    itself for a file of the other byte order; a modern kernel line omits bits, so role is null."""
    prefix = "          qemu-1234  [001] d..1.   100.000001: kvm_mmu_get_page: "
    p = _write(tmp_path, [
        prefix + "sp gfn 3c00 1/4 q0 direct wux !pge nxe root 0 sync new",
        prefix.replace("000001", "000002") + "new sp gfn 3c00 WORD: 00003784 root 0 sync",
        prefix.replace("000001", "000003") + "sp gen 0 gfn 3c00 l4 8-byte q0 direct wux nxe ad root 0 sync new",
    ])
    table = read_text(p).tables["kvm_mmu_get_page"]
    # level 1 | glevels 4 | direct<<16 | access 7<<17 | nxe<<22, worked by hand: 5177364
    assert table.column("role").to_pylist() == [5177364, 0x3784, None]
    assert table.column("gfn").to_pylist() == [0x3C00] * 3
    assert META_NULL_PREFIX + b"role" in table.schema.metadata
