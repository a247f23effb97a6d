"""Put decoded text rows together into the reader contract: seq order, tables, gaps, TraceInfo.

``seq`` is the file's order (the kernel's merge order, the trace.dat's), so a text trace and
its trace.dat agree on order even where the text's µs timestamps tie (see :func:`order`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl
import pyarrow as pa

from kvmtrace.parsers.schema import (
    COMMON_FIELDS,
    COMMON_NAMES,
    EVENTS_SCHEMA,
    GAPS_SCHEMA,
    META_NULL_PREFIX,
    META_SOURCE,
    META_SYSTEM,
)
from kvmtrace.parsers.text.catalog import EventSpec
from kvmtrace.parsers.text.printf import RAW_FORM

#: Which printed forms (kernel eras, ``plugin``) the event's lines matched, e.g. ``5.4+``: the
#: text's own evidence of the kernel era, for a reader that has no uname.
META_TEXT_FORMS = b"kvmtrace.text_forms"
#: The ``system`` of an event without a decoder: text prints no system (tracefs and trace-cmd
#: report show the bare event name), so it is said to be unknown rather than left null (a null
#: in the dictionary also cannot be written to Parquet).
UNKNOWN_SYSTEM = "unknown"
UNKNOWN_TEXT = b"kvmtrace has no decoder for this event's text; its printed arguments are kept verbatim"
#: The format files' common fields after ``common_pid``; text carries the preempt count only.
TEXT_COMMON = (pa.field("common_flags", pa.uint8()), pa.field("common_preempt_count", pa.uint8()))
FLAGS_REASON = b"the flags letters (d, N, h, ...) are a lossy rendering whose bit values changed across kernels"
COMM_REASON = b"the latency layout prints task names as %8.8s; names that fill it may be cut short"
PREEMPT_REASON = b"printed only in the flags column of tracefs text (absent from trace-cmd report)"


@dataclass
class Collected:
    """What the chunk loop accumulates (small per event: only decoded columns are kept)."""

    common: list[pl.DataFrame] = field(default_factory=list)  # line_no, ts, cpu, pid, comm, event
    rows: dict[str, list[pl.DataFrame]] = field(default_factory=dict)  # event -> line_no + fields
    forms: dict[str, set[str]] = field(default_factory=dict)  # event -> printed forms seen
    gaps: list[pl.DataFrame] = field(default_factory=list)  # line_no, cpu, lost
    #: event -> its lines still to decode (line_no, args), for events rare in their chunk
    deferred: dict[str, list[pl.DataFrame]] = field(default_factory=dict)


def order(common: pl.DataFrame) -> tuple[pl.DataFrame, str | None]:
    """Assign ``seq``: the file's own order, unless the file is not in time order.

    Why not sort by (ts, CPU) as the schema's definition says: the kernel prints tracefs text
    (and trace-cmd report its output) in its merge order, which is by nanosecond timestamp,
    lower CPU first on ties: the trace.dat order. The text prints µs, so lines of two CPUs
    tie, and only the file's order still says which came first (interleaved vCPUs, exactly
    where races live). Input that goes back in time (text pasted together from several
    captures) is sorted by timestamp, stably; the returned note says so.
    """
    line_no, ts = pl.col("line_no"), pl.col("ts")
    if not common.select((line_no.diff() > 0).fill_null(True).all()).item():
        common = common.sort("line_no")  # rejoined lines are collected after their chunk
    back = common.filter((ts.diff() < 0).fill_null(False))
    note = None
    if back.height:
        note = (f"the text is not in time order ({back.height} line(s) go back in time, the first at line "
                f"{back['line_no'][0]}); its events were sorted by timestamp, lines with equal timestamps "
                f"keeping their order in the file")
        common = common.sort(["ts", "line_no"])
    return common.with_row_index("seq").with_columns(pl.col("seq").cast(pl.Int64)), note


def events_table(ordered: pl.DataFrame, systems: dict[str, str]) -> pa.Table:
    """The ``events`` table; ``system`` shares the event column's dictionary indices.

    The dictionary lists the names in order of first appearance (as ``dictionary_encode``
    would), computed from the category codes: hashing 2 M strings again took 0.3 s.
    """
    t = ordered.select(*COMMON_NAMES).to_arrow()
    codes = ordered["event"].cast(pl.Categorical).to_physical()
    first = pl.DataFrame({"code": codes}).with_row_index("row").group_by("code").agg(pl.col("row").min()).sort("row")
    top = first["code"].max()
    assert isinstance(top, int)  # integer codes of a frame with events
    lookup = np.zeros(top + 1, dtype=np.int32)
    lookup[first["code"].to_numpy()] = np.arange(first.height, dtype=np.int32)
    indices = np.ascontiguousarray(lookup[codes.to_numpy()])
    names = ordered["event"].gather(first["row"]).cast(pl.String)
    index_array = pa.Array.from_buffers(pa.int32(), len(indices), [None, pa.py_buffer(indices)])
    event = pa.DictionaryArray.from_arrays(index_array, names.to_arrow().cast(pa.string()))
    # Through polars: pa.array on a list imports pandas (0.3 s) to check for pandas objects.
    labels = pl.Series([systems[n] for n in names.to_list()], dtype=pl.String).to_arrow().cast(pa.string())
    system = pa.DictionaryArray.from_arrays(index_array, labels)
    columns = [t.column(n).cast(EVENTS_SCHEMA.field(n).type) for n in COMMON_NAMES] + [event, system]
    return pa.table(columns, schema=EVENTS_SCHEMA)


def line_seqs(ordered: pl.DataFrame) -> np.ndarray:
    """line number -> seq (-1 for lines that are not events), for :func:`event_table`."""
    line_no = ordered["line_no"].to_numpy()
    out = np.full(int(line_no.max()) + 1, -1, dtype=np.int64)
    out[line_no] = ordered["seq"].to_numpy()
    return out


def _by_seq(common: pl.DataFrame, rows: pl.DataFrame, seqs: np.ndarray) -> pl.DataFrame:
    """``common`` (in seq order) with the decoded ``rows`` beside it, matched by line number.

    Every event line has exactly one decoded row (failed lines are dropped from both), so
    sorting the rows by their lines' seq lines them up: no hash join (0.6 s on 2 M rows).
    A join is still the fallback should they not pair up one to one.
    """
    line_no = rows["line_no"].to_numpy()
    seq = seqs[line_no] if len(line_no) and line_no.max() < len(seqs) else None
    if seq is not None and len(seq) == common.height:
        fields = rows.drop("line_no")
        if np.array_equal(seq, common["seq"].to_numpy()):  # the usual case: already in order
            return pl.concat([common, fields], how="horizontal").drop("line_no")
        perm = np.argsort(seq, kind="stable")
        if np.array_equal(seq[perm], common["seq"].to_numpy()):
            return pl.concat([common, fields[perm]], how="horizontal").drop("line_no")
    return common.join(rows, on="line_no", how="left").sort("seq").drop("line_no")


def event_table(
    spec: EventSpec | None, common: pl.DataFrame, rows: pl.DataFrame, forms: set[str], seqs: np.ndarray
) -> pa.Table:
    """One event's table from its rows of ``ordered`` (``common``, in seq order), its decoded
    fields and the line -> seq map (:func:`line_seqs`).

    Columns: the common ones by seq, then the event's fields, with metadata saying what text lost.
    """
    df = _by_seq(common.select("line_no", *COMMON_NAMES, "common_preempt_count"), rows, seqs)
    df = df.with_columns(common_flags=pl.lit(None, pl.UInt8))
    meta = {META_SOURCE: b"text", META_NULL_PREFIX + b"common_flags": FLAGS_REASON}
    if df["comm"].null_count():
        meta[META_NULL_PREFIX + b"comm"] = COMM_REASON
    if df["common_preempt_count"].null_count():
        meta[META_NULL_PREFIX + b"common_preempt_count"] = PREEMPT_REASON
    if spec is None:
        fields = [pa.field("text", pa.string())]
        meta[META_NULL_PREFIX + b"text"] = UNKNOWN_TEXT
        meta[META_SYSTEM] = UNKNOWN_SYSTEM.encode()
    else:
        fields = spec.schema_fields()
        meta[META_SYSTEM] = spec.system.encode()
        labels = [f.era for f in spec.forms if f.era in forms] + [RAW_FORM] * (RAW_FORM in forms)
        meta[META_TEXT_FORMS] = ", ".join(labels).encode()
        for key, note in spec.form_notes.items():
            if text := note(forms):
                meta[key] = text.encode()
        for f in fields:
            if df[f.name].null_count() and f.name in spec.null_reasons:
                meta[META_NULL_PREFIX + f.name.encode()] = spec.null_reasons[f.name].encode()
            elif df[f.name].null_count():
                meta[META_NULL_PREFIX + f.name.encode()] = b"not printed by the text form of some rows"
    schema = pa.schema(list(COMMON_FIELDS) + list(TEXT_COMMON) + fields, metadata=meta)
    t = df.to_arrow()
    return pa.table([t.column(f.name).cast(f.type) for f in schema], schema=schema)


def gaps_table(gaps: pl.DataFrame, ordered: pl.DataFrame) -> pa.Table:
    """A gap line belongs to the next event on its CPU (the first one recorded after the loss)."""
    if gaps.height == 0:
        return pa.Table.from_batches([], schema=GAPS_SCHEMA)  # Schema.empty_table imports pandas
    nxt = ordered.select("line_no", "cpu", "ts", "seq").sort("line_no")
    joined = gaps.sort("line_no").join_asof(nxt, on="line_no", by="cpu", strategy="forward", check_sortedness=False)
    t = joined.select("cpu", "ts", "seq", "lost").to_arrow()
    return pa.table([t.column(f.name).cast(f.type) for f in GAPS_SCHEMA], schema=GAPS_SCHEMA)
