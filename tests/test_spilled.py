"""Tables kept on disk and mapped back (:mod:`kvmtrace.parsers.spilled`).

A read for one analysis writes its kept per-event tables to unlinked temporary files and maps
them back; the replay and the report give back the pages they read between steps
(``TraceData.release_pages``). A long replay's SPTE-change table is mapped from disk too. What
is mapped must be exactly what was written, must stay valid after its pages are given back, and
must not hold the process's own memory.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import NESTED, SAMPLES

from kvmtrace.api import Trace
from kvmtrace.parsers import read, spilled
from kvmtrace.parsers.errors import TraceError
from kvmtrace.parsers.spilled import SpilledTable
from kvmtrace.parsers.tracedat.reader import read_kept
from kvmtrace.replays import journal
from kvmtrace.replays.needs import decodes, keeps
from kvmtrace.replays.stream import numpy_rows
from kvmtrace.report import evidence
from kvmtrace.report.evidence import evidence_fields, evidence_lines

TDP = NESTED / "k61tdp-churn-small-kt.dat"


def _pieces() -> list[pa.Table]:
    """Three pieces whose dictionary column changes its dictionary (as ``comm`` does by window)."""
    out = []
    for i, words in enumerate((["a"], ["b", "a"], ["c"])):
        n = 1000 * (i + 1)
        codes = pa.array(np.arange(n) % len(words), pa.int32())
        out.append(pa.table({"seq": np.arange(n, dtype=np.int64) + 10_000 * i,
                             "name": pa.DictionaryArray.from_arrays(codes, pa.array(words)),
                             "text": pa.array([f"row {k}" if k % 7 else None for k in range(n)])}))
    return out


def _anon_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))


def test_a_spilled_table_maps_back_what_was_appended() -> None:
    pieces = _pieces()
    spilled = SpilledTable("a test table")
    for p in pieces:
        spilled.append(p)
    spilled.append(pieces[0].slice(0, 0))  # an empty piece writes nothing
    got = spilled.table()
    assert got is not None and spilled.rows == sum(p.num_rows for p in pieces)
    assert got.schema.equals(pieces[0].schema)
    assert got.column("seq").num_chunks == len(pieces)  # the pieces are its chunks: no copy joined them
    assert got.to_pylist() == pa.concat_tables(pieces).to_pylist()
    spilled.release()  # the pages go back; the values stay readable
    assert got.to_pylist() == pa.concat_tables(pieces).to_pylist()


def _file_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssFile:"))


def test_a_replay_gives_back_the_pages_of_its_spte_table_on_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SPTE-change table on disk: a pass over it maps its pages into the process; the
    journal's release_pages gives them back (ReplayResult.release_pages calls it) and the
    table reads the same afterwards."""
    monkeypatch.setattr(journal, "ROWS_ON_DISK", 5)
    n = 400_000  # ~20 MiB of changes
    j = journal.Journal()
    j.add_changes(seq=np.arange(n)[::-1], key=np.arange(n), as_id=np.zeros(n), gfn=np.arange(n), level=np.ones(n),
                  old=np.zeros(n), old_valid=np.zeros(n, bool), new=np.arange(n), new_valid=np.ones(n, bool),
                  page=np.full(n, -1), state=journal.coded(np.zeros(n), ["present"]),
                  reason=journal.coded(np.zeros(n), ["set_spte"]))
    t = j.spte_changes()
    assert j.changes_on_disk is not None
    before = _file_kib()
    sums = [int(pc.sum(t.column(c)).as_py()) for c in ("seq", "key", "gfn", "new_spte")]
    read = _file_kib() - before
    assert read > 8 * 1024  # four 3 MiB columns came into the process
    j.release_pages()
    assert _file_kib() - before < read / 2
    assert [int(pc.sum(t.column(c)).as_py()) for c in ("seq", "key", "gfn", "new_spte")] == sums
    assert t.column("seq").to_numpy()[:3].tolist() == [0, 1, 2]


def test_nothing_appended_maps_nothing() -> None:
    assert SpilledTable("nothing").table() is None


def test_a_mapped_table_is_not_the_process_memory() -> None:
    """64 MiB written and mapped back: the process's anonymous memory does not hold it."""
    spilled = SpilledTable("a large table")
    for _ in range(8):
        spilled.append(pa.table({"v": np.ones(1 << 20, np.int64)}))  # 8 MiB a piece
    before = _anon_kib()
    table = spilled.table()
    assert table is not None and int(table.column("v").chunk(3).to_numpy().sum()) == 1 << 20
    assert _anon_kib() - before < 16 * 1024  # not 64 MiB


