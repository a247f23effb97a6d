"""The fixed-column prefix split (``kvmtrace.parsers.text.layout``) against the general byte split.

Oracle: ``scan.split_general``, which searches each line for its separators (and is itself
checked against the string path in ``test_text_scan.py``). For every line the fixed-column
split takes, every value must equal the general split's; it must take every event line of the
real twins (so the equality is not vacuous) and no line the general split refuses.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from conftest import NESTED, SAMPLES
from test_text_scan import EDGE_LINES

from kvmtrace.parsers.text import layout
from kvmtrace.parsers.text.scan import split_general
from kvmtrace.parsers.text.source import _buffer
from kvmtrace.parsers.text.words import padded

TWINS = sorted(p for d in (NESTED, SAMPLES) for p in d.glob("*.txt.gz"))
FIELDS = ("comm_start", "pid", "cpu", "ts", "colon", "preempt", "preempt_ok")


def _splits(data: bytes, lay: layout.Layout | None = None) -> tuple[layout.Prefix, layout.Prefix, layout.Layout]:
    """(general, fixed-column) splits of every line; the layout is the lines' most common one."""
    buffer = _buffer(data)
    buf = padded(np.frombuffer(buffer.data, dtype=np.uint8))
    ok = (buffer.ends - buffer.starts >= 40) & np.array([max(line, default=0) < 0x80 for line in data.split(b"\n")])
    general, keys = split_general(buf, buffer.starts, ok.copy())
    if lay is None:
        lay = layout.common(keys, general.ok)
        assert lay is not None
    return general, layout.split(buf, buffer.starts, ok.copy(), lay), lay


def _assert_agree(general: layout.Prefix, fixed: layout.Prefix) -> None:
    assert not (fixed.ok & ~general.ok).any(), np.flatnonzero(fixed.ok & ~general.ok)
    for name in FIELDS:
        assert np.array_equal(getattr(fixed, name)[fixed.ok], getattr(general, name)[fixed.ok]), name


@pytest.mark.parametrize("path", TWINS, ids=lambda p: p.name)
def test_real_text_splits_like_the_general_split(path: Path):
    general, fixed, lay = _splits(gzip.decompress(path.read_bytes()).rstrip(b"\n"))
    _assert_agree(general, fixed)
    assert lay.usable
    assert fixed.ok.sum() == general.ok.sum() > 1000


#: One line per layout the fixed split may be given: 5.13+ (five flags, %-7d pid), before 5.13
#: (four flags), before 5.x (%-5d pid), and 6-digit seconds.
BASES = [
    "          kvmlab-18754   [000] d..1.  1617.272103: kvm_exit: reason EPT_VIOLATION rip 0x1",
    "          kvmlab-18754   [000] d..1  1617.272103: kvm_exit: reason EPT_VIOLATION rip 0x1",
    "          kvmlab-18754 [001] d..1  1617.272103: kvm_exit: reason EPT_VIOLATION rip 0x1",
    "          kvmlab-1875    [001] dNh2. 123617.272103: kvm_entry: vcpu 1, rip 0x2",
]
#: Bytes put in each prefix column of each base line: separators, blanks, digits, quote marks.
PROBES = " \t\r[]:.->|09afxX#\x01"


@pytest.mark.parametrize("base", BASES)
def test_every_damaged_column_splits_like_the_general_split(base: str):
    lay = _splits(base.encode())[2]
    lines = [base]
    for col in range(lay.colon + 2):
        lines += [base[:col] + c + base[col + 1:] for c in PROBES]
        lines += [base[:col] + base[col + 1:], base[:col] + " " + base[col:]]  # shifted columns
    general, fixed, _ = _splits("\n".join(lines).encode(), lay)
    _assert_agree(general, fixed)
    assert fixed.ok[0] and 0 < fixed.ok.sum() < general.ok.sum()  # some taken, some left to the general split


def test_edge_lines_split_like_the_general_split():
    data = "\n".join(EDGE_LINES).encode()
    for base in BASES:
        lay = _splits(base.encode())[2]
        general, fixed, _ = _splits(data, lay)
        _assert_agree(general, fixed)
        assert fixed.ok.any()
