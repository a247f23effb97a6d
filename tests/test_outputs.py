"""Outputs never destroy data: not written over an input, whole or not at all, ``-o -`` is
standard output, and a Parquet dataset is built beside its folder and renamed into place.

Each case is one of the data losses a new user hit: ``analyze x.dat -o x.dat`` replaced the
trace with its report, ``convert`` into a folder of another trace mixed the two, ``-o -`` wrote
a file named ``-``. They run through :func:`kvmtrace.cli.run`, in-process.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import SAMPLES

import kvmtrace
from kvmtrace import cli
from kvmtrace.dataset import PART_FILE, partition_dir
from kvmtrace.parsers.errors import TraceError
from kvmtrace.parsers.output import atomic_dir, write_atomic

MMIO = SAMPLES / "mmio-zapall.dat"
OTHER = SAMPLES / "rom-zapslot.dat"


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    """A copy of a real recording, so a test that loses it loses nothing else."""
    copy = tmp_path / "x.dat"
    copy.write_bytes(MMIO.read_bytes())
    return copy


def _output_kinds(trace: Path) -> dict[str, Path]:
    hard = trace.with_name("hard.dat")
    os.link(trace, hard)
    sym = trace.with_name("sym.dat")
    sym.symlink_to(trace.name)
    return {"same": trace, "hard-link": hard, "symlink": sym}


@pytest.mark.parametrize("kind", ["same", "hard-link", "symlink"])
@pytest.mark.parametrize("command", ["analyze", "diff"])
def test_report_over_an_input_is_refused(trace, kind, command, capsys):
    output = _output_kinds(trace)[kind]
    inputs = [str(trace)] if command == "analyze" else [str(OTHER), str(trace)]
    assert cli.run([command, *inputs, "-o", str(output)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refusing to write over it; choose another -o" in err
    assert trace.read_bytes() == MMIO.read_bytes()
    assert output.is_symlink() == (kind == "symlink")


def test_report_next_to_its_trace_is_written(trace, capsys):
    out = trace.with_name("x.md")
    assert cli.run(["analyze", str(trace), "--format", "markdown", "-o", str(out)]) == 0
    assert out.read_text().startswith("# kvmtrace analyze:")
    assert sorted(p.name for p in trace.parent.iterdir()) == ["x.dat", "x.md"]


@pytest.mark.parametrize("command", ["analyze", "diff"])
def test_dash_is_standard_output(trace, command, capsys, monkeypatch):
    monkeypatch.chdir(trace.parent)
    inputs = [trace.name] if command == "analyze" else [trace.name, trace.name]
    assert cli.run([command, *inputs, "--format", "json", "-o", "-"]) == 0
    assert capsys.readouterr().out.startswith("{")
    assert not Path("-").exists()


def test_convert_into_an_input_folder_is_refused(trace, capsys):
    assert cli.run(["convert", str(trace), str(trace.parent), "--force"]) == 2
    assert "holds the input" in capsys.readouterr().err
    assert [p.name for p in trace.parent.iterdir()] == ["x.dat"]
    assert cli.run(["convert", str(trace), str(trace)]) == 2
    assert trace.read_bytes() == MMIO.read_bytes()


def _dataset(folder: Path) -> dict[str, int]:
    """Rows of every Parquet file of a dataset, by path relative to it (``event=NAME/part-0.parquet``)."""
    return {p.relative_to(folder).as_posix(): pq.read_table(p).num_rows for p in folder.rglob("*.parquet")}


def test_convert_into_another_dataset_is_refused_and_force_replaces_it_whole(tmp_path, capsys):
    out = tmp_path / "pq"
    assert cli.run(["convert", str(OTHER), str(out)]) == 0
    first = _dataset(out)
    assert cli.run(["convert", str(MMIO), str(out)]) == 2
    assert "pass --force to replace the dataset" in capsys.readouterr().err
    assert _dataset(out) == first
    assert cli.run(["convert", str(MMIO), str(out), "--force"]) == 0
    t = kvmtrace.open(MMIO)
    expected = {f"{partition_dir(n)}/{PART_FILE}": t.info.event_counts[n] for n in t.event_names}
    assert _dataset(out) == {**expected, "events.parquet": t.info.total_events,  # nothing of the first trace
                             "gaps.parquet": t.data.gaps.num_rows}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pq"]  # no temporary left


def test_force_never_replaces_a_folder_of_other_files(tmp_path, capsys):
    out = tmp_path / "home"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert cli.run(["convert", str(MMIO), str(out), "--force"]) == 2
    assert "not Parquet" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_convert_that_fails_midway_leaves_the_old_dataset(tmp_path, monkeypatch, capsys):
    out = tmp_path / "pq"
    assert cli.run(["convert", str(OTHER), str(out)]) == 0
    first = _dataset(out)
    written = []
    real = pq.ParquetWriter.write_table

    # convert streams row groups through ParquetWriter (not pq.write_table): the disk fills there.
    def disk_full_after_two(self, table, *args, **kwargs):
        if len(written) == 2:
            raise OSError(28, "No space left on device", self.where)
        written.append(self.where)
        real(self, table, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", disk_full_after_two)
    assert cli.run(["convert", str(MMIO), str(out), "--force"]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert _dataset(out) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pq"]


def test_atomic_outputs_in_python(tmp_path):
    target = tmp_path / "r.txt"
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "d") as d:
        (d / "a.parquet").write_bytes(b"x")
        raise RuntimeError("stop")
    write_atomic(target, "whole\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.txt"]
    with pytest.raises(TraceError) as err:
        kvmtrace.open(MMIO).to_parquet(tmp_path)  # not empty: holds r.txt
    assert "pass force to replace" in str(err.value)
