"""The shadow MMU model's pages (also the legacy MMU in TDP mode, ``tdp_mmu=0``).

What the shadow MMU traces: page lookups/creations (``kvm_mmu_get_page``), page zaps
(``kvm_mmu_prepare_zap_page``), unsync/sync, fast zap-all, and leaf SPTE installs
(``kvm_mmu_set_spte``, keyed by the SPTE's *physical* address). What it does not trace: linking a
child page into its parent, clearing a zapped page's SPTEs, and every rmap-based removal (MMU
notifier unmaps, the per-slot zap of leaf SPTEs, dirty-log write protection).

This state machine walks the page events only: pages by identity ``(gfn, role without the invalid
bit, generation)`` (on text, the role's printed bits), their zaps, unsync/sync and generations. It
records every lookup so that :mod:`kvmtrace.replays.shadow_sptes` can afterwards settle the (far
more numerous) SPTE installs with array operations: nothing about a page depends on its SPTEs.
"""

from __future__ import annotations

from array import array

import numpy as np

from kvmtrace.replays.journal import PREDATES, ROOT_FREED, ROOT_IN_USE, Journal
from kvmtrace.replays.pages import NONE, PageBook
from kvmtrace.replays.profiles import KernelProfile
from kvmtrace.replays.shadow_sptes import Lookups


