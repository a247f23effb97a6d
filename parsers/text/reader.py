"""The chunk loop: lines -> repaired lines -> prefix split -> per-event decoding -> TraceData.

A clean chunk (no sign of mail damage) is split from its bytes (:mod:`kvmtrace.parsers.text.scan`);
the lines that path leaves, and every chunk that needs repair, take the string path
(:mod:`kvmtrace.parsers.text.lines`), which is the reference for what a line means.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import polars as pl

from kvmtrace.parsers.errors import TraceError, TraceWarning
from kvmtrace.parsers.schema import TraceData, TraceInfo
from kvmtrace.parsers.text import lines as prefix
from kvmtrace.parsers.text import repair
from kvmtrace.parsers.text.assemble import Collected, event_table, events_table, gaps_table, line_seqs, order
from kvmtrace.parsers.text.catalog import catalog
from kvmtrace.parsers.text.decode import Decoded, decode_event, decode_unknown
from kvmtrace.parsers.text.scan import Buffer, scan
from kvmtrace.parsers.text.source import Chunk, read_chunks


def decode_lines(df: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, Decoded]]:
    """Split and decode a frame of ``line_no``/``line``: the split frame and per-event results."""
    split = prefix.split(df)
    return split, decode_split(split)


def decode_split(split: pl.DataFrame, ascii_only: bool = False) -> dict[str, Decoded]:
    """Decode the arguments of a split frame's event rows, per event (``ascii_only``: the
    text is known to be ASCII)."""
    events = split.select("line_no", "event", "args", "caller", "kind").filter(pl.col("kind") == "event")
    specs = catalog()
    decoded: dict[str, Decoded] = {}
    for (name,), rows in events.partition_by("event", as_dict=True).items():
        if name == "print":
            # tracefs prints the caller where the event name goes ("tracing_mark_write: buf"),
            # trace-cmd report prints "print: tracing_mark_write: buf": one form for both.
            caller = pl.col("caller")
            rows = rows.with_columns(args=pl.when(caller.is_null()).then("args").otherwise(pl.concat_str(caller, pl.lit(": "), "args")))
        spec = specs.get(name)
        decoded[name] = decode_event(spec, rows, ascii_only) if spec else decode_unknown(rows)
    return decoded


def _may_be_damaged(buffer: Buffer) -> bool:
    """Any byte-level sign of mail quoting or quoted-printable (what :func:`repair.unquote` looks
    for: a '>', a line ending in '=', a '=3D'); vectorised, as bytes.find on '=3D' costs more."""
    data = buffer.data
    if b">" in data:
        return True
    raw = np.frombuffer(data, dtype=np.uint8)
    if (raw[np.maximum(buffer.ends - 1, 0)][buffer.ends > buffer.starts] == ord("=")).any():
        return True
    eq = np.flatnonzero(raw[:-2] == ord("="))
    return bool(((raw[eq + 1] == ord("3")) & (raw[eq + 2] == ord("D"))).any())


def _split_clean(chunk: Chunk) -> pl.DataFrame | None:
    """The split frame of a chunk that needs no repair, or None when it has lines that are not
    trace lines (the string path then does the whole chunk, rejoining wrapped lines)."""
    scanned = scan(chunk.buffer, chunk.first_line)
    if len(scanned.rejected) == 0:
        return scanned.events
    lines = chunk.lines.gather(scanned.rejected)
    rest = prefix.split(pl.DataFrame({"line_no": pl.Series(scanned.rejected + chunk.first_line, dtype=pl.Int64), "line": lines}))
    if (rest["kind"] == "bad").any():
        return None
    split = pl.concat([scanned.events, rest], how="vertical_relaxed")
    return split.sort("line_no") if (rest["kind"] == "event").any() else split


def _failed(decoded: dict[str, Decoded]) -> set[int]:
    return {n for d in decoded.values() for n in d.failed.to_list()}


def _collect(acc: Collected, split: pl.DataFrame, decoded: dict[str, Decoded], drop: set[int]) -> None:
    keep = ~pl.col("line_no").is_in(list(drop)) if drop else pl.lit(True)
    # comm and event as categories: the split's strings may be views into the chunk's bytes,
    # which must not outlive the chunk.
    names = [pl.col(c).cast(pl.Categorical) for c in ("comm", "event")]
    acc.common.append(split.filter((pl.col("kind") == "event") & keep).select("line_no", "ts", "cpu", "pid", *names, "common_preempt_count"))
    acc.gaps.append(split.filter(pl.col("kind") == "gap").select("line_no", "cpu", "lost"))
    for name, d in decoded.items():
        acc.rows.setdefault(name, []).append(d.rows.filter(keep))
        acc.forms.setdefault(name, set()).update(d.forms)


def _process_chunk(acc: Collected, chunk: Chunk, skipped: list[tuple[int, str]]) -> pl.DataFrame:
    """Decode one chunk, repairing damaged lines where that is exact; returns its header lines."""
    df = None
    if _may_be_damaged(chunk.buffer):
        df = chunk.frame()
        unquoted = repair.unquote(df)
        df = None if unquoted is df else unquoted
    split = _split_clean(chunk) if df is None else None
    if split is None:
        split, decoded = decode_lines(chunk.frame() if df is None else df)
    else:
        decoded = decode_split(split, chunk.buffer.ascii)
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
        headers.append(_process_chunk(acc, chunk, skipped))
        if strict and skipped:
            line_no, reason = min(skipped)
            raise TraceError(f"{os.fspath(path)}: line {line_no}: {reason}", hint="run without {strict} to skip such lines")
    common = pl.concat(acc.common).with_columns(pl.col("comm").cast(pl.String)) if acc.common else pl.DataFrame()
    acc.common.clear()  # peak memory: every intermediate is let go as soon as it is used
    if common.height == 0:
        raise TraceError(f"{os.fspath(path)}: no trace events found; is this ftrace text or trace-cmd report output?")
    ordered = order(common)
    del common
    specs = catalog()
    seqs = line_seqs(ordered)
    by_event = ordered.partition_by("event", as_dict=True)
    tables = {}
    for (name,) in list(by_event):
        rows = pl.concat(acc.rows.pop(name), how="vertical_relaxed")
        tables[name] = event_table(specs.get(name), by_event.pop((name,)), rows, acc.forms.get(name, set()), seqs)
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
