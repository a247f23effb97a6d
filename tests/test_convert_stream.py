"""``kvmtrace convert`` streams a trace into a hive-partitioned Parquet dataset.

The dataset (layout in :mod:`kvmtrace.dataset`) must hold exactly what the reader gives, be
readable by polars and pyarrow.dataset as a hive dataset, carry the trace's facts in every file's
metadata, and be written in memory that does not grow with the trace (measured in a child
process on a long hand-made trace against a short one).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from conftest import NESTED, REPO, SAMPLES
from tracedat_builder import repeated_tracedat

from kvmtrace import cli
from kvmtrace.dataset import (
    EVENTS_FILE,
    GAPS_FILE,
    HELD_TABLES,
    PART_FILE,
    ROW_GROUP_ROWS,
    _EventFile,
    dictionary_columns,
    partition_dir,
    read_metadata,
    spill,
    trace_windows,
    write_dataset,
)
from kvmtrace.parsers import read
from kvmtrace.parsers.schema import COMMON_FIELDS
from kvmtrace.version import __version__

LOST = SAMPLES / "churn-lost-zapall.dat"  # a lost-events gap and CPU stats


def _plain(table: pa.Table) -> pa.Table:
    cols = [c.cast(f.type.value_type) if pa.types.is_dictionary(f.type) else c
            for f, c in zip(table.schema, table.columns)]
    return pa.table(cols, names=table.column_names)


def _quiet_read(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read(path)


@pytest.mark.parametrize("path", [LOST, SAMPLES / "churn-thp-zapall.dat", NESTED / "k61tdp-multi4-kt.dat",
                                  SAMPLES / "mmio-zapall.txt.gz"], ids=lambda p: p.name)
def test_convert_holds_what_the_reader_gives(path: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ds"
    assert cli.run(["convert", str(path), str(out)]) == 0
    whole = _quiet_read(path)
    occurring = sorted(n for n, t in whole.tables.items() if t.num_rows)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [EVENTS_FILE, GAPS_FILE, *(partition_dir(n) for n in occurring)])
    for name in occurring:
        back = pq.read_table(out / partition_dir(name) / PART_FILE)
        schema = whole.tables[name].schema
        assert back.schema.metadata == schema.metadata and back.column_names == schema.names, name
        # Parquet names a list's item "element" (the spec's name); the cast only renames it.
        assert _plain(back.cast(schema)).equals(_plain(whole.tables[name])), name
    assert _plain(pq.read_table(out / EVENTS_FILE)).equals(_plain(whole.events))
    assert pq.read_table(out / GAPS_FILE).equals(whole.gaps)
    assert f"({whole.info.total_events} events)" in capsys.readouterr().out


def test_every_file_carries_the_trace_facts(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    assert cli.run(["convert", str(LOST), str(out)]) == 0
    info = _quiet_read(LOST).info
    files = sorted(out.rglob("*.parquet"))
    assert len(files) > 3
    for f in files:
        facts = read_metadata(f)
        assert facts["kvmtrace_version"] == __version__
        assert (facts["kernel"], facts["clock"], facts["cpus"]) == (info.kernel, info.clock, info.cpus)
        assert facts["lost_events"] == {str(c): n for c, n in info.lost_events.items()} != {}
        assert [s["cpu"] for s in facts["cpu_stats"]] == [s.cpu for s in info.cpu_stats] != []
        assert facts["event_counts"] == dict(info.event_counts)
    raw = pq.read_metadata(out / EVENTS_FILE).metadata
    assert json.loads(raw[b"kvmtrace.trace"])["first_ts"] == info.first_ts


def test_polars_and_pyarrow_read_the_hive_dataset(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    assert cli.run(["convert", str(SAMPLES / "churn-zapslot.dat"), str(out)]) == 0
    whole = _quiet_read(SAMPLES / "churn-zapslot.dat")
    common = [f.name for f in COMMON_FIELDS if f.name != "comm"]
    # polars: every event's common columns, the event name from the folder.
    lazy = pl.scan_parquet(f"{out}/event=*/*.parquet", hive_partitioning=True, extra_columns="ignore")
    got = lazy.select([*common, "event"]).collect().sort("seq")
    events = pl.from_arrow(_plain(whole.events)).select([*common, "event"])
    assert got.to_dicts() == events.to_dicts()
    # polars: one event, all of its columns.
    one = pl.scan_parquet(out / partition_dir("kvm_mmu_set_spte")).collect()
    assert one.height == whole.tables["kvm_mmu_set_spte"].num_rows and "spte" in one.columns
    # pyarrow.dataset: the same, with the partition key as a column.
    schema = pa.schema([*COMMON_FIELDS, pa.field("event", pa.string())])
    dataset = ds.dataset(out, format="parquet", partitioning="hive", schema=schema,
                         ignore_prefixes=["events.", "gaps.", ".", "_"])
    table = dataset.to_table(columns=[*common, "event"]).sort_by("seq")
    assert table.to_pylist() == events.to_dicts()
    spte = dataset.to_table(filter=ds.field("event") == "kvm_mmu_set_spte", columns=["seq"])
    assert spte.num_rows == whole.tables["kvm_mmu_set_spte"].num_rows


def test_row_groups_follow_the_windows(tmp_path: Path) -> None:
    path = SAMPLES / "churn-thp-zapall.dat"
    (tmp_path / "ds").mkdir()
    info = write_dataset(trace_windows(path, events_per_window=10_000), tmp_path / "ds", row_group_rows=20_000)
    meta = pq.read_metadata(tmp_path / "ds" / EVENTS_FILE)
    assert meta.num_row_groups == math.ceil(info.total_events / 10_000)
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups - 1)] == [10_000] * (meta.num_row_groups - 1)
    biggest = max(info.event_counts, key=info.event_counts.get)
    part = pq.read_metadata(tmp_path / "ds" / partition_dir(biggest) / PART_FILE)
    assert part.num_rows == info.event_counts[biggest] > 20_000
    sizes = [part.row_group(i).num_rows for i in range(part.num_row_groups)]
    assert all(20_000 <= n < 20_000 + 10_000 for n in sizes[:-1]) and 0 < sizes[-1] < 20_000 + 10_000, sizes


def test_a_rare_event_is_buffered_in_few_tables(tmp_path: Path) -> None:
    """An event with far fewer rows than a row group is held until the end; its windows' slivers
    are merged as they come, so the buffer is a handful of tables, not one per window."""
    path = SAMPLES / "churn-thp-zapall.dat"
    windows = list(trace_windows(path, events_per_window=400))
    seen = Counter(name for w in windows for name, t in w.tables.items() if t.num_rows)
    name = max(seen, key=lambda n: (seen[n], -sum(w.tables[n].num_rows for w in windows if n in w.tables)))
    assert seen[name] > 4 * HELD_TABLES
    part = _EventFile(tmp_path / partition_dir(name) / PART_FILE, windows[0].tables[name].schema)
    for w in windows:
        if name in w.tables and w.tables[name].num_rows:
            part.add(w.tables[name], ROW_GROUP_ROWS)
            assert len(part.held) <= HELD_TABLES
    part.flush(ROW_GROUP_ROWS)
    part.writer.close()
    whole = _quiet_read(path).tables[name]
    assert pq.read_metadata(part.path).num_row_groups == 1
    assert _plain(pq.read_table(part.path).cast(whole.schema)).equals(_plain(whole))


def test_buffers_past_the_byte_budget_are_written_early(tmp_path: Path) -> None:
    """With a small budget for all events' buffers the largest are written before they reach a
    row group: more, smaller row groups, and the same rows."""
    path = SAMPLES / "churn-thp-zapall.dat"
    out = tmp_path / "ds"
    out.mkdir()
    budget = 256 << 10
    info = write_dataset(trace_windows(path, events_per_window=2000), out, held_bytes=budget)
    whole = _quiet_read(path)
    early = 0
    for name, table in whole.tables.items():
        if not table.num_rows:
            continue
        meta = pq.read_metadata(out / partition_dir(name) / PART_FILE)
        early += meta.num_row_groups > 1 and table.num_rows < ROW_GROUP_ROWS
        back = pq.read_table(out / partition_dir(name) / PART_FILE).cast(table.schema)
        assert _plain(back).equals(_plain(table)), name
    assert early >= 3 and info.total_events == whole.info.total_events
    # spill() itself: the largest buffers go first, until the rest fit.
    names = ("kvm_mmu_paging_element", "kvm_mmu_set_spte", "kvm_fpu")
    (tmp_path / "spill").mkdir()
    parts = [_EventFile(tmp_path / "spill" / partition_dir(n) / PART_FILE, whole.tables[n].schema) for n in names]
    for part, n in zip(parts, names):
        part.add(whole.tables[n].slice(0, 5000), ROW_GROUP_ROWS)
    sizes = sorted(p.nbytes for p in parts)
    spill(parts, sizes[0] + sizes[1], ROW_GROUP_ROWS)
    assert sorted(p.nbytes for p in parts) == [0, sizes[0], sizes[1]]
    for part in parts:
        part.writer.close()


def test_only_repeating_columns_get_a_parquet_dictionary(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    assert cli.run(["convert", str(SAMPLES / "churn-zapslot.dat"), str(out)]) == 0
    for f in [out / EVENTS_FILE, out / partition_dir("kvm_mmu_set_spte") / PART_FILE]:
        meta = pq.read_metadata(f)
        chunks = [meta.row_group(0).column(i) for i in range(meta.num_columns)]
        with_dict = {c.path_in_schema for c in chunks if c.has_dictionary_page}
        assert "comm" in with_dict and not {"seq", "ts"} & with_dict, (f, with_dict)
        assert with_dict == set(dictionary_columns(pq.read_schema(f)))


def test_a_name_of_a_second_system_is_percent_encoded() -> None:
    assert partition_dir("sched:sched_switch") == "event=sched%3Asched_switch"
    assert partition_dir("kvm_mmu_set_spte") == "event=kvm_mmu_set_spte"


_CHILD = """
import pathlib, sys, warnings
warnings.simplefilter("ignore")
from kvmtrace.dataset import trace_windows, write_dataset
from kvmtrace.parsers import read
if sys.argv[3] == "stream":
    out = pathlib.Path(sys.argv[2]); out.mkdir()
    small = 1 << 14  # window and row group; the buffers' budget 4 MiB: both traces reach the steady state
    windows = trace_windows(sys.argv[1], events_per_window=small)
    events = write_dataset(windows, out, row_group_rows=small, held_bytes=4 << 20).total_events
