"""Reports of a replayed trace: one model (:mod:`.model`), laid out once (:mod:`.blocks`),
drawn by four renderers (text, Markdown, HTML, JSON).

``render(report, fmt)`` and ``render_diff(diff, fmt)`` are what the CLI and notebooks call;
``render_parts`` hands a report on in pieces, so a long trace's JSON is never whole in memory.
"""

from __future__ import annotations

from collections.abc import Iterator

from kvmtrace.parsers.output import write_atomic
from kvmtrace.parsers.schema import TraceData
from kvmtrace.replays.threads import VcpuThreads
from kvmtrace.report.blocks import report_blocks, report_title, trace_blocks
from kvmtrace.report.diff import DiffReport, build_diff, diff_blocks, diff_dict
from kvmtrace.report.html import render_html, render_html_fragment
from kvmtrace.report.jsonout import iter_json, render_json, report_dict, report_doc, report_schema
from kvmtrace.report.markdown import render_markdown
from kvmtrace.report.model import Figure, Report, build_report, trace_facts
from kvmtrace.report.text import render_text

FORMATS: tuple[str, ...] = ("text", "markdown", "html", "json")
DIFF_FORMATS: tuple[str, ...] = FORMATS


def render(report: Report, fmt: str, *, color: bool = False) -> str:
    """The report in one of :data:`FORMATS` (``color`` applies to text only)."""
    return "".join(render_parts(report, fmt, color=color))


def render_parts(report: Report, fmt: str, *, color: bool = False) -> Iterator[str]:
    """:func:`render`'s text in pieces: JSON (whose tables are whole) a piece at a time, the
    human formats (which abbreviate long tables) in one."""
    if fmt == "json":
        yield from iter_json(report_doc(report))
    else:
        yield _render_blocks(report_blocks(report), fmt, title=report_title(report), color=color)


def render_diff(diff: DiffReport, fmt: str, *, color: bool = False) -> str:
    """Two reports side by side in one of :data:`DIFF_FORMATS`."""
    if fmt == "json":
        return render_json(diff_dict(diff))
    return _render_blocks(diff_blocks(diff), fmt, title="kvmtrace diff", color=color)


def trace_html(data: TraceData, path: str, vcpus: VcpuThreads) -> str:
    """A trace's facts and event counts as an HTML fragment (``Trace._repr_html_``)."""
    return render_html_fragment(trace_blocks(trace_facts(data, path, vcpus), dict(data.info.event_counts)))


def _render_blocks(blocks: list, fmt: str, *, title: str, color: bool) -> str:
    if fmt == "text":
        return render_text(blocks, color=color)
    if fmt == "markdown":
        return render_markdown(blocks)
    if fmt == "html":
        return render_html(blocks, title=title)
    raise ValueError(f"unknown report format {fmt!r}; choose one of {', '.join(FORMATS)}")


__all__ = [
    "DIFF_FORMATS",
    "FORMATS",
    "DiffReport",
    "Figure",
    "Report",
    "build_diff",
    "build_report",
    "render",
    "render_diff",
    "render_parts",
    "report_dict",
    "report_schema",
    "trace_html",
    "write_atomic",
]
