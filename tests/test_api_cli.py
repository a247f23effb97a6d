"""The Python API (``kvmtrace.open``) and the ``info`` / ``convert`` commands on real recordings.

The oracle is independent of the reader: the per-event counts, totals and lost-event figures that
``trace-cmd report`` printed for each sample recording, saved beside it in ``NAME.counts.txt`` by
the lab when it was recorded.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from conftest import SAMPLES

import kvmtrace
from kvmtrace.dataset import EVENTS_FILE, GAPS_FILE, PART_FILE, partition_dir, read_metadata
from kvmtrace.parsers.schema import COMMON_NAMES

SAMPLE_FILES = sorted(SAMPLES.glob("*.dat"))


def report_counts(dat: Path) -> tuple[dict[str, int], int]:
    """Per-event counts and reported lost events from the trace-cmd section of the counts file."""
    text = dat.with_suffix(".counts.txt").read_text()
    section = text.split("## trace-cmd report:", 1)[1].split("\n## ", 1)[0]
    counts = {m[2]: int(m[1]) for m in re.finditer(r"^\s+(\d+)\s+(\w+)$", section.split("trace_marker lines")[0], re.M)}
    lost = int(re.search(r"lost_events_reported (\d+)", section)[1])
    return counts, lost


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvmtrace", *args], capture_output=True, text=True, timeout=300)


def test_samples_exist():
    assert len(SAMPLE_FILES) >= 14, "sample_traces/ lost its recordings (lab/record-samples.sh)"


@pytest.mark.parametrize("dat", SAMPLE_FILES, ids=lambda p: p.stem)
def test_open_matches_trace_cmd_counts(dat: Path):
    counts, lost = report_counts(dat)
    t = kvmtrace.open(dat)
    assert dict(t.info.event_counts) == counts
    assert t.event_names == sorted(counts)
    assert sum(t.info.lost_events.values()) == lost
    assert (t.info.version, t.info.compression, t.info.cpus) == (7, "zstd", 2)
    assert t.info.uname.split()[2] == t.info.kernel
    ev = t.events
    assert ev.columns[: len(COMMON_NAMES)] == list(COMMON_NAMES)
    assert ev["seq"].to_list() == list(range(ev.height))
    assert ev["ts"].is_sorted()
    spte = t.table("kvm_mmu_set_spte")
    assert spte.height == counts["kvm_mmu_set_spte"]
    assert spte.columns[: len(COMMON_NAMES)] == list(COMMON_NAMES)
    assert spte.schema["gfn"] == pl.UInt64 and spte.schema["spte"] == pl.UInt64
    # the per-event rows are exactly the events table's rows of that name
    assert spte["seq"].to_list() == ev.filter(pl.col("event") == "kvm_mmu_set_spte")["seq"].to_list()


def test_tables_of_events_that_never_fired_keep_their_schema():
    t = kvmtrace.open(SAMPLES / "mmio-zapall.dat")
    exits = t.table("kvm_exit")  # kvm_exit never fires on this host's backend
    assert exits.height == 0 and "exit_reason" in exits.columns
    assert "kvm_exit" not in t.event_names
    with pytest.raises(KeyError, match="no event 'no_such_event'"):
        t.table("no_such_event")


def test_to_parquet_round_trips(tmp_path: Path):
    """The API writes the layout convert writes (kvmtrace.dataset), and every table reads back equal."""
    t = kvmtrace.open(SAMPLES / "rom-zapslot.dat")
    out = tmp_path / "parquet"
    written = t.to_parquet(out)
    want = [Path(partition_dir(n)) / PART_FILE for n in t.event_names if t.arrow(n).num_rows]
    assert sorted(p.relative_to(out) for p in written) == sorted([*want, Path(EVENTS_FILE), Path(GAPS_FILE)])
    for name in t.event_names:
        if t.arrow(name).num_rows:
            assert pq.read_table(out / partition_dir(name) / PART_FILE).equals(t.arrow(name))
    assert pq.read_table(out / EVENTS_FILE).equals(t.data.events)
    assert sum(read_metadata(out / EVENTS_FILE)["event_counts"].values()) == t.info.total_events
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folder left behind"


def test_info_json_has_the_documented_keys():
    dat = SAMPLES / "churn-lost-zapall.dat"
    counts, lost = report_counts(dat)
    r = run_cli("info", "--json", str(dat))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert {"version", "compression", "cpus", "clock", "kernel", "total_events", "events", "lost_events"} <= set(doc)
    assert doc["events"] == counts and doc["total_events"] == sum(counts.values())
    assert sum(doc["lost_events"].values()) == lost > 0
    assert doc["clock"] == "global"


def test_info_text_names_the_kernel_and_the_loss():
    r = run_cli("info", str(SAMPLES / "churn-lost-zapall.dat"))
    assert r.returncode == 0, r.stderr
    assert re.search(r"^kernel:\s+6\.18", r.stdout, re.M)
    assert re.search(r"^lost events:\s+[1-9]", r.stdout, re.M)


def test_convert_writes_parquet(tmp_path: Path):
    r = run_cli("convert", str(SAMPLES / "mmio-zapslot.dat"), str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    counts, _ = report_counts(SAMPLES / "mmio-zapslot.dat")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [*(f"event={name}" for name in counts), "events.parquet", "gaps.parquet"])  # layout: kvmtrace.dataset
    set_spte = tmp_path / "out" / "event=kvm_mmu_set_spte" / "part-0.parquet"
    assert pq.read_table(set_spte).num_rows == counts["kvm_mmu_set_spte"]


@pytest.mark.parametrize("content,message", [
    (b"", "empty file"),
    (b"hello, this is not a trace\n", "no trace events found"),
    (b"\x17\x08\x44tracing9\x00", "version"),
], ids=["empty", "prose", "future-version"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, content: bytes, message: str):
    bad = tmp_path / "bad.dat"
    bad.write_bytes(content)
    out = tmp_path / "out"
    r = run_cli("convert", str(bad), str(out))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("kvmtrace: ") and message in r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()


def test_cut_short_file_is_one_line(tmp_path: Path):
    raw = (SAMPLES / "boot-zapall.dat").read_bytes()
    cut = tmp_path / "cut.dat"
    cut.write_bytes(raw[:5000])
    r = run_cli("info", str(cut))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert re.fullmatch(r"kvmtrace: .*truncated at byte 5000.*\n", r.stderr)
