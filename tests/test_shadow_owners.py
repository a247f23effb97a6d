"""The shadow MMU's SPTE settling (``shadow_sptes``): owners against the loop they replaced, changes in parts.

``infer_owners`` looks each boundary's candidate page up in arrays computed for every install at
once, and finds where an owner stops holding with a binary search; the loop below (the code
before, kept here as the oracle) made two binary searches per boundary and scanned the rest of
the SPTE page's installs. Both must give every install the same owner and link the same pages,
on real recordings (multi-vCPU, zap-all and zap-slot, huge pages) and on random ones.
"""

from __future__ import annotations

import copy
import heapq

import numpy as np
import pytest
from conftest import NESTED, SAMPLES
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmtrace.parsers import read, spilled
from kvmtrace.replays import shadow_sptes, walk
from kvmtrace.replays.pages import NONE, PageBook
from kvmtrace.replays.profiles import KernelProfile, profile_for
from kvmtrace.replays.replay import replay
from kvmtrace.replays.shadow_sptes import (
    END_OPEN,
    END_OVERWRITE,
    END_PAGE_ZAP,
    END_RMAP,
    FOREVER,
    Installs,
    Lookups,
    SpteLifetimes,
    _first_rmap_zaps,
    infer_owners,
)


def _last_before(sorted_seq: np.ndarray, t: int) -> int:
    i = int(np.searchsorted(sorted_seq, t)) - 1
    return int(sorted_seq[i]) if i >= 0 else NONE


def owners_by_scan(ins: Installs, looks: Lookups, pages: PageBook, profile: KernelProfile) -> np.ndarray:
    n = len(ins.seq)
    owner = np.full(n, NONE, dtype=np.int64)
    if n == 0:
        return owner
    page_addr = (ins.sptep & ~np.uint64(0xFFF)).astype(np.uint64)
    order = np.lexsort((ins.seq, page_addr))
    addr_sorted = page_addr[order]
    starts = np.flatnonzero(np.r_[True, addr_sorted[1:] != addr_sorted[:-1]])
    ends = np.r_[starts[1:], n]
    zap = np.asarray(pages.zap_seq, dtype=np.int64)
    zap = np.where(zap == NONE, FOREVER, zap)
    level_mask = (1 << profile.required_field("level").width) - 1
    direct_shift = profile.required_field("direct").shift
    role, pgfn, linked = pages.role, pages.gfn, pages.spte_page
    set_by_pid = {int(p): ins.seq[ins.pid == p] for p in np.unique(ins.pid)}
    look_by = {}
    for p, lv in set(zip(looks.pid.tolist(), looks.level.tolist())):
        m = (looks.pid == p) & (looks.level == lv)
        look_by[(p, lv)] = (looks.seq[m], looks.page[m])
    seq_o, lvl_o = ins.seq[order], ins.level[order]
    heap = [(int(seq_o[s]), int(g)) for g, s in enumerate(starts)]
    heapq.heapify(heap)
    pos = starts.copy()
    while heap:
        t, g = heapq.heappop(heap)
        k = pos[g]
        i = order[k]
        pid, level, gfn, sptep = int(ins.pid[i]), int(ins.level[i]), int(ins.gfn[i]), int(ins.sptep[i])
        addr = pages.link(int(page_addr[i]))
        o = NONE
        look = look_by.get((pid, level))
        if look is not None:
            j = int(np.searchsorted(look[0], t)) - 1
            if j >= 0 and look[0][j] > _last_before(set_by_pid[pid], t):
                c = int(look[1][j])
                ok = zap[c] > t and linked[c] in (NONE, addr) and role[c] & level_mask == level
                if ok and role[c] >> direct_shift & 1:
                    span = 9 * (level - 1)
                    ok = pgfn[c] <= gfn < pgfn[c] + (512 << span) and (gfn >> span) & 511 == (sptep & 0xFFF) >> 3
                if ok:
                    o = c
                    linked[c] = addr
        end = ends[g]
        if o == NONE:
            nxt = k + 1
        else:
            rest_seq, rest_lvl = seq_o[k + 1:end], lvl_o[k + 1:end]
            stop = (rest_seq >= zap[o]) | (rest_lvl != level)
            nxt = k + 1 + (int(np.argmax(stop)) if stop.any() else len(rest_seq))
        owner[order[k:nxt]] = o
        if nxt < end:
            pos[g] = nxt
            heapq.heappush(heap, (int(seq_o[nxt]), g))
    return owner


