"""Timestamps in ns and the global record order.

Order is trace-cmd's: it repeatedly takes the CPU whose *next* record has the smallest
timestamp, ties to the lowest CPU. For per-CPU streams that are not monotonic this differs from a
plain sort; it equals a stable sort by (running maximum of the CPU's timestamps, CPU), which is
what :func:`merge_order` computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kvmtrace.parsers.tracedat.catalog import FormatCatalog
from kvmtrace.parsers.tracedat.columns import FieldReader
from kvmtrace.parsers.tracedat.options import Options
from kvmtrace.parsers.tracedat.pages import PageData, Records
from kvmtrace.parsers.tracedat.timeshift import host_time


@dataclass(frozen=True)
class Merged:
    """Data records in global order."""

    pos: np.ndarray  # int32/int64 payload offsets in the page buffer
    length: np.ndarray  # int32 payload lengths
    ts: np.ndarray  # int64 ns
    cpu: np.ndarray  # int16
    event_id: np.ndarray  # uint16 common_type
    pid: np.ndarray  # int32


def _mul_u64_u32_shr(a: np.ndarray, mult: int, shift: int) -> np.ndarray:
    """The kernel's ``mul_u64_u32_shr`` (96-bit product), as trace-cmd applies TSC2NSEC."""
    lo = a & np.uint64(0xFFFFFFFF)
    hi = a >> np.uint64(32)
    m = np.uint64(mult)
    out = (lo * m) >> np.uint64(shift)
    if shift <= 32:
        out += (hi * m) << np.uint64(32 - shift)
    else:
        out += (hi * m) >> np.uint64(shift - 32)
    return out


def to_ns(raw: np.ndarray, cpu: np.ndarray, opts: Options) -> np.ndarray:
    """Raw ring-buffer timestamps (uint64, converted in place) of records on ``cpu`` → what
    ``trace-cmd report -t`` prints (an int64 view).

    In trace-cmd's order (``timestamp_calc``): TIME_SHIFT moves a guest's clock onto the host's,
    TSC2NSEC multiplies/shifts, DATE and OFFSET add.
    """
    ts = raw  # converted in place: the raw values are not needed afterwards
    if opts.time_shift is not None:
        ts = host_time(ts, cpu, opts.time_shift)
    if opts.tsc2nsec is not None:
        ts = _mul_u64_u32_shr(ts, opts.tsc2nsec.mult, opts.tsc2nsec.shift)
    if opts.ts_offset:
        ts += np.uint64(opts.ts_offset & 0xFFFFFFFFFFFFFFFF)
    return ts.view(np.int64)


def merge_order(ts: np.ndarray, cpu: np.ndarray) -> np.ndarray:
    """Permutation of file-order records into global order.

    Precondition: records are grouped by CPU in ascending CPU order, each CPU in file order (as
    :func:`kvmtrace.parsers.tracedat.streams.load_pages` lays them out). Then a *stable* sort by the
    running-maximum key alone breaks ties by CPU and then by file order, as trace-cmd does; and
    since every CPU's keys are already sorted, the sort merges presorted runs (cheap).
    """
    key = ts.copy()
    bounds = np.flatnonzero(np.diff(cpu)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(cpu)]):
        np.maximum.accumulate(ts[lo:hi], out=key[lo:hi])
    return np.argsort(key, kind="stable")


def merge_records(records: Records, pages: PageData, reader: FieldReader, catalog: FormatCatalog,
                  opts: Options) -> tuple[Merged, np.ndarray]:
    """Put the records in global order; also return the order (file index of each seq)."""
    cpu = records.cpu(pages.cpu)
    ts_ns = to_ns(records.ts, cpu, opts)
    order = merge_order(ts_ns, cpu)
    type_off, type_size = catalog.common_field("common_type")
    pid_off, pid_size = catalog.common_field("common_pid")
    pos = records.pos[order]
    return Merged(
        pos=pos, length=records.length[order], ts=ts_ns[order], cpu=cpu[order],
        event_id=reader.uint(pos + type_off, type_size, type_off & 3).astype(np.uint16),
        pid=reader.integers(pos + pid_off, pid_size, True, pid_off & 3).astype(np.int32, copy=False),
    ), order
