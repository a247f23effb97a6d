"""``kvmtrace.Analysis``: everything the CLI prints is one call on it, with the same answer.

Oracles: the replay itself (``kvmtrace.replays.replay`` on the reader's data) for the unfiltered
analysis, the command line's own output for the reports, and the trace's events (their ``ts``
and ``cpu``) for what a selection keeps.
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys

import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import NESTED
from matplotlib.figure import Figure

import kvmtrace
from kvmtrace.parsers.errors import TraceError
from kvmtrace.replays import replay

CHURN = NESTED / "tdp-churn-noquirk-small-kt.dat"  # upstream 6.12 TDP churn: its replay has warnings


@pytest.fixture(scope="module")
def trace() -> kvmtrace.Trace:
    return kvmtrace.open(CHURN)


@pytest.fixture(scope="module")
def analysis(trace) -> kvmtrace.Analysis:
    return trace.analyze()


def test_an_unfiltered_analysis_is_the_replay(trace, analysis):
    direct = replay(trace.data)
    assert analysis.findings.equals(pl.from_arrow(direct.findings))
    assert analysis.checks.equals(pl.from_arrow(direct.checks))
    for name in analysis.table_names:
        if name.startswith("ledger"):
            continue  # not a replay table (tests/test_analysis_tables.py)
        expected = getattr(direct, name) if hasattr(direct, name) else direct.summaries[name]
        # the replay's columns first and unchanged; the notebook's joined columns (ts, vcpu...) after
        assert analysis.table(name, backend="arrow").select(expected.column_names).equals(expected)


def test_report_is_what_the_command_prints(analysis):
    run = subprocess.run([sys.executable, "-m", "kvmtrace", "analyze", str(CHURN), "--format", "json"],
                         check=False, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert json.loads(analysis.report("json")) == json.loads(run.stdout)
    assert "dangling_spte" in analysis.report("text") and "dangling\\_spte" in analysis.report("markdown")
    assert "<svg" in analysis.report("html") and "<svg" not in analysis.report("html", figures=False)
    with pytest.raises(TraceError, match="unknown report format 'pdf'"):
        analysis.report("pdf")


def test_notebook_views(analysis):
    html = analysis._repr_html_()
    assert "Checks" in html and "fault_in_update_window" in html
    figures = analysis.figures()
    assert len(figures) == 3 and all(isinstance(f, Figure) for f in figures)
    assert f"{analysis.findings.height} warning" in repr(analysis)


def test_diff_with_itself_changes_nothing(analysis):
    doc = json.loads(analysis.diff(analysis, "json"))
    assert not any(row["changed"] for row in doc["checks"]["rows"])


def test_fail_on_thresholds(analysis):
    severities = set(analysis.findings["severity"])
    assert severities == {"warning"}
    assert not analysis.failed("error") and analysis.failed("warning") and analysis.failed("info")


def test_pandas_through_arrow_keeps_u64_and_shares_buffers(trace, analysis):
    spte = trace.to_pandas("kvm_mmu_set_spte")
    arrow = trace.arrow("kvm_mmu_set_spte")
    assert spte["spte"].dtype == pd.ArrowDtype(pa.uint64())
    assert spte["spte"].tolist() == arrow["spte"].to_pylist()
    shared = spte["spte"].array.__arrow_array__()
    assert shared.chunks[0].buffers()[1].address == arrow["spte"].chunks[0].buffers()[1].address  # no copy
    assert len(trace.to_pandas()) == trace.info.total_events
    changes = analysis.table("spte_changes", backend="pandas")
    assert changes["new_spte"].dtype == pd.ArrowDtype(pa.uint64())
    assert len(changes) == analysis.table("spte_changes").height


def _busiest_cpu(trace) -> int:
    counts = trace.events.group_by("cpu").len().sort("len", descending=True)
    return int(counts["cpu"][0])


def test_cpu_selection_reports_only_that_cpu_of_the_whole_replay(trace, analysis):
    cpu = _busiest_cpu(trace)
    other = next(c for c in set(trace.events["cpu"]) if c != cpu)
    for chosen in (cpu, other):
        picked = trace.analyze(cpus=[chosen])
        assert picked.replay is not analysis.replay and picked.replay.events == analysis.replay.events
        expected = analysis.findings.filter(pl.col("cpu") == chosen)
        assert picked.findings.equals(expected)
        counts = dict(zip(picked.checks["id"], picked.checks["findings"]))
        assert counts == dict(expected.group_by("id").len().iter_rows()) | {
            i: 0 for i in picked.checks["id"] if i not in set(expected["id"])}
        seqs = set(trace.events.filter(pl.col("cpu") == chosen)["seq"])
        assert set(picked.table("spte_changes")["seq"]) <= seqs
        assert f"only events on CPU {chosen}" in picked.selection_text
        assert (picked.selection.cpus, picked.selection.events) == ((chosen,), len(seqs))
        assert (picked.selection.since, picked.selection.until) == (None, None) and not picked.selection.everything


def test_a_failed_check_with_no_finding_in_the_window_says_where_they_are(trace, analysis):
    first = analysis.findings["ts"].min()
    before = trace.analyze(until=(first - 1000) / 1e9)
    assert before.findings.height == 0
    row = before.checks.filter(pl.col("id") == "fault_in_update_window").row(0, named=True)
    assert row["status"] == "passed"
    assert row["reason"] == f"no finding in the selection ({analysis.findings.height} outside it)"
    assert any(limit.startswith("reported: only events from start to") for limit in before.model.limits)


def test_time_selection_keeps_lifetimes_that_overlap_it(trace, analysis):
    ts = trace.events["ts"]
    lo, hi = ts.min(), ts.quantile(0.02)  # the start: most pages are made later
    window = trace.analyze(since=lo / 1e9, until=hi / 1e9)
    seqs = trace.events.filter((pl.col("ts") >= round(lo)) & (pl.col("ts") <= round(hi)))["seq"]
    first, last = seqs.min(), seqs.max()
    pages = analysis.table("shadow_pages")
    alive = pages.filter((pl.col("first_seq").fill_null(-1) <= last) & (pl.col("zap_seq").fill_null(2**62) >= first))
    assert window.table("shadow_pages").equals(alive)
    assert 0 < alive.height < pages.height


def test_bad_selections_are_trace_errors_naming_the_parameters(trace):
    with pytest.raises(TraceError) as err:
        trace.analyze(since=2.0, until=1.0)
    assert str(err.value).endswith("swap since and until")
    with pytest.raises(TraceError) as err:
        trace.analyze(cpus=63)
    assert "only events on CPU 63" in str(err.value) and "--" not in str(err.value)


def _qemu_lines(dat) -> list[str]:
    """QEMU's kvm_set_user_memory lines as the lab wrote them to trace_marker, in -trace log form."""
    with gzip.open(dat.with_suffix(".txt.gz"), "rt", errors="replace") as f:
        text = f.read()
    found = re.findall(r"-(\d+)\s+\[\d{3}\].*?\s(\d+\.\d{6}): tracing_mark_write: (kvm_set_user_memory .*)$", text,
                       re.MULTILINE)
    return [f"{pid}@{ts}:{line}" for pid, ts, line in found]


def test_side_inputs_as_objects_or_files(trace, tmp_path):
    """The layout and the QEMU log can be Python objects as well as files, with the same result."""
    layout = {"slots": [{"slot": 0, "gpa": "0x0", "size": hex(0xA0000)}]}
    result = trace.analyze(memslots=layout).replay
    created = result.memslots.filter(pc.is_null(result.memslots["seq"])).to_pylist()
    assert [(r["slot"], r["base_gfn"], r["npages"]) for r in created] == [(0, 0, 0xA0)]
    lines = _qemu_lines(CHURN)
    log = tmp_path / "qemu.log"
    log.write_text("\n".join(lines) + "\n")
    from_lines, from_file = trace.analyze(qemu_log=lines), trace.analyze(qemu_log=log)
    assert from_lines.replay.memslots.equals(from_file.replay.memslots)
    assert from_lines.replay.memslots.num_rows >= len({ln.split("Slot#")[1].split()[0] for ln in lines}) > 0


def test_version_is_the_package_metadata():
    from importlib.metadata import version

    assert kvmtrace.__version__ == version("kvmtrace")
