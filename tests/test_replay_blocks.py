"""The replay's bounded pieces give what one piece gives.

The walk turns its events' fields into Python lists a block of merged events at a time
(``walk.BLOCK``), and the journal makes its SPTE-change rows an Arrow table every
``journal.ROWS_PER_CHUNK`` rows, so that neither holds Python objects for the whole trace (a
10 M-event TDP trace: +900 MiB and +230 MiB). Every real recording is replayed with both forced
tiny, so that every stream's rows and every model state cross a block boundary and the journal
flushes hundreds of times, and must give the same tables, findings and checks as the defaults.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import DATA, NESTED, SAMPLES

from kvmtrace.parsers import read
from kvmtrace.parsers.tracedat.reader import read_kept
from kvmtrace.replays import journal, stream, walk
from kvmtrace.replays.detectors import layout
from kvmtrace.replays.digest import DigestBuilder
from kvmtrace.replays.inputs import SeqIndex
from kvmtrace.replays.needs import decodes, keeps
from kvmtrace.replays.replay import replay

RECORDINGS = sorted([*SAMPLES.glob("*.dat"), *NESTED.glob("*.dat"), *(DATA / "host").glob("*.dat")])
TABLES = ("shadow_pages", "spte_changes", "memslots", "findings", "checks", "unexplained", "whatif")


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.stem)
def test_tiny_blocks_and_journal_chunks_give_the_same_replay(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = read(path)
    want = replay(data)
    monkeypatch.setattr(walk, "BLOCK", 7)
    monkeypatch.setattr(stream, "ROW_BLOCK", 7)  # the layout checks count window hits, the memslot summary rows
    monkeypatch.setattr(journal, "ROWS_PER_CHUNK", 3)
    monkeypatch.setattr(journal, "ROWS_ON_DISK", 5)  # the SPTE-change table sorted to disk, 4 rows a write
    monkeypatch.setattr(journal, "ROWS_PER_WRITE", 4)
    mapped: list[int] = []
    to_disk = journal._sorted_on_disk
    monkeypatch.setattr(journal, "_sorted_on_disk",
                        lambda t, read: mapped.append(t.num_rows) or to_disk(t, read))
    got = replay(data)
    assert mapped == ([want.spte_changes.num_rows] if want.spte_changes.num_rows >= 5 else [])
    for name in TABLES:
        assert getattr(got, name).equals(getattr(want, name)), name
    for name in want.summaries:
        assert got.summaries[name].equals(want.summaries[name]), name
    assert (got.events, got.explained_events, got.mmu, got.assumptions, got.limits) == \
        (want.events, want.explained_events, want.mmu, want.assumptions, want.limits)


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.stem)
def test_tiny_segments_over_tables_kept_on_disk_give_the_full_reads_replay(path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The walk finds each segment's rows by seq in the tables' own chunks; a read for the
    analysis keeps its tables on disk in chunks of its windows (1000 events here) and gives the
    pages back after every segment. Segments of 7 rows a stream cross every chunk boundary."""
    want = replay(read(path))
    builder = DigestBuilder()
    data = read_kept(path, keeps, builder.add, decode=decodes, events_per_window=1000, pages_per_run=2)
    monkeypatch.setattr(walk, "BLOCK", 7)
    got = replay(data, digest=builder.finish())
    for name in TABLES:
        assert getattr(got, name).equals(getattr(want, name)), name
    assert (got.events, got.explained_events, got.limits) == (want.events, want.explained_events, want.limits)


def test_journal_flushes_its_rows_and_keeps_the_table_it_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows past a chunk become tables as they come; the SPTE-change table is built once, in seq
    order, and the journal then holds it in place of its parts."""
    monkeypatch.setattr(journal, "ROWS_PER_CHUNK", 4)
    j = journal.Journal()
    for seq in range(10):
        j.change(seq, 0, 0, seq, 1, None, seq, None, "present", "tdp")
    assert j.row_chunks.rows == 8 and len(j.c_seq) == 2
    j.add_changes(seq=[3], key=[9], as_id=[0], gfn=[3], level=[1], old=[0], old_valid=[False], new=[1],
                  new_valid=[True], page=[-1], state=journal.coded(np.zeros(1), ["present"]),
                  reason=journal.coded(np.zeros(1), ["set_spte"]))
    t = j.spte_changes()
    assert t.column("seq").to_pylist() == [0, 1, 2, 3, 3, 4, 5, 6, 7, 8, 9]
    assert t.column("key").to_pylist()[3:5] == [0, 9]  # the loop's row first, as before the chunks
    assert (j.row_chunks.rows, j.c_seq, j.change_chunks.rows, j.changes) == (0, [], 0, t)
    assert j.spte_changes().equals(t)


def test_journal_parts_go_to_disk_once_the_table_would(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past ROWS_ON_DISK rows in all, the parts held are written every ROWS_PER_WRITE rows and
    come back in order, the rows held since last."""
    monkeypatch.setattr(journal, "ROWS_ON_DISK", 6)
    monkeypatch.setattr(journal, "ROWS_PER_WRITE", 4)
    parts = journal.Parts("a test")
    pieces = [pa.table({"x": list(range(k, k + 3))}) for k in range(0, 15, 3)]
    for piece in pieces:
        parts.append(piece)
    assert parts._disk.rows == 12 and parts._held_rows == 3  # written at 6 (two pieces) and at 12
    got = parts.tables()
    assert len(got) == 2 and pa.concat_tables(got).equals(pa.concat_tables(pieces))


@pytest.mark.parametrize("name", ["multi-zapslot", "churn-thp-zapall"])
def test_seq_index_asked_in_a_batch_answers_as_the_events_table(name: str) -> None:
    data = read(SAMPLES / f"{name}.dat")
    n = data.events.num_rows
    seqs = np.r_[np.random.default_rng(3).integers(0, n, 300), -1, n, n + 7]
    locate = SeqIndex(data)
    locate.ask(seqs.tolist())
    ts, cpu = data.events.column("ts").to_numpy(), data.events.column("cpu").to_numpy()
    for s in seqs.tolist():
        assert locate(s) == ((int(ts[s]), int(cpu[s])) if 0 <= s < n else (None, None))
    assert SeqIndex(data)(int(seqs[0])) == locate(int(seqs[0]))  # asked alone, the same answer


@pytest.mark.parametrize("stem,cut", [("churn-zapslot", 80_000), ("churn-thp-zapall", 40_000)])
def test_the_layout_checks_a_block_at_a_time_are_the_whole(stem: str, cut: int, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The memslot-layout checks judge installs and faults a ``stream.ROW_BLOCK`` at a time. A sample
    cut short loses a re-creating line, so installs in its window look unmapped (warnings, see
    test_replay_cuts.py): blocks of 5 rows give the same findings and checks, and a cap on the
    findings reached in the middle of a block keeps the first ones in install order."""
    path = tmp_path / "cut.dat"
    path.write_bytes((SAMPLES / f"{stem}.dat").read_bytes()[:-cut])
    with pytest.warns(UserWarning, match="cut short"):
        data = read(path)
    want = replay(data)
    unmapped = [f for f in want.findings.to_pylist() if f["id"] == "spte_for_unmapped_gfn"]
    assert len(unmapped) > 3
    monkeypatch.setattr(stream, "ROW_BLOCK", 5)
    got = replay(data)
    assert got.findings.equals(want.findings) and got.checks.equals(want.checks)
    monkeypatch.setattr(layout, "MAX_REPORTED", 3)
    capped = [f for f in replay(data).findings.to_pylist() if f["id"] == "spte_for_unmapped_gfn"]
    assert capped == unmapped[:3]
