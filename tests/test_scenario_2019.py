"""The 2019 scenario (the per-memslot zap thread, docs/threads.md), reproduced on real recordings:
6.12, the legacy MMU in TDP mode
(``kvm.tdp_mmu=0``, NPT), the lab's ``ptslot`` and ``churn`` with ``--no-zap-all-quirk`` (the
per-slot zap), memslot lines only in a QEMU-style log on its own clock (tests/data/nested/README.md).

Oracles come from the files themselves, never from the replay: the log's own lines (the lab writes
``kvmlab_memslot_move`` for each true KVM_MR_MOVE, for which QEMU has no line), the trace's
``kvm_mmu_set_spte`` / ``kvm_page_fault`` rows, and the README's facts (one 2 MiB level-2 leaf maps
the page-table slot; its removal on every delete/move is untraced; the only trace of it is the same
leaf installed again: gfn 0x20000 four times, 0x20400 three times).
"""

from __future__ import annotations

import collections
import json
import re
import subprocess
import sys

import jsonschema
import pytest
from conftest import NESTED, SAMPLES
from mutate import altered, without

from kvmtrace import parsers
from kvmtrace.replays import memslots as ms
from kvmtrace.replays import replay
from kvmtrace.replays.inputs import kvmmmu_events
from kvmtrace.replays.placement import facts_from
from kvmtrace.replays.profiles import profile_for
from kvmtrace.report import report_schema

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


# -- step 3: the report answers the maintainer's questions, with evidence lines ------------------------

CLI = [sys.executable, "-c", "from kvmtrace.cli import main; main()"]


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=600, check=False)


def _lab_removals(lines: list[str]) -> list[tuple[int, str, int]]:
    """(log line number, kind, old gfn) of every delete and move the lab made, in order: QEMU's
    ``size=0x0`` lines and the lab's ``kvmlab_memslot_move`` lines."""
    out = []
    for n, t in enumerate(lines, 1):
        if "kvm_set_user_memory" in t and " size=0x0 " in t:
            out.append((n, "delete", int(re.search(r"gpa=(0x[0-9a-f]+)", t)[1], 16) >> 12))
        elif (m := MOVE.search(t)):
            out.append((n, "move", int(m[2], 16) >> 12))
    return out


@pytest.fixture(scope="module")
def ptslot_json() -> dict:
    run = _cli("analyze", PTSLOT.with_suffix(".dat"), "--qemu-log", PTSLOT.with_suffix(".qemu.log"), "--format", "json")
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_each_delete_placed_from_the_log_with_its_confidence(ptslot_json):
    doc = ptslot_json
    jsonschema.validate(doc, report_schema())
    assert (doc["replay"]["mmu"], doc["replay"]["zap_policy"]) == ("legacy_tdp", "zap_slot")
    assert not doc["findings"] and all(c["status"] != "failed" for c in doc["checks"])
    lab = _lab_removals(_log(PTSLOT))
    removals = doc["removals"]
    assert [(r["source"], r["kind"], r["base_gfn"]) for r in removals] == \
        [(f"QEMU log line {n}", kind, gfn) for n, kind, gfn in lab]
    for r in removals:  # placed by the ioctl thread's stretches outside KVM_RUN, on the log clock
        assert r["policy"] == "zap_slot" and 0.5 < r["confidence"] < 1
        assert r["placement"].startswith(f"after seq {r['seq']}: ") and "log clock" in r["placement"]
    # the JSON timeline says where each line came from and how it was placed
    timeline = {row["source"]: row for row in doc["memslots"]["rows"]}
    assert all(timeline[r["source"]]["confidence"] == r["confidence"] for r in removals)


