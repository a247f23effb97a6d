"""Plots of a replayed trace, as matplotlib Figures (no pyplot state, so they work headless, in
tests and in notebooks alike) and as SVG text for the self-contained HTML report.

- :func:`timeline` — faults, SPTE installs and zaps per time bin, memslot changes as lines;
- :func:`memslots` — per-memslot activity from the replay's memslot summary;
- :func:`sp_lifetimes` — shadow pages alive over time.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Union

import matplotlib
import numpy as np
import pyarrow as pa
from matplotlib.figure import Figure as MplFigure

from kvmtrace.report.evidence import column_ts
from kvmtrace.report.model import Figure, sp_birth_death, totals_grid
from kvmtrace.parsers.schema import TraceData
from kvmtrace.replays.results import ReplayResult

if TYPE_CHECKING:  # the API imports this module (lazily); a runtime import would close a cycle
    from kvmtrace.api import Trace

#: Event groups drawn on the timeline, in the order of the panels.
TIMELINE_GROUPS: dict[str, tuple[str, ...]] = {
    # kvm:kvm_page_fault is often not enabled; kvm_mmu_spte_requested is the kvmmmu event
    # every mapping fault emits, fast_page_fault the lockless fix-ups.
    "faults": ("kvm_page_fault", "kvm_mmu_spte_requested", "fast_page_fault", "handle_mmio_page_fault"),
    "SPTE installs": ("kvm_mmu_set_spte", "kvm_tdp_mmu_spte_changed", "mark_mmio_spte"),
    "zaps": ("kvm_mmu_prepare_zap_page", "kvm_mmu_zap_all_fast"),
}
BINS = 200


def _data(trace: Union["Trace", TraceData]) -> TraceData:
    return trace if isinstance(trace, TraceData) else trace.data


def _ts(table: pa.Table | None) -> np.ndarray:
    if table is None or "ts" not in table.column_names:
        return np.empty(0, dtype=np.int64)
    return table.column("ts").to_numpy(zero_copy_only=False)


def timeline(trace: Union[Trace, TraceData], replay: ReplayResult) -> MplFigure:
    """Events per time bin for each group of :data:`TIMELINE_GROUPS`; memslot changes dashed."""
    data = _data(trace)
    t0 = data.info.first_ts or 0
    span = max((data.info.last_ts or t0) - t0, 1) / 1e9
    edges = np.linspace(0, span, BINS + 1)
    # Fixed margins, not constrained layout: the layout solver cost ~0.6 s per figure.
    fig = MplFigure(figsize=(10, 6))
    fig.subplots_adjust(left=0.08, right=0.98, top=0.93, bottom=0.09, hspace=0.12)
    axes = fig.subplots(len(TIMELINE_GROUPS), 1, sharex=True)
    slot_changes = column_ts(data, replay.memslots, "seq")
    slot_changes = (slot_changes[~np.isnan(slot_changes)] - t0) / 1e9
    for ax, (label, names) in zip(axes, TIMELINE_GROUPS.items()):
        present = [(name, _ts(data.tables.get(name))) for name in names]
        for name, ts in present:
            if ts.size:
                counts, _ = np.histogram((ts - t0) / 1e9, bins=edges)
                ax.stairs(counts, edges, label=f"{name} ({ts.size})", fill=False)
        # one collection for all changes: a bulk-churn trace has hundreds
        ax.vlines(slot_changes, 0, 1, transform=ax.get_xaxis_transform(), colors="tab:red",
                  linestyles="--", linewidth=0.6, alpha=0.6)
        ax.set_ylabel(label)
        if any(ts.size for _, ts in present):
            ax.legend(loc="upper right", fontsize="small")
        else:
            ax.text(0.5, 0.5, f"none of {', '.join(names)} in this trace", ha="center", va="center",
                    transform=ax.transAxes, fontsize="small")
    axes[-1].set_xlabel(f"seconds since {t0 / 1e9:.6f} (dashed: memslot changes)")
    fig.suptitle("faults, SPTE installs and zaps over time")
    return fig


def memslots(replay: ReplayResult) -> MplFigure:
    """Per-memslot totals of the replay's memslot summary: one bar per count (faults, SPTE
    installs, pages zapped and rebuilt), grouped by memslot, on a log scale."""
    fig = MplFigure(figsize=(10, 4.5))
    fig.subplots_adjust(left=0.08, right=0.98, top=0.91, bottom=0.13)
    ax = fig.subplots()
    table = replay.summaries.get("memslot")
    totals = totals_grid("memslot", table) if table is not None and table.num_rows else None
    if totals is None or len(totals.columns) < 3:
        ax.text(0.5, 0.5, "no per-memslot summary in this replay", ha="center", va="center")
        ax.set_axis_off()
        return fig
    measures = totals.columns[2:]  # after slot and rows
    values = np.array([row[2:] for row in totals.rows], dtype=float)
    x = np.arange(len(totals.rows))
    width = 0.8 / len(measures)
    for i, name in enumerate(measures):
        ax.bar(x + i * width, np.nan_to_num(values[:, i]), width, label=name)
    ax.set_xticks(x + width * (len(measures) - 1) / 2, [str(row[0]) for row in totals.rows])
    ax.set_xlabel("memslot (as_id << 16 | id)")
    ax.set_yscale("symlog")
    ax.legend(fontsize="small")
    fig.suptitle("activity per memslot (all lifetimes of each slot added up)")
    return fig


def sp_lifetimes(replay: ReplayResult, trace: Union[Trace, TraceData, None] = None) -> MplFigure:
    """Shadow pages alive over the trace (pages that predate it count from its start).

    The replay cites events by seq; with ``trace`` the x axis is time, without it the x axis
    is the event sequence number.
    """
    fig = MplFigure(figsize=(10, 4))
    fig.subplots_adjust(left=0.08, right=0.98, top=0.9, bottom=0.14)
    ax = fig.subplots()
    sp = replay.shadow_pages
    if sp.num_rows == 0:
        ax.text(0.5, 0.5, "no shadow pages in this replay", ha="center", va="center")
        ax.set_axis_off()
        return fig
    if trace is not None:
        data = _data(trace)
        start = data.info.first_ts or 0
        born, died, _ = sp_birth_death(data, sp)
        scale, xlabel = 1e9, f"seconds since {start / 1e9:.6f}"
    else:
        start = 0
        born, died, _ = sp_birth_death(None, sp)
        scale, xlabel = 1, "event seq"
    born = np.where(np.isnan(born), start, born)
    gone = died[~np.isnan(died)]
    times = np.concatenate([born, gone])
    steps = np.concatenate([np.ones(born.size), -np.ones(gone.size)])
    order = np.argsort(times, kind="stable")
    ax.step((times[order] - start) / scale, np.cumsum(steps[order]), where="post")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("shadow pages alive")
    fig.suptitle(f"shadow pages alive over time ({sp.num_rows} lifetimes)")
    return fig


def svg_text(fig: MplFigure) -> str:
    """The figure as an inline ``<svg>`` element (XML prolog and DOCTYPE dropped)."""
    buf = io.StringIO()
    # Text as <text> elements (escaped by matplotlib), not glyph outlines: half the time and size.
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buf, format="svg")
    text = buf.getvalue()
    return text[text.index("<svg"):]


def report_figures(trace: Union[Trace, TraceData], replay: ReplayResult) -> tuple[Figure, ...]:
    """The HTML report's plots, drawn once."""
    return (
        Figure("faults, SPTE installs, zaps and memslot changes over time", svg_text(timeline(trace, replay))),
        Figure("faults, SPTE installs, pages zapped and rebuilt per memslot", svg_text(memslots(replay))),
        Figure("shadow pages alive over time", svg_text(sp_lifetimes(replay, trace))),
    )
