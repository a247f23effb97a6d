"""Kernel-era memslot-removal rules and ``memslot_zap_miss`` on real zap-slot recordings.

Oracles: the era boundaries are the dates of the commits and stable releases read in the mails
(4e103134b862 in 5.1; its revert d012a06ab1d2 in 5.2.11 stable; the fast zap back in 5.2.16; the
quirk in 6.12), written here by hand. The mutation's oracle is the injection: the page whose
``kvm_mmu_prepare_zap_page`` was dropped. Under the 5.1 rule the pages that must be flagged on a
clean 6.12 recording are computed from the events themselves (direct pages whose ``gfn`` lies in
the slot and that the kernel did not zap), not from the detector.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SAMPLES
from mutate import altered, without

from kvmtrace import parsers
from kvmtrace.parsers.errors import TraceError
from kvmtrace.replays import replay
from kvmtrace.replays.detectors.zap_rules import rule_mask
from kvmtrace.replays.eras import ERAS, RULES, era_for, release
from kvmtrace.replays.profiles import decode_role, profile_for

ZAPSLOT = ["ptslot-zapslot", "churn-zapslot", "nested/shadow-churn-noquirk-small-kt"]
_CACHE: dict = {}


def _load(path):
    if path not in _CACHE:
        if not path.exists():
            pytest.fail(f"{path} is missing")
        data = parsers.read(path)
        _CACHE[path] = (data, replay(data))
    return _CACHE[path]


def _miss(result, severity=None):
    return [f for f in result.findings.to_pylist() if f["id"] == "memslot_zap_miss"
            and (severity is None or f["severity"] == severity)]


def _removals(result):
    return [c for c in result.memslots.to_pylist() if c["kind"] in ("delete", "move", "recreate") and c["old_npages"]]


def _in(c, gfn):
    return c["old_base_gfn"] <= gfn < c["old_base_gfn"] + c["old_npages"]


@pytest.mark.parametrize("kernel, rule", [
    ("5.0.21", None), ("5.1.0", "gfn_2019"), ("5.1.21", "gfn_2019"), ("5.2.10", "gfn_2019"), ("5.2.11", None),
    ("5.2.16", None), ("5.3.0", None), ("5.4.0", None), ("6.11.3", None), ("6.12.107+deb12-amd64", "gptes"),
    ("6.18.0", "gptes")])
def test_era_rule_by_release(kernel, rule):
    """Hand facts from the mails: 5.1.y ended (5.1.21) before the revert; 5.2.11 took the revert."""
    assert profile_for(kernel).slot_zap_rule == rule


def test_eras_are_cited_and_ordered():
    assert [e.first for e in ERAS] == sorted(e.first for e in ERAS)
    assert era_for(release("5.2.11")).removal == "zap_all" and era_for(release("5.2.16")).removal == "zap_all_fast"
    assert "kvm_mmu_zap_all_fast" not in era_for(release("5.3")).zap_events  # tracepoint back only in 5.4
    assert "kvm_mmu_invalidate_zap_all_pages" in era_for(release("4.19")).zap_events
    for e in ERAS:
        assert e.removal in RULES and (e.zap_slot is None or e.zap_slot in RULES)
        for cite in (e.role_cite, e.spte_cite, e.mmio_cite):
            assert cite.file.startswith("arch/x86/") and cite.function and cite.at
    assert not RULES["level_mask_2019"].shipped and "never shipped" in RULES["level_mask_2019"].label()
    assert all(r.shipped for n, r in RULES.items() if n != "level_mask_2019")
    with pytest.raises(TraceError, match="level_mask_2019"):
        replay(_load(SAMPLES / "ptslot-zapslot.dat")[0], zap_rule="no_such_rule")


def test_level_mask_proposal_by_hand():
    """The 2019 thread's proposed rewrite (never merged). Slot gfns [0x20200, 0x20400): 512 pages, so the
    largest level it can hold is 2 (512 < 512**2 drops level 3). Level-1 pages: mask ~0x1ff, range
    [0x20200, 0x20200]; level 2: mask ~0x3ffff, range [0x0, 0x0]; level 3: skipped."""
    p = profile_for("5.2.0")
    shift = p.role_field("level").shift
    gfns = np.array([0x20200, 0x20201, 0x20000, 0x0, 0x0, 0x40000], dtype=np.uint64)
    levels = np.array([1, 1, 1, 2, 3, 2], dtype=np.uint64)
    got = rule_mask(RULES["level_mask_2019"], p, gfns, levels << np.uint64(shift), 0x20200, 0x200)
    assert got.tolist() == [True, False, False, True, False, False]
    # what shipped in 5.1 on the same pages: sp->gfn inside the slot, whatever the level or role
    assert rule_mask(RULES["gfn_2019"], p, gfns, levels << np.uint64(shift), 0x20200, 0x200).tolist() == \
        [True, True, False, False, False, False]


def test_dropped_indirect_zap_found_under_612_and_51_rules():
    """ptslot-zapslot (6.12, shadow MMU, quirk off: the guest's page tables live in the deleted
    slot): drop the kernel's kvm_mmu_prepare_zap_page of one indirect level-1 page in the slot. The
    6.12 rule names exactly that page (error); the 5.1 rule names it too (info: not this kernel's
    rule), besides what it names on the clean trace; the never-merged proposal misses it."""
    data, clean = _load(SAMPLES / "ptslot-zapslot.dat")
    p = profile_for(data.info.kernel)
    zaps = decode_role(data.table("kvm_mmu_prepare_zap_page"), p).to_pylist()
    c, z = next((c, z) for c in _removals(clean) for z in zaps
                if c["window_start"] <= z["seq"] <= c["seq"] and _in(c, z["gfn"]) and not z["direct"]
                and z["level"] == 1)
    mutated = without(data, [z["seq"]])
    own = replay(mutated)
    assert [(f["severity"], f["gfn"], f["seq"]) for f in _miss(own)] == [("error", z["gfn"], c["seq"])]
    assert "rule applied: gptes" in dict(zip(own.checks["id"].to_pylist(), own.checks["reason"].to_pylist()))[
        "memslot_zap_miss"]

    def keyed(result):
        return {(f["seq"], f["gfn"], f["message"].split(" (gfn")[0]) for f in _miss(result)}

    before, after = keyed(replay(data, zap_rule="gfn_2019")), keyed(replay(mutated, zap_rule="gfn_2019"))
    new = after - before
    assert len(new) == 1 and next(iter(new))[:2] == (c["seq"], z["gfn"])
    missed = _miss(replay(mutated, zap_rule="gfn_2019"))
    assert all(f["severity"] == "info" and "gfn_2019" in f["message"] for f in missed)
    proposal = replay(mutated, zap_rule="level_mask_2019")
    assert not any(f["gfn"] == z["gfn"] and f["seq"] == c["seq"] for f in _miss(proposal))
    assert any("never shipped" in a for a in proposal.assumptions)


@pytest.mark.parametrize("name", ZAPSLOT)
def test_51_rule_flags_only_surviving_pages_whose_gfn_is_in_the_slot(name, nested_dir):
    """On clean 6.12 zap-slot recordings the 5.1 rule must name exactly the valid pages alive after
    each delete whose sp->gfn lies in the slot: the direct ones, which 6.12 keeps. Computed from the
    events: pages created (get_page new) before the change's line, not zapped by then, gfn in range.
    A direct level-1 page covering the slot from a gfn outside it is never named."""
    path = nested_dir / f"{name[7:]}.dat" if name.startswith("nested/") else SAMPLES / f"{name}.dat"
    data, clean = _load(path)
    assert not _miss(clean, "error")
    p = profile_for(data.info.kernel)
    gets = decode_role(data.table("kvm_mmu_get_page"), p).to_pylist()
    zaps = data.table("kvm_mmu_prepare_zap_page").to_pylist()
    result = replay(data, zap_rule="gfn_2019")
    got = {(f["seq"], f["gfn"]) for f in _miss(result)}
    want = set()
    for c in _removals(clean):
        for g in gets:
            if not (g["created"] and g["seq"] < c["seq"] and _in(c, g["gfn"]) and not g["invalid"]):
                continue
            gone = any(z["gfn"] == g["gfn"] and z["role"] & ~(1 << 11) == g["role"] and g["seq"] < z["seq"] <= c["seq"]
                       for z in zaps)
            if not gone:
                want.add((c["seq"], g["gfn"]))
                assert g["direct"], "6.12 zaps every indirect page in the slot"
    assert want and got == want
    # and a direct page whose range covers removed gfns from a gfn outside the slot stays unnamed
    for f in _miss(result):
        c = next(c for c in _removals(clean) if c["seq"] == f["seq"])
        assert _in(c, f["gfn"])


def test_nested_indirect_page_on_a_tdp_host_is_checked(nested_dir):
    """tdp-churn-noquirk (6.12 TDP MMU, quirk off) has no nested guest, so its check says why it is
    not evaluated. Turn one TDP page table that lies in a slot deleted later into what L2's shadow
    MMU would create there (indirect, guest_mode): no zap of it follows, so the per-slot zap missed
    a page it must destroy, and the check must say so although the host uses the TDP MMU."""
    data, clean = _load(nested_dir / "tdp-churn-noquirk-small-kt.dat")
    assert clean.mmu == "tdp"
    reason = dict(zip(clean.checks["id"].to_pylist(), clean.checks["reason"].to_pylist()))["memslot_zap_miss"]
    assert "no indirect (nested guest_mode) shadow page" in reason
    p = profile_for(data.info.kernel)
    later = _removals(clean)
    g, c = next((g, c) for g in data.table("kvm_mmu_get_page").to_pylist() for c in later
                if g["created"] and g["seq"] < c["window_start"] and _in(c, g["gfn"]))
    direct, guest = 1 << p.role_field("direct").shift, 1 << p.role_field("guest_mode").shift

    result = replay(altered(data, "kvm_mmu_get_page", g["seq"], role=(g["role"] & ~direct) | guest))
    first = [f for f in _miss(result) if f["seq"] == c["seq"]]
    assert [(f["severity"], f["gfn"]) for f in first] == [("error", g["gfn"])]
    assert all(f["gfn"] == g["gfn"] for f in _miss(result))
    reason = dict(zip(result.checks["id"].to_pylist(), result.checks["reason"].to_pylist()))["memslot_zap_miss"]
    assert "nested guest_mode" in reason