def test_which_pages_survived_each_delete_and_whether_the_rule_allowed_it(ptslot_json):
    """6.12's rule (gptes): only pages with guest PTEs in the slot are zapped; the legacy TDP
    MMU's pages are all direct, so the root (L4), L3 and L2 pages whose entries map the slot
    survive every delete and move, allowed, each cited with its kvm_mmu_get_page line."""
    data = parsers.read(PTSLOT.with_suffix(".dat"))
    created = {r["seq"]: r for r in data.table("kvm_mmu_get_page").to_pylist() if r["created"]}
    for r in ptslot_json["removals"]:
        survived = [a for a in r["after"] if a["what"] == "page_survived"]
        assert sorted(a["level"] for a in survived) == [2, 3, 4]
        lines = {e["seq"]: e["line"] for e in r["evidence_lines"]}
        for a in survived:
            assert a["allowed"] is True and "gptes rule does not zap it" in a["detail"]
            assert a["detail"].startswith(f"direct level-{a['level']} page")
            assert created[a["seq"]]["gfn"] == a["gfn"] == 0  # the kernel's own creation of that page
            assert "kvm_mmu_get_page" in lines[a["seq"]] and "created=1" in lines[a["seq"]]
        assert all(p["fate"] == "kept" and p["direct"] for p in r["pages"])


def test_what_vcpus_did_on_the_range_afterwards(ptslot_json):
    """The README's count: gfn 0x20000's leaf installed 4 times, 0x20400's 3 times, so 3 and 2
    re-installs prove the untraced removals; each one's fault and install are evidence lines."""
    data = parsers.read(PTSLOT.with_suffix(".dat"))
    installs = {r["seq"]: r for r in data.table("kvm_mmu_set_spte").to_pylist()}
    faults = {r["seq"]: r for r in data.table("kvm_page_fault").to_pylist()}
    again = collections.Counter()
    for r in ptslot_json["removals"]:
        lines = {e["seq"]: e["line"] for e in r["evidence_lines"]}
        assert f"{r['seq']}" and r["seq"] in lines  # the event the change is placed after
        for a in r["after"]:
            if a["what"] == "reinstall":
                again[a["gfn"]] += 1
                ev = installs[a["seq"]]
                assert (ev["gfn"], ev["level"], ev["pid"]) == (a["gfn"], a["level"], a["pid"]) == (a["gfn"], 2, 262)
                assert f"kvm_mmu_set_spte: gfn={a['gfn']:#x}" in lines[a["seq"]]
            if a["what"] == "leaf_removed":
                nf = next(s for s in a["evidence"] if s in faults)
                assert not faults[nf]["error_code"] & 1 and "kvm_page_fault" in lines[nf]
    assert again == {0x20000: 3, 0x20400: 2}
    whats = [[a["what"] for a in r["after"] if a["what"] != "page_survived"] for r in ptslot_json["removals"]]
    assert whats == [["reinstall", "leaf_removed"]] * 5 + [["leaf_not_provable"]] * 2


def test_the_text_report_says_it_too():
    run = _cli("analyze", PTSLOT.with_suffix(".dat"), "--qemu-log", PTSLOT.with_suffix(".qemu.log"))
    assert run.returncode == 0, run.stderr
    text = run.stdout
    assert "0 errors, 0 warnings, 0 notes; 0 of 9 checks failed" in text
    assert text.count("Evidence (seq: trace line):") == 7
    for n, kind, _ in _lab_removals(_log(PTSLOT)):
        assert f"the {kind}'s line (QEMU log line {n}) is placed right after this event" in text
    assert text.count("page_survived") == 21 and text.count("leaf_not_provable") == 2
    flat = " ".join(text.split())
    assert "fault with no entry present at seq 1647 (vCPU thread 262, gfn 0x20000); installed again at seq 1649" in flat
    assert "summary: consequences" not in text  # shown per change, not as a generic table
    assert max(map(len, text.splitlines())) <= 80


def test_the_python_api_gives_the_same_report():
    import kvmtrace

    report = kvmtrace.open(PTSLOT.with_suffix(".dat")).analyze(qemu_log=_log(PTSLOT)).model
    want_sources = [f"QEMU log line {n}" for n, _, _ in _lab_removals(_log(PTSLOT))]
    assert [r.row["source"] for r in report.removals] == want_sources
    reinstalls = collections.Counter(rec["gfn"] for r in report.removals for rec in r.after.records()
                                     if rec["what"] == "reinstall")
    assert reinstalls == {0x20000: 3, 0x20400: 2}