class ShadowModel:
    """State machine over shadow-MMU events; feed it events in seq order."""

    def __init__(self, profile: KernelProfile, journal: Journal, pages: PageBook, roles_known: bool = True):
        self.p = profile
        #: False: identities lack some role bits (text), so pages that differ only in those share
        #: a key, and a key's collisions prove nothing
        self.roles_known = roles_known
        self.j = journal
        self.pages = pages
        inv = profile.role_field("invalid")
        self.inv_mask = (1 << inv.shift) if inv else 0
        #: whether the input carries the invalid bit (every text form prints " invalid")
        self.inv_carried = bool(self.inv_mask & pages.role_mask)
        lvl = profile.required_field("level")
        self.level_mask = (1 << lvl.width) - 1
        #: (gfn, role & ~invalid, gen) -> its live page; without every role bit several pages may
        #: share a key (e.g. one gfn's pages of two SMM address spaces when smm is not printed), oldest first
        self.live: dict[tuple[int, int, int], list[int]] = {}
        #: roots zapped while in use (root_count > 0), oldest first, awaiting their final zap
        self.invalid_roots: dict[tuple[int, int, int], list[int]] = {}
        self.zapped: dict[tuple[int, int, int], int] = {}  # identity -> its last zapped page
        #: every kvm_mmu_get_page in order: seq, vCPU, level, page (for SPTE owner inference); machine
        #: words, not lists: one a lookup of every page a zap-all rebuilds, as lists ~120 bytes each
        #: (~180 MiB by the end of a 52 M-event memslot-dense trace), 25 as arrays
        self.look_seq = array("q")
        self.look_pid = array("q")
        self.look_level = array("b")
        self.look_page = array("q")
        self.vm_gen: int | None = None
        self.gen_seq = NONE  # seq of the zap-all that set vm_gen

    # -- pages ----------------------------------------------------------------------------------
    def _page(self, seq: int, gfn: int, role: int, gen: int, root_count: int, predates: bool) -> int:
        p = self.pages.add(gfn, role & ~self.inv_mask, gen, seq, predates, root_count)
        key = (gfn, role & ~self.inv_mask, gen)
        if self.roles_known:
            self.live[key] = [p]
        else:
            # A page of this printed identity still lives: its zap went untraced, or the two differ
            # in unprinted bits (e.g. smm). The new page certainly lives; the older ones may not.
            shared = self.pages.shared_seq
            for q in self.live.get(key, ()):
                if shared[q] == NONE:
                    shared[q] = seq
            self.live.setdefault(key, []).append(p)
        return p

    def _alive(self, key: tuple[int, int, int]) -> int | None:
        """The live page of ``key`` (the newest one, when role bits are missing)."""
        ids = self.live.get(key)
        return ids[-1] if ids else None

    def _take(self, key: tuple[int, int, int]) -> int | None:
        """Remove and return the live page of ``key``: the newest one when role bits are missing,
        the only one of them known to be alive (older ones may have gone without a traced zap)."""
        ids = self.live.get(key)
        if not ids:
            return None
        p = ids.pop()
        if not ids:
            del self.live[key]
        return p

    def get_page(self, seq: int, pid: int, gfn: int, role: int, gen: int, root_count: int, created: int) -> None:
        key = (gfn, role & ~self.inv_mask, gen)
        p = self._alive(key)
        if created:
            if p is not None and self.roles_known:
                # Two valid pages never share an identity: the old one left without a traced zap.
                self.j.unexplained.append((seq, "kvm_mmu_get_page", f"page gfn {gfn:#x} role {role:#x} gen {gen} "
                                           f"created while already alive (page {p}); its zap was not traced"))
                self.pages.zap_seq[p] = seq
            p = self._page(seq, gfn, role, gen, root_count, False)
            if self.vm_gen is None:
                self.vm_gen = gen
            elif gen != self.vm_gen:
                self.j.unexplained.append((seq, "kvm_mmu_get_page", f"new page of generation {gen} while the model's "
                                           f"is {self.vm_gen}: a generation change without kvm_mmu_zap_all_fast"))
                self.vm_gen, self.gen_seq = gen, seq
        elif p is None:
            gone = self.zapped.get(key) if self.roles_known else None
            if gone is not None:
                # lookups skip zapped (and invalid) pages: "existing" cannot be the page zapped here
                self.j.unexplained.append((seq, "kvm_mmu_get_page", f"existing page gfn {gfn:#x} role {role:#x} gen "
                                           f"{gen} was zapped at seq {self.pages.zap_seq[gone]}"))
            p = self._page(seq, gfn, role, gen, root_count, gone is None)
        else:
            self.pages.uses[p] += 1
            self.pages.root_count[p] = max(self.pages.root_count[p], root_count)
        if not created and self.vm_gen is not None and gen != self.vm_gen:
            self.j.obsolete_uses.append((seq, gfn, p, [self.gen_seq, seq] if self.gen_seq != NONE else [seq],
                                         f"kvm_mmu_get_page returned existing page gfn {gfn:#x} role {role:#x} of "
                                         f"obsolete generation {gen} (current {self.vm_gen})"))
        self.look_seq.append(seq)
        self.look_pid.append(pid)
        self.look_level.append(role & self.level_mask)
        self.look_page.append(p)

    def zap_page(self, seq: int, gfn: int, role: int, gen: int, root_count: int) -> None:
        """``kvm_mmu_prepare_zap_page``, with the root lifecycle of mmu.c (3.x to 6.x alike).

        ``__kvm_mmu_prepare_zap_page`` emits the event first, then, for a root some vCPU still
        uses (``root_count > 0``), only takes it off the page list; either way it sets
        ``role.invalid``. When the last vCPU drops the root, ``mmu_free_root_page`` sees
        ``!--root_count && role.invalid`` and zaps it again: a second event for the same page,
        now with the invalid bit and root_count 0. Only such a page carries the invalid bit, and
        lookups skip it, so that zap belongs to a root waiting for it — never to a valid page of
        the same identity, which exists again after two fast zaps (``mmu_valid_gen`` is one bit
        on 5.4+ and wraps)."""
        key = (gfn, role & ~self.inv_mask, gen)
        waiting = self.invalid_roots.get(key)
        # Where the input does not carry the invalid bit, a zap with root_count 0 of a root waiting
        # for its final zap, while no valid page has that identity, is it.
        final = role & self.inv_mask or (not self.inv_carried and root_count == 0 and waiting
                                         and self._alive(key) is None)
        if final:
            if waiting:
                if root_count == 0:  # the final free (older kernels may zap an invalid root again before)
                    waiting.pop(0)
                return
            self.j.unknown_zaps.append((seq, gfn, role, ROOT_FREED))
            freed = self.pages.add(gfn, role & ~self.inv_mask, gen, seq, True, root_count)
            self.pages.zap_seq[freed] = seq
            return
        p = self._take(key)
        if p is None:
            self.j.unknown_zaps.append((seq, gfn, role, ROOT_IN_USE if root_count > 0 else PREDATES))
            p = self.pages.add(gfn, role & ~self.inv_mask, gen, seq, True, root_count)
        else:
            self.zapped[key] = p
        self.pages.zap_seq[p] = seq
        if root_count > 0:
            self.invalid_roots.setdefault(key, []).append(p)

    def sync_page(self, seq: int, gfn: int, role: int, gen: int, root_count: int, unsync: bool) -> None:
        """``kvm_mmu_unsync_page`` / ``kvm_mmu_sync_page``. The kernel traces the latter in
        ``kvm_unlink_unsync_page``, which the zap of an unsync page also calls: a "sync" right after
        the page's zap belongs to the zapped page (mmu.c ``__kvm_mmu_prepare_zap_page``;
        docs/tracepoints.md §1.2)."""
        key = (gfn, role & ~self.inv_mask, gen)
        p = self._alive(key)
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
        for ids in self.live.values():
            for p in ids:
                if gens[p] == gen and obsolete[p] == NONE:
                    obsolete[p] = seq
                    n += 1
        self.vm_gen = (0 if gen else 1) if self.p.gen_toggles else gen + 1
        self.gen_seq = seq
        self.j.zap_alls.append((seq, gen, n))

    # -- checkpoints ----------------------------------------------------------------------------
    def live_ids(self) -> np.ndarray:
        """The live page ids, ascending."""
        return np.sort(np.fromiter((p for ids in self.live.values() for p in ids), dtype=np.int64))

    def lookups(self) -> Lookups:
        """Every lookup as columns, handed over: the model lets go of its own (held both ways,
        they were ~57 bytes a lookup through the owners' inference)."""
        def column(values: array[int], dtype: type[np.integer]) -> np.ndarray:  # a copy: a view would pin the buffer
            return np.array(values, dtype=dtype) if len(values) else np.zeros(0, dtype)

        looks = Lookups(column(self.look_seq, np.int64), column(self.look_pid, np.int32),
                        column(self.look_level, np.int8), column(self.look_page, np.int64))
        self.look_seq, self.look_pid, self.look_level, self.look_page = array("q"), array("q"), array("b"), array("q")
        return looks