def test_no_room_for_the_file_is_one_error_with_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    with pytest.raises(TraceError, match="cannot keep the kvm_mmu_set_spte rows") as err:
        SpilledTable("the kvm_mmu_set_spte rows of this trace").append(_pieces()[0])
    assert "TMPDIR" in (err.value.hint or "")


def _kept(path: Path):
    return read_kept(path, keeps, lambda window: None, decode=decodes, events_per_window=1000, pages_per_run=2)


def test_a_kept_read_maps_its_tables_and_gives_their_pages_back() -> None:
    full, kept = read(TDP), _kept(TDP)
    assert kept.spilled_pages is not None and full.spilled_pages is None
    name = "kvm_tdp_mmu_spte_changed"
    assert kept.tables[name].column("seq").num_chunks > 1
    kept.release_pages()
    assert kept.tables[name].equals(full.tables[name])
    full.release_pages()  # a read held in memory: nothing to give back, nothing changes


def test_evidence_from_tables_kept_on_disk_is_the_evidence_of_the_full_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cited rows are found per chunk and read a few at a time (3 here), the pages given back
    between batches: the same lines and fields as from the tables held in memory."""
    monkeypatch.setattr(evidence, "ROWS_PER_RELEASE", 3)
    for path in (TDP, SAMPLES / "churn-zapslot.dat"):
        full, kept = read(path), _kept(path)
        seqs = [s for name, t in full.tables.items() if t.num_rows and name not in kept.left_out
                for s in t.column("seq").to_pylist()[::29]]
        assert len(seqs) > 50
        assert evidence_lines(kept, seqs) == evidence_lines(full, seqs)
        assert evidence_fields(kept, seqs) == evidence_fields(full, seqs)


@pytest.mark.parametrize("path", [TDP, SAMPLES / "churn-zapslot.dat", SAMPLES / "multi-zapslot.dat"],
                         ids=lambda p: p.stem)
def test_reports_with_the_spte_changes_on_disk_are_the_reports_in_memory(path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A long replay's SPTE-change table is mapped from disk (journal.ROWS_ON_DISK, forced to 5
    rows here): the ledger, the what-if and every report read it as they read the table in memory."""
    data = read(path)
    want = {fmt: Trace(data, str(path)).analyze().report(fmt) for fmt in ("text", "json", "markdown")}
    monkeypatch.setattr(journal, "ROWS_ON_DISK", 5)
    monkeypatch.setattr(journal, "ROWS_PER_WRITE", 1000)
    got = Trace(data, str(path)).analyze()
    assert got.replay.spte_changes.num_rows >= 5
    assert {fmt: got.report(fmt) for fmt in want} == want


def test_arrays_on_disk_map_back_what_was_written_read_only() -> None:
    rng = np.random.default_rng(7)
    arrays = {"u64": rng.integers(0, 2**63, 100_001, dtype=np.uint64), "i8": rng.integers(-128, 127, 3, dtype=np.int8),
              "flags": rng.random(17) < 0.5, "empty": np.zeros(0, np.int32), "grid": np.arange(12.0).reshape(3, 4),
              "strided": np.arange(40, dtype=np.int32)[::3]}
    got = spilled.on_disk(arrays, "test arrays")
    assert list(got) == list(arrays)
    for name, want in arrays.items():
        assert got[name].dtype == want.dtype and got[name].shape == want.shape
        assert np.array_equal(got[name], want)
    with pytest.raises(ValueError, match="read-only"):
        got["u64"][0] = 1  # a consumer may not write to what others read
    spilled.release_all()  # the pages go back; the values stay readable
    assert np.array_equal(got["u64"], arrays["u64"])


def test_arrays_are_kept_on_disk_from_a_size_on(monkeypatch: pytest.MonkeyPatch) -> None:
    small = {"v": np.arange(10)}
    assert spilled.kept(small, "few rows")["v"].flags.writeable  # held as they are
    monkeypatch.setattr(spilled, "ARRAYS_ON_DISK", 10)
    assert not spilled.kept(small, "ten rows")["v"].flags.writeable


def test_arrays_on_disk_are_not_the_process_memory_once_given_back() -> None:
    """64 MiB written, mapped back and summed: the pages the sum read leave the process's
    resident set with release_all, and its anonymous memory never held them."""
    anon = _anon_kib()
    got = spilled.on_disk({"v": np.ones(8 << 20, np.int64)}, "a large array")
    assert _anon_kib() - anon < 16 * 1024
    before = _file_kib()
    assert int(got["v"].sum()) == 8 << 20
    assert _file_kib() - before > 48 * 1024
    spilled.release_all()
    assert _file_kib() - before < 8 * 1024
    assert int(got["v"][-5:].sum()) == 5


