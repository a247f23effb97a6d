"""Detectors beyond the mutation list: MMIO staleness, zaps of unknown pages, the lost-event rule
(the per-slot zap rules of each kernel era are in test_zap_rules.py).

Injected changes are made on real recordings with :mod:`mutate` (tests/mutate.py); the expected finding is
what was injected.
"""

from __future__ import annotations

from dataclasses import replace

import pyarrow as pa
import pytest
from conftest import NESTED, SAMPLES
from mutate import altered, without

from kvmtrace import parsers
from kvmtrace.parsers.schema import GAPS_SCHEMA
from kvmtrace.replays import replay
from kvmtrace.replays.profiles import profile_for

TDP_CHURN = NESTED / "tdp-churn-noquirk-small-kt.dat"


@pytest.fixture(scope="module")
def tdp_churn(nested_dir):
    data = parsers.read(nested_dir / TDP_CHURN.name)
    return data, replay(data)


def _errors(result):
    return [f for f in result.findings.to_pylist() if f["severity"] == "error"]


def test_mmio_fault_for_a_gfn_a_slot_covers(tdp_churn):
    """An MMIO fault emulated for RAM (slot 1 covers 0x100..0x40ff): the MMIO SPTE that sent it there
    must have been stale."""
    data, _clean = tdp_churn
    fault = data.table("handle_mmio_page_fault").to_pylist()[0]
    result = replay(altered(data, "handle_mmio_page_fault", fault["seq"], gfn=0x200))
    assert [(e["id"], e["seq"], e["gfn"], e["slot"]) for e in _errors(result)] == \
        [("stale_mmio_spte", fault["seq"], 0x200, 1)]


def test_mmio_generation_going_back(tdp_churn):
    """A check_mmio_spte reporting as current (and valid) a generation older than one already seen
    before a memslot line: a stale MMIO SPTE treated as valid."""
    data, clean = tdp_churn
    checks = data.table("check_mmio_spte").to_pylist()
    lines = sorted(c["seq"] for c in clean.memslots.to_pylist())
    first = checks[0]
    later = next(c for c in checks
                 if any(first["seq"] < s < c["seq"] for s in lines) and c["kvm_gen"] > first["kvm_gen"])
    old = first["kvm_gen"]
    result = replay(altered(data, "check_mmio_spte", later["seq"], kvm_gen=old, spte_gen=old))
    errors = _errors(result)
    assert [(e["id"], e["seq"]) for e in errors] == [("stale_mmio_spte", later["seq"])]


def test_zap_of_a_page_never_seen_is_info():
    """Drop the creation of a page the kernel later zaps: the zap names a page never seen (normal for
    a trace that starts late), an info finding and nothing at error."""
    data = parsers.read(SAMPLES / "churn-zapall.dat")
    gets = data.table("kvm_mmu_get_page").to_pylist()
    zaps = data.table("kvm_mmu_prepare_zap_page").to_pylist()
    g = next(g for g in gets if g["created"] and any(z["gfn"] == g["gfn"] and z["role"] == g["role"]
                                                     and z["mmu_valid_gen"] == g["mmu_valid_gen"] for z in zaps))
    z = next(z for z in zaps if z["seq"] > g["seq"] and (z["gfn"], z["role"], z["mmu_valid_gen"]) ==
             (g["gfn"], g["role"], g["mmu_valid_gen"]))
    result = replay(without(data, [g["seq"]]))
    info = [f for f in result.findings.to_pylist() if f["id"] == "zap_of_unknown_sp"]
    assert [(f["seq"], f["gfn"], f["severity"]) for f in info] == [(z["seq"], g["gfn"], "info")]
    assert not _errors(result)
    status = dict(zip(result.checks["id"].to_pylist(), result.checks["status"].to_pylist()))
    assert status["zap_of_unknown_sp"] == "passed"


def test_lost_events_turn_errors_into_warnings(tdp_churn):
    """The dropped-leaf-zap mutation gives a dangling_spte error; add a lost-event record on the
    ioctl thread's CPU inside that delete's window (hand-made: the real lossy recording has no
    memslot lines left to test this on) and it must become a warning that says why."""
    data, clean = tdp_churn
    p = profile_for(data.info.kernel)
    changes = [c for c in clean.memslots.to_pylist()
               if c["kind"] == "delete" and c["anchor"] == "zaps of the ioctl thread"]
    c = changes[0]
    zap = next(e for e in data.table("kvm_tdp_mmu_spte_changed").to_pylist()
               if c["window_start"] <= e["seq"] <= c["seq"] and p.present(e["old_spte"]) and e["level"] == 1)
    broken = without(data, [zap["seq"]])
    assert any(e["id"] == "dangling_spte" and e["seq"] == c["seq"] for e in _errors(replay(broken)))
    gap = pa.table({"cpu": [zap["cpu"]], "ts": [zap["ts"]], "seq": [c["seq"]], "lost": [3]}, schema=GAPS_SCHEMA)
    result = replay(replace(broken, gaps=gap))
    mine = [f for f in result.findings.to_pylist() if f["id"] == "dangling_spte" and f["seq"] == c["seq"]]
    assert mine and all(f["severity"] == "warning" and "lost" in f["message"] for f in mine)
    assert any("lost-event" in limit for limit in result.limits)
