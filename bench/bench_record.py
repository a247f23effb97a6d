"""Benchmark the trace.dat writer and ``kvmtrace record``'s two backends (run by hand).

    python bench/bench_record.py writer RECORDING.dat        # no root needed; needs trace-cmd
    python bench/bench_record.py record -- COMMAND...         # root + /dev/kvm; records 5× per backend

``writer``: the recording's pages and metadata (via a trace-cmd uncompressed v6 conversion) are
re-written by our writer in each variant, and by ``trace-cmd convert`` to v7 zstd for reference;
best of 3 wall times. ``record``: ``kvmtrace record`` wall time with ``--backend native`` and
``--backend trace-cmd`` around the same command (the command's own time is in both).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from tracedat_builder import content_of

from kvmtrace.parsers.tracedat.writer import write_tracedat


def best_of(n: int, fn) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_writer(recording: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        v6 = Path(tmp) / "v6.dat"
        subprocess.run(["trace-cmd", "convert", "--file-version", "6", "--compression", "none",
                        "-i", str(recording), "-o", str(v6)], check=True, capture_output=True)
        content = content_of(v6)
        pages = sum(map(len, content.cpu_data))
        total = pages + len(content.kallsyms)
        print(f"input: {recording.name}: {pages / 1e6:.1f} MB pages, {len(content.kallsyms) / 1e6:.1f} MB kallsyms")
        out = Path(tmp) / "out.dat"
        for version, compression in [(6, "none"), (7, "none"), (7, "zstd"), (7, "zlib")]:
            secs = best_of(3, partial(write_tracedat, out, content, version=version, compression=compression))
            print(f"writer v{version} {compression:5s}: {secs:6.3f} s  {total / secs / 1e6:7.1f} MB/s  "
                  f"-> {out.stat().st_size / 1e6:.1f} MB")
        conv = Path(tmp) / "conv.dat"
        secs = best_of(3, lambda: subprocess.run(
            ["trace-cmd", "convert", "--file-version", "7", "--compression", "zstd", "-i", str(v6), "-o", str(conv)],
            check=True, capture_output=True))
        print(f"trace-cmd convert v7 zstd: {secs:6.3f} s  {total / secs / 1e6:7.1f} MB/s  "
              f"-> {conv.stat().st_size / 1e6:.1f} MB")


def bench_record(command: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("native", "trace-cmd"):
            out = Path(tmp) / f"{backend}.dat"
            argv = [sys.executable, "-c", "from kvmtrace.cli import main; main()", "record", "--backend", backend,
                    "-o", str(out), "--", *command]
            runs: list[subprocess.CompletedProcess[str]] = []
            secs = best_of(5, lambda runs=runs, argv=argv: runs.append(
                subprocess.run(argv, check=True, capture_output=True, text=True)))
            lost = sum("lost events" in run.stderr for run in runs)
            print(f"record --backend {backend:9s}: {secs:6.3f} s  -> {out.stat().st_size / 1e6:.1f} MB, "
                  f"{lost}/{len(runs)} runs lost events")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("writer").add_argument("recording", type=Path)
    sub.add_parser("record").add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.what == "writer":
        bench_writer(args.recording)
    else:
        bench_record(args.command[1:] if args.command[:1] == ["--"] else args.command)


if __name__ == "__main__":
    main()
