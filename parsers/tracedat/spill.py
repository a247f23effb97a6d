"""The ``events`` table of a read that keeps only some events' rows, held on disk and mapped back.

Why: an analysis looks up arbitrary seqs (the event just after a memslot line, where a change's
window may start; the events a finding cites) and needs their time, CPU, pid and name, so the
``events`` table must have every row; but at 34 bytes an event it is 1.9 GB of a 56 M-event
trace. :class:`SpilledEvents` writes each window's record columns to anonymous temporary files
(unlinked from the start: nothing is left behind, whatever happens) and at the end builds the
table over read-only memory maps of them. A lookup then brings in the few pages it touches; the
page cache, not the process, holds the rest, and gives it back under pressure.

The table equals the one :func:`kvmtrace.parsers.tracedat.tables.events_table` builds in memory
(same dictionaries, same codes: ``tests/test_read_kept.py``). The dictionary codes are computed
in a second pass over the mapped columns, a chunk at a time.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterator
from typing import IO

import numpy as np
import pyarrow as pa

from kvmtrace.parsers.schema import EVENTS_SCHEMA
from kvmtrace.parsers.spilled import no_room, temporary_file
from kvmtrace.parsers.tracedat.arrow import numeric
from kvmtrace.parsers.tracedat.catalog import FormatCatalog
from kvmtrace.parsers.tracedat.metadata import comm_names
from kvmtrace.parsers.tracedat.tables import event_dictionaries

#: Rows per chunk of the code pass (8 MB of int64): small next to a window.
CHUNK = 1 << 20
_COLUMNS: dict[str, type[np.generic]] = {
    "seq": np.int64, "ts": np.int64, "cpu": np.int16, "pid": np.int32, "event_id": np.uint16}
#: The dictionary columns' codes, written by the code pass.
_CODES = ("event", "system", "comm")
#: Values below this are looked up in tables indexed by value (a pid is below 2^22).
_NARROW = 1 << 24
_DTYPES: dict[str, type[np.generic]] = {**_COLUMNS, **{name: np.int32 for name in _CODES}}
#: The spilled columns the ``events`` table is made of.
_TABLE_COLUMNS = ("seq", "ts", "cpu", "pid", *_CODES)
#: What the files hold, for the error when they cannot be written.
_WHAT = "the events index of this trace (36 bytes an event)"


class SpilledEvents:
    """The record columns of a read's windows, appended to temporary files (:meth:`add`), and the
    ``events`` table over them (:meth:`table`)."""

    def __init__(self) -> None:
        self.rows = 0
        self._files: dict[str, IO[bytes]] = {}
        self._dictionaries: dict[str, pa.Array] = {}  # the dictionary columns', once built
        self._no_system: np.ndarray | None = None  # by event id: no format file, so no system (null)
        # The files close with this object (the maps hold their own descriptors): never left to
        # the garbage collector, which would warn about them wherever it runs.
        weakref.finalize(self, _close, self._files)

    def add(self, first_seq: int, ts: np.ndarray, cpu: np.ndarray, pid: np.ndarray, event_id: np.ndarray) -> None:
        n = len(ts)
        seq = np.arange(first_seq, first_seq + n, dtype=np.int64)
        for name, values in zip(_COLUMNS, (seq, ts, cpu, pid, event_id)):
            self._write(name, values.astype(_COLUMNS[name], copy=False))
        self.rows += n

    def table(self, catalog: FormatCatalog, cmdlines: dict[int, str]) -> pa.Table:
        """The ``events`` table over the mapped columns (its dictionary columns' codes mapped too).

        The code pass reads the spilled columns back with plain reads, not through the maps: a
        page touched through a map stays in the process's resident set until it is unmapped."""
        ids = _distinct(self._chunks("event_id"))
        names, system_names, sys_index = event_dictionaries(ids, catalog)
        code_of = np.zeros(1 << 16, np.int32)
        code_of[ids] = np.arange(len(ids), dtype=np.int32)
        sys_of = sys_index[code_of]
        unknown = sys_of < 0
        mask = None
        for c in self._chunks("event_id"):
            self._write("event", code_of[c])
            self._write("system", np.maximum(sys_of, 0)[c])
        if unknown[ids].any():  # rows of ids without a format file have no system
            self._no_system = unknown
            mask = np.concatenate([unknown[c] for c in self._chunks("event_id")])
        pids = _distinct(self._chunks("pid"))
        comm_of = _codes_of(pids)
        for c in self._chunks("pid"):
            self._write("comm", comm_of(c))
        self._dictionaries = {"event": names, "system": system_names, "comm": comm_names(pids, cmdlines)}
        return self._assemble({name: self._map(name, _DTYPES[name]) for name in _TABLE_COLUMNS}, mask)

    def chunks(self) -> Iterator[pa.Table]:
        """The ``events`` table (once :meth:`table` built it) :data:`CHUNK` rows at a time, read
        with plain reads: a pass over every row (a selection by time or CPU) through the maps
        would bring all their pages into the process."""
        for i in range(0, self.rows, CHUNK):
            n = min(CHUNK, self.rows - i)
            columns = {name: self._read(name, i, n) for name in _TABLE_COLUMNS}
            no_system = self._no_system[self._read("event_id", i, n)] if self._no_system is not None else None
            yield self._assemble(columns, no_system)

    def _assemble(self, columns: dict[str, np.ndarray], no_system: np.ndarray | None) -> pa.Table:
        """The ``events`` table over these columns (all of them, or a chunk's)."""
        d = self._dictionaries
        # safe=False: the codes were made from these dictionaries, and checking them would read
        # every page of the maps into the process
        return pa.Table.from_arrays(
            [numeric(columns["seq"]), numeric(columns["ts"]), numeric(columns["cpu"]), numeric(columns["pid"]),
             pa.DictionaryArray.from_arrays(numeric(columns["comm"]), d["comm"], safe=False),
             pa.DictionaryArray.from_arrays(numeric(columns["event"]), d["event"], safe=False),
             pa.DictionaryArray.from_arrays(numeric(columns["system"], mask=no_system), d["system"], safe=False)],
            schema=EVENTS_SCHEMA,
        )

    def rows_at(self, positions: np.ndarray, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
        """The values of ``columns`` (spilled record columns) at row ``positions``, read back
        with plain reads of only the chunks that hold them (see :meth:`TraceData.events_at`)."""
        order = np.argsort(positions, kind="stable")
        at = positions[order]
        bounds = np.searchsorted(at, np.arange(0, self.rows + CHUNK, CHUNK))
        out = {}
        for name in columns:
            values = np.zeros(len(positions), _DTYPES[name])
            for k, chunk in enumerate(self._chunks(name, wanted=bounds[1:] > bounds[:-1])):
                lo, hi = bounds[k], bounds[k + 1]
                if hi > lo:
                    values[order[lo:hi]] = chunk[at[lo:hi] - k * CHUNK]
            dictionary = self._dictionaries.get(name)
            out[name] = values if dictionary is None else \
                dictionary.take(pa.array(values)).to_numpy(zero_copy_only=False)
        return out

    def _chunks(self, name: str, wanted: np.ndarray | None = None) -> Iterator[np.ndarray]:
        """A spilled column, :data:`CHUNK` rows at a time, by plain reads from its start (only the
        chunks ``wanted`` marks, where given; the others come empty)."""
        if name not in self._files:
            return
        dtype = np.dtype(_DTYPES[name])
        for k, i in enumerate(range(0, self.rows, CHUNK)):
            if wanted is not None and not wanted[k]:
                yield np.empty(0, dtype)  # no row of this chunk is asked for: not read
                continue
            yield self._read(name, i, min(CHUNK, self.rows - i))

    def _read(self, name: str, first: int, n: int) -> np.ndarray:
        """Rows ``first`` to ``first + n`` of a spilled column, by a plain read."""
        f = self._files[name]
        f.flush()
        dtype = np.dtype(_DTYPES[name])
        return np.frombuffer(os.pread(f.fileno(), n * dtype.itemsize, first * dtype.itemsize), dtype)

    def _write(self, name: str, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values)
        f = self._files.get(name)
        if f is None:
            f = self._files[name] = temporary_file("kvmtrace-events-", _WHAT)
        try:
            f.write(values.view(np.uint8).data)
        except OSError as err:
            raise no_room(_WHAT, err) from None

    def _map(self, name: str, dtype: type[np.generic]) -> np.ndarray:
        f = self._files.get(name)
        if f is None or not self.rows:
            return np.empty(0, dtype)
        f.flush()
        mapped: np.ndarray = np.memmap(f, dtype=np.dtype(dtype), mode="r", shape=(self.rows,))
        return mapped


def _distinct(chunks: Iterator[np.ndarray]) -> list[int]:
    """The distinct values of a column read in chunks, ascending: marked in a presence table
    where they are small non-negative integers (event ids, pids), else by a sort."""
    seen = np.zeros(0, bool)
    wide: set[int] = set()
    for c in chunks:
        if not len(c):
            continue
        if int(c.min()) >= 0 and int(c.max()) < _NARROW:
            if int(c.max()) >= len(seen):
                seen = np.concatenate([seen, np.zeros(int(c.max()) + 1 - len(seen), bool)])
            seen[c] = True
        else:
            wide.update(np.unique(c).tolist())
    return sorted(wide.union(np.flatnonzero(seen).tolist()))


def _close(files: dict[str, IO[bytes]]) -> None:
    for f in files.values():
        f.close()


def _codes_of(values: list[int]) -> Callable[[np.ndarray], np.ndarray]:
    """The int32 code of each row's value in ``values`` (ascending): a table lookup where their
    range is narrow (pids), a search otherwise."""
    if values and 0 <= values[0] and values[-1] < _NARROW:
        table = np.zeros(values[-1] + 1, np.int32)
        table[values] = np.arange(len(values), dtype=np.int32)
        return lambda rows: table[rows]
    uniques = np.array(values, np.int64)
    return lambda rows: np.searchsorted(uniques, rows).astype(np.int32)
