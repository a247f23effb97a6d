"""The tracefs knobs a recording turns, and putting them back exactly as they were.

tracefs is machine-global state shared with every other tracer on the host (and, here, with
the other people recording on it): a recorder that leaves kvmmmu events enabled or the clock
changed silently corrupts the next person's trace. So every knob we write is snapshotted first
(:class:`TracefsState`) and restored in a ``finally`` — on success, error and Ctrl-C alike.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from kvmtrace.parsers.errors import TraceError

DEFAULT_TRACEFS = Path("/sys/kernel/tracing")
#: Where tracefs also appears when only debugfs is mounted.
DEBUGFS_TRACING = Path("/sys/kernel/debug/tracing")


@dataclass(frozen=True, order=True)
class EventId:
    """One tracepoint, ``system:event``."""

    system: str
    event: str

    def __str__(self) -> str:
        return f"{self.system}:{self.event}"


class Tracefs:
    """File access below one tracefs mount, with tracefs' quirks handled in one place."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, rel: str) -> Path:
        return self.root / rel

    def read(self, rel: str) -> str:
        return self.path(rel).read_text()

    def read_bytes(self, rel: str) -> bytes:
        """Whole file; tracefs files report size 0, so read until EOF rather than by stat size."""
        with open(self.path(rel), "rb") as f:
            return f.read()

    def write(self, rel: str, value: str) -> None:
        # One write() per value: tracefs parses each write on its own.
        with open(self.path(rel), "w") as f:
            f.write(value)

    def events_of(self, system: str) -> list[EventId]:
        sysdir = self.path(f"events/{system}")
        return sorted(EventId(system, d.name) for d in sysdir.iterdir() if (d / "enable").is_file())

    def enabled_events(self) -> list[EventId]:
        """Events enabled right now (``set_event`` lists them as ``system:event``)."""
        out = []
        for line in self.read("set_event").split():
            system, _, event = line.partition(":")
            out.append(EventId(system, event))
        return out

    def cpus(self) -> list[int]:
        """CPU ids with a per-CPU buffer (the file's CPU count is max + 1)."""
        return sorted(int(d.name[3:]) for d in self.path("per_cpu").iterdir() if re.fullmatch(r"cpu\d+", d.name))

    def selected_clock(self) -> str:
        match = re.search(r"\[(\S+)\]", self.read("trace_clock"))
        if match is None:
            raise TraceError(f"cannot read the selected clock from {self.path('trace_clock')}")
        return match.group(1)

    def buffer_size_kb(self) -> str:
        """Per-CPU buffer size in KiB as the kernel would use it.

        A never-used ring buffer reads ``7 (expanded: 1408)``: it is kept minimal until tracing
        is first needed and then grows to the expanded size. Enabling any event expands it, so
        the expanded value is the state to return to.
        """
        text = self.read("buffer_size_kb").strip()
        match = re.search(r"expanded:\s*(\d+)", text)
        return match.group(1) if match else text.split()[0]

    def sub_buffer_size(self) -> int:
        """Bytes per ring-buffer page (``buffer_subbuf_size_kb`` on 6.8+, else the CPU page)."""
        sub = self.path("buffer_subbuf_size_kb")
        if sub.exists():
            return int(sub.read_text().split()[0]) * 1024
        return os.sysconf("SC_PAGE_SIZE")


def find_tracefs(root: Path | None = None) -> Tracefs:
    """The mounted tracefs, or a one-line error that says how to mount it."""
    candidates = [root] if root is not None else [DEFAULT_TRACEFS, DEBUGFS_TRACING]
    for cand in candidates:
        if (cand / "tracing_on").exists():
            return Tracefs(cand)
    where = candidates[0]
    raise TraceError(f"tracefs is not mounted at {where}: mount it with 'mount -t tracefs nodev {where}'")


def resolve_events(tfs: Tracefs, items: list[str]) -> list[EventId]:
    """Expand ``system`` and ``system:event`` items into the tracepoints they name.

    Unknown names are an error rather than a silent no-op: a typo would otherwise produce a
    trace without the events the user came for.
    """
    out: dict[EventId, None] = {}
    for item in items:
        system, sep, event = item.partition(":")
        if not system or (sep and not event) or "/" in item:
            raise TraceError(f"bad event name {item!r}: use 'system' or 'system:event' (e.g. kvmmmu, kvm:kvm_mmio)")
        if not tfs.path(f"events/{system}").is_dir():
            raise TraceError(f"unknown event system {system!r}: see {tfs.path('available_events')}")
        if not sep:
            out.update(dict.fromkeys(tfs.events_of(system)))
            continue
        if not tfs.path(f"events/{system}/{event}/enable").is_file():
            raise TraceError(f"unknown event {item!r}: see {tfs.path('available_events')}")
        out[EventId(system, event)] = None
    return list(out)


@dataclass(frozen=True)
class TracefsState:
    """The knobs a recording changes, as found: restore() puts each one back."""

    tracing_on: str
    buffer_size_kb: str
    clock: str
    #: (event, "0" or "1") for every event the recording may enable.
    enabled: tuple[tuple[EventId, str], ...]

    @classmethod
    def capture(cls, tfs: Tracefs, events: list[EventId]) -> TracefsState:
        return cls(
            tracing_on=_current(tfs, "tracing_on"),
            buffer_size_kb=tfs.buffer_size_kb(),
            clock=tfs.selected_clock(),
            enabled=tuple((ev, _current(tfs, f"events/{ev.system}/{ev.event}/enable")) for ev in events),
        )

    def restore(self, tfs: Tracefs) -> list[str]:
        """Write every knob back; return what could not be restored (each step is attempted)."""
        failed = []
        steps = [(f"events/{ev.system}/{ev.event}/enable", bit) for ev, bit in self.enabled]
        steps += [("trace_clock", self.clock), ("buffer_size_kb", self.buffer_size_kb), ("tracing_on", self.tracing_on)]
        for rel, value in steps:
            try:
                # Compare first: rewriting trace_clock or buffer_size_kb wipes the buffer.
                if _current(tfs, rel) != value:
                    tfs.write(rel, value)
            except OSError as err:
                failed.append(f"{rel} ({err.strerror})")
        return failed


def _current(tfs: Tracefs, rel: str) -> str:
    """A knob's value in the form :class:`TracefsState` stores it.

    Enable files may read ``0*``/``1*`` (soft state of triggers); only the plain bit is ours.
    """
    if rel == "trace_clock":
        return tfs.selected_clock()
    if rel == "buffer_size_kb":
        return tfs.buffer_size_kb()
    return tfs.read(rel).strip()[:1]
