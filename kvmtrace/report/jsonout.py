"""JSON rendering: the machine-readable report (documented in docs/report-json.md and checked
against ``report.schema.json`` in the tests).

The top-level keys are a stable contract for scripts and CI gates; the generic tables
(memslot timeline, summaries, what-if) are lists of row objects whose columns are the replay's.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from importlib import resources
from typing import Any

from kvmtrace.report.grid import Grid
from kvmtrace.report.groups import FindingGroup
from kvmtrace.report.model import Report


def grid_dict(grid: Grid) -> dict[str, Any]:
    """A table with every row: only the human formats abbreviate long tables."""
    return {"title": grid.title, "columns": list(grid.columns), "rows": grid.records(), "note": grid.note}


def group_dict(g: FindingGroup) -> dict[str, Any]:
    return {"id": g.id, "severity": g.severity, "cause": g.cause, "count": g.count,
            "first_seq": g.first_seq, "last_seq": g.last_seq, "first_ts": g.first_ts, "last_ts": g.last_ts,
            "gfn_first": g.gfn_first, "gfn_last": g.gfn_last, "gfns": g.gfns, "slots": list(g.slots),
            "cpus": list(g.cpus), "findings": list(g.members)}


def report_dict(report: Report) -> dict[str, Any]:
    r = report.replay
    return {
        "kvmtrace_version": report.kvmtrace_version,
        "input_warnings": list(report.input_warnings),
        "selection": report.selection,
        "trace": report.trace.info,
        "replay": {
            "mmu": r.mmu,
            "zap_policy": r.zap_policy,
            "profile": r.profile,
            "events": r.events,
            "explained_events": r.explained_events,
            "shadow_pages": r.shadow_pages,
            "spte_changes": r.spte_changes,
            "memslot_changes": r.memslot_changes,
        },
        "checks": [{"id": c.id, "status": c.status, "reason": c.reason, "findings": c.findings} for c in report.checks],
        "findings": [
            {k: v for k, v in asdict(f).items() if k not in ("evidence_lines", "evidence_notes")}
            | {"evidence": list(f.evidence)}
            for f in report.findings
        ],
        "groups": [group_dict(g) for g in report.groups],
        "removals": [r.row | {"pages": r.pages.records(), "sptes": r.sptes.records(), "after": r.after.records(),
                              "evidence_lines": [{"seq": s, "line": line} for s, line in r.after_lines]}
                     for r in report.removals],
        "consequences": grid_dict(report.consequences),
        "memslots": grid_dict(report.memslot_timeline),
        "activity": [grid_dict(g) for g in report.activity],
        "totals": [grid_dict(g) for g in report.totals],
        "sp_lifetimes": grid_dict(report.sp_lifetimes),
        "whatif": grid_dict(report.whatif),
        "whatif_totals": grid_dict(report.whatif_totals),
        "unexplained": grid_dict(report.unexplained),
        "assumptions": list(report.assumptions),
        "limits": list(report.limits),
    }


def render_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, default=str) + "\n"


def report_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) that every ``analyze --format json`` output satisfies."""
    return json.loads(resources.files("kvmtrace.report").joinpath("report.schema.json").read_text())
