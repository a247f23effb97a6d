"""The TDP MMU model: SPTEs keyed by (as_id, level, gfn) from ``kvm_tdp_mmu_spte_changed``.

The TDP MMU traces nearly every SPTE write with its old and new value, so the model can check each
``old_spte`` against what it holds. Three things are untraced (nested/README.md, tracepoints.md
§1.7): ``fast_page_fault`` fixes (replayed from that event's old/new values), the children of a
huge-page split (the next change of a child carries the huge SPTE's values), and which root an
entry belongs to. After ``kvm_mmu_zap_all_fast`` every root is invalid and is torn down
asynchronously while a new root is built for the same keys; the model moves the old entries
aside and assigns each later change to whichever copy its ``old_spte`` matches.
"""

from __future__ import annotations

import numpy as np

from replays.journal import Journal, Snapshot
from replays.pages import NONE, PageBook
from replays.profiles import KernelProfile

FROZEN_LOW = 0x5A0  # REMOVED_SPTE / FROZEN_SPTE low bits (tracepoints.md §4.3)


class TdpModel:
    """State machine over TDP-MMU events; feed it events in seq order."""

    def __init__(self, profile: KernelProfile, journal: Journal, pages: PageBook):
        self.p = profile
        self.j = journal
        self.pages = pages
        self.nonpresent = profile.nonpresent
        self.frozen = profile.nonpresent | FROZEN_LOW
        self.cur: dict[tuple[int, int, int], tuple[int, int]] = {}  # key -> (value, install seq)
        self.old: dict[tuple[int, int, int], tuple[int, int]] = {}  # entries of invalidated roots
        self.splits: dict[tuple[int, int, int], int] = {}  # huge SPTE key -> seq of its split
        self.live_pages: dict[tuple[int, int], list[int]] = {}  # (gfn, role) -> live page ids
        self.large = profile.large_mask
        self.pfn_mask = profile.pfn_mask
        self.wd = profile.writable_mask | profile.dirty_mask
        self.hw_ad = profile.accessed_mask | profile.dirty_mask  # set by the CPU's page walker, untraced

    # -- page tables ----------------------------------------------------------------------------
    def get_page(self, seq: int, pid: int, gfn: int, role: int, gen: int, root_count: int, created: int) -> None:
        if not created:
            self.j.unexplained.append((seq, "kvm_mmu_get_page", "TDP MMU never reuses a page through get_page"))
        p = self.pages.add(gfn, role, gen, seq, False, root_count)
        self.live_pages.setdefault((gfn, role), []).append(p)

    def zap_page(self, seq: int, gfn: int, role: int, gen: int, root_count: int) -> None:
        ids = self.live_pages.get((gfn, role))
        if not ids:
            self.j.unknown_zaps.append((seq, gfn, role))
            p = self.pages.add(gfn, role, gen, seq, True, root_count)
        else:
            p = ids.pop(0)  # ambiguous between roots: the oldest is the one being torn down
        self.pages.zap_seq[p] = seq

    def zap_all(self, seq: int, gen: int) -> None:
        n = len(self.cur)
        self.old.update(self.cur)
        self.cur = {}
        for ids in self.live_pages.values():
            for p in ids:
                if self.pages.obsolete_seq[p] == NONE:
                    self.pages.obsolete_seq[p] = seq
        self.j.zap_alls.append((seq, gen, n))

    def split(self, seq: int, gfn: int, level: int) -> None:
        self.splits[(0, level, gfn)] = seq

    # -- SPTEs ----------------------------------------------------------------------------------
    def _split_parent(self, as_id: int, level: int, gfn: int, since: int) -> bool:
        for up in (level + 1, level + 2):
            base = gfn & ~((1 << (9 * (up - 1))) - 1)
            s = self.splits.get((as_id, up, base), self.splits.get((0, up, base)))
            if s is not None and s >= since:
                return True
        return False

    def _leaf(self, spte: int, level: int) -> bool:
        return level == 1 or bool(spte & self.large)

    def change(self, seq: int, pid: int, as_id: int, gfn: int, level: int, old: int, new: int) -> None:
        key = (as_id, level, gfn)
        table = self.cur
        e = table.get(key)
        nonpresent_old = old == self.nonpresent or old == self.frozen
        if e is not None and e[0] != old and (e[0] | (old & self.hw_ad)) == old:
            e = (old, e[1])  # the hardware set Accessed/Dirty since the last traced write
        if e is None or e[0] != old:
            o = self.old.get(key)
            if o is not None and o[0] == old and (e is None or new == self.frozen or not nonpresent_old):
                table, e = self.old, o
            elif e is not None and not nonpresent_old and not self._split_parent(as_id, level, gfn, e[1]):
                self.j.unexplained.append((seq, "kvm_tdp_mmu_spte_changed",
                                           f"old_spte {old:#x} for as {as_id} level {level} gfn {gfn:#x} "
                                           f"disagrees with the model's {e[0]:#x} (seq {e[1]})"))
        present = self.p.present
        was = present(old) and self._leaf(old, level)
        now = present(new) and self._leaf(new, level)
        same_pfn = was and now and not (old ^ new) & self.pfn_mask
        if same_pfn and old & self.wd == self.wd and not new & self.p.dirty_mask:
            install_seq = e[1] if e is not None else NONE
            self.j.dirty_clears.append((seq, gfn, level, as_id, install_seq, old, new))
        if new == self.nonpresent or new == self.frozen:
            table.pop(key, None)
            if old == self.nonpresent or old == self.frozen:
                return  # a non-present child of a removed table: nothing changes
            state = "zapped"
            reason = "page table removed" if new == self.frozen else "zapped"
        else:
            install = seq if not same_pfn or e is None else e[1]
            table[key] = (new, install)
            state = "present" if present(new) else ("mmio" if self.p.mmio(new) else "nonpresent")
            reason = "installed" if nonpresent_old else "updated"
            if now and not same_pfn:
                self.j.install(seq, gfn, level, as_id, pid)
        if table is self.old:
            reason += " (invalidated root)"
        self.j.change(seq, 0, as_id, gfn, level, old, new, None, state, reason)

    def fast_fix(self, seq: int, gpa: int, old: int, new: int) -> None:
        """Replay a lockless ``fast_page_fault`` fix: the entry holding ``old`` for that gfn now holds ``new``."""
        if old == new:
            return
        gfn = gpa >> 12
        for level in (1, 2, 3):
            key = (0, level, gfn & ~((1 << (9 * (level - 1))) - 1))
            e = self.cur.get(key)
            if e is not None and e[0] == old:
                self.cur[key] = (new, e[1])
                self.j.change(seq, 0, 0, key[2], level, old, new, None, "present", "fast_page_fault")
                return

    # -- checkpoints ----------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        present = self.p.present
        rows = [(k, v, False) for k, v in self.cur.items()] + [(k, v, True) for k, v in self.old.items()]
        rows = [r for r in rows if present(r[1][0]) and self._leaf(r[1][0], r[0][1])]
        n = len(rows)
        live = [p for ids in self.live_pages.values() for p in ids]
        return Snapshot(
            pages=np.asarray(live, dtype=np.int64),
            gfn=np.fromiter((r[0][2] for r in rows), dtype=np.uint64, count=n),
            level=np.fromiter((r[0][1] for r in rows), dtype=np.int64, count=n),
            as_id=np.fromiter((r[0][0] for r in rows), dtype=np.int64, count=n),
            owner=np.full(n, NONE, dtype=np.int64),
            installed=np.fromiter((r[1][1] for r in rows), dtype=np.int64, count=n),
            obsolete_root=np.fromiter((r[2] for r in rows), dtype=bool, count=n),
        )
