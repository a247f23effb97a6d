"""Split the prefix of tracefs-layout lines straight from the chunk's bytes (C or numpy, no strings).

Why: the string path (:mod:`kvmtrace.parsers.text.lines`) runs a dozen polars string kernels per chunk,
each walking every line, and took most of the reader's time. tracefs prints the prefix with
fixed widths (``"%16s-%-7d [%03d] %c%c%c%c%c %5lu.%06lu: %s: "``, the pid ``%-5d`` before
5.x, four flags characters before 5.13), so the separators sit at a few known columns: one
64-byte gather per line, comparisons on single columns, numbers parsed eight digits at a time
in ``uint64`` arithmetic, and ``comm``/``event``/``args`` as Arrow string *views* into the
chunk's buffer (no copy of the text).

Two byte-level splits give the same answer: :func:`split_general` finds the separators of
each line, and :mod:`kvmtrace.parsers.text.layout` checks each line against the chunk's most
common column layout with a few word gathers (~3x cheaper). Lines that do not have that
layout exactly go to the general split. Where the install built the compiled passes
(:mod:`kvmtrace.parsers.text.native`), ``_chunk.c`` makes the same split in one pass per line
and writes the string views itself (~0.08 against ~0.35 us a line); the numpy splits remain
for installs without a C compiler, and the tests hold the two equal.

Only lines that split here exactly as :func:`kvmtrace.parsers.text.lines.split` splits them are taken:
ASCII, that layout, a ``seconds.fraction`` timestamp. Everything else (``trace-cmd report``
output, the latency layout, TGID columns, headers, gaps, damage) is rejected and goes to the
string path, so the result does not depend on which path took a line.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from kvmtrace.parsers.text import layout, native
from kvmtrace.parsers.text.layout import Prefix
from kvmtrace.parsers.text.lines import PRINT_CALLERS
from kvmtrace.parsers.text.words import (
    HEXVAL,
    LOW,
    POW10,
    all_rows,
    any_rows,
    at,
    column,
    digits8,
    eight,
    is_digit,
    is_space,
    padded,
    rows,
    word,
)

#: Bytes gathered from each line's start: task (16), '-', pid, CPU, flags, and a timestamp
#: whose ``": "`` falls in columns 40-62 (seconds up to 9 digits; longer lines go the string way).
HEAD = 64
#: Bytes after the timestamp's ``": "`` searched for the ``':'`` that ends the event name.
NAME = 48
#: Masks keeping the first k bytes of a uint32, k = 0..4.
_LOW4 = LOW[:5].astype(np.uint32)
#: Lines of each chunk whose layouts are counted to pick the one the fast split checks.
SAMPLE = 256


@dataclass(frozen=True)
class Buffer:
    """A chunk's bytes and the bounds of its lines (``ends`` exclude ``\\n`` and a ``\\r`` before it)."""

    data: bytes
    starts: np.ndarray  # int64
    ends: np.ndarray  # int64
    ascii: bool = False  # every byte < 0x80


@dataclass(frozen=True)
class Scanned:
    """The lines the fast path split (the string path's columns, ``line`` null), and the
    indices of the lines it left to the string path."""

    events: pl.DataFrame
    rejected: np.ndarray


