"""QEMU's and the lab's memslot lines, parsed: the only place that knows their text.

QEMU writes ``kvm_set_user_memory`` after every KVM_SET_USER_MEMORY_REGION (three formats: QEMU
<= 7.2 folds the address space into ``Slot#``, 8.x adds ``AddrSpace#``, >= 9.0 adds guest_memfd
fields) and ``kvm_clear_dirty_log`` after every KVM_CLEAR_DIRTY_LOG (kvm-host-notes.md). The lab
adds ``kvmlab_*`` lines (lab/README.md), used only as hints.
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
_LAB_GET_DIRTY = re.compile(r"kvmlab_get_dirty_log\s+AddrSpace#(?P<as>\d+)\s+Slot#(?P<slot>\d+)")


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


def parse_lab_move(text: str, seq: int, pid: int) -> SlotLine | None:
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
    """The slot (as << 16 | id) of a ``kvmlab_get_dirty_log`` line."""
    m = _LAB_GET_DIRTY.search(text)
    return (int(m["as"]) << 16) | int(m["slot"]) if m else None


def parse_lab_quirk(text: str) -> int | None:
    """``slot_zap_all_quirk=N`` of a ``kvmlab_start`` line."""
    m = _LAB_QUIRK.search(text)
    return int(m["q"]) if m else None
