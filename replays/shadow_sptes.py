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

from kvmtrace.parsers.spilled import KeptParts, gather, kept, release_all, releasing
from kvmtrace.replays import sweep
from kvmtrace.replays.gfn_index import GfnIndex
from kvmtrace.replays.journal import Journal, coded
from kvmtrace.replays.neighbours import KeyCarry, neighbours
from kvmtrace.replays.pages import NONE, PageBook
from kvmtrace.replays.profiles import KernelProfile

FOREVER = np.iinfo(np.int64).max
#: SPTE changes handed to the journal at once (:meth:`SpteLifetimes.to_journal`).
PART = 1 << 18
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


#: Installs a pass of the settling takes at a time: its temporaries are columns of these, and so
#: are the pages it reads of the installs' columns on disk. At 1 M installs the neighbour and owner
#: passes set the settling's peak (~50 MiB higher at 52 M events); at 256 K their CPU is the same.
BLOCK = 1 << 18


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
    # the pages each block reads of the installs' columns (on disk when long) go back after it:
    # kept to the end, they were the settling's peak (+90 MiB at 54 M events)
    for lo in releasing(range(0, n, BLOCK), every=1):
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
    """Whether ``values`` never decrease, read a :data:`BLOCK` at a time with the pages of arrays
    on disk given back between blocks: a column of every install read whole (on disk when long)
    left its pages and a mask of every row under the settling's first steps (+50 MiB at 54 M events)."""
    for lo in releasing(range(0, max(len(values) - 1, 0), BLOCK), every=1):
        part = values[lo:lo + BLOCK + 1]
        if not bool(np.all(part[1:] >= part[:-1])):
            return False
    return True


def _rows_where(mask: np.ndarray, order: np.ndarray | None) -> np.ndarray:
    """The rows where ``mask`` holds, in ``order`` (None: as they are)."""
    return np.flatnonzero(mask) if order is None else order[mask[order]]


