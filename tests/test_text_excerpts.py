"""Real pasted traces from public sources (tests/data/text/, see its README), six kernel eras.

Every expected number below was counted or decoded by hand from the excerpt (the README says
where each excerpt comes from); none is copied from the reader's output.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from kvmtrace.parsers.errors import TraceError
from kvmtrace.parsers.schema import META_NULL_PREFIX
from kvmtrace.parsers.text import read_text

DATA = Path(__file__).parent / "data" / "text"

#: file -> (events per name, skipped line numbers), counted by hand.
EXPECTED = {
    "blog-2.6.3x-trace_pipe.txt": (
        {"kvm_entry": 3, "kvm_exit": 2, "kvm_mmio": 1, "kvm_apic": 1, "kvm_ack_irq": 1, "kvm_pio": 1},
        [3, 13],  # "[...]" and "^D"
    ),
    "code-4.x-trace_pipe.txt": (
        {"kvm_update_master_clock": 2, "kvm_write_tsc_offset": 1, "kvm_track_tsc": 1, "kvm_fpu": 2, "kvm_entry": 5,
         "kvm_exit": 5, "kvm_page_fault": 4, "kvm_emulate_insn": 4, "kvm_pio": 2, "kvm_userspace_exit": 3},
        [1],  # "$cat trace"
    ),
    "mail-2019-kiszka-report-quoted.txt": (
        {"kvm_nested_vmexit": 3, "kvm_fpu": 4, "kvm_userspace_exit": 2, "kvm_pio": 2, "kvm_mmu_get_page": 2,
         "kvm_entry": 2, "kvm_exit": 2},
        [1, 2, 22, 23],  # the quoted prose around the trace
    ),
    "mail-2020-wanpeng-wrapped.txt": (
        {"kvm_exit": 3, "kvm_page_fault": 3, "kvm_emulate_insn": 6, "kvm_fpu": 3, "kvm_userspace_exit": 3},
        [1, 2],
    ),
    "mail-2021-bugzilla-213781-qp.txt": (
        {"kvm_entry": 2, "kvm_exit": 2, "kvm_page_fault": 2, "kvm_fpu": 1, "kvm_userspace_exit": 1},
        # "The related trace:"; and both kvm_emulate_insn lines (19, 22) with their "(prot32)"
        # tails (21, 24): the event has no decoder, so its free text may or may not continue on
        # the next line, and the reader gives both up rather than guess.
        [1, 19, 21, 22, 24],
    ),
    "mail-2024-lefebvre-flowed.txt": (
        {"kvm_entry": 8, "kvm_exit": 7, "kvm_page_fault": 7, "fast_page_fault": 7},
        [75, 76, 78, 79, 80, 81, 82, 83],  # prose, the shell command, <snip>, the uniq -c output
    ),
}


def _read(name: str):
    with pytest.warns(Warning):
        return read_text(DATA / name)


def _col(data, event: str, col: str) -> list:
    return data.tables[event].column(col).to_pylist()


@pytest.mark.parametrize("name", EXPECTED)
def test_counts_and_skipped_lines(name):
    counts, skipped = EXPECTED[name]
    data = _read(name)
    assert dict(data.info.event_counts) == counts
    assert [n for n, _ in data.skipped] == skipped
    assert data.info.skipped_lines == len(skipped)


def test_2_6_3x_trace_pipe():
    d = _read("blog-2.6.3x-trace_pipe.txt")
    assert _col(d, "kvm_exit", "guest_rip") == [0xC011518C, 0xC01E4473]
    # Lower-case 2.6.3x names ("apic_access") are not in the kernel tables kvmtrace knows.
    assert _col(d, "kvm_exit", "exit_reason") == [None, None]
    assert META_NULL_PREFIX + b"exit_reason" in d.tables["kvm_exit"].schema.metadata
    assert _col(d, "kvm_mmio", "type") == [2] and _col(d, "kvm_mmio", "gpa") == [0xFEE000B0]
    assert _col(d, "kvm_entry", "ts")[0] == 11906_220178_000
    assert _col(d, "kvm_pio", "text") == ["pio_read at 0xc13e size 2 count 1"]


def test_4x_trace_pipe():
    d = _read("code-4.x-trace_pipe.txt")
    assert _col(d, "kvm_exit", "exit_reason") == [0] * 5 and _col(d, "kvm_exit", "isa") == [1] * 5
    assert _col(d, "kvm_exit", "info2")[0] == 0x80000B0E
    assert _col(d, "kvm_page_fault", "fault_address") == [0x1000, 0x66, 0x66, 0x66]
    assert _col(d, "kvm_page_fault", "error_code") == [0x14, 0, 9, 9]
    assert _col(d, "kvm_userspace_exit", "reason") == [2, 2, 5]
    assert _col(d, "kvm_entry", "rip") == [None] * 5
    assert d.tables["kvm_entry"].schema.metadata[b"kvmtrace.text_forms"] == b"<=5.8"  # "vcpu %u" only
    assert _col(d, "kvm_entry", "common_preempt_count") == [0] * 5  # "d..." : depth '.'


def test_old_trace_cmd_plugin_page_rendering():
    d = _read("mail-2019-kiszka-report-quoted.txt")
    get = d.tables["kvm_mmu_get_page"]
    assert get.column("gfn").to_pylist() == [0x3A22E, 0x3A22E]
    assert get.column("created").to_pylist() == [False, False]
    assert get.column("root_count").to_pylist() == [6, 6]
    assert get.column("unsync").to_pylist() == [False, False]
    # The old plugin prints the role by a layout the kernel no longer had: no exact word.
    assert get.column("role").null_count == 2 and get.column("mmu_valid_gen").null_count == 2
    assert get.schema.metadata[b"kvmtrace.text_forms"] == b"plugin before 2015"
    assert _col(d, "kvm_exit", "exit_reason") == [30, 30]  # plugin name IO_INSTRUCTION
    assert _col(d, "kvm_exit", "guest_rip") == [0x7FA9EE5224E4] * 2
    assert set(_col(d, "kvm_fpu", "comm")) == {"qemu-system-x86"} and set(_col(d, "kvm_fpu", "cpu")) == {7}


def test_wrapped_lines_rejoined():
    d = _read("mail-2020-wanpeng-wrapped.txt")
    # All three exits share a µs timestamp: seq keeps the kernel's order (CPU 38, 37, 36, by
    # their ns timestamps), which only the file's order still shows.
    assert _col(d, "kvm_exit", "vcpu_id") == [1, 2, 3]
    assert _col(d, "kvm_exit", "exit_reason") == [0x400] * 3 and _col(d, "kvm_exit", "isa") == [2] * 3
    assert _col(d, "kvm_exit", "info1") == [0x100000014] * 3
    assert _col(d, "kvm_userspace_exit", "reason") == [17] * 3
    assert set(_col(d, "kvm_exit", "comm")) == {"<...>"}


def test_quoted_printable_and_wraps():
    d = _read("mail-2021-bugzilla-213781-qp.txt")
    assert _col(d, "kvm_exit", "exit_reason") == [0x400, 0x400]
    assert _col(d, "kvm_exit", "info2") == [0xFC000, 0xFC000]
    assert _col(d, "kvm_entry", "rip") == [0xFC95A, 0xFC95A]
    assert _col(d, "kvm_page_fault", "error_code") == [0x14, 0x14]
    assert _col(d, "kvm_userspace_exit", "reason") == [17]
    reasons = dict(d.skipped)
    assert "cannot tell" in reasons[19] and "cannot tell" in reasons[22]
    assert set(_col(d, "kvm_entry", "comm")) == {"CPU 1/KVM"} and set(_col(d, "kvm_entry", "pid")) == {1278472}


def test_flowed_wraps_and_hashed_pointers():
    d = _read("mail-2024-lefebvre-flowed.txt")
    fpf = d.tables["fast_page_fault"]
    assert fpf.column("sptep").null_count == 7  # 00000000fd98c937 is a hash
    assert META_NULL_PREFIX + b"sptep" in fpf.schema.metadata
    assert set(fpf.column("error_code").to_pylist()) == {16}  # "F"
    assert set(fpf.column("cr2_or_gpa").to_pylist()) == {0x20FE612}
    assert set(fpf.column("old_spte").to_pylist()) == {0x61000034D4FE877}
    assert _col(d, "kvm_exit", "exit_reason") == [48] * 7
    assert set(_col(d, "kvm_page_fault", "error_code")) == {0x184}
    assert pl.Series(_col(d, "kvm_entry", "rip")).n_unique() == 1


def test_strict_names_the_first_bad_line():
    with pytest.raises(TraceError, match="line 1:"):
        read_text(DATA / "mail-2021-bugzilla-213781-qp.txt", strict=True)
