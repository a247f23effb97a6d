"""The zap ledger (:mod:`kvmtrace.replays.ledger`) as the report holds it: one :class:`Removal`
per memslot delete or move, and the per-memslot summary with each lifetime's removal zaps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow as pa

from kvmtrace.report.grid import Grid, grid_from_arrow
from kvmtrace.replays.ledger import ZapLedger


@dataclass(frozen=True)
class Removal:
    """One memslot delete or move of the zap ledger (:mod:`kvmtrace.replays.ledger`): its row of
    ``REMOVALS_SCHEMA``, the pages it zapped or kept and why, the leaf SPTEs it removed."""

    row: dict[str, Any]
    pages: Grid
    sptes: Grid

    @property
    def instance(self) -> str:
        """Slot id and the seq of the create that made it: ``2@11`` (``2@?`` predates the trace)."""
        made = self.row["slot_created_seq"]
        return f"{self.row['slot']}@{made if made is not None else '?'}"


#: Rows of one removal's page list the human formats print (JSON has all).
LEDGER_ROWS_SHOWN = 20

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


def ledger_removals(ledger: ZapLedger) -> tuple[Removal, ...]:
    """The ledger split per change, as the report shows it."""
    pages = pl.from_arrow(ledger.pages).partition_by("change", as_dict=True)
    sptes = pl.from_arrow(ledger.sptes).partition_by("change", as_dict=True)
    out = []
    for row in ledger.removals.to_pylist():
        key = (row["change"],)
        p = pages[key].to_arrow() if key in pages else ledger.pages.schema.empty_table()
        t = sptes[key].to_arrow() if key in sptes else ledger.sptes.schema.empty_table()
        out.append(Removal(row, grid_from_arrow("pages zapped and kept", p.drop(["change", "seq"]), limit=LEDGER_ROWS_SHOWN),
                           grid_from_arrow("leaf SPTEs removed", t.drop(["change", "seq"]))))
    return tuple(out)
