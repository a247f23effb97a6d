"""Consequences of memslot removals where the kernel's zaps are untraced (legacy MMU).

Oracles from the events themselves, never from the model: the 2019 scenario recording (6.12,
legacy MMU in TDP mode, zap-slot, memslot lines only in a QEMU log; its README notes the 2 MiB
slot is mapped by ONE level-2 leaf whose removal is untraced, and that the trace shows it only
through the leaf being installed again), and the no-slot pfn ``kvm_mmu_spte_requested`` prints.
"""

from __future__ import annotations

import collections

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
