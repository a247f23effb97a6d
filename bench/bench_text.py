"""Benchmark: the ftrace text reader against the trace.dat reader on the same recording.

Usage: python bench/bench_text.py [TRACE.dat] [--runs N] [--threads N] [--repeat N] [--baseline COMMIT]

TRACE defaults to the largest ``bench/out/*.dat`` that has a kernel text twin
(``NAME.txt.gz``: ``cat trace`` of the same records), else the largest in ``sample_traces/``
or ``tests/data/*/``. Three readers run, each in a fresh process so its peak RSS is its own, best of N:

* ``text``      -- ``read_text`` on the twin decompressed to a plain file (the parser alone);
* ``text.gz``   -- ``read_text`` on the gzip twin as shipped (adds decompression);
* ``tracedat``  -- ``read_tracedat`` on the trace.dat (the reference).

Wall clock and CPU seconds (user + system, the whole process's threads) are both reported: on
a shared machine wall time includes waiting for a core, CPU time does not. ``--threads N`` sets
``POLARS_MAX_THREADS`` in the children (1 = the single-core figure the target is stated in).
``--repeat N`` reads a longer text instead: the twin's lines N times over, each copy's
timestamps shifted past the previous copy's (the repository's twins are 0.2 M lines, where
fixed costs weigh more than on a real capture); only the ``text`` reader runs then, as there
is no trace.dat of that text.
``--baseline COMMIT`` also runs the text reader of that commit (``bench_stream.checkout``, with
its C extension built in place as the install builds it, if it has one), one run of each in
turn, so that a machine whose speed drifts within minutes still compares like with like.
Prints a table to paste into bench/RESULTS.md under "## text reader".
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench_stream import checkout

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

#: Runs in a child process: one read, timed, with the process's peak RSS.
_CHILD = """
import json, sys, time, warnings
warnings.simplefilter("ignore")
def hwm_kb():  # the process's own peak: ru_maxrss is kept across fork and exec (the parent's peak)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
kind, path = sys.argv[1], sys.argv[2]
if kind == "tracedat":
    from kvmtrace.parsers.tracedat import read_tracedat as read
    args = {}
else:
    from kvmtrace.parsers.text import read_text as read
    args = {"compression": "gzip"} if path.endswith(".gz") else {}
t0, c0 = time.perf_counter(), time.process_time()
data = read(path, **args)
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
import kvmtrace.parsers as code
print(json.dumps({"wall": wall, "cpu": cpu, "events": data.info.total_events, "skipped": data.info.skipped_lines,
                  "rss_kb": hwm_kb(), "code": code.__file__}))
