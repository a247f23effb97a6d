"""kvmtrace: a trace-replay analyzer for the Linux KVM x86 MMU.

``kvmtrace.open(path)`` reads a trace.dat or ftrace text into a :class:`Trace`;
``Trace.analyze(...)`` replays it and returns an :class:`Analysis` (findings, checks, tables,
reports, plots, diffs): everything the ``kvmtrace`` command does, as one call each.
"""

from kvmtrace.analysis import Analysis
from kvmtrace.api import Trace, open
from kvmtrace.parsers.errors import TraceError
from kvmtrace.version import __version__

__all__ = ["Analysis", "Trace", "TraceError", "__version__", "open"]
