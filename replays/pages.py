"""The book of shadow pages (and TDP page tables): one row per lifetime.

A page's identity in a trace is ``(gfn, role word, mmu_valid_gen)`` (docs/tracepoints.md §1.2); no
pointer is traced. Text prints only some role bits: there ``role`` is the carried bits and
``role_mask`` says which, so two pages that differ only in unprinted bits share an identity.
Both models keep their pages here so the ``shadow_pages`` table, the zap-miss rule and the
what-if all read one structure. Machine-word arrays: the replay loop appends, numpy reads copies.
"""

from __future__ import annotations

from array import array

import numpy as np
import pyarrow as pa

from kvmtrace.parsers import spilled
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


#: Each column's typecode (:mod:`array`): machine words, not Python lists. A list holds a pointer
#: and, for anything but a small int, an int object per value (~40 bytes): the pages of a memslot-dense
#: trace rebuilt by every zap-all were ~460 bytes a page as lists (105 MiB at 20 M events) and are
#: 97 as arrays. ``spte_page`` holds the address's bits as a signed word (see :meth:`PageBook.link`).
_COLUMNS = {"gfn": "Q", "role": "Q", "gen": "Q", "first_seq": "q", "predates": "b", "zap_seq": "q",
            "obsolete_seq": "q", "root_count": "q", "unsync": "q", "sync": "q", "uses": "q", "spte_page": "q",
            "shared_seq": "q"}
_DTYPES: dict[str, type[np.integer]] = {"Q": np.uint64, "q": np.int64, "b": np.int8}


class PageBook:
    """Append-only page lifetimes; the models index them by integer id.

    The columns are :class:`array.array`: the models read and write them per element as they
    would lists. Until :meth:`freeze`, readers take numpy copies (:meth:`column`): a view would
    pin the array's buffer, and an append while it lives fails. Once the walk is over the book
    is frozen: each column becomes one read-only numpy array that every reader shares (each step
    that read the pages had taken a copy of its own, seven columns, 32 MiB a step at 52 M
    events, and the ``shadow_pages`` table was a second copy of all of them), kept on disk when
    the book is long (:func:`~kvmtrace.parsers.spilled.on_disk`): held in the process, the book
    was ~97 bytes a page from the walk to the end of the report (57 MiB at 54 M events), under
    every step's peak whether it read the pages or not."""

    def __init__(self, role_mask: int = 0xFFFFFFFF) -> None:
        #: the role bits the input carries (every page's ``role`` has only these)
        self.role_mask = role_mask
        self.gfn = array("Q")
        self.role = array("Q")
        #: unsigned, as traced (``unsigned long`` before 5.x's u8: a damaged value may use every bit)
        self.gen = array("Q")
        self.first_seq = array("q")
        self.predates = array("b")
        self.zap_seq = array("q")
        self.obsolete_seq = array("q")
        self.root_count = array("q")
        self.unsync = array("q")
        self.sync = array("q")
        self.uses = array("q")
        #: the inferred SPTE page's address as a signed word (page-aligned, so never NONE)
        self.spte_page = array("q")
        self.shared_seq = array("q")
        #: whether :meth:`freeze` was called (the columns are read-only numpy arrays from then on)
        self.frozen = False

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

    @staticmethod
    def link(address: int) -> int:
        """An SPTE page's address (unsigned, page-aligned) as :attr:`spte_page` stores it."""
        return address - (1 << 64) if address >= 1 << 63 else address

    def freeze(self) -> None:
        """No page is added from now on: every column attribute becomes a read-only numpy array,
        shared by all readers, on disk from :func:`pages_on_disk` pages (an ``add`` after this
        fails: a numpy array has no ``append``)."""
        columns = {name: np.frombuffer(getattr(self, name), dtype=_DTYPES[code]) if len(self) else
                   np.zeros(0, _DTYPES[code]) for name, code in _COLUMNS.items()}
        if len(self) >= pages_on_disk():
            columns = spilled.on_disk(columns, "the shadow pages of this replay")
        for name, values in columns.items():
            values.flags.writeable = False
            setattr(self, name, values)  # the array.array goes with its last view (at once, on disk)
        self.frozen = True

    def column(self, name: str) -> np.ndarray:
        """Column ``name`` in numpy, a copy before :meth:`freeze` and the shared read-only array
        after (``predates`` is always a copy): uint64 for ``gfn`` and ``role``, bool for
        ``predates``, int64 for the others (``gen``'s bits as int64, as the shadow_pages table has
        it; ``spte_page`` as stored: ``.view(np.uint64)`` gives the addresses)."""
        values = getattr(self, name)
        out: np.ndarray
        if self.frozen:
            out = values
        else:
            dtype = _DTYPES[_COLUMNS[name]]
            out = np.frombuffer(values, dtype=dtype).copy() if len(values) else np.zeros(0, dtype)
        if name == "gen":
            return out.view(np.int64)
        return out.astype(bool) if name == "predates" else out

    def arrays(self) -> dict[str, np.ndarray]:
        """The columns the detectors and the what-if read (shared once frozen, as :meth:`column`)."""
        return {name: self.column(name)
                for name in ("gfn", "role", "gen", "first_seq", "zap_seq", "obsolete_seq", "shared_seq")}

    def table(self, profile: KernelProfile) -> pa.Table:
        n = len(self.gfn)

        def opt(name: str) -> pa.Array:
            a = self.column(name)
            return pa.array(a, mask=a == NONE)

        sp = self.column("spte_page")
        t = pa.table({
            "page": pa.array(np.arange(n, dtype=np.int64)),
            "gfn": pa.array(self.column("gfn")),
            "role": pa.array(self.column("role")).cast(pa.uint32()),
            "role_mask": pa.array(np.full(n, self.role_mask, np.uint32)),
            "mmu_valid_gen": pa.array(self.column("gen")),
            "first_seq": pa.array(self.column("first_seq")),
            "predates_trace": pa.array(self.column("predates")),
            "zap_seq": opt("zap_seq"),
            "obsolete_seq": opt("obsolete_seq"),
            "root_count": pa.array(self.column("root_count")),
            "unsync_seqs": pa.array(self.column("unsync")),
            "sync_seqs": pa.array(self.column("sync")),
            "uses": pa.array(self.column("uses")),
            "spte_page": pa.array(sp.view(np.uint64), mask=sp == NONE),
            "shared_seq": opt("shared_seq"),
        }, schema=PAGES_SCHEMA)
        return decode_role(t, profile, mask=self.role_mask)


def pages_on_disk() -> int:
    """Pages from which a frozen book keeps its columns on disk: a page is a row of thirteen
    columns, so a sixteenth of :data:`~kvmtrace.parsers.spilled.ARRAYS_ON_DISK` (read when asked,
    so a test may lower it)."""
    return max(1, spilled.ARRAYS_ON_DISK // 16)
