"""The zap ledger's removals in the report (:class:`kvmtrace.report.removals.Removals`) are made
when read, a block at a time: each is what one whole pass makes, on real recordings.

Oracle: the same removals made all in one block (one lookup of every cited line, what the
report held before it made them lazily), and the trace's own lines for the seqs they cite."""

from __future__ import annotations

from functools import partial

import pytest

import kvmtrace
from kvmtrace.replays.ledger import zap_ledger
from kvmtrace.report.evidence import evidence_lines
from kvmtrace.report.removals import Removal, Removals

RECORDINGS = ["tdp-churn-noquirk-small-kt.dat", "k61tdp-churn-small-kt.dat"]


def _same(a: Removal, b: Removal) -> bool:
    return (a.row == b.row and a.pages_table.equals(b.pages_table) and a.sptes_table.equals(b.sptes_table)
            and (a.after_table is None) == (b.after_table is None)
            and (a.after_table is None or a.after_table.equals(b.after_table)) and a.after_lines == b.after_lines)


@pytest.fixture(scope="module", params=RECORDINGS)
def made(request, nested_dir):
    analysis = kvmtrace.open(nested_dir / request.param).analyze()
    return analysis, analysis.model.removals


def test_blocks_make_what_one_pass_makes(made, monkeypatch):
    analysis, removals = made
    data = analysis.trace.data
    after = analysis.replay.summaries["consequences"]
    calls: list[int] = []

    def lines_of(seqs):
        calls.append(len(seqs))
        return evidence_lines(data, seqs)

    ledger = zap_ledger(data, analysis.replay)
    monkeypatch.setattr(Removals, "BLOCK", 10**9)
    whole = list(Removals(ledger, after, partial(evidence_lines, data)))
    monkeypatch.setattr(Removals, "BLOCK", 3)
    lazy = Removals(ledger, after, lines_of)
    assert not calls  # nothing is made before it is read
    assert len(lazy) == len(whole) == len(removals) > 6
    got = list(lazy)
    assert len(calls) > 1 and all(_same(a, b) for a, b in zip(got, whole, strict=True))
    assert all(_same(a, b) for a, b in zip(removals, whole, strict=True))  # the report's own
    assert [r.row for r in whole] == list(lazy.rows())
    assert sum(len(r.after_lines) for r in whole) > 0  # the recordings' removals cite trace lines
    assert _same(lazy[-1], whole[-1]) and _same(lazy[2], whole[2])
    assert all(_same(a, b) for a, b in zip(lazy[1:5], whole[1:5], strict=True))
    assert [r.row["seq"] for r in lazy.made([4, 0, 2])] == [whole[k].row["seq"] for k in (4, 0, 2)]
    with pytest.raises(IndexError):
        lazy[len(whole)]


def test_cited_lines_are_the_traces_own(made):
    analysis, removals = made
    data = analysis.trace.data
    for r in removals:
        cited = sorted({s for rec in r.after.records() for s in rec["evidence"]})
        assert [s for s, _ in r.after_lines] == cited
        assert dict(r.after_lines) == evidence_lines(data, cited) if cited else not r.after_lines


def test_no_removals_is_empty():
    empty = Removals()
    assert len(empty) == 0 and not empty and list(empty) == [] and list(empty.rows()) == []