"""


@dataclass
class Best:
    reader: str
    wall: float
    cpu: float
    events: int
    skipped: int
    rss_mb: float


def default_trace() -> Path:
    for folders in ([REPO / "bench" / "out"], [REPO / "sample_traces", *sorted((REPO / "tests" / "data").glob("*"))]):
        twins = [p for folder in folders for p in folder.glob("*.dat") if p.with_suffix(".txt.gz").exists()]
        if twins:
            return max(twins, key=lambda p: p.stat().st_size)
    sys.exit("no trace.dat with a .txt.gz text twin in bench/out/, sample_traces/ or tests/data/")


#: A tracefs line's prefix up to the seconds of its timestamp, the seconds, the fraction.
_TS = re.compile(rb"^(.{16}-\d+ +\[\d+\] \S+ +)(\d+)\.(\d+): ")


def write_repeated(twin: Path, times: int, out: Path) -> None:
    """``twin``'s lines ``times`` over (its ``#`` header once), each copy shifted past the last
    one's seconds; a seconds field keeps its column width while its blanks allow."""
    with gzip.open(twin, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    header = [line for line in lines if line.startswith(b"#")]
    body = [line for line in lines if not line.startswith(b"#")]
    span = 1 + max((int(m[2]) for m in map(_TS.match, body) if m), default=0)
    with open(out, "wb") as f:
        f.writelines(header)
        for k in range(times):
            for line in body:
                m = _TS.match(line) if k else None
                if m is None:
                    f.write(line)
                    continue
                seconds = str(int(m[2]) + k * span).encode()
                prefix = m[1]
                grown = len(seconds) - len(m[2])
                if grown > 0 and prefix.endswith(b" " * (grown + 1)):
                    prefix = prefix[:-grown]
                f.write(prefix + seconds + b"." + m[3] + b": " + line[m.end():])


def once(reader: str, path: Path, threads: int | None, code: Path = REPO) -> dict:
    """One read in a fresh process, with the code in ``code`` (checked to be the code that ran)."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    if threads:
        env["POLARS_MAX_THREADS"] = str(threads)
    out = subprocess.run([sys.executable, "-c", _CHILD, reader, str(path)], cwd=code, check=True,
                         capture_output=True, text=True, env=env)
    result: dict = json.loads(out.stdout.strip().splitlines()[-1])
    if code != REPO and not result["code"].startswith(str(code)):
        raise SystemExit(f"the baseline run imported {result['code']}, not the code in {code}")
    return result


def best(reader: str, results: list[dict]) -> Best:
    fastest = min(results, key=lambda r: r["wall"])
    return Best(reader, fastest["wall"], min(r["cpu"] for r in results), fastest["events"], fastest["skipped"],
                fastest["rss_kb"] / 1024)


def run(reader: str, path: Path, runs: int, threads: int | None) -> Best:
    return best(reader, [once(reader, path, threads) for _ in range(runs)])


def build_extension(code: Path) -> None:
    """Compile a checkout's ``parsers/text/_chunk.c`` beside it, with pyproject.toml's flags."""
    source = code / "parsers" / "text" / "_chunk.c"
    if source.exists():
        target = source.with_name("_chunk" + sysconfig.get_config_var("EXT_SUFFIX"))
        subprocess.run(["cc", "-O2", "-shared", "-fPIC", f"-I{sysconfig.get_paths()['include']}", str(source),
                        "-o", str(target)], check=True)


def interleaved(path: Path, runs: int, threads: int | None, baseline: str, tmp: Path) -> list[Best]:
    """The text reader of ``baseline`` and of this tree, one run of each in turn."""
    code = checkout(baseline, tmp / "baseline")
    build_extension(code)
    pairs = [(once("text", path, threads, code), once("text", path, threads)) for _ in range(runs)]
    return [best(f"text @{baseline}", [b for b, _ in pairs]), best("text", [c for _, c in pairs])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace", nargs="?", type=Path, help="trace.dat with a NAME.txt.gz twin beside it")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, help="POLARS_MAX_THREADS for the readers (default: polars decides)")
    ap.add_argument("--repeat", type=int, default=1, help="read the twin's lines N times over (text reader only)")
    ap.add_argument("--baseline", default=None, help="also run the text reader of this commit, interleaved")
    args = ap.parse_args()
    dat = args.trace or default_trace()
    twin = dat.with_suffix(".txt.gz")
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / (dat.stem + ".txt")
        if args.repeat > 1:
            write_repeated(twin, args.repeat, plain)
        else:
            with gzip.open(twin, "rb") as src, open(plain, "wb") as dst:
                shutil.copyfileobj(src, dst)
        lines = sum(1 for _ in open(plain, "rb"))
        size_mb = plain.stat().st_size / 1e6
        inputs = (("text", plain), ("text.gz", twin), ("tracedat", dat))[: 1 if args.repeat > 1 else 3]
        if args.baseline:
            rows = interleaved(plain, args.runs, args.threads, args.baseline, Path(tmp))
        else:
            rows = [run(reader, path, args.runs, args.threads) for reader, path in inputs]
    ref = rows[-1]
    print(f"`python bench/bench_text.py {dat.relative_to(REPO) if dat.is_relative_to(REPO) else dat.name} "
          f"--runs {args.runs}{f' --threads {args.threads}' if args.threads else ''}"
          f"{f' --repeat {args.repeat}' if args.repeat > 1 else ''}"
          f"{f' --baseline {args.baseline}' if args.baseline else ''}` -- "
          f"{lines:,} text lines ({size_mb:.0f} MB plain), {ref.events:,} events. "
          f"Machine: {os.cpu_count()} cores, {platform.python_version()}, load {os.getloadavg()[0]:.1f}.\n")
    print("| reader | wall (best) | CPU (best) | lines/s (wall) | lines/s (CPU) | peak RSS | events | skipped |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r.reader} | {r.wall:.2f} s | {r.cpu:.2f} s "
              f"| {lines / r.wall / 1e6:.2f} M | {lines / r.cpu / 1e6:.2f} M "
              f"| {r.rss_mb:.0f} MB | {r.events:,} | {r.skipped} |")
    text = rows[0]
    if args.baseline:
        print(f"\nRatio: this tree's text reader takes {rows[1].cpu / rows[0].cpu:.2f}x the CPU time of "
              f"{args.baseline}'s (best of {args.runs} interleaved runs each).")
        return
    if len(rows) == 1:
        return
    print(f"\nRatio: the text reader takes {text.wall / ref.wall:.1f}x the trace.dat reader's wall time "
          f"({text.cpu / ref.cpu:.1f}x its CPU time) for the same events.")


if __name__ == "__main__":
    main()
