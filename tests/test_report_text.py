"""The text renderer keeps its 80-column promise for any table shape.

Hand-made tables (hypothesis): real recordings give short cells, so the wide and odd shapes
a user's trace might produce (long task names, long marker text in a replay message, many
columns) are generated here; the real-trace rendering is checked in test_report_formats.py.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kvmtrace.report.blocks import Bullets, Facts, Heading, Para, Table, TraceLines
from kvmtrace.report.grid import Grid
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
