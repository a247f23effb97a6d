"""What the guest ran into after each memslot delete or move, per vCPU.

The hazard of a non-atomic DELETE+CREATE (docs/threads.md §3) is not a stale SPTE but a vCPU that
touches a range while no slot backs it: KVM resolves the fault with no slot (``KVM_PFN_NOSLOT``,
bit 63 of the pfn in ``kvm_mmu_spte_requested``) and the access becomes an MMIO exit to the VMM,
even though the range is RAM before and after. This table counts, per change and per vCPU thread,
from the moment the change is surely under way (the kernel's first zap for it, else its QEMU line)
until a slot backs the range again (``until_seq``: the re-creating QEMU line, or the first fault on
the range that KVM resolved to a real pfn if earlier, since the kernel commits a create before the
VMM writes its line; null: never again in the trace):

* ``faults``: mapping faults on the removed range (``kvm_mmu_spte_requested``), of which
  ``noslot`` were resolved with ``KVM_PFN_NOSLOT`` and ``error`` with an error pfn
  (``KVM_PFN_ERR_MASK``: the gfn is in a slot but the host could not translate it);
* ``mmio``: MMIO exits on the range (``kvm_mmio``, and ``handle_mmio_page_fault`` where MMIO
  SPTEs are cached);
* ``per_gfn``: the most faults one gfn took (a retry storm shows as a large number);
* ``first_seq``/``last_seq``: the first and last of those events.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from kvmtrace.parsers.schema import TraceData
from kvmtrace.parsers.spilled import KeptParts, releasing
from kvmtrace.replays.gfn_index import GfnIndex
from kvmtrace.replays.ledger import ZapLedger
from kvmtrace.replays.memslots import ANCHOR_ZAPS
from kvmtrace.replays.results import ReplayResult

KVM_PFN_NOSLOT = 1 << 63
KVM_PFN_ERR_MASK = 0x7FF << 52

CONSEQUENCES_SCHEMA = pa.schema([
    ("seq", pa.int64()), ("slot", pa.int32()), ("kind", pa.string()), ("pid", pa.int32()), ("vcpu", pa.int32()),
    ("faults", pa.int64()), ("noslot", pa.int64()), ("error", pa.int64()), ("mmio", pa.int64()),
    ("per_gfn", pa.int64()), ("first_seq", pa.int64()), ("last_seq", pa.int64()),
    ("until_seq", pa.int64()),
])


@dataclass(frozen=True)
class _Ranges:
    """The removed gfn ranges, merged: every query of this table is inside one of them."""

    lo: np.ndarray  # uint64, ascending
    hi: np.ndarray

    @classmethod
    def of(cls, ledger: ZapLedger) -> _Ranges:
        r = ledger.removals.select(["base_gfn", "npages"]).to_pydict()
        spans = sorted((b, b + n) for b, n in zip(r["base_gfn"], r["npages"]) if b is not None and n)
        merged: list[list[int]] = []
        for lo, hi in spans:
            if merged and lo <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        return cls(np.asarray([m[0] for m in merged], np.uint64), np.asarray([m[1] for m in merged], np.uint64))

    def holds(self, gfn: np.ndarray) -> np.ndarray:
        if not len(self.lo):
            return np.zeros(len(gfn), dtype=bool)
        at = np.searchsorted(self.lo, gfn, side="right") - 1
        return (at >= 0) & (gfn < self.hi[np.maximum(at, 0)])


def _columns(data: TraceData, event: str, fields: dict[str, int], key: str,
             ranges: _Ranges) -> dict[str, np.ndarray] | None:
    """seq, pid and the named fields (shifted right by the given bits) of one event's rows whose
    ``key`` lies in a removed range, or None.

    Why only those: every count here is of rows on a removed range, and the whole columns of a
    long trace's faults and MMIO exits (with the index on them) were the report's largest
    memory, growing with the trace. Read a record batch at a time, in seq order, the pages each
    read given back (see TraceData.release_pages), the kept rows kept as they come (on disk
    when many: on a churning guest most faults are on a removed range)."""
    t = data.tables.get(event)
    if t is None or not t.num_rows or any(f not in t.column_names for f in fields):
        return None

    def values(batch: pa.RecordBatch, name: str) -> np.ndarray:
        v = batch.column(name).to_numpy(zero_copy_only=False)
        if name in fields:
            return v.astype(np.uint64) >> np.uint64(fields[name])
        return v.astype(np.int64 if name == "seq" else np.int32, copy=False)  # every batch's alike

    kept = KeptParts(f"the {event} rows on removed ranges")
    for batch in t.select(["seq", "pid", *fields]).to_batches():
        mask = ranges.holds(values(batch, key))
        kept.append({name: values(batch, name)[mask] for name in ("seq", "pid", *fields)})
        data.release_pages()
    return kept.arrays()


def _backed_again(replay: ReplayResult) -> Callable[[int, int, int], int | None]:
    """``backed(lo, hi, after)``: the seq from which a slot instance covers part of [lo, hi)
    again, after ``after`` (the memslot summary read once into arrays, not once per change)."""
    lt = replay.summaries.get("memslot")
    if lt is None:
        return lambda lo, hi, after: None
    cols = lt.select(["base_gfn", "npages", "from_seq"]).to_pydict()
    known = [f is not None and b is not None and n is not None
             for b, n, f in zip(cols["base_gfn"], cols["npages"], cols["from_seq"])]
    base = np.asarray([b if k else 0 for b, k in zip(cols["base_gfn"], known)], dtype=np.uint64)
    end = base + np.asarray([n if k else 0 for n, k in zip(cols["npages"], known)], dtype=np.uint64)
    since = np.asarray([f if k else 0 for f, k in zip(cols["from_seq"], known)], dtype=np.int64)
    ok = np.asarray(known, dtype=bool)

    def backed(lo: int, hi: int, after: int) -> int | None:
        hit = ok & (since > after) & (base < np.uint64(hi)) & (np.uint64(lo) < end)
        return int(since[hit].min()) if hit.any() else None

    return backed


@dataclass(frozen=True)
class _Events:
    """One event's columns (:func:`_columns`) with an index on the gfn column ``key``."""

    cols: dict[str, np.ndarray]
    by_gfn: GfnIndex

    @classmethod
    def of(cls, cols: dict[str, np.ndarray] | None, key: str) -> _Events | None:
        return None if cols is None else cls(cols, GfnIndex(cols[key], cols["seq"]))

    def hits(self, start: int, end: int, lo: int, hi: int) -> np.ndarray:
        """Rows (ascending) in seq ``[start, end)`` whose gfn lies in ``[lo, hi)``: through the
        index, as a mask over every row per delete was quadratic in trace length."""
        return self.by_gfn.rows_in(lo, hi, since=start, until=end)


