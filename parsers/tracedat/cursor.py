"""Bounds-checked reading of the trace.dat container (headers, options, metadata blobs).

Only the small, irregular parts of the file go through here; the bulk per-CPU page data is
decoded with numpy views (see :mod:`kvmtrace.parsers.tracedat.pages`). Every read checks the end of its
buffer so that a file cut short fails with "truncated at byte N" instead of a struct error.
"""

from __future__ import annotations

import mmap
import struct

from kvmtrace.parsers.errors import TraceError


class Cursor:
    """A read position in a byte buffer with the file's byte order.

    ``base`` is the absolute file offset of ``buf[0]`` (non-zero for decompressed sections), so
    error messages always cite positions a user can check with ``trace-cmd dump`` or a hex editor.
    """

    def __init__(self, buf: bytes | mmap.mmap, pos: int = 0, *, big_endian: bool = False,
                 path: str = "", base: int = 0):
        self.buf = buf
        self.pos = pos
        self.path = path
        self.base = base
        self.set_byte_order(big_endian)

    def set_byte_order(self, big_endian: bool) -> None:
        """Switch byte order (the initial header says which, after its first bytes)."""
        self.big_endian = big_endian
        self._e = ">" if big_endian else "<"

    def number(self, payload: bytes, code: str) -> int:
        """One number (struct ``code``: I, Q, ...) at the start of an option payload."""
        try:
            value: int = struct.unpack_from(self._e + code, payload)[0]
            return value
        except struct.error:
            raise TraceError(f"{self.path}: corrupt trace.dat: an option of {len(payload)} bytes is too short "
                             f"for its value") from None

    def at(self, pos: int) -> Cursor:
        """A new cursor over the same buffer (same byte order) at ``pos``."""
        return Cursor(self.buf, pos, big_endian=self.big_endian, path=self.path, base=self.base)

    def truncated(self, need: int) -> TraceError:
        """The error for a read of ``need`` bytes at the current position that runs off the end."""
        end = self.base + len(self.buf)
        at = self.base + self.pos
        return TraceError(
            f"{self.path}: truncated at byte {end} (needed {need} bytes at byte {at}); "
            f"the file was cut short, re-copy or re-record it"
        )

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise self.truncated(n)
        out = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return out

    def _unpack(self, code: str, n: int) -> int:
        if self.pos + n > len(self.buf):
            raise self.truncated(n)
        value: int = struct.unpack_from(self._e + code, self.buf, self.pos)[0]
        self.pos += n
        return value

    def u8(self) -> int:
        return self._unpack("B", 1)

    def u16(self) -> int:
        return self._unpack("H", 2)

    def u32(self) -> int:
        return self._unpack("I", 4)

    def u64(self) -> int:
        return self._unpack("Q", 8)

    def cstr(self) -> str:
        """A NUL-terminated string (the NUL is consumed, not returned)."""
        end = self.buf.find(b"\0", self.pos)
        if end < 0:
            raise self.truncated(len(self.buf) - self.pos + 1)
        out = bytes(self.buf[self.pos : end]).decode("utf-8", "replace")
        self.pos = end + 1
        return out

    def blob32(self) -> bytes:
        """A u32 length followed by that many bytes (kallsyms, printk formats)."""
        return self.take(self.u32())

    def blob64(self) -> bytes:
        """A u64 length followed by that many bytes (format files, cmdlines, header_page)."""
        return self.take(self.u64())

    @property
    def remaining(self) -> int:
        return len(self.buf) - self.pos
