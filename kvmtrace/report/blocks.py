"""A report laid out as a flat list of blocks: the document structure shared by text, Markdown
and HTML.

Deciding *what* a report says and in which order happens once, here; each renderer then only
knows how to draw a heading, a list of key/value facts, a table, a bullet list and a block of
trace lines. ``kvmtrace diff`` produces the same kinds of blocks, so it gets all three formats
without renderer code of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvmtrace.replays.memslots import ANCHOR_ZAPS
from kvmtrace.report.grid import Grid, seconds_text
from kvmtrace.report.groups import FindingGroup
from kvmtrace.report.model import Figure, Finding, Report, TraceFacts
from kvmtrace.report.removals import Removal, instance


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Facts:
    """Key/value lines (``kernel: 6.12``)."""

    items: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Table:
    grid: Grid


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class TraceLines:
    """Verbatim trace lines (evidence); drawn monospace, never reflowed into prose. ``notes``
    (aligned with ``lines``, "" for none) are decoded words printed under their line, so the
    line itself stays exactly what the user can grep for."""

    lines: tuple[str, ...]
    more: int = 0
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Plot:
    figure: Figure


Block = Heading | Facts | Table | Bullets | TraceLines | Para | Plot


def span_text(first_ts: int | None, last_ts: int | None) -> str:
    if first_ts is None or last_ts is None:
        return "empty"
    return f"{seconds_text(first_ts)} .. {seconds_text(last_ts)} ({(last_ts - first_ts) / 1e9:.6f} s)"


def report_title(report: Report) -> str:
    return f"kvmtrace analyze: {report.trace.file}"


def verdict(report: Report) -> str:
    e, w, i = (report.count(s) for s in ("error", "warning", "info"))
    failed = sum(1 for c in report.checks if c.status == "failed")
    skipped = sum(1 for c in report.checks if c.status == "not_evaluated")
    return (
        f"{e} errors, {w} warnings, {i} notes; {failed} of {len(report.checks)} checks failed, "
        f"{skipped} not evaluated."
    )


def trace_facts(t: TraceFacts) -> Facts:
    lost = f"{t.lost_events}" + (f" (+{t.lost_unknown} gaps of unknown size)" if t.lost_unknown else "")
    return Facts(
        (
            ("file", t.file),
            ("format", t.format),
            ("kernel", t.kernel),
            ("cpus", str(t.cpus)),
            ("clock", t.clock),
            ("span", span_text(t.first_ts, t.last_ts)),
            ("events", str(t.events)),
            ("lost events", lost),
            ("vCPUs", t.vcpus.text()),
        )
    )


def replay_facts(report: Report) -> Facts:
    r = report.replay
    return Facts(
        (
            ("mmu", r.mmu),
            ("zap policy", r.zap_policy),
            ("kernel profile", r.profile),
            ("kvmmmu events", str(r.events)),
            ("explained", f"{r.explained_events} ({100 * r.explained_share:.1f}%)"),
            ("shadow pages", str(r.shadow_pages)),
            ("spte changes", str(r.spte_changes)),
            ("memslot changes", str(r.memslot_changes)),
        )
    )


def checks_grid(report: Report) -> Grid:
    return Grid("checks", ("check", "status", "findings", "why"),
                tuple((c.id, c.status, c.findings, c.reason) for c in report.checks))


def _where(f: Finding) -> Facts:
    where = [f"seq {f.seq}" if f.seq is not None else None,
             f"ts {seconds_text(f.ts)}" if f.ts is not None else None,
             f"cpu {f.cpu}" if f.cpu is not None else None,
             f"gfn {f.gfn:#x}" if f.gfn is not None else None,
             f"slot {f.slot}" if f.slot is not None else None]
    return Facts((("where", ", ".join(w for w in where if w) or "-"),))


def _instance(f: Finding) -> list[Block]:
    return [Para(f.message), _where(f),
            TraceLines(f.evidence_lines, more=len(f.evidence) - len(f.evidence_lines), notes=f.evidence_notes)]


def _span(first: int | None, last: int | None, fmt=str) -> str:
    if first is None:
        return "-"
    return fmt(first) if first == last else f"{fmt(first)} .. {fmt(last)}"


def group_facts(g: FindingGroup) -> Facts:
    """Where a group's findings lie: seqs, times, gfns, slots, CPUs."""
    gfns = _span(g.gfn_first, g.gfn_last, hex) + (f" ({g.gfns} distinct)" if g.gfns > 1 else "")
    return Facts((
        ("findings", str(g.count)),
        ("seq", _span(g.first_seq, g.last_seq)),
        ("ts", _span(g.first_ts, g.last_ts, seconds_text)),
        ("gfn", gfns),
        ("slots", ", ".join(map(str, g.slots)) or "-"),
        ("cpus", ", ".join(map(str, g.cpus)) or "-"),
    ))


