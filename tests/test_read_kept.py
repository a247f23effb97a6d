"""A read for one analysis gives the same analysis as a read of everything.

``kvmtrace.open(path, keep="analysis")`` (what ``kvmtrace analyze`` uses) reads a trace.dat in
windows, holds only the rows of the events the replay and report read
(:mod:`kvmtrace.replays.needs`), digests the rest window by window (:mod:`kvmtrace.replays.digest`)
and keeps the ``events`` table on disk (:mod:`kvmtrace.parsers.tracedat.spill`). Every real
recording is read that way with windows of 1000 events and runs of 2 pages, so that every digest
state (a thread's last walk, its last walk-or-fault, a CPU's last event before a gap) crosses
window boundaries, and must give what the full read gives: the same ``events`` table, the same
kept tables, and the same replay tables, findings, checks and reports. Files cut short (a copy
stopped half-way) add lost-event windows and the cut-short tail.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import DATA, NESTED, SAMPLES

import kvmtrace
from kvmtrace.api import Trace
from kvmtrace.parsers import read
from kvmtrace.parsers.errors import TraceError
from kvmtrace.parsers.schema import TraceData
from kvmtrace.parsers.tracedat import spill
from kvmtrace.parsers.tracedat.reader import read_kept
from kvmtrace.replays.digest import Digest, DigestBuilder, digest_of
from kvmtrace.replays.leaf_proof import leaf_evidence
from kvmtrace.replays.needs import decodes, keeps
from kvmtrace.replays.profiles import profile_for
from kvmtrace.replays.replay import _timeline, replay
from kvmtrace.replays.results import ReplayResult

RECORDINGS = sorted([*SAMPLES.glob("*.dat"), *NESTED.glob("*.dat"), *(DATA / "host").glob("*.dat")])
TABLES = ("shadow_pages", "spte_changes", "memslots", "findings", "checks", "unexplained", "whatif")
#: Samples without their last bytes (the reader salvages the complete pages: a cut-short tail
#: window) and how many bytes are cut (as tests/test_replay_cuts.py cuts them).
CUT = (("churn-zapslot", 80_000), ("churn-thp-zapall", 40_000), ("multi-zapslot", 200_000))


def _kept(path: Path) -> tuple[TraceData, Digest]:
    builder = DigestBuilder()
    data = read_kept(path, keeps, builder.add, decode=decodes, events_per_window=1000, pages_per_run=2)
    return data, builder.finish()


def _quiet_read(path: Path) -> TraceData:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read(path)


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.stem)
def test_kept_read_is_the_full_read_less_the_left_out_rows(path: Path) -> None:
    full = read(path)
    kept, _ = _kept(path)
    assert kept.events.equals(full.events)  # every row, same dictionaries, though it lies on disk
    assert kept.events.column("seq").num_chunks == 1
    assert list(kept.tables) == list(full.tables)
    occurring = {name for name, t in full.tables.items() if t.num_rows}
    assert kept.left_out == {name for name in occurring if not keeps(name, _system(full, name))}
    for name, table in kept.tables.items():
        if name in kept.left_out:
            assert table.num_rows == 0 and table.schema.equals(full.tables[name].schema)
            with pytest.raises(KeyError, match=r"kvmtrace\.open"):
                kept.table(name)
        else:
            assert table.equals(full.tables[name]), name
    assert kept.info == full.info
    assert kept.gaps.equals(full.gaps)


def _system(data: TraceData, name: str) -> str | None:
    meta = data.tables[name].schema.metadata or {}
    system = meta.get(b"kvmtrace.system")
    return system.decode() if system else None


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.stem)
def test_digest_in_windows_is_the_digest_of_the_whole(path: Path) -> None:
    full = read(path)
    _, windowed = _kept(path)
    whole = digest_of(full, events_per_window=full.events.num_rows + 1)
    _assert_same_digest(windowed, whole)
    _assert_same_digest(digest_of(full, events_per_window=777), whole)


def _assert_same_digest(got: Digest, want: Digest) -> None:
    assert (got.walker_events, got.faults, got.faults_after_walks, got.events, got.cpu_last) == \
        (want.walker_events, want.faults, want.faults_after_walks, want.events, want.cpu_last)
    assert (got.entry_pairs, got.exit_isas) == (want.entry_pairs, want.exit_isas)
    assert np.array_equal(got.print_seq, want.print_seq)
    assert np.array_equal(got.walk_before_print, want.walk_before_print)
    assert sorted(zip(got.gap_lo.tolist(), got.gap_hi.tolist())) == sorted(zip(want.gap_lo.tolist(),
                                                                              want.gap_hi.tolist()))


def test_digest_sees_walks_before_prints_and_faults() -> None:
    """Not vacuous: the recordings above have memslot lines whose window starts after a walk of
    their thread (the lab's vCPU thread issues its own ioctls), and faults after walks."""
    data = read(SAMPLES / "mmio-zapslot.dat")
    digest = digest_of(data)
    assert digest.walker_events and (digest.walk_before_print >= 0).any()
    assert digest.faults and digest.faults_after_walks == digest.faults  # shadow paging walks before each fault
    profile = profile_for(data.info.kernel)
    with_walks, _ = _timeline(data, profile, None, None, digest)
    without, _ = _timeline(data, profile, None, None, Digest(walker_events=digest.walker_events))
    assert [c.window_start for c in with_walks.changes] != [c.window_start for c in without.changes]
    tdp = digest_of(read(NESTED / "tdp-multi3-kt.dat"))
    assert tdp.faults and tdp.faults_after_walks < tdp.faults
    assert len(tdp.entry_pairs) == 3 and tdp.exit_isas  # three vCPU threads; one vendor's exits


def test_kept_read_leaves_out_the_exits_and_keeps_what_they_tell() -> None:
    """kvm_entry and kvm_exit (most of a recording made with -e kvm) are digested, not kept:
    the vCPU threads and the hardware-fault evidence come out as from the full read."""
    path = NESTED / "k61tdp-multi4-kt.dat"
    data, digest = _kept(path)
    assert {"kvm_entry", "kvm_exit", "kvm_userspace_exit"} <= data.left_out
    full = read(path)
    want = replay(full)
    assert replay(data, digest=digest).vcpus == want.vcpus and want.vcpus.source == "kvm_entry vcpu_id"
    assert leaf_evidence(data, digest).faults_unread == leaf_evidence(full, digest_of(full)).faults_unread == ""


def _analysis(trace: Trace) -> tuple[ReplayResult, dict[str, str]]:
    analysis = trace.analyze()
    return analysis.replay, {fmt: analysis.report(fmt) for fmt in ("text", "json", "markdown")}


def _assert_same_analysis(kept: Trace, full: Trace) -> None:
    got, got_reports = _analysis(kept)
    want, want_reports = _analysis(full)
    for name in TABLES:
        assert getattr(got, name).equals(getattr(want, name)), name
    for name in want.summaries:
        assert got.summaries[name].equals(want.summaries[name]), name
    assert (got.events, got.explained_events, got.mmu, got.zap_policy, got.assumptions, got.limits, got.vcpus) == \
        (want.events, want.explained_events, want.mmu, want.zap_policy, want.assumptions, want.limits, want.vcpus)
    assert got_reports == want_reports


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.stem)
def test_analysis_of_a_kept_read_is_the_full_analysis(path: Path) -> None:
    data, digest = _kept(path)
    _assert_same_analysis(Trace(data, str(path), digest), Trace(read(path), str(path)))


