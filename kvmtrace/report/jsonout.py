"""JSON rendering: the machine-readable report (documented in docs/report-json.md and checked
against ``report.schema.json`` in the tests).

The top-level keys are a stable contract for scripts and CI gates; the generic tables
(memslot timeline, summaries, what-if) are lists of row objects whose columns are the replay's.

Why the document is written a piece at a time (:func:`iter_json`): its long lists (a removal
per memslot delete, a row per timeline line or what-if change) grow with the trace. At 51 M
events the lab's churn workload has 8 500 removals and a 97 MB report; building it whole (row
dicts, then one string) took the process from 613 MiB to 1169 MiB. Those lists are
:class:`Each`: their items are made, encoded and let go one at a time, and the text is the
same as ``json.dumps(report_dict(report), indent=2)``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from importlib import resources
from json.encoder import encode_basestring_ascii
from typing import Any

from kvmtrace.report.grid import Grid
from kvmtrace.report.groups import FindingGroup
from kvmtrace.report.model import Report
from kvmtrace.report.removals import Removal


@dataclass(frozen=True)
class Each:
    """A list of the document made an item at a time when it is written (:func:`iter_json`),
    and whole only by :func:`materialized`."""

    items: Callable[[], Iterable[Any]]


def _records(grid: Grid) -> Iterator[dict[str, Any]]:
    return (dict(zip(grid.columns, row)) for row in grid.rows)


def grid_dict(grid: Grid) -> dict[str, Any]:
    """A table with every row: only the human formats abbreviate long tables."""
    return {"title": grid.title, "columns": list(grid.columns), "rows": Each(lambda: _records(grid)),
            "note": grid.note}


def group_dict(g: FindingGroup) -> dict[str, Any]:
    return {"id": g.id, "severity": g.severity, "cause": g.cause, "count": g.count,
            "first_seq": g.first_seq, "last_seq": g.last_seq, "first_ts": g.first_ts, "last_ts": g.last_ts,
            "gfn_first": g.gfn_first, "gfn_last": g.gfn_last, "gfns": g.gfns, "slots": list(g.slots),
            "cpus": list(g.cpus), "findings": list(g.members)}


def _removal_dict(r: Removal) -> dict[str, Any]:
    return r.row | {"pages": r.pages.records(), "sptes": r.sptes.records(), "after": r.after.records(),
                    "evidence_lines": [{"seq": s, "line": line} for s, line in r.after_lines]}


def report_dict(report: Report) -> dict[str, Any]:
    """The report as plain JSON values (every list whole)."""
    return materialized(report_doc(report))


def report_doc(report: Report) -> dict[str, Any]:
    """The report's JSON document, its long lists :class:`Each` (for :func:`iter_json`)."""
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
        "removals": Each(lambda: map(_removal_dict, report.removals)),
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


def materialized(value: Any) -> Any:
    """``value`` with every :class:`Each` made a list (what ``json.dumps`` takes)."""
    if isinstance(value, Each):
        return [materialized(v) for v in value.items()]
    if isinstance(value, dict):
        return {k: materialized(v) for k, v in value.items()}
    if isinstance(value, list):
        return [materialized(v) for v in value]
    return value


def _lazy(value: Any) -> bool:
    """Whether ``value`` holds an :class:`Each`. An item of an :class:`Each` never does (they are
    rows: :func:`_encode` does not look inside them), so a removal's page lists are not walked."""
    if isinstance(value, Each):
        return True
    if isinstance(value, dict):
        return any(_lazy(v) for v in value.values())
    return isinstance(value, list) and any(_lazy(v) for v in value)


