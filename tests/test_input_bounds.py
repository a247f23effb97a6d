"""Bounded resources on any input: junk is refused early, in one line, at a bounded memory cost.

Each input is read in a fresh process that reports its peak RSS above what the imports cost, with
a watchdog that stops it at 1.5 GB (``/dev/zero`` used to grow until the kernel killed it). The
shapes are those that went wrong before: 16 MiB of random bytes took 3.7 GB before the refusal,
a 5 MB syslog 1.4 GB. The probe is 256 KiB, so a refusal costs tens of MB, not GBs.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, SAMPLES

from kvmtrace.parsers import TraceError, read
from kvmtrace.parsers.text.source import MAX_LINE

#: Peak RSS a refused input may add to the imports (the measured cost is ~40 MB).
REFUSAL_MB = 128
#: Peak RSS a valid trace of ~3 000 events with 16 MB of junk after it may add (~80-280 MB measured).
JUNK_TAIL_MB = 512

_CHILD = r"""
import json, os, sys, threading, time, warnings
warnings.simplefilter("ignore")
from kvmtrace.parsers import TraceError, read

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20

def hwm_mb():
    # the process's own high-water mark: getrusage's ru_maxrss is kept across fork and exec, so
    # in a child of a large pytest it would read the parent's peak and hide the read's cost
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) >> 10

def watchdog():
    while True:
        if rss_mb() > 1536:
            print(json.dumps({"killed": rss_mb()}), flush=True)
            os._exit(3)
        time.sleep(0.01)

threading.Thread(target=watchdog, daemon=True).start()
base = hwm_mb()
out = {}
try:
    data = read(sys.argv[1])
    out["events"] = data.info.total_events
    out["skipped"] = data.skipped[:3]
except TraceError as err:
    out["refused"] = str(err)
out["extra_mb"] = hwm_mb() - base
print(json.dumps(out), flush=True)
"""


def _measure(path: str | Path) -> dict:
    done = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr).decode()[-2000:]
    return json.loads(done.stdout.decode().splitlines()[-1])


def _syslog(path: Path, size: int) -> Path:
    r = random.Random(7)
    lines = []
    total = 0
    while total < size:
        line = (f"Dec  {r.randint(1, 9)} 07:{r.randint(10, 59)}:{r.randint(10, 59)} host{r.randint(1, 3)} "
                f"systemd[{r.randint(1, 9999)}]: Started session {r.randint(1, 10**6)} of user root in "
                f"{r.random():.3f}s (kvm-{r.randint(1, 99)} [{r.randint(0, 7)}])\n")
        lines.append(line)
        total += len(line)
    path.write_text("".join(lines))
    return path


@pytest.fixture(scope="module")
def sample_text() -> bytes:
    return gzip.decompress((SAMPLES / "mmio-zapslot.txt.gz").read_bytes())


def test_random_bytes_refused_as_binary(tmp_path):
    junk = tmp_path / "random.bin"
    junk.write_bytes(random.Random(1).randbytes(16 << 20))
    got = _measure(junk)
    assert "looks like binary data" in got["refused"] and "give a trace.dat" in got["refused"]
    assert "\n" not in got["refused"]
    assert got["extra_mb"] < REFUSAL_MB


def test_dev_zero_refused_without_reading_it_all():
    got = _measure("/dev/zero")
    assert "looks like a stream of NUL bytes" in got["refused"]
    assert got["extra_mb"] < REFUSAL_MB


def test_endless_random_pipe_refused():
    """``/dev/urandom`` never ends: only the probe may be read."""
    got = _measure("/dev/urandom")
    assert "looks like binary data" in got["refused"]


def test_syslog_refused_after_the_probe(tmp_path):
    got = _measure(_syslog(tmp_path / "syslog", 5_000_000))
    assert "looks like a system log" in got["refused"]
    assert got["extra_mb"] < REFUSAL_MB


def test_text_without_line_breaks_refused(tmp_path):
    path = tmp_path / "oneline.txt"
    path.write_bytes(b"a" * (16 << 20))
    got = _measure(path)
    assert "no line break in the first 64 KiB" in got["refused"]
    assert got["extra_mb"] < REFUSAL_MB


def test_overlong_line_in_a_trace_is_dropped_and_reported(tmp_path, sample_text):
    """A NUL run with no line break after a real trace: every event kept, the run one skipped line."""
    path = tmp_path / "tail.txt"
    path.write_bytes(sample_text + b"\0" * (16 << 20))
    got = _measure(path)
    expected = read(SAMPLES / "mmio-zapslot.txt.gz").info.total_events
    assert got["events"] == expected
    n_lines = sample_text.count(b"\n") + 1
    assert got["skipped"] == [[n_lines, f"longer than {MAX_LINE >> 10} KiB: not a trace line (dropped unread)"]]
    assert got["extra_mb"] < JUNK_TAIL_MB


def test_junk_after_a_trace_costs_bounded_memory(tmp_path, sample_text):
    """Junk after the probe is read line by line and skipped (reported), in bounded memory."""
    path = tmp_path / "tail.txt"
    with open(path, "wb") as f:
        f.write(sample_text)
        f.write(_syslog(tmp_path / "syslog", 5_000_000).read_bytes())
        f.write(random.Random(2).randbytes(8 << 20))
    got = _measure(path)
    assert got["events"] == read(SAMPLES / "mmio-zapslot.txt.gz").info.total_events
    assert got["skipped"][0][0] == sample_text.count(b"\n") + 1
    assert got["extra_mb"] < JUNK_TAIL_MB


@pytest.mark.parametrize("text, what", [
    ("# tracer: nop\n#\n# entries-in-buffer/entries-written: 0/0   #P:2\n#\n", "without events (the buffer was empty"),
    ("[    0.000000] Linux version 6.12.0\n[    0.000001] Command line: ro quiet\n", "a kernel log (dmesg)"),
    ("12345@1700000000.123456:kvm_set_user_memory Slot#0 flags=0x0 gpa=0x0 size=0xa0000\n" * 3,
     "a QEMU -trace log"),
    ("Dear maintainers,\nthe guest hangs after the GPU is assigned.\n", "text without any trace line"),
])
def test_refusal_says_what_the_text_is(tmp_path, text, what):
    path = tmp_path / "input.txt"
    path.write_text(text)
    with pytest.raises(TraceError, match="no trace events found: the input looks like") as err:
        read(path)
    assert what in str(err.value)


def test_cli_refuses_junk_in_one_line_exit_2(tmp_path):
    junk = tmp_path / "core"
    junk.write_bytes(b"\x7fELF" + bytes(range(256)) * 64)
    done = subprocess.run([sys.executable, "-m", "kvmtrace", "info", str(junk)], capture_output=True, cwd=REPO,
                          timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 2
    err = done.stderr.decode().strip()
    assert len(err.splitlines()) == 1 and "an ELF binary or core dump" in err


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_compressed_tracedat_refused_with_what_to_do(tmp_path, kind):
    """trace-cmd never writes a compressed trace.dat; one compressed by hand is named as such."""
    import zstandard

    raw = (SAMPLES / "mmio-zapslot.dat").read_bytes()
    path = tmp_path / "trace.dat.x"
    path.write_bytes(gzip.compress(raw) if kind == "gzip" else zstandard.ZstdCompressor().compress(raw))
    with pytest.raises(TraceError, match=r"looks like a compressed trace\.dat \(decompress it first\)"):
        read(path)
