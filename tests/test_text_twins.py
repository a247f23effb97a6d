"""Every real recording with a kernel text twin: the text parses to the binary reader's tables.

Oracle: the trace.dat of the same records, read by ``kvmtrace.parsers.tracedat`` (itself checked against
``trace-cmd report``), and the recording's ``.counts.txt`` (counted by trace-cmd and from the
text independently). Text timestamps are µs (the kernel rounds: ``(ns + 500) / 1000``), so rows are matched by
(µs, CPU, order within the CPU); inside one CPU both files keep the ring buffer's order, so this pairing is exact.
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest
from conftest import NESTED, SAMPLES

from kvmtrace.parsers.schema import META_NULL_PREFIX
from kvmtrace.parsers.text import read_text
from kvmtrace.parsers.text.pages import ROLE_COLUMNS
from kvmtrace.parsers.tracedat import read_tracedat

#: Columns text adds beyond the format file's (checked against the binary in test_text_roles.py).
DERIVED = {name for name, _ in ROLE_COLUMNS}
TWINS = sorted(p for d in (NESTED, SAMPLES) for p in d.glob("*.txt.gz") if p.with_name(p.name[:-7] + ".dat").exists())


def _counts(path: Path) -> dict[str, int]:
    """The ``ftrace text`` section of a ``.counts.txt`` (event -> count)."""
    text = path.read_text()
    section = text.split("## ftrace text", 1)[1].split("trace_marker lines", 1)[0]
    return {m[2]: int(m[1]) for m in re.finditer(r"^\s+(\d+)\s+(\w+)\s*$", section, re.M)}


@pytest.fixture(scope="module", params=TWINS, ids=lambda p: p.name)
def twin(request):
    txt: Path = request.param
    dat = txt.with_name(txt.name[:-7] + ".dat")
    return txt, read_text(txt, compression="gzip"), read_tracedat(dat)


def _paired(table, round_to_us: bool) -> pl.DataFrame:
    """Rows keyed for pairing: (µs, CPU, rank within that µs and CPU)."""
    df = pl.from_arrow(table)
    us = ((pl.col("ts") + 500) // 1000) if round_to_us else pl.col("ts") // 1000
    return df.with_columns(_us=us).sort(["_us", "cpu", "seq"])


def assert_same_as_binary(text, binary, ns_timestamps: bool = False) -> None:
    """Every column the text carries equals the binary reader's value; every null column says why."""
    assert dict(text.info.event_counts) == {k: v for k, v in binary.info.event_counts.items() if v}
    for name, ttable in text.tables.items():
        t = _paired(ttable, round_to_us=False)
        b = _paired(binary.tables[name], round_to_us=not ns_timestamps)
        assert t.height == b.height, name
        expected_ts = b["ts"] if ns_timestamps else b["_us"] * 1000
        assert (t["ts"] == expected_ts).all(), f"{name}: timestamps differ beyond µs rounding"
        for col in ("cpu", "pid", "comm"):
            assert (t[col] == b[col]).all(), f"{name}.{col}"
        meta = ttable.schema.metadata or {}
        for col in ttable.schema.names[5:]:
            if col == "text" or col in DERIVED:
                continue
            tv = t[col]
            if tv.null_count():
                assert META_NULL_PREFIX + col.encode() in meta, f"{name}.{col} has nulls without a reason"
            mask = tv.is_not_null()
            if mask.any():
                bv = b[col].cast(tv.dtype)
                diff = (tv.filter(mask) != bv.filter(mask)).sum()
                assert diff == 0, f"{name}.{col}: {diff} values differ from the binary reader"


def test_twins_exist():
    assert len(TWINS) >= 6, "the upstream nested recordings alone have six text twins"


def test_counts_match_counts_file(twin):
    txt, text, _binary = twin
    assert text.skipped == []
    counts_file = txt.with_name(txt.name[:-7] + ".counts.txt")
    if counts_file.exists():
        expected = _counts(counts_file)
        # The counts file names trace_marker lines as tracefs shows them.
        expected["print"] = expected.pop("tracing_mark_write", 0) + expected.pop("print", 0)
        assert {k: v for k, v in text.info.event_counts.items()} == {k: v for k, v in expected.items() if v}


def test_fields_equal_binary(twin):
    _, text, binary = twin
    assert_same_as_binary(text, binary)


