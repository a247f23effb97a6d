"""The compiled passes over text (``parsers/text/_chunk.c``) against the numpy and regex passes.

Oracle: the same reader with ``native.COMPILED`` set false, which runs the numpy prefix split,
line bounds and damage test (checked against the string path in ``test_text_scan.py`` and
``test_text_layout.py``) and the regex decoders (``test_text_forms.py``, the twin tests). Each
compiled pass must give the same result: on every text input of the repository, read whole; on
the hand-made edge lines and every prefix column of four layouts damaged 20 ways; on bounds and
quoting cases; and, for the form matcher, on printed arguments made by hypothesis for every form
that has a program (numbers of every size and sign, hex case, a ``0x`` or not, every alternative,
and the same text damaged), compared row by row with the regex pass.
"""

from __future__ import annotations

import gzip
import shutil
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import NESTED, SAMPLES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_text_layout import BASES, PROBES
from test_text_scan import EDGE_LINES

from kvmtrace.parsers.text import native, read_text
from kvmtrace.parsers.text.catalog import EventSpec, Form, catalog
from kvmtrace.parsers.text.decode import decode_event
from kvmtrace.parsers.text.printf import Compiled
from kvmtrace.parsers.text.program import Alternatives, Literal, Number, Program, Span
from kvmtrace.parsers.text.reader import _may_be_damaged
from kvmtrace.parsers.text.scan import scan
from kvmtrace.parsers.text.source import _buffer

DATA = Path(__file__).parent / "data"
TWINS = sorted(p for d in (NESTED, SAMPLES) for p in d.glob("*.txt.gz"))
TEXTS = [*TWINS, *sorted((DATA / "text").glob("*.txt"))]

pytestmark = pytest.mark.skipif(not native.COMPILED, reason="the C passes were not built (no C compiler)")


def test_the_install_built_the_compiled_passes_when_it_could():
    # The extension is optional so that an install without a compiler works; with one, a
    # failed build would leave the reader silently slower.
    assert native.COMPILED or not (shutil.which("cc") or shutil.which("gcc"))


@pytest.fixture
def numpy_only(monkeypatch):
    """A function running its argument with the compiled passes off."""
    def run(fn, *args):
        with monkeypatch.context() as m:
            m.setattr(native, "COMPILED", False)
            return fn(*args)
    return run


