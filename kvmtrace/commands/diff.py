"""``kvmtrace diff A B``: the reports of two traces side by side (a good run against a bad one,
one kernel against the next): checks that changed, finding counts, activity and zap-cost deltas."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from kvmtrace.analysis import analysis_report, replay_trace
from kvmtrace.commands.common import Steps, check_format, emit, to_stdout
from kvmtrace.report.output import refuse_inputs
from kvmtrace.report import DIFF_FORMATS, build_diff, render_diff


def diff(
    a: Annotated[Path, typer.Argument(help="The reference trace (e.g. the good run).")],
    b: Annotated[Path, typer.Argument(help="The trace to compare with it.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="text, markdown, html or json")] = "text",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the diff to this file (whole or not at all; - is standard output).")] = None,
    kernel: Annotated[str | None, typer.Option(help="Kernel version to assume for both traces.")] = None,
) -> None:
    """Compare the analyses of two traces."""
    check_format(fmt, DIFF_FORMATS)
    if not to_stdout(output):
        refuse_inputs(output, [a, b])
    steps = Steps()
    ra = analysis_report(replay_trace(a, kernel=kernel, steps=steps), steps=steps)
    rb = analysis_report(replay_trace(b, kernel=kernel, steps=steps), steps=steps)
    color = to_stdout(output) and fmt == "text" and sys.stdout.isatty()
    emit(render_diff(build_diff(ra, rb), fmt, color=color), output)