def consequences(data: TraceData, replay: ReplayResult, ledger: ZapLedger, vcpu_of: dict[int, int]) -> pa.Table:
    """One row per (delete/move, vCPU thread) that faulted or exited on the removed range."""
    ranges = _Ranges.of(ledger)
    fault_events = _Events.of(_columns(data, "kvm_mmu_spte_requested", {"gfn": 0, "pfn": 0}, "gfn", ranges), "gfn")
    mmio = [e for e in (_Events.of(_columns(data, "kvm_mmio", {"gpa": 12}, "gpa", ranges), "gpa"),
                        _Events.of(_columns(data, "handle_mmio_page_fault", {"addr": 12}, "addr", ranges), "addr"))
            if e is not None]
    backed = None if fault_events is None else \
        (fault_events.cols["pfn"] & np.uint64(KVM_PFN_NOSLOT | KVM_PFN_ERR_MASK)) == 0
    backed_again = _backed_again(replay)
    rows: dict[str, list] = {f.name: [] for f in CONSEQUENCES_SCHEMA}
    for r in releasing(ledger.removals.to_pylist()):  # each reads a little of the rows on disk
        lo, hi = r["base_gfn"], r["base_gfn"] + r["npages"]
        start = r["window_start"] if r["anchor"] == ANCHOR_ZAPS else r["seq"]
        until = backed_again(lo, hi, r["seq"])
        if fault_events is not None:
            # the kernel commits a re-create before the VMM writes its line: a fault on the range
            # that KVM resolved to a real pfn shows a slot backs it again
            faults = fault_events.cols
            real = fault_events.by_gfn.first_in(lo, hi, start, keep=backed)
            if real is not None:
                first_real = int(faults["seq"][real])
                until = first_real if until is None else min(until, first_real)
        end = until if until is not None else np.iinfo(np.int64).max

        f_hit = fault_events.hits(start, end, lo, hi) if fault_events is not None else None
        m_hits = [(e.cols, e.hits(start, end, lo, hi)) for e in mmio]
        pids = set(faults["pid"][f_hit].tolist()) if fault_events is not None and f_hit is not None else set()
        for c, m in m_hits:
            pids |= set(c["pid"][m].tolist())
        for pid in sorted(pids, key=lambda p: (vcpu_of.get(p, 1 << 30), p)):
            seqs: list[np.ndarray] = []
            n_faults = noslot = error = most = 0
            if fault_events is not None and f_hit is not None:
                mine = f_hit[faults["pid"][f_hit] == pid]
                pfn = faults["pfn"][mine]
                n_faults = len(mine)
                noslot = int((pfn == np.uint64(KVM_PFN_NOSLOT)).sum())
                error = int(((pfn & np.uint64(KVM_PFN_ERR_MASK)) != 0).sum())
                most = int(np.unique(faults["gfn"][mine], return_counts=True)[1].max()) if n_faults else 0
                seqs.append(faults["seq"][mine])
            n_mmio = 0
            for c, m in m_hits:
                mine = m[c["pid"][m] == pid]
                n_mmio += len(mine)
                seqs.append(c["seq"][mine])
            every = np.concatenate(seqs) if seqs else np.empty(0, np.int64)
            for k, v in (("seq", r["seq"]), ("slot", r["slot"]), ("kind", r["kind"]), ("pid", pid),
                         ("vcpu", vcpu_of.get(pid)), ("faults", n_faults), ("noslot", noslot), ("error", error),
                         ("mmio", n_mmio), ("per_gfn", most), ("first_seq", int(every.min())),
                         ("last_seq", int(every.max())), ("until_seq", until)):
                rows[k].append(v)
    return pa.table(rows, schema=CONSEQUENCES_SCHEMA)
