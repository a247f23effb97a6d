"""``kvmtrace analyze PATH``: parse, replay, detect, render — the command a bug report starts with."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from kvmtrace.analysis import FAIL_ON, analysis_report, replay_trace
from kvmtrace.commands.common import Steps, check_format, emit, to_stdout
from kvmtrace.report.output import refuse_inputs
from kvmtrace.report import FORMATS, render
from kvmtrace.parsers.errors import TraceError


def analyze(
    path: Annotated[Path, typer.Argument(help="trace.dat, or ftrace text (plain or compressed)")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="text, markdown, html or json")] = "text",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the report to this file (whole or not at all; - is standard output).")] = None,
    qemu_log: Annotated[Path | None, typer.Option(help="QEMU -trace log with kvm_set_user_memory lines.")] = None,
    memslots: Annotated[Path | None, typer.Option(help='Memslot layout (JSON): {"slots": [{"slot", "gpa", "size", "flags", "as_id"}]}.')] = None,
    kernel: Annotated[str | None, typer.Option(help="Kernel version to assume (default: from the trace).")] = None,
    fail_on: Annotated[str | None, typer.Option(help="Exit 1 if a finding of this severity (error|warning) or worse exists.")] = None,
    since: Annotated[float | None, typer.Option(help="Replay only events at or after this timestamp (s, as printed).")] = None,
    until: Annotated[float | None, typer.Option(help="Replay only events at or before this timestamp (s).")] = None,
    cpu: Annotated[int | None, typer.Option(help="Replay only events of this CPU.")] = None,
) -> None:
    """Replay a trace against a simulated KVM MMU and report checks and findings.

    Filtering with --since/--until/--cpu changes what the replay can explain (objects made
    outside the selection look like they predate the trace); the report says so.
    """
    check_format(fmt, FORMATS)
    if not to_stdout(output):
        refuse_inputs(output, [p for p in (path, qemu_log, memslots) if p is not None])
    if fail_on is not None and fail_on not in FAIL_ON:
        raise TraceError(f"--fail-on {fail_on}: unknown; choose error or warning")
    steps = Steps()
    analysis = replay_trace(
        path, qemu_log=qemu_log, memslots=memslots, kernel=kernel, since=since, until=until,
        cpu=cpu, steps=steps,
    )
    report = analysis_report(analysis, with_plots=fmt == "html", steps=steps)
    color = to_stdout(output) and fmt == "text" and sys.stdout.isatty()
    emit(render(report, fmt, color=color), output)
    if fail_on is not None and any(f.severity in FAIL_ON[fail_on] for f in report.findings):
        raise typer.Exit(1)
