"""``kvmtrace info PATH``: what is in a trace, as text or as one JSON object."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

import kvmtrace
from kvmtrace.commands.common import emit
from kvmtrace.report.traceinfo import info_dict, render_info


def info(
    path: Annotated[Path, typer.Argument(help="trace.dat, or ftrace text (plain or compressed)")],
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")] = False,
    instance: Annotated[str | None, typer.Option(help="Buffer instance of a trace.dat (default: top).")] = None,
    strict: Annotated[bool, typer.Option(help="Text input: fail on lines that cannot be parsed.")] = False,
) -> None:
    """Show what a trace holds: format, kernel, CPUs, clock, span, lost events, event counts."""
    trace = kvmtrace.open(path, instance=instance, strict=strict)
    if json_out:
        emit(json.dumps(info_dict(trace.info), indent=2) + "\n", None)
    else:
        emit(render_info(trace.info) + "\n", None)
