"""Placing a QEMU log's lines without every event's columns in memory.

:class:`kvmtrace.replays.event_passes.EventPasses` answers placement's questions (a thread's
place among its own events, the running time at a seq, which events a time window spans, a
thread's next event, its last guest-walker event; how many events lie between two seqs is
``TraceData.events_in``'s) in passes over the ``events`` table. Oracle:
the same questions answered with numpy over the whole columns of a full read, as placement did
before, on real recordings read for the analysis (the ``events`` table on disk) in chunks of
1000 rows, so that every query meets chunk boundaries. Then whole analyses: a QEMU log on a read
for the analysis (``keep="analysis+log"``) reports what it reports on a full read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import NESTED, SAMPLES
from test_read_kept import _kept

import kvmtrace
from kvmtrace.api import Trace
from kvmtrace.parsers import read
from kvmtrace.parsers.errors import TraceError
from kvmtrace.parsers.tracedat import spill
from kvmtrace.parsers.tracedat.reader import read_kept
from kvmtrace.replays.digest import DigestBuilder
from kvmtrace.replays.event_passes import INF, EventPasses
from kvmtrace.replays.needs import WALK_EVENTS, decodes_with_log, keeps_with_log

QLOG = ("tdpmmu0-churn-noquirk-qlog-kt", "tdpmmu0-ptslot-noquirk-qlog-kt")


@pytest.fixture(params=[SAMPLES / "multi-zapslot.dat", NESTED / "tdp-multi3-kt.dat"], ids=lambda p: p.stem)
def both(request, monkeypatch: pytest.MonkeyPatch):
    """The recording read for the analysis in 1000-row chunks, and its full columns."""
    monkeypatch.setattr(spill, "CHUNK", 1000)
    data, _ = _kept(request.param)
    ev = read(request.param).events
    seq, ts, pid = (ev.column(c).to_numpy().astype(np.int64) for c in ("seq", "ts", "pid"))
    names = np.asarray(ev.column("event").cast("string").to_pylist(), dtype=object)
    return EventPasses(data), seq, np.maximum.accumulate(ts), pid, names


def test_passes_cross_chunks(both) -> None:
    passes, seq, _, _, _ = both
    assert len(list(passes.data.event_chunks())) > 3 and len(seq) > 3000


def test_span_and_times_at_seqs(both) -> None:
    passes, seq, ts, pid, _ = both
    assert (passes.span.first, passes.span.last, passes.span.pids) == (seq[0], seq[-1], frozenset(pid.tolist()))
    rng = np.random.default_rng(1)
    q = np.r_[rng.choice(seq, 500), seq[0], seq[-1], seq[999], seq[1000]]
    assert np.array_equal(passes.ts_at(q), ts[np.searchsorted(seq, q)])


def test_ranks_and_next_events_of_threads(both) -> None:
    passes, seq, _, pid, _ = both
    rng = np.random.default_rng(2)
    q = np.r_[rng.integers(-3, seq[-1] + 3, 400), seq[999], seq[1000]]
    for p in np.unique(pid):
        own = seq[pid == p]
        assert np.array_equal(passes.ranks(int(p), q), np.searchsorted(own, q)), p
        after = np.searchsorted(own, q, "right")
        want = np.where(after < len(own), own[np.minimum(after, len(own) - 1)], -1)
        assert np.array_equal(passes.next_of(int(p), q), want), p


def test_time_windows_and_last_walker_events(both) -> None:
    passes, seq, ts, pid, names = both
    rng = np.random.default_rng(3)
    t0 = rng.uniform(ts[0] - 1e6, ts[-1] + 1e6, 300)
    t1 = t0 + rng.uniform(0, 1e7, 300)
    below, above = passes.time_bounds(t0, t1)
    i = np.searchsorted(ts, t0) - 1
    j = np.searchsorted(ts, t1, "right")
    assert np.array_equal(below, np.where(i >= 0, seq[i.clip(0)], -1))
    assert np.array_equal(above, np.where(j < len(seq), seq[j.clip(max=len(seq) - 1)], INF))
    walker = np.isin(names, list(WALK_EVENTS))
    q = np.r_[rng.integers(0, seq[-1] + 2, 300), seq[1000]]
    for p in np.unique(pid):
        own = np.r_[-1, seq[(pid == p) & walker]]  # -1: none before
        assert np.array_equal(passes.last_of(int(p), WALK_EVENTS, q), own[np.searchsorted(own, q) - 1]), p
    assert any(len(seq[(pid == p) & walker]) for p in np.unique(pid))


@pytest.mark.parametrize("stem", QLOG)
def test_a_qemu_log_on_a_read_for_the_analysis_is_the_full_analysis(stem: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The 2019 scenario's recordings (memslot lines only in a QEMU log): read in windows of 1000
    events keeping only what an analysis with a log reads, the ``events`` table passed over in
    chunks of 1000 rows, every report is the full read's."""
    monkeypatch.setattr(spill, "CHUNK", 1000)
    path, log = NESTED / f"{stem}.dat", NESTED / f"{stem}.qemu.log"
    builder = DigestBuilder()
    data = read_kept(path, keeps_with_log, builder.add, decode=decodes_with_log, events_per_window=1000,
                     pages_per_run=2)
    assert "kvm_exit" in data.left_out and data.tables["kvm_entry"].num_rows
    got = Trace(data, str(path), builder.finish()).analyze(qemu_log=log)
    want = kvmtrace.open(path).analyze(qemu_log=log)
    placed = [r["seq"] for r in want.replay.memslots.to_pylist()]
    assert any(s is not None for s in placed)
    for fmt in ("json", "text"):
        assert got.report(fmt) == want.report(fmt), fmt


def test_open_for_an_analysis_with_a_log(tmp_path: Path) -> None:
    """``keep="analysis+log"`` is what ``kvmtrace analyze --qemu-log`` reads; a read for the
    analysis without the log's events refuses the log and says how to open the trace."""
    stem = QLOG[0]
    path, log = NESTED / f"{stem}.dat", NESTED / f"{stem}.qemu.log"
    trace = kvmtrace.open(path, keep="analysis+log")
    assert trace.digest is not None and "kvm_mmu_paging_element" in trace.data.left_out
    assert trace.analyze(qemu_log=log).report("json") == kvmtrace.open(path).analyze(qemu_log=log).report("json")
    with pytest.raises(TraceError, match=r'keep="analysis\+log"'):
        kvmtrace.open(path, keep="analysis").analyze(qemu_log=log)
