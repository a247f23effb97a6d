"""What an analysis reads of a trace: its decoded tables and the path they came from.

:class:`kvmtrace.api.Trace` is the one users hold. :class:`kvmtrace.analysis.Analysis` and the
plots are typed against this protocol rather than that class: the API builds them, so were they
to import it back, the import graph would close a cycle (even one only type checkers follow).
"""

from __future__ import annotations

from typing import Protocol

from kvmtrace.parsers.schema import TraceData


class Traced(Protocol):
    """A decoded trace: ``data`` (the reader's tables and facts) and ``path`` (for messages)."""

    path: str

    @property
    def data(self) -> TraceData: ...
