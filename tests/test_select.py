"""``TraceData.select``: every table, the events, the gaps and the counts cut alike.

Oracle: the kernel's own view of the recording through the reader (per-CPU lost events of
churn-lost-zapall, which dropped events on one CPU) and the events table itself.
"""

from __future__ import annotations

import pyarrow.compute as pc
from conftest import SAMPLES

import kvmtrace
from kvmtrace.parsers.select import keep_rows, without_seqs


def _consistent(data) -> None:
    assert data.info.total_events == data.events.num_rows == sum(t.num_rows for t in data.tables.values())
    names = pc.value_counts(data.events["event"].cast("string")).to_pylist()
    assert {v["values"]: v["counts"] for v in names} == {k.split(":")[-1]: n for k, n in data.info.event_counts.items()}
    if data.events.num_rows:
        ts = data.events["ts"]
        assert (data.info.first_ts, data.info.last_ts) == (pc.min(ts).as_py(), pc.max(ts).as_py())


def test_cpu_and_time_selection_keep_counts_and_losses_consistent():
    data = kvmtrace.open(SAMPLES / "churn-lost-zapall.dat").data
    lossy = {c for c, n in data.info.lost_events.items() if n}
    assert lossy, "churn-lost-zapall lost events (sample_traces/README.md)"
    for cpu in sorted(set(pc.unique(data.events["cpu"]).to_pylist())):
        one = data.select(cpus=[cpu])
        _consistent(one)
        assert set(pc.unique(one.events["cpu"]).to_pylist()) == {cpu}
        assert set(one.info.lost_events) <= {cpu} and set(pc.unique(one.gaps["cpu"]).to_pylist()) <= {cpu}
        assert (cpu in lossy) == bool(one.info.lost_events.get(cpu))
    ts = data.events["ts"]
    lo, hi = pc.min(ts).as_py(), pc.max(ts).as_py()
    mid = data.select(since=lo + (hi - lo) // 3, until=hi - (hi - lo) // 3)
    _consistent(mid)
    assert 0 < mid.events.num_rows < data.events.num_rows
    assert mid.events["seq"].equals(data.events.filter(pc.and_(pc.greater_equal(ts, lo + (hi - lo) // 3),
                                                              pc.less_equal(ts, hi - (hi - lo) // 3)))["seq"])


def test_seq_window_and_dropped_seqs():
    data = kvmtrace.open(SAMPLES / "mmio-zapall.dat").data
    head = data.select(last_seq=99)
    _consistent(head)
    assert head.events["seq"].to_pylist() == list(range(100))
    dropped = keep_rows(data, without_seqs([0, 5, 7]))
    _consistent(dropped)
    assert dropped.events.num_rows == data.events.num_rows - 3 and 5 not in dropped.events["seq"].to_pylist()
    assert data.select() is data
