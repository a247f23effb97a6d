"""The TDP MMU model: SPTEs keyed by (as_id, level, gfn) from ``kvm_tdp_mmu_spte_changed``.

The TDP MMU traces nearly every SPTE write with its old and new value, so the model can check each
``old_spte`` against what it holds. Untraced (tests/data/nested/README.md,
docs/tracepoints.md §1.7): Accessed and Dirty set by the CPU's page walker, ``fast_page_fault``
fixes (replayed from that event), the children of a huge-page split (the next change of a child
carries the huge SPTE's values), and which root an entry belongs to. Several roots can map the same
key at once (roles, SMM, and after ``kvm_mmu_zap_all_fast`` every old root is invalid and torn down
asynchronously while a new one is built), so the model keeps every copy of a key and assigns each
change to the copy whose value its ``old_spte`` matches; copies of invalidated roots are marked as
such.

Accessed/Dirty bits set by the CPU's page walker appear in a later ``old_spte`` untraced; that is
not a contradiction. A/D bits *missing* from an ``old_spte`` are: KVM clears them for dirty logging
and aging through traced paths on every release. (From 6.4, 1e0f42985ffa and 891f11596068 make
clear_dirty_pt_masked() and aging bypass handle_changed_spte() with tdp_mmu_clear_spte_bits(), but
both call trace_kvm_tdp_mmu_spte_changed() themselves; clear_dirty_gfn_range() still goes through
tdp_mmu_set_spte_atomic().)

A non-present ``old_spte`` for a key the model holds present is ambiguous only while several valid
roots exist (a guest-mode root, say). With a single valid root for the address space, it is a
contradiction: the SPTE left without a traced zap. It goes to ``unexplained`` and the model drops
the stale copy, so one missing zap is one finding, not one per later memslot change.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from kvmtrace.replays.journal import PREDATES, Journal, Leaves, Snapshot
from kvmtrace.replays.pages import NONE, PageBook
from kvmtrace.replays.profiles import KernelProfile

FROZEN_LOW = 0x5A0  # REMOVED_SPTE / FROZEN_SPTE low bits (docs/tracepoints.md §1.7, §4.3)

#: One root's copy of an SPTE, updated in place: [value, install seq, root invalidated (0/1), installer pid]
Copy = list[int]


class TdpModel:
    """State machine over TDP-MMU events; feed it events in seq order."""

    def __init__(self, profile: KernelProfile, journal: Journal, pages: PageBook):
        self.p = profile
        self.j = journal
        self.pages = pages
        self.nonpresent = profile.nonpresent
        self.frozen = profile.nonpresent | FROZEN_LOW
        #: key -> copies (one per root mapping it)
        self.sptes: dict[tuple[int, int, int], list[Copy]] = {}
        self.splits: dict[tuple[int, int, int], int] = {}  # huge SPTE key -> seq of its split
        self.live_pages: dict[tuple[int, int], list[int]] = {}  # (gfn, role) -> live page ids
        self.large = profile.large_mask
        self.pfn_mask = profile.pfn_mask
        self.wd = profile.writable_mask | profile.dirty_mask
        self.hw_ad = profile.accessed_mask | profile.dirty_mask  # set by the CPU's page walker, untraced
        self.root_level = 0  # highest page-table level seen: roots are the pages at that level
        smm = profile.role_field("smm")
        self.smm_shift = smm.shift if smm else None

    # -- page tables ----------------------------------------------------------------------------
    def get_page(self, seq: int, pid: int, gfn: int, role: int, gen: int, root_count: int, created: int) -> None:
        if not created:
            self.j.unexplained.append((seq, "kvm_mmu_get_page", "TDP MMU never reuses a page through get_page"))
        p = self.pages.add(gfn, role, gen, seq, False, root_count)
        self.live_pages.setdefault((gfn, role), []).append(p)
        self.root_level = max(self.root_level, role & 0xF)

    def _valid_roots(self, as_id: int) -> int:
        """Roots of the address space not invalidated by a zap-all (TDP roots get no prepare_zap;
        an invalidated root is torn down without one)."""
        n = 0
        for (_, role), ids in self.live_pages.items():
            if role & 0xF != self.root_level:
                continue
            if self.smm_shift is not None and (role >> self.smm_shift) & 0xFF != as_id:
                continue
            n += sum(1 for p in ids if self.pages.obsolete_seq[p] == NONE)
        return n

    def zap_page(self, seq: int, gfn: int, role: int, gen: int, root_count: int) -> None:
        ids = self.live_pages.get((gfn, role))
        if not ids:
            self.j.unknown_zaps.append((seq, gfn, role, PREDATES))
            p = self.pages.add(gfn, role, gen, seq, True, root_count)
        else:
            p = ids.pop(0)  # ambiguous between roots: the oldest is the one being torn down
        self.pages.zap_seq[p] = seq

    def zap_all(self, seq: int, gen: int) -> None:
        """Every root is invalidated: mark every copy and every live page table (gen is unused)."""
        for copies in self.sptes.values():
            for c in copies:
                c[2] = True
        n = 0
        for ids in self.live_pages.values():
            for p in ids:
                if self.pages.obsolete_seq[p] == NONE:
                    self.pages.obsolete_seq[p] = seq
                    n += 1
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

    def _match(self, copies: list[Copy], old: int, prefer_invalid: bool) -> Copy | None:
        """The copy holding ``old`` (exactly, else with A/D set by hardware since), preferring an
        invalidated root's copy for a table teardown and a live root's copy otherwise."""
        exact = [c for c in copies if c[0] == old] or [c for c in copies if (c[0] | (old & self.hw_ad)) == old]
        if not exact:
            return None
        for c in exact:
            if c[2] == prefer_invalid:
                return c
        return exact[0]

    def change(self, seq: int, pid: int, as_id: int, gfn: int, level: int, old: int, new: int) -> None:
        key = (as_id, level, gfn)
        copies = self.sptes.get(key)
        removed_table = new == self.frozen
        nonpresent_old = old == self.nonpresent or old == self.frozen
        e = self._match(copies, old, removed_table) if copies else None
        if e is None and not nonpresent_old:
            if copies:
                e = copies[-1]
                if not self._split_parent(as_id, level, gfn, e[1]):
                    self.j.unexplained.append((seq, "kvm_tdp_mmu_spte_changed",
                                               f"old_spte {old:#x} for as {as_id} level {level} gfn {gfn:#x} "
                                               f"matches none of the model's {len(copies)} copies (last {e[0]:#x}, "
                                               f"seq {e[1]})"))
            # else: first sight of an entry that predates the trace (or a split child)
        elif e is None and copies:
            self._left_untraced(seq, key, copies, old)
        present = self.p.present
        was = present(old) and self._leaf(old, level)
        now = present(new) and self._leaf(new, level)
        same_pfn = was and now and not (old ^ new) & self.pfn_mask
        if same_pfn and old & self.wd == self.wd and not new & self.p.dirty_mask:
            self.j.dirty_clears.append((seq, gfn, level, as_id, e[1] if e is not None else NONE, old, new, pid,
                                        e[3] if e is not None else NONE))
        invalid = e is not None and e[2]
        if new == self.nonpresent or removed_table:
            if e is not None and copies is not None:  # a matched copy came from ``copies``
                copies.remove(e)
                if not copies:
                    del self.sptes[key]
            if nonpresent_old:
                return  # a non-present child of a removed table: nothing changes
            state, reason = "zapped", "page table removed" if removed_table else "zapped"
        else:
            if e is not None:
                if not same_pfn:
                    e[1], e[3] = seq, pid
                e[0] = new
            else:
                self.sptes.setdefault(key, []).append([new, seq, False, pid])
            state = "present" if present(new) else ("mmio" if self.p.mmio(new) else "nonpresent")
            reason = "installed" if nonpresent_old else "updated"
            if now and not same_pfn:
                self.j.install(seq, gfn, level, as_id, pid)
        if invalid:
            reason += " (invalidated root)"
        self.j.change(seq, 0, as_id, gfn, level, old, new, None, state, reason)

    def _left_untraced(self, seq: int, key: tuple[int, int, int], copies: list[Copy], old: int) -> None:
        """``old`` is non-present but the model holds present copies. Another root explains it only
        if another valid root exists; with one, the present copies on it left without a traced zap."""
        stale = [c for c in copies if not c[2] and self.p.present(c[0])]
        if not stale or not self.root_level or self._valid_roots(key[0]) != 1:  # no roles (text): no judgement
            return
        as_id, level, gfn = key
        for c in stale:
            copies.remove(c)
        if not copies:
            del self.sptes[key]
        for c in stale:
            self.j.change(seq, 0, as_id, gfn, level, c[0], None, None, "zapped_inferred",
                          "removed without a traced zap (contradicted by old_spte)")
        self.j.unexplained.append((seq, "kvm_tdp_mmu_spte_changed",
                                   f"old_spte {old:#x} for as {as_id} level {level} gfn {gfn:#x} is non-present, but "
                                   f"the only valid root held {stale[0][0]:#x} (installed at seq {stale[0][1]}) and "
                                   "no traced change removed it"))

    def fast_fix(self, seq: int, gpa: int, old: int, new: int) -> None:
        """Replay a lockless ``fast_page_fault`` fix: the entry holding ``old`` for that gfn now holds ``new``."""
        if old == new:
            return
        gfn = gpa >> 12
        for level in (1, 2, 3):
            key = (0, level, gfn & ~((1 << (9 * (level - 1))) - 1))
            for c in self.sptes.get(key, ()):
                if c[0] == old and not c[2]:
                    c[0] = new
                    self.j.change(seq, 0, 0, key[2], level, old, new, None, "present", "fast_page_fault")
                    return

    # -- checkpoints ----------------------------------------------------------------------------
    def live_ids(self) -> np.ndarray:
        """The live page ids, ascending."""
        return np.sort(np.fromiter((p for ids in self.live_pages.values() for p in ids), dtype=np.int64))

    def snapshot(self, page_sets: Mapping[int, np.ndarray], page_at: int) -> Snapshot:
        """The live leaves now; the live pages are ``page_sets[page_at]`` (the walk records them)."""
        present = self.p.present
        rows = [(k, c) for k, copies in self.sptes.items() for c in copies
                if present(c[0]) and self._leaf(c[0], k[1])]
        n = len(rows)
        return Snapshot(page_sets, page_at, source=Leaves(
            gfn=np.fromiter((k[2] for k, _ in rows), dtype=np.uint64, count=n),
            level=np.fromiter((k[1] for k, _ in rows), dtype=np.int8, count=n),
            as_id=np.fromiter((k[0] for k, _ in rows), dtype=np.int8, count=n),
            owner=np.full(n, NONE, dtype=np.int32),
            installed=np.fromiter((c[1] for _, c in rows), dtype=np.int64, count=n),
            obsolete_root=np.fromiter((c[2] for _, c in rows), dtype=bool, count=n),
        ))
