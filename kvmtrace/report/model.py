"""The report model: everything a report says, built once from a trace and its replay.

Renderers (text, Markdown, HTML, JSON) only format a :class:`Report`; none of them looks at the
trace or the replay again. That keeps the four formats in agreement by construction and lets
``kvmtrace diff`` compare two reports without knowing any renderer.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from kvmtrace.parsers.schema import TraceData
from kvmtrace.parsers.spilled import give_back
from kvmtrace.replays.ledger import ZapLedger, profile_of, zap_ledger
from kvmtrace.replays.results import ReplayResult
from kvmtrace.replays.threads import VcpuThreads
from kvmtrace.report.consequences import consequences
from kvmtrace.report.decode import field_notes, gpa_range
from kvmtrace.report.evidence import EvidenceReader, column_ts, evidence_fields, evidence_lines
from kvmtrace.report.grid import Grid, grid_from_arrow
from kvmtrace.report.groups import FindingGroup, group_findings
from kvmtrace.report.removals import MEMSLOT_ZAPS_NOTE, Removals, with_removal_zaps
from kvmtrace.report.traceinfo import info_dict

#: Evidence lines printed per finding; the JSON still lists every cited seq.
EVIDENCE_SHOWN = 12
#: Rows of long tables (memslot timeline, unexplained events) shown before "... N more".
ROWS_SHOWN = 60


@dataclass(frozen=True)
class TraceFacts:
    """The recording: where it came from and how complete it is."""

    file: str
    format: str
    kernel: str
    cpus: int
    clock: str
    first_ts: int | None
    last_ts: int | None
    events: int
    lost_events: int
    lost_unknown: int
    #: ``kvmtrace info --json`` of the same trace (the JSON report's ``trace`` object)
    info: dict[str, Any]
    #: which host thread ran which vCPU, and what says so
    vcpus: VcpuThreads = field(default_factory=lambda: VcpuThreads({}, ""))

    @property
    def span_s(self) -> float:
        if self.first_ts is None or self.last_ts is None:
            return 0.0
        return (self.last_ts - self.first_ts) / 1e9


@dataclass(frozen=True)
class ReplayFacts:
    """What the replay made of the trace: which MMU, which zap policy, how much it explained."""

    mmu: str
    zap_policy: str
    profile: str
    events: int
    explained_events: int
    shadow_pages: int
    spte_changes: int
    memslot_changes: int

    @property
    def explained_share(self) -> float:
        return self.explained_events / self.events if self.events else 1.0


@dataclass(frozen=True)
class Check:
    id: str
    status: str  # passed | failed | not_evaluated
    reason: str
    findings: int


@dataclass(frozen=True)
class Finding:
    id: str
    severity: str
    seq: int | None
    ts: int | None
    cpu: int | None
    gfn: int | None
    slot: int | None
    message: str
    evidence: tuple[int, ...]
    #: trace lines of the first :data:`EVIDENCE_SHOWN` evidence seqs, in seq order; filled only
    #: for the examples of each :class:`FindingGroup` (the findings the human formats print)
    evidence_lines: tuple[str, ...] = ()
    #: per evidence line, its decoded words (vCPU of the pid, SPTE bits and pfn, role), or ""
    evidence_notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Figure:
    """A plot already drawn as SVG text, so the HTML renderer only has to embed it."""

    title: str
    svg: str


@dataclass(frozen=True)
class Report:
    kvmtrace_version: str
    trace: TraceFacts
    replay: ReplayFacts
    checks: tuple[Check, ...]
    #: every finding, in the replay's order (the JSON lists each one)
    findings: tuple[Finding, ...]
    #: the findings grouped by id, severity and cause, errors first (what people read)
    groups: tuple[FindingGroup, ...]
    memslot_timeline: Grid
    #: per-memslot activity and zap costs, one grid per replay summary table
    activity: tuple[Grid, ...]
    #: the same summaries added up per memslot (or overall); what ``diff`` compares
    totals: tuple[Grid, ...]
    sp_lifetimes: Grid
    whatif: Grid
    #: the what-if comparison added up per zap policy (what each policy would have cost)
    whatif_totals: Grid
    unexplained: Grid
    assumptions: tuple[str, ...]
    #: what the trace could not show (replay limits, lost events, event filters)
    limits: tuple[str, ...]
    #: what is wrong with the input itself (cut short, lost events, skipped lines, header
    #: oddities): printed near the top of every format, not only on stderr
    input_warnings: tuple[str, ...] = ()
    figures: tuple[Figure, ...] = ()
    #: the zap ledger: one entry per positioned memslot delete, move or re-create (made when read)
    removals: Removals = field(default_factory=Removals)
    #: per delete/move and vCPU: faults and MMIO exits on the removed range until it is backed again
    consequences: Grid = Grid("consequences per delete/move and vCPU", ())
    #: what since/until/cpus chose to report (``kvmtrace.selection.ReportedSelection.as_dict``);
    #: None when the whole trace is reported
    selection: dict[str, Any] | None = None

    def count(self, severity: str) -> int:
        return sum(1 for f in self.findings if f.severity == severity)


def trace_facts(data: TraceData, path: str, vcpus: VcpuThreads) -> TraceFacts:
    """The recording's facts (also what a notebook shows for a bare ``Trace``)."""
    info = data.info
    fmt = info.source + (f" v{info.version}" if info.version else "")
    if info.compression != "none":
        fmt += f", {info.compression}"
    return TraceFacts(
        file=path,
        format=fmt,
        kernel=info.kernel or "unknown",
        cpus=info.cpus,
        clock=info.clock or "unknown",
        first_ts=info.first_ts,
        last_ts=info.last_ts,
        events=info.total_events,
        lost_events=sum(info.lost_events.values()),
        lost_unknown=sum(info.lost_unknown.values()),
        info=info_dict(info),
        vcpus=vcpus,
    )


