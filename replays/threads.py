"""Which thread is which vCPU: ``kvm_entry``'s ``vcpu_id`` when traced, else the lab's markers.

A recording with ``-e kvm`` has a ``kvm_entry`` for every VM entry, millions of rows that the
analysis reads for one fact, the (pid, vcpu_id) pairs; the digest collects them a window at a
time (:mod:`kvmtrace.replays.digest`, with :func:`entry_pairs`), so the rows need not be kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from kvmtrace.parsers.schema import TraceData

_LAB_VCPU = re.compile(r"kvmlab_vcpu_thread vcpu=(\d+) tid=(\d+)")


@dataclass(frozen=True)
class VcpuThreads:
    """pid -> vCPU id, and where that came from ("" when the trace does not tell)."""

    vcpu_of: dict[int, int]
    source: str

    def text(self) -> str:
        pairs = ", ".join(f"pid {pid} = vCPU {v}" for pid, v in sorted(self.vcpu_of.items(), key=lambda kv: kv[1]))
        return f"{pairs} (from {self.source})" if pairs else "not in the trace (no kvm_entry, no vCPU thread markers)"


def entry_pairs(entry: pa.Table | None) -> set[tuple[int, int | None]]:
    """The distinct (pid, vcpu_id) of a ``kvm_entry`` table (or of one window of it)."""
    if entry is None or not entry.num_rows or "vcpu_id" not in entry.column_names:
        return set()
    pairs = pl.from_arrow(entry.select(["pid", "vcpu_id"]))
    assert isinstance(pairs, pl.DataFrame)  # a Table converts to a DataFrame
    return set(pairs.unique().rows())


def vcpu_threads(data: TraceData, pairs: set[tuple[int, int | None]]) -> VcpuThreads:
    """pid -> vCPU id, from ``kvm_entry``'s distinct (pid, vcpu_id) ``pairs`` when traced (one
    vCPU per thread), else from the lab's ``kvmlab_vcpu_thread`` markers. A pid seen with two vCPU
    ids (or with none printed) is left out."""
    if pairs:
        pids = [pid for pid, _ in pairs]
        alone = {pid for pid in pids if pids.count(pid) == 1}
        return VcpuThreads({pid: v for pid, v in pairs if pid in alone and v is not None},
                           "kvm_entry vcpu_id")
    prints = data.tables.get("print")
    found: dict[int, int] = {}
    if prints is not None and prints.num_rows and "buf" in prints.column_names:
        for buf in prints.column("buf").to_pylist():
            m = _LAB_VCPU.search(buf or "")
            if m:
                found[int(m.group(2))] = int(m.group(1))
    return VcpuThreads(found, "kvmlab_vcpu_thread markers" if found else "")
