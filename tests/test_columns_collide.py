"""Column names never collide: format fields named like a common column get a trailing ``_``.

Real data: ``sched_load.dat`` (public) has ``sched_load_se`` (fields ``cpu``, ``path``, ``comm``,
``pid``, ``load``, ``util``) and ``sched_migrate_task`` (``comm``, ``pid``, ...) with rows, and the
empty tables of ``sched_wakeup`` & co. The renamed columns must hold exactly what
``trace-cmd report -R`` prints for those fields, and polars and Parquet must take every table.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

import polars as pl
import pyarrow.parquet as pq
import pytest
from conftest import PUBLIC, SAMPLES
from tracedat_oracle import printed_names, run_report, split_fields

import kvmtrace
from kvmtrace.dataset import EVENTS_FILE, GAPS_FILE, PART_FILE, partition_dir
from kvmtrace.parsers.schema import COMMON_NAMES, META_FIELD_NAME, field_columns
from kvmtrace.parsers.text.catalog import catalog
from kvmtrace.parsers.tracedat import read_tracedat

SCHED_LOAD = "sched_load.dat"


def test_rule() -> None:
    assert field_columns(["cpu", "path", "comm", "pid", "load"]) == ["cpu_", "path", "comm_", "pid_", "load"]
    assert field_columns(["seq", "ts", "common_flags"]) == ["seq_", "ts_", "common_flags"]
    # A renamed field never takes the name of another field of the same event.
    assert field_columns(["pid", "pid_"]) == ["pid__", "pid_"]
    assert field_columns(["pid_", "pid"]) == ["pid_", "pid__"]
    assert field_columns(["gfn", "level"]) == ["gfn", "level"]


@pytest.fixture(scope="module")
def sched_load(public_dir: Path) -> kvmtrace.Trace:
    return kvmtrace.open(public_dir / SCHED_LOAD)


def test_sched_load_columns(sched_load: kvmtrace.Trace) -> None:
    se = sched_load.arrow("sched_load_se")
    assert se.column_names[len(COMMON_NAMES):] == [
        "common_flags", "common_preempt_count", "cpu_", "path", "comm_", "pid_", "load", "util"]
    assert {f.name: f.metadata for f in se.schema if f.metadata} == {
        "cpu_": {META_FIELD_NAME: b"cpu"}, "comm_": {META_FIELD_NAME: b"comm"}, "pid_": {META_FIELD_NAME: b"pid"}}
    wakeup = sched_load.arrow("sched_wakeup")  # no rows in this file, but the table exists
    assert wakeup.num_rows == 0 and "comm_" in wakeup.column_names and "pid_" in wakeup.column_names
    for name, table in sched_load.data.tables.items():
        assert len(set(table.column_names)) == table.num_columns, name


@pytest.mark.parametrize("event", ["sched_load_se", "sched_migrate_task"])
def test_renamed_columns_hold_what_trace_cmd_prints(event: str, sched_load: kvmtrace.Trace, public_dir: Path,
                                                    trace_cmd: str) -> None:
    table = sched_load.arrow(event)
    assert table.num_rows > 20
    report = run_report(trace_cmd, public_dir / SCHED_LOAD)
    names = printed_names(table)
    renamed = {printed: column for printed, column in names.items() if printed != column}
    assert set(renamed) >= {"comm", "pid"}
    values = {column: table[column].to_pylist() for column in renamed.values()}
    for row, seq in enumerate(table["seq"].to_pylist()):
        printed = split_fields(report.events[seq].body, list(names))
        for field, column in renamed.items():
            want = values[column][row]
            assert printed[field] == str(want), (seq, field, printed[field], want)
    # The common columns stay the record's own: the pid that wrote the event, not the field.
    assert table["pid"].to_pylist() == [report.events[s].pid for s in table["seq"].to_pylist()]
    assert table["pid"].to_pylist() != table["pid_"].to_pylist()


def test_polars_and_parquet_round_trip(sched_load: kvmtrace.Trace, tmp_path: Path) -> None:
    df = sched_load.table("sched_load_se")  # polars raised DuplicateError here
    assert df.columns[-6:] == ["cpu_", "path", "comm_", "pid_", "load", "util"]
    out = tmp_path / "pq"
    written = sched_load.to_parquet(out)
    part = out / partition_dir("sched_load_se") / PART_FILE
    assert part in written
    for path in written:
        back = pq.read_table(path)
        name = path.name if path.parent == out else unquote(path.parent.name.split("=", 1)[1])
        original = {EVENTS_FILE: sched_load.data.events, GAPS_FILE: sched_load.data.gaps}.get(name)
        if original is None:
            original = sched_load.arrow(name)
        assert back.column_names == original.column_names
        assert back.cast(original.schema).equals(original)
        assert pl.read_parquet(path).height == original.num_rows
    back = pq.read_table(part)
    assert back.schema.field("pid_").metadata == {META_FIELD_NAME: b"pid"}


@pytest.mark.parametrize("path", sorted(PUBLIC.glob("*.dat")) + sorted(SAMPLES.glob("*.dat"))[:2],
                         ids=lambda p: p.name)
def test_no_duplicate_columns_in_real_files(path: Path) -> None:
    data = read_tracedat(path)
    for name, table in [("events", data.events), *data.tables.items()]:
        assert len(set(table.column_names)) == table.num_columns, name
        pl.from_arrow(table)


def test_text_catalogue_follows_the_rule() -> None:
    """The text reader names its columns from a fixed catalogue of format-file names; none of
    them collides today, and this keeps it so (a colliding entry must use the rule's name)."""
    specs = catalog().values()
    assert specs, "the text catalogue is empty"
    for spec in specs:
        names = [n for n, _ in spec.fields]
        assert field_columns(names) == names, spec.name