def groups_grid(report: Report) -> Grid:
    return Grid("finding groups (errors first)", ("#", "severity", "finding", "count", "cause"),
                tuple((n, g.severity, g.id, g.count, g.cause) for n, g in enumerate(report.groups, 1)))


def finding_blocks(report: Report) -> list[Block]:
    """One entry per group of findings (id, severity and cause), errors first: a group of
    hundreds is one entry with its extent and a few examples, so it cannot bury a single error."""
    if not report.findings:
        return [Para("No findings.")]
    out: list[Block] = [Table(groups_grid(report))]
    for n, g in enumerate(report.groups, 1):
        if g.count == 1:
            out.append(Heading(f"{n}. [{g.severity}] {g.id}", 3))
            out += _instance(report.findings[g.members[0]])
            continue
        out.append(Heading(f"{n}. [{g.severity}] {g.id}: {g.count} findings of one cause", 3))
        out.append(Para(f"Cause (numbers taken out): {g.cause}"))
        out.append(group_facts(g))
        for k, i in enumerate(g.examples, 1):
            out.append(Para(f"Example {k} of {g.count}:"))
            out += _instance(report.findings[i])
    if any(g.count > len(g.examples) for g in report.groups):
        out.append(Para("The JSON report lists every finding, and its groups."))
    return out


#: Removals the human formats describe in full (page by page); the summary table lists all, and
#: a removal that left a page the rule must zap is always described.
LEDGER_IN_FULL = 8


def _gfns(first: int, count: int) -> str:
    return f"{first:#x}-{first + count - 1:#x}"


def removal_title(r: Removal) -> str:
    row = r.row
    moved = f" -> {row['new_base_gfn']:#x}" if row["new_base_gfn"] is not None else ""
    return f"seq {row['seq']}: {row['kind']} of slot {r.instance}, gfns {_gfns(row['base_gfn'], row['npages'])}{moved}"


def ledger_grid(report: Report) -> Grid:
    """One line per delete/move: the ledger at a glance (the policy column only when the trace
    mixes policies; otherwise :func:`ledger_blocks` says it once)."""
    mixed = len({row["policy"] for row in report.removals.rows()}) > 1
    rows = tuple((row["seq"], instance(row), row["kind"], _gfns(row["base_gfn"], row["npages"]),
                  *((row["policy"],) if mixed else ()),
                  row["pages_zapped"], row["pages_kept"], row["kept_missed"], row["leaf_sptes_removed"],
                  _window_ms(row))
                 for row in report.removals.rows())
    columns = ("seq", "slot", "kind", "gfns", *(("policy",) if mixed else ()), "zap", "kept", "miss", "sptes", "ms")
    return Grid("zap ledger: pages zapped and kept, pages the rule must zap but kept (miss), leaf SPTEs removed, "
                "window time ('<': an upper bound, the kernel left no event where the change began)",
                columns, rows, shown=60)


def _window_ms(row: dict[str, Any]) -> str:
    """The window's length; a bound only, when it starts at the thread's previous line or last
    vCPU event rather than at the kernel's first zap for the change."""
    if row["window_ns"] is None:
        return "-"
    return ("" if row["anchor"] == ANCHOR_ZAPS else "<") + f"{row['window_ns'] / 1e6:.3f}"


