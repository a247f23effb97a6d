"""Selecting events: the one place that cuts a :class:`~kvmtrace.parsers.schema.TraceData` down.

Every per-event table, the ``events`` table, the lost-event ``gaps`` and the ``TraceInfo``
counts must agree after a cut, or a later reader sees counts that do not add up. So there is
one function that does it (:func:`keep_rows`) and one description of a selection by time, CPU
and ``seq`` (:class:`Selection`); the analysis, the mutation tests and the benchmarks all use
them. ``seq`` numbers are kept as they were, so evidence still points into the original file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:  # TraceData.select calls into this module
    from kvmtrace.parsers.schema import TraceData

#: A row filter: given a table with the common columns (``seq``, ``ts``, ``cpu``), the rows to keep.
RowMask = Callable[[pa.Table], pa.ChunkedArray | pa.Array]


@dataclass(frozen=True)
class Selection:
    """Events with ``since <= ts <= until`` (ns, trace clock), on one of ``cpus``, with
    ``first_seq <= seq <= last_seq``; ``None`` leaves that side open."""

    since: int | None = None
    until: int | None = None
    cpus: frozenset[int] | None = None
    first_seq: int | None = None
    last_seq: int | None = None

    @property
    def everything(self) -> bool:
        return all(v is None for v in dataclasses.astuple(self))

    def mask(self, table: pa.Table) -> pa.ChunkedArray | pa.Array:
        """The rows of ``table`` (common columns) this selection keeps."""
        conds = []
        if self.since is not None:
            conds.append(pc.greater_equal(table["ts"], self.since))
        if self.until is not None:
            conds.append(pc.less_equal(table["ts"], self.until))
        if self.cpus is not None:
            conds.append(pc.is_in(table["cpu"], value_set=pa.array(sorted(self.cpus), table.schema.field("cpu").type)))
        if self.first_seq is not None:
            conds.append(pc.greater_equal(table["seq"], self.first_seq))
        if self.last_seq is not None:
            conds.append(pc.less_equal(table["seq"], self.last_seq))
        if not conds:
            return pc.is_valid(table["seq"])
        mask = conds[0]
        for cond in conds[1:]:
            mask = pc.and_(mask, cond)
        return mask


def without_seqs(seqs: Iterable[int]) -> RowMask:
    """A row filter that drops the events of ``seqs``."""
    drop = pa.array(sorted({int(s) for s in seqs}), pa.int64())
    return lambda table: pc.invert(pc.is_in(table["seq"], value_set=drop))


def keep_rows(data: TraceData, mask: RowMask) -> TraceData:
    """``data`` with only the events ``mask`` keeps, in every table, with counts, span and the
    lost-event figures of the CPUs that remain."""
    tables = {name: t.filter(mask(t)) for name, t in data.tables.items()}
    parts: list[pa.Table] = []
    all_cpus: set[int] = set()
    for part in data.event_chunks():  # the whole table at once where it is in memory
        parts.append(part.filter(mask(part)))
        all_cpus.update(pc.unique(part["cpu"]).to_pylist())
    events = pa.concat_tables(parts)
    cpus = set(pc.unique(events["cpu"]).to_pylist())
    every_cpu = cpus == all_cpus
    kept = pa.array(sorted(cpus), pa.int16())
    gaps = data.gaps if every_cpu else data.gaps.filter(pc.is_in(data.gaps["cpu"], value_set=kept))
    info = dataclasses.replace(
        data.info,
        event_counts={n: t.num_rows for n, t in tables.items() if t.num_rows},
        first_ts=pc.min(events["ts"]).as_py() if events.num_rows else None,
        last_ts=pc.max(events["ts"]).as_py() if events.num_rows else None,
        lost_events={c: n for c, n in data.info.lost_events.items() if every_cpu or c in cpus},
        lost_unknown={c: n for c, n in data.info.lost_unknown.items() if every_cpu or c in cpus},
    )
    # the selected events are in memory, and their seqs are no longer their row numbers
    return dataclasses.replace(data, info=info, events=events, tables=tables, gaps=gaps, spilled_rows=None,
                               spilled_chunks=None, spilled_pages=None)


def select(data: TraceData, selection: Selection) -> TraceData:
    """The events of ``data`` that ``selection`` keeps (``data`` itself when it keeps all)."""
    return data if selection.everything else keep_rows(data, selection.mask)
