"""The workload lab and the recordings it made.

Two groups of tests:
- the committed recordings in ``sample_traces/`` (always run): each is complete, loses events only
  when meant to, and its kernel events agree with its markers (zap policy, QEMU line formats,
  vCPU threads);
- the lab itself (``kvm`` mark): it builds, runs, and a short fresh recording has the same facts
  (those recordings also carry the ``tracefs`` mark: they run only with KVMTRACE_TRACEFS_TESTS=1).

The oracle is the kernel's own text of each recording (``NAME.txt.gz`` / ``trace``), parsed here
independently of kvmtrace's readers, plus ``trace-cmd report`` counts in ``NAME.counts.txt``.
"""

from __future__ import annotations

import fcntl
import gzip
import itertools
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, SAMPLES

LAB = REPO / "lab"
KVMLAB = LAB / "build" / "kvmlab"
TRACEFS = Path("/sys/kernel/tracing")
REC_LOCK = Path("/run/kvmtrace-rec.lock")

LINE = re.compile(
    r"^\s*(?P<comm>.+?)-(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+\S+\s+(?P<ts>\d+\.\d+):\s+(?P<name>\w+):\s?(?P<rest>.*)$"
)
QEMU_SET_MEMORY = re.compile(
    r"^kvm_set_user_memory AddrSpace#(?P<as>\d+) Slot#(?P<slot>\d+) flags=0x(?P<flags>[0-9a-f]+) "
    r"gpa=0x(?P<gpa>[0-9a-f]+) size=0x(?P<size>[0-9a-f]+) ua=0x(?P<ua>[0-9a-f]+) "
    r"guest_memfd=-1 guest_memfd_offset=0x0 ret=(?P<ret>-?\d+)$"
)
QEMU_CLEAR_DIRTY = re.compile(r"^kvm_clear_dirty_log slot#\d+ start 0x[0-9a-f]+ size 0x[0-9a-f]+$")
KV = re.compile(r"(\w+)=(\S+)")
# Marker lines written right after an ioctl that takes a slot (or its old range) away.
SLOT_REMOVAL = re.compile(r"^kvmlab_memslot_(ioctl .*kind=(delete|ro-toggle-delete)|move) ")


@dataclass(frozen=True)
class Line:
    """One record of the kernel's trace text."""

    pid: int
    name: str
    rest: str

    @property
    def marker(self) -> str | None:
        return self.rest if self.name == "tracing_mark_write" else None


def read_text(path: Path) -> list[Line]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", errors="replace") as f:
        return [
            Line(int(m["pid"]), m["name"], m["rest"].strip())
            for m in map(LINE.match, f)
            if m is not None
        ]


def fields(marker: str) -> dict[str, str]:
    return dict(KV.findall(marker))


def counts_summary(path: Path) -> dict[str, str]:
    """The summary lines at the top of NAME.counts.txt (written by lab/counts.py)."""
    head = path.read_text().split("\n\n", 1)[0]
    return {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in head.splitlines()}


@dataclass(frozen=True)
class Removal:
    """A slot-removal marker, the gfn range it took away, and the events its thread emitted
    since that thread's previous marker: the kernel's work for the ioctl (markers follow it)."""

    marker: str
    gfns: range
    events: list[Line]


def removals(lines: list[Line]) -> Iterator[Removal]:
    live: dict[str, tuple[int, int]] = {}
    since: dict[int, list[Line]] = {}
    for line in lines:
        marker = line.marker
        if marker is None:
            since.setdefault(line.pid, []).append(line)
            continue
        f = fields(marker)
        slot = marker.split("Slot#")[1].split()[0] if "Slot#" in marker else ""
        if SLOT_REMOVAL.match(marker):
            gpa, size = (int(f["old_gpa"], 16), int(f["size"], 16)) if "old_gpa" in f else live[slot]
            yield Removal(marker, range(gpa >> 12, (gpa + size) >> 12), since.get(line.pid, []))
        if marker.startswith(("kvmlab_memslot_move ", "kvmlab_memslot_ioctl ")) and f["size"] != "0x0":
            live[slot] = (int(f["gpa"], 16), int(f["size"], 16))
        since[line.pid] = []


# --- checks shared by the committed samples and fresh recordings -----------------------------


