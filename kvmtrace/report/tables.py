"""Replay tables joined with what a notebook user asks next: when, which vCPU, which slot.

The replay keeps its tables minimal (seqs, raw words); a person exploring them in polars or
pandas wants the time, the thread and vCPU, the slot instance a gfn belonged to, and the
SPTE's pfn and permission bits as columns. Everything stays columnar (one pass per slot
lifetime, not per row).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from kvmtrace.parsers.schema import TraceData
from kvmtrace.replays.ledger import profile_of
from kvmtrace.replays.profiles import KernelProfile
from kvmtrace.replays.results import ReplayResult
from kvmtrace.report.decode import vcpu_threads


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
    old and new value, ``pfn`` and the permission/Accessed/Dirty bits (``new_w``, ``new_d``...)."""
    t = replay.spte_changes
    seq = t.column("seq").to_numpy()
    ev_seq = data.events.column("seq").to_numpy()
    pos = np.clip(np.searchsorted(ev_seq, seq), 0, max(len(ev_seq) - 1, 0))
    found = ev_seq[pos] == seq if len(ev_seq) else np.zeros(len(seq), bool)
    ts = data.events.column("ts").to_numpy()[pos] if len(ev_seq) else np.zeros(len(seq), np.int64)
    pid = data.events.column("pid").to_numpy()[pos] if len(ev_seq) else np.zeros(len(seq), np.int32)
    vcpu_of = vcpu_threads(data).vcpu_of
    vcpu = np.array([vcpu_of.get(int(p), -1) for p in np.unique(pid)]) if len(pid) else np.empty(0, int)
    vcpu = vcpu[np.searchsorted(np.unique(pid), pid)] if len(pid) else vcpu
    # an inferred zap sits at the seq of the event that implies it: its time and thread are that event's
    out = t.append_column("ts", pa.array(ts, mask=~found)).append_column("pid", pa.array(pid, mask=~found)) \
        .append_column("vcpu", pa.array(vcpu, pa.int32(), mask=~found | (vcpu < 0)))
    gfn = t.column("gfn").to_numpy()
    out = out.append_column("slot_instance", slot_instances(replay, gfn, seq))
    profile = profile_of(replay)
    for side in ("old", "new"):
        col = t.column(f"{side}_spte")
        values = np.asarray(col.fill_null(0).to_numpy(), dtype=np.uint64)
        for name, arr in _bits(values, col.is_valid().to_numpy(zero_copy_only=False), profile).items():
            out = out.append_column(f"{side}_{name}", arr)
    return out