def test_the_churn_recording():
    """churn: BAR slots deleted, re-created and moved; the ioctl thread is not the vCPU thread, so
    only the lines the MMIO generations bound are placed, the others say why they are not; the
    report still has no error and evaluates dangling_spte on what it could place."""
    run = _cli("analyze", CHURN.with_suffix(".dat"), "--qemu-log", CHURN.with_suffix(".qemu.log"), "--format", "json")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    jsonschema.validate(doc, report_schema())
    assert doc["replay"]["mmu"] == "legacy_tdp" and not doc["findings"]
    rows = doc["memslots"]["rows"]
    assert len(rows) == sum("kvm_set_user_memory" in t for t in _log(CHURN)) + 2
    for row in rows:
        assert (row["seq"] is None) == (row["confidence"] is None) == row["placement"].startswith("unplaced: ")
    placed = [r for r in doc["removals"]]
    assert placed and all(r["confidence"] == 1.0 and "generation" in r["placement"] for r in placed)
    check = next(c for c in doc["checks"] if c["id"] == "dangling_spte")
    assert check["status"] == "passed" and "leaf removal(s) proved" in check["reason"]


@pytest.fixture(scope="module")
def ptslot_text_json() -> dict:
    run = _cli("analyze", PTSLOT.with_suffix(".txt.gz"), "--qemu-log", PTSLOT.with_suffix(".qemu.log"),
               "--format", "json")
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_text_twin_places_each_delete_and_shows_the_reinstalls_alike(ptslot_json, ptslot_text_json):
    """The kernel's own text of the same records, with the same log: the same deletes and moves at
    the same places with the same confidence, the same re-installs, no finding."""
    text, dat = ptslot_text_json, ptslot_json
    jsonschema.validate(text, report_schema())
    assert not text["findings"]

    def placed(doc):
        return [(r["source"], r["seq"], r["kind"], r["base_gfn"], r["confidence"]) for r in doc["removals"]]

    def again(doc):
        return [(r["seq"], a["seq"], a["gfn"], a["level"]) for r in doc["removals"] for a in r["after"]
                if a["what"] == "reinstall"]

    assert placed(text) == placed(dat) and len(placed(text)) == 7
    assert again(text) == again(dat) and len(again(text)) == 5


def test_text_twin_judges_leaves_and_pages_alike(ptslot_json, ptslot_text_json):
    text, dat = ptslot_text_json, ptslot_json
    assert text["replay"]["mmu"] == dat["replay"]["mmu"] == "legacy_tdp"

    def after(doc):
        return [(r["seq"], a["what"], a["seq"], a["gfn"], a["level"], a["allowed"]) for r in doc["removals"]
                for a in r["after"]]

    def dangling(doc):
        return next((c["status"], c["reason"]) for c in doc["checks"] if c["id"] == "dangling_spte")

    assert after(text) == after(dat)
    assert dangling(text) == dangling(dat)


# -- step 4: would the 2019 rules have zapped the pages that survived? ---------------------------------

def _rule_report(rule: str) -> tuple[dict, str]:
    import kvmtrace
    from kvmtrace.report import render
    from kvmtrace.report.model import build_report

    data = parsers.read(PTSLOT.with_suffix(".dat"))
    result = replay(data, qemu_log_lines=_log(PTSLOT), zap_rule=rule)
    report = build_report(data, result, path=str(PTSLOT.with_suffix(".dat")), version=kvmtrace.__version__)
    doc = json.loads(render(report, "json"))
    jsonschema.validate(doc, report_schema())
    return doc, render(report, "text")


def _survivors(doc: dict) -> dict[int, set[tuple[int, bool]]]:
    return {r["seq"]: {(a["level"], a["allowed"]) for a in r["after"] if a["what"] == "page_survived"}
            for r in doc["removals"]}


