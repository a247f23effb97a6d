"""Split the prefix of tracefs-layout lines straight from the chunk's bytes (numpy, no strings).

Why: the string path (:mod:`kvmtrace.parsers.text.lines`) runs a dozen polars string kernels per chunk,
each walking every line, and took most of the reader's time. tracefs prints the prefix with
fixed widths (``"%16s-%-7d [%03d] %c%c%c%c%c %5lu.%06lu: %s: "``, the pid ``%-5d`` before
5.x, four flags characters before 5.13), so the separators sit at a few known columns: one
64-byte gather per line, comparisons on single columns, numbers parsed eight digits at a time
in ``uint64`` arithmetic, and ``comm``/``event``/``args`` as Arrow string *views* into the
chunk's buffer (no copy of the text).

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
from numpy.typing import NDArray

from kvmtrace.parsers.text.lines import PRINT_CALLERS

#: Bytes gathered from each line's start: task (16), '-', pid, CPU, flags, and a timestamp
#: whose ``": "`` falls in columns 40-62 (seconds up to 9 digits; longer lines go the string way).
HEAD = 64
#: Bytes after the timestamp's ``": "`` searched for the ``':'`` that ends the event name.
NAME = 48
#: Padding after the buffer (and before it), so every gather stays inside.
PAD = 80

#: Hex value of a flags character ('.' is 0); -1 for one ``to_integer(base=16)`` refuses.
_HEXVAL = np.full(256, -1, dtype=np.int16)
_HEXVAL[48:58] = np.arange(10)
_HEXVAL[65:71] = _HEXVAL[97:103] = np.arange(10, 16)
_HEXVAL[46] = 0
#: Masks keeping the first k bytes of a little-endian uint64, k = 0..8.
_LOW = np.array([(1 << (8 * k)) - 1 for k in range(9)], dtype=np.uint64)
_SWAR = (
    (np.uint64(0x0F0F0F0F0F0F0F0F), np.uint64(2561), np.uint64(8)),
    (np.uint64(0x00FF00FF00FF00FF), np.uint64(6553601), np.uint64(16)),
    (np.uint64(0x0000FFFF0000FFFF), np.uint64(42949672960001), np.uint64(32)),
)
_POW10 = 10 ** np.arange(19, dtype=np.int64)
#: uint64 masks keeping the last k of 8 bytes (the first ones, low bytes, become 0), k = 0..8.
_KEEP = np.array([((1 << 64) - 1) ^ ((1 << (8 * (8 - k))) - 1) for k in range(9)], dtype=np.uint64)


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


def _rows(padded: NDArray[np.uint8], pos: np.ndarray, width: int) -> NDArray[np.uint8]:
    """``width`` bytes from each chunk position (one row each), copied out of the padded buffer."""
    view = np.lib.stride_tricks.as_strided(padded, shape=(len(padded) - width + 1, width), strides=(1, 1),
                                           writeable=False)
    rows: NDArray[np.uint8] = view[np.clip(pos + PAD, 0, len(view) - 1)]  # rejected lines may point anywhere
    return rows


def _word(padded: np.ndarray, pos: np.ndarray, dtype: str) -> np.ndarray:
    """The (unaligned) integer at each chunk position: one element copy per row, where a
    byte-row gather costs several times more."""
    size = np.dtype(dtype).itemsize
    view = np.ndarray((len(padded) - size + 1,), dtype=dtype, buffer=padded, strides=(1,))
    words: np.ndarray = view[np.clip(pos + PAD, 0, len(view) - 1)]
    return words


def _any(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Row-wise ``any`` of a narrow bool matrix, eight columns per uint64 (numpy's axis-1
    reductions loop per row: 40x slower on 16 columns)."""
    n, width = mask.shape
    words = -(-width // 8)
    packed = np.zeros((n, 8 * words), dtype=bool)
    packed[:, :width] = mask
    wide = packed.view("<u8")
    out: NDArray[np.bool_] = wide[:, 0] != 0
    for k in range(1, words):
        out |= wide[:, k] != 0
    return out


def _all(mask: np.ndarray) -> np.ndarray:
    return ~_any(~mask)


def _at(block: np.ndarray, col: np.ndarray) -> np.ndarray:
    """``block[i, col[i]]`` for every row (a flat take: faster than 2-D fancy indexing)."""
    picked: np.ndarray = block.reshape(-1)[np.arange(len(block)) * block.shape[1] + col]
    return picked


def _is_digit(b: np.ndarray) -> np.ndarray:
    return (b - np.uint8(48)) < 10


def _is_space(b: NDArray[np.uint8]) -> NDArray[np.bool_]:
    """ASCII whitespace, what ``str.strip_chars`` removes."""
    space: NDArray[np.bool_] = (b == 32) | ((b - np.uint8(9)) < 5)
    return space


def _eight(x: np.ndarray) -> np.ndarray:
    """Eight ASCII digits per uint64 (first digit in the low byte) -> their value."""
    for mask, mul, shift in _SWAR:
        x = ((x & mask) * mul) >> shift
    return x


def _digits8(padded: np.ndarray, end: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Value of the ``width`` (0-8) digits before ``end`` (checked to be digits by the caller)."""
    return _eight(_word(padded, end - 8, "<u8") & _KEEP[np.clip(width, 0, 8)]).astype(np.int64)


def _views(data: pa.Buffer, padded: np.ndarray, start: np.ndarray, end: np.ndarray) -> pl.Series:
    """The byte ranges as a string column of Arrow views into ``data`` (12-byte strings inline)."""
    length = (end - start).astype(np.int32)
    short = length <= 12
    first = _word(padded, start, "<u8") & np.where(short, _LOW[np.minimum(length, 8)], _LOW[8])
    views = np.empty((len(start), 4), dtype=np.uint32)
    views[:, 0] = length
    views[:, 1] = first  # the low half: the first four bytes, the prefix of a long string
    views[:, 2] = np.where(short, first >> np.uint64(32), 0)
    tail = _word(padded, start + 8, "<u4") & _LOW[np.clip(length - 8, 0, 4)].astype(np.uint32)
    views[:, 3] = np.where(short, tail, start.astype(np.uint32))
    return pl.Series(pa.Array.from_buffers(pa.string_view(), len(start), [None, pa.py_buffer(views), data]))


def scan(buf: Buffer, first_line: int) -> Scanned:
    """Split every tracefs-layout line of ``buf`` (see the module docstring)."""
    raw = np.frombuffer(buf.data, dtype=np.uint8)
    padded = np.concatenate((np.zeros(PAD, np.uint8), raw, np.zeros(PAD, np.uint8)))
    starts, ends = buf.starts, buf.ends
    ok = ends - starts >= 40
    high = np.flatnonzero(raw >= 0x80) if len(raw) and raw.max() >= 0x80 else ()
    if len(high):
        ok[np.searchsorted(starts, high, side="right") - 1] = False
    head = _rows(padded, starts, HEAD)
    # The task name, right-aligned in 16 columns, then '-'; its first byte is not a quote mark.
    space = _is_space(head[:, :16])
    comm_start = np.where(_all(space), 16, space.argmin(axis=1))
    lead = _at(head, np.minimum(comm_start, 15))
    ok &= (comm_start < 16) & (head[:, 16] == ord("-")) & (lead != ord(">")) & (lead != ord("|"))
    # The pid, left-aligned before ' [': the '[' is the line's first (no TGID column).
    bracket = head[:, 17:32] == ord("[")
    lb = 17 + bracket.argmax(axis=1)
    ok &= _any(bracket) & (lb >= 19) & (_at(head, lb - 1) == ord(" "))
    pid_digits = _is_digit(head[:, 17:31])
    pid_end = 17 + np.where(_all(pid_digits), 14, pid_digits.argmin(axis=1))
    ok &= (pid_end > 17) & (pid_end - 17 <= 8)
    tail_spaces = np.arange(17, 31) >= pid_end[:, None]
    ok &= _all((head[:, 17:31] == ord(" ")) | ~tail_spaces | (np.arange(17, 31) >= lb[:, None]))
    pid = _digits8(padded, starts + pid_end, pid_end - 17)
    # [ccc] then ' ', 4 or 5 flags characters, ' '.
    cpu_digits = np.stack([_at(head, lb + k) for k in (1, 2, 3)])
    ok &= _is_digit(cpu_digits).all(axis=0) & (_at(head, lb + 4) == ord("]")) & (_at(head, lb + 5) == ord(" "))
    place = np.array([[100], [10], [1]], dtype=np.int16)
    cpu = ((cpu_digits.astype(np.int16) - 48) * place).sum(axis=0, dtype=np.int16)
    f0 = lb + 6
    flags = np.stack([_at(head, f0 + k) for k in range(6)])
    # No blank, bracket or ':' (a ': ' there would end the timestamp for the string path).
    good = ~(_is_space(flags) | (flags == ord("[")) | (flags == ord("]")) | (flags == ord(":")))
    five = good[:5].all(axis=0) & (flags[5] == ord(" "))
    four = good[:4].all(axis=0) & (flags[4] == ord(" "))
    ok &= five | four
    # The timestamp: blanks, 1-9 digits of seconds, '.', 1-8 fraction digits, ': '.
    t0 = f0 + np.where(five, 6, 5)
    window = head[:, 40:HEAD] == ord(":")
    colon = 40 + window.argmax(axis=1)
    ok &= _any(window) & (colon + 1 < HEAD) & (_at(head, np.minimum(colon + 1, HEAD - 1)) == ord(" "))
    frac_part = _rows(padded, starts + colon - 9, 9)
    point = frac_part == ord(".")
    dot = colon - 9 + point.argmax(axis=1)
    after_dot = np.arange(9) > (dot - colon + 9)[:, None]
    ok &= _any(point) & (colon - dot >= 2) & (dot - t0 >= 1) & (dot - t0 <= 16)
    ok &= _all(_is_digit(frac_part) | ~after_dot)
    whole_part = _rows(padded, starts + dot - 16, 16)
    inside = np.arange(16) >= (16 - (dot - t0))[:, None]
    digit = _is_digit(whole_part) & inside
    ok &= _all(digit | (whole_part == ord(" ")) | ~inside)  # blanks and digits only,
    ok &= _all(digit[:, 1:] >= digit[:, :-1]) & digit[:, -1]  # the blanks first
    ok &= ~_any(digit[:, :7])  # at most 9 digits
    words = np.where(inside, whole_part, np.uint8(0)).view("<u8")
    whole = _eight(words[:, 0]) * np.uint64(100_000_000) + _eight(words[:, 1])
    frac_len = colon - dot - 1
    frac_ns = _digits8(padded, starts + colon, frac_len) * _POW10[np.clip(9 - frac_len, 0, 9)]
    ts = whole.astype(np.int64) * 1_000_000_000 + frac_ns
    # event: the text up to the next ':' (checked to be a word below); one blank, then arguments.
    e0 = starts + colon + 2
    name = _rows(padded, e0, NAME) == ord(":")
    e_len = name.argmax(axis=1)
    a0 = e0 + e_len + 1
    ok &= _any(name) & (e_len >= 1) & (a0 <= ends)
    after = _rows(padded, a0, 2)
    ok &= (a0 >= ends) | (after[:, 0] == ord(" ")) & ((a0 + 1 >= ends) | ~_is_space(after[:, 1]))
    args_start = np.minimum(a0 + 1, ends)
    # Preempt count: the 4th flags character, plus 16 x the 5th in the 5-character layout.
    p3, p4 = _HEXVAL[flags[3]], _HEXVAL[flags[4]]
    preempt = np.where(five, p3 + 16 * p4, p3)
    preempt_ok = (p3 >= 0) & (~five | (p4 >= 0))

    keep = np.flatnonzero(ok)
    data = pa.py_buffer(buf.data)
    event = _views(data, padded, e0[keep], (e0 + e_len)[keep])
    frame = pl.DataFrame({
        "line_no": keep + first_line,
        "comm": _views(data, padded, (starts + comm_start)[keep], (starts + 16)[keep]),
        "pid": pid[keep].astype(np.int32),
        "cpu": cpu[keep],
        "ts": ts[keep],
        "event": event,
        "args": _views(data, padded, args_start[keep], ends[keep]),
        "_preempt": np.where(preempt_ok, preempt, 0)[keep].astype(np.uint8),
        "_preempt_ok": preempt_ok[keep],
    })
    # The event name must be a word (regex \w+), checked once per distinct name.
    names = frame["event"].unique()
    not_words = names.filter(~names.str.contains(r"^\w+$"))
    if len(not_words):
        is_word = ~pl.col("event").is_in(not_words.implode())
        ok[frame.filter(~is_word)["line_no"].to_numpy() - first_line] = False
        frame = frame.filter(is_word)
    is_print = pl.col("event").is_in(PRINT_CALLERS)
    frame = frame.select(
        "line_no",
        pl.lit(None, pl.String).alias("line"),
        pl.lit("event").alias("kind"),
        "comm", "pid", "cpu", "ts",
        pl.when(is_print).then(pl.lit("print")).otherwise("event").alias("event"),
        "args",
        pl.when(is_print).then("event").alias("caller"),
        pl.lit(None, pl.Int64).alias("lost"),
        pl.when("_preempt_ok").then("_preempt").alias("common_preempt_count"),
    )
    return Scanned(frame, np.flatnonzero(~ok))
