"""The text reader's compiled passes (``_chunk.c``), when the install built them.

Why a module of its own: the extension is optional (an install without a C compiler
succeeds), so every caller keeps its numpy (or regex) pass, which gives the same result, and reads
:data:`COMPILED` when it runs; the tests set it false to run both and compare them.
"""

from __future__ import annotations

try:
    from kvmtrace.parsers.text import _chunk as chunk
except ImportError:  # built without a C compiler
    chunk = None  # type: ignore[assignment]

__all__ = ["COMPILED", "chunk"]

#: Whether the compiled passes are there.
COMPILED = chunk is not None
