"""The indexes that keep the per-change analyses linear in trace length (and the merges that keep
their memory small) give exactly what the plain whole-table masks and sorts they replaced gave
(those are the reference implementations here).

On real data the replay tables of every sample and recording were compared before and after the
change (bench/RESULTS.md, "analyze by trace length"); these tests pin the edge cases: empty
tables, windows outside the trace, ranges past 2**52 and values no gfn can have.
"""

from __future__ import annotations

import mmap
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from conftest import NESTED, SAMPLES
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmtrace.parsers import read, spilled
from kvmtrace.parsers.tracedat.meta import open_file, open_meta
from kvmtrace.parsers.tracedat.windows import _WindowReader
from kvmtrace.replays import gfn_index, ledger, stream, sweep
from kvmtrace.replays.consequences import _distinct_leaves
from kvmtrace.replays.detectors.context import Context
from kvmtrace.replays.detectors.dirty import DirtyClear, DirtyLogging, OwnRequests
from kvmtrace.replays.detectors.layout import Recreations
from kvmtrace.replays.gfn_index import FirstInstall, GfnIndex, leaf_keys
from kvmtrace.replays.inputs import KVMMMU_EVENTS, _zaps, kvmmmu_events
from kvmtrace.replays.leaf_proof import LeafEvidence, Lookups
from kvmtrace.replays.ledger import _candidates, _leaf_owners, _Pages, role_text, role_texts
from kvmtrace.replays.memslots import Lifetime, MemslotChange, MemslotTimeline
from kvmtrace.replays.needs import WALK_EVENTS
from kvmtrace.replays.profiles import profile_for
from kvmtrace.replays.replay import replay
from kvmtrace.replays.shadow import ShadowModel
from kvmtrace.replays.shadow_sptes import _first_rmap_zaps
from kvmtrace.replays.tdp import TdpModel

WIDE = (1 << 60) + 7  # not a gfn: a damaged or hand-made input