def test_a_table_kept_on_disk_is_cast_piece_by_piece(monkeypatch: pytest.MonkeyPatch) -> None:
    table = pa.concat_tables(_pieces())
    schema = pa.schema([("seq", pa.int64()), ("name", pa.string()), ("text", pa.string())])
    assert spilled.kept_table(table, "few rows", schema).equals(table.cast(schema))
    monkeypatch.setattr(spilled, "ARRAYS_ON_DISK", 1000)
    got = spilled.kept_table(table, "many rows", schema)
    assert got.column("seq").num_chunks == 6  # 1000 rows a piece
    assert got.equals(table.cast(schema))
    # in an order: each piece gathered from the parts (whose dictionaries differ) that hold its rows
    order = np.random.default_rng(5).permutation(table.num_rows)
    want = table.take(pa.array(order)).cast(schema)
    got = spilled.kept_table(table, "many rows", schema, order)
    assert got.column("seq").num_chunks == 6 and got.equals(want)
    monkeypatch.setattr(spilled, "ARRAYS_ON_DISK", 10_000)  # held: a take
    assert spilled.kept_table(table, "few rows", schema, order).equals(want)


REPLAYS = [TDP, SAMPLES / "churn-zapslot.dat", SAMPLES / "multi-zapall.dat", SAMPLES / "dirty-zapslot.dat",
           NESTED / "tdpmmu0-churn-noquirk-qlog-kt.dat", NESTED / "shadow-churn-noquirk-small-kt.dat",
           NESTED / "tdp-churn-noquirk-small-kt.dat"]


