"""Plots of a replayed trace, as matplotlib Figures (no pyplot state, so they work headless, in
tests and in notebooks alike) and as SVG text for the self-contained HTML report.

- :func:`timeline` — faults, SPTE installs and zaps per time bin, memslot changes as lines;
- :func:`layout` — the memslot layout over time: one band per slot instance, update windows,
  deletes and moves, and the faults that hit a range while no slot backed it;
- :func:`page_lifetimes` — one bar per shadow page, coloured by how it ended;
- :func:`spte_rate` — leaf SPTE installs and removals per time bin, memslot changes overlaid;
- :func:`memslots` — per-memslot activity from the replay's memslot summary;
- :func:`sp_lifetimes` — shadow pages alive over time.
"""

from __future__ import annotations

import io

import matplotlib
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from matplotlib.figure import Figure as MplFigure

from kvmtrace.parsers.schema import TraceData
from kvmtrace.replays.ledger import ZapLedger, zap_ledger
from kvmtrace.replays.results import ReplayResult
from kvmtrace.report.decode import gpa_range
from kvmtrace.report.evidence import column_ts, seq_ts
from kvmtrace.report.model import Figure, sp_birth_death, totals_grid
from kvmtrace.traced import Traced

#: Event groups drawn on the timeline, in the order of the panels.
TIMELINE_GROUPS: dict[str, tuple[str, ...]] = {
    # kvm:kvm_page_fault is often not enabled; kvm_mmu_spte_requested is the kvmmmu event
    # every mapping fault emits, fast_page_fault the lockless fix-ups.
    "faults": ("kvm_page_fault", "kvm_mmu_spte_requested", "fast_page_fault", "handle_mmio_page_fault"),
    "SPTE installs": ("kvm_mmu_set_spte", "kvm_tdp_mmu_spte_changed", "mark_mmio_spte"),
    "zaps": ("kvm_mmu_prepare_zap_page", "kvm_mmu_zap_all_fast"),
}
BINS = 200
#: Places along a time axis at which point markers are told apart (:func:`_one_per_place`).
POINT_PLACES = 2000


def _data(trace: Traced | TraceData) -> TraceData:
    return trace if isinstance(trace, TraceData) else trace.data


def _ts(table: pa.Table | None) -> np.ndarray:
    if table is None or "ts" not in table.column_names:
        return np.empty(0, dtype=np.int64)
    return table.column("ts").to_numpy(zero_copy_only=False)


def timeline(trace: Traced | TraceData, replay: ReplayResult) -> MplFigure:
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
    slot_changes = _marks((slot_changes[~np.isnan(slot_changes)] - t0) / 1e9, span)
    for ax, (label, names) in zip(axes, TIMELINE_GROUPS.items()):
        present = [(name, _ts(data.tables.get(name))) for name in names]
        for name, ts in present:
            if ts.size:
                counts, _ = np.histogram((ts - t0) / 1e9, bins=edges)
                ax.stairs(counts, edges, label=f"{name} ({ts.size})", fill=False)
        # one collection for all changes, one line per place: a bulk-churn trace has thousands
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


def sp_lifetimes(replay: ReplayResult, trace: Traced | TraceData | None = None) -> MplFigure:
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


def _seconds(data: TraceData, seqs: np.ndarray) -> np.ndarray:
    """Seconds since the trace's first event of the events with these seqs (NaN: not in it)."""
    return (seq_ts(data, np.asarray(seqs, dtype=float)) - (data.info.first_ts or 0)) / 1e9


def _in_any(seq: np.ndarray, since: np.ndarray, until: np.ndarray) -> np.ndarray:
    """Whether each seq lies in one of the intervals [since, until) (they may overlap: two
    address spaces can map one range at once): the intervals by start, the latest end among
    those begun by then. One pass per lane; a mask over every fault per slot instance grew with
    the trace twice over."""
    order = np.argsort(since, kind="stable")
    begun = np.searchsorted(since[order], seq, side="right") - 1
    latest = np.maximum.accumulate(until[order]) if len(order) else until
    return (begun >= 0) & (latest[np.maximum(begun, 0)] > seq) if len(order) else np.zeros(len(seq), bool)


def _one_per_place(x: np.ndarray, lanes: np.ndarray, span: float) -> tuple[np.ndarray, np.ndarray]:
    """The points to draw of many on few lanes: the first of each lane and each
    :data:`POINT_PLACES`-th of the time axis, which the eye cannot tell from all of them (the
    figure is ~750 pixels wide). Each point is an element of the HTML report's SVG: a long
    trace's 330 000 faults on removed ranges made it 30 MB and 7 s to draw."""
    known = ~np.isnan(x)
    x, lanes = x[known], lanes[known]
    place = np.clip(x / span * POINT_PLACES, 0, POINT_PLACES).astype(np.int64)
    _, first = np.unique(lanes.astype(np.int64) * (POINT_PLACES + 1) + place, return_index=True)
    return x[first], lanes[first]


