"""Consequences of each memslot delete/move, per vCPU, on real upstream-kernel recordings.

Oracle: the trace's own events. In these lab recordings (churn and multi scenarios on 6.1 and
6.12 TDP hosts) the only guest accesses that reach no slot are those to the BARs while they are
deleted or moved away, so every fault KVM resolved with ``KVM_PFN_NOSLOT`` and every
``kvm_mmio`` exit in the whole trace must be attributed to exactly one change, none twice.
"""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
from conftest import SAMPLES

import kvmtrace
from kvmtrace.report import render, report_schema
from kvmtrace.report.consequences import KVM_PFN_NOSLOT

RECORDINGS = ["tdp-multi3-kt.dat", "k61tdp-churn-small-kt.dat", "tdp-churn-noquirk-small-kt.dat"]


@pytest.fixture(scope="module", params=RECORDINGS)
def analyzed(request, nested_dir):
    analysis = kvmtrace.open(nested_dir / request.param).analyze()
    return analysis, analysis.model


def test_every_noslot_fault_and_mmio_exit_is_attributed_once(analyzed):
    analysis, report = analyzed
    doc = json.loads(render(report, "json"))
    jsonschema.validate(doc, report_schema())
    rows = doc["consequences"]["rows"]
    pfn = analysis.trace.data.table("kvm_mmu_spte_requested").column("pfn").to_numpy()
    noslot = int((pfn == np.uint64(KVM_PFN_NOSLOT)).sum())
    assert noslot > 0 and sum(r["noslot"] for r in rows) == noslot
    assert sum(r["mmio"] for r in rows) == analysis.trace.data.info.event_counts["kvm_mmio"]


def test_rows_name_the_vcpu_and_stay_inside_their_span(analyzed):
    _analysis, report = analyzed
    vcpus = report.trace.vcpus.vcpu_of
    removals = {r.row["seq"]: r.row for r in report.removals}
    for r in report.consequences.records():
        assert r["vcpu"] == vcpus.get(r["pid"])
        change = removals[r["seq"]]
        assert change["window_start"] <= r["first_seq"] <= r["last_seq"]
        if r["until_seq"] is not None:
            assert r["last_seq"] < r["until_seq"]
        assert r["noslot"] + r["error"] <= r["faults"] and r["per_gfn"] <= r["faults"]


def test_consequences_in_the_human_formats(nested_dir):
    report = kvmtrace.open(nested_dir / "tdp-multi3-kt.dat").analyze().model
    for fmt in ("text", "markdown", "html"):
        out = render(report, fmt)
        assert "Consequences" in out and "KVM_PFN_NOSLOT" in out.replace("\\_", "_")
        first = report.consequences.records()[0]
        assert str(first["first_seq"]) in out


def test_a_trace_without_deletes_says_so():
    report = kvmtrace.open(SAMPLES / "boot-zapall.dat").analyze().model
    assert not report.consequences.rows
    assert "No memslot delete or move with a position in the trace." in render(report, "text")


def test_only_rows_on_a_removed_range_are_read(analyzed):
    """The table reads the rows on a removed range only (the merged ranges of the ledger):
    here most of the trace's faults are elsewhere, and the table above is still exact."""
    from kvmtrace.report import consequences as c
    analysis, _model = analyzed
    ranges = c._Ranges.of(analysis._ledger)
    faults = c._columns(analysis.trace.data, "kvm_mmu_spte_requested", {"gfn": 0, "pfn": 0}, "gfn", ranges)
    total = analysis.trace.data.tables["kvm_mmu_spte_requested"].num_rows
    assert faults is not None and 0 < len(faults["seq"]) < total
    assert ranges.holds(faults["gfn"]).all() and (np.diff(faults["seq"]) > 0).all()


def test_removed_ranges_merge_and_bound():
    import pyarrow as pa

    from kvmtrace.replays.ledger import REMOVALS_SCHEMA
    from kvmtrace.report.consequences import _Ranges

    class Ledger:  # only the removals' ranges are read
        removals = pa.table({"base_gfn": [10, 12, 20, 40], "npages": [4, 6, 5, 0]},
                            schema=pa.schema([REMOVALS_SCHEMA.field("base_gfn"), REMOVALS_SCHEMA.field("npages")]))

    r = _Ranges.of(Ledger())
    assert (r.lo.tolist(), r.hi.tolist()) == ([10, 20], [18, 25])  # [10, 14) and [12, 18) overlap; 40: none
    gfns = np.array([9, 10, 17, 18, 19, 20, 24, 25, 40], np.uint64)
    assert r.holds(gfns).tolist() == [False, True, True, False, False, True, True, False, False]