def infer_owners(ins: Installs, looks: Lookups, pages: PageBook, profile: KernelProfile) -> np.ndarray:
    """Owning page id per install (NONE where it cannot be inferred).

    The installs are taken a :data:`BLOCK` at a time in seq order, and within a block by SPTE
    page (``sptep & ~0xfff``), then seq. What each SPTE page's last install left, its owner and
    level, is carried to the next block (:class:`KeyCarry`), where a run it had not ended goes on
    without a new inference. Why not one sort of every install by SPTE page: its order, sorted
    addresses, seqs and levels were ~25 bytes an install held through the loop, the settling's
    peak on a long trace."""
    n = len(ins.seq)
    if n == 0:
        return np.full(0, NONE, dtype=np.int64)
    candidate = _candidates(ins, looks)  # first: its temporaries go before the ones below
    release_all()  # the columns it read (on disk when long), before the next are read or made
    owner = np.full(n, NONE, dtype=candidate.dtype)  # page ids: int32 where they fit, as the candidates'
    fits = _OwnerFit(pages, profile)
    zap = fits.zap
    by_seq = None if _ascending(ins.seq) else np.argsort(ins.seq, kind="stable")
    index = np.int32 if n < 2**31 else np.int64
    held = KeyCarry(owner=owner.dtype, level=np.int8)  # per SPTE page, what its last install left
    for lo in releasing(range(0, n, BLOCK), every=1):
        rows = np.arange(lo, min(n, lo + BLOCK), dtype=index) if by_seq is None else by_seq[lo:lo + BLOCK].astype(index)
        addr = ins.sptep[rows] & ~np.uint64(0xFFF)
        by_addr = np.argsort(addr, kind="stable")  # each SPTE page's installs stay in seq order
        rows, addr = rows[by_addr], addr[by_addr]
        del by_addr
        seq, level = ins.seq[rows], ins.level[rows]
        starts = np.flatnonzero(np.r_[True, addr[1:] != addr[:-1]])
        ends = np.r_[starts[1:], len(rows)]
        # the positions where another level (or the next SPTE page) starts: a run ends at the first after it
        runs = np.flatnonzero(np.r_[True, (level[1:] != level[:-1]) | (addr[1:] != addr[:-1]), True])
        found = held.find(addr[starts])
        seen = found.seen
        carried = np.full(len(starts), NONE, dtype=owner.dtype)
        carried[seen] = np.where(held.get(found, "level") == level[starts[seen]], held.get(found, "owner"), NONE)
        # a carried run goes on to its SPTE page's first install here at another level or at its owner's zap
        until = np.full(len(starts), -1, dtype=np.int64)  # no carried owner: a boundary at once
        going = carried != NONE
        until[going] = zap[carried[going]]
        group = np.repeat(np.arange(len(starts)), ends - starts)
        stops = seq >= until[group]
        stops[1:] |= (level[1:] != level[:-1]) & (addr[1:] == addr[:-1])  # another level, same SPTE page
        first_stop = np.minimum.reduceat(np.where(stops, np.arange(len(rows)), ends[group]), starts)
        cover = np.arange(len(rows)) < first_stop[group]
        owner[rows[cover]] = carried[group[cover]]
        del group, stops, cover
        pos = first_stop  # next unsettled position per group
        heap = [(int(seq[k]), g) for g, k in enumerate(pos.tolist()) if k < ends[g]]
        heapq.heapify(heap)
        while heap:
            t, g = heapq.heappop(heap)
            k = pos[g]
            i = rows[k]
            c = int(candidate[i])
            o = c if c != NONE and fits.takes(c, t, int(level[k]), int(ins.gfn[i]), int(ins.sptep[i])) else NONE
            # the owner holds until it is zapped or another level shows up in this SPTE page
            end = ends[g]
            if o == NONE:
                nxt = k + 1
            else:
                next_run = int(runs[np.searchsorted(runs, k, side="right")])
                nxt = min(next_run, k + 1 + int(np.searchsorted(seq[k + 1:end], zap[o])))
            owner[rows[k:nxt]] = o
            if nxt < end:
                pos[g] = nxt
                heapq.heappush(heap, (int(seq[nxt]), g))
        last = ends - 1
        held.put(addr[starts], found, owner=owner[rows[last]], level=level[last])
    return owner