def _replay_facts(replay: ReplayResult) -> ReplayFacts:
    return ReplayFacts(
        mmu=replay.mmu,
        zap_policy=replay.zap_policy,
        profile=replay.profile,
        events=replay.events,
        explained_events=replay.explained_events,
        shadow_pages=replay.shadow_pages.num_rows,
        spte_changes=replay.spte_changes.num_rows,
        memslot_changes=replay.memslots.num_rows,
    )


def _checks(replay: ReplayResult) -> tuple[Check, ...]:
    t = replay.checks
    return tuple(
        Check(*row)
        for row in zip(*(t.column(n).to_pylist() for n in ("id", "status", "reason", "findings")))
    )


def _findings(data: TraceData, replay: ReplayResult,
              vcpus: VcpuThreads) -> tuple[tuple[Finding, ...], tuple[FindingGroup, ...]]:
    """Every finding, and their groups; evidence lines are looked up only for the examples each
    group prints (a group of thousands costs three lookups, not thousands)."""
    t = replay.findings
    if t.num_rows == 0:
        return (), ()
    names = ("id", "severity", "seq", "ts", "cpu", "gfn", "slot", "message", "evidence")
    plain = [Finding(fid, severity, seq, ts, cpu, gfn, slot, message, evidence=tuple(sorted(evidence)))
             for fid, severity, seq, ts, cpu, gfn, slot, message, evidence
             in zip(*(t.column(n).to_pylist() for n in names))]
    groups = group_findings(plain)
    cited = {i: plain[i].evidence[:EVIDENCE_SHOWN] for g in groups for i in g.examples}
    every = {s for seqs in cited.values() for s in seqs}
    lines = evidence_lines(data, every)
    notes = _evidence_notes(data, replay, every, vcpus.vcpu_of)
    findings = tuple(replace(f, evidence_lines=tuple(lines[s] for s in cited[i]),
                             evidence_notes=tuple(notes.get(s, "") for s in cited[i])) if i in cited else f
                     for i, f in enumerate(plain))
    return findings, groups


