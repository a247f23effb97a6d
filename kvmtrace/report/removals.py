"""The zap ledger (:mod:`kvmtrace.replays.ledger`) as the report holds it: one :class:`Removal`
per memslot delete or move, with what the trace shows afterwards (the replay's ``consequences``
rows of that change, each with its evidence lines), and the per-memslot summary with each
lifetime's removal zaps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl
import pyarrow as pa

from kvmtrace.replays.ledger import ZapLedger
from kvmtrace.report.grid import Grid, grid_from_arrow


@dataclass(frozen=True)
class Removal:
    """One memslot delete or move of the zap ledger (:mod:`kvmtrace.replays.ledger`): its row of
    ``REMOVALS_SCHEMA``, the pages it zapped or kept and why, the leaf SPTEs it removed."""

    row: dict[str, Any]
    pages: Grid
    sptes: Grid
    #: the replay's consequences of this change (pages that survived and whether the rule allowed
    #: it, faults on the range and how KVM resolved them, re-installs, leaf proofs)
    after: Grid = field(default_factory=lambda: Grid("what the trace shows afterwards", ()))
    #: (seq, trace line) of every event ``after`` cites, in seq order
    after_lines: tuple[tuple[int, str], ...] = ()

    @property
    def instance(self) -> str:
        """Slot id and the seq of the create that made it: ``2@11`` (``2@?`` predates the trace)."""
        made = self.row["slot_created_seq"]
        return f"{self.row['slot']}@{made if made is not None else '?'}"


#: Rows of one removal's page list the human formats print (JSON has all).
LEDGER_ROWS_SHOWN = 20
#: The replay's consequence columns the report keeps (``change_seq``, ``slot``, ``change`` are the removal's own).
AFTER_COLUMNS = ("what", "seq", "gfn", "level", "pid", "page", "allowed", "detail", "evidence")

#: What the per-memslot summary's zap columns count (the replay's lifetime ends where the
#: removing change's window starts, so that change's own zaps are not in ``pages_zapped``).
MEMSLOT_ZAPS_NOTE = ("pages_zapped counts zaps while the slot instance was in place; zapped_at_removal "
                     "those inside the update window of the delete or move that ended it (from the zap ledger)")


def with_removal_zaps(lifetimes: pa.Table, ledger: ZapLedger) -> pa.Table:
    """The per-memslot summary plus ``zapped_at_removal``: the ledger's pages zapped by the change
    whose window ended each lifetime (null where no positioned change ended it)."""
    if "until_seq" not in lifetimes.column_names:
        return lifetimes
    r = ledger.removals
    ended = dict(zip(zip(r.column("slot").to_pylist(), r.column("window_start").to_pylist()),
                     r.column("pages_zapped").to_pylist()))
    keys = zip(lifetimes.column("slot").to_pylist(), lifetimes.column("until_seq").to_pylist())
    return lifetimes.append_column("zapped_at_removal", pa.array([ended.get(k) for k in keys], pa.int64()))


def ledger_removals(ledger: ZapLedger, after: pa.Table | None = None,
                    lines: dict[int, str] | None = None) -> tuple[Removal, ...]:
    """The ledger split per change, as the report shows it, each with its consequence rows
    (``after``: the replay's ``consequences`` table) and the trace lines they cite (``lines``)."""
    # pl.DataFrame(table) converts like pl.from_arrow without copying, and is typed as a frame
    pages = pl.DataFrame(ledger.pages).partition_by("change", as_dict=True)
    sptes = pl.DataFrame(ledger.sptes).partition_by("change", as_dict=True)
    later = pl.DataFrame(after).partition_by("change_seq", as_dict=True) if after is not None and after.num_rows \
        else {}
    lines = lines or {}
    out = []
    for row in ledger.removals.to_pylist():
        key = (row["change"],)
        p = pages[key].to_arrow() if key in pages else ledger.pages.schema.empty_table()
        t = sptes[key].to_arrow() if key in sptes else ledger.sptes.schema.empty_table()
        a = later[(row["seq"],)].to_arrow() if (row["seq"],) in later else None
        cited = sorted({s for ev in (a.column("evidence").to_pylist() if a is not None else ()) for s in ev})
        out.append(Removal(row,
                           grid_from_arrow("pages zapped and kept", p.drop(["change", "seq"]), limit=LEDGER_ROWS_SHOWN),
                           grid_from_arrow("leaf SPTEs removed", t.drop(["change", "seq"])),
                           grid_from_arrow("what the trace shows afterwards", a, columns=AFTER_COLUMNS)
                           if a is not None else Grid("what the trace shows afterwards", AFTER_COLUMNS),
                           tuple((s, lines[s]) for s in cited if s in lines)))
    return tuple(out)


def cited_seqs(after: pa.Table | None) -> set[int]:
    """Every seq the consequences table cites (to look their trace lines up once)."""
    if after is None or not after.num_rows:
        return set()
    return {s for ev in after.column("evidence").to_pylist() for s in ev}
