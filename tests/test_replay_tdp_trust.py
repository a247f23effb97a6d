"""TDP-MMU findings a KVM maintainer would accept, on the upstream recordings (nested/README.md).

Each oracle is computed here from the raw events, independently of the detectors: which SPTE
overwrites are the make_spte() race of seed 001, which faults KVM resolved with no memslot.
"""

from __future__ import annotations

import pytest

from kvmtrace import parsers
from conftest import NESTED
from kvmtrace.replays import replay
from kvmtrace.replays.mutate import altered
from kvmtrace.replays.profiles import profile_for

_CACHE: dict = {}


def _data(name):
    path = NESTED / f"{name}.dat"
    if path not in _CACHE:
        _CACHE[path] = parsers.read(path)
    return _CACHE[path]


def _by_id(result, cid):
    return [f for f in result.findings.to_pylist() if f["id"] == cid]


def _status(result):
    return dict(zip(result.checks["id"].to_pylist(), result.checks["status"].to_pylist()))


def _races(data):
    """Raw-event oracle for seed 001: a same-pfn W=1,D=1 -> W=1,D=0 leaf rewrite whose writer's last
    kvm_mmu_spte_requested before it was for that gfn and pfn."""
    p = profile_for(data.info.kernel)
    wd = p.writable_mask | p.dirty_mask
    requests: dict[int, list[dict]] = {}
    for r in data.table("kvm_mmu_spte_requested").to_pylist():
        requests.setdefault(r["pid"], []).append(r)
    out = set()
    for e in data.table("kvm_tdp_mmu_spte_changed").to_pylist():
        old, new = e["old_spte"], e["new_spte"]
        if not (p.present(old) and p.present(new) and (old ^ new) & p.pfn_mask == 0):
            continue
        if old & wd != wd or new & p.dirty_mask or not new & p.writable_mask:
            continue
        before = [r for r in requests.get(e["pid"], []) if r["seq"] < e["seq"]]
        if before and before[-1]["gfn"] == e["gfn"] and before[-1]["pfn"] == (new & p.pfn_mask) >> 12:
            out.add((e["seq"], e["gfn"]))
    return out


def test_racing_faults_are_dirty_bit_race_not_lost(nested_dir):
    """tdp-multi3 (6.12, three vCPUs write the same pages): every same-pfn Dirty clear is the
    two-vCPU fault race; it is named as the info finding, with its kernels, and nothing is lost."""
    data = _data("tdp-multi3-kt")
    oracle = _races(data)
    assert len(oracle) >= 3, "the recording should hold the race"
    result = replay(data)
    races = _by_id(result, "dirty_bit_race")
    assert {(f["seq"], f["gfn"]) for f in races} == oracle
    assert not _by_id(result, "dirty_bit_lost")
    assert _status(result)["dirty_bit_race"] == "passed" and _status(result)["dirty_bit_lost"] == "passed"
    for f in races:
        assert f["severity"] == "info"
        assert "make_spte()" in f["message"] and "386d69f9f29b" in f["message"] and "5.10-6.12" in f["message"]
        assert "W=1,D=1" in f["message"] and "W=1,D=0" in f["message"]
        installed, requested, seq = f["evidence"]
        assert installed < requested < seq


def test_the_race_is_an_error_on_kernels_that_treat_it_as_spurious(nested_dir):
    """The same events said to come from 6.13 (386d69f9f29b: a fault the present SPTE allows is
    spurious): the overwrite is no longer a known kernel behaviour, so each is dirty_bit_lost."""
    data = _data("tdp-multi3-kt")
    oracle = _races(data)
    result = replay(data, kernel="6.13.0")
    lost = _by_id(result, "dirty_bit_lost")
    assert {(f["seq"], f["gfn"]) for f in lost} == oracle
    assert all(f["severity"] == "error" and "spurious" in f["message"] for f in lost)
    assert not _by_id(result, "dirty_bit_race")


def _present_wd_zap(data, p):
    """A traced zap of a present W=1,D=1 leaf, with a change of the same key before it that left
    exactly its value (so the model holds it)."""
    wd = p.writable_mask | p.dirty_mask
    last: dict[tuple, int] = {}
    for e in data.table("kvm_tdp_mmu_spte_changed").to_pylist():
        key = (e["as_id"], e["level"], e["gfn"])
        old = e["old_spte"]
        if (p.present(old) and old & wd == wd and e["level"] == 1 and last.get(key) == old
                and not p.present(e["new_spte"])):
            return e
        last[key] = e["new_spte"]
    raise AssertionError("no zap of a W=1,D=1 leaf")


@pytest.mark.parametrize("kernel,explained", [("6.1.0", False), ("6.4.0", True)])
def test_untraced_dirty_clear_since_6_4(nested_dir, kernel, explained):
    """From 6.4 (1e0f42985ffa) the TDP MMU clears D for dirty logging without the tracepoint, so a
    zap whose old_spte shows D=0 where the model holds D=1 is explained; before 6.4 the clear was
    traced, and the same event contradicts the model. The 6.1 recording, told it is 6.1 or 6.4
    (one profile era, so only the release differs)."""
    data = _data("k61tdp-churn-small-kt")
    p = profile_for(data.info.kernel)
    zap = _present_wd_zap(data, p)
    cleared = altered(data, "kvm_tdp_mmu_spte_changed", zap["seq"], old_spte=zap["old_spte"] & ~p.dirty_mask)
    clean = replay(data, kernel=kernel)
    result = replay(cleared, kernel=kernel)
    seqs = set(result.unexplained["seq"].to_pylist()) - set(clean.unexplained["seq"].to_pylist())
    assert seqs == (set() if explained else {zap["seq"]})
    assert not [f for f in result.findings.to_pylist() if f["severity"] == "error"]
