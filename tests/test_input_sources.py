"""Any input may be a pipe, a FIFO or standard input, and reads exactly as the file does.

Oracle: the same sample read from its regular file. A pipe cannot be re-read, so a reader that
peeks at the first bytes and reopens the input loses them (it used to lose the first 8 KiB of
text, read a trace.dat on a pipe as empty and fail on gzip from standard input).
"""

from __future__ import annotations

import gzip
import lzma
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import zstandard
from conftest import REPO, SAMPLES

from kvmtrace.parsers import TraceError, read

#: A small recording (2 884 events, 320 KB of text: far more than one pipe buffer).
SAMPLE = "mmio-zapslot"


def _feed(data: bytes) -> tuple[int, threading.Thread]:
    """A pipe fed by a thread; its read end, named ``/dev/fd/N``, is what ``<(...)`` hands over."""
    r, w = os.pipe()

    def write() -> None:
        try:
            with os.fdopen(w, "wb") as f:
                f.write(data)
        except BrokenPipeError:
            pass  # the reader stopped early (a refused input)

    t = threading.Thread(target=write, daemon=True)
    t.start()
    return r, t


def _read_pipe(data: bytes):
    fd, t = _feed(data)
    try:
        return read(f"/dev/fd/{fd}")
    finally:
        os.close(fd)
        t.join(5)


@pytest.fixture()
def spool_dir(tmp_path, monkeypatch) -> Path:
    """TMPDIR for this test only, to see that no spool file is left behind."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # make tempfile read TMPDIR again
    return tmp_path


@pytest.fixture(scope="module")
def text_bytes() -> bytes:
    return gzip.decompress((SAMPLES / f"{SAMPLE}.txt.gz").read_bytes())


@pytest.fixture(scope="module")
def file_counts() -> dict[str, dict[str, int]]:
    return {
        "text": dict(read(SAMPLES / f"{SAMPLE}.txt.gz").info.event_counts),
        "dat": dict(read(SAMPLES / f"{SAMPLE}.dat").info.event_counts),
    }


def _compressed(kind: str, data: bytes) -> bytes:
    return {"none": lambda d: d, "gzip": gzip.compress, "xz": lzma.compress,
            "zstd": zstandard.ZstdCompressor().compress}[kind](data)


@pytest.mark.parametrize("kind", ["none", "gzip", "xz", "zstd"])
def test_text_on_a_pipe_reads_every_line(kind, text_bytes, file_counts):
    data = _read_pipe(_compressed(kind, text_bytes))
    assert data.info.compression == kind
    assert dict(data.info.event_counts) == file_counts["text"]
    assert data.skipped == []


def test_tracedat_on_a_pipe_is_read_whole(file_counts, spool_dir):
    data = _read_pipe((SAMPLES / f"{SAMPLE}.dat").read_bytes())
    assert data.info.source == "tracedat"
    assert dict(data.info.event_counts) == file_counts["dat"]
    assert data.info.path.startswith("/dev/fd/")
    assert list(spool_dir.iterdir()) == [], "the spool file must be removed"


def test_cut_short_tracedat_on_a_pipe_names_the_pipe_and_leaves_no_spool(spool_dir):
    """A trace.dat cut inside its headers is refused as it is from a file, under the pipe's name."""
    blob = (SAMPLES / f"{SAMPLE}.dat").read_bytes()[:3000]
    cut = spool_dir / "cut.dat"
    cut.write_bytes(blob)
    with pytest.raises(TraceError) as from_file:
        read(cut)
    cut.unlink()
    with pytest.raises(TraceError) as from_pipe:
        _read_pipe(blob)
    assert str(from_pipe.value).startswith("/dev/fd/")
    assert "kvmtrace-" not in str(from_pipe.value)
    assert str(from_pipe.value).split(":", 1)[1] == str(from_file.value).split(":", 1)[1]
    assert list(spool_dir.iterdir()) == []


def test_fifo(tmp_path, text_bytes, file_counts):
    fifo = tmp_path / "trace.fifo"
    os.mkfifo(fifo)

    def write() -> None:
        with open(fifo, "wb") as f:
            f.write(gzip.compress(text_bytes))

    t = threading.Thread(target=write, daemon=True)
    t.start()
    data = read(fifo)
    t.join(5)
    assert dict(data.info.event_counts) == file_counts["text"]


def _cli(args: list[str], stdin: bytes | None = None, shell: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = ["bash", "-c", shell] if shell is not None else [sys.executable, "-m", "kvmtrace", *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, cwd=REPO, env=env, timeout=120)


def _events_line(stdout: bytes) -> int:
    line = next(ln for ln in stdout.decode().splitlines() if ln.startswith("events:"))
    return int(line.split()[1])


@pytest.mark.parametrize("name", [f"{SAMPLE}.txt.gz", f"{SAMPLE}.dat"])
def test_cli_reads_standard_input(name, file_counts):
    """``kvmtrace info -``: gzip text and a trace.dat on standard input (a pipe, not a file)."""
    done = _cli(["info", "-"], stdin=(SAMPLES / name).read_bytes())
    assert done.returncode == 0, done.stderr.decode()
    expected = file_counts["dat" if name.endswith(".dat") else "text"]
    assert _events_line(done.stdout) == sum(expected.values())
    assert "<stdin>" in done.stdout.decode()


def test_cli_process_substitution_and_dev_stdin(file_counts):
    """``<(zcat t.txt.gz)`` and ``/dev/stdin`` lost their first 8 KiB (21 events) before."""
    expected = sum(file_counts["text"].values())
    sample = Path("sample_traces") / f"{SAMPLE}.txt.gz"
    sub = _cli([], shell=f"{sys.executable} -m kvmtrace info <(zcat {sample})")
    assert sub.returncode == 0, sub.stderr.decode()
    assert _events_line(sub.stdout) == expected
    dev = _cli([], shell=f"zcat {sample} | {sys.executable} -m kvmtrace info /dev/stdin")
    assert dev.returncode == 0, dev.stderr.decode()
    assert _events_line(dev.stdout) == expected


def test_empty_pipe_is_refused_in_one_line():
    with pytest.raises(TraceError, match=r"^/dev/fd/\d+: empty input, not a trace$"):
        _read_pipe(b"")


def test_endless_tracedat_stream_never_fills_the_disk(spool_dir, monkeypatch):
    """A stream that starts like a trace.dat and never ends is refused once the spool would leave
    less than the reserve free (the reserve is raised here to just below the free space)."""
    import shutil

    from kvmtrace.parsers import detect

    free = shutil.disk_usage(spool_dir).free
    monkeypatch.setattr(detect, "SPOOL_RESERVE", free - (8 << 20))
    head = (SAMPLES / f"{SAMPLE}.dat").read_bytes()[:4096]
    endless = subprocess.Popen(["bash", "-c", "cat \"$0\"; cat /dev/zero", "/dev/stdin"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE)
    endless.stdin.write(head)
    endless.stdin.close()
    try:
        with pytest.raises(TraceError, match="does not fit in the free space"):
            read(f"/dev/fd/{endless.stdout.fileno()}")
    finally:
        endless.kill()
        endless.wait()
    assert list(spool_dir.iterdir()) == []
