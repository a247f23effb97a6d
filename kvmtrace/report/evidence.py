"""Evidence events as trace lines: ``comm-pid [cpu] ts: event: field=value ...``.

A finding cites ``seq`` numbers; a reader of a bug report wants to see the events themselves, in
the shape trace-cmd prints them, so they can grep their own copy of the trace for the same
lines. We rebuild each line from the decoded tables (never from a text rendering), looking rows
up by ``seq`` with a binary search per event table, so the cost grows with the number of cited
events and not with the trace.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kvmtrace.parsers.schema import COMMON_NAMES, TraceData
from kvmtrace.report.grid import seconds_text


def _field_text(value: object, typ: pa.DataType) -> str:
    """Wide unsigned fields (gfns, SPTEs, role words, addresses) read best in hex, the rest as-is."""
    if value is None:
        return "?"
    if isinstance(value, bool):  # one-bit fields (r, x, ...) read as the kernel prints them
        return str(int(value))
    if pa.types.is_unsigned_integer(typ) and typ.bit_width >= 32 and isinstance(value, int):
        return hex(value)
    if isinstance(value, str):
        return value.rstrip("\n")
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


@dataclass(frozen=True)
class _Pieces:
    """One event table's record batches and the seq of each one's last row, so that a cited
    seq's batch is found by a binary search. Reading the seqs of every batch per question made
    the report's removals quadratic in trace length (each block of 256 removals asked ~20 tables,
    each of a few hundred batches at 52 M events: 2.7 s, 6× the time at 2.5× the trace)."""

    table: pa.Table
    batches: list[pa.RecordBatch]
    lasts: np.ndarray

    @classmethod
    def of(cls, table: pa.Table) -> _Pieces:
        batches = [b for b in table.to_batches() if b.num_rows]
        return cls(table, batches, np.asarray([b.column("seq")[-1].as_py() for b in batches], np.int64))

    def rows_at(self, seqs: list[int]) -> pa.Table:
        """The rows with these seqs (each present; ascending), each taken from its own batch
        alone: the whole column as one array, or a take over the chunked table, would copy (and,
        for a table kept on disk, read) every row."""
        wanted = np.asarray(seqs, np.int64)
        which = np.searchsorted(self.lasts, wanted)  # the first batch that ends at or after the seq
        taken = []
        for k in np.unique(which[which < len(self.batches)]).tolist():
            batch = self.batches[k]
            taken.append(batch.take(pa.array(np.searchsorted(batch.column("seq").to_numpy(), wanted[which == k]))))
        return pa.Table.from_batches(taken, schema=self.table.schema)


def seq_ts(data: TraceData, seqs: np.ndarray) -> np.ndarray:
    """Timestamps (ns) of events by ``seq``, as float with NaN for null or unknown seqs.

    The replay's tables cite events by seq only (shadow pages, the memslot timeline); plots and
    lifetimes need time.
    """
    seqs = np.asarray(seqs, dtype=float)
    out = np.full(seqs.shape, np.nan)
    if not data.events.num_rows:
        return out
    ok = ~np.isnan(seqs)
    hit, at = data.events_at(seqs[ok].astype(np.int64), ("ts",))
    out[ok] = np.where(hit, at["ts"].astype(float), np.nan)
    return out


def column_ts(data: TraceData | None, table: pa.Table, column: str) -> np.ndarray:
    """Timestamps of the events a seq column of a replay table cites (NaN for null, or when the
    table has no such column); without ``data``, the seqs themselves as float."""
    if column not in table.column_names:
        return np.full(table.num_rows, np.nan)
    seqs = pc.fill_null(table.column(column).cast(pa.float64()), np.nan).to_numpy()
    return seqs if data is None else seq_ts(data, seqs)


def _by_event(data: TraceData, seqs: Iterable[int]) -> tuple[list[int], dict[str, list[int]]]:
    """The cited seqs not in the trace, and the others grouped by their event's name."""
    wanted = np.unique(np.fromiter((int(s) for s in seqs), dtype=np.int64))
    if wanted.size == 0:
        return [], {}
    found, at = data.events_at(wanted, ("event",))
    names = at["event"][found].tolist()
    by_event: dict[str, list[int]] = defaultdict(list)
    for seq, name in zip(wanted[found].tolist(), names):
        by_event[name].append(seq)
    return [int(s) for s in wanted[~found]], by_event


