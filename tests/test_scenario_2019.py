"""The 2019 scenario (seed 000), reproduced on real recordings: 6.12, the legacy MMU in TDP mode
(``kvm.tdp_mmu=0``, NPT), the lab's ``ptslot`` and ``churn`` with ``--no-zap-all-quirk`` (the
per-slot zap), memslot lines only in a QEMU-style log on its own clock (tests/data/nested/README.md).

Oracles come from the files themselves, never from the replay: the log's own lines (the lab writes
``kvmlab_memslot_move`` for each true KVM_MR_MOVE, for which QEMU has no line), the trace's
``kvm_mmu_set_spte`` / ``kvm_page_fault`` rows, and the README's facts (one 2 MiB level-2 leaf maps
the page-table slot; its removal on every delete/move is untraced; the only trace of it is the same
leaf installed again: gfn 0x20000 four times, 0x20400 three times).
"""

from __future__ import annotations

import re

from conftest import NESTED, SAMPLES
from kvmtrace import parsers
from kvmtrace.replays import memslots as ms
from kvmtrace.replays import replay
from kvmtrace.replays.inputs import kvmmmu_events
from kvmtrace.replays.mutate import altered, without
from kvmtrace.replays.placement import facts_from
from kvmtrace.replays.profiles import profile_for

PTSLOT = NESTED / "tdpmmu0-ptslot-noquirk-qlog-kt"
CHURN = NESTED / "tdpmmu0-churn-noquirk-qlog-kt"
MOVE = re.compile(r"kvmlab_memslot_move AddrSpace#0 Slot#(\d+) flags=0x0 old_gpa=(0x[0-9a-f]+) gpa=(0x[0-9a-f]+) "
                  r"size=(0x[0-9a-f]+)")


def _log(stem) -> list[str]:
    return stem.with_suffix(".qemu.log").read_text().splitlines()


def _replay(stem, **kw):
    return replay(parsers.read(stem.with_suffix(".dat")), qemu_log_lines=_log(stem), **kw)


def _lab_moves(lines: list[str]) -> dict[int, tuple[int, int, int, int]]:
    """line number -> (slot, old gfn, new gfn, pages) of every true move the lab logged."""
    return {n: (int(m[1]), int(m[2], 16) >> 12, int(m[3], 16) >> 12, int(m[4], 16) >> 12)
            for n, t in enumerate(lines, 1) if (m := MOVE.search(t))}


# -- step 1: the lab's true moves (and its other layout lines) are part of the timeline --------------

def test_true_moves_read_from_the_qemu_log():
    """Each ``kvmlab_memslot_move`` of the log is a move of that slot from the old gpa to the new
    one, sourced to its log line, placed on the trace with a confidence; the log's
    ``kvmlab_start slot_zap_all_quirk=0`` is the policy hint."""
    for stem, n_moves in ((PTSLOT, 3), (CHURN, 2)):
        lines = _log(stem)
        moves = _lab_moves(lines)
        assert len(moves) == n_moves
        result = _replay(stem)
        rows = {r["source"]: r for r in result.memslots.to_pylist()}
        for n, (slot, old, new, pages) in moves.items():
            r = rows[f"QEMU log line {n}"]
            assert (r["kind"], r["slot"], r["old_base_gfn"], r["base_gfn"], r["npages"]) == \
                ("move", slot, old, new, pages)
            if stem is PTSLOT:  # placed from the vCPU thread's stretches outside KVM_RUN (churn: see below)
                assert r["seq"] is not None and 0 < r["confidence"] < 1 and r["placement"].startswith("after seq")
            else:  # placed, or unplaced with the reason: never a guess
                assert (r["seq"] is not None and 0 < r["confidence"] <= 1) or \
                    (r["confidence"] is None and r["placement"].startswith("unplaced: "))
        # every QEMU line plus every lab move, nothing else
        n_qemu = sum("kvm_set_user_memory" in t for t in lines)
        assert result.memslots.num_rows == n_qemu + n_moves


def test_quirk_hint_and_dirty_log_lines_of_the_lab():
    """The lab's other lines the timeline reads: ``kvmlab_start ... slot_zap_all_quirk=N`` (from a
    log too) and ``kvmlab_dirty_log Slot#N`` after each KVM_GET_DIRTY_LOG (lab/README.md's form)."""
    data = parsers.read(PTSLOT.with_suffix(".dat"))
    profile = profile_for(data.info.kernel)
    seq, pid, zap = kvmmmu_events(data, profile)
    tl = ms.from_log(_log(PTSLOT), facts_from(data, profile), seq, pid, zap)
    assert tl.quirk_hint == 0
    # the lab's current form (sample_traces) and the earlier workload's (the nested dirty recording)
    for path in (SAMPLES / "dirty-zapall.dat", NESTED / "tdpx-dirty-prefault-kt.dat"):
        dirty = parsers.read(path)
        bufs = dirty.table("print").to_pydict()
        marked = [(s, int(re.search(r"Slot#(\d+)", b)[1])) for s, b in zip(bufs["seq"], bufs["buf"])
                  if b and re.match(r"kvmlab_(get_)?dirty_log ", b)]
        ev = dirty.events
        tl = ms.from_prints(dirty.tables.get("print"), ev.column("seq").to_numpy(), ev.column("pid").to_numpy())
        assert marked and tl.get_dirty == marked


