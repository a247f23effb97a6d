"""``kvmtrace convert PATH OUTDIR``: the trace as a Parquet dataset (layout: :mod:`kvmtrace.dataset`),
streamed window by window from a trace.dat, so that memory does not grow with the trace."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kvmtrace.dataset import trace_windows, write_dataset
from kvmtrace.parsers.output import atomic_dir, refuse_inputs


def convert(
    path: Annotated[Path, typer.Argument(help="trace.dat, or ftrace text (plain or compressed)")],
    outdir: Annotated[Path, typer.Argument(help="Folder to write the dataset into: events.parquet, gaps.parquet "
                                                "and event=NAME/part-0.parquet per event.")],
    instance: Annotated[str | None, typer.Option(help="Buffer instance of a trace.dat (default: top).")] = None,
    strict: Annotated[bool, typer.Option(help="Text input: fail on lines that cannot be parsed.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace the Parquet dataset already in OUTDIR.")] = False,
) -> None:
    """Convert a trace into a Parquet dataset (columns: seq, ts, cpu, pid, comm, then the event's fields).

    A trace.dat is read and written window by window, in memory that does not grow with its
    length; text is read whole. The dataset is built beside OUTDIR and renamed into place when
    complete. An OUTDIR that is not empty is refused unless --force, which replaces the whole dataset.
    """
    refuse_inputs(outdir, [path], param="outdir")  # before the read: a refusal should not wait for it
    with atomic_dir(outdir, force=force) as tmp:
        info = write_dataset(trace_windows(path, instance=instance, strict=strict), tmp)
        written = sum(1 for p in tmp.rglob("*.parquet"))
    typer.echo(f"wrote {written} files to {outdir} ({info.total_events} events)")
