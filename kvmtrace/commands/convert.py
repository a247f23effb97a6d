"""``kvmtrace convert PATH OUTDIR``: one Parquet file per event plus ``events.parquet``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import kvmtrace


def convert(
    path: Annotated[Path, typer.Argument(help="trace.dat, or ftrace text (plain or compressed)")],
    outdir: Annotated[Path, typer.Argument(help="Folder to write <event>.parquet and events.parquet into")],
    instance: Annotated[str | None, typer.Option(help="Buffer instance of a trace.dat (default: top).")] = None,
    strict: Annotated[bool, typer.Option(help="Text input: fail on lines that cannot be parsed.")] = False,
) -> None:
    """Convert a trace into Parquet files (columns: seq, ts, cpu, pid, comm, then the event's fields)."""
    trace = kvmtrace.open(path, instance=instance, strict=strict)
    written = trace.to_parquet(outdir)
    typer.echo(f"wrote {len(written)} files to {outdir} ({trace.info.total_events} events)")
