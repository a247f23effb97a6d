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
import re
import shutil
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from conftest import NESTED, SAMPLES
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_text_layout import BASES, PROBES
from test_text_scan import EDGE_LINES

from kvmtrace.parsers.text import native, read_text
from kvmtrace.parsers.text.catalog import EventSpec, Form, catalog
from kvmtrace.parsers.text.decode import decode_event
from kvmtrace.parsers.text.printf import Compiled
from kvmtrace.parsers.text.program import Alternatives, Literal, Number, Program, Span, program
from kvmtrace.parsers.text.reader import _may_be_damaged
from kvmtrace.parsers.text.scan import scan
from kvmtrace.parsers.text.source import _buffer

DATA = Path(__file__).parent / "data"
TWINS = sorted(p for d in (NESTED, SAMPLES) for p in d.glob("*.txt.gz"))
TEXTS = [*TWINS, *sorted((DATA / "text").glob("*.txt"))]

#: Every test below but the first compares the compiled passes with the others: it needs them.
needs_compiled = pytest.mark.skipif(not native.COMPILED, reason="the C passes were not built (no C compiler)")


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


@needs_compiled
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


@needs_compiled
def test_edge_lines_split_as_in_numpy(numpy_only):
    assert _assert_same_split("\n".join(EDGE_LINES).encode(), numpy_only) == 9


@needs_compiled
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


@needs_compiled
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


@needs_compiled
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


@needs_compiled
def test_the_matcher_cases_were_mostly_read():
    # The comparison above is not vacuous: most made arguments were decoded, not failed.
    # (Runs after it: pytest keeps a module's order.)
    assert len(MATCHED) == len(PROGRAMMED) > 70 and min(MATCHED.values()) > 30


# ---- the matcher against Python's re on made programs -----------------------------------------
# re backtracks in the same order as the regex crate's leftmost-first matching, so for any
# program the first match it finds (and its groups) is the one the matcher must find.

_NUMBER_RE = {0: "(-?[0-9]+)", 1: "([0-9]+)", 2: "([0-9a-fA-F]+)", 3: "(?:0x)?([0-9a-fA-F]+)"}
_PIECES = ["a", "0", "x", "-", " ", "0x", "1a", "ab"]
_SETS = [frozenset(b"a0-"), frozenset(b"0123456789"), frozenset(b"ax"), frozenset(b" ")]


def _regex_of(ops: list) -> str:
    out = []
    for op in ops:
        if isinstance(op, Literal):
            out.append(re.escape(op.text))
        elif isinstance(op, Number):
            out.append(_NUMBER_RE[op.kind])
        elif isinstance(op, Alternatives):
            out.append("(" + "|".join(re.escape(t) for t, _ in op.options) + ")")
        else:
            chars = "".join(re.escape(chr(c)) for c in sorted(op.chars))
            most = "" if op.most is None else op.most
            out.append(f"([{chars}]{{{op.least},{most}}})" if chars else "()")
    return "^" + "".join(out) + r"[\t-\r ]*$"


@st.composite
def _ops(draw: st.DrawFn) -> list:
    ops: list = []
    for k in range(draw(st.integers(1, 5))):
        op = draw(st.sampled_from(["literal", "number", "alternatives", "span"]))
        if op == "literal":
            ops.append(Literal(draw(st.sampled_from(_PIECES))))
        elif op == "number":
            ops.append(Number(f"g{k}", draw(st.integers(0, 3))))
        elif op == "alternatives":
            options = draw(st.lists(st.sampled_from([*_PIECES, ""]), min_size=1, max_size=3, unique=True))
            ops.append(Alternatives(f"g{k}", tuple((t, i) for i, t in enumerate(options))))
        else:
            least = draw(st.integers(0, 1))
            ops.append(Span(f"g{k}", draw(st.sampled_from(_SETS)), least, draw(st.sampled_from([None, least, 2]))))
    return ops


#: What a number op is given: digits, signs, prefixes, the edges of int64 and uint64, and too many.
_NUMBERS = ["0", "12", "-3", "0x1", "0x", "ff", "-0", str(2**63 - 1), str(2**63), "-" + str(2**63),
            "-" + str(2**63 + 1), str(2**64 - 1), str(2**64), "8000000000000000", "ffffffffffffffff",
            "10000000000000000"]


