"""Per-CPU ring-buffer statistics (CPUSTAT options) and the lost events they reveal.

Real data: every recording here stores CPUSTAT; ``churn-lost-zapall.dat`` was recorded with a
64 KiB buffer in overwrite mode and its CPU 1 says ``overrun: 63617``. The expected values are
what ``trace-cmd report --stat`` prints, parsed here independently of the reader.

The case of the bug report (``overrun: 60338`` on CPU 0 read as "lost events: 0 (+1 gap)": the
page only flagged the loss, without a count) is rebuilt from real pages: a real v6 file's pages
with the missed-events bit set on one page and the CPUSTAT text of such a recording.
"""

from __future__ import annotations

import dataclasses
import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import NESTED, PUBLIC, SAMPLES
from tracedat_builder import content_of
from tracedat_oracle import run_report

from kvmtrace.parsers.schema import CpuStats
from kvmtrace.parsers.tracedat import read_tracedat
from kvmtrace.parsers.tracedat.constants import COMMIT_MISSING_EVENTS, PAGE_COMMIT_OFFSET
from kvmtrace.parsers.tracedat.cpustat import cpu_stats_by_buffer
from kvmtrace.parsers.tracedat.writer import write_tracedat
from kvmtrace.report.traceinfo import info_dict, render_info

LOST_SAMPLE = SAMPLES / "churn-lost-zapall.dat"
WITH_STATS = [PUBLIC / "example_rtapp.dat", PUBLIC / "trace.dat", PUBLIC / "raw_trace.dat",
              NESTED / "tdp-multi3-kt.dat", LOST_SAMPLE]
_KEYS = {"entries": "entries", "overrun": "overrun", "commit overrun": "commit_overrun", "bytes": "bytes",
         "oldest event ts": "oldest_event_ts", "now ts": "now_ts", "dropped events": "dropped_events",
         "read events": "read_events"}


def trace_cmd_stats(trace_cmd: str, path: Path) -> list[dict[str, object]]:
    """The per-CPU blocks ``trace-cmd report --stat`` prints (``CPU: N`` then ``key: value``)."""
    out = subprocess.run([trace_cmd, "report", "--stat", "-i", str(path)], capture_output=True, check=True,
                         text=True).stdout
    blocks = []
    for block in re.split(r"\n(?=CPU: \d+\n)", out)[1:]:
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        row: dict[str, object] = {"cpu": int(lines.pop("CPU"))}
        for key, attr in _KEYS.items():
            value = lines[key].strip()
            row[attr] = value if attr.endswith("_ts") else int(value)
        blocks.append(row)
    return blocks


@pytest.mark.parametrize("path", WITH_STATS, ids=lambda p: p.name)
def test_stats_are_what_trace_cmd_prints(path: Path, trace_cmd: str) -> None:
    info = read_tracedat(path).info
    theirs = trace_cmd_stats(trace_cmd, path)
    assert len(theirs) == info.cpus
    assert [dataclasses.asdict(s) for s in info.cpu_stats] == theirs


def test_no_stats_in_old_files(public_dir: Path) -> None:
    assert read_tracedat(public_dir / "sched_load.dat").info.cpu_stats == ()


def test_overrun_counts_as_lost(trace_cmd: str) -> None:
    """CPU 1 of the 64 KiB recording: the kernel overwrote 63617 events."""
    info = read_tracedat(LOST_SAMPLE).info
    assert [(s.cpu, s.overrun, s.read_events, s.lost) for s in info.cpu_stats] == [
        (0, 0, 0, 0), (1, 63617, 2163, 63617)]
    assert dict(info.lost_events) == {1: 63617} and dict(info.lost_unknown) == {}
    assert info.total_events == 2163 == len(run_report(trace_cmd, LOST_SAMPLE).events)


def test_info_shows_per_cpu_stats() -> None:
    def run(*a: str) -> str:
        return subprocess.run([sys.executable, "-m", "kvmtrace", "info", *a, str(LOST_SAMPLE)],
                              capture_output=True, text=True, timeout=300, check=True).stdout

    text = run()
    assert re.search(r"^lost events:\s+63617\b", text, re.M)
    assert re.search(r"^\s+1\s+2163\s+0\s+63617\s+0\s+0$", text, re.M), text
    assert re.search(r"^\s+0\s+0\s+0\s+0\s+0\s+0$", text, re.M), text
    doc = json.loads(run("--json"))
    assert [(s["cpu"], s["entries"], s["overrun"], s["lost"]) for s in doc["cpu_stats"]] == [
        (0, 0, 0, 0), (1, 0, 63617, 63617)]


