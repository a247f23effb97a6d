"""The Python face: ``kvmtrace.open(path)`` and the :class:`Trace` object.

A ``Trace`` wraps the reader's :class:`kvmtrace.parsers.schema.TraceData` and presents it the way a
notebook user wants it: polars DataFrames (pandas through ``to_pandas``), the raw Arrow tables
when exactness matters, and Parquet export. ``Trace.analyze()`` replays it and returns a
:class:`kvmtrace.Analysis`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import polars as pl
import pyarrow as pa

from kvmtrace.analysis import Analysis, analyze, convert_table
from kvmtrace.dataset import write_dataset
from kvmtrace.parsers import read as read_trace
from kvmtrace.parsers.errors import TraceError
from kvmtrace.parsers.output import atomic_dir, refuse_inputs
from kvmtrace.parsers.schema import TraceData, TraceInfo
from kvmtrace.replays.digest import Digest, DigestBuilder
from kvmtrace.replays.needs import LOG_EVENTS, decodes, decodes_with_log, keeps, keeps_with_log
from kvmtrace.replays.threads import entry_pairs, vcpu_threads
from kvmtrace.report import trace_html

if TYPE_CHECKING:
    import pandas as pd


class Trace:
    """One buffer instance of one recording, decoded (``digest``: what a read for analysis
    gathered of the events whose rows it left out; see :func:`open`)."""

    def __init__(self, data: TraceData, path: str, digest: Digest | None = None):
        self._data = data
        self.path = path
        self._digest = digest

    @property
    def data(self) -> TraceData:
        """The reader's output (Arrow tables and metadata), for the replay and for exact work."""
        return self._data

    @property
    def digest(self) -> Digest | None:
        """What a read for analysis (``open(..., keep="analysis")``) gathered of the events whose
        rows it left out, for :func:`kvmtrace.replays.replay`; None after a full read."""
        return self._digest

    @property
    def info(self) -> TraceInfo:
        return self._data.info

    @property
    def event_names(self) -> list[str]:
        """Events that occur in the trace. Every other event of their systems still has an empty
        table under its name (``table("kvm_exit")`` works on a trace where it never fired)."""
        return sorted(name for name, t in self._data.tables.items() if t.num_rows or name in self._data.left_out)

    @property
    def events(self) -> pl.DataFrame:
        """Every event in global ``seq`` order: common columns plus ``event`` and ``system``."""
        return convert_table(self._data.events, "polars")

    def arrow(self, name: str) -> pa.Table:
        """The Arrow table of one event (exact types, schema metadata with the print fmt)."""
        return self._data.table(name)

    def table(self, name: str) -> pl.DataFrame:
        """One event's rows as a polars DataFrame."""
        return convert_table(self._data.table(name), "polars")

    @property
    def gaps(self) -> pl.DataFrame:
        """Lost-event windows, one row per CPU page that reported dropped events."""
        return convert_table(self._data.gaps, "polars")

    def instance(self, name: str) -> Trace:
        """Another buffer instance of the same file (trace-cmd ``-B NAME``)."""
        try:
            return Trace(self._data.instances[name], self.path)
        except KeyError:
            raise KeyError(f"no buffer instance {name!r}; this file has {sorted(self._data.instances)}") from None

    def analyze(
        self,
        *,
        kernel: str | None = None,
        qemu_log: str | os.PathLike[str] | Sequence[str] | None = None,
        memslots: str | os.PathLike[str] | dict[str, Any] | None = None,
        since: float | None = None,
        until: float | None = None,
        cpus: int | Iterable[int] | None = None,
        zap_rule: str | None = None,
    ) -> Analysis:
        """Replay this trace against the simulated KVM MMU: everything ``kvmtrace analyze`` does.

        - ``kernel``: the kernel release to assume (default: the trace's own, e.g. ``"6.12"``).
        - ``qemu_log``: QEMU's ``-trace`` log with ``kvm_set_user_memory`` lines (a file, or its
          lines): the memslot history when the trace has no markers for it.
        - ``memslots``: the starting memslot layout (a JSON file, or ``{"slots": [...]}``); the
          trace's own memslot changes still apply after it.
        - ``since``, ``until`` (seconds, as the reports print timestamps) and ``cpus``: what to
          *report*. The replay always runs over the whole trace.
        - ``zap_rule``: the per-slot zap rule to assume, by name (see ``kvmtrace.replays``).
        """
        if qemu_log is not None and any(name in self._data.left_out or f"kvm:{name}" in self._data.left_out
                                        for name in LOG_EVENTS):
            raise TraceError("a QEMU log's lines are placed by when vCPU threads leave KVM_RUN, and this trace was "
                             "opened for an analysis without a QEMU log",
                             hint="open it with kvmtrace.open(path, keep=\"analysis+log\")")
        return analyze(self, kernel=kernel, qemu_log=qemu_log, memslots=memslots, since=since, until=until,
                       cpus=cpus, zap_rule=zap_rule, digest=self._digest)

    def to_pandas(self, name: str | None = None) -> pd.DataFrame:
        """One event's rows (or, without ``name``, the ``events`` table) as a pandas DataFrame.

        Converted through Arrow with Arrow-backed dtypes: no copy where the types allow, and a
        u64 SPTE stays a u64 (numpy-backed pandas would make it a float when nulls appear).
        """
        return convert_table(self._data.events if name is None else self._data.table(name), "pandas")

    def to_parquet(self, outdir: str | os.PathLike[str], *, force: bool = False) -> list[Path]:
        """Write the trace into ``outdir`` as ``kvmtrace convert`` does (layout:
        :mod:`kvmtrace.dataset`); return the files written.

        The dataset is built in a temporary folder beside ``outdir`` and renamed into place at
        the end, so an error half-way leaves ``outdir`` as it was. A folder that is not empty is
        refused unless ``force``, which replaces the whole dataset (two traces never mix).
        """
        if self._data.left_out:
            raise TraceError(f"{self.path} was opened for analysis only: {len(self._data.left_out)} event(s) were "
                             "not kept, so a dataset would miss them", hint="open it with kvmtrace.open(path)")
        out = Path(outdir)
        refuse_inputs(out, [self.path], param="outdir")
        with atomic_dir(out, force=force) as tmp:
            write_dataset([self._data], tmp)
            written = sorted(p.relative_to(tmp) for p in tmp.rglob("*.parquet"))
        return [out / p for p in written]

    def _repr_html_(self) -> str:
        """Jupyter's view of a trace: its facts and event counts (rendered by kvmtrace.report)."""
        pairs = (self._digest.entry_pairs if self._digest is not None
                 else entry_pairs(self._data.tables.get("kvm_entry")))  # a full read holds the rows
        return trace_html(self._data, self.path, vcpu_threads(self._data, pairs))

    def __repr__(self) -> str:
        i = self.info
        return f"<Trace {self.path!r} {i.source} v{i.version} kernel={i.kernel} events={i.total_events}>"