@st.composite
def _text_of(draw: st.DrawFn, ops: list) -> str:
    """A text printed from the ops' own pieces (so that most match), one piece in four any piece."""
    out = []
    for op in ops:
        if draw(st.integers(0, 3)) == 0:
            out.append(draw(st.sampled_from([*_PIECES, *_NUMBERS])))
        elif isinstance(op, Literal):
            out.append(op.text)
        elif isinstance(op, Number):
            out.append(draw(st.sampled_from(_NUMBERS)))
        elif isinstance(op, Alternatives):
            out.append(draw(st.sampled_from([t for t, _ in op.options])))
        else:
            out.append(draw(st.text("".join(map(chr, op.chars)), max_size=3)))
    return "".join(out) + draw(st.sampled_from(["", " ", "x"]))


def _expected(ops: list, signed: dict[str, bool], text: str) -> list[tuple[int, bool]] | None:
    """(value, valid) per slot of the first match re finds, as the matcher stores them."""
    m = re.match(_regex_of(ops), text)
    if m is None:
        return None
    out: list[tuple[int, bool]] = []
    for k, op in enumerate(o for o in ops if not isinstance(o, Literal)):
        group = k + 1
        if isinstance(op, Number):
            value = int(m[group], 16 if op.kind >= 2 else 10)
            low, high = (-(2**63), 2**63 - 1) if signed[op.group] else (0, 2**64 - 1)
            ok = low <= value <= high and (signed[op.group] or not m[group].startswith("-"))
            out.append(((value + 2**63) % 2**64 - 2**63 if ok else 0, ok))
        elif isinstance(op, Alternatives):
            out.append((dict(op.options)[m[group]], True))
        else:
            out += [(m.start(group), True), (m.end(group) - m.start(group), True)]
    return out


def _assert_matches_as_re(ops: list, signed: dict[str, bool], texts: list[str]) -> None:
    made = program(ops)
    assert made is not None
    code = made.code({g: signed.get(g, True) for g, _ in made.slots})
    args = pa.array(texts, pa.large_string())
    n, buffers = len(args), args.buffers()
    hit = np.empty(n, np.uint8)
    values = np.zeros((len(made.slots), n), np.int64)
    valid = np.zeros((len(made.slots), n), np.uint8)
    assert native.chunk.match_form(code, np.frombuffer(buffers[1], np.int64), buffers[2] or b"", hit, values,
                                   valid) == int(hit.sum())
    for i, text in enumerate(texts):
        want = _expected(ops, signed, text)
        assert bool(hit[i]) == (want is not None), (text, _regex_of(ops))
        if want is not None:
            got = [(int(values[k, i]) if valid[k, i] else 0, bool(valid[k, i])) for k in range(len(made.slots))]
            assert got == want, (text, _regex_of(ops))


@needs_compiled
@settings(max_examples=400, derandomize=True, deadline=None)
@given(ops=_ops(), data=st.data())
def test_the_matcher_finds_the_first_match_re_finds(ops: list, data: st.DataObject):
    assume(program(ops) is not None)
    signed = {op.group: data.draw(st.booleans()) for op in ops if isinstance(op, Number)}
    texts = data.draw(st.lists(st.text("0123456789abxX- \t", max_size=10), min_size=1, max_size=20))
    _assert_matches_as_re(ops, signed, texts + [data.draw(_text_of(ops)) for _ in range(30)])


#: Programs whose first match needs a step back (hand-made: the made programs reach these rarely).
BACKTRACKING = [
    ([Number("n", 3), Literal("x")], ["0x", "0x1x", "0xx", "0x1"]),  # "0x" given back: "0" then "x"
    ([Number("n", 2), Literal("a")], ["1fa", "aa", "a"]),  # the hex run gives back its "a"
    ([Span("s", frozenset(b"a0-"), 0, None), Literal("a")], ["aaa", "a", "0a-a"]),
    ([Alternatives("c", (("a", 1), ("ab", 2))), Literal("b")], ["ab", "abb"]),  # the first option that fits
    ([Number("n", 0), Literal("-")], ["-5-", "--5", "5-"]),
    ([Number("n", 1), Alternatives("c", (("2", 1), ("", 0)))], ["12", "1", "2"]),
]


@needs_compiled
@pytest.mark.parametrize(("ops", "texts"), BACKTRACKING, ids=[_regex_of(ops) for ops, _ in BACKTRACKING])
def test_the_matcher_steps_back_as_re_does(ops: list, texts: list[str]):
    _assert_matches_as_re(ops, {"n": True}, texts)
