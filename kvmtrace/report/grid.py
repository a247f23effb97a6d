"""A titled table of plain Python values: the one shape every renderer knows how to draw.

The replay hands us Arrow tables whose columns we do not want to hard-code in four renderers
(per-memslot summaries, the what-if comparison, the memslot timeline). Converting each of them
once into a :class:`Grid` lets text, Markdown and HTML share one table routine each, and JSON
emit the same rows as objects.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import pyarrow as pa


@dataclass(frozen=True)
class Grid:
    """Rows of cells under named columns; ``note`` says what the rows are or why there are none."""

    title: str
    columns: tuple[str, ...]
    rows: Sequence[tuple[Any, ...]] = ()
    note: str = ""
    #: rows the human formats print (None: all); the JSON report always has every row
    shown: int | None = None
    #: columns the human formats print (empty: all); the JSON report always has every column
    brief: tuple[str, ...] = ()
    #: columns holding nanosecond timestamps, shown to people as seconds like trace-cmd does
    seconds: frozenset[str] = frozenset()
    #: columns holding addresses, gfns or SPTE values, shown to people in hex
    hexadecimal: frozenset[str] = frozenset()

    def records(self) -> list[dict[str, Any]]:
        """The rows as column->value dicts (the JSON form: exact integers, no formatting)."""
        return [dict(zip(self.columns, row)) for row in self.rows]

    @property
    def hidden(self) -> int:
        """Rows the human formats leave out (they say so; JSON has them)."""
        return 0 if self.shown is None else max(0, len(self.rows) - self.shown)

    @property
    def text_columns(self) -> tuple[str, ...]:
        """The columns a person reads: :attr:`brief` if set, else all."""
        return self.brief or self.columns

    def text_rows(self) -> list[list[str]]:
        """The rows a person reads (text, Markdown and HTML), as strings: the first
        :attr:`shown` of them, in :attr:`text_columns`."""
        idx = [self.columns.index(c) for c in self.brief] if self.brief else range(len(self.columns))
        conv = [
            seconds_text if c in self.seconds else _hex if c in self.hexadecimal else cell_text
            for c in self.text_columns
        ]
        return [[f(row[i]) for f, i in zip(conv, idx)] for row in self.rows[: self.shown]]

    def __len__(self) -> int:
        return len(self.rows)


#: Unsigned columns whose names contain one of these hold addresses or bit patterns (gfns, SPTE
#: values, role words, flags): people read those in hex, as the kernel prints them.
HEX_HINTS = ("gfn", "spte", "addr", "key", "role", "flags", "pfn", "hva", "gpa")


def grid_from_arrow(
    title: str,
    table: pa.Table | None,
    *,
    columns: Sequence[str] | None = None,
    limit: int | None = None,
    note: str = "",
    brief: Sequence[str] = (),
) -> Grid:
    """A :class:`Grid` from an Arrow table, keeping ``columns`` that exist (all if None); the
    human formats print the first ``limit`` rows, the JSON report every row."""
    if table is None:
        return Grid(title, (), note=note or "not produced by this replay")
    have = table.column_names  # a property that builds the list on every read
    names = [c for c in (columns or have) if c in have]
    picked = table.select(names)
    rows: Sequence[tuple[Any, ...]] = ArrowRows(picked) if names else ()
    types = {n: picked.schema.field(n).type for n in names}
    seconds = frozenset(n for n, t in types.items() if pa.types.is_int64(t) and (n == "ts" or n.endswith("_ts")))
    hexadecimal = frozenset(
        n for n, t in types.items() if pa.types.is_unsigned_integer(t) and any(h in n for h in HEX_HINTS)
    )
    return Grid(title, tuple(names), rows, note=note, shown=limit, seconds=seconds, hexadecimal=hexadecimal,
                brief=tuple(c for c in brief if c in names))


class ArrowRows(Sequence[tuple[Any, ...]]):
    """The rows of an Arrow table as tuples of Python values, made as they are read, a batch at
    a time; a slice is a tuple of rows, as a tuple's slice is.

    Why: a grid held every row of its table as Python objects from the report model to the end
    of the rendering (~25 MiB in 380 000 objects at 52 M events of a memslot-dense recording,
    most of them the memslot timeline's and the what-if's), though the human formats show the
    first rows and the JSON report writes them one after another."""

    #: Rows made Python values at once while iterating.
    BATCH = 4096

    def __init__(self, table: pa.Table) -> None:
        self._table = table

    def __len__(self) -> int:
        return self._table.num_rows

    @overload
    def __getitem__(self, i: int) -> tuple[Any, ...]: ...

    @overload
    def __getitem__(self, i: slice) -> tuple[tuple[Any, ...], ...]: ...

    def __getitem__(self, i: int | slice) -> tuple[Any, ...] | tuple[tuple[Any, ...], ...]:
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                return tuple(self)[i]
            return _python_rows(self._table.slice(start, max(0, stop - start)))
        at = i + len(self) if i < 0 else i
        if not 0 <= at < len(self):
            raise IndexError(i)
        return _python_rows(self._table.slice(at, 1))[0]

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        for lo in range(0, len(self), self.BATCH):
            yield from _python_rows(self._table.slice(lo, self.BATCH))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and len(self) == len(other) and tuple(self) == tuple(other)


def _python_rows(table: pa.Table) -> tuple[tuple[Any, ...], ...]:
    return tuple(zip(*(column.to_pylist() for column in table.columns)))


def cell_text(value: Any) -> str:
    """How a cell reads in text, Markdown and HTML: floats shortened, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ",".join(cell_text(v) for v in value)
    return str(value)


def seconds_text(ns: int | None) -> str:
    """Nanoseconds as seconds the way ``trace-cmd report`` and the kernel's trace file print
    them: rounded to the nearest microsecond, so a user can grep their copy for the time."""
    if ns is None:
        return "-"
    us = (ns + 500) // 1000
    return f"{us // 10**6}.{us % 10**6:06d}"


def _hex(value: Any) -> str:
    return "-" if value is None else hex(value)
