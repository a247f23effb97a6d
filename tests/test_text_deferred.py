"""Rare events decoded after the last chunk give the same TraceData as decoding every chunk whole.

The reader holds back the lines of events with few lines in a chunk (reader.RARE) and decodes
them once at the end. Real text, cut into many small chunks so every chunk holds rare events, with
one rare line damaged so its failure takes the deferred path too.
"""

from __future__ import annotations

import functools
import gzip
import warnings
from pathlib import Path

import pytest

import kvmtrace.parsers.text.reader as reader
import kvmtrace.parsers.text.source as source
from kvmtrace.parsers.errors import TraceError
from kvmtrace.parsers.text import read_text

SAMPLE = Path(__file__).resolve().parent.parent / "sample_traces" / "churn-zapslot.txt.gz"


def _damaged(tmp_path: Path) -> tuple[Path, int]:
    """The sample with the arguments of its 3rd kvm_mmu_get_page line made unreadable."""
    lines = gzip.open(SAMPLE, "rt").read().splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if ": kvm_mmu_get_page: " in line]
    n = hits[2]
    lines[n] = lines[n].replace(" gfn ", " gfx ")
    out = tmp_path / "damaged.txt"
    out.write_text("".join(lines))
    return out, n + 1


def _read(path: Path, rare: int, monkeypatch: pytest.MonkeyPatch, strict: bool = False):
    monkeypatch.setattr(reader, "RARE", rare)
    monkeypatch.setattr(reader, "read_chunks", functools.partial(source.read_chunks, chunk_bytes=64 << 10))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_text(path, strict=strict)


def test_deferred_rare_events_read_the_same(tmp_path, monkeypatch):
    path, bad_line = _damaged(tmp_path)
    whole = _read(path, 0, monkeypatch)  # nothing deferred
    deferred = _read(path, 10_000, monkeypatch)  # every catalogued event deferred
    assert deferred.skipped == whole.skipped
    assert (bad_line, "kvm_mmu_get_page: arguments match none of its known printed forms") in deferred.skipped
    assert deferred.events.equals(whole.events, check_metadata=True)
    assert deferred.tables.keys() == whole.tables.keys()
    for name, table in whole.tables.items():
        assert deferred.tables[name].equals(table, check_metadata=True), name
    assert deferred.info == whole.info
    pages = deferred.tables["kvm_mmu_get_page"]
    assert pages.num_rows == 49  # 50 in the sample, one skipped


def test_held_back_lines_are_decoded_whenever_there_are_enough(tmp_path, monkeypatch):
    """With a bound of 7 held-back lines, they are decoded during the read too: same data."""
    path, _line = _damaged(tmp_path)
    whole = _read(path, 0, monkeypatch)
    monkeypatch.setattr(reader, "DEFERRED_MAX", 7)
    calls = []
    decode = reader.decode_deferred
    monkeypatch.setattr(reader, "decode_deferred", lambda acc, skipped: calls.append(1) or decode(acc, skipped))
    bounded = _read(path, 10_000, monkeypatch)
    assert len(calls) > 10  # during the read, besides the final one
    assert bounded.skipped == whole.skipped and bounded.info == whole.info
    assert bounded.events.equals(whole.events, check_metadata=True)
    for name, table in whole.tables.items():
        assert bounded.tables[name].equals(table, check_metadata=True), name


def test_strict_reports_a_rare_event_line_at_once(tmp_path, monkeypatch):
    path, bad_line = _damaged(tmp_path)
    with pytest.raises(TraceError, match=f"line {bad_line}: kvm_mmu_get_page"):
        _read(path, 10_000, monkeypatch, strict=True)
