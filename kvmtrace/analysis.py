"""Parse, select, replay, build the report model: what ``analyze``, ``diff`` and notebooks share.

The user-supplied side files (``--qemu-log``, ``--memslots``) are read here, in the kvmtrace
layer, and handed to the replay as lines and objects: ``kvmtrace.replays`` never opens a file. Nothing
here knows the command line, so importing it never imports the CLI.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

import kvmtrace
from kvmtrace.commands.common import Steps
from kvmtrace.report import Report, build_report
from kvmtrace.parsers.errors import TraceError
from kvmtrace.parsers.schema import TraceData
from kvmtrace.replays.replay import replay
from kvmtrace.replays.results import ReplayResult

#: --fail-on threshold -> severities that meet it
FAIL_ON: dict[str, tuple[str, ...]] = {"error": ("error",), "warning": ("error", "warning")}


def read_qemu_log(path: Path) -> list[str]:
    """A QEMU ``-trace`` log (``kvm_set_user_memory`` lines) as lines for the replay."""
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as err:
        raise TraceError(f"--qemu-log {path}: {err.strerror.lower()}") from None


def read_memslots(path: Path) -> Any:
    """A memslot layout file (JSON) as objects for the replay."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise TraceError(f"--memslots {path}: {err.strerror.lower()}") from None
    except UnicodeDecodeError:
        raise TraceError(f"--memslots {path}: not a text file; give the JSON memslot layout") from None
    except json.JSONDecodeError as err:
        raise TraceError(f"--memslots {path}: not JSON ({err.msg} at line {err.lineno}); give the JSON memslot layout") from None


def _keep(table: pa.Table, since: int | None, until: int | None, cpu: int | None) -> pa.Table:
    mask = None
    for cond in (
        pc.greater_equal(table["ts"], since) if since is not None else None,
        pc.less_equal(table["ts"], until) if until is not None else None,
        pc.equal(table["cpu"], cpu) if cpu is not None else None,
    ):
        if cond is not None:
            mask = cond if mask is None else pc.and_(mask, cond)
    return table if mask is None else table.filter(mask)


def select_events(data: TraceData, since: int | None, until: int | None, cpu: int | None) -> TraceData:
    """The events with ``since <= ts <= until`` (ns) on ``cpu``; seq numbers are kept as they
    were so evidence still points into the original file."""
    if since is None and until is None and cpu is None:
        return data
    tables = {n: _keep(t, since, until, cpu) for n, t in data.tables.items()}
    tables = {n: t for n, t in tables.items() if t.num_rows}
    events = _keep(data.events, since, until, cpu)
    gaps = data.gaps
    if cpu is not None:
        gaps = gaps.filter(pc.equal(gaps["cpu"], cpu))
    ts = events["ts"]
    info = dataclasses.replace(
        data.info,
        event_counts={n: t.num_rows for n, t in tables.items()},
        first_ts=pc.min(ts).as_py() if len(ts) else None,
        last_ts=pc.max(ts).as_py() if len(ts) else None,
        lost_events={c: n for c, n in data.info.lost_events.items() if cpu is None or c == cpu},
        lost_unknown={c: n for c, n in data.info.lost_unknown.items() if cpu is None or c == cpu},
    )
    return dataclasses.replace(data, info=info, events=events, tables=tables, gaps=gaps)


def selection_text(since: float | None, until: float | None, cpu: int | None) -> str:
    """The event selection in words ("" when everything is kept)."""
    parts = []
    if since is not None or until is not None:
        lo = f"{since:.6f}" if since is not None else "start"
        hi = f"{until:.6f}" if until is not None else "end"
        parts.append(f"only events from {lo} to {hi} s")
    if cpu is not None:
        parts.append(f"only events on CPU {cpu}")
    return " and ".join(parts)


def filter_notes(since: float | None, until: float | None, cpu: int | None) -> tuple[str, ...]:
    """The report's words for an event selection: it changes what the replay can explain."""
    selected = selection_text(since, until, cpu)
    if not selected:
        return ()
    return (
        f"the replay saw {selected}: objects created outside the selection look like "
        "they predate the trace, and zaps outside it are missing, so findings and explained "
        "share differ from an unfiltered run",
    )


def _seconds_to_ns(value: float | None) -> int | None:
    return None if value is None else int(round(value * 1e9))


@dataclasses.dataclass
class Analysis:
    """A trace (after any event selection) and its replay: what every report is built from."""

    path: Path
    data: TraceData
    replay: ReplayResult
    filters: tuple[str, ...]


def replay_trace(
    path: Path,
    *,
    qemu_log: Path | None = None,
    memslots: Path | None = None,
    kernel: str | None = None,
    since: float | None = None,
    until: float | None = None,
    cpu: int | None = None,
    steps: Steps | None = None,
) -> Analysis:
    """Read the side files and the trace, select events, replay."""
    steps = steps or Steps()
    if since is not None and until is not None and since > until:
        raise TraceError(f"--since {since} is after --until {until}; swap them")
    qemu_lines = read_qemu_log(qemu_log) if qemu_log else None
    layout = read_memslots(memslots) if memslots else None
    with steps.step(f"reading {path}"):
        trace = kvmtrace.open(path)
    data = select_events(trace.data, _seconds_to_ns(since), _seconds_to_ns(until), cpu)
    with steps.step("replaying the MMU"):
        try:
            result = replay(data, kernel=kernel, memslots=layout, qemu_log_lines=qemu_lines)
        except TraceError as err:
            selected = selection_text(since, until, cpu)
            if not selected:
                raise
            # the selection, not the recording, may be what left the replay nothing to work on
            raise TraceError(f"{err} (with {selected}; widen --since/--until or pick another --cpu)") from None
    return Analysis(path, data, result, filter_notes(since, until, cpu))


def analysis_report(analysis: Analysis, *, with_plots: bool = False, steps: Steps | None = None) -> Report:
    """The report model of an analysis; ``with_plots`` draws the figures (HTML shows them)."""
    steps = steps or Steps()
    figures: tuple = ()
    if with_plots:
        from kvmtrace import plot  # matplotlib costs ~0.5 s to import; only HTML needs it

        with steps.step("drawing plots"):
            figures = plot.report_figures(analysis.data, analysis.replay)
    return build_report(
        analysis.data, analysis.replay, path=str(analysis.path), version=kvmtrace.__version__,
        filters=analysis.filters, figures=figures,
    )
