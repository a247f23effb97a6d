"""The shadow MMU model (also the legacy MMU in TDP mode, ``tdp_mmu=0``).

What the shadow MMU traces: page lookups/creations (``kvm_mmu_get_page``), page zaps
(``kvm_mmu_prepare_zap_page``), unsync/sync, fast zap-all, and leaf SPTE installs
(``kvm_mmu_set_spte``, keyed by the SPTE's *physical* address). What it does not trace: linking a
child page into its parent, clearing a zapped page's SPTEs, and every rmap-based removal (MMU
notifier unmaps, the per-slot zap of leaf SPTEs, dirty-log write protection). The model therefore

* keeps pages by identity ``(gfn, role without the invalid bit, generation)``;
* infers which page owns an SPTE page (``sptep & ~0xfff``): the first install into an unknown SPTE
  page after a vCPU obtained a page at that level belongs to that page (a fault walks down with
  ``kvm_mmu_get_page`` and installs the leaf right after); direct pages must also agree on the
  index ``(gfn >> 9*(level-1)) & 511``;
* drops a page's SPTEs when the page is zapped, and SPTEs of a gfn range when an rmap zap is
  implied (``kvm_unmap_hva_range``, a per-slot delete), recording the latter as ``zapped_inferred``.
"""

from __future__ import annotations

import numpy as np

from replays.journal import Journal, Snapshot
from replays.memslots import MemslotTimeline
from replays.pages import NONE, PageBook
from replays.profiles import KernelProfile


