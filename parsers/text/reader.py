"""The chunk loop: lines -> repaired lines -> prefix split -> per-event decoding -> TraceData.

A clean chunk (no sign of mail damage) is split from its bytes (:mod:`kvmtrace.parsers.text.scan`);
the lines that path leaves, and every chunk that needs repair, take the string path
(:mod:`kvmtrace.parsers.text.lines`), which is the reference for what a line means.
"""

from __future__ import annotations

import os
import warnings
from typing import BinaryIO

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from kvmtrace.parsers.errors import TraceError, TraceWarning
from kvmtrace.parsers.schema import TraceData, TraceInfo
from kvmtrace.parsers.text import lines as prefix
from kvmtrace.parsers.text import native, repair
from kvmtrace.parsers.text.assemble import (
    UNKNOWN_SYSTEM,
    Collected,
    event_table,
    events_table,
    gaps_table,
    line_seqs,
    order,
)
from kvmtrace.parsers.text.catalog import catalog
from kvmtrace.parsers.text.decode import Decoded, decode_event, decode_unknown
from kvmtrace.parsers.text.probe import WANTED, text_kind
from kvmtrace.parsers.text.scan import Buffer, scan
from kvmtrace.parsers.text.source import MAX_LINE, Chunk, read_chunks

OVERLONG = f"longer than {MAX_LINE >> 10} KiB: not a trace line (dropped unread)"


def decode_lines(df: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, Decoded]]:
    """Split and decode a frame of ``line_no``/``line``: the split frame and per-event results."""
    split = prefix.split(df)
    return split, decode_split(split)


#: A catalogued event with fewer lines than this in a clean chunk is decoded after the last
#: chunk, all its lines at once: decoding a handful of lines cost ~0.3 ms a chunk (setting up
#: the expressions of every printed form), 100x what their lines cost.
RARE = 256
#: Held-back lines decoded as soon as there are this many, so that they stay a bounded amount.
DEFERRED_MAX = 1 << 16


def decode_split(split: pl.DataFrame, ascii_only: bool = False,
                 defer: dict[str, list[pl.DataFrame]] | None = None) -> dict[str, Decoded]:
    """Decode the arguments of a split frame's event rows, per event (``ascii_only``: the
    text is known to be ASCII). With ``defer``, the ``line_no``/``args`` of rare events
    (:data:`RARE`) are added to it instead, copied out of the chunk, for :func:`decode_deferred`."""
    events = split.select("line_no", "event", "args", "caller", "kind").filter(pl.col("kind") == "event")
    specs = catalog()
    decoded: dict[str, Decoded] = {}
    for (name,), rows in events.partition_by("event", as_dict=True).items():
        if name == "print":
            # tracefs prints the caller where the event name goes ("tracing_mark_write: buf"),
            # trace-cmd report prints "print: tracing_mark_write: buf": one form for both.
            caller = pl.col("caller")
            with_caller = pl.concat_str(caller, pl.lit(": "), "args")
            rows = rows.with_columns(args=pl.when(caller.is_null()).then("args").otherwise(with_caller))
        spec = specs.get(name)
        if spec is None:
            decoded[name] = decode_unknown(rows)
        elif defer is not None and rows.height < RARE:
            args = pl.Series("args", pc.cast(rows["args"].to_arrow(), pa.large_string()))
            defer.setdefault(name, []).append(pl.DataFrame({"line_no": rows["line_no"], "args": args}))
        else:
            decoded[name] = decode_event(spec, rows, ascii_only)
    return decoded


def decode_deferred(acc: Collected, skipped: list[tuple[int, str]]) -> set[int]:
    """Decode the rare events' lines held back by :func:`decode_split` into ``acc``; the lines
    that fail are listed in ``skipped`` (as the chunk loop lists them) and returned."""
    specs = catalog()
    failed: set[int] = set()
    for name, pieces in acc.deferred.items():
        d = decode_event(specs[name], pl.concat(pieces))
        acc.rows.setdefault(name, []).append(d.rows)
        acc.forms.setdefault(name, set()).update(d.forms)
        lost = d.failed.to_list()
        skipped.extend((n, f"{name}: arguments match none of its known printed forms") for n in lost)
        failed.update(lost)
    acc.deferred.clear()
    return failed


