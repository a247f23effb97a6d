"""``run(paths, engine=...)``: a batch of traces analysed on an engine, as polars frames.

The fleet tables are built in the order the traces were given (not the order workers finished
them), so two runs of the same batch on different engines give identical tables.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import polars as pl

from kvmtrace.batch.engines import (
    ENGINES,
    Work,
    default_workers,
    local_cluster,
    require_distributed,
    run_dask,
    run_local,
)
from kvmtrace.batch.inputs import TraceInput, expand
from kvmtrace.batch.tables import as_frames
from kvmtrace.batch.worker import REPORT_FORMATS, Outcome

#: --fail-on threshold -> severities that meet it
FAIL_ON: dict[str, tuple[str, ...]] = {"error": ("error",), "warning": ("error", "warning")}


@dataclass(frozen=True)
class BatchResult:
    """The fleet tables of one batch (see :mod:`kvmtrace.batch.tables` for their columns)."""

    traces: tuple[TraceInput, ...]
    findings: pl.DataFrame  # every finding, with its trace's id, path, kernel, host, MMU, policy
    checks: pl.DataFrame  # every check of every analysed trace
    summary: pl.DataFrame  # one row per trace: ok | error, counts, explained share, duration
    whatif: pl.DataFrame  # per trace and zap policy: what the policy would have destroyed

    @property
    def failed(self) -> pl.DataFrame:
        """The summary rows of the traces that could not be analysed."""
        return self.summary.filter(pl.col("status") == "error")

    def meets(self, fail_on: str) -> bool:
        """Whether any trace has a finding of severity ``fail_on`` (error|warning) or worse."""
        return self.findings.filter(pl.col("severity").is_in(FAIL_ON[fail_on])).height > 0


@contextlib.contextmanager
def _dask_client(client: Any, scheduler: str | None, workers: int | None) -> Iterator[Any]:
    """The caller's client as is; else a client of ``scheduler``, or of a new LocalCluster,
    closed again when the batch ends."""
    if client is not None:
        yield client
        return
    from distributed import Client

    if scheduler is not None:
        with Client(scheduler) as own:
            yield own
        return
    with local_cluster(workers or default_workers()) as cluster, Client(cluster) as own:
        yield own


def _outcomes(traces: list[TraceInput], work: Work, engine: str, client: Any, scheduler: str | None,
              workers: int | None) -> Iterator[Outcome]:
    if not traces:
        return
    if engine == "local":
        yield from run_local(traces, work, min(workers or default_workers(), len(traces)))
        return
    with _dask_client(client, scheduler, workers) as dask:
        yield from run_dask(traces, work, dask)


def run(
    paths: list[str | os.PathLike[str]],
    engine: str = "local",
    client: Any = None,
    workers: int | None = None,
    kernel: str | None = None,
    *,
    scheduler: str | None = None,
    formats: tuple[str, ...] = (),
    on_outcome: Callable[[Outcome], None] | None = None,
) -> BatchResult:
    """Analyse every trace of ``paths`` (files, or folders of traces) on ``engine``.

    ``engine="local"`` is a process pool of ``workers`` (default: one per CPU); ``engine="dask"``
    runs on ``client`` (a ``distributed.Client``), else on the scheduler at ``scheduler``, else
    on a LocalCluster of ``workers`` single-threaded processes. ``kernel`` is assumed for every
    trace, as ``kvmtrace analyze --kernel``. ``on_outcome`` sees each trace's outcome as soon as
    it is done, with its reports rendered in ``formats`` (json, html); the result keeps only the
    table rows.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: unknown; choose one of {', '.join(ENGINES)}")
    if engine == "local" and (client is not None or scheduler is not None):
        raise ValueError("a Dask client or scheduler needs engine='dask'")
    if client is not None and scheduler is not None:
        raise ValueError("give a Dask client or a scheduler address, not both")
    if workers is not None and workers < 1:
        raise ValueError(f"workers={workers}: need at least one")
    unknown = set(formats) - set(REPORT_FORMATS)
    if unknown:
        raise ValueError(f"report formats {sorted(unknown)}: unknown; choose from {', '.join(REPORT_FORMATS)}")
    if engine == "dask":
        require_distributed()
    traces = expand(paths)
    done: dict[str, Outcome] = {}
    for outcome in _outcomes(traces, Work(kernel, tuple(formats)), engine, client, scheduler, workers):
        if on_outcome is not None:
            on_outcome(outcome)
        done[outcome.trace.trace_id] = dataclasses.replace(outcome, reports={})
    frames = as_frames(done[t.trace_id] for t in traces)
    return BatchResult(traces=tuple(traces), **frames)
