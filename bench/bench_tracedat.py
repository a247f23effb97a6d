"""Benchmark: the trace.dat reader against ``trace-cmd report -R FILE > /dev/null``.

Usage: python bench/bench_tracedat.py [TRACE] [--runs N]

TRACE defaults to the largest ``bench/out/*.dat`` (the lab's >= 1 M event kvmmmu recording),
else the largest real recording in ``sample_traces/``. Each decode runs in a fresh process
(``read_tracedat`` to Arrow tables, nothing printed) so its peak RSS is its own; trace-cmd runs
with output to /dev/null. Both are timed in wall clock and CPU seconds, best of N: on a shared
machine wall time includes waiting for a core, CPU time does not. Prints lines to paste into
bench/RESULTS.md under "## trace.dat reader".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

_CHILD = """
import json, sys, time, warnings
warnings.simplefilter("ignore")
def hwm_kb():  # the process's own peak: ru_maxrss is kept across fork and exec (the parent's peak)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
from kvmtrace.parsers.tracedat import read_tracedat
base = hwm_kb()
t0, c0 = time.perf_counter(), time.process_time()
data = read_tracedat(sys.argv[1])
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
peak = hwm_kb()
print(json.dumps({"wall": wall, "cpu": cpu, "events": data.info.total_events,
                  "rss_base_kb": base, "rss_peak_kb": peak}))
"""


def default_trace() -> Path:
    for folder in (HERE / "out", REPO / "sample_traces"):
        found = sorted(folder.glob("*.dat"), key=lambda p: p.stat().st_size)
        if found:
            return found[-1]
    sys.exit("no TRACE given and no bench/out/*.dat or sample_traces/*.dat")


def decode_once(path: Path) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, check=True,
                         env=env, cwd=REPO)
    return json.loads(out.stdout)


def trace_cmd_once(exe: str, path: Path) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([exe, "report", "-R", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("trace", nargs="?", type=Path)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    path = args.trace or default_trace()
    runs = [decode_once(path) for _ in range(args.runs)]
    events = int(runs[0]["events"])
    wall = min(r["wall"] for r in runs)
    cpu = min(r["cpu"] for r in runs)
    peak = min(r["rss_peak_kb"] for r in runs) * 1024
    base = min(r["rss_base_kb"] for r in runs) * 1024
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"file: {path.name}, {path.stat().st_size / 1e6:.1f} MB, {events} events")
    print(f"reader: wall {wall:.3f} s ({events / wall / 1e6:.2f} M events/s), "
          f"cpu {cpu:.3f} s ({events / cpu / 1e6:.2f} M events/s)")
    print(f"reader peak RSS: {peak / 1e6:.0f} MB total = {peak / events:.0f} bytes/event; "
          f"above the {base / 1e6:.0f} MB of an idle interpreter with the imports: "
          f"{(peak - base) / events:.0f} bytes/event")
    exe = shutil.which("trace-cmd")
    if exe is None:
        print("trace-cmd not installed: no ratio")
        return
    tc = [trace_cmd_once(exe, path) for _ in range(args.runs)]
    tc_wall, tc_cpu = min(t[0] for t in tc), min(t[1] for t in tc)
    print(f"trace-cmd report -R > /dev/null: wall {tc_wall:.3f} s, cpu {tc_cpu:.3f} s")
    print(f"ratio reader / trace-cmd: wall {wall / tc_wall:.3f}, cpu {cpu / tc_cpu:.3f} (target <= 0.2)")


if __name__ == "__main__":
    main()
