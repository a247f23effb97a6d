"""What an analysis reports of its replay: the selection by time and CPU, in words and numbers.

A selection (``since``/``until``/``cpus``) never changes the replay (see :mod:`kvmtrace.analysis`);
it keeps the rows of the replay's tables whose event (``seq``) it holds, or whose lifetime
overlaps it, and recounts the checks. :class:`ReportedSelection` says what was applied and how
many events it kept, for the report's words and for a machine reading it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kvmtrace.parsers.errors import TraceError
from kvmtrace.parsers.select import Selection
from kvmtrace.replays.checks import Status

#: Columns that give a row's lifetime as a ``seq`` range (first, last); such a row is reported
#: when its lifetime overlaps the selection.
_LIFETIMES: tuple[tuple[str, str], ...] = (("first_seq", "zap_seq"), ("from_seq", "until_seq"))


def _ns(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1e9)


def selection_of(since: float | None, until: float | None, cpus: int | Iterable[int] | None) -> Selection:
    """The event filter for ``since``/``until`` (seconds) and ``cpus`` (one or several)."""
    if since is not None and until is not None and since > until:
        raise TraceError(f"since ({since} s) is after until ({until} s)", hint="swap {since} and {until}")
    chosen = None if cpus is None else frozenset([cpus] if isinstance(cpus, int) else cpus)
    return Selection(since=_ns(since), until=_ns(until), cpus=chosen)


def _selection_words(since: float | None, until: float | None, cpus: Iterable[int] | None) -> str:
    """The selection in words ("" when everything is reported)."""
    parts = []
    if since is not None or until is not None:
        lo = f"{since:.6f}" if since is not None else "start"
        hi = f"{until:.6f}" if until is not None else "end"
        parts.append(f"only events from {lo} to {hi} s")
    if cpus is not None:
        which = ", ".join(map(str, sorted(cpus)))
        parts.append(f"only events on CPU {which}")
    return " and ".join(parts)


def reported(sel: Selection, shown: pa.Table, whole: pa.Table) -> ReportedSelection:
    """What ``sel`` applied and kept: ``shown`` and ``whole`` are the selected and all events."""
    seqs = shown["seq"]  # in seq order: the first and last rows bound it (no scan of the column)
    n = shown.num_rows
    return ReportedSelection(
        since=None if sel.since is None else sel.since / 1e9, until=None if sel.until is None else sel.until / 1e9,
        cpus=None if sel.cpus is None else tuple(sorted(sel.cpus)), events=n,
        total_events=whole.num_rows, first_seq=seqs[0].as_py() if n else None,
        last_seq=seqs[n - 1].as_py() if n else None)


@dataclass(frozen=True)
class ReportedSelection:
    """What ``since``/``until``/``cpus`` chose to report, and how much of the trace that is.

    ``since``/``until`` are seconds on the trace clock (as the reports print timestamps), ``cpus``
    the CPUs kept; ``None`` leaves that side open. ``events`` of ``total_events`` are kept, the
    first and last of them at ``first_seq``/``last_seq``."""

    since: float | None
    until: float | None
    cpus: tuple[int, ...] | None
    events: int
    total_events: int
    first_seq: int | None
    last_seq: int | None

    @property
    def everything(self) -> bool:
        """Whether the whole trace is reported (no bound was given)."""
        return self.since is None and self.until is None and self.cpus is None

    @property
    def text(self) -> str:
        """The selection in words, "" when the whole trace is reported."""
        return _selection_words(self.since, self.until, self.cpus)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready object: the fields above plus ``everything``."""
        return {**dataclasses.asdict(self), "cpus": None if self.cpus is None else list(self.cpus),
                "everything": self.everything}


def seq_filter(table: pa.Table, keep: np.ndarray, first: int, last: int) -> pa.Table:
    """The rows of a replay table that belong to the selection (see the module docstring).

    Rows without a position (a memslot from a layout file or QEMU log) are always reported."""
    names = table.column_names
    if "seq" in names:
        seq = table["seq"]
        at = np.clip(pc.fill_null(seq, 0).to_numpy(zero_copy_only=False).astype(np.int64), 0, len(keep) - 1)
        return table.filter(pc.or_(pc.is_null(seq), pa.array(keep[at])))
    for lo_col, hi_col in _LIFETIMES:
        if lo_col in names and hi_col in names:
            lo = pc.fill_null(table[lo_col], -1)
            hi = pc.fill_null(table[hi_col], np.iinfo(np.int64).max)
            return table.filter(pc.and_(pc.less_equal(lo, last), pc.greater_equal(hi, first)))
    return table


def recount(checks: pa.Table, findings: pa.Table, whole: pa.Table) -> pa.Table:
    """The checks as the selection shows them: finding counts of the selection, and a failed
    check without a finding in it reported as passed there, saying how many lie outside."""
    shown = pc.value_counts(findings["id"]).to_pylist() if findings.num_rows else []
    inside = {v["values"]: v["counts"] for v in shown}
    total = {v["values"]: v["counts"] for v in (pc.value_counts(whole["id"]).to_pylist() if whole.num_rows else [])}
    rows = []
    for row in checks.to_pylist():
        n = inside.get(row["id"], 0)
        if row["status"] == Status.FAILED and n == 0:
            row = {**row, "status": str(Status.PASSED),
                   "reason": f"no finding in the selection ({total.get(row['id'], 0)} outside it)"}
        rows.append({**row, "findings": n})
    return pa.Table.from_pylist(rows, schema=checks.schema)