@pytest.mark.parametrize("stem,cut", CUT)
def test_analysis_of_a_file_cut_short_is_the_full_analysis(stem: str, cut: int, tmp_path: Path) -> None:
    raw = (SAMPLES / f"{stem}.dat").read_bytes()
    path = tmp_path / f"{stem}.dat"
    path.write_bytes(raw[: len(raw) - cut])
    full = _quiet_read(path)
    assert full.info.cut_short
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data, digest = _kept(path)
    assert data.events.equals(full.events) and data.info == full.info
    _assert_same_analysis(Trace(data, str(path), digest), Trace(full, str(path)))


def test_events_at_reads_the_spilled_table_as_the_table_in_memory() -> None:
    path = SAMPLES / "multi-zapslot.dat"
    full = read(path)
    kept, _ = _kept(path)
    n = full.events.num_rows
    seqs = np.r_[np.random.default_rng(7).integers(-5, n + 5, 5000), 0, n - 1, n, -1]
    columns = ("ts", "cpu", "pid", "event", "comm", "system")
    got_found, got = kept.events_at(seqs, columns)
    want_found, want = full.events_at(seqs, columns)
    assert np.array_equal(got_found, want_found) and got_found.sum() < len(seqs)
    for c in columns:
        assert np.array_equal(got[c][got_found], want[c][want_found]), c
    first = np.array([-3, 0, 10, 500, n - 2])
    last = np.array([4, 0, 9, 900, n + 7])
    assert np.array_equal(kept.events_in(first, last), full.events_in(first, last))


