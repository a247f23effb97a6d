"""``kvmtrace analyze PATH``: the report a bug report starts with — one call on :class:`kvmtrace.Analysis`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

import kvmtrace
from kvmtrace.commands.common import ReportFormat, ReportOutput, Steps, check_format, emit, output_file
from kvmtrace.parsers.errors import TraceError
from kvmtrace.parsers.output import refuse_inputs
from kvmtrace.report import FORMATS

FAIL_ON = ("error", "warning")


def analyze(
    path: Annotated[Path, typer.Argument(metavar="PATH", help="trace.dat, or ftrace text (plain or compressed).")],
    fmt: ReportFormat = "text",
    output: ReportOutput = None,
    qemu_log: Annotated[Path | None, typer.Option(
        metavar="FILE", help="QEMU -trace log with kvm_set_user_memory lines.")] = None,
    memslots: Annotated[Path | None, typer.Option(
        metavar="FILE",
        help='Starting memslot layout (JSON): {"slots": [{"slot", "gpa", "size", "flags", "as_id"}]}; '
        "the trace's own memslot changes still apply.")] = None,
    kernel: Annotated[str | None, typer.Option(
        metavar="RELEASE", help="Kernel release to assume, e.g. 6.12 (default: from the trace).")] = None,
    zap_rule: Annotated[str | None, typer.Option(
        metavar="NAME", help="Per-slot zap rule to assume, by name (default: the kernel's).")] = None,
    fail_on: Annotated[str | None, typer.Option(
        metavar="SEVERITY", help="Exit 1 if a reported finding is this severe (error|warning) or worse.")] = None,
    since: Annotated[float | None, typer.Option(
        metavar="SECONDS", help="Report only events at or after this timestamp (s, as printed).")] = None,
    until: Annotated[float | None, typer.Option(
        metavar="SECONDS", help="Report only events at or before this timestamp (s, as printed).")] = None,
    cpu: Annotated[list[int] | None, typer.Option(
        metavar="CPU", help="Report only events of this CPU (repeat for several).")] = None,
) -> None:
    """Replay a trace against a simulated KVM MMU and report checks and findings.

    --since, --until and --cpu choose what is reported; the replay always runs over the whole
    trace, so a memslot change or shadow page outside the selection still counts.

    A trace.dat is read in windows and only the events the replay reads are held, so a long
    trace needs far less memory than every event would (same report).
    """
    check_format(fmt, FORMATS)
    if fail_on is not None and fail_on not in FAIL_ON:
        raise TraceError(f"--fail-on {fail_on}: unknown", hint="choose error or warning")
    target = output_file(output)
    if target is not None:
        refuse_inputs(target, [p for p in (path, qemu_log, memslots) if p is not None])
    steps = Steps()
    # Only what the replay reads is held (kvmtrace.open), a selection and a QEMU log's placement included.
    with steps.step(f"reading {path}"):
        trace = kvmtrace.open(path, keep="analysis+log" if qemu_log is not None else "analysis")
    with steps.step("replaying the MMU"):
        analysis = trace.analyze(kernel=kernel, qemu_log=qemu_log, memslots=memslots, since=since, until=until,
                                 cpus=cpu, zap_rule=zap_rule)
    with steps.step("writing the report"):
        parts = analysis.report_parts(fmt, color=target is None and fmt == "text" and sys.stdout.isatty())
        if target is not None:  # a long trace's JSON is written as it is made, never whole in memory
            emit(parts, target)
    if target is None:  # after the progress line is gone from the terminal
        emit(parts, None)
    if fail_on is not None and analysis.failed(fail_on):
        raise typer.Exit(1)
