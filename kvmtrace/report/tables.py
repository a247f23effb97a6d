"""Replay tables joined with what a notebook user asks next: when, which vCPU, which slot.

The replay keeps its tables minimal (seqs, raw words); a person exploring them in polars or
pandas wants the time, the thread and vCPU, the slot instance a gfn belonged to, the SPTE's pfn
and permission bits, and where each memslot update window ends, as columns. Each function here
returns the replay's table with its columns unchanged and first, and the joined columns after
them. Everything stays columnar (one pass per slot lifetime or change, not per row).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kvmtrace.parsers.schema import TraceData
from kvmtrace.replays.ledger import ZapLedger, profile_of, zap_ledger
from kvmtrace.replays.memslots import AT_START, REMOVING_KINDS
from kvmtrace.replays.profiles import KernelProfile
from kvmtrace.replays.results import ReplayResult


@dataclass(frozen=True)
class _At:
    """Time, thread and vCPU of the events at some seqs; null where no event has that seq (an
    unplaced QEMU log line, a memslot from the layout file)."""

    ts: pa.Array
    pid: pa.Array
    vcpu: pa.Array


def _at(data: TraceData, seq: np.ndarray, vcpu_of: dict[int, int], valid: np.ndarray | None = None) -> _At:
    if not data.events.num_rows:
        return _At(pa.nulls(len(seq), pa.int64()), pa.nulls(len(seq), pa.int32()), pa.nulls(len(seq), pa.int32()))
    found, at = data.events_at(seq, ("ts", "pid"))
    if valid is not None:
        found &= valid
    ts, pid = at["ts"], at["pid"]
    pids, back = np.unique(pid, return_inverse=True)
    vcpu = np.asarray([vcpu_of.get(int(p), -1) for p in pids], dtype=np.int32)[back]
    return _At(pa.array(ts, pa.int64(), mask=~found), pa.array(pid, pa.int32(), mask=~found),
               pa.array(vcpu, pa.int32(), mask=~found | (vcpu < 0)))


def _seqs(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A nullable seq column as int64 values (null -> 0) and its validity."""
    return (np.asarray(column.fill_null(0).to_numpy(), dtype=np.int64),
            np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=bool))


def _bits(values: np.ndarray, valid: np.ndarray, profile: KernelProfile) -> dict[str, pa.Array]:
    """pfn and W/A/D (plus NX or X) of SPTE values; null where the value is null or not present."""
    present = valid & profile.is_present(values)
    out = {"pfn": pa.array(profile.pfn(values), mask=~present)}
    bits = {"w": profile.writable_mask, "a": profile.accessed_mask, "d": profile.dirty_mask}
    bits["x" if profile.flavour == "EPT" else "nx"] = 1 << 2 if profile.flavour == "EPT" else 1 << 63
    for name, mask in bits.items():
        out[name] = pa.array((values & np.uint64(mask)) != 0, mask=~present)
    return out


def slot_instances(replay: ReplayResult, gfn: np.ndarray, seq: np.ndarray) -> pa.Array:
    """``slot@created_seq`` of the slot instance that covered each (gfn, seq), or null. A slot
    counts from its create line until the QEMU line of the change that removed it (inside that
    change's update window it may already be gone, which the ledger and the findings say where it
    matters); null where none did, e.g. a fault between a create's commit in the kernel and the
    VMM's line for it."""
    out = np.full(len(gfn), None, dtype=object)
    lt = replay.summaries.get("memslot")
    if lt is None:
        return pa.array(out, pa.string())
    # a lifetime ends where its removing change's window starts; that change's line is the last seq
    line_of = {(s, w): q for s, w, q in zip(*(replay.memslots.column(c).to_pylist()
                                             for c in ("slot", "window_start", "seq")))}
    for slot, base, n, start, until in zip(*(lt.column(c).to_pylist() for c in
                                             ("slot", "base_gfn", "npages", "from_seq", "until_seq"))):
        hit = (gfn >= np.uint64(base)) & (gfn < np.uint64(base + n)) & (seq >= start)
        if until is not None:
            last = line_of.get((slot, until))
            hit &= seq <= last if last is not None else seq < until
        out[hit] = f"{slot}@{start}"
    return pa.array(out, pa.string())


