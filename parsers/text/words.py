"""Byte-level functions for splitting text lines from a chunk's bytes with numpy (no strings).

Why a module of its own: the general prefix split (:mod:`kvmtrace.parsers.text.scan`) and the
fixed-column one (:mod:`kvmtrace.parsers.text.layout`) read the same padded buffer the same way:
gathers of one unaligned integer per line (one element copy per row, where a byte-row gather
costs several times more), and numbers parsed eight ASCII digits at a time in ``uint64``
arithmetic (SWAR) instead of one string conversion per field.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

#: Padding after the buffer (and before it), so every gather stays inside.
PAD = 80

#: Hex value of a flags character ('.' is 0); -1 for one ``to_integer(base=16)`` refuses.
HEXVAL = np.full(256, -1, dtype=np.int16)
HEXVAL[48:58] = np.arange(10)
HEXVAL[65:71] = HEXVAL[97:103] = np.arange(10, 16)
HEXVAL[46] = 0
#: Masks keeping the first k bytes of a little-endian uint64, k = 0..8.
LOW = np.array([(1 << (8 * k)) - 1 for k in range(9)], dtype=np.uint64)
#: uint64 masks keeping the last k of 8 bytes (the first ones, low bytes, become 0), k = 0..8.
KEEP = np.array([((1 << 64) - 1) ^ ((1 << (8 * (8 - k))) - 1) for k in range(9)], dtype=np.uint64)
POW10 = 10 ** np.arange(19, dtype=np.int64)
_SWAR = (
    (np.uint64(0x0F0F0F0F0F0F0F0F), np.uint64(2561), np.uint64(8)),
    (np.uint64(0x00FF00FF00FF00FF), np.uint64(6553601), np.uint64(16)),
    (np.uint64(0x0000FFFF0000FFFF), np.uint64(42949672960001), np.uint64(32)),
)


def padded(raw: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """The chunk's bytes with :data:`PAD` zero bytes on both sides (positions shift by PAD)."""
    return np.concatenate((np.zeros(PAD, np.uint8), raw, np.zeros(PAD, np.uint8)))


def rows(buf: NDArray[np.uint8], pos: np.ndarray, width: int) -> NDArray[np.uint8]:
    """``width`` bytes from each chunk position (one row each), copied out of the padded buffer."""
    view = np.lib.stride_tricks.as_strided(buf, shape=(len(buf) - width + 1, width), strides=(1, 1),
                                           writeable=False)
    out: NDArray[np.uint8] = view[np.clip(pos + PAD, 0, len(view) - 1)]  # rejected lines may point anywhere
    return out


def word(buf: np.ndarray, pos: np.ndarray, dtype: str = "<u8") -> np.ndarray:
    """The (unaligned) integer at each chunk position."""
    size = np.dtype(dtype).itemsize
    view = np.ndarray((len(buf) - size + 1,), dtype=dtype, buffer=buf, strides=(1,))
    words: np.ndarray = view[np.clip(pos + PAD, 0, len(view) - 1)]
    return words


def any_rows(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
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


def all_rows(mask: np.ndarray) -> np.ndarray:
    return ~any_rows(~mask)


def at(block: np.ndarray, col: np.ndarray) -> np.ndarray:
    """``block[i, col[i]]`` for every row (a flat take: faster than 2-D fancy indexing)."""
    picked: np.ndarray = block.reshape(-1)[np.arange(len(block)) * block.shape[1] + col]
    return picked


def is_digit(b: np.ndarray) -> np.ndarray:
    return (b - np.uint8(48)) < 10


def is_space(b: NDArray[np.uint8]) -> NDArray[np.bool_]:
    """ASCII whitespace, what ``str.strip_chars`` removes."""
    space: NDArray[np.bool_] = (b == 32) | ((b - np.uint8(9)) < 5)
    return space


def eight(x: np.ndarray) -> np.ndarray:
    """Eight ASCII digits per uint64 (first digit in the low byte) -> their value; bytes whose
    low nibble is 0 (zero bytes, blanks) count as leading zeros."""
    for mask, mul, shift in _SWAR:
        x = ((x & mask) * mul) >> shift
    return x


def digits8(buf: np.ndarray, end: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Value of the ``width`` (0-8) digits before ``end`` (checked to be digits by the caller)."""
    return eight(word(buf, end - 8) & KEEP[np.clip(width, 0, 8)]).astype(np.int64)


def column(buf: np.ndarray, starts: np.ndarray, col: int, dtype: str = "<u8") -> np.ndarray:
    """The (unaligned) integer at column ``col`` of each line: a view starting ``col`` bytes
    in, so the gather is the only pass (``col`` + its size stays within :data:`PAD`)."""
    size = np.dtype(dtype).itemsize
    assert -PAD <= col and col + size <= PAD
    view = np.ndarray((len(buf) - PAD - col - size + 1,), dtype=dtype, buffer=buf, offset=PAD + col, strides=(1,))
    words: np.ndarray = view[starts]
    return words