@pytest.mark.parametrize("path", REPLAYS, ids=lambda p: p.stem)
def test_a_replay_keeping_its_arrays_on_disk_is_the_replay_in_memory(path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Every array the replay keeps (installs, faults, gfn indexes, the snapshots' leaves) and the
    consequences table on disk, forced from one row: the same tables and reports. Read-only
    arrays also prove that no step writes into what another reads."""
    data = read(path)
    log = path.with_suffix(".qemu.log")
    lines = log.read_text().splitlines() if log.exists() else None

    def run():
        a = Trace(data, str(path)).analyze(qemu_log=lines) if lines else Trace(data, str(path)).analyze()
        return a, {name: a.table(name, backend="arrow") for name in a.table_names}, \
            {fmt: a.report(fmt) for fmt in ("text", "json", "markdown")}

    _, want_tables, want_reports = run()
    monkeypatch.setattr(spilled, "ARRAYS_ON_DISK", 1)
    mapped, temporary_file = [], spilled.temporary_file  # whole (on_disk) or a part at a time (KeptParts)
    monkeypatch.setattr(spilled, "temporary_file",
                        lambda prefix, what: mapped.append(what) or temporary_file(prefix, what))
    _, tables, reports = run()
    assert "the faults of this replay" in mapped and "the SPTE installs of this replay" in mapped
    assert tables.keys() == want_tables.keys()
    for name, table in tables.items():
        assert table.equals(want_tables[name]), name
    assert reports == want_reports


def test_rows_gathered_chunk_by_chunk_are_a_take() -> None:
    """numpy_rows (the replay's gather from a long table kept on disk) gives what a take gives:
    rows in any order, repeated, across chunks, nulls read as 0, none at all."""
    table = pa.concat_tables(_pieces())
    table = table.append_column("v", pa.chunked_array(
        [pa.array([None if k % 5 == 0 else k * 3 for k in range(p.num_rows)], pa.uint64()) for p in _pieces()]))
    assert table.column("v").num_chunks == 3
    rng = np.random.default_rng(3)
    for rows in (rng.integers(0, table.num_rows, 500), np.arange(table.num_rows), np.zeros(0, np.int64),
                 np.array([table.num_rows - 1, 0, 999, 1000, 999])):
        want = table.column("v").take(pa.array(rows, pa.int64())).fill_null(0).to_numpy(zero_copy_only=False)
        assert numpy_rows(table, "v", rows).tolist() == want.tolist()
        assert numpy_rows(table, "seq", rows, np.int64).tolist() == \
            table.column("seq").take(pa.array(rows, pa.int64())).to_pylist()


@pytest.mark.parametrize("span", [1, 7, 1 << 20])
def test_a_gather_span_by_span_is_a_take_and_gives_pages_back_between_spans(span: int,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """gather (each install's previous one's columns, in the shadow settling) gives what indexing
    gives, for rows in any order, repeated, none at all, from arrays on disk and in memory; on disk
    it gives the maps' pages back once per span of rows it read (none for a span with no row)."""
    rng = np.random.default_rng(11)
    values = {"u64": rng.integers(0, 2**63, 100, dtype=np.uint64), "b": rng.random(100) < 0.5,
              "i32": rng.integers(-5, 5, 100).astype(np.int32)}
    monkeypatch.setattr(spilled, "GATHER_SPAN", span)
    released: list[int] = []
    release_all = spilled.release_all
    monkeypatch.setattr(spilled, "release_all", lambda: released.append(1) or release_all())
    for threshold in (1, 1000):  # on disk; held
        monkeypatch.setattr(spilled, "ARRAYS_ON_DISK", threshold)
        columns = list(spilled.kept(values, "three columns").values())
        for rows in (rng.integers(0, 100, 300), np.arange(99, -1, -1), np.zeros(0, np.int64),
                     np.array([50, 50, 3, 99, 0, 3])):
            released.clear()
            got = spilled.gather(columns, rows)
            assert [g.dtype for g in got] == [c.dtype for c in columns]
            assert all(np.array_equal(g, c[rows]) for g, c in zip(got, columns))
            spans = len(np.unique(rows // span)) if threshold == 1 else 0
            assert len(released) == spans


def test_releasing_gives_pages_back_every_so_many_items(monkeypatch: pytest.MonkeyPatch) -> None:
    released = []
    monkeypatch.setattr(spilled, "release_all", lambda: released.append(len(seen)))
    seen: list[int] = []
    for item in spilled.releasing(range(10), every=4):
        seen.append(item)
    assert seen == list(range(10)) and released == [4, 8]


@pytest.mark.parametrize("threshold", [1, 5, 1000])
def test_parts_kept_as_they_come_are_the_parts_joined(monkeypatch: pytest.MonkeyPatch, threshold: int) -> None:
    """KeptParts: parts of varying sizes (an empty one too) joined in order, of their dtypes; on
    disk (read-only) once the rows reach ARRAYS_ON_DISK, the parts before it included."""
    monkeypatch.setattr(spilled, "ARRAYS_ON_DISK", threshold)
    rng = np.random.default_rng(threshold)
    parts = [{"seq": rng.integers(0, 1 << 40, n), "level": rng.integers(1, 5, n).astype(np.int8),
              "gfn": rng.integers(0, 1 << 52, n).astype(np.uint64)} for n in (3, 0, 4, 9)]
    kept_parts = spilled.KeptParts("a test")
    assert spilled.KeptParts("nothing").arrays() is None
    for part in parts:
        kept_parts.append(part)
    got = kept_parts.arrays()
    assert got is not None and list(got) == ["seq", "level", "gfn"]
    for name, values in got.items():
        want = np.concatenate([p[name] for p in parts])
        assert values.dtype == want.dtype and values.tolist() == want.tolist()
        assert values.flags.writeable == (threshold > 16)  # 16 rows in all


def test_a_part_of_another_dtype_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spilled, "ARRAYS_ON_DISK", 1)
    kept_parts = spilled.KeptParts("a test")
    kept_parts.append({"seq": np.arange(3, dtype=np.int64)})
    with pytest.raises(ValueError, match="not a column of int64: seq"):
        kept_parts.append({"seq": np.arange(3, dtype=np.int32)})


@pytest.mark.parametrize("seed", range(12))
def test_merged_runs_are_the_stable_sort_of_the_whole(seed: int) -> None:
    """Batches each in key order (runs, with ties inside and across them, and empty ones),
    merged a range of keys at a time: the rows of a stable sort of the whole table, in pieces of
    about the size asked for, each holding only its own range's rows."""
    rng = np.random.default_rng(seed)
    runs = []
    for k in range(int(rng.integers(1, 9))):
        n = int(rng.integers(0, 60))
        runs.append(pa.record_batch({"seq": np.sort(rng.integers(0, 80, n)).astype(np.int64),
                                     "row": np.arange(n, dtype=np.int64) + 1000 * k}))
    table = pa.Table.from_batches(runs)
    want = table.take(pa.array(np.argsort(table.column("seq").to_numpy(), kind="stable")))
    for rows in (1, 4, 16, 1000):
        pieces = list(spilled.merged(table, "seq", rows))
        assert pa.concat_tables(pieces).equals(want) if pieces else not table.num_rows
        assert all(p.num_rows for p in pieces)
        if table.num_rows > 4 * rows and rows > 1:  # ranges cut at every few rows of every run
            assert len(pieces) > 1
