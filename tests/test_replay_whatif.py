"""What-if and summaries against what the kernel actually did in the same recording.

For the trace's own policy the what-if must predict exactly what the kernel then destroyed:
under zap-all and zap-slot on the shadow MMU, the ``kvm_mmu_prepare_zap_page`` events the ioctl
thread emitted inside the change's window; under the TDP MMU's zap-slot, its traced leaf zaps.
Those counts come straight from the events, not from the model.
"""

from __future__ import annotations

import pytest
from conftest import NESTED, SAMPLES

from kvmtrace import parsers
from kvmtrace.replays import replay
from kvmtrace.replays.profiles import profile_for

FILES = [SAMPLES / f"{n}.dat" for n in ("churn-zapall", "churn-zapslot", "ptslot-zapslot", "ptslot-zapall",
                                        "rom-zapall", "multi-zapslot")] + \
        [NESTED / f"{n}.dat" for n in ("tdp-churn-noquirk-small-kt", "shadow-churn-noquirk-small-kt")]


def _kernel_counts(data, change, profile):
    pid, lo, hi = change["pid"], change["window_start"], change["seq"]
    zaps = data.table("kvm_mmu_prepare_zap_page").to_pydict()
    pages = sum(1 for s, p in zip(zaps["seq"], zaps["pid"]) if lo <= s <= hi and p == pid)
    leaf = 0
    t = data.tables.get("kvm_tdp_mmu_spte_changed")
    if t is not None and t.num_rows:
        c = t.to_pydict()
        leaf = sum(1 for s, p, o, n, lv in zip(c["seq"], c["pid"], c["old_spte"], c["new_spte"], c["level"])
                   if lo <= s <= hi and p == pid and profile.present(o) and not profile.present(n)
                   and (lv == 1 or o & profile.large_mask))
    return pages, leaf


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_whatif_own_policy_matches_kernel(path, nested_dir):
    if not path.exists():
        pytest.fail(f"{path.name} is missing (lab/record-samples.sh records it)")
    data = parsers.read(path)
    result = replay(data)
    profile = profile_for(data.info.kernel)
    changes = {c["seq"]: c for c in result.memslots.to_pylist()}
    own = [w for w in result.whatif.to_pylist() if w["trace_policy"]]
    assert own, "every file here deletes or moves slots"
    for w in own:
        pages, leaf = _kernel_counts(data, changes[w["seq"]], profile)
        if result.mmu == "tdp":
            assert w["sptes_destroyed"] == leaf, w
        else:
            assert w["pages_destroyed"] == pages, w
    # the other policy is always reported too, and zap-all never destroys less
    other = {(w["seq"], w["policy"]): w for w in result.whatif.to_pylist()}
    for (seq, policy), w in other.items():
        if policy == "zap_all":
            assert w["sptes_destroyed"] >= other[(seq, "zap_slot")]["sptes_destroyed"]
            assert w["pages_destroyed"] >= other[(seq, "zap_slot")]["pages_destroyed"]
    # shadow zap-slot: the SPTEs the own policy destroys are the ones the model then removes through
    # the untraced per-slot rmap zap (two paths: the snapshot before the change, the SPTE lifetimes)
    if result.mmu != "tdp" and result.zap_policy == "zap_slot":
        inferred = [r for r in result.spte_changes.select(["reason"]).to_pylist()
                    if r["reason"] == "per-slot zap of leaf SPTEs (rmap, untraced)"]
        assert sum(w["sptes_destroyed"] for w in own) == len(inferred)
    # refault counts are exact only where the trace destroyed at least as much as the policy would:
    # its own policy, and zap-slot inside a zap-all trace; zap-all in a zap-slot trace is a bound
    for w in result.whatif.to_pylist():
        assert w["refaults_exact"] == (w["trace_policy"] or result.zap_policy == "zap_all"), w
        assert w["pages_refaulted"] <= w["pages_destroyed"] and w["sptes_refaulted"] <= w["sptes_destroyed"], w


def test_zap_all_summary_counts_kernel_zaps():
    """churn-zapall: each zap-all's obsoleted pages are all zapped by the kernel; the summary's
    count equals the prepare_zap events between that zap-all and the next memslot line."""
    path = SAMPLES / "churn-zapall.dat"
    if not path.exists():
        pytest.fail("churn-zapall is missing (lab/record-samples.sh records it)")
    data = parsers.read(path)
    result = replay(data)
    zaps = data.table("kvm_mmu_prepare_zap_page").to_pydict()
    invalid = 1 << profile_for(data.info.kernel).role_field("invalid").shift
    lines = sorted(c["seq"] for c in result.memslots.to_pylist())
    rows = result.summaries["zap_all"].to_pylist()
    assert len(rows) == data.table("kvm_mmu_zap_all_fast").num_rows
    for r in rows:
        line = next(s for s in lines if s > r["seq"])
        # distinct pages of the obsolete generation zapped before the line (a root still in use is
        # zapped twice: marked invalid, then freed with the invalid bit in its role)
        zapped = {(g, role & ~invalid) for s, g, role, gen in zip(zaps["seq"], zaps["gfn"], zaps["role"],
                                                                   zaps["mmu_valid_gen"])
                  if r["seq"] < s < line and gen == r["mmu_valid_gen"]}
        assert r["pages_zapped"] == r["obsoleted"] == len(zapped)
        assert r["pages_rebuilt"] <= r["obsoleted"]
