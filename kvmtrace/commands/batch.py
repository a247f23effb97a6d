"""``kvmtrace batch PATH... -o OUTDIR``: analyse a fleet of traces into Parquet tables and reports."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kvmtrace.batch.engines import ENGINES, require_distributed
from kvmtrace.batch.fleet import FAIL_ON, run
from kvmtrace.batch.inputs import expand
from kvmtrace.batch.output import TABLES, OutputFolder, check_outdir
from kvmtrace.batch.summary import SUMMARY_FORMATS, render_summary
from kvmtrace.batch.worker import Outcome
from kvmtrace.commands.common import say
from kvmtrace.parsers.errors import TraceError


def _choice(value: str | None, allowed, option: str) -> None:
    if value is not None and value not in allowed:
        raise typer.BadParameter(f"{value}: unknown; choose one of {', '.join(allowed)}", param_hint=option)


class _Progress:
    """A progress bar on stderr, only when stderr is a terminal (CI logs stay clean)."""

    def __init__(self, total: int):
        console = Console(stderr=True)
        self.bar = Progress(TextColumn("analysing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=console, transient=True) if console.is_terminal else None
        self.total = total

    def __enter__(self) -> Callable[[], None]:
        bar = self.bar
        if bar is None:
            return lambda: None
        bar.start()
        task = bar.add_task("traces", total=self.total)
        return lambda: bar.advance(task)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def batch(
    paths: Annotated[list[Path], typer.Argument(help="Traces (trace.dat or ftrace text), or folders of them.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder (created whole, atomically).")],
    engine: Annotated[str, typer.Option(help="local (a process pool) or dask (dask.distributed).")] = "local",
    scheduler: Annotated[str | None, typer.Option(
        help="Address of a running Dask scheduler (--engine dask); default: a LocalCluster.")] = None,
    workers: Annotated[int | None, typer.Option(
        min=1, help="Worker processes (local pool or LocalCluster); default: one per CPU.")] = None,
    kernel: Annotated[str | None, typer.Option(
        help="Kernel version to assume for every trace (default: from each trace).")] = None,
    html: Annotated[bool, typer.Option(
        "--html", help="Also write each trace's HTML report (with plots; slower).")] = False,
    fmt: Annotated[str, typer.Option("--format", "-f", help="Fleet summary: text (also printed) or html.")] = "text",
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty output folder.")] = False,
    fail_on: Annotated[str | None, typer.Option(
        help="Exit 1 if any trace has a finding of this severity (error|warning) or worse.")] = None,
) -> None:
    """Analyse many traces, each exactly as `kvmtrace analyze` would, on a process pool or Dask.

    OUTDIR gets findings.parquet, checks.parquet, summary.parquet (one row per trace, failed
    ones included), whatif.parquet, reports/<trace id>.json (and .html with --html) and the
    fleet summary. A trace that cannot be analysed is a row with its error; the batch goes on.
    """
    _choice(engine, ENGINES, "--engine")
    _choice(fmt, SUMMARY_FORMATS, "--format")
    _choice(fail_on, tuple(FAIL_ON), "--fail-on")
    if engine == "local" and scheduler is not None:
        raise typer.BadParameter("needs --engine dask", param_hint="--scheduler")
    if scheduler is not None and workers is not None:
        raise typer.BadParameter("a running scheduler has its own workers; drop --workers", param_hint="--workers")
    if engine == "dask":
        try:
            require_distributed()
        except ImportError as err:
            raise typer.BadParameter(str(err), param_hint="--engine") from None
    check_outdir(output, force)
    traces = expand(paths)
    if not traces:
        raise TraceError(f"no traces found in {', '.join(map(str, paths))} (folders: *.dat and ftrace text files)")
    formats = ("json", "html") if html else ("json",)
    with OutputFolder(output, force) as folder, _Progress(len(traces)) as advance:
        def done(outcome: Outcome) -> None:
            folder.write_reports(outcome)
            advance()

        result = run([t.path for t in traces], engine=engine, workers=workers, kernel=kernel,
                     scheduler=scheduler, formats=formats, on_outcome=done)
        for name in TABLES:
            folder.write_table(name, getattr(result, name))
        summary = render_summary(result, fmt)
        folder.write_text(f"summary.{'txt' if fmt == 'text' else 'html'}", summary)
    if fmt == "text":
        sys.stdout.write(summary)
        sys.stdout.flush()
    failed = result.failed.height
    if failed:
        say(f"warning: {failed} of {len(traces)} traces could not be analysed; see {output / 'summary.parquet'}")
    if fail_on is not None and result.meets(fail_on):
        raise typer.Exit(1)