def _same_as_scan(ins: Installs, looks: Lookups, pages: PageBook, profile: KernelProfile,
                  blocks: tuple[int, ...]) -> int:
    """Both ways on copies of ``pages``, the installs taken ``blocks`` at a time (each SPTE page's
    owner and level carried across the blocks' boundaries); the number of installs given an owner."""
    scanned_pages = copy.deepcopy(pages)
    want = owners_by_scan(ins, looks, scanned_pages, profile)
    block = shadow_sptes.BLOCK
    try:
        for shadow_sptes.BLOCK in blocks:
            taken = copy.deepcopy(pages)
            got = infer_owners(ins, looks, taken, profile)
            assert np.array_equal(got, want), shadow_sptes.BLOCK
            assert taken.spte_page == scanned_pages.spte_page
    finally:
        shadow_sptes.BLOCK = block
    return int((want != NONE).sum())


#: Shadow-MMU recordings: zap-all and zap-slot, three vCPUs, huge pages, page tables in a slot, 6.12.
RECORDINGS = [SAMPLES / "churn-zapall.dat", SAMPLES / "multi-zapslot.dat", SAMPLES / "churn-thp-zapslot.dat",
              SAMPLES / "ptslot-zapall.dat", NESTED / "shadow-churn-noquirk-small-kt.dat"]


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.name)
def test_owners_of_a_recording_are_the_scans(path, monkeypatch):
    seen = []

    def record(ins, looks, pages, profile):
        seen.append(_same_as_scan(ins, looks, pages, profile, (shadow_sptes.BLOCK, 333)))
        return infer_owners(ins, looks, pages, profile)

    monkeypatch.setattr(walk, "infer_owners", record)
    replay(read(path))
    assert len(seen) == 1 and seen[0] > 100


def _random_case(seed: int, n_pages: int, n_ins: int, n_look: int) -> int:
    """Few SPTE pages, vCPUs, levels and pages, so that boundaries, zaps, level changes, stale
    lookups and already-linked pages all happen; the installs given an owner."""
    profile = profile_for("6.12")
    rng = np.random.default_rng(seed)
    level_shift = profile.required_field("level").shift
    direct_shift = profile.required_field("direct").shift
    pages = PageBook()
    for _ in range(n_pages):
        level, direct = int(rng.integers(1, 3)), int(rng.integers(0, 2))
        p = pages.add(int(rng.integers(0, 4)) << 9, level << level_shift | direct << direct_shift, 0,
                      int(rng.integers(0, 50)), False, 0)
        if rng.random() < 0.5:
            pages.zap_seq[p] = int(rng.integers(0, 400))
    seqs = rng.choice(400, size=n_ins + n_look, replace=False)
    ins_seq, look_seq = np.sort(seqs[:n_ins]), np.sort(seqs[n_ins:])
    ins = Installs(ins_seq.astype(np.int64), rng.integers(1, 3, n_ins).astype(np.int32),
                   rng.integers(0, 4 << 9, n_ins).astype(np.uint64), np.zeros(n_ins, np.uint64),
                   (np.uint64(0x10000) + rng.integers(0, 3, n_ins).astype(np.uint64) * np.uint64(0x1000)
                    + rng.integers(0, 512, n_ins).astype(np.uint64) * np.uint64(8)),
                   rng.integers(1, 3, n_ins).astype(np.int8))
    looks = Lookups(look_seq.astype(np.int64), rng.integers(1, 3, n_look).astype(np.int64),
                    rng.integers(1, 3, n_look).astype(np.int64), rng.integers(0, n_pages, n_look).astype(np.int64))
    return _same_as_scan(ins, looks, pages, profile, (shadow_sptes.BLOCK, 1, 7))


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 12), st.integers(1, 120), st.integers(0, 60))
def test_owners_of_random_installs_are_the_scans(seed, n_pages, n_ins, n_look):
    _random_case(seed, n_pages, n_ins, n_look)


