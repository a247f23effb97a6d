"""Consequences of memslot removals where the kernel's zaps are untraced (legacy MMU).

Oracles from the events themselves, never from the model: the 2019 scenario recording (6.12,
legacy MMU in TDP mode, zap-slot, memslot lines only in a QEMU log; its README notes the 2 MiB
slot is mapped by ONE level-2 leaf whose removal is untraced, and that the trace shows it only
through the leaf being installed again), and the no-slot pfn ``kvm_mmu_spte_requested`` prints.
"""

from __future__ import annotations

import collections

import pytest
from conftest import SAMPLES

from kvmtrace import parsers
from kvmtrace.replays import replay
from kvmtrace.replays.consequences import PFN_NOSLOT, pfn_words

QLOG = SAMPLES.parent / "tests" / "data" / "nested" / "tdpmmu0-ptslot-noquirk-qlog-kt"


def test_untraced_leaf_removal_shown_by_reinstalls():
    data = parsers.read(QLOG.with_suffix(".dat"))
    result = replay(data, qemu_log_lines=QLOG.with_suffix(".qemu.log").read_text().splitlines())
    rows = result.summaries["consequences"].to_pylist()
    sets = collections.Counter((r["gfn"], r["level"]) for r in data.table("kvm_mmu_set_spte").to_pylist()
                               if r["level"] == 2 and r["gfn"] in (0x20000, 0x20400))
    assert sets == {(0x20000, 2): 4, (0x20400, 2): 3}  # the README's count, from the events
    again = collections.Counter((r["gfn"], r["level"]) for r in rows if r["what"] == "reinstall")
    # every install after the first proves the previous leaf went away with a delete or move
    assert again == {k: n - 1 for k, n in sets.items()}
    installs = {r["seq"]: r for r in data.table("kvm_mmu_set_spte").to_pylist()}
    for r in rows:
        if r["what"] == "reinstall":
            assert installs[r["seq"]]["gfn"] == r["gfn"] and r["seq"] > r["change_seq"]
            assert "untraced rmap zap" in r["detail"]
    # the pages over the slot that stayed are direct ones the 6.12 rule leaves alone
    survived = [r for r in rows if r["what"] == "page_survived"]
    assert survived and all(r["allowed"] and r["detail"].startswith("direct level-") for r in survived)


def test_faults_after_a_delete_resolved_as_no_slot(nested_dir):
    """shadow-churn-noquirk (6.12, shadow MMU): a vCPU faulting on a deleted BAR range before QEMU
    re-creates it gets KVM_PFN_NOSLOT from KVM (an MMIO exit), as kvm_mmu_spte_requested prints."""
    data = parsers.read(nested_dir / "shadow-churn-noquirk-small-kt.dat")
    rows = replay(data).summaries["consequences"].to_pylist()
    faults = [r for r in rows if r["what"] == "fault_after"]
    requested = {r["seq"]: r for r in data.table("kvm_mmu_spte_requested").to_pylist()}
    assert faults
    for r in faults:
        ev = requested[r["seq"]]
        assert (ev["gfn"], ev["pid"]) == (r["gfn"], r["pid"]) and r["detail"] == pfn_words(ev["pfn"])
    assert {requested[r["seq"]]["pfn"] for r in faults} == {PFN_NOSLOT}
    assert "MMIO exit" in pfn_words(PFN_NOSLOT) and "backed again" in pfn_words(0x1234)


@pytest.mark.parametrize("name", ["churn-zapslot", "rom-zapslot"])
def test_reinstall_rows_are_the_installs_and_each_changes_rows_stay_together(name):
    """Shadow MMU, zap-slot: deletes are followed by the re-install of the range's leaves, pages
    over the range survive, and (rom) vCPUs fault on the removed range. Each ``reinstall`` row is
    its ``kvm_mmu_set_spte`` (gfn, level, pid) with the words and the evidence the row names; the
    rows of a change come together in timeline order, its surviving pages and faults before its
    reinstalls (the reinstall rows are built as columns apart)."""
    data = parsers.read(SAMPLES / f"{name}.dat")
    result = replay(data)
    rows = result.summaries["consequences"].to_pylist()
    installs = {r["seq"]: r for r in data.table("kvm_mmu_set_spte").to_pylist()}
    kinds = {r["seq"]: r["kind"] for r in result.memslots.to_pylist()}
    again = [r for r in rows if r["what"] == "reinstall"]
    assert len(again) > 100
    for r in again:
        ev = installs[r["seq"]]
        assert (ev["gfn"], ev["level"], ev["pid"]) == (r["gfn"], r["level"], r["pid"]) and r["page"] is None
        assert r["change"] == kinds[r["change_seq"]] and r["evidence"] == [r["change_seq"], r["seq"]]
        assert r["detail"] == (f"a level-{r['level']} leaf for gfn {r['gfn']:#x} was present before the "
                               f"{r['change']} and is installed again after it: the old leaf was removed "
                               "(untraced rmap zap)")
    order = {seq: k for k, seq in enumerate(result.memslots.column("seq").to_pylist())}
    part = {"page_survived": 0, "fault_after": 1, "reinstall": 2}
    keys = [(order[r["change_seq"]], part[r["what"]]) for r in rows if r["what"] in part]
    assert keys == sorted(keys) and len({k for k, _ in keys}) > 1 and len({w for _, w in keys}) >= 2
    assert len({(r["change_seq"], r["seq"], r["gfn"]) for r in again}) == len(again)


@pytest.mark.parametrize("name", ["churn-zapslot", "rom-zapslot"])
def test_a_table_built_a_few_changes_at_a_time_is_the_one_built_at_once(name, monkeypatch):
    """The rows are put in order and cast a piece of whole changes at a time (ROWS_PER_PIECE
    reinstalls), and from a size on written to disk: with a piece per change and every piece on
    disk, the table is the one a single piece gives (the order of rows across pieces included)."""
    from kvmtrace.parsers import spilled
    from kvmtrace.replays import consequences as cq

    data = parsers.read(SAMPLES / f"{name}.dat")
    want = replay(data).summaries["consequences"]
    assert want.column("seq").num_chunks == 1
    monkeypatch.setattr(cq, "ROWS_PER_PIECE", 1)
    monkeypatch.setattr(spilled, "ARRAYS_ON_DISK", 32)  # the table on disk from one row
    got = replay(data).summaries["consequences"]
    assert got.column("seq").num_chunks > 1  # several pieces, on disk
    assert got.schema.equals(want.schema) and got.to_pylist() == want.to_pylist()
