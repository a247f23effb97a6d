"""``kvmtrace.Analysis``: one trace, its replay, and what of it is reported.

Everything the ``analyze`` and ``diff`` commands print is one call here, so a notebook gets the
same answers as the command line: ``kvmtrace.open(p).analyze(...)`` returns an :class:`Analysis`
with the findings and checks as DataFrames, every replay table, the report in any format, the
plots, and the comparison with another analysis.

Selection (``since``/``until``/``cpus``) chooses what is *reported*, never what is replayed: the
replay always runs over the whole trace, because a memslot delete, a shadow page or a zap
outside the window still decides what happens inside it (a windowed replay invented findings
that the whole trace does not have, and hid ones it does). Findings and the rows of the replay
tables are then kept by the position (``seq``) of their event; the report says which selection
was applied.

Nothing here knows the command line: the spinner, flag names and exit statuses are
:mod:`kvmtrace.cli`'s.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from kvmtrace.parsers.errors import TraceError
from kvmtrace.parsers.select import Selection, select
from kvmtrace.replays import replay as run_replay
from kvmtrace.replays.checks import Severity
from kvmtrace.replays.digest import Digest
from kvmtrace.replays.ledger import ZapLedger, zap_ledger
from kvmtrace.replays.results import ReplayResult
from kvmtrace.report import FORMATS, Report, build_diff, build_report, render_diff, render_parts, tables
from kvmtrace.report.blocks import report_blocks
from kvmtrace.report.html import render_html_fragment
from kvmtrace.selection import ReportedSelection, recount, reported, selection_of, seq_filter
from kvmtrace.traced import Traced
from kvmtrace.version import __version__

if TYPE_CHECKING:
    from matplotlib.figure import Figure as MplFigure


#: The replay's tables by name (``Analysis.table``); summaries are added under their own names.
REPLAY_TABLES: tuple[str, ...] = ("shadow_pages", "spte_changes", "memslots", "unexplained", "whatif")

#: The zap ledger's tables (:mod:`kvmtrace.replays.ledger`), linked by their ``change`` column.
LEDGER_TABLES: tuple[str, ...] = ("ledger", "ledger_pages", "ledger_sptes")

#: ``fail_on`` threshold -> the severities that meet it.
_AT_LEAST: dict[str, frozenset[str]] = {
    Severity.ERROR: frozenset({Severity.ERROR}),
    Severity.WARNING: frozenset({Severity.ERROR, Severity.WARNING}),
    Severity.INFO: frozenset(Severity),
}

PathLike = str | os.PathLike[str]


# ---- the side inputs: read here, handed to the replay as lines and objects ---------------------


def read_qemu_log(source: PathLike | Sequence[str]) -> list[str]:
    """A QEMU ``-trace`` log (``kvm_set_user_memory`` lines): a file, or its lines."""
    if not isinstance(source, (str, os.PathLike)):
        return list(source)
    try:
        return Path(source).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as err:
        raise TraceError(f"{os.fspath(source)}: {(err.strerror or str(err)).lower()}",
                         hint="give the QEMU -trace log as {qemu_log}") from None


def read_memslots(source: PathLike | dict[str, Any]) -> dict[str, Any]:
    """A memslot layout: a JSON file, or the object it holds."""
    if isinstance(source, dict):
        return source
    path = os.fspath(source)
    hint = 'give the JSON memslot layout ({"slots": [...]}) as {memslots}'
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise TraceError(f"{path}: {(err.strerror or str(err)).lower()}", hint=hint) from None
    except UnicodeDecodeError:
        raise TraceError(f"{path}: not a text file", hint=hint) from None
    except json.JSONDecodeError as err:
        raise TraceError(f"{path}: not JSON ({err.msg} at line {err.lineno})", hint=hint) from None


# ---- the analysis -----------------------------------------------------------------------------


class Analysis:
    """A trace replayed against the simulated KVM MMU, and what of it is reported.

    ``replay`` is the replay of the whole trace (the exact Arrow tables of
    :class:`kvmtrace.replays.results.ReplayResult`); ``findings``, ``checks``, ``table()``,
    ``report()`` and ``figures()`` show the selection, if one was given (``shown`` is the replay
    as the selection shows it).
    """

    def __init__(self, trace: Traced, replay: ReplayResult, selection: Selection | None = None) -> None:
        self.trace = trace
        self.path = Path(trace.path)
        self.replay = replay
        chosen = selection or Selection()
        self._shown_data = select(trace.data, chosen)
        #: what is reported (:class:`ReportedSelection`): the bounds given and the events they keep
        self.selection = reported(chosen, self._shown_data.events, trace.data.events)
        if not self.selection.everything and self.selection.events == 0:
            raise TraceError(f"the selection ({self.selection.text}) holds no event of this trace",
                             hint="widen {since}/{until} or pick another of {cpus}")
        self._cut = self._seq_cut()
        self._tables: dict[str, pa.Table] = {}
        self.shown = self._select_result()

    def _seq_cut(self) -> Callable[[pa.Table], pa.Table] | None:
        """The row filter of the selection for the replay's tables (None: everything)."""
        if self.selection.everything:
            return None
        seqs = self._shown_data.events["seq"].to_numpy()
        keep = np.zeros(int(pc.max(self.trace.data.events["seq"]).as_py()) + 1, dtype=bool)
        keep[seqs] = True
        first, last = int(seqs.min()), int(seqs.max())
        return lambda t: seq_filter(t, keep, first, last)

    def _select_result(self) -> ReplayResult:
        cut = self._cut
        if cut is None:
            return self.replay
        r = self.replay
        findings = cut(r.findings)
        return dataclasses.replace(
            r,
            findings=findings,
            checks=recount(r.checks, findings, r.findings),
            shadow_pages=cut(r.shadow_pages),
            spte_changes=cut(r.spte_changes),
            memslots=cut(r.memslots),
            unexplained=cut(r.unexplained),
            summaries={name: cut(t) for name, t in r.summaries.items()},
            whatif=None if r.whatif is None else cut(r.whatif),
        )

    # -- what a notebook looks at --------------------------------------------------------------

    @property
    def selection_text(self) -> str:
        """The selection in words, "" when the whole trace is reported."""
        return self.selection.text

    @property
    def findings(self) -> pl.DataFrame:
        """One row per finding in the selection: id, severity, seq, ts, cpu, gfn, slot, message,
        evidence (the seqs that prove it)."""
        return convert_table(self.shown.findings, "polars")

    @property
    def checks(self) -> pl.DataFrame:
        """One row per check: id, status (passed | failed | not_evaluated), reason, findings."""
        return convert_table(self.shown.checks, "polars")

    @property
    def table_names(self) -> list[str]:
        """What :meth:`table` accepts: the replay's object tables, the zap ledger's and the summaries."""
        names = [n for n in REPLAY_TABLES if getattr(self.replay, n) is not None]
        return names + list(LEDGER_TABLES) + sorted(self.replay.summaries)

    def table(self, name: str, *, backend: Literal["polars", "pandas", "arrow"] = "polars") -> Any:
        """A table of the replay (the selection's rows) by name, as ``table_names`` lists them.

        Where a notebook wants more than the replay keeps, the replay's columns come first and
        unchanged (``analysis.replay`` holds the bare tables) and joined columns follow
        (:mod:`kvmtrace.report.tables`):

        - ``spte_changes``: one row per SPTE change (seq, sptep, gfn, level, old/new SPTE, state,
          reason, page), plus ``ts``, ``pid``, ``vcpu``, ``slot_instance`` (``slot@created_seq``:
          ids are reused for different BARs) and, for the old and the new value, ``pfn`` and the
          W/A/D and NX (or EPT X) bits, null where the SPTE is not present.
        - ``memslots``: one row per memslot change; its update window runs from ``window_start``
          (the kernel's first sign of the change, ``anchor`` says which) to ``window_end`` (the QEMU
          line, or for a delete the re-create that follows it), with ``window_start_ts`` and
          ``window_end_ts``; ``removes`` marks deletes, moves and re-creates.
        - ``ledger``: the zap ledger, one row per positioned delete, move or re-create: slot
          instance, policy and rule, pages zapped and kept, leaf SPTEs removed, window cost.
          ``ledger_pages`` (each page zapped or kept, with its decoded role and the reason) and
          ``ledger_sptes`` (leaf SPTEs removed, traced or inferred, with the evidence) share its
          ``change`` column.
        - ``consequences``: per delete/move, a row per ``page_survived``, ``fault_after`` (each
          vCPU's first fault on the old range, and how KVM resolved it) and ``reinstall``, plus
          ``ts`` and ``vcpu``.
        - ``shadow_pages``, ``unexplained``, ``whatif`` and the summaries ``memslot`` and
          ``zap_all`` as the replay made them.

        ``backend="pandas"`` converts through Arrow (pyarrow-backed columns: no copy where the
        types allow, and a u64 SPTE stays a u64); ``"arrow"`` returns the Arrow table.
        """
        if name not in self.table_names:
            raise KeyError(f"no replay table {name!r}; this analysis has {self.table_names}")
        if name not in self._tables:
            whole = self._whole(name)
            self._tables[name] = whole if self._cut is None else self._cut(whole)
        return convert_table(self._tables[name], backend)

    @cached_property
    def _ledger(self) -> ZapLedger:
        return tables.ledger(self.trace.data, self.replay)

    def _whole(self, name: str) -> pa.Table:
        """Table ``name`` over the whole replay; joins need it whole (a slot created before the
        selection still names the rows inside it)."""
        data, r = self.trace.data, self.replay
        joined: dict[str, Callable[[], pa.Table]] = {
            "spte_changes": lambda: tables.spte_changes(data, r),
            "memslots": lambda: tables.memslot_windows(data, r),
            "consequences": lambda: tables.consequences(data, r),
            "ledger": lambda: self._ledger.removals,
            "ledger_pages": lambda: self._ledger.pages,
            "ledger_sptes": lambda: self._ledger.sptes,
        }
        if name in joined:
            return joined[name]()
        return getattr(r, name) if name in REPLAY_TABLES else r.summaries[name]

    def failed(self, at_least: str = Severity.ERROR) -> bool:
        """Whether a reported finding has severity ``at_least`` (error | warning | info) or worse."""
        if at_least not in _AT_LEAST:
            raise TraceError(f"unknown severity {at_least!r}", hint="choose error, warning or info")
        return bool(self.shown.findings.num_rows) and bool(
            pc.any(pc.is_in(self.shown.findings["severity"], value_set=pa.array(sorted(_AT_LEAST[at_least])))).as_py()
        )

    # -- reports -------------------------------------------------------------------------------

    def _limits(self) -> tuple[str, ...]:
        words = self.selection_text
        if not words:
            return ()
        n, total = self.selection.events, self.selection.total_events
        return ((f"reported: {words} ({n} of {total} events); the replay ran over the whole trace, "
                 "so objects and memslot changes outside the selection still count"),)

    @cached_property
    def model(self) -> Report:
        """The report model (no figures): what every format and :meth:`diff` are built from."""
        return self._model(with_figures=False)

    def _model(self, *, with_figures: bool) -> Report:
        figures: tuple = ()
        # without a selection the figures and the report read the same trace and replay: one ledger
        ledger = zap_ledger(self.trace.data, self.shown) if with_figures and self._cut is None else None
        if with_figures:
            from kvmtrace import plot  # matplotlib costs ~0.5 s to import; only HTML needs it

            figures = plot.report_figures(self._shown_data, self.shown, ledger)
        return build_report(self.trace.data, self.shown, path=self.trace.path, version=__version__,
                            filters=self._limits(), figures=figures, ledger=ledger,
                            selection=None if self.selection.everything else self.selection.as_dict())

    def report(self, fmt: str = "text", *, color: bool = False, figures: bool | None = None) -> str:
        """The report as ``text``, ``markdown``, ``html`` or ``json``. ``figures`` (default: for
        HTML only) embeds the plots; ``color`` applies to text (ANSI colours for a terminal)."""
        return "".join(self.report_parts(fmt, color=color, figures=figures))

    def report_parts(self, fmt: str = "text", *, color: bool = False, figures: bool | None = None) -> Iterator[str]:
        """:meth:`report`'s text in pieces, to write as they come: a long trace's JSON report
        (every table whole) is never held in memory at once."""
        if fmt not in FORMATS:
            raise TraceError(f"unknown report format {fmt!r}", hint=f"choose one of {', '.join(FORMATS)} as {{fmt}}")
        draw = fmt == "html" if figures is None else figures
        return render_parts(self._model(with_figures=True) if draw else self.model, fmt, color=color)

    def figures(self) -> tuple[MplFigure, ...]:
        """The plots of the selection: activity over time, per memslot, shadow pages alive."""
        from kvmtrace import plot

        return (plot.timeline(self._shown_data, self.shown), plot.memslots(self.shown),
                plot.sp_lifetimes(self.shown, self._shown_data))

    def diff(self, other: Analysis, fmt: str = "text", *, color: bool = False) -> str:
        """This analysis (A) against ``other`` (B): checks that changed, finding counts, activity
        and zap-cost deltas, in ``text``, ``markdown``, ``html`` or ``json``."""
        if fmt not in FORMATS:
            raise TraceError(f"unknown report format {fmt!r}", hint=f"choose one of {', '.join(FORMATS)} as {{fmt}}")
        return render_diff(build_diff(self.model, other.model), fmt, color=color)

    def _repr_html_(self) -> str:
        return render_html_fragment(report_blocks(self.model))

    def __repr__(self) -> str:
        counts = self.findings.group_by("severity").len().sort("severity").rows()
        found = ", ".join(f"{n} {sev}" for sev, n in counts) or "no findings"
        chosen = f" ({self.selection_text})" if self.selection_text else ""
        return f"<Analysis {self.trace.path!r} {self.replay.mmu} MMU: {found}{chosen}>"


