"""``kvmtrace record``: trace one command's KVM activity into a trace.dat.

Sequence (every step before the command is undone in ``finally``, whatever happens):
lock → checks → snapshot tracefs → stop, set clock and buffer size, clear, enable events,
tracing_on=1 → run the command (native backend: draining ``trace_pipe_raw`` every 50 ms, so a
long run is not limited by the buffer size — except with ``--text``, whose text twin needs every
record still in the buffer) → tracing_on=0 → read loss counters → save the text twin → write the
.dat (trace-cmd extract, or our own writer from the drained pages) → restore → unlock.

The .dat and the text are written to temp files beside their destination and renamed when
complete, so an error never leaves a half-written trace under the requested name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kvmtrace.parsers.errors import TraceError
from kvmtrace.parsers.output import atomic_file, atomic_path
from kvmtrace.parsers.tracedat.constants import COMPRESSION_ZSTD
from kvmtrace.parsers.tracedat.writer import write_tracedat
from kvmtrace.record.capture import (
    CpuLoss,
    PageDrain,
    collect_content,
    flagged_pages,
    loss_from_stats,
    read_cpu_stats,
)
from kvmtrace.record.child import CommandResult, run_command
from kvmtrace.record.lock import recording_lock
from kvmtrace.record.tracefs import EventId, Tracefs, TracefsState, find_tracefs, resolve_events

DEFAULT_EVENTS = ("kvmmmu", "kvm")
KVM_DEVICE = Path("/dev/kvm")
BACKENDS = ("auto", "trace-cmd", "native")


@dataclass(frozen=True)
class RecordOptions:
    """What to record and how; defaults are the CLI's."""

    output: Path
    command: tuple[str, ...]
    events: tuple[str, ...] = DEFAULT_EVENTS
    #: Per-CPU ring buffer size in KiB; None keeps the current size.
    buffer_kb: int | None = 8192
    clock: str = "global"
    #: Also save the kernel's text rendering (``trace``) as OUT.txt.gz.
    text: bool = False
    backend: str = "auto"
    file_version: int = 7
    compression: str = COMPRESSION_ZSTD
    kallsyms: bool = True
    tracefs: Path | None = None


@dataclass(frozen=True)
class RecordResult:
    """The command's exit status and what was written."""

    command: CommandResult
    output: Path
    backend: str
    text_output: Path | None
    loss: tuple[CpuLoss, ...] = ()


def text_path(output: Path) -> Path:
    """Where ``--text`` puts the kernel's text twin: OUT.dat → OUT.txt.gz."""
    return output.with_suffix(".txt.gz") if output.suffix == ".dat" else Path(f"{output}.txt.gz")


def pick_backend(name: str) -> str:
    if name not in BACKENDS:
        raise TraceError(f"unknown backend {name!r}: use auto, trace-cmd or native")
    if name == "auto":
        return "trace-cmd" if shutil.which("trace-cmd") else "native"
    if name == "trace-cmd" and shutil.which("trace-cmd") is None:
        raise TraceError("trace-cmd is not installed", hint="install it or pass {backend} native")
    return name


def check_host(tfs_root: Path | None) -> Tracefs:
    """The one-line errors a user can fix before anything is touched."""
    if os.geteuid() != 0:
        raise TraceError("recording needs root (tracefs and /dev/kvm): run kvmtrace record with sudo")
    tfs = find_tracefs(tfs_root)
    if not tfs.path("events/kvmmmu").is_dir():
        raise TraceError("no kvmmmu events in tracefs: the kvm module is not loaded (modprobe kvm_intel or kvm_amd)")
    if not KVM_DEVICE.exists():
        raise TraceError(f"no {KVM_DEVICE}: KVM is not available on this host (load kvm_intel or kvm_amd)")
    return tfs


def _start(tfs: Tracefs, opts: RecordOptions, events: list[EventId]) -> None:
    tfs.write("tracing_on", "0")
    if tfs.selected_clock() != opts.clock:
        tfs.write("trace_clock", opts.clock)
    if opts.buffer_kb is not None:
        tfs.write("buffer_size_kb", str(opts.buffer_kb))
    tfs.write("trace", "")  # opening `trace` for writing clears every CPU's buffer
    for ev in events:
        tfs.write(f"events/{ev.system}/{ev.event}/enable", "1")
    tfs.write("tracing_on", "1")


def _save_text(tfs: Tracefs, dest: Path) -> None:
    with open(tfs.path("trace"), "rb") as src, atomic_file(dest) as raw, gzip.open(raw, "wb", compresslevel=6) as out:
        shutil.copyfileobj(src, out, 1 << 20)


