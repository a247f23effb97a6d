"""Take a stopped trace out of tracefs: raw pages, loss counters and the metadata to decode them.

This is the native backend's half of ``trace-cmd extract``: ``per_cpu/cpuN/trace_pipe_raw``
hands out whole ring-buffer pages exactly as the kernel wrote them, and the format files,
``saved_cmdlines``, ``printk_formats`` and ``/proc/kallsyms`` are what a reader needs to decode
them later, on any machine. The pages are consumed by reading (like ``trace_pipe``), so the
text twin (``trace``) must be saved before, and cannot be had when pages are drained during the
run.
"""

from __future__ import annotations

import errno
import mmap
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from kvmtrace.parsers.tracedat.constants import COMMIT_MISSING_EVENTS, PAGE_COMMIT_OFFSET
from kvmtrace.parsers.tracedat.writer import EventSystem, PageBytes, TraceDatContent
from kvmtrace.record.tracefs import Tracefs

KALLSYMS = "/proc/kallsyms"


@dataclass(frozen=True)
class CpuLoss:
    """Events one CPU lost, from ``per_cpu/cpuN/stats`` and the pages' missed-events flags."""

    cpu: int
    overrun: int
    commit_overrun: int
    dropped: int
    #: Pages whose commit word carries MISSING_EVENTS (native backend only; else 0).
    flagged_pages: int = 0

    @property
    def any(self) -> bool:
        return bool(self.overrun or self.commit_overrun or self.dropped or self.flagged_pages)


def read_cpu_stats(tfs: Tracefs, cpu: int) -> bytes:
    """The ``stats`` text as is: it goes into the file (CPUSTAT) as well as into :class:`CpuLoss`."""
    return tfs.read_bytes(f"per_cpu/cpu{cpu}/stats")


def loss_from_stats(cpu: int, stats: bytes) -> CpuLoss:
    """Parse ``overrun``, ``commit overrun`` and ``dropped events`` out of a stats text."""

    def field(name: str) -> int:
        match = re.search(rf"^{name}:\s*(\d+)", stats.decode(errors="replace"), re.MULTILINE)
        return int(match.group(1)) if match else 0

    return CpuLoss(cpu, field("overrun"), field("commit overrun"), field("dropped events"))


class PageDrain:
    """Per-CPU ``trace_pipe_raw`` readers that collect whole pages, one page per read.

    Non-blocking: an empty buffer answers EAGAIN instead of waiting for events, so
    :meth:`drain` can be called both while the command runs (keeping the ring buffer from
    overwriting its oldest pages) and once more after tracing stopped (the last, partly filled
    pages). Open it after the buffer is sized and cleared: those writes reset the buffer.
    """

    def __init__(self, tfs: Tracefs, page_size: int, spill_dir: Path) -> None:
        self.page_size = page_size
        self._fds: dict[int, int] = {}
        # Pages go to unlinked files beside the output: a long run is bounded by disk, not
        # memory, and nothing is left behind if the recorder dies.
        self._spill: dict[int, BinaryIO] = {}
        try:
            for cpu in tfs.cpus():
                self._fds[cpu] = os.open(tfs.path(f"per_cpu/cpu{cpu}/trace_pipe_raw"), os.O_RDONLY | os.O_NONBLOCK)
                self._spill[cpu] = tempfile.TemporaryFile(dir=spill_dir)
        except BaseException:
            self.close()
            raise

    def drain(self) -> None:
        for cpu, fd in self._fds.items():
            while True:
                try:
                    page = os.read(fd, self.page_size)
                except OSError as err:
                    if err.errno in (errno.EAGAIN, errno.EINTR):
                        break
                    raise
                if not page:
                    break
                self._spill[cpu].write(page.ljust(self.page_size, b"\0"))

    def data(self) -> dict[int, PageBytes]:
        """Each CPU's pages in the order the kernel handed them out (read-only maps of the spill)."""
        out: dict[int, PageBytes] = {}
        for cpu, f in self._spill.items():
            f.flush()
            size = f.tell()
            out[cpu] = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) if size else b""
        return out

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        for f in self._spill.values():
            f.close()
        self._fds, self._spill = {}, {}

    def __enter__(self) -> PageDrain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def flagged_pages(data: PageBytes, page_size: int) -> int:
    """Pages whose commit word has MISSING_EVENTS set (events were lost just before them).

    The flag sits in bit 31 of the commit word, i.e. in its low 32 bits whatever the kernel's
    long size; pages come from this host, so native byte order.
    """
    if not data:
        return 0
    words = np.frombuffer(data, dtype=np.uint8).reshape(-1, page_size)[:, PAGE_COMMIT_OFFSET : PAGE_COMMIT_OFFSET + 4]
    commit = words.copy().view(np.uint32).ravel()
    return int(np.count_nonzero(commit & COMMIT_MISSING_EVENTS))


def _formats_by_system(tfs: Tracefs) -> tuple[EventSystem, ...]:
    """Format files of every enabled event (whatever enabled it), grouped by system."""
    systems: dict[str, list[bytes]] = {}
    for ev in tfs.enabled_events():
        if ev.system == "ftrace":
            continue  # written with the ftrace formats
        systems.setdefault(ev.system, []).append(tfs.read_bytes(f"events/{ev.system}/{ev.event}/format"))
    return tuple(EventSystem(name, tuple(formats)) for name, formats in systems.items())


def _ftrace_formats(tfs: Tracefs) -> tuple[bytes, ...]:
    ftrace = tfs.path("events/ftrace")
    return tuple(tfs.read_bytes(f"events/ftrace/{d.name}/format")
                 for d in sorted(ftrace.iterdir()) if (d / "format").is_file())


def collect_content(
    tfs: Tracefs,
    cpu_data: dict[int, PageBytes],
    cpu_stats: dict[int, bytes],
    page_size: int,
    *,
    with_kallsyms: bool,
    version: str,
) -> TraceDatContent:
    """Everything the writer needs, read while the recorded events are still enabled."""
    nr_cpus = max(cpu_data, default=-1) + 1
    uname = os.uname()
    kallsyms = b""
    if with_kallsyms:
        with open(KALLSYMS, "rb") as f:
            kallsyms = f.read()
    return TraceDatContent(
        page_size=page_size,
        header_page=tfs.read_bytes("events/header_page"),
        header_event=tfs.read_bytes("events/header_event"),
        ftrace_formats=_ftrace_formats(tfs),
        systems=_formats_by_system(tfs),
        cpu_data=tuple(cpu_data.get(cpu, b"") for cpu in range(nr_cpus)),
        kallsyms=kallsyms,
        printk_formats=tfs.read_bytes("printk_formats"),
        cmdlines=tfs.read_bytes("saved_cmdlines"),
        clock=tfs.selected_clock(),
        trace_clock=tfs.read_bytes("trace_clock"),
        uname=f"{uname.sysname} {uname.nodename} {uname.release} {uname.machine}",
        version=version,
        trace_id=secrets.randbits(64),
        cpu_stats=tuple(cpu_stats[cpu] for cpu in sorted(cpu_stats)),
    )
