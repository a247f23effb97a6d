"""``kvmtrace diff``: two reports side by side — what changed between a good and a bad run.

Built only from two :class:`Report` objects (never from the traces), so a diff says exactly
what the two single reports say. The summary totals (per memslot, or overall for zap-all
costs) are matched by title and keyed by memslot; every count present in both gets a B - A
delta.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from kvmtrace.report.blocks import Block, Facts, Heading, Para, Table
from kvmtrace.report.grid import Grid
from kvmtrace.report.jsonout import grid_dict
from kvmtrace.report.model import Report


@dataclass(frozen=True)
class DiffReport:
    a: Report
    b: Report
    overview: Grid
    checks: Grid  # every check, with both statuses; ``changed`` marks the ones that differ
    findings: Grid  # finding counts per id
    activity: tuple[Grid, ...]  # per summary total, per memslot and count: A, B and B - A
    #: memslot deletes/moves of both runs aligned by range and order, with what each side
    #: zapped, kept and refaulted
    operations: Grid = Grid("memslot operations", ())

    @property
    def changed_checks(self) -> int:
        return sum(1 for row in self.checks.rows if row[-1])


def _overview(a: Report, b: Report) -> Grid:
    def facts(r: Report) -> list[Any]:
        return [r.trace.file, r.trace.kernel, r.replay.mmu, r.replay.zap_policy, r.trace.events,
                f"{r.trace.span_s:.6f} s", r.trace.lost_events,
                f"{100 * r.replay.explained_share:.1f}%", r.count("error"), r.count("warning")]

    names = ["file", "kernel", "mmu", "zap policy", "events", "span", "lost events", "explained",
             "errors", "warnings"]
    return Grid("overview", ("measure", "A", "B"), tuple(zip(names, facts(a), facts(b))))


def _checks(a: Report, b: Report) -> Grid:
    sa = {c.id: c for c in a.checks}
    sb = {c.id: c for c in b.checks}
    ids = list(sa) + [i for i in sb if i not in sa]
    rows = []
    for i in ids:
        ca, cb = sa.get(i), sb.get(i)
        st_a = ca.status if ca else "absent"
        st_b = cb.status if cb else "absent"
        n_a = ca.findings if ca else 0
        n_b = cb.findings if cb else 0
        rows.append((i, st_a, st_b, n_a, n_b, st_a != st_b or n_a != n_b))
    return Grid("checks", ("check", "A", "B", "findings A", "findings B", "changed"), tuple(rows))


def _findings(a: Report, b: Report) -> Grid:
    ca = Counter((f.id, f.severity) for f in a.findings)
    cb = Counter((f.id, f.severity) for f in b.findings)
    keys = sorted(set(ca) | set(cb))
    return Grid("findings per id", ("finding", "severity", "A", "B", "B - A"),
                tuple((k[0], k[1], ca[k], cb[k], cb[k] - ca[k]) for k in keys))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def activity_delta(ga: Grid, gb: Grid) -> Grid:
    """Join two activity grids on their first column; every numeric column present in both
    becomes one row (key, measure, A, B, B - A). Long rather than wide, so it fits 80 columns
    whatever the replay's summary holds; a key missing on one side is absent, not zero."""
    key = ga.columns[0]
    ra = {row[0]: dict(zip(ga.columns, row)) for row in ga.rows}
    rb = {row[0]: dict(zip(gb.columns, row)) for row in gb.rows}
    sample = [*ra.values(), *rb.values()]
    numeric = [c for c in ga.columns[1:] if c in gb.columns
               and any(_is_number(r.get(c)) for r in sample)
               and all(r.get(c) is None or _is_number(r.get(c)) for r in sample)]
    rows = []
    for k in sorted(set(ra) | set(rb), key=lambda v: (v is None, str(v))):
        for c in numeric:
            va, vb = ra.get(k, {}).get(c), rb.get(k, {}).get(c)
            rows.append((k, c, va, vb, vb - va if va is not None and vb is not None else None))
    return Grid(ga.title, (key, "measure", "A", "B", "B - A"), tuple(rows),
                hexadecimal=frozenset({key}) & ga.hexadecimal)


def _activity(a: Report, b: Report) -> tuple[Grid, ...]:
    gb = {g.title: g for g in b.totals if g.columns}
    return tuple(activity_delta(g, gb[g.title]) for g in a.totals if g.columns and g.title in gb)


def _refaults(r: Report) -> dict[int, tuple[int | None, int | None]]:
    """seq -> (pages, SPTEs) the guest refaulted after that change, under the run's own policy
    (the what-if's exact rows)."""
    return {w["seq"]: (w.get("pages_refaulted"), w.get("sptes_refaulted"))
            for w in r.whatif.records() if w.get("trace_policy")}


