"""The zap ledger on real recordings, checked against the trace's own events.

Oracle: the ``kvm_mmu_prepare_zap_page`` events the kernel emitted inside each change's window
(decoded with the kernel's role layout), the memslot lines, and the ledger's promise that every
page zapped in a window is listed and every kept page has a reason. Done-when of the ptslot
zap-slot recording: at each delete of slot 2, the guest page tables at 0x20000 and 0x20001 are
zapped and the direct page over the range survives, allowed by the upstream rule.
"""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pyarrow.compute as pc
import pytest
from conftest import NESTED, SAMPLES
from mutate import without

from kvmtrace import parsers
from kvmtrace.replays import ledger, replay
from kvmtrace.replays.ledger import KEPT_BY_RULE, KEPT_MISSED, KEPT_OUTSIDE, role_text, zap_ledger
from kvmtrace.replays.profiles import decode_role, profile_for
from kvmtrace.report import build_report, render, report_schema

_CACHE: dict = {}


def _load(path):
    if path not in _CACHE:
        data = parsers.read(path)
        result = replay(data)
        _CACHE[path] = data, result, zap_ledger(data, result)
    return _CACHE[path]


def _pages(ledger, change):
    return ledger.pages.filter(pc.equal(ledger.pages["change"], change)).to_pylist()


def test_ptslot_zapslot_deletes_zap_the_page_tables_and_keep_the_direct_page():
    data, result, ledger = _load(SAMPLES / "ptslot-zapslot.dat")
    deletes = [r for r in ledger.removals.to_pylist() if r["kind"] == "delete" and r["slot"] == 2]
    assert len(deletes) == sum(1 for c in result.memslots.to_pylist() if c["kind"] == "delete" and c["slot"] == 2) >= 2
    zaps = decode_role(data.table("kvm_mmu_prepare_zap_page"), profile_for(data.info.kernel)).to_pylist()
    for d in deletes:
        assert d["policy"] == "zap_slot" and d["zap_all_seq"] is None
        assert "indirect, non-passthrough" in d["rule"]
        rows = _pages(ledger, d["change"])
        zapped = {r["gfn"] for r in rows if r["fate"] == "zapped"}
        assert {0x20000, 0x20001} <= zapped
        # exactly the page zaps the kernel emitted in the window, each with its decoded role
        traced = [z for z in zaps if d["window_start"] <= z["seq"] <= d["seq"]]
        assert sorted((z["gfn"], z["seq"]) for z in traced) == sorted(
            (r["gfn"], r["zap_seq"]) for r in rows if r["fate"] == "zapped")
        for z in traced:
            row = next(r for r in rows if r["zap_seq"] == z["seq"])
            assert row["role_text"].startswith(f"L{z['level']} {'direct' if z['direct'] else 'indirect'} ")
        kept = [r for r in rows if r["fate"] == "kept"]
        over = [r for r in kept if r["direct"] and r["covers_first"] <= d["base_gfn"] + d["npages"] - 1
                and r["covers_last"] >= d["base_gfn"]]
        assert over and all(r["reason"] == KEPT_BY_RULE for r in over)
        assert d["pages_zapped"] == len(traced) and d["pages_kept"] == len(kept) and d["kept_missed"] == 0
        # the slot instance: the create line that made this slot 2
        made = [c for c in result.memslots.to_pylist() if c["slot"] == 2 and c["seq"] < d["seq"]
                and c["kind"] in ("create", "move")][-1]
        assert d["slot_created_seq"] == made["seq"]


def test_reused_slot_ids_are_different_instances():
    _, _, ledger = _load(SAMPLES / "ptslot-zapslot.dat")
    slot2 = [r for r in ledger.removals.to_pylist() if r["slot"] == 2]
    assert len({r["slot_created_seq"] for r in slot2}) == len(slot2) > 1


def test_ptslot_zapall_zaps_every_page_after_the_fast_zap():
    data, result, ledger = _load(SAMPLES / "ptslot-zapall.dat")
    za = data.table("kvm_mmu_zap_all_fast").column("seq").to_pylist()
    for r in ledger.removals.to_pylist():
        assert r["policy"] == "zap_all" and r["zap_all_seq"] in za
        assert r["window_start"] <= r["zap_all_seq"] <= r["seq"]
        rows = _pages(ledger, r["change"])
        obsoleted = result.shadow_pages.filter(pc.equal(result.shadow_pages["obsolete_seq"], r["zap_all_seq"]))
        listed = {x["page"] for x in rows}
        assert set(obsoleted["page"].to_pylist()) <= listed  # every page the fast zap made obsolete


