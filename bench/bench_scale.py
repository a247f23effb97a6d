"""Benchmark: ``analyze`` by trace length: is the time linear, and what does memory do?

Usage: python bench/bench_scale.py [--source TRACE] [--copies N ...] [--baseline COMMIT] [--runs R] [--format F]
       python bench/bench_scale.py --trace TRACE... [--baseline COMMIT] [--runs R] [--format F] [--qemu-log LOG]

No recording: the long traces are HAND-MADE from a real one (default: ``bench/out/bench-multi.dat``
if it was recorded, else the largest sample), its pages repeated per CPU with their time stamps
moved past the previous copy (``tests/tracedat_builder.repeated_tracedat``): N copies read as N
runs of the same workload back to back, with every memslot change N times. Each analysis runs in
a fresh process (what ``kvmtrace analyze TRACE -o /dev/null`` does: read, replay, report: text,
or ``--format json|html|markdown``, written as ``analyze`` writes it; ``--keep all`` reads every
event instead of what the analysis reads, ``kvmtrace.open``'s ``keep``);
its peak RSS is the process's own ``VmHWM``. With ``--baseline COMMIT`` the same runs use the
code of an earlier commit too (``bench_stream.checkout``), interleaved with the current code.
``--trace`` measures the given traces as they are instead (real long recordings:
``lab/record-samples.sh long`` makes them). Prints a Markdown table for bench/RESULTS.md
("## analyze by trace length").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))

from bench_stream import checkout  # noqa: E402
from tracedat_builder import repeated_tracedat  # noqa: E402

_CHILD = """
import json, sys, time, warnings
warnings.simplefilter("ignore")
import kvmtrace
t0, c0 = time.perf_counter(), time.process_time()
log = sys.argv[4] if len(sys.argv) > 4 else None
try:  # what `kvmtrace analyze` reads; code older than a keep= value (a --baseline commit) reads everything
    t = kvmtrace.open(sys.argv[1], keep=sys.argv[2])
except (TypeError, ValueError):
    t = kvmtrace.open(sys.argv[1])
a = t.analyze(qemu_log=log) if log else t.analyze()
# as `kvmtrace analyze -o FILE` writes it (code older than report_parts made the text whole)
parts = a.report_parts(sys.argv[3]) if hasattr(a, "report_parts") else [a.report(sys.argv[3])]
with open("/dev/null", "w") as out:
    out.writelines(parts)
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
with open("/proc/self/status") as f:
    peak = int(next(line.split()[1] for line in f if line.startswith("VmHWM:")))
print(json.dumps({"wall": wall, "cpu": cpu, "rss_peak_kb": peak, "events": a.trace.info.total_events,
                  "code": kvmtrace.__file__}))
"""


def _source() -> Path:
    bench = REPO / "bench" / "out" / "bench-multi.dat"
    return bench if bench.exists() else max((REPO / "sample_traces").glob("*.dat"), key=lambda p: p.stat().st_size)


def analyze_child(trace: Path, pythonpath: Path | None, keep: str = "analysis",
                  preexec: Callable[[], None] | None = None, fmt: str = "text",
                  qemu_log: Path | None = None) -> subprocess.CompletedProcess[str]:
    """One analysis in a fresh process (the code at ``pythonpath``, else the installed one);
    ``preexec`` runs in the child before it starts (bench_limit.py: joining a memory cgroup)."""
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    # cwd: not the repository, whose kvmtrace/ would come first on the child's path
    log = [str(qemu_log.resolve())] if qemu_log is not None else []
    return subprocess.run([sys.executable, "-c", _CHILD, str(trace), keep, fmt, *log], capture_output=True, text=True,
                          env=env, cwd=trace.parent, preexec_fn=preexec)


def run(trace: Path, pythonpath: Path | None, keep: str = "analysis", fmt: str = "text",
        qemu_log: Path | None = None) -> dict:
    done = analyze_child(trace, pythonpath, keep, fmt=fmt, qemu_log=qemu_log)
    if done.returncode:
        raise SystemExit(f"analyze {trace} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if pythonpath is not None and not result["code"].startswith(str(pythonpath)):
        raise SystemExit(f"ran {result['code']}, not the code in {pythonpath}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=None, help="real trace.dat whose pages are repeated")
    ap.add_argument("--copies", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--baseline", default=None, help="also run the code of this commit")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--trace", type=Path, nargs="+", default=None, help="measure these traces, no repetition")
    ap.add_argument("--keep", choices=("analysis", "all"), default="analysis",
                    help="what the analysis reads: what `kvmtrace analyze` reads (default), or every event")
    ap.add_argument("--qemu-log", type=Path, default=None,
                    help="analyze with this QEMU log (read as `kvmtrace analyze --qemu-log` reads: "
                         "keep=analysis+log; code before that value reads every event)")
    ap.add_argument("--format", choices=("text", "markdown", "html", "json"), default="text",
                    help="the report written (to /dev/null)")
    args = ap.parse_args()
    source = args.source or _source()
    keep = "analysis+log" if args.qemu_log is not None and args.keep == "analysis" else args.keep
    with tempfile.TemporaryDirectory(prefix="kvmtrace-scale-") as tmp:
        codes: dict[str, Path | None] = {"now": None}
        if args.baseline:
            codes[f"@{args.baseline}"] = checkout(args.baseline, Path(tmp) / "baseline")
        load = os.getloadavg()[0]
        print(f"# source {source.name}; {args.format} report; keep={keep}; {platform.python_version()}, "
              f"{os.cpu_count()} CPUs, load {load:.1f}")
        print("| code | copies or trace | events | wall | CPU | events/s (CPU) | peak RSS | bytes/event |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for copies in ([None] if args.trace else args.copies):
            traces = args.trace or [Path(tmp) / f"x{copies}.dat"]
            if copies is not None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    repeated_tracedat(source, traces[0], copies, compression="zstd")
            for trace in traces:
                for name, code in codes.items():
                    best = min((run(trace.resolve(), code, keep, args.format, args.qemu_log) for _ in range(args.runs)),
                               key=lambda r: r["cpu"])
                    ev = best["events"]
                    print(f"| {name} | {copies or trace.name} | {ev:,} | {best['wall']:.2f} s | {best['cpu']:.2f} s | "
                          f"{ev / best['cpu'] / 1e6:.2f} M | {best['rss_peak_kb'] / 1024:.0f} MiB | "
                          f"{best['rss_peak_kb'] * 1024 / ev:.0f} |", flush=True)
            if copies is not None:
                traces[0].unlink()

if __name__ == "__main__":
    main()
