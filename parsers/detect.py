"""Input-format detection by content, on any input: a file, a pipe, a FIFO or standard input.

A user hands us whatever they have: ``trace.dat``, ``trace.dat.zst``, a ``trace`` file copied off
a host, a mail with a pasted excerpt, ``<(zcat t.txt.gz)`` or ``-``. File names lie; the first
bytes do not.

Why the care with pipes: a pipe cannot be re-read, so the bytes read to decide the format must
be handed on to the reader, never dropped (reopening ``/dev/stdin`` after a buffered peek used
to lose its first 8 KiB). Text is read as a stream (its reader is sequential); a trace.dat is
read through a memory map, so a trace.dat that is not a regular file is first spooled to a
temporary file, which is removed whatever happens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import shutil
import stat
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from kvmtrace.parsers.errors import TraceError
from kvmtrace.parsers.schema import TraceData

TRACEDAT_MAGIC = b"\x17\x08\x44tracing"
#: Compressed-stream magics for text inputs (a compressed trace.dat is not something trace-cmd
#: writes; the text reader rejects it with a clear message).
COMPRESSED_MAGICS = {
    b"\x1f\x8b": "gzip",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
}
#: Bytes needed to tell the formats apart (the longest magic).
HEAD = 16
#: The path that means standard input, and the name messages give it.
STDIN = "-"
STDIN_NAME = "<stdin>"
#: Disk space a spooled trace.dat must leave free in the temporary directory.
SPOOL_RESERVE = 1 << 30


def kind_of(head: bytes) -> str:
    """``"tracedat"``, or the text compression (``"none"``, ``"gzip"``, ``"xz"``, ``"zstd"``)."""
    if head.startswith(TRACEDAT_MAGIC):
        return "tracedat"
    for magic, name in COMPRESSED_MAGICS.items():
        if head.startswith(magic):
            return name
    return "none"


class _Replayed(io.RawIOBase):
    """A non-seekable stream whose first bytes were already read: they are served again first."""

    def __init__(self, head: bytes, raw: BinaryIO) -> None:
        self._head = memoryview(head)
        self._raw = raw

    def readable(self) -> bool:
        return True

    # io hands a raw reader a memoryview, which typeshed's WriteableBuffer does not describe
    def readinto(self, b: memoryview) -> int | None:  # type: ignore[override]
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        # typeshed's BinaryIO (the type of sys.stdin.buffer) has no readinto; every reader
        # handed to us at run time (BufferedReader, FileIO) does
        read: int | None = self._raw.readinto(b)  # type: ignore[attr-defined]
        return read


@dataclass
class Input:
    """An opened input: its name for messages, a stream at its first byte, and what it holds."""

    name: str
    stream: BinaryIO
    kind: str
    #: The path of a regular file (it can be reopened and mapped); None for a pipe, FIFO, socket,
    #: tty or standard input, which can be read only once, from the stream.
    path: str | None


def _read_head(raw: BinaryIO) -> bytes:
    """Up to :data:`HEAD` bytes; a pipe may deliver fewer per read, so read until EOF or enough."""
    head = b""
    while len(head) < HEAD:
        more = raw.read(HEAD - len(head))
        if not more:
            break
        head += more
    return head


@contextlib.contextmanager
def open_input(path: str | os.PathLike[str]) -> Iterator[Input]:
    """Open ``path`` (``"-"``: standard input) and decide its format without losing a byte."""
    spath = os.fspath(path)
    if spath == STDIN:
        name, raw, owned = STDIN_NAME, sys.stdin.buffer, False
    else:
        name, owned = spath, True
        try:
            raw = open(spath, "rb", buffering=0)
        except FileNotFoundError:
            raise TraceError(f"{spath}: no such file") from None
        except IsADirectoryError:
            raise TraceError(f"{spath}: is a directory, not a trace") from None
        except PermissionError:
            raise TraceError(f"{spath}: permission denied") from None
        except OSError as err:
            raise TraceError(f"{spath}: cannot open ({err.strerror})") from None
    try:
        regular = stat.S_ISREG(os.fstat(raw.fileno()).st_mode) and spath != STDIN
        try:
            head = _read_head(raw)
        except OSError as err:
            raise TraceError(f"{name}: cannot read ({err.strerror})") from None
        if not head:
            raise TraceError(f"{name}: empty {'file' if regular else 'input'}, not a trace")
        if regular:
            assert isinstance(raw, io.FileIO)  # a file opened above: never standard input
            raw.seek(0)
            stream: BinaryIO = io.BufferedReader(raw)
        else:
            stream = io.BufferedReader(_Replayed(head, raw))
        yield Input(name, stream, kind_of(head), spath if regular else None)
    finally:
        if owned:
            raw.close()


def _renamed(data: TraceData, spool: str, name: str) -> TraceData:
    """``data`` as if read from ``name``: the spool file's path never reaches the user."""
    info = data.info
    data.info = dataclasses.replace(info, path=name, warnings=tuple(w.replace(spool, name) for w in info.warnings))
    for sub in data.instances.values():
        _renamed(sub, spool, name)
    return data