def _marks(x: np.ndarray, span: float) -> np.ndarray:
    """The times of many marks along one axis, one per place (:func:`_one_per_place`): a trace
    with 8 500 memslot deletes drew 17 000 dashed lines per panel (an 11 MB timeline)."""
    return _one_per_place(np.asarray(x, dtype=float), np.zeros(len(x), np.int64), span)[0]


def _merged(keys: np.ndarray, start: np.ndarray, end: np.ndarray,
            span: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intervals ``[start, end)`` of each key (a lane, a colour) merged where they overlap or
    lie less than a place (``span`` / :data:`POINT_PLACES`) apart, a gap the eye cannot see:
    one bar per slot instance or update window was 5 MB of SVG at 8 500 deletes. Returns
    each merged interval's key, start and end; intervals with an unknown end are left out."""
    known = ~(np.isnan(start) | np.isnan(end))
    keys, start, end = np.asarray(keys)[known], start[known], end[known]
    if not len(keys):
        return keys, start, end
    order = np.lexsort((start, keys))
    k, s, e = keys[order], start[order], end[order]
    rank = np.cumsum(np.r_[0, k[1:] != k[:-1]])
    offset = rank * (4 * span + 1.0)  # keeps each key's running end from reaching the next key's
    reach = np.maximum.accumulate(e + offset) - offset
    first = np.r_[True, (rank[1:] != rank[:-1]) | (s[1:] > reach[:-1] + span / POINT_PLACES)]
    at = np.flatnonzero(first)
    return k[at], s[at], np.maximum.reduceat(e, at)


def _mask(values: pa.ChunkedArray) -> np.ndarray:
    """A boolean Arrow column as a numpy mask (null: False)."""
    return values.fill_null(False).to_numpy(zero_copy_only=False)


def _empty(fig: MplFigure, ax, text: str) -> MplFigure:
    ax.text(0.5, 0.5, text, ha="center", va="center")
    ax.set_axis_off()
    return fig


def _faults(data: TraceData) -> tuple[np.ndarray, np.ndarray]:
    """(seq, gfn) of every mapping fault: ``kvm_mmu_spte_requested``, which each fault that gets
    as far as a mapping emits, and ``handle_mmio_page_fault`` (gpa >> 12)."""
    seqs, gfns = [], []
    for name, col, shift in (("kvm_mmu_spte_requested", "gfn", 0), ("handle_mmio_page_fault", "addr", 12)):
        t = data.tables.get(name)
        if t is not None and t.num_rows and col in t.column_names:
            seqs.append(t.column("seq").to_numpy())
            gfns.append(t.column(col).to_numpy(zero_copy_only=False).astype(np.uint64) >> np.uint64(shift))
    if not seqs:
        return np.empty(0, np.int64), np.empty(0, np.uint64)
    return np.concatenate(seqs), np.concatenate(gfns)


def layout(trace: Traced | TraceData, replay: ReplayResult, ledger: ZapLedger | None = None) -> MplFigure:
    """The memslot layout over time: one lane per guest-physical range (sorted by address, so
    small BARs stay visible next to gigabytes of RAM), one band per slot instance while it was
    in place, each delete/move's update window shaded and its line marked, and the faults
    that hit a range while no slot instance backed it as points."""
    data = _data(trace)
    ledger = ledger or zap_ledger(data, replay)
    lt = replay.summaries.get("memslot")
    fig = MplFigure(figsize=(10, 5))
    fig.subplots_adjust(left=0.24, right=0.98, top=0.9, bottom=0.2)
    ax = fig.subplots()
    if lt is None or lt.num_rows == 0:
        return _empty(fig, ax, "no memslot layout in this replay")
    end = ((data.info.last_ts or 0) - (data.info.first_ts or 0)) / 1e9
    base = lt.column("base_gfn").to_numpy().astype(np.uint64)
    size = lt.column("npages").to_numpy().astype(np.uint64)
    ranges = sorted(set(zip(base.tolist(), size.tolist())))
    lane = {r: i for i, r in enumerate(ranges)}
    y = np.array([lane[r] for r in zip(base.tolist(), size.tolist())])
    t0 = data.info.first_ts or 0
    start = np.nan_to_num((column_ts(data, lt, "from_seq") - t0) / 1e9, nan=0.0)
    until = np.nan_to_num((column_ts(data, lt, "until_seq") - t0) / 1e9, nan=end)  # null: in place at the end
    colour = lt.column("slot").to_numpy() % 10
    colours = matplotlib.colormaps["tab10"]
    span = max(end, 1e-9)
    # one bar per lane and colour while a slot of that colour is in place (gaps under a place merged)
    key, left, right = _merged(y * 10 + colour, start, until, span)
    ax.barh(key // 10, right - left, left=left, height=0.6, color=[colours(c) for c in (key % 10).tolist()],
            alpha=0.8, label="slot instance in place")
    r = ledger.removals
    if r.num_rows:
        ws = _seconds(data, r.column("window_start").to_numpy())
        line = _seconds(data, r.column("seq").to_numpy())
        ry = np.array([lane.get(k, -1) for k in zip(r.column("base_gfn").to_pylist(), r.column("npages").to_pylist())])
        wy, wl, wr = _merged(ry, ws, line, span)
        ax.barh(wy, wr - wl, left=wl, height=0.9, color="none", edgecolor="tab:red", hatch="///",
                linewidth=0.6, label="update window")
        lx, ly = _one_per_place(line, ry, span)
        ax.scatter(lx, ly, marker="x", color="tab:red", s=30, zorder=3, label=f"delete/move line ({r.num_rows})")
    seq, gfn = _faults(data)
    if seq.size:
        since = lt.column("from_seq").to_numpy()
        until = lt.column("until_seq").fill_null(np.iinfo(np.int64).max).to_numpy()
        covered = np.zeros(seq.size, bool)
        fy = np.full(seq.size, -1)
        for (b, n), i in lane.items():
            inside = np.flatnonzero((gfn >= np.uint64(b)) & (gfn < np.uint64(b + n)))
            fy[inside] = i
            covered[inside] |= _in_any(seq[inside], since[y == i], until[y == i])
        hit = ~covered & (fy >= 0)
        if hit.any():
            x, lanes = _one_per_place(_seconds(data, seq[hit]), fy[hit], span)
            ax.scatter(x, lanes, s=6, color="black", zorder=4, label=f"fault on a removed range ({int(hit.sum())})")
    ax.set_yticks(range(len(ranges)), [gpa_range(b, n) for b, n in ranges], fontsize="small")
    ax.set_ylim(-0.7, len(ranges) - 0.3)
    ax.set_xlim(0, span)
    ax.set_xlabel(f"seconds since {t0 / 1e9:.6f}")
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=4, fontsize="small", frameon=False)
    fig.suptitle("memslot layout over time (guest-physical ranges; colour: slot id)")
    return fig


