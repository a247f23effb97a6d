"""The one exception type that crosses package boundaries.

Every reader, the replay and the CLI agree on it: whatever goes wrong with an input, the user
gets ``TraceError``'s message as a single line (the CLI prints it and exits with status 2). The
message must say what is wrong and, where there is one, what to do about it.
"""

from __future__ import annotations


class TraceError(Exception):
    """An input that cannot be read as asked; ``str(err)`` is the whole user-facing message."""


class TraceWarning(UserWarning):
    """Something was recovered from a damaged input (a cut-short file, skipped text lines)."""