class _OwnerFit:
    """Whether a candidate page can own an SPTE page at a boundary: alive, not linked to another
    SPTE page, at the install's level, and (direct pages) covering its gfn at its index. Taking
    it links the page to this SPTE page."""

    def __init__(self, pages: PageBook, profile: KernelProfile) -> None:
        self.pages = pages
        zap = pages.column("zap_seq")
        self.zap = np.where(zap == NONE, FOREVER, zap)
        self.level_mask = (1 << profile.required_field("level").width) - 1
        self.direct_shift = profile.required_field("direct").shift

    def takes(self, c: int, t: int, level: int, gfn: int, sptep: int) -> bool:
        pages = self.pages
        addr = pages.link(sptep & ~0xFFF)
        role, linked = pages.role[c], pages.spte_page[c]
        ok = self.zap[c] > t and linked in (NONE, addr) and role & self.level_mask == level
        if ok and role >> self.direct_shift & 1:
            span = 9 * (level - 1)
            ok = pages.gfn[c] <= gfn < pages.gfn[c] + (512 << span) and (gfn >> span) & 511 == (sptep & 0xFFF) >> 3
        if ok:
            pages.spte_page[c] = addr
        return bool(ok)


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
        """Each column of every install (14 M on a 100 M-event churn recording, 108 MiB for each
        int64 one) is made a :data:`BLOCK` of installs at a time, in two passes (an old value
        needs the end of the install before it, which may lie in any earlier block), and kept
        as :class:`KeptParts` keeps them: on disk when long. Held in the process, the finished
        columns (~25 bytes an install) were the floor of every step that followed, up to the
        snapshots. An install's start (``2 * seq``) is not kept, and the previous install's row
        is int32 where rows allow."""
        self.ins, self.owner, self.profile = ins, owner, profile
        n = len(ins.seq)
        present = profile.is_present(ins.spte) if n else np.zeros(0, bool)
        by_seq = None if _ascending(ins.seq) else np.argsort(ins.seq, kind="stable")
        release_all()  # the pages of the two columns just read whole (on disk when long)
        # the installs before and after each at its sptep, found a block at a time in seq order
        near = neighbours(n, lambda rows: ins.sptep[rows], by_seq, BLOCK)
        del by_seq
        release_all()  # the addresses' pages (on disk when long), before the seqs are read
        self.reasons = [r for *_, r in rmap_zaps]
        zap = pages.column("zap_seq")
        ends = KeptParts("the SPTE lifetimes of this replay")
        for lo in releasing(range(0, n, BLOCK), every=1):
            at = slice(lo, lo + BLOCK)
            later = near.next[at]
            nxt = np.full(len(later), FOREVER, dtype=np.int64)  # the overwrite's time, if any
            overwritten = later >= 0
            nxt[overwritten] = 2 * gather([ins.seq], later[overwritten])[0]
            reason = np.full(len(later), -1, dtype=np.int32)
            end, how = self._ends(2 * ins.seq[at], nxt, owner[at], ins.gfn[at], present[at], zap, rmap_zaps, reason)
            ends.append({"end": end, "how": how, "rmap_reason": reason})
        prev = near.prev
        del near
        done = ends.arrays() or {"end": np.empty(0, np.int64), "how": np.empty(0, np.int8),
                                 "rmap_reason": np.empty(0, np.int32)}
        self.end, self.how, self.rmap_reason = done["end"], done["how"], done["rmap_reason"]
        # old value: the previous install at this sptep, if it was still alive at this one
        smm = profile.role_field("smm")
        roles = pages.column("role")
        in_smm = ((roles >> np.uint64(smm.shift)) & np.uint64(0xFF)) != 0 if smm is not None and len(roles) else None
        pfn_mask = np.uint64(profile.pfn_mask)
        olds = KeptParts("the SPTE lifetimes of this replay")
        for lo in releasing(range(0, n, BLOCK), every=1):
            at = slice(lo, lo + BLOCK)
            before = prev[at]
            # each install's previous one at its sptep may lie anywhere before it: read in order
            prev_end, prev_present, prev_spte, prev_gfn = gather([self.end, present, ins.spte, ins.gfn],
                                                                 before.clip(0))
            has_old = (before >= 0) & (prev_end == 2 * ins.seq[at]) & prev_present
            changed = ((prev_spte ^ ins.spte[at]) & pfn_mask) != 0
            changed |= prev_gfn != ins.gfn[at]
            del prev_end, prev_present, prev_spte, prev_gfn  # before the next block's
            owners = owner[at]
            olds.append({"prev": before, "present": present[at], "has_old": has_old,
                         "is_install": present[at] & (~has_old | changed),
                         "as_id": np.zeros(len(before), np.int8) if in_smm is None else
                         (in_smm[owners.clip(0)] & (owners != NONE)).astype(np.int8)})
        del prev, present
        kept_olds = olds.arrays() or {"prev": np.empty(0, np.int32), "present": np.empty(0, bool),
                                      "has_old": np.empty(0, bool), "is_install": np.empty(0, bool),
                                      "as_id": np.empty(0, np.int8)}
        self.prev: np.ndarray = kept_olds["prev"]
        self.present: np.ndarray = kept_olds["present"]
        self.has_old: np.ndarray = kept_olds["has_old"]
        self.is_install: np.ndarray = kept_olds["is_install"]
        self.as_id: np.ndarray = kept_olds["as_id"]

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
            prev, has_old = self.prev[at].clip(0), self.has_old[at]  # prev: anywhere before, read by gather
            j.add_changes(seq=ins.seq[at], key=ins.sptep[at], as_id=self.as_id[at], gfn=ins.gfn[at],
                          level=ins.level[at], old=np.where(has_old, gather([ins.spte], prev)[0], np.uint64(0)),
                          old_valid=has_old,
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
