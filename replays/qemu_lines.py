"""QEMU's and the lab's memslot lines, parsed: the only place that knows their text.

QEMU writes ``kvm_set_user_memory`` after every KVM_SET_USER_MEMORY_REGION (three formats:
QEMU <= 7.2 folds the address space into ``Slot#``, 8.x adds ``AddrSpace#``, >= 9.0 adds
guest_memfd fields) and ``kvm_clear_dirty_log`` after every KVM_CLEAR_DIRTY_LOG
(docs/qemu-memslot-lines.md §2, §4). The lab adds ``kvmlab_*`` lines (lab/README.md), used only as
hints.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SET_MEM = re.compile(
    r"kvm_set_user_memory\s+(?:AddrSpace#(?P<as>\d+)\s+)?Slot#(?P<slot>\d+)\s+flags=(?P<flags>0x[0-9a-fA-F]+)\s+"
    r"gpa=(?P<gpa>0x[0-9a-fA-F]+)\s+size=(?P<size>0x[0-9a-fA-F]+)\s+ua=(?P<ua>0x[0-9a-fA-F]+)"
    r"(?:.*?)\sret=(?P<ret>-?\d+)"
)
_CLEAR_DIRTY = re.compile(r"kvm_clear_dirty_log\s+slot#(?P<slot>\d+)\s+start\s+(?P<start>0x[0-9a-fA-F]+)\s+"
                          r"size\s+(?P<size>0x[0-9a-fA-F]+)")
_LAB_MOVE = re.compile(
    r"kvmlab_memslot_move\s+AddrSpace#(?P<as>\d+)\s+Slot#(?P<slot>\d+)\s+flags=(?P<flags>0x[0-9a-fA-F]+)\s+"
    r"old_gpa=0x[0-9a-fA-F]+\s+gpa=(?P<gpa>0x[0-9a-fA-F]+)\s+size=(?P<size>0x[0-9a-fA-F]+)\s+"
    r"ua=(?P<ua>0x[0-9a-fA-F]+).*?\sret=(?P<ret>-?\d+)")
_LAB_QUIRK = re.compile(r"kvmlab_start\b.*\bslot_zap_all_quirk=(?P<q>[01])")
#: the lab prints ``kvmlab_dirty_log Slot#N dirty_pages=D`` after each KVM_GET_DIRTY_LOG (lab/README.md)
_LAB_GET_DIRTY = re.compile(r"kvmlab_(?:get_)?dirty_log\s+(?:AddrSpace#(?P<as>\d+)\s+)?Slot#(?P<slot>\d+)")


@dataclass
class SlotLine:
    """One ``kvm_set_user_memory`` line, as QEMU printed it."""

    seq: int | None
    pid: int
    as_id: int
    slot: int  # as_id << 16 | id
    flags: int
    gpa: int
    size: int
    ua: int
    ret: int


def parse_set_memory(text: str, seq: int | None, pid: int) -> SlotLine | None:
    """Parse one ``kvm_set_user_memory`` message in any of QEMU's three formats."""
    m = _SET_MEM.search(text)
    if m is None:
        return None
    raw_slot = int(m["slot"])
    as_id = int(m["as"]) if m["as"] is not None else raw_slot >> 16  # <= 7.2 folds as into Slot#
    slot = (as_id << 16) | (raw_slot & 0xFFFF)
    return SlotLine(seq, pid, as_id, slot, int(m["flags"], 16), int(m["gpa"], 16), int(m["size"], 16),
                    int(m["ua"], 16), int(m["ret"]))


def parse_lab_move(text: str, seq: int | None, pid: int) -> SlotLine | None:
    m = _LAB_MOVE.search(text)
    if m is None:
        return None
    as_id = int(m["as"])
    return SlotLine(seq, pid, as_id, (as_id << 16) | int(m["slot"]), int(m["flags"], 16), int(m["gpa"], 16),
                    int(m["size"], 16), int(m["ua"], 16), int(m["ret"]))


def parse_clear_dirty(text: str) -> tuple[int, int, int] | None:
    """``kvm_clear_dirty_log slot#N start 0xFIRST size 0xNUM``: (slot, first page, pages)."""
    m = _CLEAR_DIRTY.search(text)
    return (int(m["slot"]), int(m["start"], 16), int(m["size"], 16)) if m else None


