"""``kvmtrace convert PATH OUTDIR``: one Parquet file per event plus ``events.parquet``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import kvmtrace
from kvmtrace.report.output import refuse_inputs


def convert(
    path: Annotated[Path, typer.Argument(help="trace.dat, or ftrace text (plain or compressed)")],
    outdir: Annotated[Path, typer.Argument(help="Folder to write EVENT.parquet per event and events.parquet into.")],
    instance: Annotated[str | None, typer.Option(help="Buffer instance of a trace.dat (default: top).")] = None,
    strict: Annotated[bool, typer.Option(help="Text input: fail on lines that cannot be parsed.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace the Parquet dataset already in OUTDIR.")] = False,
) -> None:
    """Convert a trace into Parquet files (columns: seq, ts, cpu, pid, comm, then the event's fields).

    The dataset is built beside OUTDIR and renamed into place when complete. An OUTDIR that is
    not empty is refused unless --force, which replaces the whole dataset.
    """
    refuse_inputs(outdir, [path], param="outdir")  # before the read: a refusal should not wait for it
    trace = kvmtrace.open(path, instance=instance, strict=strict)
    written = trace.to_parquet(outdir, force=force)
    typer.echo(f"wrote {len(written)} files to {outdir} ({trace.info.total_events} events)")
