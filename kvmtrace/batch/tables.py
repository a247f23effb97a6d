"""The fleet tables: one Arrow schema each, filled from worker outcomes.

Declared once so that ``findings.parquet`` of a batch with no findings (or only failed traces)
still has every column with its type, and so that polars, DuckDB and Spark read the same schema
from every batch a CI produces.
"""

from __future__ import annotations

from collections.abc import Iterable

import polars as pl
import pyarrow as pa

from kvmtrace.batch.worker import Outcome

#: Columns that say which trace a row belongs to and in what setting it was recorded.
TRACE_FIELDS = [
    pa.field("trace_id", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("kernel", pa.string()),
    pa.field("host", pa.string()),
    pa.field("uname", pa.string()),
    pa.field("mmu", pa.string()),
    pa.field("zap_policy", pa.string()),
    pa.field("profile", pa.string()),
]

#: Every finding of every trace; the finding columns are the replay's findings table.
FINDINGS_SCHEMA = pa.schema([
    *TRACE_FIELDS,
    pa.field("id", pa.string(), nullable=False),
    pa.field("severity", pa.string(), nullable=False),
    pa.field("seq", pa.int64()),
    pa.field("ts", pa.int64()),
    pa.field("cpu", pa.int16()),
    pa.field("gfn", pa.uint64()),
    pa.field("slot", pa.int32()),
    pa.field("message", pa.string(), nullable=False),
    pa.field("evidence", pa.list_(pa.int64()), nullable=False),  # in seq order, as the reports list it
])

#: Every check of every analysed trace (passed, failed or not_evaluated, with the reason).
CHECKS_SCHEMA = pa.schema([
    *TRACE_FIELDS,
    pa.field("id", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("findings", pa.int64(), nullable=False),
])

SEVERITIES = ("error", "warning", "info")

#: One row per trace, analysed or not.
SUMMARY_SCHEMA = pa.schema([
    *TRACE_FIELDS,
    pa.field("status", pa.string(), nullable=False),  # ok | error
    pa.field("error", pa.string()),
    pa.field("events", pa.int64()),
    pa.field("replayed_events", pa.int64()),
    pa.field("explained_share", pa.float64()),
    *(pa.field(f"{s}s", pa.int64()) for s in SEVERITIES),
    pa.field("findings", pa.int64()),
    pa.field("duration_s", pa.float64(), nullable=False),
    pa.field("read_warnings", pa.list_(pa.string()), nullable=False),  # what the reader warned about
])

#: Each trace's what-if totals per zap policy (what zap-all and zap-slot would have destroyed).
WHATIF_SCHEMA = pa.schema([
    pa.field("trace_id", pa.string(), nullable=False),
    pa.field("zap_policy", pa.string()),  # the trace's own policy
    pa.field("policy", pa.string(), nullable=False),  # the policy the row prices
    pa.field("rows", pa.int64(), nullable=False),  # memslot deletes/moves priced
    pa.field("pages_destroyed", pa.int64()),
    pa.field("sptes_destroyed", pa.int64()),
    pa.field("pages_refaulted", pa.int64()),
    pa.field("sptes_refaulted", pa.int64()),
])


def _trace_cols(o: Outcome) -> dict:
    m = o.meta
    return {
        "trace_id": o.trace.trace_id, "path": o.trace.path,
        "kernel": m and m.kernel, "host": m and m.host, "uname": m and m.uname,
        "mmu": m and m.mmu, "zap_policy": m and m.zap_policy, "profile": m and m.profile,
    }


def _rows(outcomes: list[Outcome], names: list[str], attr: str) -> list[dict]:
    return [_trace_cols(o) | dict(zip(names, row)) for o in outcomes for row in getattr(o, attr)]


def findings_table(outcomes: list[Outcome]) -> pa.Table:
    names = FINDINGS_SCHEMA.names[len(TRACE_FIELDS):]
    return pa.Table.from_pylist(_rows(outcomes, names, "findings"), schema=FINDINGS_SCHEMA)


def checks_table(outcomes: list[Outcome]) -> pa.Table:
    names = CHECKS_SCHEMA.names[len(TRACE_FIELDS):]
    return pa.Table.from_pylist(_rows(outcomes, names, "checks"), schema=CHECKS_SCHEMA)


def _severity_counts(o: Outcome) -> dict:
    if o.status != "ok":
        return {f"{s}s": None for s in SEVERITIES} | {"findings": None}
    sev = [f[1] for f in o.findings]
    return {f"{s}s": sev.count(s) for s in SEVERITIES} | {"findings": len(sev)}


def summary_table(outcomes: list[Outcome]) -> pa.Table:
    rows = [
        _trace_cols(o) | {
            "status": o.status, "error": o.error, "events": o.events, "replayed_events": o.replayed_events,
            "explained_share": o.explained_share, "duration_s": o.duration_s, "read_warnings": list(o.warnings),
        } | _severity_counts(o)
        for o in outcomes
    ]
    return pa.Table.from_pylist(rows, schema=SUMMARY_SCHEMA)


def whatif_table(outcomes: list[Outcome]) -> pa.Table:
    names = set(WHATIF_SCHEMA.names)
    rows = [
        {k: v for k, v in zip(o.whatif_columns, row) if k in names}
        | {"trace_id": o.trace.trace_id, "zap_policy": o.meta.zap_policy}
        for o in outcomes if o.meta is not None for row in o.whatif_rows
    ]
    return pa.Table.from_pylist(rows, schema=WHATIF_SCHEMA)


def frame(table: pa.Table) -> pl.DataFrame:
    df = pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)  # a Table always converts to a DataFrame (a Series comes from an Array)
    return df


def as_frames(outcomes: Iterable[Outcome]) -> dict[str, pl.DataFrame]:
    """The four fleet tables of ``outcomes`` (already in batch order) as polars frames."""
    done = list(outcomes)
    return {
        "findings": frame(findings_table(done)),
        "checks": frame(checks_table(done)),
        "summary": frame(summary_table(done)),
        "whatif": frame(whatif_table(done)),
    }
