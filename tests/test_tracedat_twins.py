"""trace.dat reader vs. the kernel's own text of the same records (a second, independent oracle).

Each upstream recording in tests/data/nested has a ``.txt.gz`` twin: ``cat trace`` of the
same ring buffer. The kernel prints what trace-cmd -R does not: the latency-flags column built
from ``common_flags`` and ``common_preempt_count`` (kernel/trace/trace_output.c
``trace_print_lat_fmt``). Facts used, from that function and include/linux/trace_events.h for
6.1/6.12: IRQS_OFF 0x01 → 'd'; NEED_RESCHED 0x04 → 'n', with PREEMPT_RESCHED 0x20 → 'N';
HARDIRQ 0x08 → 'h', SOFTIRQ 0x10 → 's', both → 'H'; then the preempt depth (low nibble, '.' if 0)
and migrate-disable (high nibble). Timestamps are printed in µs rounded to nearest
(``ns2usecs`` adds 500 before dividing).
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import NESTED

from kvmtrace.parsers.tracedat import read_tracedat

_LINE = re.compile(r"^\s*(?P<comm>.*?)-(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+(?P<flags>\S{5})\s+"
                   r"(?P<sec>\d+)\.(?P<usec>\d{6}):\s+(?P<event>[^:\s]+):")
TWINS = sorted(NESTED.glob("*.dat"))


def kernel_flags(flags: int, preempt: int) -> str:
    """The 5-character latency column as the 6.x kernel prints it (see module docstring)."""
    irqs = "d" if flags & 0x01 else "."
    resched = {0x04 | 0x20: "N", 0x04: "n", 0x20: "p"}.get(flags & 0x24, ".")
    hard, soft = flags & 0x08, flags & 0x10
    irq = "H" if hard and soft else "h" if hard else "s" if soft else "."
    depth = f"{preempt & 0xF:x}" if preempt & 0xF else "."
    migrate = f"{preempt >> 4:x}" if preempt & 0xF0 else "."
    return irqs + resched + irq + depth + migrate


def test_twins_found(nested_dir: Path) -> None:
    assert len(TWINS) >= 6 and all(p.with_suffix(".txt.gz").exists() for p in TWINS)


@pytest.mark.parametrize("path", TWINS, ids=[p.name for p in TWINS])
def test_matches_kernel_text(path: Path) -> None:
    data = read_tracedat(path)
    with gzip.open(path.with_suffix(".txt.gz"), "rt", errors="replace") as text:
        lines = [m for m in (_LINE.match(line) for line in text if not line.startswith("#"))]
    assert all(lines) and len(lines) == data.events.num_rows
    ev = data.events
    n = ev.num_rows
    flags = np.zeros(n, np.int64)
    preempt = np.zeros(n, np.int64)
    for table in data.tables.values():
        if table.num_rows:
            seq = table["seq"].to_numpy()
            flags[seq] = table["common_flags"].to_numpy()
            preempt[seq] = table["common_preempt_count"].to_numpy()
    usec = (ev["ts"].to_numpy() + 500) // 1000
    # The kernel names a trace_marker write after its ip (tracing_mark_write), not "print".
    names = ["tracing_mark_write" if e == "print" else e for e in ev["event"].cast(pa.string()).to_pylist()]
    got = list(zip(usec.tolist(), ev["cpu"].to_pylist(), ev["pid"].to_pylist(), names,
                   (kernel_flags(f, p) for f, p in zip(flags.tolist(), preempt.tolist()))))
    want = [(int(m["sec"]) * 1_000_000 + int(m["usec"]), int(m["cpu"]), int(m["pid"]), m["event"], m["flags"])
            for m in lines]
    assert got == want
