"""The notebook's SPTE-change table: the replay's rows plus time, thread, vCPU, slot instance and
decoded SPTE bits, checked against the trace's events, QEMU's memslot lines and the lab's vCPU
markers."""

from __future__ import annotations

import re

import numpy as np
import pyarrow.compute as pc
from conftest import SAMPLES

import kvmtrace
from kvmtrace.replays.ledger import profile_of
from kvmtrace.report.decode import spte_text
from kvmtrace.report.tables import spte_changes


def test_rows_gain_time_thread_and_decoded_bits():
    analysis = kvmtrace.open(SAMPLES / "multi-zapslot.dat").analyze()
    data, result = analysis.trace.data, analysis.replay
    t = spte_changes(data, result)
    assert t.num_rows == result.spte_changes.num_rows
    events = {s: (ts, pid) for s, ts, pid in zip(*(data.events.column(c).to_pylist() for c in ("seq", "ts", "pid")))}
    markers = {int(m[2]): int(m[1]) for b in data.table("print").column("buf").to_pylist()
               for m in [re.search(r"kvmlab_vcpu_thread vcpu=(\d+) tid=(\d+)", b or "")] if m}
    assert len(markers) == 3
    profile = profile_of(result)
    rows = t.to_pylist()
    for r in rows[::7]:
        assert (r["ts"], r["pid"]) == events[r["seq"]]
        assert r["vcpu"] == markers.get(r["pid"])
        if r["state"] == "present":
            words = spte_text(r["new_spte"], profile).split()
            assert r["new_pfn"] == int(words[1], 16)
            assert (r["new_w"], r["new_a"], r["new_d"]) == ("W" in words, "A" in words, "D" in words)
    assert {r["vcpu"] for r in rows if r["state"] == "present"} == set(markers.values())


def test_slot_instance_is_the_create_line_that_covers_the_gfn():
    analysis = kvmtrace.open(SAMPLES / "churn-zapslot.dat").analyze()
    t = spte_changes(analysis.trace.data, analysis.replay)
    creates = {c["seq"]: c for c in analysis.replay.memslots.to_pylist() if c["kind"] in ("create", "move", "recreate")}
    named = t.filter(pc.is_valid(t["slot_instance"])).to_pylist()
    assert len(named) > t.num_rows // 2
    for r in named:
        slot, made = map(int, r["slot_instance"].split("@"))
        c = creates[made]
        assert c["slot"] == slot and c["base_gfn"] <= r["gfn"] < c["base_gfn"] + c["npages"] and made <= r["seq"]
    seqs = np.asarray([r["seq"] for r in named])
    assert (np.diff(seqs) >= 0).all()  # still in the replay's seq order
