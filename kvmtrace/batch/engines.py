"""Where the traces of a batch are analysed: a local process pool, or a Dask cluster.

Both engines take the same work (``run_one`` on each :class:`TraceInput`) and yield outcomes as
they complete, so the caller can write reports and move a progress bar while the rest runs.
Whatever an engine does wrong with one trace (a worker process that dies, a Dask worker that is
lost) becomes that trace's error outcome; the others continue.
"""

from __future__ import annotations

import multiprocessing
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from kvmtrace.batch.inputs import TraceInput
from kvmtrace.batch.worker import Outcome, failed, run_one

ENGINES = ("local", "dask")


@dataclass(frozen=True)
class Work:
    """What every trace of a batch is analysed with."""

    kernel: str | None = None
    formats: tuple[str, ...] = ()


def _pool(workers: int) -> ProcessPoolExecutor:
    # forkserver, not fork: polars and pyarrow run thread pools that a fork would copy in an
    # arbitrary state. The server preloads the worker module so each child starts warm.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["kvmtrace.batch.worker"])
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx)


def _round(traces: list[TraceInput], work: Work, workers: int, broken: list[TraceInput]) -> Iterator[Outcome]:
    """One process pool over ``traces``; the traces lost when a worker process died (which
    breaks the whole pool) are appended to ``broken``."""
    pool = _pool(workers)
    try:
        pending: dict[Future, TraceInput] = {pool.submit(run_one, t, work.kernel, work.formats): t for t in traces}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                trace = pending.pop(fut)
                try:
                    yield fut.result()
                except BrokenProcessPool:
                    broken.append(trace)
    finally:
        # on Ctrl-C (or a caller that stops early) do not start the traces still queued
        pool.shutdown(wait=True, cancel_futures=True)


def run_local(traces: list[TraceInput], work: Work, workers: int) -> Iterator[Outcome]:
    """A process pool of ``workers``.

    When a worker process dies (a crash, the OOM killer) Python breaks the whole pool and every
    unfinished trace with it, without saying which one was to blame. The lost traces go to a
    fresh pool; a round in which none gets through runs the first of them alone, so each
    round makes progress and only a trace that kills its own process ends as an error.
    """
    order = {t: i for i, t in enumerate(traces)}
    remaining = traces
    while remaining:
        broken: list[TraceInput] = []
        finished = 0
        for outcome in _round(remaining, work, workers, broken):
            finished += 1
            yield outcome
        broken.sort(key=order.__getitem__)
        if broken and not finished:
            first, broken = broken[0], broken[1:]
            lost: list[TraceInput] = []
            yield from _round([first], work, 1, lost)
            if lost:
                yield failed(first, "the worker process analysing this trace died (a crash, or killed: out of memory?)")
        remaining = broken


def require_distributed() -> None:
    """Fail early, in words, when the Dask engine is asked for without its extra installed."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise ImportError("the dask engine needs dask.distributed: pip install 'kvmtrace[batch]'") from None


def local_cluster(workers: int) -> Any:
    """A Dask ``LocalCluster`` of ``workers`` single-threaded processes (the replay holds the GIL
    for much of its work, so threads would not add throughput), without a dashboard: several
    batches on one machine must not fight over its port."""
    import logging

    from distributed import LocalCluster

    return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                        dashboard_address=None, silence_logs=logging.ERROR)


def run_dask(traces: list[TraceInput], work: Work, client: Any) -> Iterator[Outcome]:
    """Submit every trace to ``client`` (a ``distributed.Client``) and yield as they finish.

    The workers must be able to import kvmtrace and read the trace paths; the reports come back
    to this process, so the output folder needs to exist only here.
    """
    from distributed import as_completed

    batch = uuid.uuid4().hex[:8]  # a rerun on the same client must not reuse held results
    futures = client.map(run_one, traces, kernel=work.kernel, formats=work.formats,
                         key=[f"kvmtrace-{t.trace_id}-{batch}" for t in traces], pure=False)
    by_key = {f.key: t for f, t in zip(futures, traces)}
    for fut in as_completed(futures):
        trace = by_key[fut.key]
        try:
            yield fut.result()
        except Exception as err:
            yield failed(trace, f"the Dask worker analysing this trace failed ({type(err).__name__}: {err})")
        fut.release()


def default_workers() -> int:
    return os.cpu_count() or 1
