"""A replay that keeps every long array on disk (the page book, the live sets, the installs, the
lifetimes) finds what a replay that holds them finds: the same tables, row for row.

Why: which arrays lie on disk depends on a trace's length, so on the samples, which are short,
the paths that read maps a span at a time and give their pages back (``spilled.gather``, the
sealed live sets, the frozen book's maps) would otherwise run only on long recordings."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import NESTED, SAMPLES

from kvmtrace.parsers import read, spilled
from kvmtrace.replays.replay import replay


@pytest.mark.parametrize("path", [NESTED / "tdp-churn-noquirk-small-kt.dat",
                                  NESTED / "shadow-churn-noquirk-small-kt.dat", SAMPLES / "churn-zapall.dat"],
                         ids=lambda p: p.name)
def test_a_replay_with_its_arrays_on_disk_finds_what_one_holding_them_finds(path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    held = replay(read(path))
    monkeypatch.setattr(spilled, "ARRAYS_ON_DISK", 16)  # every array of 16 rows or more on disk
    monkeypatch.setattr(spilled, "GATHER_SPAN", 4)  # scattered reads over many spans
    kept = replay(read(path))
    assert held.findings.num_rows or "tdp" not in path.name  # the TDP churn has update-window hits
    for name in ("findings", "checks", "shadow_pages", "spte_changes", "memslots", "unexplained"):
        assert getattr(kept, name).equals(getattr(held, name)), name
    assert kept.summaries.keys() == held.summaries.keys()
    for name, table in held.summaries.items():
        assert kept.summaries[name].equals(table), name
    assert (kept.whatif is None) == (held.whatif is None)
    if held.whatif is not None:
        assert kept.whatif is not None and kept.whatif.equals(held.whatif)