def split_general(buf: np.ndarray, starts: np.ndarray, ok: np.ndarray) -> tuple[Prefix, layout.Keys]:
    """Find the separators of every line (any width of pid, flags, seconds): the reference
    split, and the layout of each line for :func:`layout.common`."""
    head = rows(buf, starts, HEAD)
    # The task name, right-aligned in 16 columns, then '-'; its first byte is not a quote mark.
    space = is_space(head[:, :16])
    comm_start = np.where(all_rows(space), 16, space.argmin(axis=1))
    lead = at(head, np.minimum(comm_start, 15))
    ok &= (comm_start < 16) & (head[:, 16] == ord("-")) & (lead != ord(">")) & (lead != ord("|"))
    # The pid, left-aligned before ' [': the '[' is the line's first (no TGID column).
    bracket = head[:, 17:32] == ord("[")
    lb = 17 + bracket.argmax(axis=1)
    ok &= any_rows(bracket) & (lb >= 19) & (at(head, lb - 1) == ord(" "))
    pid_digits = is_digit(head[:, 17:31])
    pid_end = 17 + np.where(all_rows(pid_digits), 14, pid_digits.argmin(axis=1))
    ok &= (pid_end > 17) & (pid_end - 17 <= 8)
    tail_spaces = np.arange(17, 31) >= pid_end[:, None]
    ok &= all_rows((head[:, 17:31] == ord(" ")) | ~tail_spaces | (np.arange(17, 31) >= lb[:, None]))
    pid = digits8(buf, starts + pid_end, pid_end - 17)
    # [ccc] then ' ', 4 or 5 flags characters, ' '.
    cpu_digits = np.stack([at(head, lb + k) for k in (1, 2, 3)])
    ok &= is_digit(cpu_digits).all(axis=0) & (at(head, lb + 4) == ord("]")) & (at(head, lb + 5) == ord(" "))
    place = np.array([[100], [10], [1]], dtype=np.int16)
    cpu = ((cpu_digits.astype(np.int16) - 48) * place).sum(axis=0, dtype=np.int16)
    f0 = lb + 6
    flags = np.stack([at(head, f0 + k) for k in range(6)])
    # No blank, bracket or ':' (a ': ' there would end the timestamp for the string path).
    good = ~(is_space(flags) | (flags == ord("[")) | (flags == ord("]")) | (flags == ord(":")))
    five = good[:5].all(axis=0) & (flags[5] == ord(" "))
    four = good[:4].all(axis=0) & (flags[4] == ord(" "))
    ok &= five | four
    # The timestamp: blanks, 1-9 digits of seconds, '.', 1-8 fraction digits, ': '.
    t0 = f0 + np.where(five, 6, 5)
    window = head[:, 40:HEAD] == ord(":")
    colon = 40 + window.argmax(axis=1)
    ok &= any_rows(window) & (colon + 1 < HEAD) & (at(head, np.minimum(colon + 1, HEAD - 1)) == ord(" "))
    frac_part = rows(buf, starts + colon - 9, 9)
    point = frac_part == ord(".")
    dot = colon - 9 + point.argmax(axis=1)
    after_dot = np.arange(9) > (dot - colon + 9)[:, None]
    ok &= any_rows(point) & (colon - dot >= 2) & (dot - t0 >= 1) & (dot - t0 <= 16)
    ok &= all_rows(is_digit(frac_part) | ~after_dot)
    whole_part = rows(buf, starts + dot - 16, 16)
    inside = np.arange(16) >= (16 - (dot - t0))[:, None]
    digit = is_digit(whole_part) & inside
    ok &= all_rows(digit | (whole_part == ord(" ")) | ~inside)  # blanks and digits only,
    ok &= all_rows(digit[:, 1:] >= digit[:, :-1]) & digit[:, -1]  # the blanks first
    ok &= ~any_rows(digit[:, :7])  # at most 9 digits
    words = np.where(inside, whole_part, np.uint8(0)).view("<u8")
    whole = eight(words[:, 0]) * np.uint64(100_000_000) + eight(words[:, 1])
    frac_len = colon - dot - 1
    frac_ns = digits8(buf, starts + colon, frac_len) * POW10[np.clip(9 - frac_len, 0, 9)]
    ts = whole.astype(np.int64) * 1_000_000_000 + frac_ns
    # Preempt count: the 4th flags character, plus 16 x the 5th in the 5-character layout.
    p3, p4 = HEXVAL[flags[3]], HEXVAL[flags[4]]
    preempt = np.where(five, p3 + 16 * p4, p3)
    preempt_ok = (p3 >= 0) & (~five | (p4 >= 0))
    keys = layout.Keys(lb, np.where(five, 5, 4), dot, colon)
    return Prefix(ok, comm_start, pid, cpu, ts, colon, preempt, preempt_ok), keys


def _prefix(buf: np.ndarray, starts: np.ndarray, ok: np.ndarray) -> Prefix:
    """Every line's prefix: the common layout's lines by :func:`layout.split`, the rest by
    :func:`split_general`."""
    sample = np.flatnonzero(ok[:SAMPLE])
    sampled, keys = split_general(buf, starts[sample], ok[sample].copy())
    common = layout.common(keys, sampled.ok)
    if common is None:
        return split_general(buf, starts, ok)[0]
    out = layout.split(buf, starts, ok.copy(), common)
    rest = np.flatnonzero(ok & ~out.ok)
    if len(rest):
        out.put(rest, split_general(buf, starts[rest], ok[rest])[0])
    return out


def _series(views: np.ndarray, data: pa.Buffer) -> pl.Series:
    """A string column of Arrow views (``uint32`` rows of four) into ``data``."""
    return pl.Series(pa.Array.from_buffers(pa.string_view(), len(views), [None, pa.py_buffer(views), data]))


def _views(data: pa.Buffer, buf: np.ndarray, start: np.ndarray, end: np.ndarray) -> pl.Series:
    """The byte ranges as a string column of Arrow views into ``data`` (12-byte strings inline)."""
    length = end - start
    short = length <= 12
    first = column(buf, start, 0) & LOW[np.minimum(length, 8)]  # the 8 bytes whole for a long string
    views = np.empty((len(start), 4), dtype=np.uint32)
    views[:, 0] = length
    views[:, 1] = first  # the low half: the first four bytes, the prefix of a long string
    views[:, 2] = np.where(short, first >> np.uint64(32), 0)
    tail = column(buf, start, 8, "<u4") & _LOW4[np.clip(length - 8, 0, 4)]
    views[:, 3] = np.where(short, tail, start)
    return _series(views, data)


