"""The ``gaps`` table: where the kernel said a CPU's buffer dropped events.

A page whose commit word carries MISSING_EVENTS follows a loss; the count is stored after the
data when there was room (MISSING_STORED), otherwise it is unknown. trace-cmd prints these as
``CPU:N [EVENTS DROPPED]`` before the page's first event; here each becomes a row pointing at
that event's ``seq``. Replaying an MMU model across such a gap is unsound, so the replay needs it.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from kvmtrace.parsers.schema import GAPS_SCHEMA
from kvmtrace.parsers.tracedat.arrow import empty_table, numeric
from kvmtrace.parsers.tracedat.merge import to_ns
from kvmtrace.parsers.tracedat.options import Options
from kvmtrace.parsers.tracedat.pages import PageData, PageFlags, Records


def gap_table(records: Records, flags: PageFlags, pages: PageData, order: np.ndarray, opts: Options
          ) -> tuple[pa.Table, dict[int, int], dict[int, int]]:
    """One row per page whose header says events were dropped before it, or that damage in
    the file cost events (:attr:`PageData.damaged`)."""
    # A page the file's damage cost events counts as a gap of unknown size, like a kernel report.
    missed = np.flatnonzero(flags.missed | pages.damaged)
    if not missed.size:
        return empty_table(GAPS_SCHEMA), {}, {}
    # The first record (file index) on or after each flagged page, if it is on the same CPU ...
    first = records.first_of_page()[missed]
    n = len(records.pos)
    have = first < n
    have[have] &= records.cpu(pages.cpu)[first[have]] == pages.cpu[missed[have]]
    # ... and its seq: where that file index sits in ``order`` (one pass over a bool mask).
    wanted = np.zeros(len(order), bool)
    wanted[first[have]] = True
    at_seq = np.flatnonzero(wanted[order])
    seq_of_first = dict(zip(order[at_seq].tolist(), at_seq.tolist()))
    seq = np.array([seq_of_first.get(f, 0) for f in first.tolist()], np.int64)
    damaged = pages.damaged[missed]
    lost = np.where(damaged, -1, flags.lost[missed])
    cpu = pages.cpu[missed]
    raw_ts = flags.ts[missed]
    no_ts = damaged & (raw_ts == 0)  # a page read as zeros (its chunk did not decompress) has no time
    table = pa.Table.from_arrays(
        [numeric(cpu), numeric(to_ns(raw_ts, cpu, opts), mask=no_ts), numeric(seq, mask=~have),
         numeric(lost, mask=lost < 0)],
        schema=GAPS_SCHEMA,
    )
    known: dict[int, int] = {}
    unknown: dict[int, int] = {}
    for c, n in zip(cpu.tolist(), lost.tolist()):
        if n >= 0:
            known[c] = known.get(c, 0) + n
        else:
            unknown[c] = unknown.get(c, 0) + 1
    return table, known, unknown
