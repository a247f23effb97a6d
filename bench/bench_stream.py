"""Benchmark: ``kvmtrace convert`` streaming (windows) against the whole-file path, by trace length.

Usage: python bench/bench_stream.py [--source TRACE] [--events N ...] [--whole-max N] [--runs R]
                                    [--baseline COMMIT] [--keep DIR]

No recording: the long traces are HAND-MADE from a real one (default: the largest sample), its
pages repeated per CPU with their time stamps moved past the previous copy
(``tests/tracedat_builder.repeated_tracedat``), and written as trace.dat v7 with zstd chunks, as
the native recorder writes. Each conversion runs in a fresh process, and its peak RSS is that
process's own high-water mark (``VmHWM`` in ``/proc/self/status``; not ``getrusage``'s
``ru_maxrss``, which in a child starts from the parent's peak: building a 50 M-event trace here
peaks at ~1.5 GiB, and an earlier version of this script reported that as the conversion's):

- whole: ``kvmtrace.open(path).to_parquet(out)``: the whole-file read, then the same dataset;
- stream: what ``kvmtrace convert`` runs: ``write_dataset(trace_windows(path), out)``;
- stream@COMMIT (with ``--baseline COMMIT``): the same, with the code of an earlier commit
  (extracted with ``git archive`` into a temporary folder and put first on ``PYTHONPATH``), so
  that a change is measured against its predecessor in the same minutes.

The paths run interleaved, ``--runs`` times each; the table gives the best CPU time of each and
the largest peak RSS seen. "whole" is skipped above ``--whole-max`` events (it needs ~110 bytes
an event). The load average is printed with each trace length: the machine may be shared.
Prints a Markdown table for bench/RESULTS.md ("## streaming convert").
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
import json, pathlib, sys, time, warnings
warnings.simplefilter("ignore")
mode, src, out = sys.argv[1:4]
import kvmtrace, kvmtrace.dataset
from kvmtrace.dataset import trace_windows, write_dataset
from kvmtrace.parsers.output import atomic_dir
with open("/proc/self/statm") as f:
    imported = int(f.read().split()[1]) * 4
t0, c0 = time.perf_counter(), time.process_time()
if mode == "whole":
    kvmtrace.open(src).to_parquet(out)
else:
    with atomic_dir(pathlib.Path(out)) as tmp:
        write_dataset(trace_windows(src), tmp)
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
with open("/proc/self/status") as f:
    peak = int(next(line.split()[1] for line in f if line.startswith("VmHWM:")))
print(json.dumps({"wall": wall, "cpu": cpu, "rss_peak_kb": peak, "rss_imported_kb": imported,
                  "code": kvmtrace.dataset.__file__}))
"""


def _largest_sample() -> Path:
    return max((REPO / "sample_traces").glob("*.dat"), key=lambda p: p.stat().st_size)


def _count(path: Path) -> int:
    from kvmtrace.parsers import read

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read(path).info.total_events


def checkout(commit: str, into: Path) -> Path:
    """The package tree of ``commit``, importable from ``into`` (``parsers/`` and ``replays/``
    linked under ``kvmtrace/`` as the installed package names them)."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    for sub in ("parsers", "replays"):
        (into / "kvmtrace" / sub).symlink_to(Path("..") / sub)
    return into


def run(mode: str, trace: Path, out: Path, pythonpath: Path | None) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    done = subprocess.run([sys.executable, "-c", _CHILD, mode.split("@")[0], str(trace), str(out)],
                          capture_output=True, text=True, cwd=out.parent, env=env)
    if done.returncode:
        raise SystemExit(f"{mode} on {trace} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if pythonpath is not None and not result["code"].startswith(str(pythonpath)):
        raise SystemExit(f"{mode} ran {result['code']}, not the code in {pythonpath}")
    shutil.rmtree(out, ignore_errors=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=None, help="real trace.dat whose pages are repeated")
    ap.add_argument("--events", type=float, nargs="+", default=[1e6, 1e7, 5e7], help="trace lengths to build")
    ap.add_argument("--whole-max", type=float, default=1.2e7, help="longest trace to run the whole-file path on")
    ap.add_argument("--runs", type=int, default=3, help="runs of each path (interleaved); best CPU time kept")
    ap.add_argument("--baseline", default=None, help="an earlier commit whose streaming convert runs alongside")
    ap.add_argument("--keep", type=Path, default=None, help="folder for the built traces (default: a temp folder)")
    args = ap.parse_args()
    source = args.source or _largest_sample()
    per_copy = _count(source)
    work = args.keep or Path(tempfile.mkdtemp(prefix="kvmtrace-bench-stream-"))
    work.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="kvmtrace-bench-stream-run-"))
    paths: dict[str, Path | None] = {"whole": None, "stream": None}
    if args.baseline:
        paths[f"stream@{args.baseline}"] = checkout(args.baseline, scratch / "baseline")
    print(f"# source {source.name}: {per_copy} events a copy; {platform.python_version()}, {os.cpu_count()} CPUs")
    print("| events | trace.dat | path | wall s | CPU s | events/s (CPU) | peak RSS MiB | after imports MiB "
          "| load avg |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---|")
    try:
        for want in args.events:
            copies = max(1, round(want / per_copy))
            trace = work / f"long-{copies}.dat"
            if not trace.exists():
                repeated_tracedat(source, trace, copies)
            events = per_copy * copies
            size = trace.stat().st_size / (1 << 20)
            modes = [m for m in paths if m != "whole" or events <= args.whole_max]
            results: dict[str, list[dict]] = {m: [] for m in modes}
            load = [os.getloadavg()[0]]
            for _ in range(args.runs):
                for mode in modes:
                    results[mode].append(run(mode, trace, scratch / "out", paths[mode]))
            load.append(os.getloadavg()[0])
            for mode in paths:
                if mode not in modes:
                    print(f"| {events:,} | {size:.0f} MiB | {mode} | skipped (needs ~{events * 110 >> 20} MiB) "
                          "| | | | | |")
                    continue
                best = min(results[mode], key=lambda r: r["cpu"])
                peak = max(r["rss_peak_kb"] for r in results[mode])
                imported = max(r["rss_imported_kb"] for r in results[mode])
                print(f"| {events:,} | {size:.0f} MiB | {mode} | {best['wall']:.1f} | {best['cpu']:.1f} | "
                      f"{events / best['cpu']:,.0f} | {peak / 1024:.0f} | {imported / 1024:.0f} | "
                      f"{load[0]:.1f}-{load[1]:.1f} |", flush=True)
            if args.keep is None:
                trace.unlink()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
