"""``kvmtrace diff`` by memslot operation: two recordings of one scenario under zap-all and
zap-slot (ptslot, churn), aligned by range and order, each side's counts from its own report.

Oracle: each run's own replay tables (memslot timeline, shadow-page zaps inside each window,
the what-if row of the run's policy); the runs' seqs differ, so an alignment by seq would fail.
"""

from __future__ import annotations

import json

import pyarrow.compute as pc
import pytest
from conftest import SAMPLES

import kvmtrace
from kvmtrace.report import build_diff, render_diff
from kvmtrace.report.text import WIDTH


def _removals(replay):
    return [c for c in replay.memslots.to_pylist() if c["kind"] in ("delete", "move", "recreate") and c["old_npages"]]


@pytest.mark.parametrize("scenario", ["ptslot", "churn"])
def test_operations_align_by_range_and_order(scenario):
    a = kvmtrace.open(SAMPLES / f"{scenario}-zapall.dat").analyze()
    b = kvmtrace.open(SAMPLES / f"{scenario}-zapslot.dat").analyze()
    diff = build_diff(a.model, b.model)
    ops = json.loads(render_diff(diff, "json"))["operations"]["rows"]
    ra, rb = _removals(a.replay), _removals(b.replay)
    assert [(c["kind"], c["old_base_gfn"], c["old_npages"]) for c in ra] == \
        [(c["kind"], c["old_base_gfn"], c["old_npages"]) for c in rb]  # the same scenario
    assert len(ops) == len(ra) and [o["seq A"] for o in ops] == [c["seq"] for c in ra]
    assert [o["seq B"] for o in ops] == [c["seq"] for c in rb]
    assert any(o["seq A"] != o["seq B"] for o in ops)
    for side, analysis in (("A", a), ("B", b)):
        pages = analysis.replay.shadow_pages
        whatif = analysis.replay.whatif.to_pylist()
        for o, c in zip(ops, _removals(analysis.replay)):
            zapped = pc.sum(pc.and_(pc.greater_equal(pages["zap_seq"], c["window_start"]),
                                    pc.less_equal(pages["zap_seq"], c["seq"]))).as_py() or 0
            assert o[f"zapped {side}"] == zapped
            own = next(w for w in whatif if w["seq"] == c["seq"] and w["trace_policy"])
            assert o[f"policy {side}"] == own["policy"] == ("zap_all" if side == "A" else "zap_slot")
            assert (o[f"refaulted {side}"], o[f"sptes refaulted {side}"]) == (own["pages_refaulted"],
                                                                              own["sptes_refaulted"])


def test_operations_in_the_human_formats():
    a = kvmtrace.open(SAMPLES / "ptslot-zapall.dat").analyze().model
    b = kvmtrace.open(SAMPLES / "ptslot-zapslot.dat").analyze().model
    diff = build_diff(a, b)
    text = render_diff(diff, "text")
    assert all(len(ln) <= WIDTH for ln in text.splitlines())
    for ra, rb in zip(a.removals, b.removals):
        line = next(ln for ln in text.splitlines() if f"{ra.row['seq']}/{rb.row['seq']}" in ln)
        cells = line.split()
        assert cells[cells.index("all/slot") + 1] == f"{ra.row['pages_zapped']}/{rb.row['pages_zapped']}"
    for fmt in ("markdown", "html"):
        out = render_diff(diff, fmt)
        assert "Memslot operations" in out and f"{a.removals[0].row['seq']}/{b.removals[0].row['seq']}" in out
