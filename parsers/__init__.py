"""Bytes and text in, Arrow out.

``kvmtrace.parsers.read(path)`` decides by content (never by file name) whether the input is a trace-cmd
``trace.dat`` or ftrace text (plain or gzip/xz/zstd-compressed) and hands it to the matching
reader. Both readers return the same :class:`kvmtrace.parsers.schema.TraceData`.
"""

from kvmtrace.parsers.detect import read
from kvmtrace.parsers.errors import TraceError, TraceWarning
from kvmtrace.parsers.schema import TraceData, TraceInfo

__all__ = ["TraceData", "TraceError", "TraceInfo", "TraceWarning", "read"]
