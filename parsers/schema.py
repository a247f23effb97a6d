"""The event schema: the one place the readers, the replay and the reports agree on.

Every reader (binary trace.dat, tracefs text, ``trace-cmd report`` text) produces a
:class:`TraceData`: one Arrow table per event name whose first columns are :data:`COMMON_FIELDS`,
followed by the event's own fields under their format-file names; an ``events`` table with the
common columns and the event name in global order; a ``gaps`` table of lost-event windows; and a
:class:`TraceInfo` describing the recording.

Column names never collide. Some formats have a field named like a common column
(``sched:sched_wakeup`` has ``comm`` and ``pid``, ``sched_load_se`` has ``cpu``, ``comm`` and ``pid``);
Arrow allows duplicate names but polars, pandas and Parquet readers do not. The rule, applied by
every reader through :func:`field_columns`: the common columns (:data:`COMMON_NAMES`) keep their
names, and a format field that shares one gets a trailing underscore (``pid_``, ``comm_``,
``cpu_``), as Python does for keywords; should that name be another field of the same event,
underscores are added until it is free. Every other field keeps its format-file name. A renamed
column carries its format-file name in its field metadata (:data:`META_FIELD_NAME`), so nothing
is lost: ``trace-cmd report -R`` prints that field as ``pid=``.

Why Arrow with explicit schemas: downstream code (the replay, polars/pandas users in notebooks,
Parquet export) needs exact integer widths (an SPTE is a u64, a role word a u32) and must be able
to tell "not in this trace" (null, with a reason in the metadata) from "zero".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

#: Columns every per-event table and the ``events`` table start with, in this order.
#: ``seq`` is the global order over all CPUs (by timestamp, then CPU, stable within a CPU), the
#: key the replay walks and findings cite as evidence. ``ts`` is nanoseconds in the trace clock.
COMMON_FIELDS: tuple[pa.Field, ...] = (
    pa.field("seq", pa.int64(), nullable=False),
    pa.field("ts", pa.int64(), nullable=False),
    pa.field("cpu", pa.int16(), nullable=False),
    pa.field("pid", pa.int32(), nullable=False),
    # Dictionary-encoded: a trace has millions of rows but a handful of tasks; as plain strings
    # the comm columns were a fifth of a decoded trace's memory. Polars reads it as Categorical.
    pa.field("comm", pa.dictionary(pa.int32(), pa.string())),
)
COMMON_NAMES: tuple[str, ...] = tuple(f.name for f in COMMON_FIELDS)

#: Field-metadata key on a column that :func:`field_columns` renamed: the format-file name.
META_FIELD_NAME = b"kvmtrace.field"


def field_columns(names: Sequence[str]) -> list[str]:
    """Column names for an event's own fields (format-file names, in order): the rule above.

    ``["cpu", "path", "comm", "pid", "load"]`` → ``["cpu_", "path", "comm_", "pid_", "load"]``.
    A field is renamed only when it collides, so every other column keeps the name users know.
    """
    own = set(names)
    taken = set(COMMON_NAMES)
    out = []
    for name in names:
        column = name
        while column in taken or (column != name and column in own):
            column += "_"
        taken.add(column)
        out.append(column)
    return out

#: The ``events`` table: the common columns plus the event's name and system.
EVENTS_SCHEMA = pa.schema(
    [
        *COMMON_FIELDS,
        pa.field("event", pa.dictionary(pa.int32(), pa.string()), nullable=False),
        pa.field("system", pa.dictionary(pa.int32(), pa.string())),
    ]
)

#: The ``gaps`` table: one row per place a CPU's buffer dropped events. ``seq`` is the first
#: event seen on that CPU after the gap (or null if none followed); ``lost`` is the number of
#: events the kernel said were dropped, null when the kernel only flagged that some were.
GAPS_SCHEMA = pa.schema(
    [
        pa.field("cpu", pa.int16(), nullable=False),
        pa.field("ts", pa.int64()),
        pa.field("seq", pa.int64()),
        pa.field("lost", pa.int64()),
    ]
)

# Schema-metadata keys (bytes, as Arrow wants them) a reader may set on a per-event table.
META_SYSTEM = b"kvmtrace.system"  #: the event's system, e.g. b"kvmmmu"
META_EVENT_ID = b"kvmtrace.event_id"  #: the format file's ID (decimal)
META_PRINT_FMT = b"kvmtrace.print_fmt"  #: the format file's print fmt, verbatim
META_SOURCE = b"kvmtrace.source"  #: b"tracedat" or b"text"
#: Prefix for per-column notes: ``kvmtrace.null.<column>`` says why a column is (partly) null,
#: e.g. text output that hashes pointers. Readers never invent a value to fill such a column.
META_NULL_PREFIX = b"kvmtrace.null."


@dataclass(frozen=True)
class CpuStats:
    """One CPU's ring-buffer statistics at the end of the recording (trace.dat CPUSTAT option).

    The kernel's ``per_cpu/cpuN/stats``: ``entries`` still in the buffer (not in the file; trace-cmd
    says they should be zero), events ``overrun`` (overwritten), ``commit_overrun`` (lost to a
    nested writer wrapping the buffer), ``dropped_events`` (buffer full, non-overwrite mode) and
    ``read_events``. Timestamps are kept as the kernel printed them (``sec.usec`` for ns clocks,
    raw counts for others). ``None``: the kernel did not print that key.
    """

    cpu: int
    entries: int | None = None
    overrun: int | None = None
    commit_overrun: int | None = None
    bytes: int | None = None
    oldest_event_ts: str | None = None
    now_ts: str | None = None
    dropped_events: int | None = None
    read_events: int | None = None

    @property
    def lost(self) -> int:
        """Events this CPU's buffer discarded: overrun + commit overrun + dropped events."""
        return (self.overrun or 0) + (self.commit_overrun or 0) + (self.dropped_events or 0)