def test_the_51_rule_would_have_kept_them_too():
    """gfn_2019 (4e103134b862, 5.1-5.2.10): after the untraced rmap zap of the leaves, pages with
    sp->gfn equal to a gfn of the slot are zapped, whatever their role. The survivors (direct
    L4, L3, L2 pages at gfn 0) have sp->gfn 0, outside the slot: that rule keeps them as well, so
    nothing is flagged, and the report names the rule as the caller's choice, shipped in 5.1."""
    doc, _ = _rule_report("gfn_2019")
    assert set(map(frozenset, _survivors(doc).values())) == {frozenset({(4, True), (3, True), (2, True)})}
    assert not doc["findings"]
    assert next(c for c in doc["checks"] if c["id"] == "memslot_zap_miss")["status"] == "passed"
    assert any("chosen by the caller instead of this kernel's): gfn_2019" in a for a in doc["assumptions"])
    detail = next(a["detail"] for r in doc["removals"] for a in r["after"] if a["what"] == "page_survived")
    assert "the gfn_2019 rule does not zap it" in detail and "[rule of 5.1.x, 5.2.0-5.2.10, not this kernel's" in detail


def test_the_never_shipped_proposal_would_have_zapped_the_l2_page():
    """level_mask_2019 (the 2019 thread's proposal, never merged): pages up to the slot's largest page
    level whose gfn lies in the slot's range aligned to 512**level. The direct L2 page at gfn 0
    maps gfns 0-0x3ffff, the aligned range of both slot positions: that rule must zap it at every
    delete and move, and the report says so as info (a hypothesis, not this kernel's rule), while
    the L4 and L3 pages stay allowed. The check does not fail and no error is raised."""
    doc, text = _rule_report("level_mask_2019")
    assert set(map(frozenset, _survivors(doc).values())) == {frozenset({(4, True), (3, True), (2, False)})}
    found = doc["findings"]
    removals = [r["seq"] for r in doc["removals"]]
    assert [(f["id"], f["severity"], f["seq"], f["gfn"]) for f in found] == \
        [("memslot_zap_miss", "info", s, 0) for s in removals]
    assert all("level_mask_2019" in f["message"] and "hypothesis, never shipped" in f["message"] for f in found)
    assert next(c for c in doc["checks"] if c["id"] == "memslot_zap_miss")["status"] == "passed"
    detail = next(a["detail"] for r in doc["removals"] for a in r["after"]
                  if a["what"] == "page_survived" and a["level"] == 2)
    assert detail.startswith("direct level-2 page") and "level_mask_2019 rule must zap it" in detail
    assert "a hypothesis that never shipped" in detail
    assert "0 errors, 0 warnings, 7 notes" in text


def test_leaves_under_a_later_huge_leaf_are_unreachable_not_dangling():
    """churn: the guest first touched seven 4 KiB pages of the move-bar slot, then KVM mapped the
    whole 2 MiB with one level-2 leaf, which unlinks the level-1 table (mmu_set_spte ->
    drop_parent_pte): those seven leaves can no longer be reached, so their removal at the delete
    is named not provable for that reason; the level-2 leaf is proved removed by its re-install."""
    data = parsers.read(CHURN.with_suffix(".dat"))
    sets = {r["seq"]: r for r in data.table("kvm_mmu_set_spte").to_pylist()}
    rows = [r for r in _replay(CHURN).summaries["consequences"].to_pylist() if r["what"].startswith("leaf")]
    hidden = [r for r in rows if "unreachable since seq" in r["detail"]]
    assert len(hidden) == 7
    for r in hidden:
        installed, _, above = r["evidence"]
        big, small = sets[above], sets[installed]
        assert (small["gfn"], small["level"]) == (r["gfn"], r["level"]) == (r["gfn"], 1)
        assert big["level"] == 2 and big["gfn"] == r["gfn"] & ~0x1FF and above > installed
    removed = [r for r in rows if r["what"] == "leaf_removed"]
    assert [(r["gfn"], r["level"]) for r in removed] == [(0xFE000, 2)]
    again = removed[0]["evidence"][-1]
    assert (sets[again]["gfn"], sets[again]["level"]) == (0xFE000, 2) and again > removed[0]["change_seq"]
