"""What-if: for each memslot delete/move, what zap-all and zap-slot would each have destroyed.

From the model's snapshot just before the change's window: zap-all destroys every live page and
every present leaf SPTE; zap-slot destroys the pages the profile's per-slot rule names (for the
TDP MMU: none, its pages are direct) and the leaf SPTEs mapping the old range. "Refaulted" counts
what the guest built again after the change: pages of the same ``(gfn, role)`` created later, and
destroyed SPTE gfns installed again later. This is the trade-off of the 2019 per-memslot zap thread
(docs/threads.md §1) in numbers: zap-all is simple and always safe, zap-slot is cheap if its rule
is right.

The refault counts are exact only where the trace itself destroyed what the policy destroys: for
the trace's own policy, and for zap-slot in a zap-all trace (a subset). For a policy that would
have destroyed objects the kernel kept (zap-all in a zap-slot trace), the guest's later use of
those objects hit live SPTEs and left no event; the counts are then lower bounds, raised where
the trace does show use (a later SPTE install into a page counts that page as rebuilt), and
``refaults_exact`` is false.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kvmtrace.parsers.spilled import releasing
from kvmtrace.replays.detectors.context import Context, span
from kvmtrace.replays.detectors.zap_rules import zap_rule_mask
from kvmtrace.replays.memslots import ANCHOR_ZAPS

WHATIF_SCHEMA = pa.schema([
    ("seq", pa.int64()), ("slot", pa.int32()), ("kind", pa.string()), ("policy", pa.string()),
    ("trace_policy", pa.bool_()), ("pages_destroyed", pa.int64()), ("sptes_destroyed", pa.int64()),
    ("pages_refaulted", pa.int64()), ("sptes_refaulted", pa.int64()), ("refaults_exact", pa.bool_()),
])


#: Installs :func:`_last_install` reads at a time.
BLOCK = 1 << 20


def _last_install(ins: dict[str, np.ndarray]) -> Callable[[np.ndarray, int], np.ndarray]:
    """``refaulted(gfns, seq)``: which of ``gfns`` got a leaf SPTE installed after ``seq``.

    The installs are in seq order, so a gfn's last install is its last occurrence: the first
    of the reversed column. Found a :data:`BLOCK` of installs at a time, a later block's
    overriding an earlier one's: the whole column's sort was ~40 bytes an install at once on a
    long trace, the distinct gfns are as many as the guest maps."""
    uniq, last = np.empty(0, np.uint64), np.empty(0, np.int64)
    for lo in releasing(range(0, len(ins["gfn"]), BLOCK), every=1):
        gfn, seq = ins["gfn"][lo:lo + BLOCK], ins["seq"][lo:lo + BLOCK]
        block_uniq, from_end = np.unique(gfn[::-1], return_index=True)
        # this block's first: where a gfn is in both, its first occurrence is this block's
        uniq, first = np.unique(np.concatenate((block_uniq, uniq)), return_index=True)
        last = np.concatenate((seq[len(gfn) - 1 - from_end], last))[first]

    def refaulted(gfns: np.ndarray, seq: int) -> np.ndarray:
        i = np.searchsorted(uniq, gfns).clip(0, max(len(uniq) - 1, 0))
        return (uniq[i] == gfns) & (last[i] > seq) if len(uniq) else np.zeros(len(gfns), bool)

    return refaulted


def _last_install_into(spte_changes: pa.Table, pages: int, read: Callable[[], None]) -> np.ndarray:
    """Per page id, the seq of the last SPTE install whose owner page the model inferred (-1: none).

    A record batch at a time, ``read()`` after each (the table lies on disk when long): the
    installs' page and seq columns whole, filtered, and the pages of the table they mapped were
    ~160 MiB at 106 M events. "present" is matched by its code in each batch's dictionary:
    casting the column to strings first took ~10 bytes a change."""
    last = np.full(pages, -1, dtype=np.int64)
    for batch in spte_changes.to_batches():
        state = batch.column("state")
        present = pc.equal(state.indices, state.dictionary.index("present").as_py())
        keep = pc.and_(pc.is_valid(batch.column("page")), present)
        page = batch.column("page").filter(keep).to_numpy()
        if len(page):
            if int(page.max()) >= len(last):
                last = np.concatenate((last, np.full(int(page.max()) + 1 - len(last), -1, np.int64)))
            np.maximum.at(last, page, batch.column("seq").filter(keep).to_numpy())
        read()
    return last


def _last_created(pg: dict[str, np.ndarray]) -> np.ndarray:
    """Per page id, the last creation (``first_seq``) of any page with its ``(gfn, role)``: the
    page was built again after seq ``s`` exactly when that is later than ``s``
    (:func:`kvmtrace.replays.summaries.next_creation`'s question, asked of every page at once: one
    call per live page per delete grew with the trace times the live pages)."""
    if not len(pg["gfn"]):
        return np.empty(0, np.int64)
    keys = np.stack([pg["gfn"].astype(np.uint64), pg["role"].astype(np.uint64)], axis=1)
    _, identity = np.unique(keys, axis=0, return_inverse=True)
    identity = identity.reshape(-1)
    last = np.full(int(identity.max()) + 1, np.iinfo(np.int64).min, np.int64)
    np.maximum.at(last, identity, pg["first_seq"].astype(np.int64))
    return last[identity]


def whatif(ctx: Context, spte_changes: pa.Table, read: Callable[[], None] = lambda: None) -> pa.Table:
    """The what-if rows of every positioned removal; ``read()`` gives back the pages of
    ``spte_changes`` read so far (a long replay's lies on disk)."""
    pg = ctx.pages.arrays()
    last_created = _last_created(pg)
    refaulted = _last_install(ctx.installs)
    last_into = _last_install_into(spte_changes, len(pg["gfn"]), read)
    rows: dict[str, list[object]] = {f.name: [] for f in WHATIF_SCHEMA}
    for i, c in releasing(ctx.positioned_removals()):  # each reads a snapshot's leaves (on disk when long)
        # positioned: a seq, and the range the change removed
        assert c.seq is not None and c.old_base_gfn is not None and c.old_npages is not None
        # Before the kernel acted: at its first event if it left one, else at the line (taken before
        # the model applies the untraced per-slot rmap zap).
        when = "start" if c.anchor == ANCHOR_ZAPS else "end"
        snap = ctx.journal.snapshots.get((i, when))
        if snap is None:
            continue
        own = "zap_all" if ctx.zapped_all_in(c) is not None else "zap_slot"
        leaves = snap.leaves()
        live = ~leaves.obsolete_root
        in_range = live & (leaves.gfn < np.uint64(c.old_base_gfn + c.old_npages)) & \
            (leaves.gfn + span(leaves.level) > np.uint64(c.old_base_gfn))
        ids = snap.pages()
        if ctx.mmu == "tdp":
            slot_pages = ids[:0]
        else:
            slot_pages = ids[zap_rule_mask(ctx.profile, pg["gfn"][ids], pg["role"][ids], c.old_base_gfn, c.old_npages)]
        for policy, pages, sptes in (("zap_all", ids, live), ("zap_slot", slot_pages, in_range)):
            exact = policy == own or (policy == "zap_slot" and own == "zap_all")
            rebuilt = last_created[pages] > c.seq
            if not exact:  # a later install into a page the policy would have destroyed uses it again
                rebuilt |= last_into[pages] > c.seq
            refaulted_pages = int(rebuilt.sum())
            for k, v in (("seq", c.seq), ("slot", c.slot), ("kind", c.kind), ("policy", policy),
                         ("trace_policy", policy == own), ("pages_destroyed", len(pages)),
                         ("sptes_destroyed", int(sptes.sum())), ("pages_refaulted", refaulted_pages),
                         ("sptes_refaulted", int(refaulted(leaves.gfn[sptes], c.seq).sum())),
                         ("refaults_exact", exact)):
                rows[k].append(v)
    return pa.table(rows, schema=WHATIF_SCHEMA)
