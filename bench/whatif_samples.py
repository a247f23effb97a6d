"""The what-if numbers of every real recording: what zap-all and zap-slot cost per memslot change.

Usage: python bench/whatif_samples.py [TRACE ...] > bench/WHATIF.md

The question of the 2019 per-memslot zap thread (and of the 2022 memslot-update thread;
docs/threads.md): at a memslot delete or move, how much does each zap policy destroy, and how
much of it does the guest fault back in? For every recording (default: all of
``sample_traces/*.dat`` and, when present, the upstream-kernel recordings in
``tests/data/nested``) the replay's what-if table is added up per policy. The trace's own
policy is measured; the other one is predicted from the model's state at each change. Refault
counts marked with ``>=`` are lower bounds (see ``replays/whatif.py``). Run by hand; the output is
committed as ``bench/WHATIF.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from kvmtrace import parsers  # noqa: E402
from kvmtrace.replays import replay  # noqa: E402


def default_traces() -> list[Path]:
    return sorted((HERE.parent / "sample_traces").glob("*.dat")) + sorted(
        (HERE.parent / "tests" / "data" / "nested").glob("*.dat"))


def rows(path: Path) -> list[str]:
    result = replay(parsers.read(path))
    if result.whatif is None or not result.whatif.num_rows:
        return []
    totals = (pl.from_arrow(result.whatif).group_by("policy", "trace_policy")
              .agg(pl.len().alias("changes"), pl.col("pages_destroyed", "sptes_destroyed", "pages_refaulted",
                                                     "sptes_refaulted").sum(), pl.col("refaults_exact").all())
              .sort("policy"))
    out = []
    for r in totals.iter_rows(named=True):
        bound = "" if r["refaults_exact"] else ">= "
        out.append(f"| {path.stem} | {result.mmu} | {r['policy']}{' (traced)' if r['trace_policy'] else ''} | "
                   f"{r['changes']} | {r['pages_destroyed']} | {bound}{r['pages_refaulted']} | "
                   f"{r['sptes_destroyed']} | {bound}{r['sptes_refaulted']} |")
    return out


def main(argv: list[str]) -> None:
    traces = [Path(a) for a in argv] or default_traces()
    print("| trace | mmu | policy | changes | pages destroyed | pages refaulted | SPTEs destroyed | "
          "SPTEs refaulted |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for path in traces:
        for line in rows(path):
            print(line)


if __name__ == "__main__":
    main(sys.argv[1:])