@st.composite
def tables(draw: st.DrawFn, max_rows: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """gfns (a few wide ones) and strictly increasing seqs, as a replay table has them."""
    n = draw(st.integers(0, max_rows))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    gfn = rng.integers(0, 48, n).astype(np.uint64)
    if n and draw(st.booleans()):
        gfn[rng.integers(0, n, 3)] = np.uint64(WIDE)
    seq = np.cumsum(rng.integers(1, 4, n)).astype(np.int64)
    return gfn, seq


bounds = st.one_of(st.none(), st.integers(-5, 12_000))


@settings(max_examples=150, deadline=None)
@given(tables(), st.integers(0, 60), st.integers(0, 30), st.booleans(), bounds, bounds)
def test_rows_in_equals_the_mask(t: tuple[np.ndarray, np.ndarray], lo: int, width: int, to_top: bool,
                                 since: int | None, until: int | None) -> None:
    gfn, seq = t
    hi = (1 << 62) if to_top else lo + width
    ix = GfnIndex(gfn, seq)
    mask = (gfn >= np.uint64(lo)) & (gfn < np.uint64(hi))
    if since is not None:
        mask &= seq >= since
    if until is not None:
        mask &= seq < until
    assert np.array_equal(ix.rows_in(lo, hi, since, until), np.flatnonzero(mask))


@settings(max_examples=150, deadline=None)
@given(tables(), st.integers(0, 60), st.integers(0, 30), st.integers(-5, 12_000), st.integers(0, 2**32 - 1))
def test_first_in_equals_the_mask(t: tuple[np.ndarray, np.ndarray], lo: int, width: int, since: int,
                                  seed: int) -> None:
    gfn, seq = t
    keep = np.random.default_rng(seed).random(len(gfn)) < 0.3
    mask = (gfn >= np.uint64(lo)) & (gfn < np.uint64(lo + width)) & (seq >= since) & keep
    expected = int(np.flatnonzero(mask)[0]) if mask.any() else None
    assert GfnIndex(gfn, seq).first_in(lo, lo + width, since, keep) == expected


def test_blocks_are_crossed() -> None:
    """More rows than one block (4096): answers span blocks, in seq order."""
    n = 50_000
    gfn = (np.arange(n, dtype=np.uint64) * np.uint64(7919)) % np.uint64(1000)
    seq = np.arange(n, dtype=np.int64) * 2
    ix = GfnIndex(gfn, seq)
    assert ix.blocks > 10
    mask = (gfn >= 100) & (gfn < 200) & (seq >= 5000) & (seq < 90_000)
    assert np.array_equal(ix.rows_in(100, 200, 5000, 90_000), np.flatnonzero(mask))
    assert ix.first_in(999, 1000, 60_000) == int(np.flatnonzero((gfn == 999) & (seq >= 60_000))[0])


@pytest.mark.parametrize("seed", range(8))
def test_an_index_sorted_a_slab_at_a_time_is_the_index_sorted_at_once(seed: int,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 16 rows, two to a slab, on disk from 50 rows, wide values in some slabs: the
    same order and keys as one sort of every row, and the same answers as the masks."""
    from kvmtrace.parsers import spilled
    from kvmtrace.replays import gfn_index

    rng = np.random.default_rng(seed)
    n = int(rng.integers(100, 700))
    gfn = rng.integers(0, 40, n).astype(np.uint64)
    gfn[rng.integers(0, n, 4)] = np.uint64(WIDE)
    seq = np.cumsum(rng.integers(1, 4, n)).astype(np.int64)
    monkeypatch.setattr(gfn_index, "_MIN_BLOCK", 16)
    whole = GfnIndex(gfn, seq)
    monkeypatch.setattr(gfn_index, "SLAB", 40)
    monkeypatch.setattr(spilled, "ARRAYS_ON_DISK", 50)
    slabs = GfnIndex(gfn, seq)
    assert slabs.blocks > 6 and not slabs._order.flags.writeable  # many slabs, kept on disk
    assert slabs._order.tolist() == whole._order.tolist() and slabs._sorted.tolist() == whole._sorted.tolist()
    middle = (int(seq[n // 3]), int(seq[2 * n // 3]))
    for lo, hi, since, until in ((0, 40, None, None), (5, 9, *middle), (0, 1 << 62, 3, None)):
        mask = (gfn >= np.uint64(lo)) & (gfn < np.uint64(hi)) & (seq >= (since if since is not None else seq[0]))
        mask &= seq < (until if until is not None else seq[-1] + 1)
        assert np.array_equal(slabs.rows_in(lo, hi, since, until), np.flatnonzero(mask))


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 400), st.integers(0, 2**32 - 1), st.integers(-2, 900))
def test_first_install_after(n: int, seed: int, at: int) -> None:
    """The first install after a seq of each leaf asked for, as the scan over later installs gave it."""
    rng = np.random.default_rng(seed)
    ins = {"seq": np.cumsum(rng.integers(1, 3, n)).astype(np.int64), "gfn": rng.integers(0, 12, n).astype(np.uint64),
           "level": rng.integers(1, 3, n).astype(np.int64)}
    asked = leaf_keys(rng.integers(0, 14, 8).astype(np.uint64), rng.integers(1, 3, 8).astype(np.int64))
    expected, done = [], set()
    for k in np.flatnonzero(ins["seq"] > at):
        key = int(leaf_keys(ins["gfn"][k:k + 1], ins["level"][k:k + 1])[0])
        if key in set(asked.tolist()) and key not in done:
            done.add(key)
            expected.append(int(k))
    slab = gfn_index.SLAB
    try:  # slabs of a few installs: a leaf is found in a later slab than the seq's, or in none
        for gfn_index.SLAB in (slab, 1, 7):
            assert FirstInstall(ins).after(at, asked).tolist() == expected, gfn_index.SLAB
    finally:
        gfn_index.SLAB = slab


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 300), st.integers(0, 2**32 - 1), st.lists(st.tuples(st.integers(0, 700), st.integers(0, 10),
                                                                           st.integers(0, 6)), max_size=12))
def test_first_rmap_zaps(n: int, seed: int, zaps: list[tuple[int, int, int]]) -> None:
    """Per install, the first rmap zap after it over its gfn: as the loop over zaps in key order set it."""
    rng = np.random.default_rng(seed)
    gfn = rng.integers(0, 16, n).astype(np.uint64)
    start = 2 * np.cumsum(rng.integers(1, 3, n)).astype(np.int64)
    listed = sorted((key, lo, lo + width, f"zap {i}") for i, (key, lo, width) in enumerate(zaps))
    forever = np.iinfo(np.int64).max
    end, reason = np.full(n, forever, np.int64), np.full(n, -1, np.int64)
    want_end, want_reason = end.copy(), reason.copy()
    for k, (key, lo, hi, _) in enumerate(listed):
        hit = (start < key) & (key < want_end) & (gfn >= np.uint64(lo)) & (gfn < np.uint64(hi))
        want_end[hit], want_reason[hit] = key, k
    _first_rmap_zaps(listed, gfn, start, end, reason)
    assert np.array_equal(end, want_end) and np.array_equal(reason, want_reason)


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 300), st.integers(0, 2**32 - 1),
       st.lists(st.tuples(st.integers(0, 700), st.integers(0, 12), st.integers(0, 6)), max_size=10))
def test_leaf_owners(n: int, seed: int, questions: list[tuple[int, int, int]]) -> None:
    """Owners of present leaves into a range just before a seq: as the journal scan per change gave them."""
    rng = np.random.default_rng(seed)
    changes = pl.DataFrame({
        "seq": np.sort(rng.integers(0, 700, n)).astype(np.int64),
        "key": rng.integers(0, 20, n).astype(np.uint64),
        "gfn": rng.integers(0, 16, n).astype(np.uint64),
        "page": pl.Series(rng.integers(0, 9, n), dtype=pl.Int64).set(pl.Series(rng.random(n) < 0.2), None),
        "state": rng.choice(["present", "zapped", "nonpresent"], n),
    })
    asked = [(at, lo, lo + width) for at, lo, width in questions]
    # and at changes' own seqs: a leaf's state holds up to its next change's seq, not to the one before
    asked += [(int(at), 0, 16) for at in changes["seq"].to_numpy()[:: max(1, n // 4)]]
    got = _leaf_owners(changes.to_arrow(), asked)
    whole, on_disk = ledger.ROWS_PER_WINDOW, spilled.ARRAYS_ON_DISK
    # the journal a few changes a window: SPTEs and questions cross every edge; and the answers
    # kept on disk from the first few owners
    for rows, disk in ((1, on_disk), (7, on_disk), (whole, 3)):
        try:
            ledger.ROWS_PER_WINDOW, spilled.ARRAYS_ON_DISK = rows, disk
            by_window = _leaf_owners(changes.to_arrow(), asked)
        finally:
            ledger.ROWS_PER_WINDOW, spilled.ARRAYS_ON_DISK = whole, on_disk
        assert by_window.keys() == got.keys() and all(np.array_equal(by_window[q], got[q]) for q in got)
        assert all(a.dtype == np.int64 for a in by_window.values())
    for at, lo, hi in asked:
        before = changes.slice(0, int(np.searchsorted(changes["seq"].to_numpy(), at)))
        keys = before.filter((pl.col("gfn") >= lo) & (pl.col("gfn") < hi))["key"].unique()
        last = before.filter(pl.col("key").is_in(keys.implode())).group_by("key").last()
        alive = last.filter((pl.col("state") == "present") & (pl.col("gfn") >= lo) & (pl.col("gfn") < hi)
                            & pl.col("page").is_not_null())
        assert got[(at, lo, hi)].tolist() == sorted(set(alive["page"].to_list()))


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 400), st.integers(0, 2**32 - 1), st.booleans(), st.booleans(),
       st.lists(st.integers(-3, 900), max_size=40))
def test_alive_at(n: int, seed: int, in_order: bool, labelled: bool, times: list[int]) -> None:
    """Rows with begin < t <= end at each t (or their labels), ascending, whether or not the rows
    are in begin order, whether a set was stored whole or as a difference from an earlier one."""
    rng = np.random.default_rng(seed)
    begin = rng.integers(-1, 800, n).astype(np.int64)
    if in_order:
        begin.sort()
    end = begin + rng.integers(0, 300, n)
    labels = np.cumsum(rng.integers(1, 5, n)) if labelled else None
    whole = stream.ROW_BLOCK
    for block in (whole, 1, 3):  # rows in begin order are read a block at a time: times fall in and between blocks
        try:
            stream.ROW_BLOCK = block
            got = sweep.alive_at(begin, end, times, labels=labels)
        finally:
            stream.ROW_BLOCK = whole
        assert sorted(got) == sorted(set(times))
        for t in times:
            want = np.flatnonzero((begin < t) & (t <= end))
            assert np.array_equal(got[t], want if labels is None else labels[want])


def test_rows_out_of_begin_order_are_an_error_not_a_wrong_answer() -> None:
    begin, end = np.array([1, 5, 3, 9], np.int64), np.array([20, 20, 20, 20], np.int64)
    with pytest.raises(ValueError, match="not in begin order"):
        sweep.alive_in_order(4, lambda lo, hi: (begin[lo:hi], end[lo:hi]), [10])
    whole = stream.ROW_BLOCK
    try:  # within a block, and across two
        stream.ROW_BLOCK = 2
        with pytest.raises(ValueError, match="not in begin order"):
            sweep.alive_in_order(4, lambda lo, hi: (begin[lo:hi], end[lo:hi]), [10])
    finally:
        stream.ROW_BLOCK = whole


def test_live_sets_hold_slow_churn_as_differences() -> None:
    """Long-lived rows and many moments, under steady drift (the worst case: a difference grows
    until it passes half its keyframe): the sets are stored as differences from a few keyframes,
    in under a third of their rows, and each one read back is the full set."""
    rng = np.random.default_rng(7)
    begin = np.sort(rng.integers(0, 10_000, 2_000)).astype(np.int64)
    end = begin + rng.integers(2_000, 8_000, 2_000)
    times = list(range(0, 12_000, 10))
    got = sweep.alive_at(begin, end, times)
    whole = 0
    for t in times:
        want = np.flatnonzero((begin < t) & (t <= end))
        assert np.array_equal(got[t], want)
        whole += len(want)
    assert got.held < whole // 3


@pytest.mark.parametrize("on_disk", [False, True], ids=["held", "on-disk"])
def test_sealed_live_sets_read_as_they_did_before_sealing(on_disk: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sealing joins the keyframes and differences into one array (a map of a file once long):
    every set reads back as before, in the same times, the rows held are the same, an unknown
    time is a KeyError, and a set added after sealing, or out of time order, is an error."""
    monkeypatch.setattr(spilled, "ARRAYS_ON_DISK", 1 if on_disk else 1 << 20)
    rng = np.random.default_rng(11)
    sets = sweep.LiveSets()
    live = np.sort(rng.choice(5_000, 300, replace=False)).astype(np.int32)
    for t in range(0, 3_000, 3):  # steady drift: keyframes and differences both
        gone = rng.random(len(live)) < 0.02
        born = rng.choice(5_000, 6, replace=False).astype(np.int32)
        live = np.union1d(live[~gone], born).astype(np.int32)
        sets.add(t, live)
    with pytest.raises(ValueError, match="not after"):
        sets.add(0, live)
    before = {t: sets[t].copy() for t in sets}
    held = sets.held
    assert held < sum(len(v) for v in before.values()) // 2  # differences, not whole sets
    sets.seal("the test's live sets")
    assert list(sets) == list(before) and len(sets) == len(before) and sets.held == held
    for t, want in before.items():
        assert np.array_equal(sets[t], want) and sets[t].dtype == want.dtype, t
    for missing in (-3, 1, 2_999, 10_000):
        with pytest.raises(KeyError):
            sets[missing]
    with pytest.raises(ValueError, match="sealed"):
        sets.add(5_000, live)
    owner = sets[0]
    while isinstance(owner, np.ndarray | memoryview):
        owner = owner.base if isinstance(owner, np.ndarray) else owner.obj
    assert isinstance(owner, mmap.mmap) == on_disk


@pytest.mark.parametrize("path", [SAMPLES / "churn-zapall.dat", SAMPLES / "churn-zapslot.txt.gz",
                                  NESTED / "tdp-multi3-kt.dat", NESTED / "k61tdp-churn-small-kt.dat"],
                         ids=lambda p: p.name)
def test_snapshots_read_back_the_live_pages_the_model_had(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every snapshot's pages, kept as differences in one set store the snapshots share, are the
    live pages the model had at its checkpoint, ascending; on a memslot-dense recording the store
    holds fewer ids than the sets it gives back."""
    seen: list[np.ndarray] = []

    def spy(original):  # type: ignore[no-untyped-def]
        def live_ids(model):  # type: ignore[no-untyped-def]
            ids = original(model)
            seen.append(ids.copy())
            return ids
        return live_ids

    for model in (ShadowModel, TdpModel):
        monkeypatch.setattr(model, "live_ids", spy(model.live_ids))
    got_ctx: list[Context] = []
    monkeypatch.setattr(sys.modules["kvmtrace.replays.replay"], "Context",
                        lambda *a, **k: got_ctx.append(Context(*a, **k)) or got_ctx[-1])
    replay(read(path))
    snaps = got_ctx[0].journal.snapshots
    assert snaps and len(seen) == len(snaps)
    store = {id(s.page_sets) for s in snaps.values()}
    assert len(store) == 1
    whole = 0
    for snap in snaps.values():
        got = snap.pages()
        assert got.dtype == np.int64 and np.array_equal(got, seen[snap.page_at])
        assert bool(np.all(got[1:] > got[:-1]))
        whole += len(got)
    assert whole > 0
    if "churn" in path.name:
        assert next(iter(snaps.values())).page_sets.held < whole  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="sealed"):  # the walk sealed the store
        next(iter(snaps.values())).page_sets.add(2**62, np.empty(0, np.int32))  # type: ignore[attr-defined]


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 300), st.integers(0, 2**32 - 1), st.lists(st.tuples(st.integers(0, 600), st.integers(0, 80)),
                                                                 max_size=10))
def test_ledger_candidates_hold_every_page_a_change_concerns(n: int, seed: int, windows: list[tuple[int, int]]) -> None:
    """Each window's candidates are exactly the pages zapped in it or alive when its change took
    effect (built before the line, not zapped before the window): no page the ledger reads is left out."""
    rng = np.random.default_rng(seed)
    first = np.sort(rng.integers(-1, 600, n)).astype(np.int64)
    zap = np.where(rng.random(n) < 0.3, -1, first + rng.integers(0, 200, n))
    empty = np.zeros(n, np.uint64)
    pg = _Pages(empty, empty, empty, np.zeros(n, bool), np.zeros(n, bool), first, zap, np.full(n, -1))
    asked = [(ws, ws + width) for ws, width in windows]
    got = _candidates(pg, asked)
    for ws, line in asked:
        zapped = (zap >= ws) & (zap <= line)
        alive = (first < line) & ((zap < 0) | (zap >= ws))
        assert np.array_equal(got[(ws, line)], np.flatnonzero(zapped | alive))


@pytest.mark.parametrize("path", [SAMPLES / "multi-zapslot.dat", SAMPLES / "churn-thp-zapslot.dat",
                                  NESTED / "tdp-multi3-kt.dat", NESTED / "k61tdp-churn-small-kt.dat"],
                         ids=lambda p: p.name)
@pytest.mark.parametrize("window", [1 << 22, 64, 777])
def test_kvmmmu_events_equal_the_concatenated_sort(path: Path, window: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The merge of the kvmmmu events a window of seqs at a time (one window, a few seqs each, a
    window cutting through chunks; kept on disk from 500 rows) equals concatenating every kvmmmu
    table's columns and sorting them by seq, on tables read whole and read as 1000-event chunks
    (a long trace's tables come in chunks, which the merge walks one at a time); so do the few
    rows of one thread (what a memslot line's window reads)."""
    from kvmtrace.parsers import spilled
    from kvmtrace.replays import inputs

    monkeypatch.setattr(inputs, "SEQ_WINDOW", window)
    monkeypatch.setattr(spilled, "ARRAYS_ON_DISK", 500)
    whole = read(path)
    with open_file(str(path)) as f:
        meta, size = open_meta(f, str(path))
        chunked = _WindowReader(f, size, meta, meta.spec(None), 1000, 2).whole()
    assert max(t.column("seq").num_chunks for t in chunked.tables.values()) > 1
    profile = profile_for(whole.info.kernel)
    names = [n for n, t in whole.tables.items() if t.num_rows and n in KVMMMU_EVENTS]
    seq = np.concatenate([whole.tables[n]["seq"].to_numpy() for n in names])
    order = np.argsort(seq, kind="stable")
    pid = np.concatenate([whole.tables[n]["pid"].to_numpy() for n in names])[order]
    zap = np.concatenate([_zaps(n, whole.tables[n], profile) for n in names])[order]
    for data in (whole, chunked):
        got = kvmmmu_events(data, profile)
        assert np.array_equal(got[0], seq[order]) and np.array_equal(got[1], pid) and np.array_equal(got[2], zap)
        assert got[2].any() and len(set(got[1].tolist())) > 1
        # one thread's rows, without the walker's or with them
        event_of = np.concatenate([np.full(whole.tables[n].num_rows, n) for n in names])[order]
        for leave_out in (frozenset(), frozenset(WALK_EVENTS)):
            for thread in {int(pid[0]), int(pid[-1])}:
                kept = ~np.isin(event_of, list(leave_out)) & (pid == thread)
                got = kvmmmu_events(data, profile, leave_out, frozenset({thread}))
                assert kept.any() and np.array_equal(got[0], seq[order][kept]), (leave_out, thread)
                assert np.array_equal(got[1], pid[kept]) and np.array_equal(got[2], zap[kept])


KINDS = ("create", "delete", "move", "flags", "recreate", "unchanged")


def _scan_recreation(changes: list[MemslotChange], w: int, g: int) -> MemslotChange | None:
    """The reference: the first later positioned non-delete change covering ``g`` (or ``w``
    itself, a one-line re-creation covering it), found by scanning every later change."""
    def covers(c: MemslotChange) -> bool:
        return bool(c.npages) and c.base_gfn <= g < c.base_gfn + c.npages
    if changes[w].kind == "recreate" and covers(changes[w]):
        return changes[w]
    return next((n for n in changes[w + 1:] if n.seq is not None and n.kind != "delete" and covers(n)), None)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(KINDS), st.booleans(), st.sampled_from([0, 16, 40]),
                          st.sampled_from([0, 8, 16, 32])), min_size=1, max_size=60),
       st.lists(st.tuples(st.integers(0, 59), st.integers(0, 80)), max_size=40))