#: How a shadow page ended, in the order the legend lists them, with its colour.
PAGE_ENDS = {"zap-all": "tab:red", "slot zap": "tab:orange", "root freed": "tab:purple",
             "other zap": "tab:gray", "obsolete, end not traced": "tab:pink", "alive at end": "tab:green"}


def page_ends(replay: ReplayResult, ledger: ZapLedger) -> np.ndarray:
    """Per shadow page, how it ended: made obsolete by a zap-all and zapped; zapped inside a
    zap-slot delete/move window; a root (root_count > 0) zapped otherwise; any other zap
    (MMU notifier, recycling, VM teardown); made obsolete but never seen zapped (the TDP MMU
    frees invalidated roots without a page-zap tracepoint); or still alive."""
    sp = replay.shadow_pages
    zap = sp.column("zap_seq").fill_null(-1).to_numpy()
    obsolete = sp.column("obsolete_seq").fill_null(-1).to_numpy()
    roots = sp.column("root_count").to_numpy() > 0
    in_slot_zap = np.zeros(sp.num_rows, bool)
    r = ledger.removals
    for ws, line, policy in zip(*(r.column(c).to_pylist() for c in ("window_start", "seq", "policy"))):
        if policy == "zap_slot":
            in_slot_zap |= (zap >= ws) & (zap <= line)
    return np.select([(zap < 0) & (obsolete >= 0), zap < 0, obsolete >= 0, in_slot_zap, roots],
                     ["obsolete, end not traced", "alive at end", "zap-all", "slot zap", "root freed"], "other zap")


def page_lifetimes(trace: Traced | TraceData, replay: ReplayResult,
                   ledger: ZapLedger | None = None) -> MplFigure:
    """One horizontal bar per shadow page from its creation (or the trace start, if it predates
    the trace) to its zap (or the trace end), pages ordered by creation, coloured by how they
    ended (:data:`PAGE_ENDS`)."""
    data = _data(trace)
    ledger = ledger or zap_ledger(data, replay)
    sp = replay.shadow_pages
    fig = MplFigure(figsize=(10, 5))
    fig.subplots_adjust(left=0.08, right=0.98, top=0.9, bottom=0.11)
    ax = fig.subplots()
    if sp.num_rows == 0:
        return _empty(fig, ax, "no shadow pages in this replay")
    born, died, _ = sp_birth_death(data, sp)
    t0, end = data.info.first_ts or 0, (data.info.last_ts or 0)
    x0 = (np.where(np.isnan(born), t0, born) - t0) / 1e9
    x1 = (np.where(np.isnan(died), end, died) - t0) / 1e9
    order = np.argsort(x0, kind="stable")
    rank = np.empty(sp.num_rows, int)
    rank[order] = np.arange(sp.num_rows)
    ends = page_ends(replay, ledger)
    for how, colour in PAGE_ENDS.items():
        m = ends == how
        if m.any():
            ax.hlines(rank[m], x0[m], x1[m], colors=colour, linewidth=max(0.3, min(3.0, 300 / sp.num_rows)),
                      label=f"{how} ({int(m.sum())})")
    ax.set_xlabel(f"seconds since {t0 / 1e9:.6f}")
    ax.set_ylabel("shadow page (by creation)")
    ax.set_xlim(0, max((end - t0) / 1e9, 1e-9))
    ax.legend(loc="lower right", fontsize="small")
    fig.suptitle(f"shadow-page lifetimes ({sp.num_rows}), coloured by how each page ended")
    return fig


