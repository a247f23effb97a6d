"""The fixed-column prefix split: every line of a chunk checked against its most common layout.

Why: in a tracefs dump nearly every line has the same columns (``"%16s-%-7d [%03d] %5c
%5lu.%06lu: "``: '[' at 25, five flags, the timestamp's ':' at 49), so where the general split
(:func:`kvmtrace.parsers.text.scan.split_general`) searches each line for its separators
(~40 passes over 64-byte rows), this one gathers seven 8-byte words per line at the common
layout's columns and checks every column at once with word arithmetic (a byte's class as
bit 7 of that byte, SWAR). A line it does not take exactly goes to the general split, so both
give the same columns for every line (``tests/test_text_layout.py``).

Only layouts where the two provably agree are used: the pid's digits and blanks fit one word
(``'['`` at column 19-25), the seconds' blanks and digits one word (1-8 columns), 1-7
fraction digits, the timestamp's ``':'`` at column 40-62 with no ``'.'`` or ``':'`` that the
general split would find first.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, fields

import numpy as np

from kvmtrace.parsers.text.words import HEXVAL, KEEP, PAD, POW10, column, eight

_ONES = 0x0101010101010101
_HIGH = np.uint64(0x80 * _ONES)


def _bytes(indices: range | tuple[int, ...], value: int = 0x80) -> np.uint64:
    """A word with ``value`` in each byte listed (byte 0 is the first column)."""
    return np.uint64(sum(value << (8 * i) for i in indices))


def _equal(x: np.ndarray, c: str) -> np.ndarray:
    """Bit 7 of each byte of each word: whether the byte is ``c``. Words are ASCII (a line with
    a byte >= 0x80 is rejected before), so no byte borrows from its neighbour."""
    z = x ^ np.uint64(ord(c) * _ONES)
    return ~((z | _HIGH) - np.uint64(_ONES)) & _HIGH


def _within(x: np.ndarray, low: int, high: int) -> np.ndarray:
    """Bit 7 of each byte: whether ``low <= byte < high`` (ASCII words, as above)."""
    return ((x | _HIGH) - np.uint64(low * _ONES)) & ~(x + np.uint64((0x80 - high) * _ONES)) & _HIGH


def _digits(x: np.ndarray) -> np.ndarray:
    return _within(x, 0x30, 0x3A)


def _not_flags(x: np.ndarray) -> np.ndarray:
    """Bytes the general split refuses as a flags character: whitespace, '[', ']', ':'."""
    bad: np.ndarray = _within(x, 9, 14) | _equal(x, " ") | _equal(x, "[") | _equal(x, "]") | _equal(x, ":")
    return bad


def _first_set_byte(x: np.ndarray) -> np.ndarray:
    """Index of the first byte whose bit 7 is set (8 when none), from the lowest set bit."""
    lowest = x & (~x + np.uint64(1))
    index: np.ndarray = np.bitwise_count(lowest - np.uint64(1)).astype(np.int64) >> 3
    return index


#: bit 7 of bytes 1..k (a pid of k digits after the '-'), and of the last k bytes (seconds).
_PID_DIGITS = np.array([_bytes(range(1, k + 1)) for k in range(8)], dtype=np.uint64)
_LAST = np.array([_bytes(range(8 - k, 8)) for k in range(9)], dtype=np.uint64)


@dataclass
class Prefix:
    """Each line's prefix up to the timestamp's ``": "``, as columns; values hold where ``ok``."""

    ok: np.ndarray  # bool
    comm_start: np.ndarray  # column of the task name's first byte
    pid: np.ndarray
    cpu: np.ndarray
    ts: np.ndarray  # ns
    colon: np.ndarray  # column of the timestamp's ':'
    preempt: np.ndarray
    preempt_ok: np.ndarray  # bool

    def put(self, at_rows: np.ndarray, other: Prefix) -> None:
        """Overwrite rows ``at_rows`` with ``other``'s (which has one row per index)."""
        for f in fields(self):
            getattr(self, f.name)[at_rows] = getattr(other, f.name)


@dataclass(frozen=True)
class Keys:
    """Per line, the columns that define its layout (from the general split)."""

    bracket: np.ndarray  # column of '['
    flags: np.ndarray  # flags characters, 4 or 5
    dot: np.ndarray  # column of the timestamp's '.'
    colon: np.ndarray  # column of the timestamp's ':'


@dataclass(frozen=True)
class Layout:
    bracket: int
    flags: int
    dot: int
    colon: int

    @property
    def seconds(self) -> int:
        """Columns of the seconds (blanks, then digits): from after the flags' blank to the dot."""
        return self.dot - (self.bracket + 6 + self.flags + 1)

    @property
    def usable(self) -> bool:
        """Whether this split provably agrees with the general one on this layout (module docstring)."""
        frac = self.colon - self.dot - 1
        return (19 <= self.bracket <= 25 and self.flags in (4, 5) and 1 <= self.seconds <= 8 and 1 <= frac <= 7
                and self.seconds + frac >= 8 and 40 <= self.colon <= 62)


