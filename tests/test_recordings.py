"""The recordings added for the real-trace and 2019-scenario work (tests/data READMEs): each reads
like trace-cmd and like the kernel's own text, and shows the scenario it was recorded for.

Oracles: ``NAME.counts.txt`` (``trace-cmd report`` and the kernel text, counted by lab/counts.py
when the file was recorded), the kernel's text twin ``NAME.txt.gz`` read with plain regular
expressions here, and the run's own QEMU log. Replay verdicts are asserted only where today's
replay is right; what it says about the rest is listed in the READMEs' notes, not pinned here.
"""

from __future__ import annotations

import gzip
import re
from collections import Counter
from pathlib import Path

import pytest
from conftest import DATA

from kvmtrace import parsers
from kvmtrace.replays import replay

#: file (under tests/data) -> the kernel release it was recorded on (L1 for nested/, the host for host/)
RECORDINGS = {
    "nested/tdpmmu0-ptslot-noquirk-qlog-kt": "6.12.107+deb12-amd64",
    "nested/tdpmmu0-churn-noquirk-qlog-kt": "6.12.107+deb12-amd64",
    "nested/tdp-multi4-kt": "6.12.107+deb12-amd64",
    "nested/k61tdp-multi4-kt": "6.1.0-56-amd64",
    "host/seabios-boot": "6.18.44-fc-v1147",
    "host/churn-sched-zapall": "6.18.44-fc-v1147",
}
QLOG = ["nested/tdpmmu0-ptslot-noquirk-qlog-kt", "nested/tdpmmu0-churn-noquirk-qlog-kt"]
MULTI4 = ["nested/tdp-multi4-kt", "nested/k61tdp-multi4-kt"]

#: QEMU >= 9.0 `kvm_set_user_memory` as its log trace backend prints it (accel/kvm/trace-events,
#: scripts/tracetool/backend/log.py: thread id, gettimeofday() seconds and microseconds).
QEMU_LOG_SET_MEMORY = re.compile(
    r"^(?P<tid>\d+)@(?P<sec>\d+)\.(?P<usec>\d{6}):kvm_set_user_memory AddrSpace#(?P<as>\d+) Slot#(?P<slot>\d+) "
    r"flags=0x[0-9a-f]+ gpa=0x(?P<gpa>[0-9a-f]+) size=0x(?P<size>[0-9a-f]+) ua=0x[0-9a-f]+ "
    r"guest_memfd=-?\d+ guest_memfd_offset=0x[0-9a-f]+ ret=-?\d+$"
)
QEMU_LOG_LINE = re.compile(r"^(?P<tid>\d+)@(?P<sec>\d+)\.(?P<usec>\d{6}):(?P<event>\w+) ")
#: "comm-pid [cpu] flags ts: event: rest" in the kernel's text
TEXT_EVENT = re.compile(
    r"^\s*(?P<comm>.+?)-(?P<pid>\d+)\s+\[\d+\]\s+\S+\s+(?P<ts>\d+\.\d+): (?P<name>\w+): ?(?P<rest>.*)$")


def _path(name: str, suffix: str) -> Path:
    return DATA / f"{name}{suffix}"


def _counts(name: str, section: str) -> dict[str, int]:
    """Per-event counts of one section (``## trace-cmd report`` or ``## ftrace text``) of the counts file."""
    text = _path(name, ".counts.txt").read_text().split(section, 1)[1].split("trace_marker lines", 1)[0]
    return {m[2]: int(m[1]) for m in re.finditer(r"^\s+(\d+)\s+(\w+)\s*$", text, re.M)}


def _text_events(name: str) -> list[re.Match[str]]:
    with gzip.open(_path(name, ".txt.gz"), "rt") as f:
        return [m for line in f if not line.startswith("#") and (m := TEXT_EVENT.match(line))]


@pytest.mark.parametrize("name", RECORDINGS)
def test_reads_like_trace_cmd_and_the_kernel_text(name: str) -> None:
    data = parsers.read(_path(name, ".dat"))
    assert {k: t.num_rows for k, t in data.tables.items() if t.num_rows} == _counts(name, "## trace-cmd report")
    assert data.info.kernel == RECORDINGS[name]
    assert not data.info.lost_events and not data.info.lost_unknown
    twin = parsers.read(_path(name, ".txt.gz"))
    assert {k: t.num_rows for k, t in twin.tables.items() if t.num_rows} == _counts(name, "## ftrace text")


# --- the 2019 scenario: legacy MMU in TDP mode, zap-slot, memslot lines only in a QEMU log ------


@pytest.mark.parametrize("name", QLOG)
def test_memslot_lines_are_only_in_the_qemu_log_on_its_own_clock(name: str) -> None:
    lines = _path(name, ".qemu.log").read_text().splitlines()
    parsed = [QEMU_LOG_LINE.match(line) for line in lines]
    assert all(parsed), [line for line, m in zip(lines, parsed) if not m][:3]
    qemu = [QEMU_LOG_SET_MEMORY.match(line) for line in lines if ":kvm_set_user_memory " in line]
    assert qemu and all(qemu)
    # One QEMU line per ioctl (these scenarios have no read-only toggle), deletes among them.
    assert len(qemu) == sum(m["event"] == "kvmlab_memslot_ioctl" for m in parsed)
    assert any(int(m["size"], 16) == 0 for m in qemu)
    # Nothing of it is in the trace: no trace_marker write at all.
    data = parsers.read(_path(name, ".dat"))
    assert "print" not in {k for k, t in data.tables.items() if t.num_rows}
    # The ioctl thread is a thread of the trace; the clocks differ: CLOCK_REALTIME (seconds since
    # 1970) in the log, seconds since L1's boot in the trace (trace_clock=global).
    pids = {pid for t in data.tables.values() if t.num_rows for pid in t.column("pid").to_pylist()}
    assert {int(m["tid"]) for m in qemu} <= pids
    assert min(int(m["sec"]) for m in qemu) > 1_600_000_000 and data.info.last_ts / 1e9 < 100_000


