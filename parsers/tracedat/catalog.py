"""All event formats of a file, parsed lazily.

A trace.dat carries the format file of every event the kernel has (≈1500 on a distribution
kernel) though a recording uses a few dozen. Reading name and ID takes two regex searches; the
full field grammar is parsed only for events that are present (or share a system with one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kvmtrace.parsers.errors import TraceError
from kvmtrace.parsers.tracedat.formats import EventFormat, parse_format
from kvmtrace.parsers.tracedat.layout import Container

_NAME_RE = re.compile(rb"^name:\s*(\S+)\s*$", re.M)
_ID_RE = re.compile(rb"^ID:\s*(\d+)\s*$", re.M)
FTRACE_SYSTEM = "ftrace"
#: Bytes every data record starts with: common_type, common_flags, common_preempt_count, common_pid.
COMMON_HEADER_SIZE = 8


@dataclass(frozen=True)
class FormatEntry:
    id: int
    system: str
    name: str
    text: bytes


class FormatCatalog:
    """Event id → format, table name and system; full parse on first use."""

    def __init__(self, box: Container, long_size: int):
        texts = [(FTRACE_SYSTEM, t) for t in box.ftrace_formats] + list(box.event_formats)
        self.entries: list[FormatEntry] = []
        for system, text in texts:
            name, event_id = _NAME_RE.search(text), _ID_RE.search(text)
            if name is None or event_id is None:
                raise TraceError(f"{box.path}: corrupt event format in system {system!r} (no name or ID)")
            event = name.group(1).decode("utf-8", "replace")
            self.entries.append(FormatEntry(int(event_id.group(1)), system, event, text))
        self._by_id = {e.id: e for e in self.entries}
        self._long_size = long_size
        self.path = box.path
        self._parsed: dict[int, EventFormat] = {}
        self.table_names = self._table_names()

    def _table_names(self) -> dict[int, str]:
        """Bare event names; a name already taken by an earlier system becomes ``system:name``."""
        names: dict[int, str] = {}
        taken: set[str] = set()
        for e in self.entries:
            name = e.name if e.name not in taken else f"{e.system}:{e.name}"
            taken.add(name)
            names[e.id] = name
        return names

    def __contains__(self, event_id: int) -> bool:
        return event_id in self._by_id

    def system(self, event_id: int) -> str:
        return self._by_id[event_id].system

    def format(self, event_id: int) -> EventFormat:
        fmt = self._parsed.get(event_id)
        if fmt is None:
            e = self._by_id[event_id]
            try:
                fmt = parse_format(e.text.decode("utf-8", "replace"), e.system, self._long_size)
            except TraceError as err:
                raise TraceError(f"{self.path}: {err}") from None
            self._parsed[event_id] = fmt
        return fmt

    def ids_of_systems(self, systems: set[str]) -> list[int]:
        return [e.id for e in self.entries if e.system in systems]

    def common_field(self, name: str) -> tuple[int, int]:
        """(offset, size) of a common field, from the first format (as libtraceevent does).

        Every kernel since 2.6.31 puts ``common_type`` and ``common_pid`` in a record's first
        8 bytes, the least any data record holds; anything else is a corrupt format.
        """
        for e in self.entries:
            f = self.format(e.id).field(name)
            if f is not None:
                if f.offset + f.size > COMMON_HEADER_SIZE or f.size not in (1, 2, 4, 8):
                    raise TraceError(f"{self.path}: corrupt event format {e.name}: {name} at offset {f.offset} "
                                     f"({f.size} bytes), outside the records' {COMMON_HEADER_SIZE}-byte common header")
                return f.offset, f.size
        raise TraceError(f"no event format defines {name}; the trace.dat metadata is incomplete")