def test_random_installs_do_get_owners():
    """The random cases are not all ownerless (which both ways would agree on trivially)."""
    owned = [_random_case(seed, 6, 100, 50) for seed in range(100)]
    assert sum(owned) > 300 and sum(1 for n in owned if n) > 50


@pytest.mark.parametrize("name", ["churn-zapslot", "multi-zapall"])
def test_spte_changes_handed_over_in_small_parts_are_the_same(name, monkeypatch):
    """``SpteLifetimes.to_journal`` hands the journal its changes a part at a time; with parts of
    a few hundred rows the SPTE-change table (and the replay's findings) are those of one part."""
    data = read(SAMPLES / f"{name}.dat")
    whole = replay(data)
    monkeypatch.setattr(shadow_sptes, "PART", 333)
    parts = replay(data)
    assert whole.spte_changes.num_rows > 3 * 333
    assert parts.spte_changes.equals(whole.spte_changes)
    assert parts.findings.equals(whole.findings) and parts.summaries["consequences"].equals(
        whole.summaries["consequences"])


def lifetimes_as_before(ins: Installs, owner: np.ndarray, pages: PageBook, profile: KernelProfile,
                        rmap_zaps: list[tuple[int, int, int, str]]) -> dict[str, np.ndarray]:
    """``SpteLifetimes``' columns as its constructor made them before its temporaries were let go
    early (the oracle)."""
    n = len(ins.seq)
    start = 2 * ins.seq
    present = profile.is_present(ins.spte) if n else np.zeros(0, bool)
    order = np.lexsort((ins.seq, ins.sptep))
    same = np.zeros(n, bool)  # followed (in that order) by an install at the same sptep
    same[:-1] = ins.sptep[order][1:] == ins.sptep[order][:-1]
    nxt = np.full(n, FOREVER, dtype=np.int64)
    nxt[order[same]] = start[order[np.flatnonzero(same) + 1]]
    prev = np.full(n, -1, dtype=np.int64)
    prev[order[np.flatnonzero(same) + 1]] = order[same]
    zap = np.asarray(pages.zap_seq, dtype=np.int64)
    owner_zap = np.where((owner != NONE), zap[owner.clip(0)] if len(zap) else NONE, NONE)
    page_end = np.where(owner_zap == NONE, FOREVER, 2 * owner_zap)
    page_end = np.where(page_end > start, page_end, FOREVER)
    rmap_end = np.full(n, FOREVER, dtype=np.int64)
    rmap_reason = np.full(n, -1, dtype=np.int32)
    _first_rmap_zaps(rmap_zaps, ins.gfn, start, rmap_end, rmap_reason)
    end = np.minimum(np.minimum(nxt, page_end), rmap_end)
    end[~present] = start[~present]
    how = np.select([end == FOREVER, end == nxt, end == page_end],
                    [END_OPEN, END_OVERWRITE, END_PAGE_ZAP], END_RMAP).astype(np.int8)
    has_old = (prev >= 0) & (end[prev.clip(0)] == start) & present[prev.clip(0)]
    prev_i = prev.clip(0)
    changed = ((ins.spte[prev_i] ^ ins.spte) & np.uint64(profile.pfn_mask)) != 0
    is_install = present & (~has_old | changed | (ins.gfn[prev_i] != ins.gfn))
    smm = profile.role_field("smm")
    roles = np.asarray(pages.role, dtype=np.uint64)
    as_id = np.where(owner != NONE, (roles[owner.clip(0)] >> np.uint64(smm.shift)) & np.uint64(0xFF), 0)
    return {"present": present, "prev": prev, "rmap_reason": rmap_reason, "end": end, "how": how,
            "has_old": has_old, "is_install": is_install, "as_id": (as_id != 0).astype(np.int8)}


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.name)
def test_lifetimes_of_a_recording_are_as_before(path, monkeypatch):
    """Every column of the lifetimes the walk settles, against the previous constructor's."""
    seen = []

    def both(ins, owner, pages, profile, zaps):
        got = SpteLifetimes(ins, owner, pages, profile, zaps)
        want = lifetimes_as_before(ins, owner, pages, profile, zaps)
        for name, column in want.items():
            assert np.array_equal(getattr(got, name), column), name
        seen.append(set(got.how[got.present].tolist()))
        assert not got.end.flags.writeable and not got.prev.flags.writeable  # kept on disk, read-only
        return got

    monkeypatch.setattr(walk, "SpteLifetimes", both)
    monkeypatch.setattr(spilled, "ARRAYS_ON_DISK", 100)  # the lifetimes (and the walk's arrays) on disk
    replay(read(path))
    assert len(seen) == 1 and seen[0]  # the ways present SPTEs ended here