@pytest.mark.parametrize("name", QLOG)
def test_legacy_tdp_with_zap_slot(name: str) -> None:
    """kvm.tdp_mmu=0 on an NPT host: every shadow page is direct, no TDP MMU event; with
    KVM_X86_QUIRK_SLOT_ZAP_ALL disabled no delete/move fires kvm_mmu_zap_all_fast."""
    events = _text_events(name)
    names = Counter(m["name"] for m in events)
    assert names["kvm_mmu_get_page"] > 0 and names["kvm_mmu_set_spte"] > 0
    assert all(" direct " in m["rest"] for m in events if m["name"] == "kvm_mmu_get_page")
    assert names["kvm_tdp_mmu_spte_changed"] == 0 and names["kvm_mmu_zap_all_fast"] == 0
    assert replay(parsers.read(_path(name, ".dat"))).mmu == "legacy_tdp"


def test_ptslot_leaf_removals_are_seen_only_through_reinstalls() -> None:
    """The page-table slot is mapped by one 2 MiB leaf (L1 backs it with a huge page). Its removal
    on each delete/move goes through the rmaps, untraced; what the trace shows is the same leaf
    installed again each time the guest uses the slot at that address (ptslot --rounds 3: four
    times at 0x20000000, three at 0x20400000), and no shadow page of the slot is zapped."""
    name = "nested/tdpmmu0-ptslot-noquirk-qlog-kt"
    events = _text_events(name)
    leaf = Counter(
        int(m["rest"].split()[1], 16) for m in events
        if m["name"] == "kvm_mmu_set_spte" and m["rest"].split()[1] in ("20000", "20400") and " level 2 " in m["rest"]
    )
    assert leaf == {0x20000: 4, 0x20400: 3}
    zapped = [int(m["rest"].split(" gfn ")[1].split()[0], 16)
              for m in events if m["name"] == "kvm_mmu_prepare_zap_page"]
    assert zapped and not [g for g in zapped if 0x20000 <= g < 0x20600]
    deletes = [line for line in _path(name, ".qemu.log").read_text().splitlines()
               if ":kvm_set_user_memory " in line and " size=0x0 " in line and " gpa=0x20000000 " in line]
    assert len(deletes) == 4  # the slot left 0x20000000 four times (three re-creations, the final delete)


# --- four vCPUs on the TDP MMU ---------------------------------------------------------------------


@pytest.mark.parametrize("name", MULTI4)
def test_four_vcpus_on_the_tdp_mmu(name: str) -> None:
    data = parsers.read(_path(name, ".dat"))
    assert set(data.tables["kvm_entry"].column("vcpu_id").to_pylist()) == {0, 1, 2, 3}
    threads = [b for b in data.tables["print"].column("buf").to_pylist() if b.startswith("kvmlab_vcpu_thread ")]
    tids = {int(re.search(r"tid=(\d+)", b)[1]) for b in threads}
    assert len(tids) == 4
    assert tids <= set(data.tables["kvm_entry"].column("pid").to_pylist())
    assert data.tables["kvm_tdp_mmu_spte_changed"].num_rows > 0


# --- this host: a real QEMU SeaBIOS boot, and sched events beside kvm --------------------------------


def test_seabios_boot_has_pages_but_no_spte_installs() -> None:
    """Real-mode SeaBIOS on this host's shadow MMU: every instruction is emulated, so KVM builds
    roots and zaps them (QEMU's memslot changes) but installs no SPTE."""
    name = "host/seabios-boot"
    counts = _counts(name, "## trace-cmd report")
    assert "kvm_mmu_set_spte" not in counts
    # Real mode runs without paging: every page KVM builds is direct (no guest table to shadow).
    assert all(" direct " in m["rest"] for m in _text_events(name) if m["name"] == "kvm_mmu_get_page")
    assert counts["kvm_mmu_get_page"] > 0
    assert counts["kvm_mmu_zap_all_fast"] > 0
    assert counts["kvm_mmu_prepare_zap_page"] > 0
    assert {m["comm"] for m in _text_events(name)} >= {"qemu-system-x86"}
    assert "SeaBIOS (version" in _path(name, ".console.txt").read_text()


def test_churn_with_sched_events() -> None:
    """sched_switch/sched_wakeup were recorded with tracefs filters on the lab's task name."""
    name = "host/churn-sched-zapall"
    events = _text_events(name)
    switches = [m["rest"] for m in events if m["name"] == "sched_switch"]
    wakeups = [m["rest"] for m in events if m["name"] == "sched_wakeup"]
    assert switches and all("prev_comm=kvmlab " in r or "next_comm=kvmlab " in r for r in switches)
    assert wakeups and all(r.startswith("comm=kvmlab ") for r in wakeups)
    result = replay(parsers.read(_path(name, ".dat")))
    assert (result.mmu, result.zap_policy) == ("shadow", "zap_all")
    assert not [f for f in result.findings.to_pylist() if f["severity"] == "error"]
