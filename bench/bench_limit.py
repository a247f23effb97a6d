"""Benchmark: does ``analyze`` finish inside a memory limit the kernel enforces?

Usage (as root, with a cgroup v1 or v2 memory controller):
    python bench/bench_limit.py TRACE --limit MIB [MIB ...] [--baseline COMMIT]

Why: peak RSS (``VmHWM``, what bench_scale.py reports) counts the pages of mapped files the
process has read, and those are the kernel's to take back under pressure: the tables a read for
one analysis keeps on disk (:mod:`kvmtrace.parsers.spilled`) are such pages. Whether a trace can
be analysed in N MiB is told by running the analysis in a memory cgroup limited to N MiB, which
charges the page cache too and reclaims it before it kills anything: a run either finishes or is
OOM-killed. Each run is a fresh process (what ``kvmtrace analyze TRACE`` does: read, replay,
text report), after the page cache is dropped so that every run reads the trace from disk and
pays for its own cache. ``--baseline COMMIT`` runs that commit's code too (bench_stream.checkout).
Prints a Markdown table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench_scale import analyze_child
from bench_stream import checkout

_V2 = Path("/sys/fs/cgroup")
_V1 = Path("/sys/fs/cgroup/memory")


@dataclass(frozen=True)
class MemoryCgroup:
    """A memory cgroup of one limit: created on entry, removed on exit."""

    path: Path
    limit_file: str  # v2 memory.max, v1 memory.limit_in_bytes
    peak_file: str  # v2 memory.peak (kernel 5.19+), v1 memory.max_usage_in_bytes

    @classmethod
    def make(cls, name: str, limit: int) -> MemoryCgroup:
        controllers = _V2 / "cgroup.controllers"
        if controllers.exists() and "memory" in controllers.read_text().split():
            group = cls(_V2 / name, "memory.max", "memory.peak")
        elif _V1.is_dir():
            group = cls(_V1 / name, "memory.limit_in_bytes", "memory.max_usage_in_bytes")
        else:
            raise SystemExit("no cgroup memory controller here (v2 at /sys/fs/cgroup or v1 at /sys/fs/cgroup/memory)")
        group.path.mkdir()
        (group.path / group.limit_file).write_text(str(limit))
        return group

    def enter(self) -> Callable[[], None]:
        """What a child runs before it starts: move itself into this cgroup."""
        procs = self.path / "cgroup.procs"
        return lambda: procs.write_text(str(os.getpid()))

    def peak(self) -> int | None:
        f = self.path / self.peak_file
        return int(f.read_text()) if f.exists() else None

    def remove(self) -> None:
        self.path.rmdir()


def _drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


def one_run(trace: Path, code: Path | None, limit_mib: int) -> dict:
    _drop_caches()
    group = MemoryCgroup.make(f"kvmtrace-bench-{os.getpid()}-{limit_mib}", limit_mib << 20)
    try:
        done = analyze_child(trace, code, preexec=group.enter())
        peak = group.peak()
    finally:
        group.remove()
    if done.returncode == -signal.SIGKILL:
        return {"status": "killed (out of memory)", "peak": peak}
    if done.returncode:
        raise SystemExit(f"analyze {trace} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"status": "finished", "peak": peak, "wall": result["wall"], "cpu": result["cpu"],
            "rss": result["rss_peak_kb"] >> 10}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace", type=Path)
    ap.add_argument("--limit", type=int, nargs="+", required=True, help="memory limits to try, MiB")
    ap.add_argument("--baseline", default=None, help="also run the code of this commit")
    args = ap.parse_args()
    args.trace = args.trace.resolve()  # the child runs elsewhere (bench_scale.analyze_child)
    with tempfile.TemporaryDirectory() as tmp:
        codes: dict[str, Path | None] = {"this tree": None}
        if args.baseline:
            codes[f"@{args.baseline}"] = checkout(args.baseline, Path(tmp) / "baseline")
        print(f"{args.trace.name} ({args.trace.stat().st_size >> 20} MiB), {platform.machine()}, "
              f"{os.cpu_count()} CPUs; page cache dropped before each run\n")
        print("| code | limit | result | cgroup peak (MiB) | VmHWM (MiB) | wall (s) | CPU (s) |")
        print("|---|---:|---|---:|---:|---:|---:|")
        for limit in args.limit:
            for name, code in codes.items():
                r = one_run(args.trace, code, limit)
                peak = f"{r['peak'] >> 20}" if r["peak"] is not None else "?"
                rest = (f"{r['rss']} | {r['wall']:.1f} | {r['cpu']:.1f}" if r["status"] == "finished"
                        else "- | - | -")
                print(f"| {name} | {limit} MiB | {r['status']} | {peak} | {rest} |", flush=True)


if __name__ == "__main__":
    main()