def parse_lab_get_dirty(text: str) -> int | None:
    """The slot (as << 16 | id) of a ``kvmlab_dirty_log`` line (address space 0 unless named)."""
    m = _LAB_GET_DIRTY.search(text)
    return (int(m["as"] or 0) << 16) | int(m["slot"]) if m else None


def parse_lab_quirk(text: str) -> int | None:
    """``slot_zap_all_quirk=N`` of a ``kvmlab_start`` line."""
    m = _LAB_QUIRK.search(text)
    return int(m["q"]) if m else None


# A QEMU -trace log line, in the forms users attach (docs/qemu-memslot-lines.md §1): the log backend
# ("PID@SEC.USEC:event msg", the prefix only with timestamps on), the kernel's text of QEMU's
# ftrace backend ("comm-PID [CPU] flags TS: tracing_mark_write: event msg"), simpletrace.py's
# "event DELTA pid=PID name=value..." and the bare message.
_LOG_PREFIX = re.compile(r"^\s*(?P<pid>\d+)@(?P<sec>\d+)\.(?P<usec>\d+):")
_FTRACE_PREFIX = re.compile(r"^\s*\S.*?-(?P<pid>\d+)\s+(?:\(\s*[\d-]+\)\s+)?\[\d+\]\s+(?:\S+\s+)?(?P<ts>\d+\.\d+):")
_SIMPLE = re.compile(r"kvm_set_user_memory\s+(?P<ts>\d+(?:\.\d+)?)\s+pid=(?P<pid>\d+)\s+(?P<args>.*)")
_SIMPLE_NAMES = {"as": "as", "as_id": "as", "slot": "slot", "flags": "flags", "gpa": "gpa", "guest_phys_addr": "gpa",
                 "start_addr": "gpa", "size": "size", "memory_size": "size", "ua": "ua", "userspace_addr": "ua",
                 "ret": "ret"}


@dataclass
class LogLine:
    """One ``kvm_set_user_memory`` line of a QEMU log: where it is in the file, its own clock."""

    lineno: int  # 1-based line number in the log
    pid: int | None  # QEMU's process id (log backend, simpletrace) or thread id (ftrace text)
    ts: float | None  # seconds on the log's own clock (gettimeofday, trace clock, or since start)
    line: SlotLine


def parse_log_line(text: str, lineno: int) -> LogLine | None:
    """A ``kvm_set_user_memory`` line in any of the forms above, or None."""
    if "kvm_set_user_memory" not in text and "kvmlab_memslot_move" not in text:
        return None
    m = _SIMPLE.search(text)
    if m is not None and "Slot#" not in text:
        args = dict(kv.split("=", 1) for kv in m["args"].split() if "=" in kv)
        f = {_SIMPLE_NAMES[k]: v for k, v in args.items() if k in _SIMPLE_NAMES}
        try:
            as_id = int(f.get("as", "0"), 0)
            simple = SlotLine(None, int(m["pid"]), as_id, (as_id << 16) | (int(f["slot"], 0) & 0xFFFF),
                              int(f.get("flags", "0"), 0), int(f["gpa"], 0), int(f["size"], 0),
                              int(f.get("ua", "0"), 0), int(f.get("ret", "0"), 0))
        except (KeyError, ValueError):
            return None
        return LogLine(lineno, int(m["pid"]), float(m["ts"]) / 1e6, simple)
    line = parse_set_memory(text, None, 0) if "kvm_set_user_memory" in text else parse_lab_move(text, None, 0)
    if line is None:
        return None
    pid: int | None = None
    ts: float | None = None
    if (m := _LOG_PREFIX.match(text)) is not None:
        pid, ts = int(m["pid"]), int(m["sec"]) + int(m["usec"]) / 10 ** len(m["usec"])
    elif (m := _FTRACE_PREFIX.match(text)) is not None:
        pid, ts = int(m["pid"]), float(m["ts"])
    line.pid = pid if pid is not None else 0
    return LogLine(lineno, pid, ts, line)
