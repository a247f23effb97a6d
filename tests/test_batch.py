"""``kvmtrace batch`` / ``kvmtrace.batch.run`` on the real samples: a local process pool and a
Dask LocalCluster of two workers give the findings and checks of analysing each trace alone;
a damaged trace is one row with its error and the rest complete; the command writes its
folder whole and refuses to overwrite one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from conftest import NESTED, SAMPLES

import kvmtrace
from kvmtrace.batch import BatchResult, engines, run
from kvmtrace.batch.inputs import expand, trace_id
from kvmtrace.batch.summary import findings_by_kernel, render_summary
from kvmtrace.batch.worker import run_one
from kvmtrace.replays import replay
from kvmtrace.report import build_report, render

SAMPLE_FILES = sorted(SAMPLES.glob("*.dat"))
#: the batch also holds an upstream 6.12 TDP recording whose replay has findings (the samples give
#: only informational ones), so "the same findings" compares rows, not two empty tables
BATCH_FILES = [*SAMPLE_FILES, NESTED / "tdp-churn-noquirk-small-kt.dat"]
TRACE_COLUMNS = ["trace_id", "path", "kernel", "host", "uname", "mmu", "zap_policy", "profile"]
FINDING_ORDER = ["trace_id", "seq", "id", "message"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvmtrace", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> Path:
    """A real sample cut short inside its header (its kallsyms section)."""
    path = tmp_path_factory.mktemp("damaged") / "cut.dat"
    path.write_bytes((SAMPLES / "mmio-zapall.dat").read_bytes()[:5000])
    return path


@pytest.fixture(scope="module")
def batch_paths(damaged: Path) -> list[Path]:
    """Every sample, with the damaged file in the middle of the batch."""
    half = len(BATCH_FILES) // 2
    return [*BATCH_FILES[:half], damaged, *BATCH_FILES[half:]]


@pytest.fixture(scope="module")
def alone() -> dict[str, tuple]:
    """Each sample analysed on its own, through the public reader and replay: trace id ->
    (trace info, replay result)."""
    out = {}
    for path in BATCH_FILES:
        trace = kvmtrace.open(path)
        out[trace_id(path)] = (trace.info, replay(trace.data))
    return out


@pytest.fixture(scope="module")
def local(batch_paths) -> BatchResult:
    return run(batch_paths, engine="local", workers=2)


@pytest.fixture(scope="module")
def dask(batch_paths) -> BatchResult:
    pytest.importorskip("distributed", reason="the Dask engine needs the batch extra (in the test extra)")
    return run(batch_paths, engine="dask", workers=2)


def _sorted(df: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    return df.sort(by, nulls_last=True, maintain_order=True)


def test_samples_present():
    assert len(SAMPLE_FILES) >= 14


@pytest.mark.parametrize("engine", ["local", "dask"])
def test_findings_equal_analysing_each_trace_alone(engine, request, alone):
    result: BatchResult = request.getfixturevalue(engine)
    assert result.findings.height > 0, "the samples have findings; an empty table proves nothing"
    for tid, (info, res) in alone.items():
        got = _sorted(result.findings.filter(pl.col("trace_id") == tid), FINDING_ORDER)
        # evidence seqs in seq order, as `kvmtrace analyze` reports them
        want = pl.from_arrow(res.findings).with_columns(pl.col("evidence").list.sort(), trace_id=pl.lit(tid))
        want = _sorted(want, FINDING_ORDER).drop("trace_id")
        assert got.drop(TRACE_COLUMNS).equals(want), tid
        if got.height:
            meta = got.select(TRACE_COLUMNS).unique()
            assert meta.height == 1
            row = meta.row(0, named=True)
            assert (row["kernel"], row["uname"], row["mmu"], row["zap_policy"], row["profile"]) == \
                (info.kernel, info.uname, res.mmu, res.zap_policy, res.profile)
            assert row["host"] == info.uname.split()[1]
        checks = result.checks.filter(pl.col("trace_id") == tid).drop(TRACE_COLUMNS)
        assert checks.equals(pl.from_arrow(res.checks)), tid


def test_local_and_dask_write_the_same_tables(local, dask):
    assert _sorted(local.findings, FINDING_ORDER).equals(_sorted(dask.findings, FINDING_ORDER))
    assert local.checks.equals(dask.checks)
    assert local.whatif.equals(dask.whatif)
    assert local.summary.drop("duration_s").equals(dask.summary.drop("duration_s"))


@pytest.mark.parametrize("engine", ["local", "dask"])
def test_damaged_trace_is_a_row_and_the_rest_complete(engine, request, damaged, alone):
    result: BatchResult = request.getfixturevalue(engine)
    s = result.summary
    assert s.height == len(BATCH_FILES) + 1
    bad = result.failed
    assert bad["path"].to_list() == [str(damaged)]
    assert "truncated at byte 5000" in bad["error"][0]
    assert bad["events"][0] is None and bad["findings"][0] is None
    ok = s.filter(pl.col("status") == "ok")
    assert set(ok["trace_id"]) == set(alone)
    for row in ok.iter_rows(named=True):
        info, res = alone[row["trace_id"]]
        assert row["events"] == info.total_events and row["replayed_events"] == res.events
        assert row["explained_share"] == pytest.approx(res.explained_share)
        sev = res.findings["severity"].to_pylist()
        assert (row["errors"], row["warnings"], row["infos"]) == (
            sev.count("error"), sev.count("warning"), sev.count("info"))
    assert not result.findings.filter(pl.col("path") == str(damaged)).height


def test_fleet_summary_counts_by_id_and_kernel(local):
    table = findings_by_kernel(local)
    kernels = [c for c in table.columns if c not in ("id", "severity")]
    per_id = dict(local.findings.group_by("id").len().iter_rows())
    assert {r["id"]: sum(r[k] for k in kernels) for r in table.iter_rows(named=True)} == per_id
    text = render_summary(local, "text")
    assert text.index("traces that could not be analysed") < text.index("findings by id and kernel")
    assert "truncated at byte 5000" in text
    # every trace here has memslot deletes/moves to price except one: zap-all and zap-slot totals
    assert "what-if totals per zap policy" in text and "zap_slot" in text


def test_folder_expands_to_dat_and_text_traces_only():
    traces = expand([SAMPLES])
    names = [Path(t.path).name for t in traces]
    assert names == sorted(names)
    assert {n for n in names if n.endswith(".dat")} == {p.name for p in SAMPLE_FILES}
    assert {n for n in names if not n.endswith(".dat")} == {p.stem + ".txt.gz" for p in SAMPLE_FILES}
    assert len({t.trace_id for t in traces}) == len(traces)
    assert [t.trace_id for t in expand([SAMPLES])] == [t.trace_id for t in traces]
    # the same file named twice (as a file and through its folder) is analysed once
    assert len(expand([SAMPLE_FILES[0], SAMPLES])) == len(traces)


def test_cli_writes_outdir_and_refuses_a_non_empty_one(tmp_path, damaged):
    picks = [NESTED / "tdp-churn-noquirk-small-kt.dat", SAMPLES / "rom-zapslot.dat", damaged]
    out = tmp_path / "out"
    r = run_cli("batch", *map(str, picks), "-o", str(out), "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert "1 of 3 traces could not be analysed" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "temporary folders left behind"
    assert sorted(p.name for p in out.iterdir()) == [
        "checks.parquet", "findings.parquet", "reports", "summary.parquet", "summary.txt", "whatif.parquet"]
    assert (out / "summary.txt").read_text() == r.stdout
    summary = pl.read_parquet(out / "summary.parquet")
    assert summary["status"].to_list() == ["ok", "ok", "error"]
    ids = summary["trace_id"].to_list()
    assert sorted(p.name for p in (out / "reports").iterdir()) == sorted(f"{i}.json" for i in ids[:2])
    # the per-trace report is the one `kvmtrace analyze --format json` writes for that trace
    trace = kvmtrace.open(str(picks[0]))
    report = build_report(trace.data, replay(trace.data), path=str(picks[0]), version=kvmtrace.__version__)
    want = render(report, "json")
    assert (out / "reports" / f"{ids[0]}.json").read_text() == want
    findings = pq.read_table(out / "findings.parquet")
    assert findings.num_rows == len(json.loads(want)["findings"]) > 0

    again = run_cli("batch", str(picks[1]), "-o", str(out))
    assert again.returncode == 2 and "not empty" in again.stderr and "--force" in again.stderr
    assert pl.read_parquet(out / "summary.parquet").height == 3, "the refused run touched OUTDIR"

    # --force replaces it; the upstream TDP churn has warning findings, so --fail-on warning exits 1
    forced = run_cli("batch", str(picks[0]), "-o", str(out), "--force", "--fail-on", "warning", "--format", "html")
    assert forced.returncode == 1, forced.stderr
    assert forced.stdout == ""
    assert sorted(p.name for p in out.iterdir()) == [
        "checks.parquet", "findings.parquet", "reports", "summary.html", "summary.parquet", "whatif.parquet"]
    assert pl.read_parquet(out / "summary.parquet").height == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_cli_usage_errors_exit_2_and_write_nothing(tmp_path):
    out = tmp_path / "out"
    for args in (["--engine", "spark"], ["--scheduler", "tcp://127.0.0.1:1"], ["--format", "pdf"]):
        r = run_cli("batch", str(SAMPLE_FILES[0]), "-o", str(out), *args)
        assert r.returncode == 2, (args, r.stderr)
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_cli("batch", str(empty), "-o", str(out))
    assert r.returncode == 2 and "no traces found" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def _dies_on_cut_trace(trace, kernel=None, formats=()):
    """``run_one``, except that the process analysing the damaged file dies as an OOM kill would
    end it: no exception, no outcome, a broken process pool."""
    if trace.path.endswith("cut.dat"):
        os._exit(137)
    return run_one(trace, kernel, formats)


def test_a_worker_process_that_dies_costs_only_its_trace(monkeypatch, damaged, alone):
    """The dying process breaks the whole pool and every queued trace with it; those are rerun."""
    names = ["rom-zapall", "churn-zapall", "mmio-zapslot", "dirty-zapall", "churn-thp-zapslot"]
    picks = [SAMPLES / f"{names[0]}.dat", damaged, *(SAMPLES / f"{n}.dat" for n in names[1:])]
    monkeypatch.setattr(engines, "run_one", _dies_on_cut_trace)
    result = run(picks, engine="local", workers=2)
    assert result.summary["status"].to_list() == ["ok", "error", "ok", "ok", "ok", "ok"]
    assert "worker process analysing this trace died" in result.failed["error"][0]
    for path in picks[:1] + picks[2:]:
        tid = trace_id(path)
        assert result.findings.filter(pl.col("trace_id") == tid).height == alone[tid][1].findings.num_rows
        assert result.checks.filter(pl.col("trace_id") == tid).height == alone[tid][1].checks.num_rows > 0


def test_kernel_option_reaches_every_trace(alone):
    path = SAMPLES / "churn-zapslot.dat"
    result = run([path], workers=1, kernel="6.1")
    trace = kvmtrace.open(path)
    want = replay(trace.data, kernel="6.1")
    assert result.summary["profile"].to_list() == [want.profile]
    assert want.profile != alone[trace_id(path)][1].profile, "6.1 must pick another profile than the trace's 6.18"
    assert result.findings.height == want.findings.num_rows


def test_cli_on_a_running_dask_scheduler_with_html_reports(tmp_path, local):
    distributed = pytest.importorskip("distributed", reason="the Dask engine needs the batch extra (in the test extra)")
    picks = [NESTED / "tdp-churn-noquirk-small-kt.dat", SAMPLES / "mmio-zapall.dat"]
    out = tmp_path / "out"
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster:
        r = run_cli("batch", *map(str, picks), "-o", str(out), "--engine", "dask",
                    "--scheduler", cluster.scheduler_address, "--html")
    assert r.returncode == 0, r.stderr
    ids = [trace_id(p) for p in picks]
    assert (sorted(p.name for p in (out / "reports").iterdir())
            == sorted(f"{i}.{x}" for i in ids for x in ("html", "json")))
    html = (out / "reports" / f"{ids[0]}.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "<svg" in html  # the report's plots are drawn
    got = _sorted(pl.read_parquet(out / "findings.parquet"), FINDING_ORDER)
    want = _sorted(local.findings.filter(pl.col("trace_id").is_in(ids)), FINDING_ORDER)
    assert got.height > 0 and got.equals(want)
