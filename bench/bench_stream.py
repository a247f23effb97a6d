"""Benchmark: ``kvmtrace convert`` streaming (windows) against the whole-file path, by trace length.

Usage: python bench/bench_stream.py [--source TRACE] [--events N ...] [--before-max N] [--keep DIR]

No recording: the long traces are HAND-MADE from a real one (default: the largest sample), its
pages repeated per CPU with their time stamps moved past the previous copy
(``tests/tracedat_builder.repeated_tracedat``), and written as trace.dat v7 with zstd chunks, as
the native recorder writes. Each conversion runs in a fresh process (so its peak RSS, from
``getrusage``, is its own):

- before: ``kvmtrace.open(path).to_parquet(out)``: the whole-file read, then the same dataset
  (when these results were taken it wrote one flat file per event);
- after: what ``kvmtrace convert`` now runs: ``write_dataset(trace_windows(path), out)``.

"before" is skipped above ``--before-max`` events (it needs ~160 bytes an event). Prints a
Markdown table for bench/RESULTS.md ("## streaming convert").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))

from tracedat_builder import repeated_tracedat  # noqa: E402

_CHILD = """
import json, pathlib, resource, sys, time, warnings
warnings.simplefilter("ignore")
mode, src, out = sys.argv[1:4]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0, c0 = time.perf_counter(), time.process_time()
if mode == "before":
    import kvmtrace
    kvmtrace.open(src).to_parquet(out)
    events = None
else:
    from kvmtrace.dataset import trace_windows, write_dataset
    from kvmtrace.report.output import atomic_dir
    with atomic_dir(out) as tmp:
        events = write_dataset(trace_windows(src), tmp).total_events
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"wall": wall, "cpu": cpu, "events": events, "rss_base_kb": base, "rss_peak_kb": peak}))
"""


def _largest_sample() -> Path:
    return max((REPO / "sample_traces").glob("*.dat"), key=lambda p: p.stat().st_size)


def _count(path: Path) -> int:
    from kvmtrace.parsers import read

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read(path).info.total_events


def run(mode: str, trace: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    done = subprocess.run([sys.executable, "-c", _CHILD, mode, str(trace), str(out)], capture_output=True,
                          text=True, cwd=REPO)
    if done.returncode:
        raise SystemExit(f"{mode} on {trace} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    shutil.rmtree(out, ignore_errors=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=None, help="real trace.dat whose pages are repeated")
    ap.add_argument("--events", type=float, nargs="+", default=[1e6, 1e7, 5e7], help="trace lengths to build")
    ap.add_argument("--before-max", type=float, default=1.2e7, help="longest trace to run the whole-file path on")
    ap.add_argument("--keep", type=Path, default=None, help="folder for the built traces (default: a temp folder)")
    args = ap.parse_args()
    source = args.source or _largest_sample()
    per_copy = _count(source)
    work = args.keep or Path(tempfile.mkdtemp(prefix="kvmtrace-bench-stream-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"# source {source.name}: {per_copy} events a copy; {platform.python_version()}, {os.cpu_count()} CPUs")
    print("| events | trace.dat | path | wall s | CPU s | events/s (CPU) | peak RSS MiB |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    try:
        for want in args.events:
            copies = max(1, round(want / per_copy))
            trace = work / f"long-{copies}.dat"
            if not trace.exists():
                repeated_tracedat(source, trace, copies)
            events = per_copy * copies
            size = trace.stat().st_size / (1 << 20)
            for mode in ("before", "after"):
                if mode == "before" and events > args.before_max:
                    print(f"| {events:,} | {size:.0f} MiB | before | skipped (needs ~{events * 160 >> 20} MiB) | | | |")
                    continue
                r = run(mode, trace, work / "out")
                assert r["events"] in (None, events), r
                print(f"| {events:,} | {size:.0f} MiB | {mode} | {r['wall']:.1f} | {r['cpu']:.1f} | "
                      f"{events / r['cpu']:,.0f} | {r['rss_peak_kb'] / 1024:.0f} |", flush=True)
            if args.keep is None:
                trace.unlink()
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
