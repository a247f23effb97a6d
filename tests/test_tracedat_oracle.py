"""trace.dat reader vs. trace-cmd (the oracle) on every real recording we have.

For each file: the same events in the same global order with the same ts (ns), cpu, pid, comm
and event name as ``trace-cmd report -R -t``, and every integer and string field equal to the
value trace-cmd prints. List-valued fields (fixed/dynamic non-char arrays, raw bprint args) are
printed by trace-cmd in forms that are not field-exact and are left to the unit tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from conftest import NESTED, PUBLIC, SAMPLES
from parsers.schema import COMMON_NAMES, META_PRINT_FMT
from parsers.tracedat import read_tracedat
from tracedat_oracle import field_conversions, parse_number, run_report, split_fields

#: Above this many events, fields are compared on every k-th event only (all counts and all
#: common columns are still compared) to keep the suite within its time budget.
FULL_FIELD_LIMIT = 120_000

REAL_FILES = sorted(PUBLIC.glob("*.dat")) + sorted(NESTED.glob("*.dat")) + sorted(SAMPLES.glob("*.dat"))


def _ids(paths: list[Path]) -> list[str]:
    return [f"{p.parent.name}/{p.name}" for p in paths]


def _is_byte_list(typ: pa.DataType) -> bool:
    return (pa.types.is_list(typ) or pa.types.is_fixed_size_list(typ)) and typ.value_type.bit_width == 8


def _compare_fields(table: pa.Table, bodies: list[str], printed_names: list[str], stride: int) -> int:
    """Compare every comparable column of ``table`` with the oracle's printed values."""
    convs = field_conversions(table.schema.metadata.get(META_PRINT_FMT, b"").decode())
    columns = {}
    for name in printed_names:
        col_name = "fmt_addr" if name == "fmt" and "fmt_addr" in table.column_names else name
        col = table.column(col_name)
        if (pa.types.is_integer(col.type) or pa.types.is_boolean(col.type) or pa.types.is_string(col.type)
                or _is_byte_list(col.type)):
            columns[name] = (col.type, col.to_pylist())
    checked = 0
    for i in range(0, table.num_rows, stride):
        printed = split_fields(bodies[i], printed_names)
        for name, (typ, values) in columns.items():
            if name not in printed:
                continue
            want = values[i]
            text = printed[name]
            if text.startswith("ARRAY[") and _is_byte_list(typ):  # libtraceevent's bytes dump
                assert [int(b, 16) for b in text[6:-1].split(", ") if b] == [v & 0xFF for v in want], (
                    f"row {i} {name}: trace-cmd {text!r} != {want}")
            elif pa.types.is_string(typ):
                # trace-cmd ends each event with one newline, merging it with a value's own
                # trailing "\n" (trace_marker writes keep theirs; the column keeps it too).
                if want.endswith("\n") and not text.endswith("\n"):
                    want = want[:-1]
                assert text == want, f"row {i} {name}: trace-cmd {text!r} != {want!r}"
            else:
                number = parse_number(text, convs.get(name))
                if number is None:
                    continue
                bits = typ.bit_width if pa.types.is_integer(typ) else 8
                assert number % (1 << bits) == int(want) % (1 << bits), f"row {i} {name}: trace-cmd {text!r} != {want}"
            checked += 1
    return checked


@pytest.mark.oracle
@pytest.mark.parametrize("path", REAL_FILES, ids=_ids(REAL_FILES))
def test_matches_trace_cmd_report(path: Path, trace_cmd: str) -> None:
    data = read_tracedat(path)
    report = run_report(trace_cmd, path)
    ev = data.events
    assert ev.num_rows == len(report.events), "event count differs from trace-cmd report"
    if ev.num_rows == 0:
        return
    assert np.array_equal(ev["ts"].to_numpy(), np.array([e.ts for e in report.events], np.int64))
    assert ev["cpu"].to_pylist() == [e.cpu for e in report.events]
    assert ev["pid"].to_pylist() == [e.pid for e in report.events]
    assert ev["comm"].to_pylist() == [e.comm for e in report.events]
    names = [n.split(":")[-1] for n in ev["event"].cast(pa.string()).to_pylist()]
    assert names == [e.event for e in report.events]

    stride = 1 if ev.num_rows <= FULL_FIELD_LIMIT else 1 + ev.num_rows // FULL_FIELD_LIMIT
    checked = 0
    for table in data.tables.values():
        if table.num_rows == 0:
            continue
        seqs = table["seq"].to_numpy()
        bodies = [report.events[s].body for s in seqs]
        printed = [c for c in table.column_names
                   if c not in COMMON_NAMES and not c.startswith("common_") and c != "fmt_addr"]
        checked += _compare_fields(table, bodies, printed, stride)
    assert checked > 0 or all(t.num_columns == len(COMMON_NAMES) for t in data.tables.values())


@pytest.mark.oracle
@pytest.mark.parametrize("path", REAL_FILES, ids=_ids(REAL_FILES))
def test_gaps_match_dropped_markers(path: Path, trace_cmd: str) -> None:
    data = read_tracedat(path)
    report = run_report(trace_cmd, path)
    gaps = data.gaps
    assert gaps.num_rows == len(report.dropped)
    ours = sorted(zip(gaps["cpu"].to_pylist(), gaps["lost"].to_pylist()), key=lambda t: (t[0], t[1] or -1))
    theirs = sorted(report.dropped, key=lambda t: (t[0], t[1] or -1))
    assert ours == theirs