def open(path: str | os.PathLike[str], *, instance: str | None = None, strict: bool = False,
         keep: Literal["all", "analysis", "analysis+log"] = "all") -> Trace:
    """Open a trace.dat or ftrace text file (format decided by content).

    ``keep="analysis"`` reads for :meth:`Trace.analyze` only: a trace.dat is decoded in windows,
    the rows of the events the replay and its report read are kept (:mod:`kvmtrace.replays.needs`)
    and the others are only digested (:mod:`kvmtrace.replays.digest`; the guest page-table
    walker's events are most of a shadow-paged trace). The analysis is the same as after a full
    read; the other events' tables are empty and ``table()`` refuses them, other buffer
    instances are not read, and what needs every event's rows (``to_parquet``) is refused.
    ``keep="analysis+log"`` also keeps the rows a QEMU log's placement reads
    (:data:`~kvmtrace.replays.needs.LOG_EVENTS`), for ``analyze(qemu_log=...)``. The kept tables
    and the ``events`` table (every row) lie in unlinked temporary files in ``TMPDIR`` (36 bytes
    an event, plus the kept rows), mapped back: the page cache holds them, not the process
    (:meth:`TraceData.release_pages`); a selection (``since``/``until``/``cpus``) and a QEMU log's
    placement read the ``events`` table a chunk at a time.
    """
    if keep == "all":
        return Trace(read_trace(path, instance=instance, strict=strict), os.fspath(path))
    if keep not in ("analysis", "analysis+log"):
        raise ValueError(f"keep={keep!r}: choose 'all', 'analysis' or 'analysis+log'")
    digest = DigestBuilder()
    log = keep == "analysis+log"
    data = read_trace(path, instance=instance, strict=strict, keep=keeps_with_log if log else keeps,
                      observe=digest.add, decode=decodes_with_log if log else decodes)
    return Trace(data, os.fspath(path), digest.finish())
