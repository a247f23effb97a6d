"""Shadow-MMU SPTEs, columnar: owners, lifetimes, transitions, installs and snapshots.

``kvm_mmu_set_spte`` is the bulk of a shadow trace (hundreds of thousands of rows), and nothing
about a page depends on its SPTEs, so the replay walks the page events first (shadow.py) and then
settles every SPTE with array operations:

* **Owner.** SPTEs of one shadow page share ``sptep & ~0xfff``. An SPTE page keeps its owner until
  the owner is zapped (its memory may then be reused) or an install of another level arrives;
  only at those boundaries is the owner inferred again, in seq order: the faulting vCPU's latest
  ``kvm_mmu_get_page`` at that level, if obtained since its previous install, alive, not linked
  to another SPTE page, and (direct pages) agreeing on the index ``(gfn >> 9*(level-1)) & 511``.
  Boundaries are few (about one per page), so that loop is short.
* **Lifetime.** An install lives from its event until the next install at the same ``sptep``, its
  owner's zap, or an untraced rmap zap of its gfn (MMU-notifier unmap, per-slot delete).

Times are doubled seqs (``2*seq``) so that checkpoints and inferred zaps at ``2*seq+1`` fall
between events.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from kvmtrace.parsers.spilled import kept
from kvmtrace.replays import sweep
from kvmtrace.replays.gfn_index import GfnIndex
from kvmtrace.replays.journal import Journal, coded
from kvmtrace.replays.pages import NONE, PageBook
from kvmtrace.replays.profiles import KernelProfile

FOREVER = np.iinfo(np.int64).max
#: SPTE changes handed to the journal at once (:meth:`SpteLifetimes.to_journal`).
PART = 1 << 20
END_OPEN, END_OVERWRITE, END_PAGE_ZAP, END_RMAP = 0, 1, 2, 3


@dataclass
class Installs:
    """The ``kvm_mmu_set_spte`` columns, in seq order."""

    seq: np.ndarray
    pid: np.ndarray  # int32
    gfn: np.ndarray
    spte: np.ndarray
    sptep: np.ndarray
    level: np.ndarray  # int8


@dataclass
class Lookups:
    """Every ``kvm_mmu_get_page`` as the page walk saw it: seq, vCPU, level, page id."""

    seq: np.ndarray
    pid: np.ndarray
    level: np.ndarray
    page: np.ndarray


def _followed_by_same(sorted_keys: np.ndarray) -> np.ndarray:
    """Mask of the positions whose next element has the same key (``False`` at the end).

    Built by slicing into a preallocated array: ``np.r_[a[1:] == a[:-1], False]`` has length 1
    for an empty input (a trace with no ``kvm_mmu_set_spte`` at all), which broke every index
    derived from it."""
    out = np.zeros(len(sorted_keys), dtype=bool)
    out[:-1] = sorted_keys[1:] == sorted_keys[:-1]
    return out


def _candidates(ins: Installs, looks: Lookups) -> np.ndarray:
    """Per install, the page its vCPU last looked up at its level before it (``kvm_mmu_get_page``)
    when that lookup came after the vCPU's previous install, else NONE: the owner an SPTE page
    takes at a boundary, if the page is still fit then (:func:`infer_owners` checks that).

    Why here, for every install at once: these depend on the events alone, not on what the
    owner loop decided; as two binary searches per boundary they were half of its time."""
    n = len(ins.seq)
    out = np.full(n, NONE, dtype=np.int64)
    if not n or not len(looks.seq):
        return out
    # (vCPU, level) as one group number shared by installs and lookups, above the seq's bits
    pair = np.concatenate([(ins.pid.astype(np.int64) << 8) | (ins.level.astype(np.int64) & 0xFF),
                           (looks.pid.astype(np.int64) << 8) | (looks.level.astype(np.int64) & 0xFF)])
    _pairs, group = np.unique(pair, return_inverse=True)
    del pair  # a long trace's installs are millions: each temporary here is tens of MiB
    bits = max(int(ins.seq.max()), int(looks.seq.max()), 1).bit_length()
    group = group.reshape(-1).astype(np.int64) << bits
    keys = ins.seq.astype(np.int64) | group[:n]
    look_keys = looks.seq.astype(np.int64) | group[n:]
    del group
    order = np.argsort(look_keys, kind="stable")
    look_keys, look_pages = look_keys[order], np.asarray(looks.page, np.int64)[order]
    j = np.searchsorted(look_keys, keys) - 1  # the last lookup before, same vCPU and level
    found = j >= 0
    found[found] = (look_keys[j[found]] >> bits) == (keys[found] >> bits)
    del keys
    # the vCPU's previous install (seqs are unique: the one before in (vCPU, seq) order)
    by_pid = np.lexsort((ins.seq, ins.pid))
    previous = np.full(n, NONE, dtype=np.int64)
    same = ins.pid[by_pid[1:]] == ins.pid[by_pid[:-1]]
    previous[by_pid[1:][same]] = ins.seq[by_pid[:-1][same]]
    del by_pid, same
    fresh = found & ((look_keys[j.clip(0)] & ((1 << bits) - 1)) > previous)
    out[fresh] = look_pages[j[fresh]]
    return out


def infer_owners(ins: Installs, looks: Lookups, pages: PageBook, profile: KernelProfile) -> np.ndarray:
    """Owning page id per install (NONE where it cannot be inferred)."""
    n = len(ins.seq)
    owner = np.full(n, NONE, dtype=np.int64)
    if n == 0:
        return owner
    candidate = _candidates(ins, looks)  # first: its temporaries go before the ones below
    page_addr = (ins.sptep & ~np.uint64(0xFFF)).astype(np.uint64)
    index = np.int32 if n < 2**31 else np.int64
    order = np.lexsort((ins.seq, page_addr)).astype(index)
    addr_sorted = page_addr[order]
    starts = np.flatnonzero(np.r_[True, addr_sorted[1:] != addr_sorted[:-1]])
    ends = np.r_[starts[1:], n]
    zap = pages.column("zap_seq")
    zap = np.where(zap == NONE, FOREVER, zap)
    level_mask = (1 << profile.required_field("level").width) - 1
    direct_shift = profile.required_field("direct").shift
    role, pgfn, linked = pages.role, pages.gfn, pages.spte_page
    seq_o, lvl_o = ins.seq[order], ins.level[order]
    # per sorted position, where the next install of another level (or the next SPTE page) starts
    runs = np.flatnonzero(np.r_[True, (lvl_o[1:] != lvl_o[:-1]) | (addr_sorted[1:] != addr_sorted[:-1]), True])
    del addr_sorted, lvl_o
    next_run = runs.astype(index)[np.searchsorted(runs, np.arange(n, dtype=index), side="right")]
    del runs
    heap = [(int(seq_o[s]), int(g)) for g, s in enumerate(starts)]
    heapq.heapify(heap)
    pos = starts.copy()  # next unsettled position per group
    while heap:
        t, g = heapq.heappop(heap)
        k = pos[g]
        i = order[k]
        o = NONE
        c = int(candidate[i])
        if c != NONE:
            level, gfn, sptep = int(ins.level[i]), int(ins.gfn[i]), int(ins.sptep[i])
            addr = pages.link(int(page_addr[i]))
            ok = zap[c] > t and linked[c] in (NONE, addr) and role[c] & level_mask == level
            if ok and role[c] >> direct_shift & 1:
                span = 9 * (level - 1)
                ok = pgfn[c] <= gfn < pgfn[c] + (512 << span) and (gfn >> span) & 511 == (sptep & 0xFFF) >> 3
            if ok:
                o = c
                linked[c] = addr
        # the owner holds until it is zapped or another level shows up in this SPTE page
        end = ends[g]
        if o == NONE:
            nxt = k + 1
        else:
            nxt = min(int(next_run[k]), k + 1 + int(np.searchsorted(seq_o[k + 1:end], zap[o])))
        owner[order[k:nxt]] = o
        if nxt < end:
            pos[g] = nxt
            heapq.heappush(heap, (int(seq_o[nxt]), g))
    return owner


def _first_rmap_zaps(zaps: list[tuple[int, int, int, str]], gfn: np.ndarray, start: np.ndarray,
                     end: np.ndarray, reason: np.ndarray) -> None:
    """Per install, the first untraced rmap zap (``zaps`` sorted by time key) after it started
    whose range holds its gfn: its key into ``end``, its index into ``reason``. Zaps of the
    same range are taken together, so each range costs its installs once (not once per zap:
    a range deleted and re-created over and over made the per-zap masks quadratic)."""
    if not zaps:
        return
    by_range: dict[tuple[int, int], list[int]] = {}
    for k, (_key, lo, hi, _why) in enumerate(zaps):
        by_range.setdefault((lo, hi), []).append(k)
    by_gfn = GfnIndex(gfn, np.arange(len(gfn)))
    for (lo, hi), ks in by_range.items():
        which = np.asarray(ks, dtype=np.int64)
        keys = np.asarray([zaps[k][0] for k in ks], dtype=np.int64)  # ascending, as zaps are
        rows = by_gfn.rows_in(lo, hi)
        j = np.searchsorted(keys, start[rows], side="right")  # the first of these zaps after the start
        rows, j = rows[j < len(keys)], j[j < len(keys)]
        key, k = keys[j], which[j]
        first = (key < end[rows]) | ((key == end[rows]) & (k < reason[rows]))
        end[rows[first]] = key[first]
        reason[rows[first]] = k[first]


class SpteLifetimes:
    """Every install's lifetime and what ended it; feeds the journal, snapshots and detectors."""

    def __init__(self, ins: Installs, owner: np.ndarray, pages: PageBook, profile: KernelProfile,
                 rmap_zaps: list[tuple[int, int, int, str]]):
        """Temporaries are let go as soon as they are used: each is a column of every install
        (7 M on a 51 M-event churn recording, 56 MiB for each int64 one)."""
        self.ins, self.owner, self.profile = ins, owner, profile
        n = len(ins.seq)
        self.start = 2 * ins.seq
        self.present = profile.is_present(ins.spte) if n else np.zeros(0, bool)
        # next install at the same sptep
        order = np.lexsort((ins.seq, ins.sptep))
        same = _followed_by_same(ins.sptep[order])
        later = order[np.flatnonzero(same) + 1]
        nxt = np.full(n, FOREVER, dtype=np.int64)
        nxt[order[same]] = self.start[later]
        self.prev = np.full(n, -1, dtype=np.int64)
        self.prev[later] = order[same]
        del order, same, later
        # the owner's zap, unless it came before this install (the SPTE page's memory was reused)
        zap = pages.column("zap_seq")
        page_end = 2 * zap[owner.clip(0)] if len(zap) else np.full(n, FOREVER, dtype=np.int64)
        page_end[(owner == NONE) | (page_end <= self.start)] = FOREVER
        rmap_end = np.full(n, FOREVER, dtype=np.int64)
        self.rmap_reason = np.full(n, -1, dtype=np.int32)
        self.reasons = [r for *_, r in rmap_zaps]
        _first_rmap_zaps(rmap_zaps, ins.gfn, self.start, rmap_end, self.rmap_reason)
        self.end = np.minimum(np.minimum(nxt, page_end), rmap_end)
        del rmap_end
        self.end[~self.present] = self.start[~self.present]
        # what ended it, the first that applies of: nothing, an overwrite, the owner's zap, an rmap zap
        self.how = np.full(n, END_RMAP, dtype=np.int8)
        self.how[self.end == page_end] = END_PAGE_ZAP
        self.how[self.end == nxt] = END_OVERWRITE
        self.how[self.end == FOREVER] = END_OPEN
        del nxt, page_end
        # old value: the previous install at this sptep, if it was still alive at this one
        prev_i = self.prev.clip(0)
        self.has_old = (self.prev >= 0) & (self.end[prev_i] == self.start) & self.present[prev_i]
        pfn_mask = np.uint64(profile.pfn_mask)
        changed = ((ins.spte[prev_i] ^ ins.spte) & pfn_mask) != 0
        changed |= ins.gfn[prev_i] != ins.gfn
        del prev_i
        self.is_install = self.present & (~self.has_old | changed)
        del changed
        smm = profile.role_field("smm")
        roles = pages.column("role")
        if smm is not None and len(roles):
            in_smm = ((roles >> np.uint64(smm.shift)) & np.uint64(0xFF)) != 0  # per page, then per install
            self.as_id = (in_smm[owner.clip(0)] & (owner != NONE)).astype(np.int8)
        else:
            self.as_id = np.zeros(n, dtype=np.int8)

    def alive_at(self, keys: list[int]) -> sweep.LiveSets:
        """Indices (ascending) of the present installs alive at each time key (started before
        it, ended after it), by one sweep over time (:mod:`kvmtrace.replays.sweep`)."""
        present = np.flatnonzero(self.present)
        present = present.astype(np.int32 if len(self.present) < 2**31 else np.int64, copy=False)
        labels = kept({"rows": present}, "the leaves of this replay's snapshots")["rows"]
        return sweep.alive_at(self.start[present], self.end[present] - 1, keys, labels=labels)

    def to_journal(self, j: Journal) -> None:
        """Every install and every removal the lifetimes imply, as SPTE changes, a part of
        :data:`PART` rows at a time: the journal writes its parts to disk as they come, and a
        long trace's changes built whole were ~800 MiB of columns at once (7 M installs)."""
        ins, n = self.ins, len(self.ins.seq)
        for lo in range(0, n, PART):
            at = slice(lo, lo + PART)
            prev, has_old = self.prev[at].clip(0), self.has_old[at]
            j.add_changes(seq=ins.seq[at], key=ins.sptep[at], as_id=self.as_id[at], gfn=ins.gfn[at],
                          level=ins.level[at], old=np.where(has_old, ins.spte[prev], np.uint64(0)), old_valid=has_old,
                          new=ins.spte[at], new_valid=np.ones(len(prev), bool),
                          page=np.where(self.owner[at] == NONE, -1, self.owner[at]),
                          state=coded(np.where(self.present[at], 0, 1), ["present", "nonpresent"]),
                          reason=coded(np.zeros(len(prev)), ["set_spte"]))
        removed = np.flatnonzero(((self.how == END_PAGE_ZAP) | (self.how == END_RMAP)) & self.present)
        words, which = np.unique(np.asarray([*self.reasons, ""], dtype=object).astype(str), return_inverse=True)
        for lo in range(0, len(removed), PART):
            idx = removed[lo:lo + PART]
            rmap = self.how[idx] == END_RMAP
            why = np.where(rmap, 1 + which[self.rmap_reason[idx].clip(0)], 0)
            j.add_changes(seq=self.end[idx] // 2, key=ins.sptep[idx], as_id=self.as_id[idx], gfn=ins.gfn[idx],
                          level=ins.level[idx], old=ins.spte[idx], old_valid=np.ones(len(idx), bool),
                          new=np.zeros(len(idx), np.uint64), new_valid=np.zeros(len(idx), bool),
                          page=np.where(self.owner[idx] == NONE, -1, self.owner[idx]),
                          state=coded(rmap.astype(np.int8), ["zapped", "zapped_inferred"]),
                          reason=coded(why, ["owning page zapped", *words.tolist()]))
        m = self.is_install
        j.add_installs(ins.seq[m], ins.gfn[m], ins.level[m], self.as_id[m], ins.pid[m])

    def obsolete_uses(self, pages: PageBook) -> list[tuple[int, int, int, list[int], str]]:
        """Installs into a page after the zap-all that made it obsolete (and before its zap)."""
        if not len(self.owner) or not len(pages):
            return []
        obs = pages.column("obsolete_seq")
        zap = pages.column("zap_seq")
        o = self.owner.clip(0)
        hit = ((self.owner != NONE) & (obs[o] != NONE) & (obs[o] < self.ins.seq)
               & ((zap[o] == NONE) | (zap[o] > self.ins.seq)))
        out = []
        for i in np.flatnonzero(hit):
            p, seq, gfn = int(self.owner[i]), int(self.ins.seq[i]), int(self.ins.gfn[i])
            out.append((seq, gfn, p, [int(obs[p]), seq], f"SPTE for gfn {gfn:#x} installed into page {p} (gfn "
                        f"{pages.gfn[p]:#x}) made obsolete at seq {int(obs[p])}"))
        return out