@dataclass(frozen=True)
class _Taken:
    """The lines a split took (their indices in the chunk, in order) and their columns."""

    index: np.ndarray
    columns: dict[str, pl.Series | np.ndarray]


def _split_numpy(buf: Buffer) -> _Taken:
    """The split in numpy passes over every line (the fallback of :func:`_split_compiled`)."""
    raw = np.frombuffer(buf.data, dtype=np.uint8)
    pad = padded(raw)
    starts, ends = buf.starts, buf.ends
    ok = ends - starts >= 40
    high = () if buf.ascii else np.flatnonzero(raw >= 0x80)
    if len(high):
        ok[np.searchsorted(starts, high, side="right") - 1] = False
    p = _prefix(pad, starts, ok)
    ok = p.ok
    # event: the text up to the next ':' (checked to be a word in scan()); one blank, then arguments.
    e0 = starts + p.colon + 2
    name = rows(pad, e0, NAME) == ord(":")
    e_len = name.argmax(axis=1)
    a0 = e0 + e_len + 1
    ok &= any_rows(name) & (e_len >= 1) & (a0 <= ends)
    after = word(pad, a0, "<u2")
    blank, first_arg = (after & 0xFF) == ord(" "), (after >> 8).astype(np.uint8)
    ok &= (a0 >= ends) | blank & ((a0 + 1 >= ends) | ~is_space(first_arg))
    args_start = np.minimum(a0 + 1, ends)

    keep = np.flatnonzero(ok)
    data = pa.py_buffer(buf.data)
    return _Taken(keep, {
        "comm": _views(data, pad, (starts + p.comm_start)[keep], (starts + 16)[keep]),
        "pid": p.pid[keep].astype(np.int32),
        "cpu": p.cpu[keep],
        "ts": p.ts[keep],
        "event": _views(data, pad, e0[keep], (e0 + e_len)[keep]),
        "args": _views(data, pad, args_start[keep], ends[keep]),
        "_preempt": np.where(p.preempt_ok, p.preempt, 0)[keep].astype(np.uint8),
        "_preempt_ok": p.preempt_ok[keep],
    })


def _split_compiled(buf: Buffer) -> _Taken:
    """The same split in one compiled pass per line (``_chunk.c``, which states the rules)."""
    n = len(buf.starts)
    index, ts = np.empty(n, np.int64), np.empty(n, np.int64)
    pid, cpu = np.empty(n, np.int32), np.empty(n, np.int16)
    preempt, preempt_ok = np.empty(n, np.uint8), np.empty(n, np.bool_)
    comm, event, args = (np.empty((n, 4), np.uint32) for _ in range(3))
    k = native.chunk.split_prefix(buf.data, buf.starts, buf.ends, not buf.ascii,
                        index, pid, cpu, ts, preempt, preempt_ok, comm, event, args)
    data = pa.py_buffer(buf.data)
    return _Taken(index[:k], {
        "comm": _series(comm[:k], data), "pid": pid[:k], "cpu": cpu[:k], "ts": ts[:k],
        "event": _series(event[:k], data), "args": _series(args[:k], data),
        "_preempt": preempt[:k], "_preempt_ok": preempt_ok[:k],
    })


def scan(buf: Buffer, first_line: int) -> Scanned:
    """Split every tracefs-layout line of ``buf`` (see the module docstring), in C where the
    install built it (the same lines and columns as the numpy split)."""
    taken = _split_compiled(buf) if native.COMPILED else _split_numpy(buf)
    ok = np.zeros(len(buf.starts), dtype=bool)
    ok[taken.index] = True
    frame = pl.DataFrame({"line_no": taken.index + first_line, **taken.columns})
    # The event name must be a word (regex \w+), checked once per distinct name.
    names = frame["event"].unique()
    not_words = names.filter(~names.str.contains(r"^\w+$"))
    if len(not_words):
        is_word = ~pl.col("event").is_in(not_words.implode())
        ok[frame.filter(~is_word)["line_no"].to_numpy() - first_line] = False
        frame = frame.filter(is_word)
    # trace_marker lines name their caller where the event goes (hashing every row's name
    # again only when the chunk has such a line).
    name_as: pl.Expr = pl.col("event")
    caller: pl.Expr = pl.lit(None, pl.String)
    if names.is_in(PRINT_CALLERS).any():
        is_print = pl.col("event").is_in(PRINT_CALLERS)
        name_as, caller = pl.when(is_print).then(pl.lit("print")).otherwise("event"), pl.when(is_print).then("event")
    frame = frame.select(
        "line_no",
        pl.lit(None, pl.String).alias("line"),
        pl.lit("event").alias("kind"),
        "comm", "pid", "cpu", "ts",
        name_as.alias("event"),
        "args",
        caller.alias("caller"),
        pl.lit(None, pl.Int64).alias("lost"),
        pl.when("_preempt_ok").then("_preempt").alias("common_preempt_count"),
    )
    return Scanned(frame, np.flatnonzero(~ok))
