"""Text not in time order (pieces pasted in the wrong order) is sorted, stably, and says so.

In-order text keeps its own order (see test_text_twins.py: every twin's rows come in the
trace.dat's order); the oracle here is the same real lines read in their recorded order.
"""

from __future__ import annotations

import gzip

import polars as pl
import pytest
from conftest import SAMPLES

from kvmtrace.parsers import TraceWarning, read


def test_pasted_out_of_order_is_sorted_and_reported(tmp_path):
    lines = gzip.decompress((SAMPLES / "multi-zapall.txt.gz").read_bytes()).decode().splitlines()
    body = [ln for ln in lines if not ln.startswith("#")]
    half = len(body) // 2
    ordered, swapped = tmp_path / "ordered.txt", tmp_path / "swapped.txt"
    ordered.write_text("\n".join(body) + "\n")
    swapped.write_text("\n".join(body[half:] + body[:half]) + "\n")
    with pytest.warns(TraceWarning, match=r"not in time order \(1 line\(s\) go back in time, the first at line "
                                          rf"{len(body) - half + 1}\)"):
        got = read(swapped)
    want = read(ordered)
    assert not want.info.warnings
    assert any("sorted by timestamp" in w for w in got.info.warnings)
    assert pl.from_arrow(got.events).drop("seq").equals(pl.from_arrow(want.events).drop("seq"))
