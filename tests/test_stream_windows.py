"""The windowed trace.dat read gives exactly the whole-file read, cut into windows.

Every real recording (samples, nested, host, public) is read whole and in windows with window and
run sizes forced small, so that window boundaries and per-CPU run boundaries fall everywhere:
the concatenated windows must equal the whole read column for column (every event table, the
events table, the gaps) and the last window's info must equal the whole read's. Real recordings
rarely lose events and never step their clocks back, so hand-made pages (random records, absolute
time stamps that go backwards, missed-event flags, pages without records) check the merge and the
gaps across boundaries the same way.
"""

from __future__ import annotations

import dataclasses
import struct
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import DATA, NESTED, PUBLIC, SAMPLES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tracedat_builder import (
    Data,
    Padding,
    TimeExtend,
    TimeStamp,
    build_page,
    build_tracedat,
    content_of,
    repeated_tracedat,
)

from kvmtrace.parsers import read
from kvmtrace.parsers.schema import TraceData
from kvmtrace.parsers.tracedat.compress import chunk_table_in_file
from kvmtrace.parsers.tracedat.meta import open_file, open_meta
from kvmtrace.parsers.tracedat.reader import WHOLE_PAGES_LIMIT, WHOLE_READ_WINDOW, read_all_pages, read_buffer
from kvmtrace.parsers.tracedat.streams import PAD
from kvmtrace.parsers.tracedat.windows import _WindowReader, iter_windows

REAL = sorted([*SAMPLES.glob("*.dat"), *NESTED.glob("*.dat"), *(DATA / "host").glob("*.dat"), *PUBLIC.glob("*.dat")])
TEMPLATE = NESTED / "tdp-boot-small-kt.dat"  # kvm_tdp_mmu_spte_changed: 36-byte records laid out below


def _plain(table: pa.Table) -> pa.Table:
    """Dictionary columns decoded: each window has its own dictionaries (comm, event, system)."""
    cols = [c.cast(f.type.value_type) if pa.types.is_dictionary(f.type) else c
            for f, c in zip(table.schema, table.columns)]
    return pa.table(cols, names=table.column_names)


def _gap_order(gaps: pa.Table) -> pa.Table:
    """Gaps by CPU, then seq (null last): the whole read's order (page order), which a window's
    seq order becomes once the rows of all windows are together."""
    return gaps.sort_by([("cpu", "ascending"), ("seq", "ascending")])


def assert_windows_equal_whole(windows: list[TraceData], whole: TraceData) -> None:
    events = pa.concat_tables([w.events for w in windows])
    assert events.schema == whole.events.schema
    assert _plain(events).equals(_plain(whole.events))
    names = set().union(*(w.tables for w in windows))
    assert names == set(whole.tables)
    for name in names:
        parts = [w.tables[name] for w in windows if name in w.tables]
        assert all(p.schema.equals(whole.tables[name].schema, check_metadata=True) for p in parts), name
        assert _plain(pa.concat_tables(parts)).equals(_plain(whole.tables[name])), name
    gaps = pa.concat_tables([w.gaps for w in windows])
    assert _gap_order(gaps).equals(_gap_order(whole.gaps))
    for w in windows:  # a window's gaps point into it (or, in the last window, nowhere)
        seq = w.gaps["seq"].drop_null().to_pylist()
        first = w.events["seq"][0].as_py() if w.events.num_rows else None
        assert all(first is not None and first <= s < first + w.events.num_rows for s in seq)
    assert windows[-1].info == whole.info


def read_whole(path: Path) -> TraceData:
    """The top buffer decoded at once (every page in one buffer), whatever its size."""
    with open_file(str(path)) as f:
        meta, size = open_meta(f, str(path))
        return read_all_pages(f, size, meta, meta.spec(None))


