"""The chunk loop: lines -> repaired lines -> prefix split -> per-event decoding -> TraceData."""

from __future__ import annotations

import os
import warnings

import polars as pl

from parsers.errors import TraceError, TraceWarning
from parsers.schema import TraceData, TraceInfo
from parsers.text import lines as prefix
from parsers.text import repair
from parsers.text.assemble import Collected, event_table, events_table, gaps_table, order
from parsers.text.catalog import catalog
from parsers.text.decode import Decoded, decode_event, decode_unknown
from parsers.text.source import read_chunks


def decode_lines(df: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, Decoded]]:
    """Split and decode a frame of ``line_no``/``line``: the split frame and per-event results."""
    split = prefix.split(df)
    events = split.filter(pl.col("kind") == "event")
    specs = catalog()
    decoded: dict[str, Decoded] = {}
    for (name,), rows in events.group_by("event"):
        if name == "print":
            # tracefs prints the caller where the event name goes ("tracing_mark_write: buf"),
            # trace-cmd report prints "print: tracing_mark_write: buf": one form for both.
            caller = pl.col("caller")
            rows = rows.with_columns(args=pl.when(caller.is_null()).then("args").otherwise(pl.concat_str(caller, pl.lit(": "), "args")))
        spec = specs.get(name)
        decoded[name] = decode_event(spec, rows) if spec else decode_unknown(rows)
    return split, decoded


def _failed(decoded: dict[str, Decoded]) -> set[int]:
    return {n for d in decoded.values() for n in d.failed.to_list()}


def _collect(acc: Collected, split: pl.DataFrame, decoded: dict[str, Decoded], drop: set[int]) -> None:
    keep = ~pl.col("line_no").is_in(list(drop)) if drop else pl.lit(True)
    acc.common.append(split.filter((pl.col("kind") == "event") & keep).select("line_no", "ts", "cpu", "pid", "comm", "event", "common_preempt_count"))
    acc.gaps.append(split.filter(pl.col("kind") == "gap").select("line_no", "cpu", "lost"))
    for name, d in decoded.items():
        acc.rows.setdefault(name, []).append(d.rows.filter(keep))
        acc.forms.setdefault(name, set()).update(d.forms)


def _process_chunk(acc: Collected, df: pl.DataFrame, skipped: list[tuple[int, str]]) -> pl.DataFrame:
    """Decode one chunk, repairing damaged lines where that is exact; returns its header lines."""
    df = repair.unquote(df)
    split, decoded = decode_lines(df)
    failed = _failed(decoded)
    bad = split.filter(pl.col("kind") == "bad")
    consumed: set[int] = set()
    ambiguous: set[int] = set()
    if bad.height:
        fixes = repair.rejoin(split, failed, decode_lines)
        if fixes.split is not None:
            _collect(acc, fixes.split, fixes.decoded, set())
        consumed, ambiguous = fixes.consumed, fixes.ambiguous
    skipped.extend((n, repair.why_bad(line)) for n, line in bad.select("line_no", "line").iter_rows() if n not in consumed)
    skipped.extend((n, repair.AMBIGUOUS) for n in ambiguous)
    left = failed - consumed
    if left:
        names = dict(split.filter(pl.col("line_no").is_in(list(left))).select("line_no", "event").iter_rows())
        skipped.extend((n, f"{names[n]}: arguments match none of its known printed forms") for n in left)
    _collect(acc, split, decoded, failed | consumed | ambiguous)
    return split.filter(pl.col("kind") == "header").select("line")


def read_text(path: str | os.PathLike[str], compression: str = "none", strict: bool = False) -> TraceData:
    """Read ftrace text (tracefs ``trace``/``trace_pipe``, ``trace-cmd report`` [-R]) into TraceData.

    Lines that cannot be recovered exactly are skipped and listed (``TraceData.skipped``); with
    ``strict`` the first such line is an error instead.
    """
    acc = Collected()
    skipped: list[tuple[int, str]] = []
    headers: list[pl.DataFrame] = []
    for chunk in read_chunks(path, compression):
        n = len(chunk.lines)
        df = pl.DataFrame({"line_no": pl.int_range(chunk.first_line, chunk.first_line + n, eager=True), "line": chunk.lines})
        headers.append(_process_chunk(acc, df, skipped))
        if strict and skipped:
            line_no, reason = min(skipped)
            raise TraceError(f"{os.fspath(path)}: line {line_no}: {reason} (run without --strict to skip such lines)")
    common = pl.concat(acc.common) if acc.common else pl.DataFrame()
    acc.common.clear()  # peak memory: every intermediate is let go as soon as it is used
    if common.height == 0:
        raise TraceError(f"{os.fspath(path)}: no trace events found; is this ftrace text or trace-cmd report output?")
    ordered = order(common)
    del common
    specs = catalog()
    by_event = ordered.partition_by("event", as_dict=True)
    tables = {}
    for (name,) in list(by_event):
        rows = pl.concat(acc.rows.pop(name), how="vertical_relaxed")
        tables[name] = event_table(specs.get(name), by_event.pop((name,)), rows, acc.forms.get(name, set()))
    systems = {name: (specs[name].system if name in specs else None) for name in tables}
    events = events_table(ordered, systems)
    gaps = gaps_table(pl.concat(acc.gaps), ordered)
    skipped.sort()
    header_text = pl.concat(headers)["line"] if headers else pl.Series([], dtype=pl.String)
    cpus = prefix.header_cpus(header_text) or int(ordered["cpu"].max()) + 1
    gap_df = pl.from_arrow(gaps)
    known = gap_df.filter(pl.col("lost").is_not_null()).group_by("cpu").agg(pl.col("lost").sum())
    unknown = gap_df.filter(pl.col("lost").is_null()).group_by("cpu").len()
    warn = (f"{len(skipped)} line(s) could not be read exactly and were skipped (first: line {skipped[0][0]})",) if skipped else ()
    info = TraceInfo(
        path=os.fspath(path),
        source="text",
        compression=compression,
        cpus=cpus,
        event_counts={name: t.num_rows for name, t in tables.items()},
        lost_events={int(c): int(n) for c, n in known.iter_rows()},
        lost_unknown={int(c): int(n) for c, n in unknown.iter_rows()},
        first_ts=int(ordered["ts"].min()),
        last_ts=int(ordered["ts"].max()),
        skipped_lines=len(skipped),
        warnings=warn,
    )
    if skipped:
        warnings.warn(f"{os.fspath(path)}: {warn[0]}", TraceWarning, stacklevel=2)
    return TraceData(info=info, events=events, tables=tables, gaps=gaps, skipped=skipped)