else:
    events = read(sys.argv[1]).info.total_events
with open("/proc/self/status") as f:
    print(events, next(line.split()[1] for line in f if line.startswith("VmHWM:")))
"""


def _peak_kb(trace: Path, out: Path, mode: str = "stream") -> tuple[int, int]:
    """Events and peak RSS (kB) of one conversion (or whole-file read) in a fresh process. The peak
    is the process's own high-water mark (``VmHWM``): ``getrusage``'s ``ru_maxrss`` in a child
    starts from the parent's peak (Linux keeps it across fork and exec), so under pytest it would
    report pytest's peak for both traces and hide any growth."""
    done = subprocess.run([sys.executable, "-c", _CHILD, str(trace), str(out), mode], capture_output=True,
                          text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    events, peak = done.stdout.split()
    return int(events), int(peak)


def test_memory_does_not_grow_with_the_trace(tmp_path: Path) -> None:
    """A trace 6 times longer (3.1 M events, hand-made from a real recording's pages) converts in
    about the same peak memory, while the same measurement sees the whole-file read of it grow by
    ~100 bytes per extra event. Window, row groups and the buffers' budget are scaled down so that
    the short trace (0.5 M events) already fills them: with the defaults the buffers fill over the
    first ~3 M events (bench/RESULTS.md, streaming convert)."""
    src = SAMPLES / "churn-thp-zapall.dat"
    short, long = tmp_path / "short.dat", tmp_path / "long.dat"
    repeated_tracedat(src, short, 4, version=6, compression="none")
    repeated_tracedat(src, long, 24, version=6, compression="none")
    n_short, peak_short = _peak_kb(short, tmp_path / "a")
    n_long, peak_long = _peak_kb(long, tmp_path / "b")
    assert n_long == 6 * n_short > 3_000_000
    growth = (peak_long - peak_short) * 1024
    assert growth < 24 << 20, f"peak grew by {growth >> 20} MiB for {n_long - n_short} more events"
    _, whole_short = _peak_kb(short, tmp_path / "c", "whole")
    _, whole_long = _peak_kb(long, tmp_path / "d", "whole")
    assert (whole_long - whole_short) * 1024 > 150 << 20, "the measurement does not see a whole-file read grow"