#: Cited rows read between two :meth:`TraceData.release_pages`: each row read from a table kept
#: on disk maps a page of every column, so thousands of rows spread over a long table would map
#: most of it at once.
ROWS_PER_RELEASE = 1024


class EvidenceReader:
    """The trace lines (:meth:`lines`) and fields (:meth:`fields`) of cited seqs, for many
    questions about one trace: the report's removals ask a block at a time, and each event
    table's pieces are located once for all of them (:class:`_Pieces`)."""

    def __init__(self, data: TraceData) -> None:
        self.data = data
        self._pieces: dict[str, _Pieces] = {}

    def lines(self, seqs: Iterable[int]) -> dict[int, str]:
        """Map each cited ``seq`` to its trace line; seqs not in the trace map to a note saying so."""
        missing, by_event = _by_event(self.data, seqs)
        out = {s: f"(seq {s} is not in this trace)" for s in missing}
        for name, table, rows in self._cited_rows(by_event):
            out.update(_lines_for_event(table, name, rows))
        return out

    def fields(self, seqs: Iterable[int]) -> dict[int, tuple[str, int, dict[str, object]]]:
        """Each cited ``seq``'s event name, pid and own fields (for decoding beside its line)."""
        _, by_event = _by_event(self.data, seqs)
        out = {}
        for name, table, rows in self._cited_rows(by_event):
            fields = [f.name for f in table.schema if f.name not in COMMON_NAMES and not f.name.startswith("common_")]
            for row in rows.select(["seq", "pid", *fields]).to_pylist():
                out[row.pop("seq")] = (name, row.pop("pid"), row)
        return out

    def _cited_rows(self, by_event: dict[str, list[int]]) -> Iterator[tuple[str, pa.Table, pa.Table]]:
        """Each event's name, table and cited rows, :data:`ROWS_PER_RELEASE` rows at a time, the
        pages read given back after each batch."""
        for name, event_seqs in by_event.items():
            pieces = self._pieces.get(name)
            if pieces is None:
                pieces = self._pieces[name] = _Pieces.of(self.data.table(name))
            for i in range(0, len(event_seqs), ROWS_PER_RELEASE):
                yield name, pieces.table, pieces.rows_at(event_seqs[i:i + ROWS_PER_RELEASE])
                self.data.release_pages()


def evidence_lines(data: TraceData, seqs: Iterable[int]) -> dict[int, str]:
    """:meth:`EvidenceReader.lines`, for one question."""
    return EvidenceReader(data).lines(seqs)


def evidence_fields(data: TraceData, seqs: Iterable[int]) -> dict[int, tuple[str, int, dict[str, object]]]:
    """:meth:`EvidenceReader.fields`, for one question."""
    return EvidenceReader(data).fields(seqs)


def _column_texts(values: list[Any], typ: pa.DataType) -> list[str]:
    """:func:`_field_text` of every value of one column, the choice made once for the column's
    type where its values are all of one kind (the evidence of a long trace is ~10^5 lines)."""
    if pa.types.is_boolean(typ):
        return ["?" if v is None else str(int(v)) for v in values]
    if pa.types.is_unsigned_integer(typ) and typ.bit_width >= 32:
        return ["?" if v is None else hex(v) for v in values]
    if pa.types.is_integer(typ):
        return ["?" if v is None else str(v) for v in values]
    return [_field_text(v, typ) for v in values]


def _lines_for_event(table: pa.Table, name: str, rows: pa.Table) -> dict[int, str]:
    # common_flags / common_preempt_count are ring-buffer bookkeeping; trace-cmd hides them too.
    fields = [f for f in table.schema if f.name not in COMMON_NAMES and not f.name.startswith("common_")]
    cols = {n: rows.column(n).to_pylist() for n in ("seq", "ts", "cpu", "pid", "comm")}
    texts = [[f"{f.name}={t}" for t in _column_texts(rows.column(f.name).to_pylist(), f.type)] for f in fields]
    bodies = [" ".join(parts) for parts in zip(*texts)] if texts else [""] * rows.num_rows
    out = {}
    for seq, ts, cpu, pid, comm, body in zip(cols["seq"], cols["ts"], cols["cpu"], cols["pid"], cols["comm"], bodies):
        out[seq] = f"{comm or '<...>'}-{pid} [{cpu:03d}] {seconds_text(ts)}: {name}: {body}".rstrip()
    return out
