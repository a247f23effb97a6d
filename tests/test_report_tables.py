"""Long and wide tables: JSON never cuts a table; the human formats abbreviate and say so; the
80-column text never splits a row away from its key column.

Real recordings: tdp-churn-noquirk-small-kt (74 memslot changes, 78 what-if rows: longer than the
human formats print) and ptslot-zapslot (per-memslot costs and the what-if table, both wider
than 80 columns).
"""

from __future__ import annotations

import json

import pytest
from conftest import SAMPLES

import kvmtrace
from kvmtrace.report import render
from kvmtrace.report.blocks import Table
from kvmtrace.report.model import IN_LEDGER, ROWS_SHOWN
from kvmtrace.report.text import WIDTH, render_text


@pytest.fixture(scope="module")
def long_tables(nested_dir):
    analysis = kvmtrace.open(nested_dir / "tdp-churn-noquirk-small-kt.dat").analyze()
    return analysis, analysis.model


def test_json_has_every_row_of_every_table(long_tables):
    analysis, report = long_tables
    r = analysis.replay
    assert r.memslots.num_rows > ROWS_SHOWN and r.whatif.num_rows > ROWS_SHOWN
    doc = json.loads(render(report, "json"))
    assert len(doc["memslots"]["rows"]) == r.memslots.num_rows
    assert [row["seq"] for row in doc["memslots"]["rows"]] == r.memslots["seq"].to_pylist()
    assert len(doc["whatif"]["rows"]) == r.whatif.num_rows
    assert doc["whatif"]["rows"] == r.whatif.to_pylist()
    for grid, table in zip(doc["activity"], (r.summaries[k] for k in sorted(r.summaries) if k not in IN_LEDGER)):
        assert len(grid["rows"]) == table.num_rows
    # the consequences of each delete/move are listed under it in the ledger
    assert sum(len(x["after"]) for x in doc["removals"]) == r.summaries["consequences"].num_rows


@pytest.mark.parametrize("fmt", ["text", "markdown", "html"])
def test_human_formats_abbreviate_and_say_so(long_tables, fmt):
    analysis, report = long_tables
    out = render(report, fmt)
    for n in (analysis.replay.memslots.num_rows, analysis.replay.whatif.num_rows):
        assert f"... {n - ROWS_SHOWN} more rows (the JSON report has every row)" in out


def _wide(report, title: str):
    grid = next(g for g in (report.whatif, *report.activity) if g.title == title)
    assert sum(len(c) + 2 for c in grid.columns) > WIDTH, "the table must be wider than the page"
    return grid


@pytest.mark.parametrize("title", ["what-if per memslot change", "per-memslot activity and zap costs"])
def test_wide_table_rows_keep_their_key(title):
    """Each row starts on an unindented line with its key cell; its other cells follow on
    indented lines before the next row starts; no second table repeats the key column."""
    report = kvmtrace.open(SAMPLES / "ptslot-zapslot.dat").analyze().model
    grid = _wide(report, title)
    lines = render_text([Table(grid)]).splitlines()
    assert all(len(ln) <= WIDTH for ln in lines)
    starts = [n for n, ln in enumerate(lines) if ln and not ln.startswith(" ")]
    _header, rule, *rows = starts
    assert lines[rule].startswith("---") and len(rows) == len(grid.rows)
    assert sum(1 for ln in lines if ln.split()[:1] == [grid.columns[0]]) == 1  # one header only
    for n, cells in zip(rows, grid.text_rows()):
        block = lines[n: next((s for s in starts if s > n), len(lines))]
        assert block[0].split()[0] == cells[0]
        assert " ".join(block).split() == cells  # every cell of the row, in column order
