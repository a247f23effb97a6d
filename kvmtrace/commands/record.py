"""``kvmtrace record -o OUT.dat -- COMMAND...``: record a command's kvmmmu/kvm events."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kvmtrace.commands.common import say
from kvmtrace.record.recorder import DEFAULT_EVENTS, RecordOptions, RecordResult
from kvmtrace.record.recorder import record as run_record


def _report_loss(result: RecordResult) -> None:
    """Lost events make a replay unsound across the gap: say so, per CPU, on stderr."""
    for loss in result.loss:
        if loss.any:
            say(f"warning: CPU {loss.cpu} lost events (overrun {loss.overrun}, commit overrun "
                f"{loss.commit_overrun}, dropped {loss.dropped}, pages flagged {loss.flagged_pages}); "
                "record again with a larger --buffer-kb")


def record(
    command: Annotated[list[str], typer.Argument(help="The command to trace (after '--').", show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="trace.dat to write.")] = Path("trace.dat"),
    events: Annotated[
        list[str] | None,
        typer.Option("-e", "--events",
                     help="Event system or system:event; repeat or comma-separate. Default: kvmmmu, kvm."),
    ] = None,
    buffer_kb: Annotated[int, typer.Option(help="Per-CPU ring buffer size in KiB (0 keeps the current size).")] = 8192,
    clock: Annotated[str, typer.Option(help="Trace clock (see tracefs trace_clock).")] = "global",
    text: Annotated[
        bool,
        typer.Option(help="Also save the kernel's text rendering as OUT.txt.gz (the buffer is then read only at "
                     "the end: size --buffer-kb for the whole run)."),
    ] = False,
    backend: Annotated[str, typer.Option(help="auto (trace-cmd if installed), trace-cmd, or native.")] = "auto",
    file_version: Annotated[int, typer.Option(help="trace.dat version: 7 or 6.")] = 7,
    compression: Annotated[str, typer.Option(help="v7 compression: zstd, zlib or none (native backend).")] = "zstd",
    kallsyms: Annotated[bool, typer.Option(help="Store /proc/kallsyms (about 1 MB compressed).")] = True,
) -> None:
    """Record kvmmmu and kvm events while COMMAND runs, into a trace.dat.

    tracefs is left as found (events, tracing_on, buffer_size_kb, trace_clock), also on Ctrl-C
    or error. One recording at a time per machine (lock /run/kvmtrace-rec.lock). Exits with
    COMMAND's status.
    """
    items = tuple(part for item in (events or DEFAULT_EVENTS) for part in item.split(",") if part)
    result = run_record(
        RecordOptions(
            output=output,
            command=tuple(command),
            events=items,
            buffer_kb=buffer_kb or None,
            clock=clock,
            text=text,
            backend=backend,
            file_version=file_version,
            compression=compression if file_version >= 7 else "none",
            kallsyms=kallsyms,
        )
    )
    _report_loss(result)
    written = f"{result.output}" + (f" and {result.text_output}" if result.text_output else "")
    say(f"wrote {written} ({result.backend})")
    raise typer.Exit(result.command.status)
