"""A replay as a notebook shows it: ``view(trace, replay)`` displays as the HTML report.

``kvmtrace.replays`` stays free of HTML (it never knows who looks at its results); this small wrapper
is what gives a replay its ``_repr_html_`` in Jupyter, and its tables as polars DataFrames.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import polars as pl

import kvmtrace
from kvmtrace.api import Trace
from kvmtrace.report.blocks import report_blocks
from kvmtrace.report.html import render_html_fragment
from kvmtrace.report.model import Report, build_report
from kvmtrace.replays.results import ReplayResult


@dataclass
class ReplayView:
    trace: Trace
    replay: ReplayResult

    @cached_property
    def report(self) -> Report:
        return build_report(self.trace.data, self.replay, path=self.trace.path, version=kvmtrace.__version__)

    @property
    def findings(self) -> pl.DataFrame:
        return pl.from_arrow(self.replay.findings)

    @property
    def checks(self) -> pl.DataFrame:
        return pl.from_arrow(self.replay.checks)

    def table(self, name: str) -> pl.DataFrame:
        """A replay table by name: shadow_pages, spte_changes, memslots, unexplained, or a summary."""
        table = getattr(self.replay, name, None) if name in ("shadow_pages", "spte_changes", "memslots", "unexplained") \
            else self.replay.summaries.get(name)
        if table is None:
            raise KeyError(f"no replay table {name!r}; summaries: {sorted(self.replay.summaries)}")
        return pl.from_arrow(table)

    def _repr_html_(self) -> str:
        return render_html_fragment(report_blocks(self.report))


def view(trace: Trace, replay: ReplayResult) -> ReplayView:
    return ReplayView(trace, replay)