def convert_table(table: pa.Table, backend: str) -> Any:
    """An Arrow table as polars, pandas (Arrow-backed dtypes) or itself."""
    if backend == "polars":
        return pl.DataFrame(table)  # from_arrow, typed as a DataFrame
    if backend == "pandas":
        import pandas as pd

        return table.to_pandas(types_mapper=pd.ArrowDtype)
    if backend == "arrow":
        return table
    raise ValueError(f"unknown backend {backend!r}; choose polars, pandas or arrow")


def analyze(
    trace: Traced,
    *,
    kernel: str | None = None,
    qemu_log: PathLike | Sequence[str] | None = None,
    memslots: PathLike | dict[str, Any] | None = None,
    since: float | None = None,
    until: float | None = None,
    cpus: int | Iterable[int] | None = None,
    zap_rule: str | None = None,
    digest: Digest | None = None,
) -> Analysis:
    """Replay ``trace`` and select what to report (see :meth:`kvmtrace.api.Trace.analyze`;
    ``digest``: what a read for analysis gathered of the events it left out)."""
    selection = selection_of(since, until, cpus)
    lines = read_qemu_log(qemu_log) if qemu_log is not None else None
    layout = read_memslots(memslots) if memslots is not None else None
    extra: dict[str, Any] = {} if zap_rule is None else {"zap_rule": zap_rule}
    result = run_replay(trace.data, kernel=kernel, memslots=layout, qemu_log_lines=lines, digest=digest, **extra)
    return Analysis(trace, result, selection)


__all__ = ["LEDGER_TABLES", "REPLAY_TABLES", "Analysis", "ReportedSelection", "analyze", "convert_table",
           "read_memslots", "read_qemu_log"]
