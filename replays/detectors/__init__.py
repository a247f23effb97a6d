"""Detectors: one module per finding family, each turning replay facts into check outcomes.

Every module exposes ``detect(ctx) -> list[CheckOutcome]``; :data:`DETECTORS` lists them in report
order. A detector that cannot decide from the trace says ``not_evaluated`` and why.
"""

from __future__ import annotations

from kvmtrace.parsers.spilled import release_all
from kvmtrace.replays.detectors import dirty, generations, layout, mmio, slot_removal, zap_rules
from kvmtrace.replays.detectors.context import Context
from kvmtrace.replays.findings import CheckOutcome

DETECTORS = (slot_removal, zap_rules, layout, generations, dirty, mmio)


def run_all(ctx: Context) -> list[CheckOutcome]:
    """Every detector's outcomes, in report order; the pages a detector read of the replay's
    arrays on disk (a long trace's installs, faults, indexes) given back before the next."""
    out: list[CheckOutcome] = []
    for module in DETECTORS:
        out.extend(module.detect(ctx))
        release_all()
    return out
