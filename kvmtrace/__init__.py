"""kvmtrace: a trace-replay analyzer for the Linux KVM x86 MMU."""

from kvmtrace.api import Trace, open

__version__ = "0.1.0"

__all__ = ["open", "Trace", "__version__"]