# -- step 2: dangling_spte where the leaf zaps are untraced ------------------------------------------

def _fault_rows(data) -> list[dict]:
    return data.table("kvm_page_fault").to_pylist()


def _oracle_proofs(data, removals) -> dict[int, tuple[int | None, int | None]]:
    """Per delete/move of the pt-slot: the first not-present NPF on the old 2 MiB range after its
    line (SVM exit_info_1: P bit 0 and RSVD bit 3 clear) and the first level-2 re-install of the
    range's base gfn, straight from the events."""
    installs = data.table("kvm_mmu_set_spte").to_pylist()
    out = {}
    for r in removals:
        lo, hi = r["old_base_gfn"], r["old_base_gfn"] + 512
        nf = next((f["seq"] for f in _fault_rows(data) if f["seq"] > r["seq"]
                   and lo <= f["fault_address"] >> 12 < hi and not f["error_code"] & 0x9), None)
        ri = next((i["seq"] for i in installs if i["seq"] > r["seq"] and i["gfn"] == lo and i["level"] == 2), None)
        out[r["seq"]] = (nf, ri)
    return out


def test_dangling_spte_judged_from_what_the_guest_did_next():
    """Legacy MMU in TDP mode, zap-slot: the one level-2 leaf over the pt-slot leaves untraced at
    each delete/move. A later not-present fault or a re-install of that leaf proves it went; after
    the last move and the last delete the guest never touches the range again, and the check says
    that it cannot tell there instead of passing it silently."""
    data = parsers.read(PTSLOT.with_suffix(".dat"))
    result = _replay(PTSLOT)
    removals = [r for r in result.memslots.to_pylist() if r["kind"] in ("delete", "move")]
    oracle = _oracle_proofs(data, removals)
    rows = [r for r in result.summaries["consequences"].to_pylist()
            if r["what"] in ("leaf_removed", "leaf_not_provable", "dangling_spte")]
    assert [r["change_seq"] for r in rows] == [r["seq"] for r in removals]  # one leaf per change
    for r in rows:
        nf, ri = oracle[r["change_seq"]]
        if nf is None and ri is None:
            assert r["what"] == "leaf_not_provable" and "cannot show" in r["detail"]
        else:
            assert r["what"] == "leaf_removed" and r["seq"] == min(s for s in (nf, ri) if s is not None)
            assert {s for s in (nf, ri) if s is not None} <= set(r["evidence"])
            assert (f"fault with no entry present at seq {nf}" in r["detail"]) == (nf is not None)
            assert (f"installed again at seq {ri}" in r["detail"]) == (ri is not None)
    assert [r["what"] for r in rows].count("leaf_removed") == 5
    check = next(c for c in result.checks.to_pylist() if c["id"] == "dangling_spte")
    assert check["status"] == "passed" and check["findings"] == 0
    assert "5 of 7 leaf removal(s) proved, 0 dangling, 2 not provable" in check["reason"]
    for seq in (1761, 1790):  # the last move and delete: never touched again
        assert re.search(rf"{seq} \((move|delete)\): 1 not provable: level-2 leaf", check["reason"])


def test_a_leaf_the_delete_left_is_a_dangling_spte():
    """Mutation: the first access after the first delete finds the old entry present (a protection
    fault, as a leaf the rmap zap missed would give): dangling_spte names that delete and leaf. Drop
    the guest's later touches of the range instead and the delete is not provable: never guessed."""
    data = parsers.read(PTSLOT.with_suffix(".dat"))
    log = _log(PTSLOT)
    first = next(f for f in _fault_rows(data) if f["seq"] > 1612 and f["fault_address"] >> 12 == 0x20000)
    bad = replay(altered(data, "kvm_page_fault", first["seq"], error_code=first["error_code"] | 1),
                 qemu_log_lines=log)
    found = bad.findings.to_pylist()
    assert [(f["id"], f["severity"], f["seq"], f["gfn"]) for f in found] == [("dangling_spte", "error", 1612, 0x20000)]
    assert first["seq"] in found[0]["evidence"] and "protection fault" in found[0]["message"]
    assert next(c for c in bad.checks.to_pylist() if c["id"] == "dangling_spte")["status"] == "failed"
    touches = [r["seq"] for name in ("kvm_page_fault", "kvm_mmu_spte_requested", "kvm_mmu_set_spte")
               for r in data.table(name).to_pylist() if 1612 < r["seq"] < 1672
               and 0x20000 <= (r.get("gfn") if "gfn" in r else r["fault_address"] >> 12) < 0x20200]
    blind = replay(without(data, touches), qemu_log_lines=log)
    row = next(r for r in blind.summaries["consequences"].to_pylist() if r["change_seq"] == 1612
               and r["what"].startswith("leaf"))
    assert row["what"] == "leaf_not_provable" and not blind.findings.num_rows
