"""``Analysis.table``'s notebook tables: the zap ledger, the decoded SPTE changes, the memslot
update windows with their ends, and the consequences, checked against the replay's own facts
(its memslot timeline objects, the trace's kvm_mmu_prepare_zap_page events and event times)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from conftest import NESTED, SAMPLES

import kvmtrace
from kvmtrace.replays.digest import digest_of
from kvmtrace.replays.ledger import KEPT_BY_RULE, profile_of
from kvmtrace.replays.replay import _timeline

PTSLOT = SAMPLES / "ptslot-zapslot.dat"  # slot 2 (gfn 0x20000, holding guest page tables) deleted and moved
QLOG = NESTED / "tdpmmu0-churn-noquirk-qlog-kt.dat"  # memslots from a QEMU -trace log, some lines unplaced


@pytest.fixture(scope="module")
def ptslot() -> kvmtrace.Analysis:
    return kvmtrace.open(PTSLOT).analyze()


def _ts(analysis: kvmtrace.Analysis) -> dict[int, int]:
    events = analysis.trace.events
    return dict(zip(events["seq"].to_list(), events["ts"].to_list()))


def test_names_and_backends(ptslot):
    assert ({"ledger", "ledger_pages", "ledger_sptes", "consequences", "spte_changes", "memslots"}
            <= set(ptslot.table_names))
    for name in ptslot.table_names:
        polars, pandas = ptslot.table(name), ptslot.table(name, backend="pandas")
        assert list(pandas.columns) == polars.columns and len(pandas) == polars.height
    ledger = ptslot.table("ledger", backend="pandas")
    assert ledger["slot_instance"].tolist() == ptslot.table("ledger")["slot_instance"].to_list()
    with pytest.raises(KeyError, match="ledger_pages"):
        ptslot.table("ledgers")


def test_replay_columns_come_first_and_unchanged(ptslot):
    r = ptslot.replay
    for name, bare in (("spte_changes", r.spte_changes), ("memslots", r.memslots),
                       ("consequences", r.summaries["consequences"])):
        joined = ptslot.table(name, backend="arrow")
        assert joined.select(bare.column_names).equals(bare)
        assert joined.num_columns > bare.num_columns


def test_ledger_zaps_are_the_prepare_zap_events_of_each_window(ptslot):
    """Per delete/move of slot 2: the pages the ledger lists as zapped are exactly the
    kvm_mmu_prepare_zap_page events between the window's start and the QEMU line."""
    zaps = ptslot.trace.table("kvm_mmu_prepare_zap_page")
    ledger, pages = ptslot.table("ledger"), ptslot.table("ledger_pages")
    removals = ptslot.table("memslots").filter(pl.col("removes"))
    assert ledger.height == removals.height == 5
    assert ledger["seq"].to_list() == removals["seq"].to_list()
    for row in ledger.iter_rows(named=True):
        traced = zaps.filter(pl.col("seq").is_between(row["window_start"], row["seq"]))
        zapped = pages.filter((pl.col("change") == row["change"]) & (pl.col("fate") == "zapped"))
        assert sorted(zapped["gfn"]) == sorted(traced["gfn"])
        assert zapped["zap_seq"].sort().to_list() == traced["seq"].to_list()
        lo = row["base_gfn"]  # each delete removes 0x20000; each move takes the slot back from 0x20400
        assert lo == (0x20000 if row["kind"] == "delete" else 0x20400)
        assert {lo, lo + 1} <= set(zapped["gfn"]) and row["pages_zapped"] == zapped.height
        kept = pages.filter((pl.col("change") == row["change"]) & (pl.col("fate") == "kept"))
        assert kept["direct"].all() and set(kept["reason"]) == {KEPT_BY_RULE}
        assert (kept["covers_first"] <= row["base_gfn"]).all() and (kept["covers_last"] >= row["base_gfn"]).all()
        # the slot instance is the create (or move) line that made the removed range
        made = ptslot.table("memslots").filter(pl.col("seq") == row["slot_created_seq"]).row(0, named=True)
        assert row["slot_instance"] == f"{row['slot']}@{made['seq']}" and made["base_gfn"] == row["base_gfn"]
        assert row["ts"] == _ts(ptslot)[row["seq"]]


@pytest.mark.parametrize("path,qemu_log", [(SAMPLES / "multi-zapslot.dat", None), (NESTED / "tdp-multi3-kt.dat", None),
                                           (QLOG, QLOG.with_suffix(".qemu.log"))], ids=lambda p: getattr(p, "stem", p))
def test_memslot_window_end_is_the_timelines(path, qemu_log):
    """``window_end`` is the memslot timeline's own (replays.memslots keeps it on the change objects)."""
    analysis = kvmtrace.open(path).analyze(qemu_log=qemu_log)
    data, profile = analysis.trace.data, profile_of(analysis.replay)
    lines = None if qemu_log is None else qemu_log.read_text().splitlines()
    timeline, _ = _timeline(data, profile, None, lines, digest_of(data))
    assert timeline.table().equals(analysis.replay.memslots)
    unbounded = np.iinfo(np.int64).max  # an unplaced line's window: the whole trace
    expected = [None if c.window_end == unbounded else c.window_end for c in timeline.changes]
    table = analysis.table("memslots")
    assert table["window_end"].to_list() == expected
    ts = _ts(analysis)
    assert table["window_end_ts"].to_list() == [ts.get(s) for s in table["window_end"]]
    assert table["window_start_ts"].to_list() == [ts.get(s) for s in table["window_start"]]
    if qemu_log is None:  # DELETE+CREATE of an overlapping range keeps the delete's window open
        held = table.filter(pl.col("window_end") > pl.col("seq"))
        assert held.height and set(held["kind"]) == {"delete"}
    else:
        assert table.filter(pl.col("seq").is_null())["window_end"].null_count() == table["seq"].null_count() > 0


def test_consequences_gain_time_and_vcpu():
    analysis = kvmtrace.open(SAMPLES / "multi-zapslot.dat").analyze()
    t = analysis.table("consequences")
    assert t.height and {"page_survived", "reinstall"} <= set(t["what"])
    ts = _ts(analysis)
    assert t["ts"].to_list() == [ts[s] for s in t["seq"]]
    threads = analysis.table("spte_changes").select("pid", "vcpu").drop_nulls().unique()
    vcpu_of = dict(threads.iter_rows())
    assert t.filter(pl.col("pid").is_null())["vcpu"].null_count() == t["pid"].null_count()
    named = t.filter(pl.col("pid").is_not_null())
    assert named.height and named["vcpu"].to_list() == [vcpu_of.get(p) for p in named["pid"]]


def test_a_selection_keeps_the_ledger_rows_of_its_changes(ptslot):
    trace = ptslot.trace
    second = ptslot.table("ledger").row(1, named=True)
    window = trace.analyze(since=(second["ts"] - 1000) / 1e9, until=(second["ts"] + 1000) / 1e9)
    assert window.table("ledger")["change"].to_list() == [second["change"]]
    assert set(window.table("ledger_pages")["change"]) == {second["change"]}
    sel = window.selection
    kept = trace.events.filter(pl.col("ts").is_between(second["ts"] - 1000, second["ts"] + 1000))
    assert (sel.events, sel.total_events) == (kept.height, trace.info.total_events)
    assert (sel.first_seq, sel.last_seq) == (kept["seq"].min(), kept["seq"].max())
    assert sel.as_dict()["since"] == pytest.approx((second["ts"] - 1000) / 1e9) and sel.cpus is None
    whole = ptslot.selection
    assert whole.everything and whole.text == "" and whole.events == whole.total_events == trace.info.total_events