def test_recreations_equal_the_scan(specs: list[tuple[str, bool, int, int]], asked: list[tuple[int, int]]) -> None:
    """Whatever the kinds, positions and (overlapping, empty or repeated) ranges of the changes."""
    changes = [MemslotChange(seq=10 * i if placed else None, window_start=None, anchor="line", pid=1, as_id=0, slot=1,
                             kind=kind, base_gfn=base, npages=n, flags=0)
               for i, (kind, placed, base, n) in enumerate(specs)]
    back_of = Recreations(changes)
    for w, g in asked:
        w %= len(changes)
        assert back_of.after(w, g) is _scan_recreation(changes, w, g), (w, g)


def test_recreations_on_a_recording() -> None:
    """Every removal of a real zap-slot recording, on the first, a middle and the last gfn of its range."""
    data = read(SAMPLES / "churn-zapslot.dat")
    changes = replay(data).memslots.to_pylist()
    timeline = [MemslotChange(seq=c["seq"], window_start=c["window_start"], anchor=c["anchor"], pid=c["pid"],
                              as_id=c["as_id"], slot=c["slot"], kind=c["kind"], base_gfn=c["base_gfn"],
                              npages=c["npages"], flags=c["flags"], old_base_gfn=c["old_base_gfn"],
                              old_npages=c["old_npages"]) for c in changes]
    back_of = Recreations(timeline)
    found = 0
    for w, c in enumerate(timeline):
        if c.old_npages and c.old_base_gfn is not None:
            for g in (c.old_base_gfn, c.old_base_gfn + c.old_npages // 2, c.old_base_gfn + c.old_npages - 1):
                want = _scan_recreation(timeline, w, g)
                assert back_of.after(w, g) is want
                found += want is not None
    assert found > 10


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 200), st.sampled_from([0, 0x10000, 0x18000]),
                          st.sampled_from([1, 4, 16]), st.integers(0, 64)), max_size=30),
       st.lists(st.tuples(st.integers(0, 600), st.integers(0x8000, 0x30000), st.integers(0, 0x10000)), max_size=40))
