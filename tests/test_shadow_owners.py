"""The shadow MMU's SPTE-page owners (``shadow_sptes.infer_owners``) against the loop it replaced.

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

from kvmtrace.parsers import read
from kvmtrace.replays import walk
from kvmtrace.replays.pages import NONE, PageBook
from kvmtrace.replays.profiles import KernelProfile, profile_for
from kvmtrace.replays.replay import replay
from kvmtrace.replays.shadow_sptes import FOREVER, Installs, Lookups, infer_owners


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
        addr = int(page_addr[i])
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


def _same_as_scan(ins: Installs, looks: Lookups, pages: PageBook, profile: KernelProfile) -> int:
    """Both ways on copies of ``pages``; the number of installs given an owner."""
    scanned_pages, pages = copy.deepcopy(pages), copy.deepcopy(pages)
    want = owners_by_scan(ins, looks, scanned_pages, profile)
    got = infer_owners(ins, looks, pages, profile)
    assert np.array_equal(got, want)
    assert pages.spte_page == scanned_pages.spte_page
    return int((want != NONE).sum())


@pytest.mark.parametrize("path", [SAMPLES / "churn-zapall.dat", SAMPLES / "multi-zapslot.dat",
                                  SAMPLES / "churn-thp-zapslot.dat", SAMPLES / "ptslot-zapall.dat",
                                  NESTED / "shadow-churn-noquirk-small-kt.dat"], ids=lambda p: p.name)
def test_owners_of_a_recording_are_the_scans(path, monkeypatch):
    seen = []

    def record(ins, looks, pages, profile):
        seen.append(_same_as_scan(ins, looks, pages, profile))
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
    return _same_as_scan(ins, looks, pages, profile)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 12), st.integers(1, 120), st.integers(0, 60))
def test_owners_of_random_installs_are_the_scans(seed, n_pages, n_ins, n_look):
    _random_case(seed, n_pages, n_ins, n_look)


def test_random_installs_do_get_owners():
    """The random cases are not all ownerless (which both ways would agree on trivially)."""
    owned = [_random_case(seed, 6, 100, 50) for seed in range(100)]
    assert sum(owned) > 300 and sum(1 for n in owned if n) > 50
