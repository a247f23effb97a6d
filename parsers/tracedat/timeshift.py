"""TIME_SHIFT: a guest recording's clock corrected onto the host's, as trace-cmd report does.

``trace-cmd record -A guest`` stores in the guest's file, per guest CPU, samples of (guest time,
offset to the host, scaling ratio, scaling fraction bits) measured during the recording. For a
timestamp trace-cmd picks the samples around it (by binary search), interpolates the offset
between the two when the INTERPOLATE flag is set, scales, and adds (``trace-input.c``
``timestamp_host_sync`` / ``timestamp_correction_calc``). The arithmetic is C's: 64-bit signed
products that wrap and a division that truncates toward zero; numpy's int64 wraps the same way.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

#: TRACECMD_TSYNC_FLAG_INTERPOLATE: interpolate the offset between the two nearest samples.
FLAG_INTERPOLATE = 0x1


@dataclass(frozen=True)
class CpuSamples:
    """One guest CPU's samples, sorted by time, duplicate times dropped (as trace-cmd)."""

    time: np.ndarray  # int64
    offset: np.ndarray  # int64
    scaling: np.ndarray  # uint64
    fraction: np.ndarray  # uint64


@dataclass(frozen=True)
class TimeShift:
    flags: int
    cpus: tuple[CpuSamples, ...]


def parse_time_shift(payload: bytes, big_endian: bool) -> TimeShift | None:
    """The TIME_SHIFT option: u64 peer trace id, u32 flags, u32 CPU count, per CPU {u32 count,
    times[count], offsets[count], scalings[count]}, then (newer writers) per CPU fractions[count].
    None if the payload is too short (trace-cmd ignores it then)."""
    e = ">" if big_endian else "<"
    try:
        _, flags, ncpu = struct.unpack_from(e + "QII", payload)
        pos = 16
        raw = []
        for _ in range(ncpu):
            (count,) = struct.unpack_from(e + "I", payload, pos)
            pos += 4
            arrays = []
            for kind in ("i8", "i8", "u8"):
                arrays.append(np.frombuffer(payload, e + kind, count, pos).astype(kind))
                pos += 8 * count
            raw.append(arrays)
        fractions = []
        for time, _, _ in raw:
            if pos + 8 * len(time) <= len(payload) and pos < len(payload):
                fractions.append(np.frombuffer(payload, e + "u8", len(time), pos).astype("u8"))
                pos += 8 * len(time)
            else:
                fractions.append(np.zeros(len(time), np.uint64))
    except (struct.error, ValueError):
        return None
    cpus = []
    for (time, offset, scaling), fraction in zip(raw, fractions):
        order = np.argsort(time, kind="stable")
        time, offset, scaling, fraction = time[order], offset[order], scaling[order], fraction[order]
        keep = np.ones(len(time), bool)
        keep[1:] = time[1:] != time[:-1]
        cpus.append(CpuSamples(time[keep], offset[keep], scaling[keep], fraction[keep]))
    return TimeShift(flags, tuple(cpus))


def _c_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """C's signed division: truncate toward zero."""
    q = np.abs(a) // np.abs(b)
    out: np.ndarray = np.where((a < 0) != (b < 0), -q, q)
    return out


def host_time(ts: np.ndarray, cpu: np.ndarray, shift: TimeShift) -> np.ndarray:
    """Guest timestamps (uint64) on ``cpu`` → host timestamps (uint64)."""
    out = ts.copy()
    with np.errstate(over="ignore"):
        for c, s in enumerate(shift.cpus):
            rows = np.flatnonzero(cpu == c)
            if not len(rows) or not len(s.time):
                continue
            t = ts[rows]
            if len(s.time) == 1:
                out[rows] = t + s.offset[0].astype(np.uint64)
                continue
            lo = np.clip(np.searchsorted(s.time.astype(np.uint64), t, side="right") - 1, 0, len(s.time) - 2)
            hi = lo + 1
            tscor = s.offset[lo]
            if shift.flags & FLAG_INTERPOLATE:
                delta = s.time[hi] - s.time[lo]
                num = (t.astype(np.int64) - s.time[lo]) * (s.offset[hi] - s.offset[lo])
                tscor = s.offset[lo] + _c_div(num + delta // 2, delta)
            scaled = (t * s.scaling[lo]) >> s.fraction[lo]
            out[rows] = scaled + tscor.astype(np.uint64)
    return out
