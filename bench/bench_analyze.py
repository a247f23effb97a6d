"""Benchmark: ``kvmtrace analyze`` end to end against ``trace-cmd report -R`` on the same file.

Usage: python bench/bench_analyze.py [TRACE] [--runs N] [--format text|html|json|markdown]

TRACE defaults to the largest ``bench/out/*.dat`` (the lab's >= 1 M event recording). Both
commands run as fresh processes with output to /dev/null, timed by wall clock, best of N; the
ratio is analyze / trace-cmd (target <= 1.0). Run by hand; paste the printed lines into
bench/RESULTS.md under "## analyze".
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def best_of(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t0)
    return min(times)


def stages(trace: Path, fmt: str) -> dict[str, float]:
    """One in-process run split into stages, to show where the end-to-end time goes."""
    t0 = time.perf_counter()
    import kvmtrace
    from kvmtrace.analysis import Analysis
    from kvmtrace.replays import replay

    t1 = time.perf_counter()
    opened = kvmtrace.open(trace)
    t2 = time.perf_counter()
    result = replay(opened.data)
    t3 = time.perf_counter()
    Analysis(opened, result).report(fmt)
    t4 = time.perf_counter()
    return {"imports": t1 - t0, "read": t2 - t1, "replay": t3 - t2, "report": t4 - t3}


def default_trace() -> Path:
    candidates = sorted((HERE / "out").glob("*.dat"), key=lambda p: p.stat().st_size)
    if not candidates:
        sys.exit("no TRACE given and no bench/out/*.dat; record one with the lab first")
    return candidates[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace", nargs="?", type=Path)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--format", default="text")
    args = ap.parse_args()
    trace = args.trace or default_trace()
    trace_cmd = shutil.which("trace-cmd")
    if trace_cmd is None:
        sys.exit("trace-cmd is not installed (apt-get install trace-cmd)")

    events = int(subprocess.run(
        [sys.executable, "-c", f"import kvmtrace; print(kvmtrace.open({str(trace)!r}).info.total_events)"],
        capture_output=True, text=True, check=True).stdout)
    analyze = [sys.executable, "-c", "from kvmtrace.cli import main; main()",
               "analyze", str(trace), "--format", args.format, "-o", os.devnull]
    t_analyze = best_of(analyze, args.runs)
    t_report = best_of([trace_cmd, "report", "-R", str(trace)], args.runs)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"trace: {trace.name}, {trace.stat().st_size / 2**20:.1f} MiB, {events} events")
    print(f"kvmtrace analyze --format {args.format}: {t_analyze:.2f} s (best of {args.runs})")
    print(f"trace-cmd report -R > /dev/null: {t_report:.2f} s (best of {args.runs})")
    print(f"ratio analyze / trace-cmd: {t_analyze / t_report:.2f}x (target <= 1.0x)")
    split = stages(trace, args.format)
    print("in-process stages (one run): " + ", ".join(f"{k} {v:.2f} s" for k, v in split.items()))


if __name__ == "__main__":
    main()