@dataclass(frozen=True)
class TraceInfo:
    """What a reader learnt about the recording, independent of the events themselves."""

    path: str
    source: str  # "tracedat" or "text"
    version: int | None = None  # trace.dat file version (6/7); None for text
    compression: str = "none"  # trace.dat section compression, or the text file's ("gzip", ...)
    cpus: int = 0
    clock: str | None = None
    kernel: str | None = None  # kernel release from the UNAME option, e.g. "6.18.0"
    uname: str | None = None  # the whole UNAME option
    tracer_version: str | None = None  # trace-cmd's VERSION option
    long_size: int | None = None  # kernel long size from header_page
    page_size: int | None = None
    big_endian: bool = False
    event_counts: Mapping[str, int] = field(default_factory=dict)
    #: cpu -> known dropped count: the pages' stored counts, or the CPU's stats (CpuStats.lost)
    #: where those count more (they then also cover the CPU's gaps of unknown size).
    lost_events: Mapping[int, int] = field(default_factory=dict)
    lost_unknown: Mapping[int, int] = field(default_factory=dict)  # cpu -> gaps of unknown size
    first_ts: int | None = None
    last_ts: int | None = None
    skipped_lines: int = 0  # text readers: lines that could not be recovered exactly
    instances: tuple[str, ...] = ()  # names of other buffer instances in the file
    warnings: tuple[str, ...] = ()
    cut_short: bool = False  # the file ended early and the reader kept what was complete (see warnings)
    cpu_stats: tuple[CpuStats, ...] = ()  # trace.dat CPUSTAT, by CPU; empty when not recorded

    @property
    def total_events(self) -> int:
        return sum(self.event_counts.values())