def _evidence_notes(data: TraceData, replay: ReplayResult, seqs: set[int], vcpus: dict[int, int]) -> dict[int, str]:
    """What each cited event's raw words mean: the vCPU its thread runs, SPTEs, role words."""
    profile = profile_of(replay)
    out = {}
    for seq, (name, pid, fields) in evidence_fields(data, seqs).items():
        words = ([f"pid {pid} = vCPU {vcpus[pid]}"] if pid in vcpus else []) + field_notes(name, fields, profile)
        out[seq] = "; ".join(words)
    return out


#: Titles of the replay summaries a reader meets most; others are shown as "summary: <name>".
SUMMARY_TITLES = {
    "memslot": "per-memslot activity and zap costs",
    "zap_all": "zap-all cost per generation",
}


#: Summary columns that identify a row (where, when, which generation) rather than count
#: something; totals never add them up.
IDENTITY_COLUMNS = frozenset({"seq", "ts", "as_id", "base_gfn", "npages", "from_seq", "until_seq", "mmu_valid_gen"})


#: Consequence columns the human formats print.
CONSEQUENCE_BRIEF = ("seq", "pid", "vcpu", "faults", "noslot", "error", "mmio", "per_gfn", "first_seq", "last_seq")

#: Replay summaries the report shows inside the zap ledger, not as activity tables of their own.
IN_LEDGER = frozenset({"consequences"})


def _summaries(replay: ReplayResult, ledger: ZapLedger) -> dict[str, pa.Table]:
    return {name: with_removal_zaps(t, ledger) if name == "memslot" else t for name, t in replay.summaries.items()
            if name not in IN_LEDGER}


def _activity(summaries: dict[str, pa.Table]) -> tuple[Grid, ...]:
    return tuple(
        grid_from_arrow(SUMMARY_TITLES.get(name, f"summary: {name}"), table, limit=ROWS_SHOWN,
                        note=MEMSLOT_ZAPS_NOTE if name == "memslot" else "")
        for name, table in sorted(summaries.items())
    )


def totals_grid(title: str, table: pa.Table, key: str = "slot") -> Grid:
    """A table added up: per ``key`` (a memslot, a zap policy) when it has that column, else
    one ``all`` row; ``rows`` counts the summed rows (slot lifetimes, zap-alls, memslot
    changes). Computed on the whole table, never on the shortened grid, so ``diff`` compares
    true totals."""
    measures = [f.name for f in table.schema if pa.types.is_integer(f.type)
                and f.name not in IDENTITY_COLUMNS and f.name not in ("slot", key)]
    df = pl.DataFrame(table if table.num_rows else table.schema.empty_table())  # typed as a frame, no copy
    sums = [pl.len().alias("rows"), *(pl.col(m).sum() for m in measures)]
    if key in table.column_names:
        agg = df.group_by(key).agg(sums).sort(key)
    else:
        agg = df.select(pl.lit("all").alias(key), *sums)
    return Grid(title, tuple(agg.columns), tuple(agg.iter_rows()))


def _totals(summaries: dict[str, pa.Table]) -> tuple[Grid, ...]:
    return tuple(
        totals_grid(f"{SUMMARY_TITLES.get(name, name)}: totals", table)
        for name, table in sorted(summaries.items())
    )