def test_hva_to_gfns_equals_the_scan(lts: list[tuple[int, int, int, int, int]],
                                     events: list[tuple[int, int, int]]) -> None:
    """Each notifier event's gfn ranges, in lifetime order, as a scan of every lifetime gives them,
    whatever the order of the events and however the lifetimes overlap (``ua`` 0: no host address)."""
    tl = MemslotTimeline(lifetimes=[Lifetime(as_id=0, slot=k, base_gfn=base, npages=n, flags=0, from_seq=start,
                                             until_seq=start + length, ua=ua)
                                    for k, (start, length, ua, n, base) in enumerate(lts)])
    # and events on every lifetime's edges
    events = events + [(lt.from_seq + d, lt.ua, 0x1000 * lt.npages) for lt in tl.lifetimes
                       for d in (-1, 0, lt.until_seq - lt.from_seq - 1, lt.until_seq - lt.from_seq)]
    seqs, starts, ends = ([e[0] for e in events], [e[1] for e in events], [e[1] + e[2] for e in events])
    got = tl.hva_to_gfns(seqs, starts, ends)
    for (seq, start, _), end, ranges in zip(events, ends, got):
        want = []
        for lt in tl.lifetimes:
            if lt.from_seq <= seq < lt.until_seq and lt.ua:
                lo, hi = max(start, lt.ua), min(end, lt.ua + (lt.npages << 12))
                if lo < hi:
                    want.append((lt.base_gfn + ((lo - lt.ua) >> 12), lt.base_gfn + ((hi - lt.ua + 0xFFF) >> 12)))
        assert ranges == want