def test_missed_zap_is_kept_with_the_finding_reason():
    """Drop one prepare_zap the kernel emitted for an indirect page of slot 2 at its first delete:
    the ledger keeps that page as 'not allowed', as the memslot_zap_miss finding says."""
    data, _, ledger = _load(SAMPLES / "ptslot-zapslot.dat")
    first = ledger.removals.to_pylist()[0]
    target = next(r for r in _pages(ledger, first["change"]) if r["fate"] == "zapped" and not r["direct"])
    mutated = without(data, [target["zap_seq"]])
    result = replay(mutated)
    mine = zap_ledger(mutated, result)
    row = next(r for r in _pages(mine, first["change"]) if r["page"] == target["page"])
    assert row["fate"] == "kept" and row["reason"] == KEPT_MISSED
    assert mine.removals.to_pylist()[0]["kept_missed"] == 1
    misses = [f for f in result.findings.to_pylist() if f["id"] == "memslot_zap_miss"]
    assert [(f["seq"], f["gfn"]) for f in misses] == [(first["seq"], target["gfn"])]


def test_tdp_ledger_counts_the_traced_leaf_zaps(nested_dir):
    """TDP MMU, zap-slot: every level-1 SPTE of the removed range that a traced
    kvm_tdp_mmu_spte_changed took from present to non-present inside the window is in the
    ledger, as traced; nothing is inferred."""
    data, _result, ledger = _load(NESTED / "tdp-churn-noquirk-small-kt.dat")
    changed = data.table("kvm_tdp_mmu_spte_changed").to_pylist()
    profile = profile_for(data.info.kernel)
    total = 0
    for r in ledger.removals.to_pylist():
        assert r["policy"] == "zap_slot" and r["leaf_sptes_removed"] == r["leaf_sptes_traced"]
        lo, hi = r["base_gfn"], r["base_gfn"] + r["npages"]
        traced = [c for c in changed if r["window_start"] <= c["seq"] <= r["seq"] and lo <= c["gfn"] < hi
                  and c["level"] == 1 and c["new_spte"] == profile.nonpresent and profile.present(c["old_spte"])]
        rows = ledger.sptes.filter(pc.equal(ledger.sptes["change"], r["change"])).to_pylist()
        assert sum(x["sptes"] for x in rows if x["in_range"]) >= len(traced)
        total += len(traced)
    assert total > 0


def test_role_text_reads_like_the_kernel():
    assert role_text({"level": 2, "direct": 0, "quadrant": 0, "access": 7, "has_4_byte_gpte": 0}) == \
        "L2 indirect q0 wux 8-byte"
    assert role_text({"level": 1, "direct": 1, "quadrant": 1, "access": 3, "cr4_pae": 0, "cr0_wp": 0}) == \
        "L1 direct q1 w-x 4-byte !cr0_wp"


@pytest.mark.parametrize("fmt", ["text", "markdown", "html", "json"])
def test_the_ledger_is_in_every_format(fmt):
    data, result, ledger = _load(SAMPLES / "ptslot-zapslot.dat")
    report = build_report(data, result, path="ptslot-zapslot.dat", version="test")
    out = render(report, fmt)
    if fmt == "json":
        doc = json.loads(out)
        jsonschema.validate(doc, report_schema())
        assert len(doc["removals"]) == ledger.removals.num_rows
        assert sum(len(r["pages"]) for r in doc["removals"]) == ledger.pages.num_rows
        per = next(g for g in doc["activity"] if g["title"].startswith("per-memslot"))
        # the lifetimes a delete/move ended are charged that change's zaps
        charged = {(row["slot"], row["until_seq"]): row["zapped_at_removal"] for row in per["rows"]}
        for r in doc["removals"]:
            assert charged[(r["slot"], r["window_start"])] == r["pages_zapped"] > 0
        return
    assert "Zap ledger" in out
    for r in report.removals:
        assert f"seq {r.row['seq']}: {r.row['kind']} of slot {r.instance}" in out
    assert "L1 direct q0 wux 8-byte" in out and "L4 indirect q0 wux 8-byte" in out