def _read_both(path: Path, **kw) -> tuple[list[TraceData], TraceData]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return list(iter_windows(path, **kw)), read_whole(path)


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
@pytest.mark.parametrize("window,run", [(1000, 2), (4096, None)], ids=["1000-events-2-pages", "4096-events"])
def test_windows_concatenate_to_the_whole_read(path: Path, window: int, run: int | None) -> None:
    windows, whole = _read_both(path, events_per_window=window, pages_per_run=run)
    assert_windows_equal_whole(windows, whole)
    sizes = [w.events.num_rows for w in windows]
    assert (all(n == window for n in sizes[:-1]) and 0 < sizes[-1] <= window) or sizes == [0]
    assert len(windows) == max(1, -(-whole.info.total_events // window))


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
@pytest.mark.parametrize("window,run", [(1000, 2), (WHOLE_READ_WINDOW, None)], ids=["1000-events-2-pages", "read"])
def test_the_whole_read_joins_its_windows_into_the_whole_file_decode(path: Path, window: int,
                                                                      run: int | None) -> None:
    """The reader's whole read (windows joined, comm dictionaries rebuilt) equals the whole-file
    decode exactly: values, dictionaries, table order, gap order, info."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = read_whole(path)
        with open_file(str(path)) as f:
            meta, size = open_meta(f, str(path))
            joined = _WindowReader(f, size, meta, meta.spec(None), window, run).whole()
    assert list(joined.tables) == list(reference.tables)
    for name, table in reference.tables.items():
        assert joined.tables[name].schema.equals(table.schema, check_metadata=True), name
        assert joined.tables[name].equals(table), name
    assert joined.events.equals(reference.events) and joined.events.column("seq").num_chunks == 1
    assert joined.gaps.equals(reference.gaps)
    assert joined.info == reference.info


@pytest.mark.parametrize("limit", [0, WHOLE_PAGES_LIMIT], ids=["windows", "all-pages"])
def test_read_tracedat_gives_the_same_trace_either_way(limit: int) -> None:
    """Above the page limit the reader joins windows, below it decodes every page at once: the
    same trace either way."""
    path = SAMPLES / "multi-zapslot.dat"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = read_whole(path)
        with open_file(str(path)) as f:
            meta, size = open_meta(f, str(path))
            got = read_buffer(f, size, meta, meta.spec(None), limit)
    assert list(got.tables) == list(reference.tables)
    assert all(got.tables[n].equals(t) for n, t in reference.tables.items())
    assert got.events.equals(reference.events) and got.gaps.equals(reference.gaps) and got.info == reference.info


def test_a_window_info_counts_what_came_so_far() -> None:
    path = SAMPLES / "churn-lost-zapall.dat"  # the one sample with a lost-events page
    windows, whole = _read_both(path, events_per_window=500, pages_per_run=1)
    totals = [w.info.total_events for w in windows]
    assert totals == [min(500 * (i + 1), whole.info.total_events) for i in range(len(windows))]
    assert whole.gaps.num_rows == 1 and windows[-1].info.lost_events == whole.info.lost_events


def test_warnings_are_issued_once_after_the_last_window(tmp_path: Path) -> None:
    v6 = tmp_path / "v6.dat"  # v6: the pages come last, so a cut keeps a readable file
    repeated_tracedat(SAMPLES / "boot-zapall.dat", v6, 1, version=6, compression="none")
    raw = v6.read_bytes()
    cut = tmp_path / "cut.dat"
    cut.write_bytes(raw[: len(raw) - 5 * 4096 - 100])  # the last CPU loses its last pages
    with pytest.warns(Warning) as caught:
        whole = read_whole(cut)
    expected = [str(w.message) for w in caught]
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        windows = iter(iter_windows(cut, events_per_window=2000, pages_per_run=3))
        first = next(windows)
        assert not got, "a warning before the last window"
        rest = list(windows)
    assert [str(w.message) for w in got] == expected and whole.info.cut_short
    assert_windows_equal_whole([first, *rest], whole)


# ---------------------------------------------------------------- hand-made pages


@dataclasses.dataclass(frozen=True)
class Template:
    """The nested recording's metadata (no kallsyms) and its spte event id; out of hypothesis' output."""

    content: object = dataclasses.field(repr=False)
    spte_id: int = 0


@pytest.fixture(scope="module")
def template() -> Template:
    content = dataclasses.replace(content_of(TEMPLATE, decompress=True), kallsyms=b"", cpu_stats=())
    table = read(TEMPLATE).table("kvm_tdp_mmu_spte_changed")
    assert table.column_names[5:] == ["common_flags", "common_preempt_count", "gfn", "old_spte", "new_spte",
                                      "level", "as_id"]  # the layout _spte packs
    return Template(content, int(table.schema.metadata[b"kvmtrace.event_id"]))


def _spte(event_id: int, pid: int, gfn: int) -> bytes:
    return struct.pack("<HBBiQQQBBxx", event_id, 1, 2, pid, gfn, gfn * 3, gfn * 5, 1, 0)


_record = st.one_of(
    st.builds(lambda d: ("data", d), st.integers(0, 5000)),
    st.builds(lambda d: ("data", d), st.just(0)),  # equal stamps across CPUs: ties go to the lower CPU
    st.builds(lambda d: ("extend", d), st.integers(0, 1 << 32)),
    st.builds(lambda t: ("stamp", t), st.integers(0, 1 << 40)),  # absolute: may step the clock back
    st.builds(lambda d: ("pad", d), st.integers(1, 100)),
)
_page = st.tuples(st.integers(0, 1 << 36), st.lists(_record, min_size=0, max_size=30),
                  st.sampled_from([None, None, 0, 7]))


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cpus=st.lists(st.lists(_page, min_size=0, max_size=6), min_size=1, max_size=3),
       window=st.integers(1, 40), run=st.integers(1, 3), compressed=st.booleans())
def test_hand_made_pages_merge_and_lose_events_alike(cpus: list, window: int, run: int, compressed: bool,
                                                     template: Template, tmp_path_factory) -> None:
    gfn = iter(range(1, 10**6))
    pages = []
    for cpu, cpu_pages in enumerate(cpus):
        built = []
        for ts, records, missed in cpu_pages:
            recs = []
            for kind, value in records:
                if kind == "data":
                    recs.append(Data(_spte(template.spte_id, 100 + cpu, next(gfn)), delta=value))
                elif kind == "extend":
                    recs.append(TimeExtend(value))
                elif kind == "stamp":
                    recs.append(TimeStamp(value))
                else:
                    recs.append(Padding(16, delta=value))
            built.append(build_page(ts, recs, missed_events=missed))
        pages.append(built)
    out = tmp_path_factory.mktemp("hand") / "t.dat"
    build_tracedat(out, template.content, pages, version=7 if compressed else 6,
                   compression="zstd" if compressed else "none")
    windows, whole = _read_both(out, events_per_window=window, pages_per_run=run)
    assert_windows_equal_whole(windows, whole)


# ---------------------------------------------------------------- bounded state


@pytest.mark.parametrize("src,copies,window,run", [(SAMPLES / "churn-thp-zapall.dat", 6, 5000, 8),
                                                   (SAMPLES / "churn-lost-zapall.dat", 16, 700, 2)],
                         ids=["thp-x6", "lost-x16"])
@pytest.mark.parametrize("compressed", [True, False], ids=["zstd", "plain"])
def test_the_state_held_between_windows_is_bounded(src: Path, copies: int, window: int, run: int, compressed: bool,
                                                   tmp_path: Path) -> None:
    """After every window of a long trace (a real recording's pages repeated; the lost-events one
    has a gap per copy), the reader holds at most one run of pages per CPU, every record it holds
    belongs to one of those runs, and the open gaps are no more than their pages: a bound set by
    the run size and the CPUs, whatever the trace's length. A run kept after its last record
    was windowed, or a gap never emitted, would break it within a few windows."""
    long = tmp_path / "long.dat"
    repeated_tracedat(src, long, copies, **({} if compressed else {"version": 6, "compression": "none"}))
    with open_file(str(long)) as f:
        meta, size = open_meta(f, str(long))
        reader = _WindowReader(f, size, meta, meta.spec(None), window, run)
        cpus = len(reader.sources)
        chunk = max(int(np.diff(s.chunk_end, prepend=0).max(initial=0)) for s in reader.sources.values())
        run_bytes = run * meta.spec(None).page_size + chunk + PAD
        windows = gaps = 0
        for w in reader.windows():
            windows += 1
            gaps += w.gaps.num_rows
            held = sum(len(p.key) for p in reader.pending.values()) + reader.out.count
            assert len(reader.runs) <= cpus
            assert sum(r.left for r in reader.runs.values()) == held
            assert sum(r.buf.nbytes for r in reader.runs.values()) <= cpus * run_bytes
            open_gaps = sum(map(len, reader.gaps.values())) + len(reader.resolved)
            assert open_gaps <= sum(r.pages for r in reader.runs.values())
    total = w.info.total_events
    assert windows == -(-total // window) and total == copies * read(src).info.total_events
    assert gaps == copies * read(src).gaps.num_rows


@pytest.mark.parametrize("run", [None, 2], ids=["default-runs", "2-page-runs"])
def test_chunks_that_do_not_decompress_read_alike(run: int | None, tmp_path: Path) -> None:
    """Two zstd chunks of one CPU damaged: their pages read as empty pages (gaps of unknown size)
    in windows as in the whole read, and the (first) warning names the same first bad byte. With
    runs smaller than the stream the damage is reported per run (a documented limit), so only the
    warnings may differ."""
    good = tmp_path / "good.dat"
    repeated_tracedat(SAMPLES / "churn-lost-zapall.dat", good, 3)
    with open_file(str(good)) as f:
        meta, _ = open_meta(f, str(good))
        stream = max(meta.spec(None).cpus, key=lambda s: s.size)
        chunks, _, _ = chunk_table_in_file(f, stream.offset, stream.size + 4, meta.box.big_endian, str(good))
    raw = bytearray(good.read_bytes())
    for c in (chunks[1], chunks[len(chunks) // 2]):
        at = stream.offset + c.offset + 20  # inside the compressed frame
        raw[at : at + 16] = b"\xff" * 16
    bad = tmp_path / "bad.dat"
    bad.write_bytes(bytes(raw))
    windows, whole = _read_both(bad, events_per_window=700, pages_per_run=run)
    (note,) = [w for w in whole.info.warnings if "do not decompress" in w]
    got = [w for w in windows[-1].info.warnings if "do not decompress" in w]
    assert got[0].split("(first: ")[1] == note.split("(first: ")[1]
    assert whole.gaps["lost"].null_count >= 2
    if run is not None:
        assert len(got) == 2
        info = dataclasses.replace(windows[-1].info, warnings=whole.info.warnings)
        windows[-1] = dataclasses.replace(windows[-1], info=info)
    assert_windows_equal_whole(windows, whole)