def _scan_slot(tl: MemslotTimeline, c: DirtyClear) -> int | None:
    sl = int(tl.slot_at(np.asarray([c.gfn], np.uint64), np.asarray([c.seq], np.int64))[0])
    return sl if sl >= 0 else None


def _scan_logged(tl: MemslotTimeline, c: DirtyClear) -> bool:
    """The reference: the slot's lifetimes and every harvest scanned for one clear."""
    sl = _scan_slot(tl, c)
    if sl is None:
        return False
    lt = next((lt for lt in tl.lifetimes if lt.slot == sl and lt.from_seq <= c.seq < lt.until_seq), None)
    if lt is not None and lt.flags & 1:  # KVM_MEM_LOG_DIRTY_PAGES
        return True
    harvests = [(s, h) for s, h, _, _ in tl.clear_dirty] + list(tl.get_dirty)
    return any(c.installed <= s <= c.seq and (h & 0xFFFF) == (sl & 0xFFFF) for s, h in harvests)


def _scan_request(faults: dict[str, np.ndarray], c: DirtyClear, pfn_mask: int) -> int | None:
    """The reference: every fault masked for one clear; the writer's last request, if it was for this leaf."""
    mine = np.flatnonzero((faults["pid"] == c.pid) & (faults["seq"] < c.seq))
    if not len(mine):
        return None
    k = mine[-1]
    shift = np.uint64(9 * (c.level - 1))
    pfn = (c.new & pfn_mask) >> 12
    if faults["gfn"][k] >> shift != np.uint64(c.gfn) >> shift or faults["pfn"][k] >> shift != np.uint64(pfn) >> shift:
        return None
    return int(faults["seq"][k])


