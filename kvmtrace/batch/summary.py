"""The fleet summary: what a batch found, across traces, on one page.

Laid out as the report's blocks (headings, facts, tables), so the text and HTML renderers of
single-trace reports draw it: findings counted by id and kernel (a regression shows up as a
column), the traces listed with the ones that failed first, and the what-if totals per zap
policy summed over the fleet.
"""

from __future__ import annotations

import polars as pl

from kvmtrace.batch.fleet import BatchResult
from kvmtrace.report.blocks import Block, Facts, Heading, Para, Table
from kvmtrace.report.grid import Grid
from kvmtrace.report.html import render_html
from kvmtrace.report.text import render_text

SUMMARY_FORMATS = ("text", "html")
_UNKNOWN = "unknown"


def _grid(title: str, df: pl.DataFrame, note: str = "") -> Grid:
    return Grid(title, tuple(df.columns), tuple(df.iter_rows()), note=note)


def _facts(result: BatchResult) -> Facts:
    s = result.summary
    ok = s.filter(pl.col("status") == "ok")
    by_sev = result.findings.group_by("severity").len()
    counts = dict(by_sev.iter_rows())
    kernels = sorted({k or _UNKNOWN for k in ok["kernel"].to_list()})
    return Facts((
        ("traces", str(s.height)),
        ("analysed", str(ok.height)),
        ("failed", str(s.height - ok.height)),
        ("findings", ", ".join(f"{counts.get(v, 0)} {v}" for v in ("error", "warning", "info"))),
        ("kernels", ", ".join(kernels) or "-"),
        ("events", str(ok["events"].sum())),
        ("analysis time", f"{s['duration_s'].sum():.1f} s (summed over traces)"),
    ))


def findings_by_kernel(result: BatchResult) -> pl.DataFrame:
    """Finding counts, one row per finding id (with its severity), one column per kernel."""
    f = result.findings.with_columns(pl.col("kernel").fill_null(_UNKNOWN))
    if f.height == 0:
        return pl.DataFrame({"id": [], "severity": []}, schema={"id": pl.String, "severity": pl.String})
    wide = f.pivot(on="kernel", index=["id", "severity"], values="seq", aggregate_function="len",
                   sort_columns=True).fill_null(0)
    rank = pl.col("severity").replace_strict({"error": 0, "warning": 1, "info": 2}, default=3)
    return wide.sort(rank, "id")


def failed_table(result: BatchResult) -> pl.DataFrame:
    """The traces that could not be analysed, with why (listed first: they hide findings)."""
    return result.failed.select(pl.col("trace_id").alias("trace"), pl.col("error").alias("problem"))


def traces_table(result: BatchResult) -> pl.DataFrame:
    """The analysed traces, those with the most error and warning findings first."""
    s = result.summary.filter(pl.col("status") == "ok").with_row_index("order")
    return s.sort(-pl.col("errors"), -pl.col("warnings"), "order").select(
        pl.col("trace_id").alias("trace"), pl.col("kernel").fill_null(_UNKNOWN), "mmu",
        pl.col("zap_policy").alias("policy"), "events", pl.col("explained_share").round(4).alias("explained"),
        pl.col("errors").alias("error"), pl.col("warnings").alias("warning"), pl.col("infos").alias("info"),
    )


def whatif_by_policy(result: BatchResult) -> pl.DataFrame:
    """What each zap policy would have destroyed and seen rebuilt, summed over the fleet."""
    w = result.whatif
    measures = [c for c in w.columns if c not in ("trace_id", "zap_policy", "policy")]
    return w.group_by("policy").agg(pl.col("trace_id").n_unique().alias("traces"),
                                    *(pl.col(m).sum() for m in measures)).sort("policy")


_WHATIF_NOTE = (
    "rows = memslot deletes and moves priced. Refault counts are exact for a trace's own "
    "policy and for zap-slot in a zap-all trace; for zap-all in a zap-slot trace they are lower "
    "bounds (the guest reused what the kernel kept without an event). Per-trace tables are in "
    "whatif.parquet and the JSON reports."
)


def _title(result: BatchResult) -> str:
    n = result.summary.height
    return f"kvmtrace batch: {n} trace{'' if n == 1 else 's'}"


def summary_blocks(result: BatchResult) -> list[Block]:
    by_kernel = findings_by_kernel(result)
    whatif = whatif_by_policy(result)
    failures: list[Block] = ([Heading("traces that could not be analysed"),
                              Table(_grid("failed traces", failed_table(result)))]
                             if result.failed.height else [])
    return [
        Heading(_title(result), 1),
        _facts(result),
        *failures,
        Heading("findings by id and kernel"),
        Table(_grid("findings by id and kernel", by_kernel)),
        Heading("traces analysed (most error and warning findings first)"),
        Table(_grid("traces", traces_table(result))),
        Heading("what-if totals per zap policy"),
        Table(_grid("what-if totals per zap policy", whatif)),
        Para(_WHATIF_NOTE if whatif.height else "no trace had a memslot delete or move to price"),
    ]


def render_summary(result: BatchResult, fmt: str) -> str:
    """The fleet summary in one of :data:`SUMMARY_FORMATS`."""
    blocks = summary_blocks(result)
    if fmt == "text":
        return render_text(blocks)
    if fmt == "html":
        return render_html(blocks, title=_title(result))
    raise ValueError(f"unknown summary format {fmt!r}; choose one of {', '.join(SUMMARY_FORMATS)}")
