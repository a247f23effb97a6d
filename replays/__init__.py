"""The simulated KVM MMU: kernel profiles, memslot timeline, shadow/TDP models, detectors, what-if.

Consumes :class:`parsers.schema.TraceData`; never opens a file.
"""