@pytest.mark.parametrize("seed", range(4))
def test_dirty_logging_and_own_requests_equal_the_scans(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real TDP recording's context (tdp-multi3: its own same-pfn Dirty clears are the fault
    race), with random clears, harvests and dirty-logging slots added: each clear's slot, whether
    it was dirty-logged and the writer's own request are what the per-clear scans give."""
    module = sys.modules["kvmtrace.replays.replay"]
    got: list[Context] = []
    monkeypatch.setattr(module, "Context", lambda *a, **k: got.append(Context(*a, **k)) or got[-1])
    replay(read(NESTED / "tdp-multi3-kt.dat"))
    ctx = got[0]
    tl, f, mask = ctx.timeline, ctx.faults, ctx.profile.pfn_mask
    rng = np.random.default_rng(seed)
    clears = [DirtyClear(*row) for row in ctx.journal.dirty_clears]
    assert clears  # the recording's races
    for _ in range(400):
        k = int(rng.integers(0, len(f["seq"])))
        lt = tl.lifetimes[int(rng.integers(0, len(tl.lifetimes)))]
        gfn = int(f["gfn"][k]) if rng.random() < 0.5 else lt.base_gfn + int(rng.integers(0, lt.npages + 8))
        seq = int(f["seq"][k]) + int(rng.integers(-2, 3))
        new = (int(f["pfn"][k]) << 12 | 0x6) if rng.random() < 0.5 else int(rng.integers(0, 1 << 40)) << 12
        clears.append(DirtyClear(seq, gfn, int(rng.integers(1, 3)), 0, seq - int(rng.integers(0, 3000)), new | 0x40,
                                 new, int(f["pid"][k]) if rng.random() < 0.8 else 7, -1))
    top = int(f["seq"].max())
    for lt in tl.lifetimes:
        if rng.random() < 0.3:
            lt.flags |= 1
    tl.clear_dirty.extend((int(s), tl.lifetimes[int(rng.integers(0, len(tl.lifetimes)))].slot, 0, 1)
                          for s in rng.integers(0, top, 30))
    tl.get_dirty.extend((int(s), tl.lifetimes[int(rng.integers(0, len(tl.lifetimes)))].slot)
                        for s in rng.integers(0, top, 10))
    for k in rng.integers(0, len(clears), 40).tolist():  # harvests on the bounds of a clear's span
        c = clears[k]
        sl = _scan_slot(tl, c)
        if sl is not None:
            tl.get_dirty.append((c.seq if rng.random() < 0.5 else c.installed, sl))
    logging, requests = DirtyLogging(tl, clears), OwnRequests(f, mask)
    logged = found = 0
    for i, c in enumerate(clears):
        assert logging.slot(i) == _scan_slot(tl, c)
        assert logging.logged(i, c) == _scan_logged(tl, c)
        assert requests.of(c) == _scan_request(f, c, mask)
        logged += logging.logged(i, c)
        found += requests.of(c) is not None
    assert 0 < logged < len(clears) and found > 0