def check_start_marker(lines: list[Line], zap_all: bool) -> None:
    starts = [fields(ln.marker) for ln in lines if ln.marker and ln.marker.startswith("kvmlab_start ")]
    assert len(starts) == 1
    assert starts[0]["slot_zap_all_quirk"] == ("1" if zap_all else "0")
    configs = [ln for ln in lines if ln.marker and ln.marker.startswith("kvmlab_config ")]
    assert len(configs) == (0 if zap_all else 1)


def check_qemu_lines(lines: list[Line]) -> None:
    """QEMU's lines parse, and follow QEMU's slot semantics: ids reused lowest-free first, a
    delete names the live slot's gpa, a flags change keeps gpa and size."""
    live: dict[int, tuple[int, int]] = {}
    seen = 0
    for line in lines:
        marker = line.marker
        if marker is None:
            continue
        if marker.startswith("kvm_clear_dirty_log "):
            assert QEMU_CLEAR_DIRTY.match(marker), marker
        move = fields(marker) if marker.startswith("kvmlab_memslot_move ") else None
        if move:
            slot = int(marker.split("Slot#")[1].split()[0])
            assert live[slot] == (int(move["old_gpa"], 16), int(move["size"], 16))
            live[slot] = (int(move["gpa"], 16), int(move["size"], 16))
        if not marker.startswith("kvm_set_user_memory "):
            continue
        m = QEMU_SET_MEMORY.match(marker)
        assert m, marker
        seen += 1
        slot, gpa, size = int(m["slot"]), int(m["gpa"], 16), int(m["size"], 16)
        assert m["ret"] == "0"
        if size == 0:
            assert live.pop(slot)[0] == gpa
        elif slot in live:
            assert live[slot] == (gpa, size)  # flags-only change or read-only toggle
        else:
            assert slot == min(set(range(len(live) + 1)) - set(live))
            live[slot] = (gpa, size)
    assert seen >= 2


def check_zap_all(lines: list[Line]) -> None:
    """Under the quirk every slot removal zaps everything: kvm_mmu_zap_all_fast, generations
    alternating."""
    found = list(removals(lines))
    assert found
    for r in found:
        assert "kvm_mmu_zap_all_fast" in [e.name for e in r.events], r.marker
    gens = [int(ln.rest.split()[1]) for ln in lines if ln.name == "kvm_mmu_zap_all_fast"]
    assert all(a != b for a, b in itertools.pairwise(gens))


def check_zap_slot(lines: list[Line]) -> None:
    """Without the quirk nothing is zapped wholesale, and a removal zaps only shadow pages whose
    gfn lies in the removed range."""
    assert "kvm_mmu_zap_all_fast" not in {ln.name for ln in lines}
    for r in removals(lines):
        for e in r.events:
            if e.name == "kvm_mmu_prepare_zap_page":
                assert int(e.rest.split(" gfn ")[1].split()[0], 16) in r.gfns, (r.marker, e.rest)


def check_vcpu_threads(lines: list[Line], vcpus: int) -> None:
    tids = [int(fields(ln.marker)["tid"]) for ln in lines if ln.marker and ln.marker.startswith("kvmlab_vcpu_thread ")]
    assert len(tids) == vcpus
    spte_pids = {ln.pid for ln in lines if ln.name == "kvm_mmu_set_spte"}
    assert set(tids) <= spte_pids


# --- the committed samples ---------------------------------------------------------------------

SAMPLE_NAMES = sorted(p.name[:-4] for p in SAMPLES.glob("*.dat"))


def test_samples_exist_and_are_documented() -> None:
    readme = (SAMPLES / "README.md").read_text()
    scenarios = {name.split("-")[0] for name in SAMPLE_NAMES}
    assert scenarios >= {"boot", "churn", "mmio", "dirty", "multi", "rom", "ptslot"}
    for name in SAMPLE_NAMES:
        assert f"| {name} |" in readme
        assert (SAMPLES / f"{name}.txt.gz").is_file()
        assert (SAMPLES / f"{name}.counts.txt").is_file()
        assert (SAMPLES / f"{name}.dat").stat().st_size < 2_000_000


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_sample_counts_agree_and_lose_only_when_meant(name: str) -> None:
    summary = counts_summary(SAMPLES / f"{name}.counts.txt")
    assert summary["report_matches_text"] == "True"
    lost = int(summary["lost_events"])
    with gzip.open(SAMPLES / f"{name}.txt.gz", "rt") as f:
        header = next(line for line in f if "entries-in-buffer/entries-written:" in line)
    in_buffer, written = map(int, header.split(":")[1].split()[0].split("/"))
    report = (SAMPLES / f"{name}.counts.txt").read_text().split("## ftrace")[0]
    if "-lost-" in name:
        assert lost == written - in_buffer > 0
        assert "lost_event_markers 0 " not in report
    else:
        assert lost == 0 and in_buffer == written
        assert "lost_event_markers 0 lost_events_reported 0" in report