def removal_blocks(r: Removal, whatif: Grid) -> list[Block]:
    row = r.row
    own = next((w for w in whatif.records() if w.get("seq") == row["seq"] and w.get("trace_policy")), None)
    refaulted = "" if own is None else (
        f"the guest built {own['pages_refaulted']} of the destroyed pages again and refaulted "
        f"{own['sptes_refaulted']} of the leaf SPTEs "
        f"(what-if, {'exact' if own['refaults_exact'] else 'a lower bound'})")
    traced = row["leaf_sptes_traced"]
    window = (f"seq {row['window_start']}..{row['seq']} (from the {row['anchor']}): {row['window_events']} events"
              + (f", {row['window_ns'] / 1e6:.3f} ms" if row["window_ns"] is not None else "")
              + ("" if row["anchor"] == ANCHOR_ZAPS else "; an upper bound of the change's cost: the kernel left "
                 "no event where it began"))
    facts = Facts((
        ("policy", row["policy"] + (f" (kvm_mmu_zap_all_fast at seq {row['zap_all_seq']})"
                                    if row["zap_all_seq"] is not None else "")),
        ("rule", row["rule"]),
        ("window", window),
        ("pages", f"{row['pages_zapped']} zapped, {row['pages_kept']} kept"
                  + (f" ({row['kept_missed']} of them the rule must zap: memslot_zap_miss)"
                     if row["kept_missed"] else "")),
        ("leaf SPTEs", f"{row['leaf_sptes_removed']} removed "
                       f"({traced} traced, {row['leaf_sptes_removed'] - traced} inferred)"),
        *((("refaulted", refaulted),) if refaulted else ()),
        *((("placed", placed_text(row)),) if row.get("source") else ()),
    ))
    pages = r.pages
    shown = Grid("pages zapped and kept", ("page", "gfn", "role_text", "fate", "zap_seq", "reason"),
                 tuple((*(rec[c] for c in ("page", "gfn", "role_text", "fate", "zap_seq")), rec["reason"])
                       for rec in pages.records()), shown=pages.shown, hexadecimal=frozenset({"gfn"}))
    sptes = Grid("leaf SPTEs removed", ("how", "in_range", "sptes", "gfns", "evidence"),
                 tuple((rec["how"], rec["in_range"], rec["sptes"],
                        f"{rec['gfn_first']:#x}..{rec['gfn_last']:#x}", rec["evidence"]) for rec in r.sptes.records()))
    return [Heading(removal_title(r), 3), facts,
            Table(shown) if shown.rows else Para("No page was zapped, and no page over the range was kept."),
            Table(sptes) if sptes.rows else Para("No leaf SPTE was removed inside the window."),
            *after_blocks(r)]


def placed_text(row: dict) -> str:
    """Where the change's line came from and how sure its position is."""
    conf = row.get("confidence")
    return f"{row['source']}; {row['placement']}" + (f" (confidence {conf:.2f})" if conf is not None else "")


#: The consequence columns the human formats print (evidence seqs are printed as trace lines below).
AFTER_BRIEF = ("what", "seq", "gfn", "level", "pid", "allowed", "detail")


def after_blocks(r: Removal) -> list[Block]:
    """What the trace shows after the change: pages that survived it and whether the kernel's
    rule allowed that, what vCPUs did on the range and how KVM resolved it, leaves proven removed
    or not provable; then the trace lines all of it rests on."""
    g = r.after
    if not g.rows:
        return [Para("Afterwards: no page over the range survived, and no vCPU touched the range again before a "
                     "slot backed it.")]
    # what matters most first: proven stale leaves, pages the rule must zap, then what the guest did
    recs = sorted(g.records(), key=lambda rec: (AFTER_ORDER.get(rec["what"], 9), rec["allowed"] is not False,
                                                rec["seq"]))
    shown = Grid(g.title, AFTER_BRIEF, tuple(tuple(rec[c] for c in AFTER_BRIEF) for rec in recs),
                 shown=AFTER_ROWS_SHOWN, hexadecimal=frozenset({"gfn"}))
    wanted = {s for rec in recs[:AFTER_ROWS_SHOWN] for s in rec["evidence"]}
    lines = [(seq, line) for seq, line in r.after_lines if seq in wanted]
    cited = lines[:AFTER_LINES_SHOWN]
    row = r.row
    here = f"the {row['kind']}'s line ({row.get('source') or 'its marker'}) is placed right after this event"
    return [Table(shown), Para("Evidence (seq: trace line):"),
            TraceLines(tuple(f"{seq}: {line}" for seq, line in cited),
                       more=len(r.after_lines) - len(cited),
                       notes=tuple(here if seq == row["seq"] else "" for seq, _ in cited))]


