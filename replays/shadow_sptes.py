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

from kvmtrace.parsers.spilled import kept, release_all, releasing
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


#: Installs a pass of :func:`_candidates` takes at a time: its temporaries are columns of these.
BLOCK = 1 << 20


def _candidates(ins: Installs, looks: Lookups) -> np.ndarray:
    """Per install, the page its vCPU last looked up at its level before it (``kvm_mmu_get_page``)
    when that lookup came after the vCPU's previous install, else NONE: the owner an SPTE page
    takes at a boundary, if the page is still fit then (:func:`infer_owners` checks that).

    Why here, for every install at once: these depend on the events alone, not on what the
    owner loop decided; as two binary searches per boundary they were half of its time. Why a
    :data:`BLOCK` of installs at a time, in seq order, each vCPU's last install carried from
    block to block: as one search over keys of every install, the keys, their sort and their
    dense numbering were ~60 bytes an install at once (+450 MiB at the settling's peak on a
    52 M-event trace)."""
    n = len(ins.seq)
    # page ids: int32 where they fit (a column of every install, held through the owner loop)
    wide = len(looks.page) and int(looks.page.max()) >= 2**31
    out = np.full(n, NONE, dtype=np.int64 if wide else np.int32)
    if not n or not len(looks.seq):
        return out
    # rows in seq order (the walk's lookups and a table's installs already are)
    by_seq = None if _ascending(ins.seq) else np.argsort(ins.seq, kind="stable")
    look_order = None if _ascending(looks.seq) else np.argsort(looks.seq, kind="stable")
    look_pair = _pairs(looks.pid, looks.level)
    looked = {key: _rows_where(look_pair == key, look_order) for key in np.unique(look_pair).tolist()}
    del look_pair
    look_seqs = {key: looks.seq[rows] for key, rows in looked.items()}
    last: dict[int, int] = {}  # vCPU -> seq of its last install before the block
    for lo in range(0, n, BLOCK):
        # the block's rows: a slice (views, no copy) of installs in seq order, else their positions
        rows: slice | np.ndarray = slice(lo, lo + BLOCK) if by_seq is None else by_seq[lo:lo + BLOCK]
        seq, pid = ins.seq[rows], ins.pid[rows]
        previous = np.full(len(seq), NONE, dtype=np.int64)  # the vCPU's previous install (any level)
        for vcpu in np.unique(pid).tolist():
            at = np.flatnonzero(pid == vcpu)
            previous[at[0]] = last.get(vcpu, NONE)
            previous[at[1:]] = seq[at[:-1]]
            last[vcpu] = int(seq[at[-1]])
        pair = _pairs(pid, ins.level[rows])
        for key in np.unique(pair).tolist():
            look_seq = look_seqs.get(key)
            if look_seq is None:
                continue
            at = np.flatnonzero(pair == key)
            j = np.searchsorted(look_seq, seq[at]) - 1  # the last lookup before, same vCPU and level
            fresh = (j >= 0) & (look_seq[j.clip(0)] > previous[at])
            at = at[fresh] + lo if by_seq is None else by_seq[lo + at[fresh]]
            out[at] = looks.page[looked[key][j[fresh]]]
    return out


def _pairs(pid: np.ndarray, level: np.ndarray) -> np.ndarray:
    """(vCPU, level) as one number, built in place (one column, not four)."""
    out = pid.astype(np.int64)
    out <<= 8
    out |= level.astype(np.uint8)  # the low byte, as & 0xFF of the level
    return out


def _ascending(values: np.ndarray) -> bool:
    return len(values) < 2 or bool(np.all(values[1:] >= values[:-1]))


def _rows_where(mask: np.ndarray, order: np.ndarray | None) -> np.ndarray:
    """The rows where ``mask`` holds, in ``order`` (None: as they are)."""
    return np.flatnonzero(mask) if order is None else order[mask[order]]