@pytest.mark.parametrize("name", [n for n in SAMPLE_NAMES if "-lost-" not in n])
def test_sample_markers_match_kernel_events(name: str) -> None:
    lines = read_text(SAMPLES / f"{name}.txt.gz")
    zap_all = name.endswith("-zapall")
    assert {"kvm_mmu_set_spte", "kvm_mmu_pagetable_walk"} <= {ln.name for ln in lines}
    check_start_marker(lines, zap_all)
    check_qemu_lines(lines)
    if not name.startswith("boot"):
        (check_zap_all if zap_all else check_zap_slot)(lines)


def test_multi_sample_has_three_vcpu_threads() -> None:
    check_vcpu_threads(read_text(SAMPLES / "multi-zapall.txt.gz"), 3)


def test_ptslot_zapslot_zaps_the_guest_page_tables() -> None:
    """The shadow pages of the guest page tables living in the pt slot are the ones zapped."""
    lines = read_text(SAMPLES / "ptslot-zapslot.txt.gz")
    zapped = {
        int(e.rest.split(" gfn ")[1].split()[0], 16)
        for r in removals(lines) if "name=pt-slot" in r.marker
        for e in r.events if e.name == "kvm_mmu_prepare_zap_page"
    }
    # The root table of the second address space sits at the start of the slot, both places.
    assert {0x20000, 0x20400} <= zapped


@pytest.mark.parametrize("name", ["churn-thp-zapall", "churn-thp-zapslot"])
def test_thp_samples_have_2mib_sptes_for_2mib_guest_pages(name: str) -> None:
    """--thp: the 16 MiB BAR at 0xfd000000 is mapped by 2 MiB guest pages, so with huge host
    pages KVM installs level-2 SPTEs for it; without --thp the same run has none."""
    def levels(sample: str) -> set[int]:
        return {
            int(ln.rest.split(" level ")[1].split()[0])
            for ln in read_text(SAMPLES / f"{sample}.txt.gz")
            if ln.name == "kvm_mmu_set_spte" and 0xFD000 <= int(ln.rest.split()[1], 16) < 0xFE000
        }

    assert levels(name) >= {2}
    assert levels(name.replace("-thp", "")) == {1}


# --- the lab itself -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kvmlab() -> Path:
    if shutil.which(os.environ.get("CC", "gcc")) is None:
        pytest.skip("no C compiler (CI installs gcc)")
    subprocess.run([str(LAB / "build.sh")], check=True, capture_output=True)
    return KVMLAB


def test_lab_builds_and_lists_scenarios(kvmlab: Path) -> None:
    out = subprocess.run([str(kvmlab), "--help"], capture_output=True, text=True, check=True).stdout
    for scenario in ("boot", "churn", "mmio", "dirty", "multi", "rom", "ptslot"):
        assert scenario in out


def test_lab_rejects_unknown_scenario(kvmlab: Path) -> None:
    run = subprocess.run([str(kvmlab), "reboot"], capture_output=True, text=True)
    assert run.returncode == 2 and "unknown scenario" in run.stderr


def _require_kvm() -> None:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("/dev/kvm is not usable here")


def _require_tracefs() -> None:
    _require_kvm()
    if not os.access(TRACEFS / "trace_marker", os.W_OK) or not os.access(TRACEFS / "tracing_on", os.W_OK):
        pytest.skip("tracefs is not writable here (needs root and a mounted tracefs)")
    if shutil.which("trace-cmd") is None:
        pytest.skip("trace-cmd is not installed")


