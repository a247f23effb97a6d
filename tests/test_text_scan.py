"""The byte-level prefix split (``kvmtrace.parsers.text.scan``) against the string path (``lines.split``).

Oracle: the string path, an independent implementation (polars string kernels and the full
prefix regex) that the twin tests check against the binary reader. For every line the fast
path takes, every column must equal the string path's; the lines it leaves must be exactly
the ones that are not tracefs-layout events, so the equality is not vacuous.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import NESTED, SAMPLES

from kvmtrace.parsers.text import lines as prefix
from kvmtrace.parsers.text.scan import scan
from kvmtrace.parsers.text.source import Chunk, _buffer

TWINS = sorted(p for d in (NESTED, SAMPLES) for p in d.glob("*.txt.gz"))


def _both(data: bytes) -> tuple[pl.DataFrame, np.ndarray, pl.DataFrame]:
    """(fast rows, rejected indices, string-path split of every line) for one buffer."""
    chunk = Chunk(1, _buffer(data))
    scanned = scan(chunk.buffer, 1)
    return scanned.events, scanned.rejected, prefix.split(chunk.frame())


def _assert_same(fast: pl.DataFrame, reference: pl.DataFrame) -> None:
    taken = reference.filter(pl.col("line_no").is_in(fast["line_no"].implode()))
    columns = [c for c in reference.columns if c != "line"]
    assert taken.height == fast.height
    for column in columns:
        assert taken[column].equals(fast[column], check_names=False), column


@pytest.mark.parametrize("path", TWINS, ids=lambda p: p.name)
def test_real_text_splits_like_the_string_path(path: Path):
    data = gzip.decompress(path.read_bytes()).rstrip(b"\n")
    fast, rejected, reference = _both(data)
    _assert_same(fast, reference)
    # Every event line of these tracefs dumps has the tracefs layout: the fast path takes all of
    # them and leaves only the header.
    assert fast.height == reference.filter(pl.col("kind") == "event").height > 1000
    assert set(reference["kind"].gather(rejected).to_list()) == {"header"}


#: Hand-made: layouts and damage no recording on this machine has (kernels before 5.13 print
#: four flags characters, before 5.x a %-5d pid; wide pids and CPU numbers, TGID columns,
#: non-ASCII task names, blanks and ':' in odd places, counter clocks).
EDGE_LINES = [
    "          kvmlab-18754   [000] d..1.  1617.272103: kvm_exit: reason EPT_VIOLATION rip 0x1",
    "          kvmlab-18754 [001] d..1  1617.272103: kvm_exit: reason EPT_VIOLATION rip 0x1",
    "          kvmlab-18754   [000] ....  1617.272103: kvm_entry: vcpu 0",
    "       CPU 0/KVM-995362  [012] d.h3. 612345.123456: kvm_mmu_paging_element: pte 1 level 4",
    "    kworker/u8:3-1234567 [001] ..s1. 100000.000001: print: tracing_mark_write: hi",
    "          kvmlab-18754   [000] ...1. 1617.272103: tracing_mark_write: hello world",
    "          kvmlab-18754   [1234] d..1.  1617.272103: kvm_exit: reason X",
    "          kvmlab-18754   (  18754) [000] d..1.  1617.272103: kvm_exit: reason X",
    "          kvmlab-18754   [000] d..1.  1617272103: kvm_exit: reason X",
    "          kvmlab-18754   [000] d:.1.  1617.272103: kvm_exit: reason X",
    "          kvmlab-18754   [000] d..1.  1617.272103:  kvm_exit: reason X",
    "          kvmlab-18754   [000] d..1.  1617.272103: kvm_exit:   reason X",
    "          kvmlab-18754   [000] d..1.  1617.272103: kvm_exit:",
    "          kvmlab-18754   [000] d..1.  1617.272103: kvm-exit: reason X",
    "          kvmlab-18754   [000] d..z.  1617.272103: kvm_exit: reason X",
    "          kvmlab-18754   [000] d..1.  1617.2721039999: kvm_exit: reason X",
    "          kvmlab-18754   [000] d..1.  1234567890.272103: kvm_exit: reason X",
    "          kvmläb-18754   [000] d..1.  1617.272103: kvm_exit: reason X",
    "          >kvmlab-18754  [000] d..1.  1617.272103: kvm_exit: reason X",
    "                -18754   [000] d..1.  1617.272103: kvm_exit: reason X",
    "          kvmlab-18754   [000] d..1.  1617.272103: kvm_exit: reason X\r",
    "# tracer: nop",
    "CPU:1 [LOST 12 EVENTS]",
    "",
]


def test_edge_layouts_split_like_the_string_path():
    fast, rejected, reference = _both("\n".join(EDGE_LINES).encode())
    _assert_same(fast, reference)
    # Taken (hand-checked): both tracefs layouts, wide pid and CPU-thread names, trace_marker
    # lines, empty arguments, a non-hex preempt digit (null), CRLF. Everything else is left.
    assert fast["line_no"].to_list() == [1, 2, 3, 4, 5, 6, 13, 15, 21]
    assert len(rejected) + fast.height == len(EDGE_LINES)