def _lifetimes_case(seed: int, n_pages: int, n_ins: int) -> tuple:
    """Random installs over a few SPTEs, owners, zaps (some before the install: memory reuse),
    rmap zaps, non-present values, few pfns (an overwrite may keep the pfn but not the gfn), and
    pages in SMM (any nonzero smm byte: address space 1): ``SpteLifetimes``' arguments."""
    profile = profile_for("6.12")
    rng = np.random.default_rng(seed)
    smm = profile.required_field("smm").shift
    pages = PageBook()
    for _ in range(n_pages):
        p = pages.add(int(rng.integers(0, 8)), int(rng.integers(0, 3)) << smm | 1, 0, 0, False, 0)
        if rng.random() < 0.6:
            pages.zap_seq[p] = int(rng.integers(0, 300))
    seq = np.sort(rng.choice(300, size=n_ins, replace=False)).astype(np.int64)
    pfn = rng.integers(1, 4, n_ins).astype(np.uint64) << np.uint64(12)
    spte = np.where(rng.random(n_ins) < 0.8, pfn | np.uint64(0x807), np.uint64(profile.nonpresent)).astype(np.uint64)
    sptep = np.uint64(0x10000) + rng.integers(0, 6, n_ins).astype(np.uint64) * np.uint64(8)
    ins = Installs(seq, rng.integers(1, 3, n_ins).astype(np.int32), rng.integers(0, 8, n_ins).astype(np.uint64),
                   spte, sptep, np.ones(n_ins, np.int8))
    owner = np.where(rng.random(n_ins) < 0.8, rng.integers(0, n_pages, n_ins), NONE).astype(np.int64)
    zaps = sorted((int(k), lo, lo + int(rng.integers(1, 4)), f"zap {i}") for i, (k, lo) in enumerate(
        zip(rng.integers(0, 600, 5), rng.integers(0, 8, 5).tolist())))
    return ins, owner, pages, profile, zaps


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 12), st.integers(1, 150))
def test_lifetimes_are_as_before(seed, n_pages, n_ins):
    """Also a BLOCK of a few installs at a time: an overwrite's old value, its owner's zap and an
    rmap zap are looked up across block boundaries; and the columns kept on disk (read-only) from
    a few rows, as a long trace's are."""
    case = _lifetimes_case(seed, n_pages, n_ins)
    want = lifetimes_as_before(*case)
    block, on_disk = shadow_sptes.BLOCK, spilled.ARRAYS_ON_DISK
    try:
        for shadow_sptes.BLOCK, spilled.ARRAYS_ON_DISK in ((block, on_disk), (1, on_disk), (7, 5)):
            got = SpteLifetimes(*case)
            for name, column in want.items():
                assert np.array_equal(getattr(got, name), column), (name, shadow_sptes.BLOCK)
    finally:
        shadow_sptes.BLOCK, spilled.ARRAYS_ON_DISK = block, on_disk


def test_random_lifetimes_have_every_ending_and_both_address_spaces():
    """The random cases above reach every way an SPTE's life ends, and owners in SMM."""
    seen_how: set[int] = set()
    seen_as: set[int] = set()
    for seed in range(40):
        life = SpteLifetimes(*_lifetimes_case(seed, 6, 120))
        seen_how |= set(life.how[life.present].tolist())
        seen_as |= set(life.as_id.tolist())
    assert seen_how == {END_OPEN, END_OVERWRITE, END_PAGE_ZAP, END_RMAP} and seen_as == {0, 1}


