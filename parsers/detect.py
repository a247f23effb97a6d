"""Input-format detection by content.

A user hands us whatever they have: ``trace.dat``, ``trace.dat.zst``, a ``trace`` file copied off
a host, a mail with a pasted excerpt. File names lie; the first bytes do not.
"""

from __future__ import annotations

import os

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


def sniff(path: str | os.PathLike[str]) -> str:
    """Return ``"tracedat"``, or the text compression (``"none"``, ``"gzip"``, ``"xz"``, ``"zstd"``)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except FileNotFoundError:
        raise TraceError(f"{os.fspath(path)}: no such file") from None
    except IsADirectoryError:
        raise TraceError(f"{os.fspath(path)}: is a directory, not a trace") from None
    except PermissionError:
        raise TraceError(f"{os.fspath(path)}: permission denied") from None
    if not head:
        raise TraceError(f"{os.fspath(path)}: empty file, not a trace")
    if head.startswith(TRACEDAT_MAGIC):
        return "tracedat"
    for magic, name in COMPRESSED_MAGICS.items():
        if head.startswith(magic):
            return name
    return "none"


def read(path: str | os.PathLike[str], *, instance: str | None = None, strict: bool = False) -> TraceData:
    """Read a trace.dat or ftrace text file into a :class:`TraceData`.

    ``instance`` picks a trace.dat buffer instance by name (default: the top buffer);
    ``strict`` makes the text reader fail on lines it would otherwise skip.
    """
    kind = sniff(path)
    if kind == "tracedat":
        from kvmtrace.parsers.tracedat import read_tracedat

        return read_tracedat(path, instance=instance)
    from kvmtrace.parsers.text import read_text

    return read_text(path, compression=kind, strict=strict)