def _read(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_text(path, compression="gzip" if path.suffix == ".gz" else "none")


@pytest.mark.parametrize("path", TEXTS, ids=lambda p: p.name)
def test_every_text_input_reads_the_same(path: Path, numpy_only):
    c, n = _read(path), numpy_only(_read, path)
    assert c.info == n.info and c.skipped == n.skipped
    assert c.events.equals(n.events) and c.tables.keys() == n.tables.keys()
    for name, table in c.tables.items():
        assert table.equals(n.tables[name], check_metadata=True), name
    assert c.info.total_events > 0


def _assert_same_split(data: bytes, numpy_only) -> int:
    buffer = _buffer(data)
    c, n = scan(buffer, 1), numpy_only(scan, buffer, 1)
    assert np.array_equal(c.rejected, n.rejected)
    assert c.events.equals(n.events)
    return c.events.height


def test_edge_lines_split_as_in_numpy(numpy_only):
    assert _assert_same_split("\n".join(EDGE_LINES).encode(), numpy_only) == 9


@pytest.mark.parametrize("base", BASES)
def test_every_damaged_column_splits_as_in_numpy(base: str, numpy_only):
    lines = [base]
    for col in range(len(base)):
        lines += [base[:col] + c + base[col + 1:] for c in PROBES]
        lines += [base[:col] + base[col + 1:], base[:col] + " " + base[col:], base[:col]]  # shifted, cut
    taken = _assert_same_split("\n".join(lines).encode(), numpy_only)
    assert 1 < taken < len(lines)


BOUNDS = [b"", b"\n", b"\n\n", b"a", b"a\n", b"a\r\nb\r", b"\r\n\r", b"a=\nb", b"x=3D", b"x=3", b"=", b"a\n=\n",
          b"\xc3\xa4=\r\n"]


@pytest.mark.parametrize("path", TWINS[:3], ids=lambda p: p.name)
def test_line_bounds_and_quoting_as_in_numpy(path: Path, numpy_only):
    text = gzip.decompress(path.read_bytes())
    for data in (*BOUNDS, text, text.replace(b"\n", b"\r\n"), text.rstrip(b"\n"), text + b"=3", text[:-5] + b"=3D\n"):
        c, n = _buffer(data), numpy_only(_buffer, data)
        assert np.array_equal(c.starts, n.starts) and np.array_equal(c.ends, n.ends) and c.ascii == n.ascii, data[:20]
        assert _may_be_damaged(c) == numpy_only(_may_be_damaged, c), data[:20]
    assert _may_be_damaged(_buffer(b"a=\nb")) and _may_be_damaged(_buffer(b"x=3D"))
    assert not _may_be_damaged(_buffer(b"a = 3\nb=c"))


#: (event, form, the form's regex and program: its own or its quick one's) for every program.
PROGRAMMED = [(spec, form, c) for spec in catalog().values() for form in spec.forms
              for c in (form.quick, form.compiled) if c is not None and c.program is not None]


#: Numbers at the edges of int64 and uint64 and of what a parse takes, by how they are printed.
DECIMAL_EDGES = ["0", "00000000000000000001", str(2**63 - 1), str(2**63), str(2**64 - 1), str(2**64)]
NEGATIVE_EDGES = ["-0", "-" + str(2**63), "-" + str(2**63 + 1)]
HEX_EDGES = ["0", "7fffffffffffffff", "8000000000000000", "ffffffffffffffff", "10000000000000000"]


def _number(kind: int) -> st.SearchStrategy[str]:
    """A number as the kernel prints it (any size, either hex case, a 0x or not), one in four an edge."""
    if kind < 2:
        value = st.integers(-(2**65), 2**65).map(str) if kind == 0 else st.integers(0, 2**65).map(str)
        edges = DECIMAL_EDGES + (NEGATIVE_EDGES if kind == 0 else [])
    else:
        value = st.integers(0, 2**65).flatmap(lambda v: st.sampled_from([format(v, "x"), format(v, "X")]))
        edges = HEX_EDGES
    prefix = st.sampled_from(["", "0x"]) if kind == 3 else st.just("")
    return st.tuples(prefix, st.one_of(value, value, value, st.sampled_from(edges))).map("".join)


#: Ways to damage one piece of printed text.
DAMAGE = [lambda t: "", lambda t: t[:-1], lambda t: t + " ", lambda t: t.upper(), lambda t: "-" + t,
          lambda t: t + "7", lambda t: t + "g", lambda t: t + "x", lambda t: "0x" + t, lambda t: t + "?"]


@st.composite
def _printed(draw: st.DrawFn, program: Program) -> str:
    """One argument text of a program: each op printed; in three texts of ten, one piece damaged."""
    out = []
    for op in program.ops:
        if isinstance(op, Literal):
            out.append(op.text)
        elif isinstance(op, Number):
            out.append(draw(_number(op.kind)))
        elif isinstance(op, Span):
            alphabet = [chr(c) for c in sorted(op.chars) if 0x20 <= c < 0x7F]
            most = 12 if op.most is None else op.most
            out.append(draw(st.text(alphabet, min_size=op.least, max_size=most)) if alphabet else "")
        else:
            assert isinstance(op, Alternatives)
            out.append(draw(st.sampled_from([t for t, _ in op.options])))
    out.append(draw(st.sampled_from(["", "", "", " ", " ", "  \t", "\t", " x"])))
    if draw(st.integers(0, 9)) < 3:
        k = draw(st.integers(0, len(out) - 1))
        out[k] = draw(st.sampled_from(DAMAGE))(out[k])
    return "".join(out)


def _decode(spec: EventSpec, args: list[str]) -> tuple[pl.DataFrame, list[int], tuple[str, ...]]:
    rows = pl.DataFrame({"line_no": pl.Series(range(len(args)), dtype=pl.Int64), "args": args})
    d = decode_event(spec, rows, ascii_only=True)
    return d.rows, d.failed.to_list(), d.forms


@pytest.mark.parametrize(("spec", "form", "compiled"), PROGRAMMED,
                         ids=[f"{s.name}/{f.era}{'/quick' if c is f.quick else ''}" for s, f, c in PROGRAMMED])
@settings(max_examples=40, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_form_matcher_decodes_as_the_regex(spec: EventSpec, form: Form, compiled: Compiled, data: st.DataObject,
                                               numpy_only):
    assert compiled.program is not None
    args = data.draw(st.lists(_printed(compiled.program), min_size=1, max_size=12))
    c, n = _decode(spec, args), numpy_only(_decode, spec, args)
    assert c[1] == n[1] and c[2] == n[2], args
    assert c[0].equals(n[0]), args
    MATCHED[form.era, spec.name, compiled is form.quick] += c[0].height


MATCHED: Counter[tuple[str, str, bool]] = Counter()


def test_the_matcher_cases_were_mostly_read():
    # The comparison above is not vacuous: most made arguments were decoded, not failed.
    # (Runs after it: pytest keeps a module's order.)
    assert len(MATCHED) == len(PROGRAMMED) > 70 and min(MATCHED.values()) > 30