def _may_be_damaged(buffer: Buffer) -> bool:
    """Any byte-level sign of mail quoting or quoted-printable (what :func:`repair.unquote` looks
    for: a '>', a line ending in '=', a '=3D'); in C, else vectorised (bytes.find on '=3D'
    costs more)."""
    data = buffer.data
    if not data:
        return False
    if b">" in data:
        return True
    if native.COMPILED:  # memchr from '=' to '=', where the numpy form compares every byte
        return native.chunk.quoted_printable(data, buffer.ends)
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
    line_no = pl.Series(scanned.rejected + chunk.first_line, dtype=pl.Int64)
    rest = prefix.split(pl.DataFrame({"line_no": line_no, "line": lines}))
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
    events = split.filter((pl.col("kind") == "event") & keep)
    acc.common.append(events.select("line_no", "ts", "cpu", "pid", *names, "common_preempt_count"))
    acc.gaps.append(split.filter(pl.col("kind") == "gap").select("line_no", "cpu", "lost"))
    for name, d in decoded.items():
        acc.rows.setdefault(name, []).append(d.rows.filter(keep))
        acc.forms.setdefault(name, set()).update(d.forms)


def _process_chunk(acc: Collected, chunk: Chunk, skipped: list[tuple[int, str]], defer: bool) -> pl.DataFrame:
    """Decode one chunk, repairing damaged lines where that is exact; returns its header lines.

    ``defer``: a clean chunk's rare events may be decoded after the last chunk (they cannot be
    part of a repair: a chunk with lines to repair takes the string path, decoded whole)."""
    df = None
    if _may_be_damaged(chunk.buffer):
        df = chunk.frame()
        unquoted = repair.unquote(df)
        df = None if unquoted is df else unquoted
    split = _split_clean(chunk) if df is None else None
    if split is None:
        split, decoded = decode_lines(chunk.frame() if df is None else df)
    else:
        decoded = decode_split(split, chunk.buffer.ascii, acc.deferred if defer else None)
    failed = _failed(decoded)
    bad = split.filter(pl.col("kind") == "bad")
    consumed: set[int] = set()
    ambiguous: set[int] = set()
    if bad.height:
        fixes = repair.rejoin(split, failed, decode_lines)
        if fixes.split is not None:
            _collect(acc, fixes.split, fixes.decoded, set())
        consumed, ambiguous = fixes.consumed, fixes.ambiguous
    skipped.extend((n, repair.why_bad(line))
                   for n, line in bad.select("line_no", "line").iter_rows() if n not in consumed)
    skipped.extend((n, repair.AMBIGUOUS) for n in ambiguous)
    left = failed - consumed
    if left:
        names = dict(split.filter(pl.col("line_no").is_in(list(left))).select("line_no", "event").iter_rows())
        skipped.extend((n, f"{names[n]}: arguments match none of its known printed forms") for n in left)
    _collect(acc, split, decoded, failed | consumed | ambiguous)
    return split.filter(pl.col("kind") == "header").select("line")