def _float(value: float) -> str:
    """A float as ``json.dumps`` writes it (``allow_nan``: JavaScript's names)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return float.__repr__(value)


#: Exact types whose text ``json.dumps`` makes without looking further (subclasses such as an
#: ``IntEnum`` are not here: they go to ``json.dumps`` itself).
_SCALARS: dict[type, Callable[[Any], str]] = {
    str: encode_basestring_ascii, int: int.__repr__, float: _float, bool: lambda v: "true" if v else "false",
    type(None): lambda _: "null",
}


def _dumps(value: Any, indent: str) -> str:
    """``json.dumps(value, indent=2, default=str)`` with every line after the first indented by
    ``indent``: the same text, in about half the time (0.23 against 0.45 s for 300 removals of a
    churn recording).

    Why: with ``indent`` set the standard library encodes in pure Python, a generator per
    container and an ``isinstance`` chain per value; the JSON report of a trace with thousands of
    memslot removals (a row per zapped page) is hundreds of MB of such rows. Here each value of
    the types the report is made of is encoded by its exact type, a container's scalars without
    a call of this function; anything else (a non-string key, an object for ``default=str``) is
    handed to ``json.dumps`` whole.
    """
    kind = type(value)
    scalar = _SCALARS.get(kind)
    if scalar is not None:
        return scalar(value)
    inner = indent + "  "
    parts: list[str] = []
    if kind is dict:
        if not value:
            return "{}"
        for key, v in value.items():
            if type(key) is not str:
                break
            scalar = _SCALARS.get(type(v))
            parts.append(encode_basestring_ascii(key) + ": " + (scalar(v) if scalar is not None else _dumps(v, inner)))
        else:
            return "{\n" + inner + (",\n" + inner).join(parts) + "\n" + indent + "}"
    elif kind is list or kind is tuple:
        if not value:
            return "[]"
        for v in value:
            scalar = _SCALARS.get(type(v))
            parts.append(scalar(v) if scalar is not None else _dumps(v, inner))
        return "[\n" + inner + (",\n" + inner).join(parts) + "\n" + indent + "]"
    if isinstance(value, Each):
        raise TypeError("an item of an Each list holds an Each: only the document's own lists are made lazily")
    text = json.dumps(value, indent=2, default=str)
    return text.replace("\n", "\n" + indent) if indent else text


#: Encoded items joined into one piece before it is handed on (fewer, larger writes).
_PIECE = 1 << 16


def iter_json(doc: Any) -> Iterator[str]:
    """``json.dumps(materialized(doc), indent=2, default=str) + "\\n"``, in pieces, each
    :class:`Each` item encoded and let go in turn. A value with nothing lazy in it is encoded by
    ``json.dumps`` itself and indented by its depth (its strings hold no raw newline: JSON
    escapes them), which gives the same text as encoding it in place."""
    pending: list[str] = []
    size = 0
    for part in _encode(doc, 0):
        pending.append(part)
        size += len(part)
        if size >= _PIECE:
            yield "".join(pending)
            pending, size = [], 0
    pending.append("\n")
    yield "".join(pending)


def _encode(value: Any, depth: int, row: bool = False) -> Iterator[str]:
    """``value``'s text at ``depth``; ``row``: an item of an :class:`Each` (never lazy itself)."""
    if row or not _lazy(value):
        yield _dumps(value, "  " * depth)
        return
    inner = "\n" + "  " * (depth + 1)
    if isinstance(value, dict):  # keys are strings in this document (json.dumps would convert others)
        items: Iterable[tuple[str | None, Any]] = value.items()
        opening, closing, empty = "{", "}", "{}"
    else:
        items = ((None, v) for v in (value.items() if isinstance(value, Each) else value))
        opening, closing, empty = "[", "]", "[]"
    rows = isinstance(value, Each)
    first = True
    for key, v in items:
        yield (opening if first else ",") + inner + ("" if key is None else json.dumps(key) + ": ")
        first = False
        yield from _encode(v, depth + 1, rows)
    yield empty if first else "\n" + "  " * depth + closing


def render_json(doc: dict[str, Any]) -> str:
    return "".join(iter_json(doc))


def report_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) that every ``analyze --format json`` output satisfies."""
    return json.loads(resources.files("kvmtrace.report").joinpath("report.schema.json").read_text())