@pytest.mark.parametrize("stem", ["tdpmmu0-ptslot-noquirk-qlog-kt", "tdpmmu0-churn-noquirk-qlog-kt"])
def test_leaf_fate_lookups_equal_the_scans(stem: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 2019 scenario's recordings (legacy MMU in TDP mode, zap-slot, memslot lines from a QEMU
    log): for every leaf in every removed range, and for a spread of other ranges and bounds, the
    indexes answer what a scan of every install, hardware fault, later removal and notifier unmap
    answers (the scans are what the fates used before)."""
    module = sys.modules["kvmtrace.replays.replay"]
    got: list[Context] = []
    monkeypatch.setattr(module, "Context", lambda *a, **k: got.append(Context(*a, **k)) or got[-1])
    path = NESTED / f"{stem}.dat"
    replay(read(path), qemu_log_lines=path.with_suffix(".qemu.log").read_text().splitlines())
    ctx = got[0]
    changes, ins, ev = ctx.positioned_removals(), ctx.installs, ctx.leaf_evidence
    zap = np.asarray(ctx.pages.zap_seq, dtype=np.int64)
    ask = Lookups(changes, ins, ev, zap)
    assert ctx.mmu == "legacy_tdp" and changes and len(ev.fault_seq)
    rng = np.random.default_rng(0)
    leaf_questions = proved = 0
    for n, (i, c) in enumerate(changes):
        snap = ctx.journal.snapshots.get((i, "start"))
        leaves = snap.leaves() if snap is not None else None
        questions = [] if leaves is None else [(int(g), int(lv)) for g, lv in zip(leaves.gfn, leaves.level)
                                               if c.old_base_gfn <= int(g) < c.old_base_gfn + c.old_npages]
        leaf_questions += len(questions)
        questions += [(int(rng.integers(0, 1 << 20)), int(rng.integers(1, 3))) for _ in range(5)]
        later = np.flatnonzero(ins["seq"] > c.seq)  # leaves installed again later: a re-install exists
        questions += [(int(ins["gfn"][r]), int(ins["level"][r])) for r in rng.choice(later, min(10, len(later)))]
        for g, lvl in questions:
            a, b = g, g + (1 << (9 * (lvl - 1)))
            # the change's line, and an install's and a fault's own seq (bounds the line never is)
            for after in (c.seq, int(rng.choice(ins["seq"])), int(rng.choice(ev.fault_seq))):
                _ask_as_scans(ask, changes, n, ins, ev, after, g, lvl, a, b, rng)
            proved += ask.reinstall(c.seq, g, lvl) is not None
    assert leaf_questions > 0 and proved >= 5


def _ask_as_scans(ask: Lookups, changes: list[tuple[int, MemslotChange]], n: int, ins: dict[str, np.ndarray],
                  ev: LeafEvidence, after: int, g: int, lvl: int, a: int, b: int, rng: np.random.Generator) -> None:
    """Each of ``ask``'s answers for one leaf after seq ``after`` against a scan of every row."""
    same = (ins["seq"] > after) & (ins["gfn"] == np.uint64(g)) & (ins["level"] == lvl)
    assert ask.reinstall(after, g, lvl) == (int(ins["seq"][same][0]) if same.any() else None)
    into = (ins["seq"] > after) & (ins["gfn"] >= np.uint64(a)) & (ins["gfn"] < np.uint64(b))
    assert ask.first_install(after, a, b) == (int(ins["seq"][into][0]) if into.any() else None)
    fm = (ev.fault_seq > after) & (ev.fault_gfn >= np.uint64(a)) & (ev.fault_gfn < np.uint64(b)) & \
        (ev.fault_present >= 0)
    assert ask.first_fault(after, a, b) == (int(np.flatnonzero(fm)[0]) if fm.any() else None)
    for until in (after + 1, after + 5000, int(rng.integers(after, after + 200_000)), 1 << 62):
        want = next((d for _, d in changes[n + 1:] if d.window_start is not None and d.window_start < until
                     and d.old_base_gfn < b and a < d.old_base_gfn + d.old_npages), None)
        assert ask.later_removal(n, a, b, until) is want
        hits = ev.notifier_seq[(ev.notifier_seq > after) & (ev.notifier_seq < until)]
        assert ask.notifier_unmap(after, until) == (int(hits[0]) if len(hits) else None)