def common(keys: Keys, taken: np.ndarray) -> Layout | None:
    """The most common layout of the lines the general split took (``taken``), if usable."""
    if not taken.any():
        return None
    columns = (keys.bracket, keys.flags, keys.dot, keys.colon)
    counts = Counter(zip(*(c[taken].tolist() for c in columns)))
    best = Layout(*counts.most_common(1)[0][0])
    return best if best.usable else None


def split(buf: np.ndarray, starts: np.ndarray, ok: np.ndarray, lay: Layout) -> Prefix:
    """The prefix of each line that has layout ``lay`` exactly (``ok`` false for the others)."""
    u64 = np.uint64
    # Task name: cols 0-15, blanks then the name; no other whitespace; not starting '>' or '|'.
    w0, w1 = column(buf, starts, 0), column(buf, starts, 8)
    ok &= (_within(w0, 9, 14) | _within(w1, 9, 14)) == 0
    named0, named1 = ~_equal(w0, " ") & _HIGH, ~_equal(w1, " ") & _HIGH
    comm_start = np.where(named0 != 0, _first_set_byte(named0), 8 + _first_set_byte(named1))
    lead = buf[starts + PAD + np.minimum(comm_start, 15)]
    ok &= (comm_start < 16) & (lead != ord(">")) & (lead != ord("|"))
    # '-' at 16, then the pid: 1+ digits, then blanks up to the ' ' before '['.
    wp = column(buf, starts, 16)
    region = _bytes(range(1, lay.bracket - 17))
    digits = _digits(wp) & region
    k = np.bitwise_count(digits).astype(np.int64)
    ok &= ((wp & u64(0xFF)) == ord("-")) & ((digits | (_equal(wp, " ") & region)) == region)
    ok &= (k >= 1) & (digits == _PID_DIGITS[k])
    pid = eight((wp >> u64(8)) << (8 * (8 - np.maximum(k, 1))).astype(np.uint64)).astype(np.int64)
    # ' [ccc] ' from the column before '['.
    wm = column(buf, starts, lay.bracket - 1)
    literal = _bytes((0, 1, 5, 6), 0xFF)
    ok &= (wm & literal) == (np.uint64(ord(" ") | ord("[") << 8 | ord("]") << 40 | ord(" ") << 48))
    ok &= (_digits(wm) & _bytes((2, 3, 4))) == _bytes((2, 3, 4))
    cpu = eight((wm << u64(24)) & KEEP[3]).astype(np.int16)
    # The flags characters, then ' '.
    wf = column(buf, starts, lay.bracket + 6)
    ok &= (_not_flags(wf) & _bytes(range(lay.flags))) == 0
    ok &= ((wf >> u64(8 * lay.flags)) & u64(0xFF)) == ord(" ")
    p3 = HEXVAL[((wf >> u64(24)) & u64(0xFF)).astype(np.uint8)]
    if lay.flags == 5:
        p4 = HEXVAL[((wf >> u64(32)) & u64(0xFF)).astype(np.uint8)]
        preempt, preempt_ok = p3 + 16 * p4, (p3 >= 0) & (p4 >= 0)
    else:
        preempt, preempt_ok = p3, p3 >= 0
    # Seconds: the last `seconds` bytes before the dot, blanks then 1+ digits.
    ws = column(buf, starts, lay.dot - 8)
    region = _LAST[lay.seconds]
    digits = _digits(ws) & region
    k = np.bitwise_count(digits).astype(np.int64)
    ok &= ((digits | (_equal(ws, " ") & region)) == region) & (k >= 1) & (digits == _LAST[k])
    # '.', the fraction digits, ': '.
    frac = lay.colon - lay.dot - 1
    wc = column(buf, starts, lay.colon - 8)
    ok &= ((wc >> u64(8 * (7 - frac))) & u64(0xFF)) == ord(".")
    ok &= (_digits(wc) & _LAST[frac]) == _LAST[frac]
    ok &= column(buf, starts, lay.colon, "<u2") == ord(":") | ord(" ") << 8
    whole = eight(ws & KEEP[lay.seconds]).astype(np.int64)
    ts = whole * 1_000_000_000 + eight(wc & KEEP[frac]).astype(np.int64) * POW10[9 - frac]
    colon = np.full(len(starts), lay.colon, dtype=np.int64)
    return Prefix(ok, comm_start, pid, cpu, ts, colon, preempt, preempt_ok)
