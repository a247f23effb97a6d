"""The page book once the walk is over: frozen, its columns shared read-only by every reader,
held in the process or, when the book is long, kept on disk."""

from __future__ import annotations

import mmap
import sys
from array import array
from pathlib import Path

import numpy as np
import pytest
from conftest import NESTED, SAMPLES

from kvmtrace.parsers import read, spilled
from kvmtrace.replays.detectors.context import Context
from kvmtrace.replays.pages import _COLUMNS, _DTYPES, PageBook
from kvmtrace.replays.replay import replay


@pytest.mark.parametrize("path", [SAMPLES / "churn-zapall.dat", SAMPLES / "ptslot-zapslot.txt.gz",
                                  NESTED / "tdp-multi3-kt.dat"], ids=lambda p: p.name)
@pytest.mark.parametrize("on_disk", [False, True], ids=["held", "on-disk"])
def test_a_frozen_book_reads_as_its_copies_did_from_one_shared_buffer(path: Path, on_disk: bool,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """After the walk, every column and the shadow_pages table are what the copies made just
    before freezing were; the columns are read-only arrays over one buffer each (two reads share
    it), the table's columns too, and adding a page fails instead of moving the buffer under them.
    The buffer is the book's own array while the book is short, a map of a file once it is long."""
    if on_disk:
        monkeypatch.setattr(spilled, "ARRAYS_ON_DISK", 16)  # the book on disk from one page
    before: dict[str, np.ndarray] = {}
    freeze = PageBook.freeze

    def spy(book: PageBook) -> None:
        before.update({name: book.column(name) for name in _COLUMNS})
        freeze(book)

    got: list[Context] = []
    module = sys.modules["kvmtrace.replays.replay"]
    monkeypatch.setattr(module, "Context", lambda *a, **k: got.append(Context(*a, **k)) or got[-1])
    monkeypatch.setattr(PageBook, "freeze", spy)
    result = replay(read(path))
    book = got[0].pages
    assert len(book) > 0 and before
    for name, copy in before.items():
        col = book.column(name)
        assert np.array_equal(col, copy), name
        if name != "predates":
            assert not col.flags.writeable and np.shares_memory(col, book.column(name)), name
    with pytest.raises(ValueError):
        book.column("zap_seq")[0] = 1
    with pytest.raises(AttributeError):
        book.add(1, 2, 3, 4, False, 0)
    unfrozen = PageBook(book.role_mask)  # the copies in a book never frozen: the table as it was made before
    for name, code in _COLUMNS.items():
        getattr(unfrozen, name).frombytes(before[name].astype(_DTYPES[code]).tobytes())
    assert result.shadow_pages.equals(unfrozen.table(got[0].profile))
    gfn = result.shadow_pages.column("gfn").chunk(0)
    assert gfn.buffers()[1].address == book.column("gfn").ctypes.data  # the table wraps the book's buffer
    for name in _COLUMNS:
        owner = getattr(book, name)  # the column as the book holds it (``predates`` reads as a copy)
        while isinstance(owner, np.ndarray | memoryview):
            owner = owner.base if isinstance(owner, np.ndarray) else owner.obj
        assert isinstance(owner, mmap.mmap if on_disk else array), name