def _read_spooled(src: Input, read_file: Callable[[str], TraceData]) -> TraceData:
    """Copy a non-seekable trace.dat to a temporary file, read it there, and always remove it."""
    fd, spool = tempfile.mkstemp(prefix="kvmtrace-", suffix=".dat")
    try:
        # Never fill the disk: an endless stream that starts like a trace.dat stops here.
        room = shutil.disk_usage(os.path.dirname(spool)).free - SPOOL_RESERVE
        with os.fdopen(fd, "wb") as out:
            try:
                while block := src.stream.read(1 << 20):
                    room -= len(block)
                    if room < 0:
                        raise TraceError(f"{src.name}: the trace.dat on this pipe does not fit in the free space of "
                                         f"{os.path.dirname(spool)} (less than {SPOOL_RESERVE >> 20} MiB would be "
                                         f"left); give the file's path, or set TMPDIR to a larger disk")
                    out.write(block)
            except OSError as err:
                raise TraceError(f"{src.name}: cannot copy the trace.dat from the pipe to a temporary file "
                                 f"({err.strerror}); give the file's path instead") from None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                data = read_file(spool)
            except TraceError as err:
                raise TraceError(str(err).replace(spool, src.name)) from None
    finally:
        os.unlink(spool)
    for w in caught:
        message = str(w.message).replace(spool, src.name)
        warnings.warn(message, w.category, stacklevel=3)
    return _renamed(data, spool, src.name)


def read(path: str | os.PathLike[str], *, instance: str | None = None, strict: bool = False,
         keep: Callable[[str, str | None], bool] | None = None,
         observe: Callable[[TraceData], None] | None = None,
         decode: Callable[[str, str | None], bool] | None = None) -> TraceData:
    """Read a trace.dat or ftrace text into a :class:`TraceData`; ``"-"`` reads standard input.

    ``instance`` picks a trace.dat buffer instance by name (default: the top buffer);
    ``strict`` makes the text reader fail on lines it would otherwise skip.
    ``keep`` and ``observe``, given together: a read for one analysis. ``observe`` sees every
    event's ``events`` row once, in windows in seq order; a trace.dat then holds (and decodes)
    only the rows of the events ``keep(name, system)`` accepts
    (:func:`kvmtrace.parsers.tracedat.reader.read_kept`), while text, small next to what a
    trace.dat holds, is read whole and shown as one window. ``decode``: events whose fields a
    trace.dat's windows decode for ``observe`` without holding their rows.
    """
    if (keep is None) != (observe is None):
        raise ValueError("keep and observe go together")

    def read_file(file: str) -> TraceData:
        from kvmtrace.parsers.tracedat.reader import read_kept, read_tracedat

        if keep is None or observe is None:
            return read_tracedat(file, instance=instance)
        return read_kept(file, keep, observe, decode=decode, instance=instance)

    with open_input(path) as src:
        if src.kind == "tracedat":
            return read_file(src.path) if src.path is not None else _read_spooled(src, read_file)
        from kvmtrace.parsers.text import read_text

        data = read_text(src.stream, compression=src.kind, strict=strict, name=src.name)
    if observe is not None:
        observe(data)
    return data
