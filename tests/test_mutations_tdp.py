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

from kvmtrace import parsers
from conftest import NESTED
from kvmtrace.replays import replay
from kvmtrace.replays.mutate import altered, without
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


@pytest.mark.parametrize("pick", [0, 4, -1])
def test_dropped_leaf_zap_is_one_dangling_spte(nested_dir, pick):
    """tdp-churn-noquirk (6.12, zap-slot: the leaf zaps of a delete are traced): drop one. The SPTE
    left behind is one dangling_spte at that delete, for that gfn and slot, however many later
    deletes of the slot follow; when the vCPU faults the gfn in again, the trace's non-present
    old_spte contradicts the stale SPTE, which goes to unexplained."""
    data, clean = _load("tdp-churn-noquirk-small-kt")
    targets = _leaf_zaps_of_deletes(data, clean)
    assert len(targets) > 8
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