def _run_trace_cmd(argv: list[str]) -> None:
    proc = subprocess.run(["trace-cmd", *argv], capture_output=True, text=True)
    if proc.returncode != 0:
        # trace-cmd splits one error over lines ("trace-cmd: <errno text>", "  <what it did>").
        message = "; ".join(ln.strip() for ln in proc.stderr.splitlines() if ln.strip())
        raise TraceError(f"trace-cmd {argv[0]} failed: {message or f'exit status {proc.returncode}'}")


def _extract_trace_cmd(opts: RecordOptions) -> None:
    """Let trace-cmd drain the buffer into a file (always v7 + zstd), converted if asked otherwise."""
    with atomic_path(opts.output) as out:
        if (opts.file_version, opts.compression) == (7, COMPRESSION_ZSTD):
            _run_trace_cmd(["extract", "-o", str(out)])
            return
        with tempfile.TemporaryDirectory(dir=out.parent) as scratch:
            raw = Path(scratch) / "extract.dat"
            _run_trace_cmd(["extract", "-o", str(raw)])
            version = ["--file-version", str(opts.file_version), "--compression", opts.compression]
            _run_trace_cmd(["convert", *version, "-i", str(raw), "-o", str(out)])


def _write_native(tfs: Tracefs, opts: RecordOptions, drain: PageDrain, stats: dict[int, bytes]) -> dict[int, int]:
    """Write OUT.dat with our writer from the drained pages; return pages flagged with missed
    events per CPU."""
    from kvmtrace.version import __version__

    drain.drain()  # what is left after tracing stopped, including partly filled pages
    cpu_data = drain.data()
    content = collect_content(
        tfs, cpu_data, stats, drain.page_size, with_kallsyms=opts.kallsyms, version=f"kvmtrace {__version__}"
    )
    write_tracedat(opts.output, content, version=opts.file_version, compression=opts.compression)
    return {cpu: flagged_pages(data, drain.page_size) for cpu, data in cpu_data.items()}


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Make SIGTERM/SIGHUP unwind like Ctrl-C, so ``finally`` still restores tracefs.

    (While the command runs they are blocked and forwarded; this covers setup and extraction.)
    """

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def record(opts: RecordOptions) -> RecordResult:
    """Record ``opts.command``; tracefs is left exactly as found (see module docstring)."""
    if not opts.command:
        raise TraceError("no command to record", hint="give the command to trace as {command}")
    if opts.file_version == 6 and opts.compression != "none":
        raise TraceError("trace.dat version 6 has no compression", hint="pass {compression} none")
    if shutil.which(opts.command[0]) is None:
        raise TraceError(f"command not found: {opts.command[0]}")
    backend = pick_backend(opts.backend)
    tfs = check_host(opts.tracefs)
    events = resolve_events(tfs, list(opts.events))
    clocks = tfs.read("trace_clock").replace("[", "").replace("]", "").split()
    if opts.clock not in clocks:
        raise TraceError(f"unknown trace clock {opts.clock!r}: choose one of {', '.join(clocks)}")
    if not opts.output.parent.is_dir():
        raise TraceError(f"{opts.output.parent}: no such directory for the output file")
    with recording_lock(), _terminate_as_interrupt():
        state = TracefsState.capture(tfs, events)
        try:
            _start(tfs, opts, events)
            with contextlib.ExitStack() as stack:
                drain = None
                if backend == "native":
                    drain = stack.enter_context(PageDrain(tfs, tfs.sub_buffer_size(), opts.output.parent))
                # Draining while the command runs keeps the ring buffer from overwriting its
                # oldest pages; the text twin needs every record still in the buffer at the end.
                on_tick = drain.drain if drain is not None and not opts.text else None
                result = run_command(list(opts.command), on_tick=on_tick)
                tfs.write("tracing_on", "0")
                stats = {cpu: read_cpu_stats(tfs, cpu) for cpu in tfs.cpus()}
                text_out = text_path(opts.output) if opts.text else None
                if text_out is not None:
                    _save_text(tfs, text_out)
                flagged: dict[int, int] = {}
                if drain is None:
                    _extract_trace_cmd(opts)
                else:
                    flagged = _write_native(tfs, opts, drain, stats)
        finally:
            failed = state.restore(tfs)
            if failed:
                raise TraceError(f"could not restore tracefs: {', '.join(failed)}")
    loss = tuple(
        dataclasses.replace(loss_from_stats(cpu, text), flagged_pages=flagged.get(cpu, 0))
        for cpu, text in stats.items()
    )
    return RecordResult(result, opts.output, backend, text_out, loss)