INSTALL_FIELDS = ("seq", "pid", "gfn", "spte", "sptep", "level")


def _shuffled_case(seed: int, n_ins: int, n_look: int) -> int:
    """Installs and lookups come in seq order from a trace; out of order, each install must be
    given the same candidate page (the pass takes its shortcut only for ordered rows), and so in
    blocks of any size. Returns how many installs have one."""
    rng = np.random.default_rng(seed)
    seqs = rng.choice(400, size=n_ins + n_look, replace=False)
    ins = Installs(np.sort(seqs[:n_ins]).astype(np.int64), rng.integers(1, 4, n_ins).astype(np.int32),
                   np.zeros(n_ins, np.uint64), np.zeros(n_ins, np.uint64), np.zeros(n_ins, np.uint64),
                   rng.integers(1, 3, n_ins).astype(np.int8))
    looks = Lookups(np.sort(seqs[n_ins:]).astype(np.int64), rng.integers(1, 4, n_look).astype(np.int64),
                    rng.integers(1, 3, n_look).astype(np.int64), rng.integers(0, 9, n_look).astype(np.int64))
    want = shadow_sptes._candidates(ins, looks)
    p, q = rng.permutation(n_ins), rng.permutation(n_look)
    shuffled = Installs(*(getattr(ins, f)[p] for f in INSTALL_FIELDS)), \
        Lookups(*(getattr(looks, f)[q] for f in ("seq", "pid", "level", "page")))
    assert shadow_sptes._candidates(*shuffled).tolist() == want[p].tolist()
    block = shadow_sptes.BLOCK
    try:  # a block of a few installs: each vCPU's last install is carried across many boundaries
        for shadow_sptes.BLOCK in (1, 7):
            assert shadow_sptes._candidates(ins, looks).tolist() == want.tolist()
            assert shadow_sptes._candidates(*shuffled).tolist() == want[p].tolist()
    finally:
        shadow_sptes.BLOCK = block
    return int((want != NONE).sum())


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 120), st.integers(0, 60))
def test_candidates_do_not_depend_on_the_rows_order(seed, n_ins, n_look):
    _shuffled_case(seed, n_ins, n_look)


def test_shuffled_cases_do_have_candidates():
    assert sum(_shuffled_case(seed, 80, 40) for seed in range(30)) > 300


def test_the_page_book_takes_any_traced_value():
    """Its columns are machine words: a damaged trace's generation with every bit set (the field
    was ``unsigned long``) and an SPTE page address above 2**63 are stored, not an error, and
    read back as the lists kept them (the table's int64 generation has the same bits)."""
    pages = PageBook()
    p = pages.add(5, 0x101, 2**64 - 1, 10, True, 0)
    pages.add(6, 0x102, 3, 11, False, 1)
    pages.spte_page[p] = pages.link(0xFFFF_8000_0000_1000)
    assert pages.column("gen").tolist() == [-1, 3]
    assert pages.column("spte_page").view(np.uint64).tolist()[0] == 0xFFFF_8000_0000_1000
    table = pages.table(profile_for("6.12"))
    assert table.column("mmu_valid_gen").to_pylist() == [-1, 3]
    assert table.column("spte_page").to_pylist() == [0xFFFF_8000_0000_1000, None]
    assert table.column("predates_trace").to_pylist() == [True, False]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-3, 3), max_size=30), st.sampled_from([1, 2, 3, shadow_sptes.BLOCK]))
def test_ascending_is_read_a_block_at_a_time_across_block_edges(values: list[int], block: int) -> None:
    """Whether a column never decreases, read a block at a time: a decrease between the last row
    of one block and the first of the next counts too."""
    column = np.asarray(values, np.int64)
    whole = shadow_sptes.BLOCK
    try:
        shadow_sptes.BLOCK = block
        got = shadow_sptes._ascending(column)
    finally:
        shadow_sptes.BLOCK = whole
    assert got == bool(np.all(np.diff(column) >= 0))
