"""The simulated KVM MMU: kernel profiles, memslot timeline, shadow/TDP models, detectors, what-if.

Consumes :class:`kvmtrace.parsers.schema.TraceData`; never opens a file. The entry point is
:func:`kvmtrace.replays.replay`, which returns a :class:`kvmtrace.replays.results.ReplayResult`.
"""

from kvmtrace.replays.replay import decoded_table, replay

__all__ = ["decoded_table", "replay"]
