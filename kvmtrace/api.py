"""The Python face: ``kvmtrace.open(path)`` and the :class:`Trace` object.

A ``Trace`` wraps the reader's :class:`kvmtrace.parsers.schema.TraceData` and presents it the way a
notebook user wants it: polars DataFrames (``.to_pandas()`` is one call away), the raw Arrow
tables when exactness matters, and Parquet export.
"""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from kvmtrace import parsers
from kvmtrace import replays
from kvmtrace.parsers.schema import TraceData, TraceInfo
from kvmtrace.report.output import atomic_dir, refuse_inputs
from kvmtrace.replays.results import ReplayResult


class Trace:
    """One buffer instance of one recording, decoded."""

    def __init__(self, data: TraceData, path: str):
        self._data = data
        self.path = path

    @property
    def data(self) -> TraceData:
        """The reader's output (Arrow tables and metadata), for the replay and for exact work."""
        return self._data

    @property
    def info(self) -> TraceInfo:
        return self._data.info

    @property
    def event_names(self) -> list[str]:
        """Events that occur in the trace. Every other event of their systems still has an empty
        table under its name (``table("kvm_exit")`` works on a trace where it never fired)."""
        return sorted(name for name, t in self._data.tables.items() if t.num_rows)

    @property
    def events(self) -> pl.DataFrame:
        """Every event in global ``seq`` order: common columns plus ``event`` and ``system``."""
        return pl.from_arrow(self._data.events)

    def arrow(self, name: str) -> pa.Table:
        """The Arrow table of one event (exact types, schema metadata with the print fmt)."""
        return self._data.table(name)

    def table(self, name: str) -> pl.DataFrame:
        """One event's rows as a polars DataFrame."""
        return pl.from_arrow(self._data.table(name))

    @property
    def gaps(self) -> pl.DataFrame:
        """Lost-event windows, one row per CPU page that reported dropped events."""
        return pl.from_arrow(self._data.gaps)

    def instance(self, name: str) -> "Trace":
        """Another buffer instance of the same file (trace-cmd ``-B NAME``)."""
        try:
            return Trace(self._data.instances[name], self.path)
        except KeyError:
            raise KeyError(f"no buffer instance {name!r}; this file has {sorted(self._data.instances)}") from None

    def replay(self, *, kernel: str | None = None, memslots: dict | None = None,
               qemu_log_lines: list[str] | None = None) -> ReplayResult:
        """Replay this trace against the simulated MMU (see :func:`kvmtrace.replays.replay`)."""
        return replays.replay(self._data, kernel=kernel, memslots=memslots, qemu_log_lines=qemu_log_lines)

    def to_parquet(self, outdir: str | os.PathLike[str], *, force: bool = False) -> list[Path]:
        """Write ``<event>.parquet`` per event that occurs, plus ``events.parquet``, into ``outdir``.

        The dataset is built in a temporary folder beside ``outdir`` and renamed into place at
        the end, so an error half-way leaves ``outdir`` as it was. A folder that is not empty is
        refused unless ``force``, which replaces the whole dataset (two traces never mix).
        """
        out = Path(outdir)
        refuse_inputs(out, [self.path], param="outdir")
        with atomic_dir(out, force=force) as tmp:
            names = [f"{name.replace(':', '.')}.parquet" for name in self.event_names]
            for name, file in zip(self.event_names, names):
                pq.write_table(self._data.tables[name], tmp / file)
            pq.write_table(self._data.events, tmp / "events.parquet")
        return sorted(out / f for f in [*names, "events.parquet"])

    def _repr_html_(self) -> str:
        """Jupyter's view of a trace: its facts and event counts (rendered by kvmtrace.report)."""
        from kvmtrace.report import trace_html  # the report package imports this module

        return trace_html(self._data, self.path)

    def __repr__(self) -> str:
        i = self.info
        return f"<Trace {self.path!r} {i.source} v{i.version} kernel={i.kernel} events={i.total_events}>"


def open(path: str | os.PathLike[str], *, instance: str | None = None, strict: bool = False) -> Trace:  # noqa: A001
    """Open a trace.dat or ftrace text file (format decided by content)."""
    data = parsers.read(path, instance=instance, strict=strict)
    return Trace(data, os.fspath(path))
