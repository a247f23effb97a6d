"""Benchmark: ``kvmtrace.replays.replay`` throughput and how it scales with trace length.

Usage: python bench/bench_replay.py [TRACE] [--runs N]

TRACE defaults to the largest ``bench/out/*.dat`` (the lab's >= 1 M event recording). The file is
read once; the replay then runs on the first quarter, half and whole of the trace (events cut
by seq, every table alike), best of N runs each. Printed: events replayed, seconds, events/s
over all events and over kvmmmu events, and seconds per million events (flat = linear cost).
Target: >= 2 M events/s. Run by hand; paste the lines into bench/RESULTS.md under "## replay".
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import pyarrow.compute as pc

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from kvmtrace import parsers  # noqa: E402
from kvmtrace.parsers.schema import TraceData  # noqa: E402
from kvmtrace.replays import replay  # noqa: E402


def head(data: TraceData, fraction: float) -> TraceData:
    """The first ``fraction`` of the trace's events, by seq."""
    cut = int(pc.max(data.events.column("seq")).as_py() * fraction)
    return data.select(last_seq=cut)


def best_of(data: TraceData, runs: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = replay(data)
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace", nargs="?")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    trace = Path(args.trace) if args.trace else max((HERE / "out").glob("*.dat"), key=lambda p: p.stat().st_size)
    t0 = time.perf_counter()
    data = parsers.read(trace)
    read_s = time.perf_counter() - t0
    print(f"# {trace.name}: {data.events.num_rows} events, kernel {data.info.kernel}; read {read_s:.2f} s")
    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print("fraction | events | kvmmmu events | replay s | events/s | kvmmmu events/s | s per M events")
    for fraction in (0.25, 0.5, 1.0):
        part = head(data, fraction) if fraction < 1 else data
        secs, result = best_of(part, args.runs)
        n = part.events.num_rows
        print(f"{fraction:.2f} | {n} | {result.events} | {secs:.3f} | {n / secs / 1e6:.2f} M | "
              f"{result.events / secs / 1e6:.2f} M | {secs / n * 1e6:.3f}")
    print(f"# mmu {result.mmu}, zap policy {result.zap_policy}, explained {result.explained_share:.5f}")


if __name__ == "__main__":
    main()