def test_order_matches_binary_up_to_us_ties(twin):
    _, text, binary = twin
    t = pl.from_arrow(text.events).select("ts", "cpu", pl.col("event").cast(pl.String))
    ts_us = ((pl.col("ts") + 500) // 1000 * 1000).alias("ts")  # the text prints microseconds
    b = pl.from_arrow(binary.events).select(ts_us, "cpu", pl.col("event").cast(pl.String))
    assert t.height == b.height
    # Same multiset of events per (µs, CPU), and the same sequence within each CPU.
    for cpu in t["cpu"].unique().to_list():
        assert t.filter(pl.col("cpu") == cpu).equals(b.filter(pl.col("cpu") == cpu)), f"cpu {cpu}"
    assert (t["ts"].diff().drop_nulls() >= 0).all(), "seq must follow timestamps"


def test_gaps_match_what_the_text_shows(twin):
    """Lost-event markers: as many as the counts file found in the text, each also in the binary.

    A tracefs ``trace`` dump shows a ``LOST`` line only for events lost while it was read, so a
    recording that overran before the dump has gaps in trace.dat and none in its text.
    """
    txt, text, binary = twin
    tg = pl.from_arrow(text.gaps).select("cpu", "lost")
    counts_file = txt.with_name(txt.name[:-7] + ".counts.txt")
    if counts_file.exists():
        section = counts_file.read_text().split("## ftrace text", 1)[1]
        counts = re.search(r"lost_event_markers (\d+) lost_events_reported (\d+)", section)
        markers, reported = map(int, counts.groups())
        assert tg.height == markers
        assert sum(text.info.lost_events.values()) == reported
    bg = pl.from_arrow(binary.gaps).select("cpu", "lost")
    assert tg.join(bg, on=["cpu", "lost"], how="anti", nulls_equal=True).height == 0


def test_key_mmu_columns_fully_decoded(twin):
    """The columns the replay keys on are never null in modern kernel text."""
    _, text, _ = twin
    required = {
        "kvm_tdp_mmu_spte_changed": ("gfn", "old_spte", "new_spte", "level", "as_id"),
        "kvm_mmu_set_spte": ("gfn", "spte", "sptep", "level", "r", "x", "u"),
        "kvm_mmu_get_page": ("mmu_valid_gen", "gfn", "root_count", "unsync", "created"),
        "kvm_mmu_prepare_zap_page": ("mmu_valid_gen", "gfn", "root_count", "unsync"),
        "mark_mmio_spte": ("gfn", "access", "gen"),
        "kvm_exit": ("exit_reason", "isa", "guest_rip", "info1", "info2", "vcpu_id"),
        "print": ("buf",),
    }
    for name, cols in required.items():
        if name in text.tables:
            for col in cols:
                assert text.tables[name].column(col).null_count == 0, f"{name}.{col}"


def test_per_event_row_order_equals_binary(twin):
    """The text keeps the kernel's merge order: every event's rows come in the trace.dat's order.

    µs timestamps tie across CPUs (three vCPUs faulting at once); sorting by (µs, CPU) swapped
    such rows (row 436 of kvm_mmu_pagetable_walk in tdp-multi3-kt). Rows are compared in seq
    order, on CPU, task, µs and every value the text carries.
    """
    _, text, binary = twin
    assert not any("not in time order" in w for w in text.info.warnings)
    for name, ttable in text.tables.items():
        t = pl.from_arrow(ttable)
        b = pl.from_arrow(binary.tables[name]).with_columns(ts=(pl.col("ts") + 500) // 1000 * 1000)
        assert t["seq"].is_sorted() and b["seq"].is_sorted()
        cols = ["ts", "cpu", "pid"] + [c for c in ttable.schema.names[5:]
                                       if c != "text" and c not in DERIVED and t[c].null_count() == 0]
        bt = b.select([b[c].cast(t[c].dtype) for c in cols])
        differ = t.select(cols).with_row_index("row").join(bt.with_row_index("row"), on="row", suffix="_b")
        bad = differ.filter(pl.any_horizontal([pl.col(c) != pl.col(f"{c}_b") for c in cols]))
        assert bad.height == 0, f"{name}: first row out of order: {bad.row(0, named=True)}"
