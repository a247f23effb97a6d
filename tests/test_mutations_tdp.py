"""Mutation tests for the TDP-MMU detectors: one injected kernel bug in a real upstream recording
gives exactly one finding per affected gfn, and nothing else changes.

"Nothing else" is measured against the replay of the unmodified recording: the multiset of
findings (id, severity, seq, gfn) of the mutated trace minus that of the clean one must be exactly
the expected findings, and no clean finding may disappear. Targets are picked from the raw events
(the zap the kernel emitted, a fault KVM resolved), never from the detectors' output.
"""

from __future__ import annotations

from collections import Counter

import pytest
from conftest import NESTED
from mutate import altered, without

from kvmtrace import parsers
from kvmtrace.replays import replay
from kvmtrace.replays.profiles import profile_for

_CACHE: dict = {}


def _load(name):
    path = NESTED / f"{name}.dat"
    if path not in _CACHE:
        data = parsers.read(path)
        _CACHE[path] = (data, replay(data))
    return _CACHE[path]


def _key(f):
    return f["id"], f["severity"], f["seq"], f["gfn"]


def _diff(clean, mutated):
    """(findings only in the mutated replay, findings only in the clean one), as Counters."""
    a = Counter(_key(f) for f in clean.findings.to_pylist())
    b = Counter(_key(f) for f in mutated.findings.to_pylist())
    return b - a, a - b


def _removals(result):
    return [c for c in result.memslots.to_pylist() if c["kind"] in ("delete", "move", "recreate") and c["old_npages"]]


def _in_old(c, gfn):
    return c["old_base_gfn"] <= gfn < c["old_base_gfn"] + c["old_npages"]


def _leaf_zaps_of_deletes(data, clean):
    """(change, zap event) for every level-1 leaf zap the ioctl thread emitted for a gfn of the slot
    it was deleting, in trace order."""
    p = profile_for(data.info.kernel)
    changed = data.table("kvm_tdp_mmu_spte_changed").to_pylist()
    return [(c, e) for c in _removals(clean) for e in changed
            if c["window_start"] <= e["seq"] <= c["seq"] and e["pid"] == c["pid"] and _in_old(c, e["gfn"])
            and p.present(e["old_spte"]) and not p.present(e["new_spte"]) and e["level"] == 1]


@pytest.mark.parametrize("pick", [0, 4, 9, 17, 26, 35, 44, 53, 62, -1])
def test_dropped_leaf_zap_is_one_dangling_spte(nested_dir, pick):
    """tdp-churn-noquirk (6.12, zap-slot: the leaf zaps of a delete are traced): drop one. The SPTE
    left behind is one dangling_spte at that delete, for that gfn and slot, however many later
    deletes of the slot follow; when the vCPU faults the gfn in again, the trace's non-present
    old_spte contradicts the stale SPTE, which goes to unexplained."""
    data, clean = _load("tdp-churn-noquirk-small-kt")
    targets = _leaf_zaps_of_deletes(data, clean)
    assert len(targets) > 62
    c, e = targets[pick]
    result = replay(without(data, [e["seq"]]))
    added, gone = _diff(clean, result)
    assert added == Counter({("dangling_spte", "error", c["seq"], e["gfn"]): 1})
    assert not gone
    finding = next(f for f in result.findings.to_pylist() if f["id"] == "dangling_spte")
    assert finding["slot"] == c["slot"]
    reasons = [r for s, r in zip(result.unexplained["seq"].to_pylist(), result.unexplained["reason"].to_pylist())
               if s not in set(clean.unexplained["seq"].to_pylist())]
    assert all(f"gfn {e['gfn']:#x}" in r and "non-present" in r for r in reasons)
    assert result.events == clean.events - 1  # the dropped zap
    assert result.explained_events == clean.explained_events - 1 - len(reasons)
    later = [x for x in data.table("kvm_tdp_mmu_spte_changed").to_pylist()
             if x["seq"] > c["seq"] and x["gfn"] == e["gfn"] and x["level"] == 1 and x["as_id"] == e["as_id"]]
    if later and later[0]["old_spte"] == profile_for(data.info.kernel).nonpresent:
        assert len(reasons) == 1 and result.explained_share < clean.explained_share


def _last_request(data, pid, before):
    rows = [r for r in data.table("kvm_mmu_spte_requested").to_pylist() if r["pid"] == pid and r["seq"] < before]
    return rows[-1] if rows else None


def test_dirty_clear_without_a_racing_fault_is_one_dirty_bit_lost(nested_dir):
    """tdp-churn-noquirk (no dirty logging): turn one zap of a W=1,D=1 leaf, by a thread whose last
    fault was for another gfn, into a same-pfn overwrite with Dirty clear: one dirty_bit_lost."""
    data, clean = _load("tdp-churn-noquirk-small-kt")
    p = profile_for(data.info.kernel)
    wd = p.writable_mask | p.dirty_mask
    removed = _removals(clean)
    e = next(e for e in data.table("kvm_tdp_mmu_spte_changed").to_pylist()
             if e["level"] == 1 and p.present(e["old_spte"]) and e["old_spte"] & wd == wd
             and e["new_spte"] == p.nonpresent and not any(_in_old(c, e["gfn"]) for c in removed)
             and (_last_request(data, e["pid"], e["seq"]) or {}).get("gfn") != e["gfn"])
    result = replay(altered(data, "kvm_tdp_mmu_spte_changed", e["seq"], new_spte=e["old_spte"] & ~p.dirty_mask))
    added, gone = _diff(clean, result)
    assert added == Counter({("dirty_bit_lost", "error", e["seq"], e["gfn"]): 1}) and not gone
    f = next(f for f in result.findings.to_pylist() if f["id"] == "dirty_bit_lost")
    assert "had not faulted on it" in f["message"] and "no longer recorded" in f["message"]


