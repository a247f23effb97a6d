"""What a memslot delete or move visibly led to, where the kernel's own zaps are untraced.

On the legacy MMU (shadow paging, or EPT/NPT with ``tdp_mmu=0``, the 2019 reporter's setup) the
per-slot zap removes leaf SPTEs through the rmaps without an event, so nothing says "this leaf
went away". The trace still shows the consequences, and this table lists them per delete/move
(the ``consequences`` table; ``dangling_spte`` can read it):

* ``page_survived``: a live page over the old range after the change (a direct page whose
  entries map part of it, or an indirect page whose gfn lies in it), and whether the era's rule let it stay
  (``allowed``), with the rule's words.
* ``fault_after``: each vCPU's first fault (``kvm_mmu_spte_requested``) on the old range after
  the change, and how KVM resolved it: a new pfn (the range is backed again), no slot
  (``KVM_PFN_NOSLOT``: the access became an MMIO exit to the VMM), or an error pfn.
* ``reinstall``: a leaf installed after the change for a gfn and level that had a present leaf
  before it: a fault happened there, so the old leaf had been removed (by the untraced zap).
* ``leaf_removed`` / ``leaf_not_provable`` / ``dangling_spte`` (legacy MMU in TDP mode, zap-slot):
  per leaf the change had to remove, what the guest's next accesses prove (:mod:`leaf_proof`, the
  ``dangling_spte`` check's own verdicts).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import DTypeLike

from kvmtrace.parsers import spilled
from kvmtrace.parsers.spilled import releasing
from kvmtrace.replays.detectors.context import Context, span
from kvmtrace.replays.detectors.zap_rules import rule_mask, whatif_rule
from kvmtrace.replays.gfn_index import FirstInstall, leaf_keys
from kvmtrace.replays.journal import Parts
from kvmtrace.replays.leaf_proof import DANGLING, PROVED
from kvmtrace.replays.memslots import MemslotChange
from kvmtrace.replays.pages import NONE

CONSEQUENCES_SCHEMA = pa.schema([
    pa.field("change_seq", pa.int64(), nullable=False),  # the delete/move line (timeline seq)
    pa.field("slot", pa.int32(), nullable=False),
    pa.field("change", pa.string(), nullable=False),  # delete | move | recreate
    # page_survived | fault_after | reinstall | leaf_removed | leaf_not_provable | dangling_spte
    pa.field("what", pa.string(), nullable=False),
    pa.field("seq", pa.int64(), nullable=False),  # the event that shows it
    pa.field("gfn", pa.uint64(), nullable=False),
    pa.field("level", pa.int8()),
    pa.field("pid", pa.int32()),  # vCPU thread (faults, installs)
    pa.field("page", pa.int64()),  # shadow page id (page_survived)
    pa.field("allowed", pa.bool_()),  # page_survived: the rule let it stay
    pa.field("detail", pa.string(), nullable=False),  # why / how KVM resolved it, in words
    pa.field("evidence", pa.list_(pa.int64()), nullable=False),
])

#: The table while it is put together: its texts as dictionary codes (a reinstall's words are
#: shared by every row of the same leaf and change kind).
_CODED = pa.schema([f.with_type(pa.dictionary(pa.int32(), pa.string())) if f.type == pa.string() else f
                    for f in CONSEQUENCES_SCHEMA])

#: KVM_PFN_NOSLOT (include/linux/kvm_host.h): the gfn has no memslot; KVM installs an MMIO SPTE
#: (or emulates) and the access exits to the VMM.
PFN_NOSLOT = 1 << 63
#: KVM_PFN_ERR_MASK: error pfns (fault, hwpoison, read-only fault, signal pending)
PFN_ERR_MASK = 0x7FF << 52


def pfn_words(pfn: int) -> str:
    """How KVM resolved a fault, from the pfn ``kvm_mmu_spte_requested`` printed."""
    if pfn == PFN_NOSLOT:
        return "no memslot (KVM_PFN_NOSLOT): the access became an MMIO exit to the VMM"
    if pfn & PFN_ERR_MASK:
        return f"error pfn {pfn:#x} (KVM_PFN_ERR_*): the fault failed"
    return f"backed again: pfn {pfn:#x}"


#: Reinstall rows from which the rows gathered so far are put in order and handed to the table
#: (:class:`Parts`): a churning guest re-installs its leaves after every delete (2.5 M rows at
#: 52 M events), and the rows of every change at once, with their order and cast copies, were
#: the replay's peak (+450 MiB). A piece's cast makes each row's words text (~150 bytes a
#: reinstall): at 256 K rows a piece that was still the replay's peak (~120 MiB above the steps
#: around it on a 20 M-event churn recording); at 64 K it is not.
ROWS_PER_PIECE = 1 << 16


def consequences(ctx: Context) -> pa.Table:
    """One row per consequence of each positioned delete/move."""
    rule = whatif_rule(ctx.profile)
    # a rule the caller chose answers "would it have zapped this?": say whose rule it is
    chosen = "" if not ctx.profile.zap_rule_chosen else (
        f" [{'rule of ' + rule.kernels if rule.shipped else 'a hypothesis that never shipped'}, not this kernel's "
        "rule: 'allowed' says what that rule would have done]")
    pages = ctx.pages.arrays()
    ins = ctx.installs
    reinstalls = FirstInstall(ins)
    back_again = _BackAgain(ctx.timeline.changes)
    changes = ctx.positioned_removals()
    # on disk from as many bytes as an array kept on disk (a row is ~250 bytes with its words)
    parts = Parts("the consequences of this replay", on_disk=max(1, spilled.ARRAYS_ON_DISK // 32),
                  per_write=ROWS_PER_PIECE)
    pending = _Pending()
    for position, (i, c) in enumerate(releasing(changes, every=64)):
        if pending.reinstalls >= ROWS_PER_PIECE:
            parts.append(pending.table(ins))
            pending = _Pending()
        # positioned_removals keeps only changes with a seq and an old range
        assert c.seq is not None and c.old_base_gfn is not None and c.old_npages is not None
        lo, hi = c.old_base_gfn, c.old_base_gfn + c.old_npages
        until = back_again.after(c.seq, lo, hi)
        end = ctx.journal.snapshots.get((i, "end"))
        ids = end.pages() if end is not None else np.zeros(0, np.int64)
        if len(ids):
            g = pages["gfn"][ids]
            role = pages["role"][ids]
            level = ((role >> np.uint64(ctx.profile.required_field("level").shift)) & np.uint64(0xF)).astype(np.int64)
            direct = (role >> np.uint64(ctx.profile.required_field("direct").shift)) & np.uint64(1)
            # a direct page at level L maps 512**L gfns from its gfn (span of a leaf one level up);
            # an indirect page concerns the slot when the guest page table it shadows lies in it
            over = np.where(direct == 1, (g < np.uint64(hi)) & (g + span(level + 1) > np.uint64(lo)),
                            (g >= np.uint64(lo)) & (g < np.uint64(hi))) & (pages["obsolete_seq"][ids] == NONE)
            must = rule_mask(rule, ctx.profile, g, role, lo, c.old_npages)
            for k in np.flatnonzero(over)[:256]:
                p, ok = int(ids[k]), not bool(must[k])
                kind = (f"direct level-{int(level[k])} page (maps guest-physical memory, shadows no guest PTE)"
                        if direct[k] else f"indirect level-{int(level[k])} page (shadows a guest page table)")
                why = (f"{kind}: the {rule.name} rule does not zap it ({rule.words})" if ok
                       else f"{kind}: the {rule.name} rule must zap it ({rule.words})") + chosen
                pending.add(position, c, "page_survived", int(pages["first_seq"][p]), int(g[k]), int(level[k]), None,
                            p, ok, why, [int(pages["first_seq"][p]), c.seq])
        # faults on the old range after the change, first per vCPU, until the range comes back
        req = ctx.faults
        hit = ctx.faults_by_gfn.rows_in(lo, hi, since=c.seq + 1, until=until)
        _pids, first = np.unique(req["pid"][hit], return_index=True)
        for k in hit[np.sort(first)].tolist():
            pending.add(position, c, "fault_after", int(req["seq"][k]), int(req["gfn"][k]), int(req["level"][k]),
                        int(req["pid"][k]), None, None, pfn_words(int(req["pfn"][k])), [c.seq, int(req["seq"][k])])
        # leaves installed again where the model had a present one before the change
        start = ctx.journal.snapshots.get((i, "start")) or end
        if start is None:
            continue
        had = start.leaves()
        in_range = (had.gfn >= np.uint64(lo)) & (had.gfn < np.uint64(hi))
        pending.again.add(position, c, reinstalls.after(c.seq, leaf_keys(had.gfn[in_range], had.level[in_range])))
    by_change = {c.seq: c for _, c in changes}
    position = len(changes)  # the leaf fates after every change's own rows
    for f in ctx.untraced_leaf_fates:
        what = {PROVED: "leaf_removed", DANGLING: "dangling_spte"}.get(f.fate, "leaf_not_provable")
        pending.add(position, by_change[f.change_seq], what, f.seq, f.gfn, f.level, None, None, None,
                    f"{f.leaf}: {f.detail}", list(f.evidence))
    parts.append(pending.table(ins))
    return pa.concat_tables(parts.tables())


class _Pending:
    """The rows of consecutive changes not yet in the table: each change's surviving pages and
    faults (Python rows), then its reinstalls (:class:`_Reinstalls`); the leaf fates last.

    Why in pieces: the rows of all changes at once, put in order and cast, were the replay's
    peak on a churning guest (:data:`ROWS_PER_PIECE`). Each piece holds whole changes, and the
    pieces follow each other in change order, so the table is the same as one built at once."""

    def __init__(self) -> None:
        self.rows: dict[str, list[object]] = {f.name: [] for f in CONSEQUENCES_SCHEMA}
        #: per row of ``rows``, the position of its change: what orders them with ``again``'s
        self.after: list[int] = []
        self.again = _Reinstalls()

    @property
    def reinstalls(self) -> int:
        return self.again.count

    def add(self, position: int, c: MemslotChange, what: str, seq: int, gfn: int, level: int, pid: int | None,
            page: int | None, allowed: bool | None, detail: str, evidence: list[int]) -> None:
        for k, v in (("change_seq", c.seq), ("slot", c.slot), ("change", c.kind), ("what", what), ("seq", seq),
                     ("gfn", gfn), ("level", level), ("pid", pid), ("page", page), ("allowed", allowed),
                     ("detail", detail), ("evidence", evidence)):
            self.rows[k].append(v)
        self.after.append(position)

    def table(self, ins: dict[str, np.ndarray]) -> pa.Table:
        """The rows in order: each change's surviving pages and faults, then its reinstalls.
        Put in order with the words as codes, made text once in that order (not twice)."""
        written = pa.table(self.rows, schema=CONSEQUENCES_SCHEMA)
        written = pa.table([c.dictionary_encode() if c.type == pa.string() else c for c in written.columns],
                           schema=_CODED)
        table = pa.concat_tables([written, self.again.table(ins)]).unify_dictionaries()
        position_of_row = np.concatenate([np.asarray(self.after, np.int64), *self.again.after])
        order = np.lexsort((np.arange(table.num_rows), position_of_row))
        return table.take(pa.array(order)).cast(CONSEQUENCES_SCHEMA)


class _Reinstalls:
    """The ``reinstall`` rows, gathered as install rows per change and made columns once.

    Why: every delete of a churning guest is followed by the re-install of its leaves (387 000
    rows on a 20 M-event churn recording): a Python row each took 4 s and ~150 MiB at once."""

    def __init__(self) -> None:
        #: per row, the position of its change among the positioned removals (orders the table)
        self.after: list[np.ndarray] = []
        self.count = 0
        self._rows: list[np.ndarray] = []
        self._changes: list[MemslotChange] = []

    def add(self, position: int, c: MemslotChange, rows: np.ndarray) -> None:
        """``rows`` (installs, ascending): leaves present before change ``c`` installed again after it."""
        if len(rows):
            self.after.append(np.full(len(rows), position, np.int64))
            self.count += len(rows)
            self._rows.append(rows)
            self._changes.append(c)

    def table(self, ins: dict[str, np.ndarray]) -> pa.Table:
        """The rows, texts coded (:data:`_CODED`)."""
        if not self._changes:
            return _CODED.empty_table()
        rows = np.concatenate(self._rows)
        counts = [len(r) for r in self._rows]

        def each(values: list[Any], dtype: DTypeLike) -> np.ndarray:  # one value per change -> per row
            return np.repeat(np.asarray(values, dtype), counts)

        change_seq, seq, gfn, level = each([c.seq for c in self._changes], np.int64), ins["seq"][rows], \
            ins["gfn"][rows].astype(np.uint64), ins["level"][rows]
        kinds = sorted({c.kind for c in self._changes})
        kind = each([kinds.index(c.kind) for c in self._changes], np.int64)
        # the words once per distinct (level, gfn, kind of change)
        combos, code = _distinct_leaves(level, gfn, kind)
        words = [f"a level-{lv} leaf for gfn {g:#x} was present before the {kinds[k]} and is installed again "
                 "after it: the old leaf was removed (untraced rmap zap)" for lv, g, k in combos]
        def coded(codes: np.ndarray, texts: list[str]) -> pa.DictionaryArray:
            return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(texts, pa.string()))

        return pa.table({
            "change_seq": change_seq,
            "slot": each([c.slot for c in self._changes], np.int32),
            "change": coded(kind, kinds),
            "what": coded(np.zeros(len(rows), np.int32), ["reinstall"]),
            "seq": seq.astype(np.int64), "gfn": gfn, "level": level.astype(np.int8),
            "pid": ins["pid"][rows].astype(np.int32),
            "page": pa.nulls(len(rows), pa.int64()), "allowed": pa.nulls(len(rows), pa.bool_()),
            "detail": coded(code.reshape(-1), words),
            "evidence": pa.ListArray.from_arrays(np.arange(0, 2 * len(rows) + 1, 2, dtype=np.int32),
                                                 np.stack((change_seq, seq), axis=1).reshape(-1)),
        }, schema=_CODED)


def _distinct_leaves(level: np.ndarray, gfn: np.ndarray, kind: np.ndarray) -> tuple[list[list[int]], np.ndarray]:
    """The distinct (level, gfn, kind) triples in that order, and each row's index into them.

    Packed into one integer (level, 52-bit gfn, kind: the same order) where the values fit:
    ``np.unique(axis=1)`` over the stacked columns sorted rows of three words with their copies
    (~150 MiB at once for a 52 M-event trace's 2.5 M reinstalls)."""
    lv = level.astype(np.int64)
    if len(gfn) and (int(gfn.max()) >= 1 << 52 or int(lv.min()) < 0 or int(lv.max()) > 15 or int(kind.max()) > 15):
        rows, code = np.unique(np.stack((lv.astype(np.uint64), gfn, kind.astype(np.uint64))), axis=1,
                               return_inverse=True)
        return rows.T.tolist(), code.reshape(-1)
    key = lv.astype(np.uint64) << np.uint64(56)
    key |= gfn.astype(np.uint64) << np.uint64(4)
    key |= kind.astype(np.uint64)
    keys, code = np.unique(key, return_inverse=True)
    combos = [[k >> 56, (k >> 4) & ((1 << 52) - 1), k & 15] for k in keys.tolist()]
    return combos, code.reshape(-1)


class _BackAgain:
    """Seq until which faults on a removed range still show the change: the next line that maps
    part of the range again (a create, the move back), or the next removal of it. The timeline's
    changes as arrays, in its order, so each question is one vectorised scan (a Python loop over
    the timeline per change was quadratic in the number of changes)."""

    def __init__(self, tl: list[MemslotChange]) -> None:
        positioned = [c.seq is not None and bool(c.npages) for c in tl]
        self.seq = np.asarray([c.seq if p else 0 for c, p in zip(tl, positioned)], dtype=np.int64)
        self.base = np.asarray([c.base_gfn if p else 0 for c, p in zip(tl, positioned)], dtype=np.uint64)
        self.end = self.base + np.asarray([c.npages if p else 0 for c, p in zip(tl, positioned)], dtype=np.uint64)
        self.until = np.asarray([(c.window_start if c.window_start is not None else c.seq) if p else 0
                                 for c, p in zip(tl, positioned)], dtype=np.int64)
        self.positioned = np.asarray(positioned, dtype=bool)

    def after(self, since: int, lo: int, hi: int) -> int:
        hit = self.positioned & (self.seq > since) & (self.base < np.uint64(hi)) & (np.uint64(lo) < self.end)
        return int(self.until[int(np.argmax(hit))]) if hit.any() else int(np.iinfo(np.int64).max)
