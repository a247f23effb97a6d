"""``kvmtrace diff A B``: the reports of two traces side by side (a good run against a bad one,
one kernel against the next): checks that changed, finding counts, activity and zap-cost deltas."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

import kvmtrace
from kvmtrace.commands.common import ReportFormat, ReportOutput, Steps, check_format, emit, output_file
from kvmtrace.parsers.output import refuse_inputs
from kvmtrace.report import DIFF_FORMATS


def diff(
    a: Annotated[Path, typer.Argument(metavar="A", help="The reference trace (e.g. the good run).")],
    b: Annotated[Path, typer.Argument(metavar="B", help="The trace to compare with it.")],
    fmt: ReportFormat = "text",
    output: ReportOutput = None,
    kernel: Annotated[str | None, typer.Option(
        metavar="RELEASE", help="Kernel release to assume for both traces.")] = None,
) -> None:
    """Compare the analyses of two traces."""
    check_format(fmt, DIFF_FORMATS)
    target = output_file(output)
    if target is not None:
        refuse_inputs(target, [a, b])
    steps = Steps()
    analyses = []
    for path in (a, b):
        with steps.step(f"analysing {path}"):
            analyses.append(kvmtrace.open(path, keep="analysis").analyze(kernel=kernel))
    text = analyses[0].diff(analyses[1], fmt, color=target is None and fmt == "text" and sys.stdout.isatty())
    emit(text, target)