@dataclass
class TraceData:
    """Everything a reader produced for one buffer instance of one input."""

    info: TraceInfo
    events: pa.Table  # EVENTS_SCHEMA, ordered by seq
    tables: dict[str, pa.Table]  # event name -> COMMON_FIELDS + the event's fields, by seq
    gaps: pa.Table  # GAPS_SCHEMA
    instances: dict[str, TraceData] = field(default_factory=dict)  # other buffers, by name
    #: Text readers: (line number, reason) for every line skipped; empty for binary input.
    skipped: list[tuple[int, str]] = field(default_factory=list)
    #: Events that occur but whose rows this read left out (their tables are empty, ``info`` and
    #: the gaps still count them, ``events`` has no row of them): a read for one analysis
    #: (:func:`kvmtrace.parsers.tracedat.reader.read_kept`). Empty for a full read.
    left_out: frozenset[str] = frozenset()
    #: Reads the rows of given seqs of an ``events`` table kept on disk (the same read), for
    #: :meth:`events_at`; None: the table is in memory.
    spilled_rows: Callable[[np.ndarray, tuple[str, ...]], dict[str, np.ndarray]] | None = None
    #: Reads that table a chunk at a time, for :meth:`event_chunks`; None: the table is in memory.
    spilled_chunks: Callable[[], Iterator[pa.Table]] | None = None
    #: Gives back the pages of per-event tables kept on disk and mapped (a read for one analysis)
    #: that the process has read, for :meth:`release_pages`; None: the tables are in memory.
    spilled_pages: Callable[[], None] | None = None

    def release_pages(self) -> None:
        """Let the page cache, not the process, hold what was read of tables kept on disk.

        Why: a read for one analysis keeps its per-event tables on disk, mapped
        (:mod:`kvmtrace.parsers.spilled`); a pass over a column brings the column's pages into the
        process, where they stay until unmapped. A consumer that passes over a long trace's
        columns calls this between steps (the replay does), so that the process holds one
        step's pages at a time. The tables stay valid: a later read maps the pages back."""
        if self.spilled_pages is not None:
            self.spilled_pages()

    def event_chunks(self) -> Iterator[pa.Table]:
        """The ``events`` table in pieces, in seq order, for a pass over every row (a selection):
        where it is kept on disk, read a chunk at a time (see :meth:`events_at` for why)."""
        if self.spilled_chunks is None or not self.events.num_rows:
            yield self.events
        else:
            yield from self.spilled_chunks()

    def events_at(self, seqs: np.ndarray, columns: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Whether each of ``seqs`` is an event of this trace, and the ``events`` table's
        ``columns`` there (any value where it is not; a dictionary column's values, e.g. event
        names, as an object array).

        Why a method: where the table is kept on disk and mapped (a read for one analysis), a
        lookup of many rows through the map would bring the pages it touches into the process
        for good; reading them back with plain reads does not."""
        seqs = np.asarray(seqs, np.int64)
        n = self.events.num_rows
        if self.spilled_rows is not None:  # its seqs are its row numbers
            return (seqs >= 0) & (seqs < n), self.spilled_rows(np.clip(seqs, 0, max(n - 1, 0)), columns)
        if not n:
            return np.zeros(len(seqs), bool), {c: np.zeros(len(seqs), np.int64) for c in columns}
        ev_seq = self.events.column("seq").to_numpy()
        pos = np.clip(np.searchsorted(ev_seq, seqs), 0, n - 1)
        out = {}
        for c in columns:
            col = self.events.column(c)
            out[c] = col.take(pa.array(pos)).to_numpy(zero_copy_only=False) if pa.types.is_dictionary(col.type) \
                else col.to_numpy()[pos]
        return ev_seq[pos] == seqs, out

    def events_in(self, first: np.ndarray, last: np.ndarray) -> np.ndarray:
        """How many events each seq range ``[first, last]`` holds (see :meth:`events_at`)."""
        first, last = np.asarray(first, np.int64), np.asarray(last, np.int64)
        counts: np.ndarray
        if self.spilled_rows is not None:
            n = self.events.num_rows
            counts = np.maximum(np.clip(last + 1, 0, n) - np.clip(first, 0, n), 0)
            return counts
        ev_seq = self.events.column("seq").to_numpy()
        counts = np.searchsorted(ev_seq, last, side="right") - np.searchsorted(ev_seq, first)
        return counts

    def table(self, name: str) -> pa.Table:
        """The table of one event, by bare name (``kvm_mmu_set_spte``) or ``system:name``.

        A name two systems share is stored bare for the first and as ``system:name`` for the
        later one, so an exact key wins before the bare-name fallback.
        """
        if name in self.left_out or name.split(":", 1)[-1] in self.left_out:
            raise KeyError(f"{name!r} occurs in this trace but this read kept only the events an analysis reads; "
                           "read the file again with kvmtrace.open(path) for every event")
        if name in self.tables:
            return self.tables[name]
        bare = name.split(":", 1)[-1]
        try:
            return self.tables[bare]
        except KeyError:
            raise KeyError(f"no event {name!r} in this trace") from None

    def select(self, *, since: int | None = None, until: int | None = None, cpus: Iterable[int] | None = None,
               first_seq: int | None = None, last_seq: int | None = None) -> TraceData:
        """The events with ``since <= ts <= until`` (ns) on ``cpus`` within a ``seq`` window, every
        table and count cut alike (:mod:`kvmtrace.parsers.select`); seq numbers are kept."""
        from kvmtrace.parsers.select import Selection, select  # the one place that cuts a trace

        chosen = frozenset(cpus) if cpus is not None else None
        return select(self, Selection(since, until, chosen, first_seq, last_seq))