def infer_owners(ins: Installs, looks: Lookups, pages: PageBook, profile: KernelProfile) -> np.ndarray:
    """Owning page id per install (NONE where it cannot be inferred)."""
    n = len(ins.seq)
    if n == 0:
        return np.full(0, NONE, dtype=np.int64)
    candidate = _candidates(ins, looks)  # first: its temporaries go before the ones below
    owner = np.full(n, NONE, dtype=candidate.dtype)  # page ids: int32 where they fit, as the candidates'
    release_all()  # the columns it read (on disk when long), before the next are read
    page_addr = (ins.sptep & ~np.uint64(0xFFF)).astype(np.uint64)
    release_all()
    index = np.int32 if n < 2**31 else np.int64
    # by SPTE page, then seq (installs in seq order need only the stable sort by page)
    order = (np.argsort(page_addr, kind="stable") if _ascending(ins.seq) else np.lexsort((ins.seq, page_addr)))
    order = order.astype(index)
    addr_sorted = page_addr[order]
    del page_addr  # each temporary here is a column of every install: 57 MiB at 7 M
    starts = np.flatnonzero(np.r_[True, addr_sorted[1:] != addr_sorted[:-1]])
    ends = np.r_[starts[1:], n]
    zap = pages.column("zap_seq")
    zap = np.where(zap == NONE, FOREVER, zap)
    level_mask = (1 << profile.required_field("level").width) - 1
    direct_shift = profile.required_field("direct").shift
    role, pgfn, linked = pages.role, pages.gfn, pages.spte_page
    seq_o, lvl_o = ins.seq[order], ins.level[order]
    # the sorted positions where another level (or the next SPTE page) starts: an owner's run
    # ends at the first after it (looked up per owner, not kept per install)
    runs = np.flatnonzero(np.r_[True, (lvl_o[1:] != lvl_o[:-1]) | (addr_sorted[1:] != addr_sorted[:-1]), True])
    del addr_sorted, lvl_o
    release_all()  # the installs' columns on disk (when long) were read whole: the loop reads a few rows
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
            addr = pages.link(sptep & ~0xFFF)
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
            next_run = int(runs[np.searchsorted(runs, k, side="right")])
            nxt = min(next_run, k + 1 + int(np.searchsorted(seq_o[k + 1:end], zap[o])))
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
        """Each column of every install (7 M on a 51 M-event churn recording, 56 MiB for each
        int64 one) is made a :data:`BLOCK` of installs at a time where its rows do not depend on
        others (the lifetimes' ends, their causes, the old values): only the next install at the
        same ``sptep`` needs a sort of all of them. An install's start (``2 * seq``) is not kept,
        and the previous install's row is int32 where rows allow."""
        self.ins, self.owner, self.profile = ins, owner, profile
        n = len(ins.seq)
        self.present = profile.is_present(ins.spte) if n else np.zeros(0, bool)
        # next install at the same sptep (installs in seq order need only the stable sort by sptep)
        order = np.argsort(ins.sptep, kind="stable") if _ascending(ins.seq) else np.lexsort((ins.seq, ins.sptep))
        same = _followed_by_same(ins.sptep[order])
        release_all()  # the addresses' pages (on disk when long), before the seqs are read
        later = order[np.flatnonzero(same) + 1]
        nxt = np.full(n, FOREVER, dtype=np.int64)
        nxt[order[same]] = 2 * ins.seq[later]
        self.prev: np.ndarray = np.full(n, -1, dtype=np.int32 if n < 2**31 else np.int64)
        self.prev[later] = order[same]
        del order, same, later
        release_all()  # each pass reads whole columns of the installs (on disk when long): one at a time
        self.end = np.empty(n, dtype=np.int64)
        self.how = np.empty(n, dtype=np.int8)
        self.rmap_reason = np.full(n, -1, dtype=np.int32)
        self.reasons = [r for *_, r in rmap_zaps]
        zap = pages.column("zap_seq")
        for lo in releasing(range(0, n, BLOCK), every=1):
            at = slice(lo, lo + BLOCK)
            self.end[at], self.how[at] = self._ends(2 * ins.seq[at], nxt[at], owner[at], ins.gfn[at],
                                                    self.present[at], zap, rmap_zaps, self.rmap_reason[at])
        del nxt
        # old value: the previous install at this sptep, if it was still alive at this one
        self.has_old = np.empty(n, dtype=bool)
        self.is_install = np.empty(n, dtype=bool)
        pfn_mask = np.uint64(profile.pfn_mask)
        for lo in releasing(range(0, n, BLOCK), every=1):
            at = slice(lo, lo + BLOCK)
            prev = self.prev[at]
            prev_i = prev.clip(0)
            has_old = (prev >= 0) & (self.end[prev_i] == 2 * ins.seq[at]) & self.present[prev_i]
            changed = ((ins.spte[prev_i] ^ ins.spte[at]) & pfn_mask) != 0
            changed |= ins.gfn[prev_i] != ins.gfn[at]
            self.has_old[at] = has_old
            self.is_install[at] = self.present[at] & (~has_old | changed)
        smm = profile.role_field("smm")
        roles = pages.column("role")
        if smm is not None and len(roles):
            in_smm = ((roles >> np.uint64(smm.shift)) & np.uint64(0xFF)) != 0  # per page, then per install
            self.as_id = (in_smm[owner.clip(0)] & (owner != NONE)).astype(np.int8)
        else:
            self.as_id = np.zeros(n, dtype=np.int8)

    @staticmethod
    def _ends(start: np.ndarray, nxt: np.ndarray, owner: np.ndarray, gfn: np.ndarray, present: np.ndarray,
              zap: np.ndarray, rmap_zaps: list[tuple[int, int, int, str]],
              rmap_reason: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Of some installs (``start``: their ``2 * seq``; ``nxt``: the next install's at their
        sptep), the time each ends and what ended it, the first that applies of: nothing, an
        overwrite, the owner's zap, an untraced rmap zap (its zap's index into ``rmap_reason``)."""
        # the owner's zap, unless it came before this install (the SPTE page's memory was reused)
        page_end = 2 * zap[owner.clip(0)] if len(zap) else np.full(len(start), FOREVER, dtype=np.int64)
        page_end[(owner == NONE) | (page_end <= start)] = FOREVER
        rmap_end = np.full(len(start), FOREVER, dtype=np.int64)
        _first_rmap_zaps(rmap_zaps, gfn, start, rmap_end, rmap_reason)
        end = np.minimum(np.minimum(nxt, page_end), rmap_end)
        del rmap_end
        gone = ~present
        end[gone] = start[gone]
        how = np.full(len(start), END_RMAP, dtype=np.int8)
        how[end == page_end] = END_PAGE_ZAP
        how[end == nxt] = END_OVERWRITE
        how[end == FOREVER] = END_OPEN
        return end, how

    def alive_at(self, keys: list[int]) -> sweep.LiveSets:
        """Indices (ascending) of the present installs alive at each time key (started before
        it, ended after it), by one sweep over time (:mod:`kvmtrace.replays.sweep`), their times
        made a block at a time as the sweep reaches them (whole, they were 16 bytes an install)."""
        present = np.flatnonzero(self.present)
        present = present.astype(np.int32 if len(self.present) < 2**31 else np.int64, copy=False)
        labels = kept({"rows": present}, "the leaves of this replay's snapshots")["rows"]
        del present

        def spans(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
            release_all()  # the pages the last block read of the installs' columns on disk
            rows = labels[lo:hi]
            return self.ins.seq[rows] * 2, self.end[rows] - 1

        return sweep.alive_in_order(len(labels), spans, keys, labels=labels)

    def to_journal(self, j: Journal) -> None:
        """Every install and every removal the lifetimes imply, as SPTE changes, a part of
        :data:`PART` rows at a time: the journal writes its parts to disk as they come, and a
        long trace's changes built whole were ~800 MiB of columns at once (7 M installs)."""
        ins, n = self.ins, len(self.ins.seq)
        # the pages a part read of the installs' columns on disk (when long) go back after it
        for lo in releasing(range(0, n, PART), every=1):
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
        for lo in releasing(range(0, len(removed), PART), every=1):
            idx = removed[lo:lo + PART]
            idx = idx[np.argsort(self.end[idx], kind="stable")]  # a part in seq order: the journal merges them
            rmap = self.how[idx] == END_RMAP
            why = np.where(rmap, 1 + which[self.rmap_reason[idx].clip(0)], 0)
            j.add_changes(seq=self.end[idx] // 2, key=ins.sptep[idx], as_id=self.as_id[idx], gfn=ins.gfn[idx],
                          level=ins.level[idx], old=ins.spte[idx], old_valid=np.ones(len(idx), bool),
                          new=np.zeros(len(idx), np.uint64), new_valid=np.zeros(len(idx), bool),
                          page=np.where(self.owner[idx] == NONE, -1, self.owner[idx]),
                          state=coded(rmap.astype(np.int8), ["zapped", "zapped_inferred"]),
                          reason=coded(why, ["owning page zapped", *words.tolist()]))
        for lo in releasing(range(0, n, PART), every=1):
            at = slice(lo, lo + PART)
            m = self.is_install[at]
            j.add_installs(ins.seq[at][m], ins.gfn[at][m], ins.level[at][m], self.as_id[at][m], ins.pid[at][m])

    def obsolete_uses(self, pages: PageBook) -> list[tuple[int, int, int, list[int], str]]:
        """Installs into a page after the zap-all that made it obsolete (and before its zap)."""
        if not len(self.owner) or not len(pages):
            return []
        obs = pages.column("obsolete_seq")
        zap = pages.column("zap_seq")
        hits: list[np.ndarray] = []
        for lo in releasing(range(0, len(self.owner), BLOCK), every=1):  # each a temporary of its block
            owners, seqs = self.owner[lo:lo + BLOCK], self.ins.seq[lo:lo + BLOCK]
            o = owners.clip(0)
            hits.append(lo + np.flatnonzero((owners != NONE) & (obs[o] != NONE) & (obs[o] < seqs)
                                            & ((zap[o] == NONE) | (zap[o] > seqs))))
        out = []
        for i in np.concatenate(hits).tolist():
            p, seq, gfn = int(self.owner[i]), int(self.ins.seq[i]), int(self.ins.gfn[i])
            out.append((seq, gfn, p, [int(obs[p]), seq], f"SPTE for gfn {gfn:#x} installed into page {p} (gfn "
                        f"{pages.gfn[p]:#x}) made obsolete at seq {int(obs[p])}"))
        return out
