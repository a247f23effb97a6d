"""The simulated KVM MMU: kernel profiles, memslot timeline, shadow/TDP models, detectors, what-if.

Consumes :class:`parsers.schema.TraceData`; never opens a file. The entry point is
:func:`replays.replay`, which returns a :class:`replays.results.ReplayResult`.
"""

from replays.replay import decoded_table, replay

__all__ = ["replay", "decoded_table"]
