"""What runs on a worker: one trace in, one :class:`Outcome` out, whatever happens.

Everything a worker returns is plain data (tuples of rows, rendered report texts), so it
pickles cheaply to the parent process or across a Dask cluster, and the parent never needs the
trace. Any failure of one trace (unreadable, damaged, a bug of ours) is caught here and becomes
an outcome with ``status="error"``: one bad trace must never end a batch of thousands.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import kvmtrace
from kvmtrace.batch.inputs import TraceInput
from kvmtrace.parsers.errors import TraceError
from kvmtrace.replays import replay
from kvmtrace.report import Report, build_report, render

#: Report formats a worker can render per trace (the per-trace files of ``kvmtrace batch``).
REPORT_FORMATS = ("json", "html")


@dataclass(frozen=True)
class TraceMeta:
    """What identifies a trace's setting in fleet tables: which kernel, host, MMU and policy."""

    kernel: str | None
    uname: str | None
    host: str | None
    mmu: str
    zap_policy: str
    profile: str


@dataclass(frozen=True)
class Outcome:
    """One trace's result: its rows for the fleet tables and its rendered reports."""

    trace: TraceInput
    status: str  # ok | error
    error: str | None
    duration_s: float
    warnings: tuple[str, ...]
    meta: TraceMeta | None = None
    events: int | None = None  # events in the trace
    replayed_events: int | None = None  # kvmmmu events the replay saw
    explained_share: float | None = None
    #: (id, severity, seq, ts, cpu, gfn, slot, message, evidence) per finding, in report order
    findings: tuple[tuple, ...] = ()
    #: (id, status, reason, findings) per check
    checks: tuple[tuple, ...] = ()
    #: the report's what-if totals per zap policy: column names and rows
    whatif_columns: tuple[str, ...] = ()
    whatif_rows: tuple[tuple, ...] = ()
    #: format -> rendered report text, for the formats asked for
    reports: dict[str, str] = field(default_factory=dict)


def analyse(path: str, kernel: str | None, with_plots: bool) -> Report:
    """The report of one trace, exactly as ``kvmtrace analyze`` builds it.

    The only place a batch touches the reader, the replay and the report model, so that
    switching to another entry point changes one function.
    """
    trace = kvmtrace.open(path, keep="analysis")
    result = replay(trace.data, kernel=kernel, digest=trace.digest)
    figures: tuple = ()
    if with_plots:
        from kvmtrace import plot  # matplotlib costs ~0.5 s to import; only HTML needs it

        figures = plot.report_figures(trace.data, result)
    return build_report(trace.data, result, path=path, version=kvmtrace.__version__, figures=figures)


def _host(uname: str | None) -> str | None:
    """The node name of a ``uname -a`` style UNAME option (``Linux HOST RELEASE ...``)."""
    parts = (uname or "").split()
    return parts[1] if len(parts) >= 2 else None


def _outcome(trace: TraceInput, report: Report, started: float, caught: tuple[str, ...],
             reports: dict[str, str]) -> Outcome:
    info = report.trace.info
    meta = TraceMeta(
        kernel=info.get("kernel"), uname=info.get("uname"), host=_host(info.get("uname")),
        mmu=report.replay.mmu, zap_policy=report.replay.zap_policy, profile=report.replay.profile,
    )
    return Outcome(
        trace=trace, status="ok", error=None, duration_s=time.perf_counter() - started, warnings=caught,
        meta=meta, events=report.trace.events, replayed_events=report.replay.events,
        explained_share=report.replay.explained_share,
        findings=tuple((f.id, f.severity, f.seq, f.ts, f.cpu, f.gfn, f.slot, f.message, list(f.evidence))
                       for f in report.findings),
        checks=tuple((c.id, c.status, c.reason, c.findings) for c in report.checks),
        whatif_columns=report.whatif_totals.columns, whatif_rows=tuple(report.whatif_totals.rows),
        reports=reports,
    )


def failed(trace: TraceInput, error: str, duration_s: float = 0.0, caught: tuple[str, ...] = ()) -> Outcome:
    """The outcome of a trace that could not be analysed."""
    return Outcome(trace=trace, status="error", error=error, duration_s=duration_s, warnings=caught)


def run_one(trace: TraceInput, kernel: str | None = None, formats: tuple[str, ...] = ()) -> Outcome:
    """Analyse one trace; never raises for anything the trace or the analysis does.

    Reader warnings (a cut-short file, skipped lines) are kept with the outcome instead of being
    printed by a worker process nobody watches.
    """
    started = time.perf_counter()
    error: str | None
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            report = analyse(trace.path, kernel, with_plots="html" in formats)
            texts = {fmt: render(report, fmt) for fmt in formats}
        except TraceError as err:
            error = str(err)
        except MemoryError:
            error = "out of memory while analysing this trace"
        except Exception as err:
            error = f"internal error: {type(err).__name__}: {err}"
        else:
            error = None
    caught = tuple(dict.fromkeys(str(w.message) for w in seen))
    if error is not None:
        return failed(trace, error, time.perf_counter() - started, caught)
    return _outcome(trace, report, started, caught, texts)
