"""The book of shadow pages (and TDP page tables): one row per lifetime.

A page's identity in a trace is ``(gfn, role word, mmu_valid_gen)`` (docs/tracepoints.md §1.2); no
pointer is traced. Text prints only some role bits: there ``role`` is the carried bits and
``role_mask`` says which, so two pages that differ only in unprinted bits share an identity.
Both models keep their pages here so the ``shadow_pages`` table, the zap-miss rule and the
what-if all read one structure. Plain lists: the replay loop appends, numpy reads.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from kvmtrace.replays.profiles import KernelProfile, decode_role

NONE = -1  # "no seq": never zapped / never obsolete

PAGES_SCHEMA = pa.schema([
    pa.field("page", pa.int64(), nullable=False),
    pa.field("gfn", pa.uint64(), nullable=False),
    pa.field("role", pa.uint32(), nullable=False),  # the carried bits (role_mask) of the role word
    pa.field("role_mask", pa.uint32(), nullable=False),  # 0xffffffff, or the bits text printed
    pa.field("mmu_valid_gen", pa.int64(), nullable=False),
    pa.field("first_seq", pa.int64(), nullable=False),  # created, or first seen
    pa.field("predates_trace", pa.bool_(), nullable=False),
    pa.field("zap_seq", pa.int64()),  # kvm_mmu_prepare_zap_page (null: alive at the end)
    pa.field("obsolete_seq", pa.int64()),  # kvm_mmu_zap_all_fast that made it obsolete
    pa.field("root_count", pa.int64(), nullable=False),  # highest traced root_count
    pa.field("unsync_seqs", pa.int64(), nullable=False),  # how many kvm_mmu_unsync_page
    pa.field("sync_seqs", pa.int64(), nullable=False),
    pa.field("uses", pa.int64(), nullable=False),  # kvm_mmu_get_page "existing" hits
    pa.field("spte_page", pa.uint64()),  # inferred physical page of its SPTEs (sptep & ~0xfff)
    #: text only: seq at which another page of the same printed identity was created while this one
    #: lived; from then on whether this page still lives is unknown (its zap may have gone
    #: untraced, or the two differ in unprinted role bits)
    pa.field("shared_seq", pa.int64()),
])


class PageBook:
    """Append-only page lifetimes; the models index them by integer id."""

    def __init__(self, role_mask: int = 0xFFFFFFFF) -> None:
        #: the role bits the input carries (every page's ``role`` has only these)
        self.role_mask = role_mask
        self.gfn: list[int] = []
        self.role: list[int] = []
        self.gen: list[int] = []
        self.first_seq: list[int] = []
        self.predates: list[bool] = []
        self.zap_seq: list[int] = []
        self.obsolete_seq: list[int] = []
        self.root_count: list[int] = []
        self.unsync: list[int] = []
        self.sync: list[int] = []
        self.uses: list[int] = []
        self.spte_page: list[int] = []
        self.shared_seq: list[int] = []

    def __len__(self) -> int:
        return len(self.gfn)

    def add(self, gfn: int, role: int, gen: int, seq: int, predates: bool, root_count: int) -> int:
        self.gfn.append(gfn)
        self.role.append(role)
        self.gen.append(gen)
        self.first_seq.append(seq)
        self.predates.append(predates)
        self.zap_seq.append(NONE)
        self.obsolete_seq.append(NONE)
        self.root_count.append(root_count)
        self.unsync.append(0)
        self.sync.append(0)
        self.uses.append(0)
        self.spte_page.append(NONE)
        self.shared_seq.append(NONE)
        return len(self.gfn) - 1

    def arrays(self) -> dict[str, np.ndarray]:
        """Numpy views for the detectors and the what-if."""
        return {
            "gfn": np.asarray(self.gfn, dtype=np.uint64),
            "role": np.asarray(self.role, dtype=np.uint64),
            "gen": np.asarray(self.gen, dtype=np.int64),
            "first_seq": np.asarray(self.first_seq, dtype=np.int64),
            "zap_seq": np.asarray(self.zap_seq, dtype=np.int64),
            "obsolete_seq": np.asarray(self.obsolete_seq, dtype=np.int64),
            "shared_seq": np.asarray(self.shared_seq, dtype=np.int64),
        }

    def table(self, profile: KernelProfile) -> pa.Table:
        n = len(self.gfn)

        def opt(values: list[int]) -> pa.Array:
            a = np.asarray(values, dtype=np.int64)
            return pa.array(a, mask=a == NONE)

        sp = np.asarray(self.spte_page, dtype=np.int64)
        t = pa.table({
            "page": pa.array(np.arange(n, dtype=np.int64)),
            "gfn": pa.array(self.gfn, pa.uint64()),
            "role": pa.array(self.role, pa.uint32()),
            "role_mask": pa.array(np.full(n, self.role_mask, np.uint32)),
            "mmu_valid_gen": pa.array(self.gen, pa.int64()),
            "first_seq": pa.array(self.first_seq, pa.int64()),
            "predates_trace": pa.array(self.predates, pa.bool_()),
            "zap_seq": opt(self.zap_seq),
            "obsolete_seq": opt(self.obsolete_seq),
            "root_count": pa.array(self.root_count, pa.int64()),
            "unsync_seqs": pa.array(self.unsync, pa.int64()),
            "sync_seqs": pa.array(self.sync, pa.int64()),
            "uses": pa.array(self.uses, pa.int64()),
            "spte_page": pa.array(sp.astype(np.uint64), mask=sp == NONE),
            "shared_seq": opt(self.shared_seq),
        }, schema=PAGES_SCHEMA)
        return decode_role(t, profile, mask=self.role_mask)
