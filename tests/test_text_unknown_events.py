"""Events without a decoder: kept verbatim, with an explicit ``system``, and convertible to Parquet.

A null in the ``system`` dictionary made ``kvmtrace convert`` of any such text raise
``ArrowNotImplementedError``; the real samples hold undecoded kvm events (``kvm_fpu``...), and
a user's text may hold anything (here one ``sched_switch`` line as tracefs prints it).
"""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
from conftest import REPO, SAMPLES

from kvmtrace.parsers import read
from kvmtrace.parsers.schema import META_SYSTEM
from kvmtrace.parsers.text.assemble import UNKNOWN_SYSTEM
from kvmtrace.parsers.text.catalog import catalog

SCHED = ("          <idle>-0       [001] d..2.  1530.393600: sched_switch: prev_comm=swapper/1 prev_pid=0 "
         "prev_prio=120 prev_state=R ==> next_comm=qemu next_pid=5 next_prio=120")


def _with_sched_switch(tmp_path: Path) -> Path:
    lines = gzip.decompress((SAMPLES / "mmio-zapslot.txt.gz").read_bytes()).decode().splitlines()
    path = tmp_path / "mixed.txt"
    path.write_text("\n".join([*lines, SCHED]) + "\n")
    return path


def test_every_event_has_a_system(tmp_path):
    data = read(_with_sched_switch(tmp_path))
    ev = pl.from_arrow(data.events).select(pl.col("event").cast(pl.String), pl.col("system").cast(pl.String)).unique()
    systems = dict(ev.iter_rows())
    assert systems["sched_switch"] == UNKNOWN_SYSTEM
    assert systems["kvm_mmu_pagetable_walk"] == "kvmmmu" and systems["kvm_mmio"] == "kvm"
    assert ev["system"].null_count() == 0
    for name, table in data.tables.items():
        expected = catalog()[name].system if name in catalog() else UNKNOWN_SYSTEM
        assert table.schema.metadata[META_SYSTEM] == expected.encode(), name
    sched = pl.from_arrow(data.tables["sched_switch"])
    assert sched["text"].to_list() == [SCHED.split("sched_switch: ", 1)[1]]


def test_convert_writes_unknown_events(tmp_path):
    src = _with_sched_switch(tmp_path)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "kvmtrace", "convert", str(src), str(out)], capture_output=True,
                          cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert pq.read_table(out / "event=sched_switch" / "part-0.parquet").num_rows == 1  # layout: kvmtrace.dataset
    events = pl.read_parquet(out / "events.parquet")
    assert events.filter(pl.col("event") == "sched_switch")["system"].to_list() == [UNKNOWN_SYSTEM]
    assert events.height == read(src).info.total_events
