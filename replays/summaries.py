"""Per-memslot and per-zap-all summaries: what each slot cost and what each zap-all destroyed.

"Rebuilt" means the same ``(gfn, role)`` was created again later: the guest needed the page and
paid a fault for it. The rebuild time of a zap-all runs from its event to the last such
re-creation before the next zap-all.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from kvmtrace.replays.detectors.context import Context
from kvmtrace.replays.inputs import SeqIndex
from kvmtrace.replays.memslots import MemslotTimeline
from kvmtrace.replays.pages import NONE
from kvmtrace.replays.stream import row_blocks


def recreations(ctx: Context) -> dict[tuple[int, int], list[int]]:
    """(gfn, role) -> sorted first_seqs of every page lifetime with that identity (any generation)."""
    out: dict[tuple[int, int], list[int]] = {}
    pg = ctx.pages
    for g, r, s in zip(pg.gfn, pg.role, pg.first_seq):
        out.setdefault((g, r), []).append(s)
    for v in out.values():
        v.sort()
    return out


def next_creation(index: dict[tuple[int, int], list[int]], gfn: int, role: int, after: int) -> int | None:
    seqs = index.get((gfn, role), ())
    i = bisect_right(seqs, after)
    return seqs[i] if i < len(seqs) else None


def memslot_summary(ctx: Context) -> pa.Table:
    index = recreations(ctx)
    pg = ctx.pages.arrays()
    f, ins = ctx.faults, ctx.installs
    rows: dict[str, list[object]] = {k: [] for k in ("slot", "as_id", "base_gfn", "npages", "from_seq", "until_seq",
                                                     "faults", "sptes_installed", "pages_zapped", "pages_rebuilt")}
    tl = ctx.timeline
    n = len(tl.lifetimes)
    faults, installs = _per_lifetime(tl, f), _per_lifetime(tl, ins)
    zapped = pg["zap_seq"] != NONE
    page_lt = tl.lifetime_at(pg["gfn"][zapped], pg["zap_seq"][zapped])
    # the zapped pages grouped by lifetime once: a mask over every zapped page per lifetime grew
    # with lifetimes x zaps (a long zap-all trace rebuilds and zaps the VM's pages at every change)
    by_lifetime = np.flatnonzero(zapped)[np.argsort(page_lt, kind="stable")]
    bounds = np.searchsorted(np.sort(page_lt), np.arange(n + 1))
    for k, lt in enumerate(tl.lifetimes):
        ids = by_lifetime[bounds[k]:bounds[k + 1]]
        rebuilt = sum(next_creation(index, int(pg["gfn"][p]), int(pg["role"][p]), int(pg["zap_seq"][p])) is not None
                      for p in ids)
        for key, v in (("slot", lt.slot), ("as_id", lt.as_id), ("base_gfn", lt.base_gfn), ("npages", lt.npages),
                       ("from_seq", lt.from_seq),
                       ("until_seq", None if lt.until_seq == np.iinfo(np.int64).max else lt.until_seq),
                       ("faults", int(faults[k])), ("sptes_installed", int(installs[k])),
                       ("pages_zapped", len(ids)), ("pages_rebuilt", rebuilt)):
            rows[key].append(v)
    return pa.table(rows, schema=pa.schema([
        ("slot", pa.int32()), ("as_id", pa.int16()), ("base_gfn", pa.uint64()), ("npages", pa.uint64()),
        ("from_seq", pa.int64()), ("until_seq", pa.int64()), ("faults", pa.int64()), ("sptes_installed", pa.int64()),
        ("pages_zapped", pa.int64()), ("pages_rebuilt", pa.int64())]))


def _per_lifetime(tl: MemslotTimeline, rows: Mapping[str, np.ndarray]) -> np.ndarray:
    """How many of ``rows`` (gfn, seq) each memslot lifetime certainly covered, counted a block
    of rows at a time (:func:`row_blocks`)."""
    counts = np.zeros(len(tl.lifetimes) + 1, np.int64)  # [0]: no lifetime
    lifetimes = tl.lifetime_spans()
    for at in row_blocks(len(rows["seq"])):
        counts += np.bincount(lifetimes.at(rows["gfn"][at], rows["seq"][at]) + 1, minlength=len(counts))
    return counts[1:]


def zap_all_summary(ctx: Context, locate: SeqIndex) -> pa.Table:
    index = recreations(ctx)
    pg = ctx.pages.arrays()
    zap_alls = ctx.journal.zap_alls
    rows: dict[str, list[object]] = {k: [] for k in ("seq", "ts", "mmu_valid_gen", "obsoleted", "pages_zapped",
                                             "pages_rebuilt", "rebuild_ns")}
    found = []  # per zap-all: its pages, and the seqs of those rebuilt before the next one
    # the pages grouped by the zap-all that made them obsolete once (ascending ids in each group):
    # a mask over every page per zap-all grew with zap-alls x pages
    by_zap = np.argsort(pg["obsolete_seq"], kind="stable")
    zap_of = pg["obsolete_seq"][by_zap]
    for n, (seq, _gen, _obsoleted) in enumerate(zap_alls):
        until = zap_alls[n + 1][0] if n + 1 < len(zap_alls) else np.iinfo(np.int64).max
        ids = by_zap[np.searchsorted(zap_of, seq, side="left"):np.searchsorted(zap_of, seq, side="right")]
        created = [next_creation(index, int(pg["gfn"][p]), int(pg["role"][p]), seq) for p in ids]
        found.append((ids, [s for s in created if s is not None and s < until]))
    locate.ask([*(seq for seq, _, _ in zap_alls), *(max(again) for _, again in found if again)])
    for (seq, gen, obsoleted), (ids, again) in zip(zap_alls, found):
        ts = locate(seq)[0]
        last_ts = locate(max(again))[0] if again else None
        for k, v in (("seq", seq), ("ts", ts), ("mmu_valid_gen", gen), ("obsoleted", obsoleted),
                     ("pages_zapped", int((pg["zap_seq"][ids] != NONE).sum())), ("pages_rebuilt", len(again)),
                     ("rebuild_ns", last_ts - ts if last_ts is not None and ts is not None else None)):
            rows[k].append(v)
    return pa.table(rows, schema=pa.schema([
        ("seq", pa.int64()), ("ts", pa.int64()), ("mmu_valid_gen", pa.int64()), ("obsoleted", pa.int64()),
        ("pages_zapped", pa.int64()), ("pages_rebuilt", pa.int64()), ("rebuild_ns", pa.int64())]))