@contextmanager
def recording_lock() -> Iterator[None]:
    """One recording at a time per machine (the project's flock convention); the recorder
    run underneath sees its ancestor holds the lock and goes ahead."""
    with open(REC_LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def record(out: Path, *args: str) -> list[Line]:
    with recording_lock():
        subprocess.run(
            [str(LAB / "record.sh"), "--buffer-kb", "8192", str(out), "--", *args],
            check=True, capture_output=True, timeout=120,
        )
    summary = counts_summary(out.with_suffix(".counts.txt"))
    assert summary["report_matches_text"] == "True"
    assert summary["lost_events"] == "0"
    return read_text(out.with_suffix(".txt.gz"))


@pytest.mark.kvm
def test_dry_run_markers_follow_qemu(kvmlab: Path, tmp_path: Path) -> None:
    """A read-only toggle is two ioctls and ONE QEMU line; nothing goes to tracefs."""
    _require_kvm()
    markers = tmp_path / "markers"
    markers.touch()
    subprocess.run([str(kvmlab), "rom", "--rounds", "1"], check=True, capture_output=True,
                   env={**os.environ, "KVMLAB_MARKER": str(markers)}, timeout=60)
    text = markers.read_text().splitlines()
    lines = [Line(0, "tracing_mark_write", t) for t in text]
    check_qemu_lines(lines)
    assert sum("kind=ro-toggle-delete" in t for t in text) == 2
    rom_lines = [t for t in text if t.startswith("kvm_set_user_memory ") and "gpa=0xc0000000 " in t]
    assert [re.search(r"flags=(\S+) .* size=(\S+)", t).groups() for t in rom_lines] == [
        ("0x2", "0x100000"), ("0x0", "0x100000"), ("0x2", "0x100000"), ("0x2", "0x0")]


@pytest.mark.kvm
def test_qemu_log_replaces_trace_marker(kvmlab: Path, tmp_path: Path) -> None:
    """--qemu-log: every line in QEMU's log-backend form (TID@SEC.USEC:), none to the marker file."""
    _require_kvm()
    markers, log = tmp_path / "markers", tmp_path / "qemu.log"
    markers.touch()
    before = time.time()
    subprocess.run([str(kvmlab), "rom", "--rounds", "1", "--qemu-log", str(log)], check=True, capture_output=True,
                   env={**os.environ, "KVMLAB_MARKER": str(markers)}, timeout=60)
    after = time.time()
    assert markers.read_text() == ""
    prefixed = [re.match(r"^(\d+)@(\d+\.\d{6}):(.*)$", line) for line in log.read_text().splitlines()]
    assert prefixed and all(prefixed)
    assert len({m[1] for m in prefixed}) == 1  # one thread makes every ioctl in rom
    assert all(before - 1 <= float(m[2]) <= after + 1 for m in prefixed)  # CLOCK_REALTIME
    assert [float(m[2]) for m in prefixed] == sorted(float(m[2]) for m in prefixed)
    check_qemu_lines([Line(0, "tracing_mark_write", m[3]) for m in prefixed])
    assert sum(m[3].startswith("kvm_set_user_memory ") for m in prefixed) == 6  # as in the dry run above


@pytest.mark.kvm
@pytest.mark.tracefs
def test_short_churn_recording_zaps_all_on_delete(kvmlab: Path, tmp_path: Path) -> None:
    _require_tracefs()
    lines = record(tmp_path / "churn", "churn", "--rounds", "1", "--pages", "32")
    assert "kvm_mmu_set_spte" in {ln.name for ln in lines}
    check_start_marker(lines, zap_all=True)
    check_qemu_lines(lines)
    check_zap_all(lines)
    check_vcpu_threads(lines, 1)


@pytest.mark.kvm
@pytest.mark.tracefs
def test_short_ptslot_recording_zaps_only_the_slot(kvmlab: Path, tmp_path: Path) -> None:
    _require_tracefs()
    lines = record(tmp_path / "ptslot", "ptslot", "--rounds", "1", "--pages", "64", "--no-zap-all-quirk")
    check_start_marker(lines, zap_all=False)
    check_qemu_lines(lines)
    check_zap_slot(lines)
    assert any(e.name == "kvm_mmu_prepare_zap_page" for r in removals(lines) for e in r.events)