def test_open_for_analysis_uses_the_kept_read() -> None:
    path = SAMPLES / "churn-zapslot.dat"
    trace = kvmtrace.open(path, keep="analysis")
    assert trace.digest is not None and "kvm_mmu_paging_element" in trace.data.left_out
    assert trace.data.tables["kvm_mmu_paging_element"].num_rows == 0
    assert trace.info.event_counts["kvm_mmu_paging_element"] > 0  # still counted
    assert kvmtrace.open(path).digest is None
    assert trace.event_names == kvmtrace.open(path).event_names  # left out, but in the trace


def test_open_for_analysis_refuses_what_needs_every_events_rows(tmp_path: Path) -> None:
    trace = kvmtrace.open(NESTED / "tdpmmu0-churn-noquirk-qlog-kt.dat", keep="analysis")
    with pytest.raises(TraceError, match=r"kvmtrace\.open"):
        trace.analyze(qemu_log=NESTED / "tdpmmu0-churn-noquirk-qlog-kt.qemu.log")
    with pytest.raises(TraceError, match="analysis only"):
        trace.to_parquet(tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="keep"):
        kvmtrace.open(SAMPLES / "churn-zapslot.dat", keep="some")  # type: ignore[arg-type]


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.stem)
def test_a_selection_of_a_kept_read_reports_what_the_full_read_does(path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``since``/``until``/``cpus`` on a read for the analysis: the selection passes over the
    spilled ``events`` table a chunk at a time (chunks of 1000 rows here, so that it crosses
    them) and reports what the full read reports."""
    monkeypatch.setattr(spill, "CHUNK", 1000)
    data, digest = _kept(path)
    kept, full = Trace(data, str(path), digest), Trace(read(path), str(path))
    ts, cpu = full.events["ts"].to_numpy(), full.events["cpu"].to_numpy()
    n = len(ts)  # bounds at events, so that no selection is empty (a lossy trace has long holes)
    for selection in ({"since": ts[n * 3 // 10] / 1e9, "until": ts[n * 6 // 10] / 1e9}, {"cpus": int(cpu[n // 2])}):
        got, want = kept.analyze(**selection), full.analyze(**selection)
        assert got.selection == want.selection
        for fmt in ("text", "json", "markdown"):
            assert got.report(fmt) == want.report(fmt), (selection, fmt)


def test_spilled_chunks_are_the_events_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spill, "CHUNK", 1000)
    data, _ = _kept(SAMPLES / "multi-zapslot.dat")
    assert data.spilled_chunks is not None
    chunks = list(data.event_chunks())
    assert len(chunks) > 1 and pa.concat_tables(chunks).equals(data.events)
    picked = data.select(cpus=[1])
    assert picked.spilled_rows is None and picked.spilled_chunks is None  # in memory now
    assert picked.events.equals(read(SAMPLES / "multi-zapslot.dat").select(cpus=[1]).events)


def test_text_opened_for_analysis_is_read_whole() -> None:
    path = NESTED / "tdp-multi3-kt.txt.gz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trace = kvmtrace.open(path, keep="analysis")
        full = kvmtrace.open(path)
    assert not trace.data.left_out and trace.data.spilled_rows is None
    assert trace.digest is not None
    _assert_same_digest(trace.digest, digest_of(full.data))