#: Evidence lines and consequence rows printed per change (the JSON report has every one).
AFTER_LINES_SHOWN = 12
AFTER_ROWS_SHOWN = 8
#: Order of consequence rows in the human formats.
AFTER_ORDER = {"dangling_spte": 0, "page_survived": 1, "fault_after": 2, "reinstall": 3, "leaf_removed": 4,
               "leaf_not_provable": 5}


def ledger_blocks(report: Report) -> list[Block]:
    if not report.removals:
        return [Para("No memslot delete or move with a position in the trace.")]
    policies = sorted({row["policy"] for row in report.removals.rows()})
    out: list[Block] = [] if len(policies) > 1 else [
        Para(f"All {len(report.removals)} deletes/moves ran under the {policies[0]} policy.")]
    out.append(Table(ledger_grid(report)))
    full = [n for n, row in enumerate(report.removals.rows()) if n < LEDGER_IN_FULL or row["kept_missed"]]
    for r in report.removals.made(full):
        out += removal_blocks(r, report.whatif)
    if len(full) < len(report.removals):
        out.append(Para(f"{len(report.removals) - len(full)} more deletes/moves are in the summary table; the JSON "
                        "report has every one page by page (removals)."))
    return out


def consequence_blocks(report: Report) -> list[Block]:
    g = report.consequences
    if not report.removals:
        return [Para("No memslot delete or move with a position in the trace.")]
    if not g.rows:
        return [Para("No vCPU faulted or exited on a removed range before a slot backed it again (what the trace "
                     "shows after each change, pages that survived it included, is under the change in the zap "
                     "ledger).")]
    return [Para("Per delete/move and vCPU thread, from the moment the change is surely under way (the kernel's "
                 "first zap for it, else its QEMU line) until a slot backs the range again: mapping faults on the "
                 "range, how many KVM resolved with no slot (KVM_PFN_NOSLOT: the access became an MMIO exit to the "
                 "VMM although the range is RAM before and after: DELETE and CREATE are not atomic) or with an error "
                 "pfn, MMIO "
                 "exits, the most faults one gfn took (a retry storm shows here), first and last event."),
            Table(g)]


def grid_blocks(grid: Grid) -> list[Block]:
    out: list[Block] = [Heading(grid.title, 3)]
    if grid.note:
        out.append(Para(grid.note))
    if grid.columns:
        out.append(Table(grid))
    return out


def report_blocks(report: Report) -> list[Block]:
    """The whole report, top to bottom, in the order a reader of a bug report wants it."""
    blocks: list[Block] = [Heading(report_title(report), 1), Para(verdict(report))]
    if report.input_warnings:  # before anything is read from the trace: it is incomplete or odd
        blocks += [Heading("Input warnings"), Bullets(report.input_warnings)]
    blocks += [Heading("Trace"), trace_facts(report.trace)]
    blocks += [Heading("MMU seen"), replay_facts(report)]
    if report.figures:  # near the top: the timeline is the overview a browser reader wants first
        blocks += [Heading("Plots"), *(Plot(f) for f in report.figures)]
    # what went wrong, then what each memslot change did, then the layout; then how each check fared
    blocks += [Heading("Findings"), *finding_blocks(report)]
    blocks += [Heading("Zap ledger"), *ledger_blocks(report)]
    blocks += [Heading("Consequences"), *consequence_blocks(report)]
    blocks += [Heading("Memslots"), *grid_blocks(report.memslot_timeline)]
    for g in (*report.totals, *report.activity):
        blocks += grid_blocks(g)
    blocks += [Heading("Checks"), Table(checks_grid(report))]
    blocks += [Heading("Shadow pages"), *grid_blocks(report.sp_lifetimes)]
    blocks += [Heading("What if"), *grid_blocks(report.whatif_totals), *grid_blocks(report.whatif)]
    blocks += [Heading("What the trace could not show")]
    blocks.append(Bullets(report.limits) if report.limits else Para("Nothing noted."))
    blocks += [Heading("Assumptions"), Bullets(report.assumptions) if report.assumptions else Para("None stated.")]
    if len(report.unexplained):
        blocks += grid_blocks(report.unexplained)
    return blocks


def trace_blocks(t: TraceFacts, event_counts: dict[str, int]) -> list[Block]:
    """A trace on its own, before any replay: its facts and its event counts."""
    counts = sorted(event_counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [Heading(f"trace {t.file}", 3), trace_facts(t), Table(Grid("events", ("event", "count"), tuple(counts)))]