def sp_birth_death(
    data: TraceData | None, shadow_pages: pa.Table
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(created, zapped, predates_trace) per shadow-page lifetime, NaN where not traced.

    Times are ns when ``data`` is given, else the seqs themselves. A page that predates the
    trace has no known birth: its first sighting is not a creation.
    """
    predates = shadow_pages.column("predates_trace").to_numpy().astype(bool) \
        if "predates_trace" in shadow_pages.column_names else np.zeros(shadow_pages.num_rows, dtype=bool)
    born = column_ts(data, shadow_pages, "first_seq")
    born[predates] = np.nan
    died = column_ts(data, shadow_pages, "zap_seq")
    return born, died, predates


def sp_lifetime_grid(data: TraceData, shadow_pages: pa.Table) -> Grid:
    """How long shadow pages lived, in milliseconds, over pages whose birth and zap are traced.

    Pages that predate the trace or outlive it have no measured lifetime; they are counted
    separately so the percentiles are not biased towards the trace's length.
    """
    born, died, predates = sp_birth_death(data, shadow_pages)
    both = ~np.isnan(born) & ~np.isnan(died)
    life_ms = (died[both] - born[both]) / 1e6
    rows: list[tuple[str, Any]] = [
        ("lifetimes", shadow_pages.num_rows),
        ("created in trace", int((~predates).sum())),
        ("predate trace", int(predates.sum())),
        ("zapped in trace", int((~np.isnan(died)).sum())),
        ("alive at end", int(np.isnan(died).sum())),
        ("measured lifetimes", int(both.sum())),
    ]
    if life_ms.size:
        p50, p90, p99 = np.percentile(life_ms, [50, 90, 99])
        rows += [
            ("lifetime min ms", float(life_ms.min())),
            ("lifetime p50 ms", float(p50)),
            ("lifetime p90 ms", float(p90)),
            ("lifetime p99 ms", float(p99)),
            ("lifetime max ms", float(life_ms.max())),
        ]
    return Grid("shadow-page lifetimes", ("measure", "value"), tuple(rows))


#: Memslot timeline columns a reader needs, with where each line came from and how it was placed
#: (a QEMU log's lines are matched to the kernel's response, with a confidence); the rest
#: (anchors, windows) stay in the replay table for whoever digs deeper.
TIMELINE_COLUMNS = ("seq", "ts", "slot", "kind", "gpa_range", "base_gfn", "npages", "flags", "source", "placement",
                    "confidence")
#: What the human formats print of it: the range once, as guest-physical addresses.
TIMELINE_BRIEF = ("seq", "ts", "slot", "kind", "gpa_range", "flags")


def memslot_grid(data: TraceData, memslots: pa.Table) -> Grid:
    """The memslot timeline with each change's time added (the replay cites seqs only) and the
    guest-physical range it concerns in hex, as QEMU prints it (a delete: the range removed)."""
    ts = column_ts(data, memslots, "seq")
    with_ts = memslots.append_column("ts", pa.array([None if np.isnan(t) else int(t) for t in ts], pa.int64()))
    ranges = [gpa_range(ob, on or 0) if kind == "delete" and ob is not None else gpa_range(b, n)
              for kind, b, n, ob, on in zip(*(memslots.column(c).to_pylist() for c in
                                              ("kind", "base_gfn", "npages", "old_base_gfn", "old_npages")))]
    with_ts = with_ts.append_column("gpa_range", pa.array(ranges, pa.string()))
    note = "" if memslots.num_rows else \
        "no memslot changes seen (no QEMU kvm_set_user_memory lines, --qemu-log or --memslots)"
    return grid_from_arrow("memslot timeline", with_ts, columns=TIMELINE_COLUMNS, limit=ROWS_SHOWN, note=note,
                           brief=TIMELINE_BRIEF)


def input_warnings(data: TraceData) -> tuple[str, ...]:
    """The reader's warnings about the input, and its lost-event counts in words.

    Both readers put every warning they emit through ``warnings.warn`` into
    ``TraceInfo.warnings`` as well, so the report reads them from the data it is built from and
    needs no hook on the warnings module; lost events are counts, not warnings, in ``TraceInfo``.
    """
    info = data.info
    out = list(info.warnings)
    lost = {c: n for c, n in sorted(info.lost_events.items()) if n}
    if lost:
        per_cpu = ", ".join(f"CPU {c}: {n}" for c, n in lost.items())
        out.append(f"the ring buffer dropped {sum(lost.values())} events ({per_cpu})")
    gaps = {c: n for c, n in sorted(info.lost_unknown.items()) if n}
    if gaps:
        per_cpu = ", ".join(f"CPU {c}: {n}" for c, n in gaps.items())
        out.append(f"events were dropped at {sum(gaps.values())} places whose count the kernel did not record "
                   f"({per_cpu})")
    if info.skipped_lines and not any("skipped" in w for w in info.warnings):
        out.append(f"{info.skipped_lines} line(s) of the text could not be read and were skipped")
    return tuple(out)


def _limits(data: TraceData, replay: ReplayResult, filters: tuple[str, ...]) -> tuple[str, ...]:
    out = list(replay.limits)
    lost = sum(data.info.lost_events.values())
    unknown = sum(data.info.lost_unknown.values())
    if lost or unknown:
        out.append(
            f"the trace lost {lost} events"
            + (f" (plus {unknown} gaps of unknown size)" if unknown else "")
            + "; nothing that depends on a lost interval is reported as an error"
        )
    out += filters
    return tuple(out)


def build_report(
    data: TraceData,
    replay: ReplayResult,
    *,
    path: str,
    version: str,
    filters: tuple[str, ...] = (),
    figures: tuple[Figure, ...] = (),
    selection: dict[str, Any] | None = None,
    ledger: ZapLedger | None = None,
) -> Report:
    """Build the report of one replayed trace.

    ``filters`` are sentences describing any event selection applied before the replay (they
    change what the replay can explain, so the report must say so); ``figures`` are plots drawn
    by :mod:`kvmtrace.plot` for formats that show pictures; ``ledger`` the zap ledger of
    ``data`` and ``replay`` where the caller has it (the figures read it too: 2-3 s on a long trace).
    """
    # Each step reads tables and arrays kept on disk and leaves temporaries to the allocators;
    # given back between steps (:func:`give_back`), they do not pile up under the later ones'
    # peaks: at the consequences' start, 80 MiB of read pages and 45 MiB kept by Arrow's
    # allocator at 54 M events.
    facts = trace_facts(data, path, replay.vcpus)
    findings, groups = _findings(data, replay, facts.vcpus)
    ledger = zap_ledger(data, replay) if ledger is None else ledger
    give_back()  # the ledger's passes, over the SPTE-change table among others
    summaries = _summaries(replay, ledger)
    after = replay.summaries.get("consequences")
    memslot_timeline = memslot_grid(data, replay.memslots)
    sp_lifetimes = sp_lifetime_grid(data, replay.shadow_pages)
    give_back()
    removals = Removals(ledger, after, EvidenceReader(data).lines)
    give_back()
    consequence_rows = consequences(data, replay, ledger, facts.vcpus.vcpu_of)
    give_back()
    report = Report(
        selection=selection,
        kvmtrace_version=version,
        trace=facts,
        replay=_replay_facts(replay),
        checks=_checks(replay),
        findings=findings,
        groups=groups,
        memslot_timeline=memslot_timeline,
        activity=_activity(summaries),
        totals=_totals(summaries),
        sp_lifetimes=sp_lifetimes,
        whatif=grid_from_arrow("what-if per memslot change", replay.whatif, limit=ROWS_SHOWN,
                               note="" if replay.whatif is not None else "the replay made no what-if comparison"),
        whatif_totals=totals_grid("what-if totals per zap policy", replay.whatif, key="policy")
        if replay.whatif is not None else Grid("what-if totals per zap policy", ()),
        unexplained=grid_from_arrow("unexplained events", replay.unexplained, limit=ROWS_SHOWN),
        assumptions=tuple(replay.assumptions),
        limits=_limits(data, replay, filters),
        input_warnings=input_warnings(data),
        figures=figures,
        removals=removals,
        consequences=grid_from_arrow(
            "consequences per delete/move and vCPU", consequence_rows,
            limit=ROWS_SHOWN, brief=CONSEQUENCE_BRIEF,
            note="faults and MMIO exits on each removed range, from the change's start until a slot backs it again"),
    )
    # What the steps above freed and the allocators kept is not the rendering's, which builds
    # on top of it (156 MiB at 52 M events, under the JSON report's peak).
    give_back()
    return report