@pytest.mark.parametrize("path", [SAMPLES / "churn-zapall.dat", SAMPLES / "ptslot-zapslot.txt.gz",
                                  NESTED / "k61tdp-churn-small-kt.dat"], ids=lambda p: p.name)
def test_role_texts_are_each_rows_own(path: Path) -> None:
    """The ledger's role text per page, computed once per distinct field combination, is what
    each page's own row gives (text input: with the role bits it cannot carry null)."""
    pages = replay(read(path)).shadow_pages
    codes, texts = role_texts(pages)
    want = [role_text(row) for row in pages.to_pylist()]
    assert len(want) > 20 and [texts[c] for c in codes] == want
    assert 1 < len(texts) < len(want)


def test_role_texts_of_fields_too_wide_to_pack_are_each_rows_own() -> None:
    """A field value far beyond a role bit field's width (damaged text could print one) is not
    packed with the others into one integer, and each page still gets its own row's text."""
    pages = replay(read(SAMPLES / "churn-zapall.dat")).shadow_pages
    level = pages.column("level").to_numpy().astype(np.int64)
    level[::3] = 1 << 60
    wide = pages.set_column(pages.schema.get_field_index("level"), "level", pa.array(level))
    codes, texts = role_texts(wide)
    assert [texts[c] for c in codes] == [role_text(row) for row in wide.to_pylist()]
    assert any(str(1 << 60) in t for t in texts)


@pytest.mark.parametrize("name", ["boot-zapall", "rom-zapslot", "shadow-churn-noquirk-small-kt"])
def test_hva_to_gfns_on_a_recording(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every MMU-notifier unmap of a real recording, against its own memslot lifetimes: the sweep
    gives each unmap the gfn ranges a scan of every lifetime gives it."""
    path = SAMPLES / f"{name}.dat" if (SAMPLES / f"{name}.dat").exists() else NESTED / f"{name}.dat"
    module = sys.modules["kvmtrace.replays.replay"]
    got: list[Context] = []
    monkeypatch.setattr(module, "Context", lambda *a, **k: got.append(Context(*a, **k)) or got[-1])
    data = read(path)
    replay(data)
    tl = got[0].timeline
    um = data.table("kvm_unmap_hva_range")
    seqs, starts, ends = (um.column(c).to_pylist() for c in ("seq", "start", "end"))
    mapped = 0
    for seq, start, end, ranges in zip(seqs, starts, ends, tl.hva_to_gfns(seqs, starts, ends)):
        want = [(lt.base_gfn + ((max(start, lt.ua) - lt.ua) >> 12),
                 lt.base_gfn + ((min(end, lt.ua + (lt.npages << 12)) - lt.ua + 0xFFF) >> 12))
                for lt in tl.lifetimes if lt.ua and lt.from_seq <= seq < lt.until_seq
                and max(start, lt.ua) < min(end, lt.ua + (lt.npages << 12))]
        assert ranges == want
        mapped += bool(ranges)
    assert mapped > 0


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 300), st.integers(1, 40))
def test_whatif_refaults_are_the_scans(seed: int, n: int, gfns: int) -> None:
    """The what-if's "was this gfn installed again after seq" (each gfn's last install, read off
    the installs in seq order) against a scan of every install; also read a few installs at a
    time (a later block's last installs override an earlier one's)."""
    from kvmtrace.replays import whatif

    rng = np.random.default_rng(seed)
    seq = np.sort(rng.choice(10_000, n, replace=False)).astype(np.int64)
    gfn = rng.integers(0, gfns, n).astype(np.uint64)
    asked = rng.integers(0, gfns + 5, 50).astype(np.uint64)
    block = whatif.BLOCK
    try:
        for whatif.BLOCK in (block, 1, 7):
            refaulted = whatif._last_install({"seq": seq, "gfn": gfn})
            for at in (-1, *rng.integers(0, 10_000, 4).tolist(), *(seq[:2].tolist())):
                assert refaulted(asked, at).tolist() == [bool(((gfn == g) & (seq > at)).any()) for g in asked]
    finally:
        whatif.BLOCK = block


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 400), st.booleans())
def test_distinct_leaves_as_rows_of_three_columns(seed: int, n: int, wide: bool) -> None:
    """The reinstall words' (level, gfn, kind) triples: in the order and with the codes of a
    unique over the stacked columns, packed or not (a gfn beyond 52 bits is not packed)."""
    rng = np.random.default_rng(seed)
    level = rng.integers(1, 5, n).astype(np.int8)
    gfn = rng.integers(0, 1 << 40 if not wide else 1 << 62, n).astype(np.uint64) >> np.uint64(rng.integers(0, 38))
    kind = rng.integers(0, 3, n).astype(np.int64)
    rows, code = np.unique(np.stack((level.astype(np.uint64), gfn, kind.astype(np.uint64))), axis=1,
                           return_inverse=True)
    combos, got = _distinct_leaves(level, gfn, kind)
    assert combos == rows.T.tolist() and got.tolist() == code.reshape(-1).tolist()
