"""Benchmark: ``kvmtrace.batch.run`` throughput with 1 and 2 workers on the sample traces.

Usage: python bench/bench_batch.py [PATH...] [--runs N] [--engines local,dask] [--append]

PATH defaults to ``sample_traces/`` (every recording as trace.dat and as its text twin). For
each engine and worker count the whole batch runs N times (best wall time kept), JSON reports
rendered as ``kvmtrace batch`` does. ``local`` and ``dask`` include starting the process pool or
the LocalCluster (what one ``kvmtrace batch`` pays); ``dask (running)`` submits to a
LocalCluster started beforehand, the steady state of a fleet that keeps its cluster. The
in-process row is the same work on one core without any engine (the floor the engines'
overhead is measured against). Run by hand; ``--append`` adds the table to
bench/RESULTS.md under "## batch".
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from functools import partial
from pathlib import Path

from kvmtrace.batch import run
from kvmtrace.batch.inputs import expand
from kvmtrace.batch.worker import run_one

HERE = Path(__file__).resolve().parent
SAMPLES = HERE.parent / "sample_traces"


def best_of(runs: int, work) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = work()
        best = min(best, time.perf_counter() - t0)
    return best, out


def in_process(paths: list[str]) -> int:
    outcomes = [run_one(t, None, ("json",)) for t in expand(paths)]
    return sum(o.events or 0 for o in outcomes)


def running_cluster(paths: list[str], workers: int, runs: int) -> tuple[str, str, float, int]:
    from distributed import Client

    from kvmtrace.batch.engines import local_cluster

    with local_cluster(workers) as cluster, Client(cluster) as client:
        client.wait_for_workers(workers)
        secs, result = best_of(runs, lambda: run(paths, engine="dask", client=client, formats=("json",)))
    return "dask (running)", str(workers), secs, int(result.summary["events"].sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--engines", default="local,dask")
    ap.add_argument("--append", action="store_true", help="append the table to bench/RESULTS.md")
    args = ap.parse_args()
    paths = args.paths or [str(SAMPLES)]
    n = len(expand(paths))

    rows: list[tuple[str, str, float, int]] = []
    secs, events = best_of(args.runs, lambda: in_process(paths))
    rows.append(("in-process", "1", secs, events))
    for engine in args.engines.split(","):
        for workers in (1, 2):
            secs, result = best_of(args.runs, partial(run, paths, engine=engine, workers=workers, formats=("json",)))
            if result.failed.height:
                raise SystemExit(f"{result.failed.height} traces failed under {engine}; fix that before timing")
            rows.append((engine, str(workers), secs, int(result.summary["events"].sum())))
            if engine == "dask":
                rows.append(running_cluster(paths, workers, args.runs))

    load = os.getloadavg()
    lines = [
        "",
        f"`python bench/bench_batch.py --runs {args.runs}` — {n} traces ({rows[0][3]:,} events), "
        f"JSON reports rendered, best of {args.runs}; `local` and `dask` include starting the pool or the "
        f"LocalCluster, `dask (running)` submits to one started beforehand. Machine: {os.cpu_count()} CPUs "
        f"({platform.machine()}, Python {platform.python_version()}), "
        f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} while running (other work shares the cores).",
        "",
        "| engine | workers | wall s | traces/s | events/s |",
        "| --- | ---: | ---: | ---: | ---: |",
        *(f"| {e} | {w} | {s:.2f} | {n / s:.1f} | {ev / s / 1e6:.2f} M |" for e, w, s, ev in rows),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.append:
        results = HERE / "RESULTS.md"
        body = results.read_text()
        if "\n## batch" not in body:
            body = body.rstrip("\n") + "\n\n## batch\n"
        results.write_text(body.rstrip("\n") + "\n" + text)


if __name__ == "__main__":
    main()