def test_pages_outside_the_range_that_map_into_it_are_kept_with_that_reason():
    """churn-zapslot: the guest maps its BARs through page tables that live in RAM slots; a BAR
    delete keeps those shadow pages (their gfn is not in the slot) and drops only their SPTEs."""
    _, result, ledger = _load(SAMPLES / "churn-zapslot.dat")
    changes = result.spte_changes.to_pylist()
    outside = [r for r in ledger.pages.to_pylist() if r["reason"] == KEPT_OUTSIDE]
    assert outside
    removals = {r["change"]: r for r in ledger.removals.to_pylist()}
    for row in outside:
        c = removals[row["change"]]
        lo, hi = c["base_gfn"], c["base_gfn"] + c["npages"]
        assert not lo <= row["gfn"] < hi and row["fate"] == "kept"
        assert any(x["page"] == row["page"] and lo <= x["gfn"] < hi and x["seq"] < c["seq"]
                   and x["state"] == "present" for x in changes)


@pytest.mark.parametrize("name", ["churn-zapall", "churn-zapslot", "multi-zapall"])
def test_removed_leaves_grouped_in_small_batches_are_the_same(name, monkeypatch):
    """The windows' rows are grouped a batch of changes at a time; with batches of a few rows
    (every change alone, or split from its neighbours at every size) the SPTE rows of the
    ledger are the same as with one batch of everything. So is the whole ledger when the
    journal is read a few rows a window (the leaf owners' and the removals' windows)."""
    data = parsers.read(SAMPLES / f"{name}.dat")
    result = replay(data)
    monkeypatch.setattr(ledger, "WINDOW_ROWS", 1 << 40)
    whole_ledger = zap_ledger(data, result)
    whole = whole_ledger.sptes
    assert len(set(whole.column("change").to_pylist())) >= 2
    for rows in (1, 7, 300):
        monkeypatch.setattr(ledger, "WINDOW_ROWS", rows)
        assert zap_ledger(data, result).sptes.equals(whole), rows
    for rows in (1, 7, 300):  # and the journal read a few rows a window: changes' windows cross its edges
        monkeypatch.setattr(ledger, "ROWS_PER_WINDOW", rows)
        got = zap_ledger(data, result)
        assert all(getattr(got, t).equals(getattr(whole_ledger, t)) for t in ("removals", "pages", "sptes")), rows


@pytest.mark.parametrize("name", ["churn-zapall", "churn-zapslot", "ptslot-zapslot"])
def test_a_pages_table_made_a_few_rows_at_a_time_on_disk_is_the_one_made_at_once(name, monkeypatch):
    """The pages table is made a piece of ROWS_PER_PIECE rows at a time and written to disk from
    a size on: with pieces of 1 and 7 rows (a change's pages split across pieces) on disk from
    the first row, the table is the one a single piece in memory gives, row for row."""
    from kvmtrace.parsers import spilled

    data, result, _ = _load(SAMPLES / f"{name}.dat")
    monkeypatch.setattr(ledger, "ROWS_PER_PIECE", 1 << 40)
    want = zap_ledger(data, result).pages
    assert want.column("page").num_chunks == 1 and want.num_rows > 7
    assert len(set(want.column("change").to_pylist())) >= 2
    written: list[int] = []
    append = spilled.SpilledTable.append
    monkeypatch.setattr(spilled.SpilledTable, "append", lambda self, t: (
        written.append(t.num_rows) if self.what == "the zap ledger's pages" else None, append(self, t))[1])
    for rows in (1, 7):
        monkeypatch.setattr(ledger, "ROWS_PER_PIECE", rows)
        monkeypatch.setattr(spilled, "ARRAYS_ON_DISK", 16)  # on disk from one row
        written.clear()
        got = zap_ledger(data, result).pages
        # several pieces, on disk but for the rows after the last whole piece (Parts holds those)
        assert got.column("page").num_chunks > 1 and want.num_rows - rows < sum(written) <= want.num_rows
        assert got.schema.equals(want.schema) and got.to_pylist() == want.to_pylist(), rows


def test_batches_cover_every_index_once_within_the_limit():
    counts = np.array([0, 5, 3, 0, 9, 2, 2, 2, 0, 11, 1])
    for limit in (1, 4, 5, 9, 12, 100):
        runs = list(ledger._batches(counts, limit))
        assert np.array_equal(np.concatenate(runs), np.arange(len(counts)))
        assert all(len(r) for r in runs)
        assert all(counts[r].sum() <= limit or len(r) == 1 or counts[r][:-1].sum() == 0 for r in runs)
    assert list(ledger._batches(np.array([], np.int64), 3)) == []