def test_race_without_the_writers_own_fault_is_dirty_bit_lost(nested_dir):
    """tdp-multi3: drop the kvm_mmu_spte_requested of the vCPU that overwrote W=1,D=1 with W=1,D=0.
    Without its own fault the overwrite is not the make_spte() race any more: that gfn's
    dirty_bit_race becomes one dirty_bit_lost, and nothing else changes."""
    data, clean = _load("tdp-multi3-kt")
    race = next(f for f in clean.findings.to_pylist() if f["id"] == "dirty_bit_race")
    _installed, requested, seq = race["evidence"]
    result = replay(without(data, [requested]))
    added, gone = _diff(clean, result)
    assert added == Counter({("dirty_bit_lost", "error", seq, race["gfn"]): 1})
    assert gone == Counter({("dirty_bit_race", "info", seq, race["gfn"]): 1})


def test_install_for_a_removed_gfn_is_one_spte_for_unmapped_gfn(nested_dir):
    """tdp-churn-noquirk: rewrite one leaf install, made after a delete's line and before any change
    brings the range back, to map the deleted slot's first gfn. The target is one whose SPTE no
    later delete would find (the vCPU faults the gfn in again first, or no delete touches it again):
    a single-event mutation cannot also write the zap a real kernel would emit then. One
    spte_for_unmapped_gfn for it."""
    data, clean = _load("tdp-churn-noquirk-small-kt")
    p = profile_for(data.info.kernel)
    changes = clean.memslots.to_pylist()
    tdp = data.table("kvm_tdp_mmu_spte_changed").to_pylist()
    fresh = [e for e in tdp if e["level"] == 1 and e["old_spte"] == p.nonpresent and p.present(e["new_spte"])]
    target = None
    for i, c in enumerate(changes):
        if c["kind"] != "delete":
            continue
        g = c["old_base_gfn"]
        later = [n for n in changes[i + 1:] if n["window_start"] is not None]
        next_window = later[0]["window_start"] if later else 1 << 62
        touch = [n["window_start"] for n in later if n["kind"] in ("delete", "move", "recreate")
                 and n["old_npages"] and n["old_base_gfn"] <= g < n["old_base_gfn"] + n["old_npages"]]
        t = next((e for e in fresh if c["seq"] < e["seq"] < next_window and e["gfn"] != g), None)
        refault = t and next((e for e in fresh if e["gfn"] == g and e["seq"] > t["seq"]), None)
        if t and (not touch or (refault and refault["seq"] < touch[0])):
            target = t, g
            break
    assert target, "no install after a delete that no later delete would find"
    t, g = target
    result = replay(altered(data, "kvm_tdp_mmu_spte_changed", t["seq"], gfn=g))
    added, gone = _diff(clean, result)
    assert added == Counter({("spte_for_unmapped_gfn", "error", t["seq"], g): 1}) and not gone


def test_page_of_a_slot_being_deleted_is_one_fault_in_update_window(nested_dir):
    """tdp-churn-noquirk: a vCPU faulted twice or more with no slot on a gfn of a deleted slot; make
    the last of those faults find a page (a RAM pfn), as a kernel that ignored KVM_MEMSLOT_INVALID
    would. One new fault_in_update_window for that fault, worded as the invalid-slot contradiction;
    the MMIO-exit finding of the earlier faults stays."""
    data, clean = _load("tdp-churn-noquirk-small-kt")
    faults = {r["seq"]: r for r in data.table("kvm_mmu_spte_requested").to_pylist()}
    hazard = next(f for f in clean.findings.to_pylist() if f["id"] == "fault_in_update_window"
                  and sum(s in faults and faults[s]["pfn"] == 1 << 63 for s in f["evidence"]) >= 2)
    last = max(s for s in hazard["evidence"] if s in faults and faults[s]["pfn"] == 1 << 63)
    ram = next(r["pfn"] for r in faults.values() if r["pfn"] >> 52 == 0)
    result = replay(altered(data, "kvm_mmu_spte_requested", last, pfn=ram))
    added, gone = _diff(clean, result)
    assert added == Counter({("fault_in_update_window", "warning", last, hazard["gfn"]): 1}) and not gone
    f = next(f for f in result.findings.to_pylist() if f["seq"] == last)
    assert "KVM_MEMSLOT_INVALID" in f["message"] and f"pfn {ram:#x}" in f["message"]


def test_mmio_fault_on_ram_is_one_stale_mmio_spte(nested_dir):
    """tdp-churn-noquirk: make one handle_mmio_page_fault name a gfn of guest RAM (slot 1 covers
    0x100..0x40ff for the whole trace): an MMIO SPTE sent a RAM access to emulation. One finding."""
    data, clean = _load("tdp-churn-noquirk-small-kt")
    fault = data.table("handle_mmio_page_fault").to_pylist()[0]
    result = replay(altered(data, "handle_mmio_page_fault", fault["seq"], gfn=0x200))
    added, gone = _diff(clean, result)
    assert added == Counter({("stale_mmio_spte", "error", fault["seq"], 0x200): 1}) and not gone
