"""The compiled passes over text (``parsers/text/_chunk.c``) against the numpy and regex passes.

Oracle: the same reader with ``native.COMPILED`` set false, which runs the numpy prefix split,
line bounds and damage test (checked against the string path in ``test_text_scan.py`` and
``test_text_layout.py``) and the regex decoders (``test_text_forms.py``, the twin tests). Each
compiled pass must give the same result: on every text input of the repository, read whole; on
the hand-made edge lines and every prefix column of four layouts damaged 20 ways; on bounds and
quoting cases.
"""

from __future__ import annotations

import gzip
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import NESTED, SAMPLES
from test_text_layout import BASES, PROBES
from test_text_scan import EDGE_LINES

from kvmtrace.parsers.text import native, read_text
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