def spte_rate(trace: Traced | TraceData, replay: ReplayResult, ledger: ZapLedger | None = None) -> MplFigure:
    """Leaf SPTEs installed and removed (traced or inferred) per time bin, with each memslot
    delete/move's update window shaded and its line dashed."""
    data = _data(trace)
    ledger = ledger or zap_ledger(data, replay)
    fig = MplFigure(figsize=(10, 4))
    fig.subplots_adjust(left=0.08, right=0.98, top=0.9, bottom=0.13)
    ax = fig.subplots()
    sc = replay.spte_changes
    if sc.num_rows == 0:
        return _empty(fig, ax, "no SPTE changes in this replay")
    span = max(((data.info.last_ts or 0) - (data.info.first_ts or 0)) / 1e9, 1e-9)
    edges = np.linspace(0, span, BINS + 1)
    # masks from the state column as Arrow has it (a Python string per change was 300 MB at 51 M events)
    state = sc.column("state")
    x = _seconds(data, sc.column("seq").to_numpy())
    for label, mask, colour in (
            ("installed", _mask(pc.equal(state, "present")), "tab:blue"),
            ("removed", _mask(pc.is_in(state, pa.array(["zapped", "zapped_inferred"]))), "tab:red")):
        counts, _ = np.histogram(x[mask & ~np.isnan(x)], bins=edges)
        ax.stairs(counts, edges, label=f"{label} ({int(mask.sum())})", color=colour)
    r = ledger.removals
    if r.num_rows:
        ws = _seconds(data, r.column("window_start").to_numpy())
        line = _seconds(data, r.column("seq").to_numpy())
        _, wl, wr = _merged(np.zeros(len(ws), np.int64), ws, line, span)
        ax.broken_barh(list(zip(wl, wr - wl)), (0, 1), transform=ax.get_xaxis_transform(), color="tab:orange",
                       alpha=0.25, label="update windows")
        ax.vlines(_marks(line, span), 0, 1, transform=ax.get_xaxis_transform(), colors="tab:red", linestyles="--",
                  linewidth=0.6, label=f"delete/move lines ({r.num_rows})")
    ax.set_yscale("symlog")
    ax.set_xlim(0, span)
    ax.set_xlabel(f"seconds since {(data.info.first_ts or 0) / 1e9:.6f}")
    ax.set_ylabel(f"leaf SPTEs per {span / BINS * 1e3:.3g} ms")
    ax.legend(loc="upper right", fontsize="small")
    fig.suptitle("leaf SPTE installs and removals over time, memslot deletes/moves overlaid")
    return fig


def svg_text(fig: MplFigure) -> str:
    """The figure as an inline ``<svg>`` element (XML prolog and DOCTYPE dropped)."""
    buf = io.StringIO()
    # Text as <text> elements (escaped by matplotlib), not glyph outlines: half the time and size.
    # No date and fixed element ids: the same trace gives the same report, byte for byte.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "kvmtrace"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]


def report_figures(trace: Traced | TraceData, replay: ReplayResult,
                   ledger: ZapLedger | None = None) -> tuple[Figure, ...]:
    """The HTML report's plots, drawn once: the memslot layout, how shadow pages lived and
    ended, and SPTE churn around memslot changes, then the event timeline (``ledger``: the
    trace's zap ledger, when the caller has it)."""
    ledger = zap_ledger(_data(trace), replay) if ledger is None else ledger
    return (
        Figure("memslot layout over time: slot instances, update windows, faults on removed ranges",
               svg_text(layout(trace, replay, ledger))),
        Figure("shadow-page lifetimes, coloured by how each page ended",
               svg_text(page_lifetimes(trace, replay, ledger))),
        Figure("leaf SPTE installs and removals over time, memslot deletes/moves overlaid",
               svg_text(spte_rate(trace, replay, ledger))),
        Figure("faults, SPTE installs, zaps and memslot changes over time", svg_text(timeline(trace, replay))),
    )
