"""A per-slot zap that missed an indirect page is found from the kernel's text too.

Oracle: the injection. The zap dropped is chosen on the trace.dat (the kernel's
``kvm_mmu_prepare_zap_page`` of an indirect level-1 page whose gfn lies in a slot being deleted,
inside that delete's window), and the same record is dropped from the text twin: page-event rows
pair one to one in both forms because text keeps the kernel's order (tests/test_text_roles.py). The
text replay must name exactly that page at that delete, as the binary replay of the same mutation
does. When the guest builds that page again, the binary replay sees a new page of a live identity
(its zap went untraced); text cannot tell that from a page differing in unprinted role bits, so
the old page is no longer judged at later deletes, and the check says so.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SAMPLES
from mutate import altered, without

from kvmtrace import parsers
from kvmtrace.replays import replay
from kvmtrace.replays.profiles import decode_role, profile_for

#: 6.12 layout (kvm_host.h): level in bits 0-3, direct bit 7.
LEVEL_BITS, DIRECT = 0xF, 1 << 7
_CACHE: dict = {}


def _status(result, check: str = "memslot_zap_miss") -> tuple[str, str]:
    i = result.checks["id"].to_pylist().index(check)
    return result.checks["status"][i].as_py(), result.checks["reason"][i].as_py()


def _targets():
    """(binary, text, rows of the zaps to drop, the delete each belonged to) of ptslot-zapslot:
    every indirect level-1 page the kernel zapped for a delete of the slot holding it (the guest's
    page tables live in that slot). The other zap-slot recordings have no such page (their deleted
    slots hold no guest page table)."""
    if not _CACHE:
        binary, text = parsers.read(SAMPLES / "ptslot-zapslot.dat"), parsers.read(SAMPLES / "ptslot-zapslot.txt.gz")
        clean = replay(binary)
        zaps = decode_role(binary.table("kvm_mmu_prepare_zap_page"), profile_for(binary.info.kernel)).to_pylist()
        removals = [c for c in clean.memslots.to_pylist() if c["kind"] in ("delete", "move") and c["old_npages"]]
        rows = [(i, c) for c in removals for i, z in enumerate(zaps)
                if c["window_start"] <= z["seq"] <= c["seq"] and not z["direct"] and z["level"] == 1
                and c["old_base_gfn"] <= z["gfn"] < c["old_base_gfn"] + c["old_npages"]]
        _CACHE["t"] = binary, text, rows
    return _CACHE["t"]


def test_ptslot_has_indirect_zaps_to_drop():
    _binary, text, rows = _targets()
    assert len(rows) == 10  # the parametrized drops below
    assert _status(replay(text))[0] == "passed"


@pytest.mark.parametrize("k", range(10))
def test_dropped_indirect_zap_is_found_from_text(k):
    binary, text, rows = _targets()
    row, c = rows[k]
    tz, bz = text.table("kvm_mmu_prepare_zap_page"), binary.table("kvm_mmu_prepare_zap_page")
    assert tz.num_rows == bz.num_rows and tz["gfn"][row] == bz["gfn"][row]
    assert tz["role_partial"][row].as_py() == bz["role"][row].as_py() & tz["role_mask"][row].as_py()
    gfn, role = bz["gfn"][row].as_py(), bz["role"][row].as_py()

    got_text = replay(without(text, [tz["seq"][row].as_py()]))
    got_binary = replay(without(binary, [bz["seq"][row].as_py()]))
    found = [f for f in got_text.findings.to_pylist() if f["id"] == "memslot_zap_miss"]
    expected = [f for f in got_binary.findings.to_pylist() if f["id"] == "memslot_zap_miss"]
    assert [(f["severity"], f["gfn"], f["seq"]) for f in expected] == [("error", gfn, c["seq"])]
    assert [(f["severity"], f["gfn"]) for f in found] == [("error", gfn)]
    # at the delete whose zap was dropped: its QEMU line's µs, as in the trace.dat
    assert found[0]["ts"] // 1000 == (expected[0]["ts"] + 500) // 1000
    status, reason = _status(got_text)
    assert status == "failed" and "rule applied: gptes" in reason
    assert f"gfn {gfn:#x} role {role & 0x11FFF:#x}, printed bits 0x11fff" in found[0]["message"]
    # built again later (a new page of its identity): from then on the survivor is not judged
    gets = text.table("kvm_mmu_get_page").to_pylist()
    again = [g["seq"] for g in gets if g["created"] and g["gfn"] == gfn and g["seq"] > tz["seq"][row].as_py()
             and g["role_partial"] == tz["role_partial"][row].as_py()]
    pages = got_text.shadow_pages.to_pylist()
    survivor = next(p for p in pages if p["gfn"] == gfn and p["first_seq"] < tz["seq"][row].as_py() < (
        p["zap_seq"] or 1 << 62))
    assert survivor["zap_seq"] is None and survivor["shared_seq"] == (again[0] if again else None)
    assert ("a page of the same gfn and printed role bits was created while they lived" in reason) == bool(again)


def test_surviving_page_that_could_be_a_passthrough_root_is_not_judged(nested_dir):
    """passthrough (bit 18) is not printed, and only an indirect level-5 root can have it (such a
    root holds no guest PTEs and the upstream rule spares it). Make the page whose zap is dropped
    a level-5 one in every event of its lifetime: text cannot say whether the kernel owed its zap, so the check is
    not_evaluated and names the bit instead of passing or flagging it."""
    _, text, rows = _targets()
    row = rows[0][0]
    tz = text.table("kvm_mmu_prepare_zap_page")
    gfn, partial = tz["gfn"][row].as_py(), tz["role_partial"][row].as_py()
    assert not partial & DIRECT and partial & LEVEL_BITS == 1
    dropped = tz["seq"][row].as_py()
    mutated = without(text, [dropped])
    five = (partial & ~LEVEL_BITS) | 5
    for event in ("kvm_mmu_get_page", "kvm_mmu_sync_page", "kvm_mmu_unsync_page", "kvm_mmu_prepare_zap_page"):
        t = mutated.tables.get(event)
        if t is None:
            continue
        hit = (np.asarray(t["gfn"].to_numpy()) == gfn) & (np.asarray(t["role_partial"].to_numpy()) == partial)
        hit &= np.asarray(t["seq"].to_numpy()) < dropped
        for seq in np.asarray(t["seq"].to_numpy())[hit].tolist():
            mutated = altered(mutated, event, seq, role_partial=five)
    result = replay(mutated)
    status, reason = _status(result)
    assert status == "not_evaluated"
    assert "passthrough (bit 18) is not printed" in reason and "1 such root(s) left alive" in reason
    assert not [f for f in result.findings.to_pylist() if f["id"] == "memslot_zap_miss"]