def read_text(source: str | os.PathLike[str] | BinaryIO, compression: str = "none", strict: bool = False,
              name: str | None = None) -> TraceData:
    """Read ftrace text (tracefs ``trace``/``trace_pipe``, ``trace-cmd report`` [-R]) into TraceData.

    ``source`` is a path or a binary stream read once from its current position (a pipe is
    fine); ``name`` is what messages and ``TraceInfo.path`` call it (default: the path).
    Lines that cannot be recovered exactly are skipped and listed (``TraceData.skipped``); with
    ``strict`` the first such line is an error instead.
    """
    if isinstance(source, (str, os.PathLike)):
        try:
            f = open(source, "rb")
        except OSError as err:
            raise TraceError(f"{os.fspath(source)}: cannot open ({err.strerror})") from None
        with f:
            return read_text(f, compression, strict, os.fspath(source) if name is None else name)
    path = name if name is not None else str(getattr(source, "name", "<text>"))
    acc = Collected()
    skipped: list[tuple[int, str]] = []
    headers: list[pl.DataFrame] = []
    unread: set[int] = set()  # held-back lines that no form reads, to drop from the common columns
    for chunk in read_chunks(source, compression, path):
        skipped.extend((n, OVERLONG) for n in chunk.overlong)
        # strict stops at the first line it cannot read: every chunk is decoded whole.
        headers.append(_process_chunk(acc, chunk, skipped, defer=not strict))
        if chunk.first_line == 1 and not any(df.height for df in (*acc.common, *acc.gaps)):
            # The probe chunk holds no trace line: refuse before reading on (bounded work on junk).
            raise TraceError(f"{path}: no trace events found: the input looks like {text_kind(chunk.lines)}; {WANTED}")
        if sum(piece.height for pieces in acc.deferred.values() for piece in pieces) >= DEFERRED_MAX:
            unread |= decode_deferred(acc, skipped)
        if strict and skipped:
            line_no, reason = min(skipped)
            raise TraceError(f"{os.fspath(path)}: line {line_no}: {reason}",
                             hint="run without {strict} to skip such lines")
    unread |= decode_deferred(acc, skipped)
    # comm stays a category until each table is written: gathering codes costs far less than strings.
    common = pl.concat(acc.common) if acc.common else pl.DataFrame()
    if unread:
        common = common.filter(~pl.col("line_no").is_in(list(unread)))
    acc.common.clear()  # peak memory: every intermediate is let go as soon as it is used
    if common.height == 0:
        raise TraceError(f"{path}: no trace events found; is this ftrace text or trace-cmd report output?")
    ordered, order_note = order(common)
    del common
    specs = catalog()
    seqs = line_seqs(ordered)
    by_event = ordered.partition_by("event", as_dict=True)
    tables = {}
    for (event,) in list(by_event):
        rows = pl.concat(acc.rows.pop(event), how="vertical_relaxed")
        tables[event] = event_table(specs.get(event), by_event.pop((event,)), rows, acc.forms.get(event, set()), seqs)
    systems = {event: (specs[event].system if event in specs else UNKNOWN_SYSTEM) for event in tables}
    events = events_table(ordered, systems)
    gaps = gaps_table(pl.concat(acc.gaps), ordered)
    skipped.sort()
    header_text = pl.concat(headers)["line"] if headers else pl.Series([], dtype=pl.String)
    # integer columns of a frame with events (checked above): their min and max are ints
    last_cpu, first_ts, last_ts = ordered["cpu"].max(), ordered["ts"].min(), ordered["ts"].max()
    assert isinstance(last_cpu, int) and isinstance(first_ts, int) and isinstance(last_ts, int)
    cpus = prefix.header_cpus(header_text) or last_cpu + 1
    gap_df = pl.from_arrow(gaps)
    assert isinstance(gap_df, pl.DataFrame)  # a Table converts to a DataFrame
    known = gap_df.filter(pl.col("lost").is_not_null()).group_by("cpu").agg(pl.col("lost").sum())
    unknown = gap_df.filter(pl.col("lost").is_null()).group_by("cpu").len()
    warn: tuple[str, ...] = (
        (f"{len(skipped)} line(s) could not be read exactly and were skipped (first: line {skipped[0][0]})",)
        if skipped else ())
    warn += (order_note,) if order_note else ()
    info = TraceInfo(
        path=path,
        source="text",
        compression=compression,
        cpus=cpus,
        event_counts={name: t.num_rows for name, t in tables.items()},
        lost_events={int(c): int(n) for c, n in known.iter_rows()},
        lost_unknown={int(c): int(n) for c, n in unknown.iter_rows()},
        first_ts=first_ts,
        last_ts=last_ts,
        skipped_lines=len(skipped),
        warnings=warn,
    )
    for note in warn:
        warnings.warn(f"{path}: {note}", TraceWarning, stacklevel=2)
    return TraceData(info=info, events=events, tables=tables, gaps=gaps, skipped=skipped)