def _stat(cpu: int, overrun: int = 0, dropped: int = 0, read: int = 0) -> bytes:
    """A CPUSTAT text as the kernel's per_cpu/cpuN/stats prints it after trace-cmd's CPU line."""
    return (f"CPU: {cpu}\nentries: 0\noverrun: {overrun}\ncommit overrun: 0\nbytes: 0\n"
            f"oldest event ts:  2083.000001\nnow ts:  2085.000002\ndropped events: {dropped}\n"
            f"read events: {read}\n").encode()


@pytest.fixture(scope="module")
def flagged(public_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """sched_load.dat's real pages, the first page of CPU 0 flagged "events were dropped before"
    without a stored count (the kernel had no room for it), and stats saying how many."""
    content = content_of(public_dir / "sched_load.dat")
    cpu0 = bytearray(content.cpu_data[0])
    commit = struct.unpack_from("<Q", cpu0, PAGE_COMMIT_OFFSET)[0]
    struct.pack_into("<Q", cpu0, PAGE_COMMIT_OFFSET, commit | COMMIT_MISSING_EVENTS)
    events = read_tracedat(public_dir / "sched_load.dat").events["cpu"].value_counts().to_pylist()
    per_cpu = {int(e["values"]): e["counts"] for e in events}
    return content, bytes(cpu0), per_cpu, tmp_path_factory.mktemp("stats")


def test_overrun_with_an_unsized_gap(flagged: tuple, trace_cmd: str) -> None:
    """Was "lost events: 0 (+1 gap)": the page said some were lost, the stats say 60338."""
    content, cpu0, per_cpu, tmp = flagged
    stats = tuple(_stat(c, overrun=60338 if c == 0 else 0, read=per_cpu.get(c, 0)) for c in range(6))
    out = tmp / "overrun.dat"
    write_tracedat(out, dataclasses.replace(content, cpu_data=(cpu0, *content.cpu_data[1:]), cpu_stats=stats),
                   version=6, compression="none")
    report = run_report(trace_cmd, out)
    assert report.dropped == [(0, None)]  # trace-cmd: "CPU:0 [EVENTS DROPPED]", no count
    assert [s["overrun"] for s in trace_cmd_stats(trace_cmd, out)] == [60338, 0, 0, 0, 0, 0]
    info = read_tracedat(out).info
    assert dict(info.lost_events) == {0: 60338} and dict(info.lost_unknown) == {}
    assert info.total_events == len(report.events)
    assert re.search(r"^lost events:\s+60338\s+\[cpu0: 60338\]$", render_info(info), re.M)
    assert info_dict(info)["lost_events"] == {"0": 60338}


def test_dropped_events_without_any_page_flag(flagged: tuple, trace_cmd: str) -> None:
    """Non-overwrite mode: a full buffer drops new events and no page header says so; only the
    stats ("dropped events") tell."""
    content, _, per_cpu, tmp = flagged
    stats = tuple(_stat(c, dropped=777 if c == 2 else 0, read=per_cpu.get(c, 0)) for c in range(6))
    out = tmp / "dropped.dat"
    write_tracedat(out, dataclasses.replace(content, cpu_stats=stats), version=7, compression="zstd")
    assert run_report(trace_cmd, out).dropped == []
    assert [s["dropped_events"] for s in trace_cmd_stats(trace_cmd, out)] == [0, 0, 777, 0, 0, 0]
    data = read_tracedat(out)
    assert data.gaps.num_rows == 0
    assert dict(data.info.lost_events) == {2: 777}


def test_instance_stats_are_grouped() -> None:
    """trace-cmd's layout (add_buffer_stat): the top buffer's CPUs, then "\\nBuffer: NAME\\n\\n"
    and that instance's CPUs."""
    payloads = [_stat(0, read=5), _stat(1, overrun=3), b"\nBuffer: second\n\n\0", _stat(0, dropped=9), _stat(1)]
    stats = cpu_stats_by_buffer(payloads)
    assert list(stats) == ["", "second"]
    assert [(s.cpu, s.read_events, s.lost) for s in stats[""]] == [(0, 5, 0), (1, 0, 3)]
    assert [(s.cpu, s.lost) for s in stats["second"]] == [(0, 9), (1, 0)]
    # An older kernel's stats without the newer keys: those stay unknown, not zero.
    old = cpu_stats_by_buffer([b"CPU: 3\nentries: 1\noverrun: 2\ncommit overrun: 0\n"])[""]
    assert old == (CpuStats(cpu=3, entries=1, overrun=2, commit_overrun=0),)