def spte_changes(data: TraceData, replay: ReplayResult) -> pa.Table:
    """The replay's ``spte_changes`` plus ``ts``, ``pid``, ``vcpu``, ``slot_instance`` and, for the
    old and new value, ``pfn`` and the permission/Accessed/Dirty bits (``new_w``, ``new_d``...).

    An inferred zap sits at the seq of the event that implies it: its time and thread are that
    event's."""
    t = replay.spte_changes
    seq = t.column("seq").to_numpy()
    at = _at(data, seq, replay.vcpus.vcpu_of)
    out = t.append_column("ts", at.ts).append_column("pid", at.pid).append_column("vcpu", at.vcpu)
    out = out.append_column("slot_instance", slot_instances(replay, t.column("gfn").to_numpy(), seq))
    profile = profile_of(replay)
    for side in ("old", "new"):
        col = t.column(f"{side}_spte")
        values = np.asarray(col.fill_null(0).to_numpy(), dtype=np.uint64)
        for name, arr in _bits(values, col.is_valid().to_numpy(zero_copy_only=False), profile).items():
            out = out.append_column(f"{side}_{name}", arr)
    return out


def window_ends(memslots: pa.Table) -> pa.Array:
    """The last seq of each change's update window, as :mod:`kvmtrace.replays.memslots` defines it
    (the timeline keeps it on its change objects, not in its table): the change's own QEMU line,
    except for a delete whose range the same address space's *next* line re-creates (QEMU's
    non-atomic DELETE+CREATE of a resize or a read-only toggle, docs/threads.md §3): the window stays
    open until that create's line (null if that line could not be placed). Null where the change
    has no position (a layout file slot; an unplaced QEMU log line, whose window the replay takes to
    span the whole trace from ``window_start`` 0)."""
    rows = memslots.select(["seq", "as_id", "kind", "base_gfn", "npages", "old_base_gfn", "old_npages",
                            "placement"]).to_pylist()
    ends: list[int | None] = [r["seq"] for r in rows]
    pending: dict[int, int] = {}  # as_id -> row of its last delete, until that space's next line
    for i, r in enumerate(rows):
        if r["placement"] == AT_START:  # a layout file slot: no line, ends no window
            continue
        k = pending.pop(r["as_id"], None)
        # an unplaced delete's window is the whole trace whatever follows it
        if k is not None and rows[k]["seq"] is not None and r["kind"] == "create" and rows[k]["old_npages"]:
            lo, n = rows[k]["old_base_gfn"], rows[k]["old_npages"]
            if lo < r["base_gfn"] + r["npages"] and r["base_gfn"] < lo + n:
                ends[k] = r["seq"]
        if r["kind"] == "delete":
            pending[r["as_id"]] = i
    return pa.array(ends, pa.int64())


def memslot_windows(data: TraceData, replay: ReplayResult) -> pa.Table:
    """The replay's memslot timeline plus ``window_end`` (:func:`window_ends`), the times of the
    window's first and last seq (``window_start_ts``, ``window_end_ts``) and ``removes`` (the change
    takes gfns away: delete, move, re-create)."""
    t = replay.memslots
    end = window_ends(t)
    start_seq, start_ok = _seqs(t.column("window_start"))
    end_seq, end_ok = _seqs(pa.chunked_array([end]))
    removes = np.isin(np.asarray(t.column("kind").to_pylist(), dtype=object), list(REMOVING_KINDS))
    return (t.append_column("window_end", end)
            .append_column("window_start_ts", _at(data, start_seq, replay.vcpus.vcpu_of, start_ok).ts)
            .append_column("window_end_ts", _at(data, end_seq, replay.vcpus.vcpu_of, end_ok).ts)
            .append_column("removes", pa.array(removes, pa.bool_())))


def _instance(slot: pa.ChunkedArray, created: pa.ChunkedArray) -> pa.Array:
    """``slot@created_seq`` (the same key as :func:`slot_instances`); null where the creation is unknown."""
    return pa.array([None if c is None else f"{s}@{c}" for s, c in zip(slot.to_pylist(), created.to_pylist())],
                    pa.string())


def ledger(data: TraceData, replay: ReplayResult) -> ZapLedger:
    """The zap ledger (:func:`kvmtrace.replays.ledger.zap_ledger`); its removals gain
    ``slot_instance``, the key :func:`spte_changes` uses, so the two join."""
    z = zap_ledger(data, replay)
    removals = z.removals.append_column("slot_instance", _instance(z.removals["slot"], z.removals["slot_created_seq"]))
    return ZapLedger(removals, z.pages, z.sptes)


def consequences(data: TraceData, replay: ReplayResult) -> pa.Table:
    """The replay's ``consequences`` (per delete/move: page_survived, fault_after, reinstall rows)
    plus ``ts`` of the event that shows each and, where the row names a thread (faults,
    installs), its ``vcpu``."""
    t = replay.summaries["consequences"]
    at = _at(data, t.column("seq").to_numpy(), replay.vcpus.vcpu_of)
    vcpu = pc.if_else(pc.is_valid(t.column("pid")), at.vcpu, pa.scalar(None, pa.int32()))
    return t.append_column("ts", at.ts).append_column("vcpu", vcpu)