def _keyed(r: Report) -> dict[tuple[str, int, int, int], dict[str, Any]]:
    """Each removal's ledger row under (kind, base gfn, size, how many times that key came
    before): two runs of one scenario do the same operations in the same order, at different
    seqs and with slot ids QEMU may hand out differently."""
    seen: Counter[tuple[str, int, int]] = Counter()
    out = {}
    for row in r.removals.rows():
        k = (row["kind"], row["base_gfn"], row["npages"])
        out[(*k, seen[k])] = row
        seen[k] += 1
    return out


OPERATION_COLUMNS = ("op", "kind", "gfns", "seq A", "seq B", "policy A", "policy B", "zapped A", "zapped B",
                     "kept A", "kept B", "refaulted A", "refaulted B", "sptes refaulted A", "sptes refaulted B")


def operations_grid(a: Report, b: Report) -> Grid:
    """Per memslot delete/move present in either run (aligned by range and order, not by seq):
    each side's seq, policy, pages zapped and kept (the zap ledger) and what the guest refaulted
    afterwards (the what-if); a side without that operation is null."""
    ka, kb = _keyed(a), _keyed(b)
    ra, rb = _refaults(a), _refaults(b)
    keys = list(ka) + [k for k in kb if k not in ka]
    rows = []
    for n, k in enumerate(keys, 1):
        xa, xb = ka.get(k), kb.get(k)

        def side(x: dict[str, Any] | None, refaults: dict) -> tuple:
            if x is None:
                return None, None, None, None, None, None
            pages, sptes = refaults.get(x["seq"], (None, None))
            return x["seq"], x["policy"], x["pages_zapped"], x["pages_kept"], pages, sptes

        sa, sb = side(xa, ra), side(xb, rb)
        rows.append((n, k[0], f"{k[1]:#x}+{k[2]:#x}", *(v for pair in zip(sa, sb) for v in pair)))
    return Grid("memslot operations, aligned by range and order", OPERATION_COLUMNS, tuple(rows))


_POLICY_WORD = {"zap_all": "all", "zap_slot": "slot"}


def operations_brief(g: Grid) -> Grid:
    """The operations as people read them: each measure as one ``A/B`` cell, so a row fits a
    line (the JSON keeps A and B as separate numbers)."""
    def pair(x, y) -> str:
        return f"{'-' if x is None else _POLICY_WORD.get(x, x)}/{'-' if y is None else _POLICY_WORD.get(y, y)}"

    rows = tuple((r[0], r[1], r[2], *(pair(r[i], r[i + 1]) for i in range(3, len(r), 2))) for r in g.rows)
    return Grid(g.title, ("op", "kind", "gfns", "seq", "policy", "zapped", "kept", "refault", "sptes"), rows)


def build_diff(a: Report, b: Report) -> DiffReport:
    return DiffReport(a, b, _overview(a, b), _checks(a, b), _findings(a, b), _activity(a, b), operations_grid(a, b))


def diff_blocks(d: DiffReport) -> list[Block]:
    changed = Grid("checks that changed", d.checks.columns[:-1],
                   tuple(row[:-1] for row in d.checks.rows if row[-1]))
    blocks: list[Block] = [
        Heading(f"kvmtrace diff: {d.a.trace.file} vs {d.b.trace.file}", 1),
        Facts((("A", d.a.trace.file), ("B", d.b.trace.file))),
        Para(f"{d.changed_checks} of {len(d.checks.rows)} checks changed; errors {d.a.count('error')} -> "
             f"{d.b.count('error')}, warnings {d.a.count('warning')} -> {d.b.count('warning')}."),
        Heading("Overview"), Table(d.overview),
        Heading("Checks that changed"),
        Table(changed) if changed.rows else Para("No check changed status or finding count."),
        Heading("Findings"), Table(d.findings) if d.findings.rows else Para("Neither trace has findings."),
        Heading("Memslot operations"),
        Para("Each delete or move of run A beside the same operation of run B (same kind and range, same "
             "place among the operations on that range); every cell is A/B. policy: all = zap-all, slot = "
             "zap-slot; zapped, kept: shadow pages (the zap ledger); refault: pages the guest built again "
             "afterwards, sptes: leaf SPTEs it refaulted (the what-if)."),
        Table(operations_brief(d.operations)) if d.operations.rows else Para("Neither run deletes or moves a memslot."),
        Heading("Activity"),
    ]
    if not d.activity:
        blocks.append(Para("The two replays share no activity table to compare."))
    for g in d.activity:
        blocks += [Heading(g.title, 3), Table(g)]
    return blocks


def diff_dict(d: DiffReport) -> dict[str, Any]:
    return {
        "kvmtrace_version": d.a.kvmtrace_version,
        "a": d.a.trace.file,
        "b": d.b.trace.file,
        "overview": grid_dict(d.overview),
        "checks": grid_dict(d.checks),
        "findings": grid_dict(d.findings),
        "activity": [grid_dict(g) for g in d.activity],
        "operations": grid_dict(d.operations),
    }
