"""trace.dat reader vs. trace-cmd (the oracle) on every real recording we have.

For each file: the same events in the same global order with the same ts (ns), cpu, pid, comm
and event name as ``trace-cmd report -R -t``, and every integer and string field equal to the
value trace-cmd prints (byte arrays against its ``ARRAY[..]`` dump). Wider-element arrays and
bprint's raw argument bytes have no field-exact printed form and are covered in test_tracedat.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import NESTED, PUBLIC, SAMPLES
from tracedat_oracle import OracleReport, assert_matches, run_report

from kvmtrace.parsers.schema import TraceData
from kvmtrace.parsers.tracedat import read_tracedat

#: Above this many events, fields are compared on every k-th event only (all counts and all
#: common columns are still compared) to keep the suite within its time budget.
FULL_FIELD_LIMIT = 120_000

REAL_FILES = sorted(PUBLIC.glob("*.dat")) + sorted(NESTED.glob("*.dat")) + sorted(SAMPLES.glob("*.dat"))


def _ids(paths: list[Path]) -> list[str]:
    return [f"{p.parent.name}/{p.name}" for p in paths]


def test_real_files_found(public_dir: Path, nested_dir: Path) -> None:
    """The parametrised tests below are not silently empty."""
    assert any(public_dir.glob("*.dat")) and any(nested_dir.glob("*.dat"))
    assert {p.parent for p in REAL_FILES} >= {public_dir, nested_dir}


@pytest.fixture(scope="module", params=REAL_FILES, ids=_ids(REAL_FILES))
def decoded(request: pytest.FixtureRequest, trace_cmd: str) -> tuple[TraceData, OracleReport]:
    """One real file read by us and by trace-cmd (shared by the tests below)."""
    return read_tracedat(request.param), run_report(trace_cmd, request.param)


@pytest.mark.oracle
def test_matches_trace_cmd_report(decoded: tuple[TraceData, OracleReport]) -> None:
    data, report = decoded
    assert_matches(data, report, FULL_FIELD_LIMIT)


@pytest.mark.oracle
def test_gaps_match_dropped_markers(decoded: tuple[TraceData, OracleReport]) -> None:
    data, report = decoded
    gaps = data.gaps
    assert gaps.num_rows == len(report.dropped)
    ours = sorted(zip(gaps["cpu"].to_pylist(), gaps["lost"].to_pylist()), key=lambda t: (t[0], t[1] or -1))
    theirs = sorted(report.dropped, key=lambda t: (t[0], t[1] or -1))
    assert ours == theirs
    # Lost events per CPU: the counts the pages stored, or the CPUSTAT total where it says more.
    known: dict[int, int] = {}
    for cpu, n in zip(gaps["cpu"].to_pylist(), gaps["lost"].to_pylist()):
        known[cpu] = known.get(cpu, 0) + (n or 0)
    for s in data.info.cpu_stats:
        if s.lost >= known.get(s.cpu, 0) and s.lost:
            known[s.cpu] = s.lost
    assert dict(data.info.lost_events) == {c: n for c, n in known.items() if n or c in data.info.lost_events}
