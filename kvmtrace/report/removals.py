"""The zap ledger (:mod:`kvmtrace.replays.ledger`) as the report holds it: one :class:`Removal`
per memslot delete or move, with what the trace shows afterwards (the replay's ``consequences``
rows of that change, each with its evidence lines), and the per-memslot summary with each
lifetime's removal zaps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import pyarrow as pa

from kvmtrace.parsers.spilled import releasing
from kvmtrace.replays.ledger import ZapLedger
from kvmtrace.report.grid import Grid, grid_from_arrow


@dataclass(frozen=True)
class Removal:
    """One memslot delete or move of the zap ledger (:mod:`kvmtrace.replays.ledger`): its row of
    ``REMOVALS_SCHEMA``, the pages it zapped or kept and why, the leaf SPTEs it removed.

    The three tables are held as Arrow slices of the ledger's and the replay's tables and made
    into grids when read: a long trace has thousands of removals, the human formats print a few
    of them in full, and building every grid up front took 7 s and 216 MiB of Python rows at
    8 500 removals (51 M events)."""

    row: dict[str, Any]
    pages_table: pa.Table  # the ledger's PAGES_SCHEMA rows of this change, less change and seq
    sptes_table: pa.Table  # likewise of SPTES_SCHEMA
    #: the replay's consequences of this change (pages that survived and whether the rule allowed
    #: it, faults on the range and how KVM resolved them, re-installs, leaf proofs); None: none
    after_table: pa.Table | None = None
    #: (seq, trace line) of every event ``after`` cites, in seq order
    after_lines: tuple[tuple[int, str], ...] = ()

    @property
    def pages(self) -> Grid:
        return grid_from_arrow("pages zapped and kept", self.pages_table, limit=LEDGER_ROWS_SHOWN)

    @property
    def sptes(self) -> Grid:
        return grid_from_arrow("leaf SPTEs removed", self.sptes_table)

    @property
    def after(self) -> Grid:
        if self.after_table is None:
            return Grid("what the trace shows afterwards", AFTER_COLUMNS)
        return grid_from_arrow("what the trace shows afterwards", self.after_table, columns=AFTER_COLUMNS)

    @property
    def instance(self) -> str:
        return instance(self.row)


def instance(row: dict[str, Any]) -> str:
    """A removal's slot id and the seq of the create that made it: ``2@11`` (``2@?`` predates the trace)."""
    made = row["slot_created_seq"]
    return f"{row['slot']}@{made if made is not None else '?'}"


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


class Removals(Sequence[Removal]):
    """The zap ledger split per change, as the report shows it: each :class:`Removal` with its
    consequence rows (``after``: the replay's ``consequences`` table) and the trace lines they
    cite (``lines_of``: seqs to lines), made when it is read, :data:`BLOCK` at a time.

    Why not made once and held: a long trace has thousands of removals, and with their row
    dicts and cited lines they were the largest part of the report (75 MiB at 8 500 removals,
    53 M events; twice that at twice the length), though the human formats print a few in full
    and the JSON report encodes one at a time. :meth:`rows` answers the questions about the
    changes themselves (policies, counts, the ledger table) without their lines."""

    #: Removals made at a time: their cited lines are looked up together.
    BLOCK = 256

    def __init__(self, ledger: ZapLedger | None = None, after: pa.Table | None = None,
                 lines_of: Callable[[set[int]], dict[int, str]] | None = None) -> None:
        self._table = ledger.removals if ledger is not None else None
        self._pages = _Parts(ledger.pages.drop(["seq"]), "change") if ledger is not None else None
        self._sptes = _Parts(ledger.sptes.drop(["seq"]), "change") if ledger is not None else None
        self._later = _Parts(after, "change_seq") if after is not None and after.num_rows else None
        self._lines_of = lines_of

    def __len__(self) -> int:
        return self._table.num_rows if self._table is not None else 0

    @overload
    def __getitem__(self, i: int) -> Removal: ...

    @overload
    def __getitem__(self, i: slice) -> list[Removal]: ...

    def __getitem__(self, i: int | slice) -> Removal | list[Removal]:
        if isinstance(i, slice):
            return list(self.made(range(*i.indices(len(self)))))
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return next(iter(self.made([i % len(self)])))

    def __iter__(self) -> Iterator[Removal]:
        return self.made(range(len(self)))

    def rows(self) -> Iterator[dict[str, Any]]:
        """Each change's ledger row (``Removal.row``), without its tables and lines."""
        if self._table is not None:
            for batch in self._table.to_batches(self.BLOCK):
                yield from batch.to_pylist()

    def made(self, indices: Iterable[int]) -> Iterator[Removal]:
        """The removals at ``indices``, in that order, made :data:`BLOCK` at a time; the pages of
        the tables kept on disk (the replay's consequences) that a block read are given back
        before the next: a report that reads every removal read all of them (the JSON report's
        rendering held ~130 MiB more of them at 52 M events)."""
        wanted = list(indices)
        for k in releasing(range(0, len(wanted), self.BLOCK), every=1):
            yield from self._block(wanted[k:k + self.BLOCK])

    def _block(self, indices: list[int]) -> list[Removal]:
        assert self._table is not None and self._pages is not None and self._sptes is not None  # the sequence has rows
        rows = self._table.take(pa.array(indices, pa.int64())).to_pylist()
        afters = [self._later.of(row["seq"]) if self._later is not None else None for row in rows]
        afters = [a if a is not None and a.num_rows else None for a in afters]
        cited = [sorted({s for ev in a.column("evidence").to_pylist() for s in ev}) if a is not None else []
                 for a in afters]
        every = {s for c in cited for s in c}
        lines = self._lines_of(every) if self._lines_of is not None and every else {}
        return [Removal(row, self._pages.of(row["change"]).drop(["change"]),
                        self._sptes.of(row["change"]).drop(["change"]), a,
                        tuple((s, lines[s]) for s in c if s in lines))
                for row, a, c in zip(rows, afters, cited)]


class _Parts:
    """A table's rows grouped by one integer column, each group a zero-copy slice.

    The table keeps its chunks: the replay's consequences come in pieces (on disk when long),
    and joining them was a copy of the whole table (~250 bytes a reinstall) in the process."""

    def __init__(self, table: pa.Table, key: str):
        keys = table.column(key).to_numpy()
        order = np.argsort(keys, kind="stable")
        if len(order) and not np.all(order[1:] > order[:-1]):
            table, keys = table.take(pa.array(order)), keys[order]
        self._table, self._keys = table, keys

    def of(self, value: int) -> pa.Table:
        # the value in the keys' own type (they come from one column type): numpy searches a
        # narrower array for a Python int by converting the whole array first, a copy of every
        # row per removal (quadratic: 0.5 s at 5 000 removals, 3 s at 12 500)
        key = self._keys.dtype.type(value)
        lo = int(np.searchsorted(self._keys, key, side="left"))
        return self._table.slice(lo, int(np.searchsorted(self._keys, key, side="right")) - lo)