class ShadowModel:
    """State machine over shadow-MMU events; feed it events in seq order."""

    def __init__(self, profile: KernelProfile, timeline: MemslotTimeline, journal: Journal, pages: PageBook):
        self.p = profile
        self.timeline = timeline
        self.j = journal
        self.pages = pages
        inv = profile.role_field("invalid")
        self.inv_mask = (1 << inv.shift) if inv else 0
        lvl = profile.role_field("level")
        self.level_mask = (1 << lvl.width) - 1
        self.direct_shift = profile.role_field("direct").shift
        smm = profile.role_field("smm")
        self.smm_shift = smm.shift if smm else None
        self.live: dict[tuple[int, int, int], int] = {}  # (gfn, role & ~invalid, gen) -> page
        self.invalid_roots: dict[tuple[int, int, int], int] = {}  # zapped with root_count > 0
        self.zapped: dict[tuple[int, int, int], int] = {}  # identity -> its last zapped page
        self.owner_of: dict[int, int] = {}  # SPTE page (phys) -> page
        self.page_sptes: dict[int, set[int]] = {}  # page -> live sptep
        self.sptes: dict[int, tuple[int, int, int, int, int]] = {}  # sptep -> value, gfn, level, owner, seq
        self.rmap: dict[int, set[int]] = {}  # gfn -> live sptep
        self.recent: dict[tuple[int, int], tuple[int, int]] = {}  # (pid, level) -> (page, seq obtained)
        self.last_set: dict[int, int] = {}  # pid -> seq of its last kvm_mmu_set_spte
        self.vm_gen: int | None = None
        self.gen_seq = NONE  # seq of the zap-all that set vm_gen

    # -- pages ----------------------------------------------------------------------------------
    def _page(self, seq: int, gfn: int, role: int, gen: int, root_count: int, predates: bool) -> int:
        p = self.pages.add(gfn, role & ~self.inv_mask, gen, seq, predates, root_count)
        self.live[(gfn, role & ~self.inv_mask, gen)] = p
        return p

    def get_page(self, seq: int, pid: int, gfn: int, role: int, gen: int, root_count: int, created: int) -> None:
        key = (gfn, role & ~self.inv_mask, gen)
        p = self.live.get(key)
        if created:
            if p is not None:
                # Two valid pages never share an identity: the old one left without a traced zap.
                self.j.unexplained.append((seq, "kvm_mmu_get_page", f"page gfn {gfn:#x} role {role:#x} gen {gen} "
                                           f"created while already alive (page {p}); its zap was not traced"))
                self.pages.zap_seq[p] = seq
                for sptep in self.page_sptes.pop(p, ()):
                    self._drop(seq, sptep, "zapped", "owning page re-created (zap not traced)")
            p = self._page(seq, gfn, role, gen, root_count, False)
            if self.vm_gen is None:
                self.vm_gen = gen
            elif gen != self.vm_gen:
                self.j.unexplained.append((seq, "kvm_mmu_get_page", f"new page of generation {gen} while the model's "
                                           f"is {self.vm_gen}: a generation change without kvm_mmu_zap_all_fast"))
                self.vm_gen, self.gen_seq = gen, seq
        elif p is None:
            p = self._page(seq, gfn, role, gen, root_count, True)
        else:
            self.pages.uses[p] += 1
            self.pages.root_count[p] = max(self.pages.root_count[p], root_count)
        if not created and self.vm_gen is not None and gen != self.vm_gen:
            self.j.obsolete_uses.append((seq, gfn, p, [self.gen_seq, seq] if self.gen_seq != NONE else [seq],
                                         f"kvm_mmu_get_page returned existing page gfn {gfn:#x} role {role:#x} of "
                                         f"obsolete generation {gen} (current {self.vm_gen})"))
        self.recent[(pid, role & self.level_mask)] = (p, seq)

    def zap_page(self, seq: int, gfn: int, role: int, gen: int, root_count: int) -> None:
        key = (gfn, role & ~self.inv_mask, gen)
        p = self.live.pop(key, None)
        if p is None:
            if role & self.inv_mask and self.invalid_roots.pop(key, None) is not None:
                return  # the last reference to an invalidated root went away: its final zap
            self.j.unknown_zaps.append((seq, gfn, role))
            p = self.pages.add(gfn, role & ~self.inv_mask, gen, seq, True, root_count)
            self.pages.zap_seq[p] = seq
            return
        self.pages.zap_seq[p] = seq
        self.zapped[key] = p
        if root_count > 0:
            self.invalid_roots[key] = p
        for sptep in self.page_sptes.pop(p, ()):
            self._drop(seq, sptep, "zapped", "owning page zapped")

    def sync_page(self, seq: int, gfn: int, role: int, gen: int, root_count: int, unsync: bool) -> None:
        """``kvm_mmu_unsync_page`` / ``kvm_mmu_sync_page``. The kernel traces the latter in
        ``kvm_unlink_unsync_page``, which the zap of an unsync page also calls: a "sync" right after
        the page's zap belongs to the zapped page (mmu.c; tracepoints.md says "resynchronised")."""
        key = (gfn, role & ~self.inv_mask, gen)
        p = self.live.get(key)
        if p is None and not unsync:
            p = self.zapped.get(key)
        if p is None:
            p = self._page(seq, gfn, role, gen, root_count, True)
        if unsync:
            self.pages.unsync[p] += 1
        else:
            self.pages.sync[p] += 1

    def zap_all(self, seq: int, gen: int) -> None:
        if self.vm_gen is not None and gen != self.vm_gen:
            self.j.unexplained.append((seq, "kvm_mmu_zap_all_fast", f"obsoletes generation {gen} but the model's "
                                       f"current generation is {self.vm_gen}"))
        n = 0
        obsolete = self.pages.obsolete_seq
        gens = self.pages.gen
        for p in self.live.values():
            if gens[p] == gen and obsolete[p] == NONE:
                obsolete[p] = seq
                n += 1
        self.vm_gen = (0 if gen else 1) if self.p.gen_toggles else gen + 1
        self.gen_seq = seq
        self.j.zap_alls.append((seq, gen, n))

    # -- SPTEs ----------------------------------------------------------------------------------
    def _infer_owner(self, seq: int, pid: int, gfn: int, level: int, sptep: int) -> int:
        page_addr = sptep & ~0xFFF
        pages = self.pages
        owner = self.owner_of.get(page_addr, NONE)
        if owner != NONE and pages.zap_seq[owner] == NONE and pages.role[owner] & self.level_mask == level:
            return owner
        cand = self.recent.get((pid, level))
        if cand is None or cand[1] < self.last_set.get(pid, NONE):
            return NONE
        c = cand[0]
        if pages.zap_seq[c] != NONE or pages.spte_page[c] not in (NONE, page_addr):
            return NONE
        if pages.role[c] >> self.direct_shift & 1:
            span = 9 * (level - 1)
            base = pages.gfn[c]
            if not (base <= gfn < base + (512 << span)) or (gfn >> span) & 511 != (sptep & 0xFFF) >> 3:
                return NONE
        self.owner_of[page_addr] = c
        pages.spte_page[c] = page_addr
        return c

    def set_spte(self, seq: int, pid: int, gfn: int, spte: int, sptep: int, level: int) -> None:
        owner = self._infer_owner(seq, pid, gfn, level, sptep)
        self.last_set[pid] = seq
        as_id = 0
        if owner != NONE:
            role = self.pages.role[owner]
            if self.smm_shift is not None:
                as_id = 1 if role >> self.smm_shift & 0xFF else 0
            obs = self.pages.obsolete_seq[owner]
            if obs != NONE:
                self.j.obsolete_uses.append((seq, gfn, owner, [obs, seq],
                                             f"SPTE for gfn {gfn:#x} installed into page {owner} (gfn "
                                             f"{self.pages.gfn[owner]:#x}) made obsolete at seq {obs}"))
        prev = self.sptes.get(sptep)
        old = None
        if prev is not None:
            old = prev[0]
            self._unlink(sptep, prev)
        present = self.p.present(spte)
        state = "present" if present else "nonpresent"
        self.j.change(seq, sptep, as_id, gfn, level, old, spte, None if owner == NONE else owner, state, "set_spte")
        if not present:
            return
        self.sptes[sptep] = (spte, gfn, level, owner, seq)
        self.rmap.setdefault(gfn, set()).add(sptep)
        if owner != NONE:
            self.page_sptes.setdefault(owner, set()).add(sptep)
        if old is None or (old ^ spte) & self.p.pfn_mask or prev[1] != gfn:
            self.j.install(seq, gfn, level, as_id, pid)

    def _unlink(self, sptep: int, entry: tuple[int, int, int, int, int]) -> None:
        _, gfn, _, owner, _ = entry
        r = self.rmap.get(gfn)
        if r is not None:
            r.discard(sptep)
            if not r:
                del self.rmap[gfn]
        if owner != NONE:
            s = self.page_sptes.get(owner)
            if s is not None:
                s.discard(sptep)

    def _drop(self, seq: int, sptep: int, state: str, reason: str) -> None:
        entry = self.sptes.pop(sptep, None)
        if entry is None:
            return
        value, gfn, level, owner, _ = entry
        if state != "zapped":  # a page zap already removed it from page_sptes
            self._unlink(sptep, entry)
        else:
            r = self.rmap.get(gfn)
            if r is not None:
                r.discard(sptep)
                if not r:
                    del self.rmap[gfn]
        self.j.change(seq, sptep, 0, gfn, level, value, None, None if owner == NONE else owner, state, reason)

    def zap_gfn_range(self, seq: int, lo: int, hi: int, reason: str) -> None:
        """Untraced rmap zap of every leaf SPTE mapping a gfn in [lo, hi)."""
        if hi - lo <= len(self.rmap):
            gfns = [g for g in range(lo, hi) if g in self.rmap]
        else:
            gfns = [g for g in self.rmap if lo <= g < hi]
        for g in gfns:
            for sptep in list(self.rmap.get(g, ())):
                self._drop(seq, sptep, "zapped_inferred", reason)

    def unmap_hva(self, seq: int, start: int, end: int) -> None:
        for lo, hi in self.timeline.hva_to_gfns(start, end, seq):
            self.zap_gfn_range(seq, lo, hi, "MMU-notifier unmap (rmap zap, untraced)")

    # -- checkpoints ----------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        n = len(self.sptes)
        vals = list(self.sptes.values())
        owner = np.fromiter((v[3] for v in vals), dtype=np.int64, count=n)
        return Snapshot(
            pages=np.fromiter(self.live.values(), dtype=np.int64, count=len(self.live)),
            gfn=np.fromiter((v[1] for v in vals), dtype=np.uint64, count=n),
            level=np.fromiter((v[2] for v in vals), dtype=np.int64, count=n),
            as_id=np.zeros(n, dtype=np.int64),
            owner=owner,
            installed=np.fromiter((v[4] for v in vals), dtype=np.int64, count=n),
            obsolete_root=np.zeros(n, dtype=bool),
        )
