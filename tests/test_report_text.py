"""The text renderer keeps its 80-column promise for any table shape.

Hand-made tables (hypothesis): real recordings give short cells, so the wide and odd shapes
a user's trace might produce (long task names, long marker text in a replay message, many
columns) are generated here; the real-trace rendering is checked in test_report_formats.py.
"""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmtrace.report.blocks import Bullets, Facts, Heading, Para, Table, TraceLines
from kvmtrace.report.grid import ArrowRows, Grid, grid_from_arrow
from kvmtrace.report.safe import printable
from kvmtrace.report.text import WIDTH, render_text

cell = st.one_of(
    st.integers(-10**12, 10**12),
    st.text(alphabet=st.characters(codec="ascii", exclude_characters="\n\r\t\x0b\x0c"), max_size=120),
    st.none(),
)


@st.composite
def grids(draw):
    ncols = draw(st.integers(1, 12))
    name = st.text(alphabet="abcdefghij_", min_size=1, max_size=20)
    names = tuple(draw(st.lists(name, min_size=ncols, max_size=ncols)))
    rows = draw(st.lists(st.tuples(*[cell] * ncols), max_size=6))
    return Grid("t", names, tuple(rows))


text = st.text(alphabet=st.characters(codec="ascii", exclude_characters="\r\x0b\x0c"), max_size=300)


@settings(max_examples=200, deadline=None)
@given(grid=grids(), para=text, line=text, fact=text)
def test_every_line_fits_80_columns(grid, para, line, fact):
    blocks = [Heading(para[:200]), Facts((("key", fact),)), Table(grid), Para(para), Bullets((para,)),
              TraceLines((line.replace("\n", " "),))]
    out = render_text(blocks)
    assert all(len(ln) <= WIDTH for ln in out.splitlines())
    assert not any((c < " " and c != "\n") or c == "\x7f" for c in out)  # control characters shown escaped
    squeezed = "".join(out.split())  # wrapping may break a word anywhere
    for row in grid.text_rows():  # nothing is dropped: every cell's words are still there
        for value in row:
            for word in value.split():
                assert printable(word) in squeezed


@pytest.mark.parametrize("batch", [1, 3, 4096])
def test_a_grids_rows_read_from_arrow_are_the_tuples_they_replaced(batch: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """grid_from_arrow's rows are made as they are read (ArrowRows); read any way a renderer
    reads them (length, index, slice, iteration across batches, equality), they are the tuple of
    Python rows the grid held before: nulls, lists, unsigned and chunked columns included."""
    monkeypatch.setattr(ArrowRows, "BATCH", batch)
    table = pa.Table.from_batches([
        pa.record_batch({"gfn": pa.array([1, 2**63], pa.uint64()), "what": ["a", None],
                         "evidence": pa.array([[1, 2], []], pa.list_(pa.int64()))}),
        pa.record_batch({"gfn": pa.array([7, 8, 9], pa.uint64()), "what": ["b", "c", "d"],
                         "evidence": pa.array([None, [3], [4, 5]], pa.list_(pa.int64()))}),
    ])
    want = tuple(zip(*(table.column(n).to_pylist() for n in table.column_names)))
    grid = grid_from_arrow("t", table, columns=["gfn", "what", "evidence", "absent"], limit=2)
    rows = grid.rows
    assert isinstance(rows, ArrowRows) and grid.columns == ("gfn", "what", "evidence")
    assert len(rows) == 5 and tuple(rows) == want and rows == want and want == rows and rows != want[:4]
    assert [rows[i] for i in range(-5, 5)] == [want[i] for i in range(-5, 5)]
    for i in (5, -6):
        with pytest.raises(IndexError):
            rows[i]
    for cut in (slice(None, 2), slice(1, 4), slice(3, 99), slice(None, None, 2), slice(4, 1), slice(-2, None)):
        assert rows[cut] == want[cut]
    assert grid.hidden == 3 and grid.records()[1] == {"gfn": 2**63, "what": None, "evidence": []}
    assert grid_from_arrow("t", table, columns=["absent"]).rows == ()
