"""Columnar field decoding: from the page buffer straight into Arrow arrays.

Given the payload offsets of every record of one event type, the fixed part of all the records
is copied with one gather into a small (rows × width) matrix; each fixed-offset field is then a
column slice of it, viewed as the right integer type. Strings and dynamic arrays go through
offset arithmetic over the buffer. No Python object per event.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from kvmtrace.parsers.tracedat.arrow import numeric, strings_from_buffers
from kvmtrace.parsers.tracedat.formats import FieldSpec


class FieldReader:
    """Reads fields out of one instance's page buffer (see :class:`kvmtrace.parsers.tracedat.pages.PageData`)."""

    def __init__(self, buf: np.ndarray, big_endian: bool):
        self.buf = buf
        self.big_endian = big_endian
        e = ">" if big_endian else "<"
        n = len(buf)
        self._views = {2: buf[: n & ~1].view(e + "u2"), 4: buf[: n & ~3].view(e + "u4")}
        self._e = e

    # ------------------------------------------------------------------ integers

    def uint(self, addr: np.ndarray, size: int, misalign: int | None = None) -> np.ndarray:
        """Unsigned integers of ``size`` bytes at byte addresses ``addr`` (native byte order).

        ``misalign`` is ``addr % 4`` when the caller knows it is the same for every row (a field
        at a fixed offset of 4-aligned record payloads); otherwise it is checked here.
        """
        if size == 1:
            return np.asarray(self.buf[addr])
        if size not in (2, 4, 8):
            raise ValueError(f"integer size {size}")
        if misalign is None:
            low = addr & 3
            misalign = int(low[0]) if len(low) and not (low != low[0]).any() else -1
        native = np.dtype(f"u{size}")
        if size in (2, 4) and misalign >= 0 and misalign % size == 0:
            return np.asarray(self._views[size][addr // size].astype(native, copy=False))
        if size == 8 and misalign == 0:
            w = self._views[4]
            i = addr >> 2
            if not self.big_endian:  # the two words are the u64's bytes in file order
                return np.asarray(w[i[:, None] + np.arange(2)].view("<u8").ravel().astype(native, copy=False))
            return np.asarray((w[i].astype(np.uint64) << np.uint64(32)) | w[i + 1].astype(np.uint64))
        idx = addr[:, None] + np.arange(size)
        return np.asarray(self.buf[idx].view(f"{self._e}u{size}").ravel().astype(native, copy=False))

    def integers(self, addr: np.ndarray, size: int, signed: bool, misalign: int | None = None) -> np.ndarray:
        out = self.uint(addr, size, misalign)
        return out.view(f"i{size}") if signed else out

    # ------------------------------------------------------------------ byte runs

    def byte_runs(self, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Concatenated bytes of ``[start, start+len)`` runs; returns (data, int64 offsets)."""
        lengths = lengths.astype(np.int64)
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        total = int(offsets[-1])
        if total == 0:
            return np.empty(0, np.uint8), offsets
        idx = np.arange(total, dtype=np.int64) + np.repeat(starts.astype(np.int64) - offsets[:-1], lengths)
        return self.buf[idx], offsets

    def c_strings(self, starts: np.ndarray, lengths: np.ndarray) -> pa.Array:
        """Strings cut at the first NUL inside each run (C semantics, as trace-cmd prints them)."""
        data, offsets = self.byte_runs(starts, lengths)
        zeros = np.flatnonzero(data == 0)
        if zeros.size:
            seg = np.searchsorted(offsets, zeros, side="right") - 1
            seg_first, first_idx = np.unique(seg, return_index=True)
            new_len = np.diff(offsets)
            new_len[seg_first] = zeros[first_idx] - offsets[seg_first]
            within = np.arange(len(data)) - np.repeat(offsets[:-1], np.diff(offsets))
            data = data[within < np.repeat(new_len, np.diff(offsets))]
            offsets = np.zeros(len(new_len) + 1, np.int64)
            np.cumsum(new_len, out=offsets[1:])
        return strings_from_buffers(data, offsets)

    def binary(self, starts: np.ndarray, lengths: np.ndarray) -> pa.Array:
        data, offsets = self.byte_runs(starts, lengths)
        return pa.LargeBinaryArray.from_buffers(
            pa.large_binary(), len(lengths), [None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(data))]
        ).cast(pa.binary())

    def text_rows(self, rows: np.ndarray) -> pa.Array:
        """Strings from the rows of an (n, N) byte matrix, each cut at its first NUL."""
        n, width = rows.shape
        zero = rows == 0
        lengths = np.where(zero.any(axis=1), zero.argmax(axis=1), width)
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return strings_from_buffers(rows[np.arange(width) < lengths[:, None]], offsets)

    # ------------------------------------------------------------------ fields

    def block(self, pos: np.ndarray, width: int) -> np.ndarray:
        """The first ``width`` payload bytes of every record as one (n, width) matrix.

        One gather per event type instead of one per field: the rows are copied with a single
        fancy index over a sliding-window view of the buffer, and every fixed-offset field is
        then a column slice of this small matrix (cache friendly).
        """
        buf = self.buf
        if len(pos) and int(pos.max()) + width > len(buf):
            # A format whose fields reach past the last record of the buffer (not seen in real
            # files): read zeros there rather than fail.
            buf = np.concatenate([buf, np.zeros(width, np.uint8)])
        windows = np.lib.stride_tricks.as_strided(buf, shape=(len(buf) - width + 1, width),
                                                  strides=(1, 1), writeable=False)
        return np.asarray(windows[pos])

    def _ints(self, raw: np.ndarray, size: int, signed: bool) -> np.ndarray:
        """Integers from a contiguous array of their bytes (file byte order → native)."""
        kind = "i" if signed else "u"
        return raw.view(f"{self._e}{kind}{size}").astype(f"{kind}{size}", copy=False).reshape(-1)

    def column(self, field: FieldSpec, pos: np.ndarray, rec_len: np.ndarray, block: np.ndarray) -> pa.Array:
        """Decode ``field`` for records whose payloads start at ``pos`` (lengths ``rec_len``).

        ``block`` is :meth:`block` for these records, wide enough for every fixed-size field.
        """
        if field.trailing:  # "char buf[]": the rest of the record
            rest = np.maximum(rec_len - field.offset, 0)
            addr = pos + field.offset
            return self.c_strings(addr, rest) if field.is_string else self.binary(addr, rest)
        raw = np.ascontiguousarray(block[:, field.offset : field.offset + field.size])
        if field.dynamic:
            return self._dynamic(field, pos, raw, rec_len)
        if field.array_len:
            if field.is_string:
                return self.text_rows(raw)
            if not field.is_int_list:
                return self.binary(pos + field.offset, np.full(len(pos), field.size, np.int64))
            values = self._ints(raw, field.element_size, field.element_signed)
            return pa.FixedSizeListArray.from_arrays(numeric(values), field.array_len)
        if field.size == 1 and field.type.strip() == "bool":
            return numeric(raw[:, 0] != 0)
        if field.size not in (1, 2, 4, 8):
            return self.binary(pos + field.offset, np.full(len(pos), field.size, np.int64))
        return numeric(self._ints(raw, field.size, field.signed))

    def _dynamic(self, field: FieldSpec, pos: np.ndarray, raw: np.ndarray, rec_len: np.ndarray) -> pa.Array:
        """``__data_loc``/``__rel_loc``: u32 = length << 16 | offset (from record or field end)."""
        if field.size == 2:  # very old kernels: offset only, data runs to the record end
            off = self._ints(raw, 2, False).astype(np.int64)
            length = np.maximum(rec_len - off, 0)
        else:
            word = self._ints(raw, 4, False).astype(np.int64)
            off, length = word & 0xFFFF, word >> 16
        if field.relative:
            off = off + field.offset + field.size
        # libtraceevent zeroes a location that runs past the record.
        outside = off + length > rec_len
        off, length = np.where(outside, 0, off), np.where(outside, 0, length)
        if field.is_string:
            return self.c_strings(pos + off, length)
        if not field.is_int_list:
            return self.binary(pos + off, length)
        el = field.element_size
        count = length // el
        data, _ = self.byte_runs(pos + off, count * el)
        values = self._ints(data, el, field.element_signed)
        list_offsets = np.zeros(len(count) + 1, np.int32)
        np.cumsum(count, out=list_offsets[1:])
        return pa.ListArray.from_arrays(numeric(list_offsets), numeric(values))
