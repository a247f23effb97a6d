"""Findings and check outcomes, and the rule that lost events can never yield an error.

Detectors build :class:`Finding` objects with the evidence seqs; :func:`finalize` downgrades any
error whose evidence interval overlaps a lost-event window (design principle: nothing that depends
on the missing interval becomes an error) and turns everything into the contract's Arrow tables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from kvmtrace.replays.checks import CHECK_IDS, SEVERITY
from kvmtrace.replays.digest import END as DIGEST_END
from kvmtrace.replays.digest import Digest
from kvmtrace.replays.results import CHECKS_SCHEMA, FINDINGS_SCHEMA

#: A finding's ``horizon`` when its verdict depends on everything up to the trace's end (also the
#: far side of a gap no record followed).
END = DIGEST_END


@dataclass
class Finding:
    id: str
    seq: int | None
    gfn: int | None
    slot: int | None
    message: str
    evidence: list[int]
    severity: str = ""
    #: The last seq the verdict depends on beyond the evidence (an event that, had it come before,
    #: would refute it; END: anything up to the trace's end). None: the evidence alone.
    horizon: int | None = None

    def __post_init__(self) -> None:
        if not self.severity:
            self.severity = SEVERITY[self.id]


@dataclass
class CheckOutcome:
    """What one check concluded: ``passed``/``failed``/``not_evaluated``, why, and its findings."""

    id: str
    status: str
    reason: str
    findings: list[Finding] = field(default_factory=list)

    @classmethod
    def of(cls, check: str, findings: list[Finding], passed_reason: str, evaluated_reason: str = "") -> CheckOutcome:
        """``failed`` when any finding is at the check's own severity, else ``passed``.

        An ``info`` check (a normal consequence of where the trace starts) never fails."""
        bad = [f for f in findings if f.severity == SEVERITY[check]]
        if bad and SEVERITY[check] != "info":
            return cls(check, "failed", evaluated_reason or f"{len(bad)} finding(s)", findings)
        if bad:
            passed_reason = f"{len(bad)} informational finding(s)"
        return cls(check, "passed", passed_reason, findings)

    @classmethod
    def skipped(cls, check: str, reason: str) -> CheckOutcome:
        return cls(check, "not_evaluated", reason)


class LostWindows:
    """Seq intervals in which some CPU dropped events: ``(last seq before, first seq after]``.

    A file cut short (the reader salvaged what was complete) also hides the tail: each CPU's
    stream stops at its own point, so after the earliest of those stops the other CPUs' events
    go on while that CPU's are missing (a memslot line, a zap). That tail is one more window,
    ``(earliest last seq, END)``; which CPUs were cut is not known, so the earliest counts. A CPU
    of the recording (``cpus``) with no event left may have lost its whole stream: then the window
    is the whole trace."""

    def __init__(self, digest: Digest, cut_short: bool = False, cpus: int = 0):
        self.lo = digest.gap_lo  # each gap's CPU's last event before it (:mod:`kvmtrace.replays.digest`)
        self.hi = digest.gap_hi
        self.tail: int | None = None  # first seq of the cut-short tail window's open interval
        if cut_short and digest.cpu_last:
            self.tail = min(digest.cpu_last.values()) if len(digest.cpu_last) >= cpus else -1
            self.lo = np.r_[self.lo, self.tail]
            self.hi = np.r_[self.hi, END]

    def __bool__(self) -> bool:
        return bool(len(self.lo))

    def overlaps(self, first: int, last: int) -> bool:
        return bool(np.any((self.lo < last) & (self.hi > first)))

    def words(self, first: int, last: int) -> str:
        """Why a finding over ``[first, last]`` is uncertain (the prefix of its message)."""
        gap = np.any((self.lo < last) & (self.hi > first) & (self.hi != END))
        if self.tail is not None and self.tail < last and not gap:
            return f"uncertain, the file was cut short ({self.tail_words()} some CPU's events are missing, and this " \
                   "depends on them): "
        return "uncertain, events were lost in between: "

    def tail_words(self) -> str:
        """Where the cut-short tail starts, in words."""
        return f"after seq {self.tail}" if self.tail is not None and self.tail >= 0 else \
            "from the start (a whole CPU stream is gone)"


def finalize(outcomes: list[CheckOutcome], lost: LostWindows,
             locate: Callable[[int], tuple[int | None, int | None]]) -> tuple[pa.Table, pa.Table]:
    """Apply the lost-event rule (over each finding's evidence and horizon) and build (findings,
    checks) tables in CHECK_IDS order."""
    by_id = {o.id: o for o in outcomes}
    rows: dict[str, list[object]] = {f.name: [] for f in FINDINGS_SCHEMA}
    checks: dict[str, list[object]] = {f.name: [] for f in CHECKS_SCHEMA}
    for cid in CHECK_IDS:
        o = by_id.get(cid) or CheckOutcome.skipped(cid, "not implemented yet")
        for f in o.findings:
            ev = [s for s in f.evidence if s is not None and s >= 0]
            # an error check's finding that its detector already judged uncertain (a warning) names
            # the lost interval too: the reader is owed every reason for the doubt
            doubtful = f.severity == "error" or (f.severity == "warning" and SEVERITY[cid] == "error")
            if doubtful and lost and ev:
                last = max([*ev, f.horizon]) if f.horizon is not None else max(ev)
                if lost.overlaps(min(ev), last):
                    f.severity = "warning"
                    f.message = lost.words(min(ev), last) + f.message
            ts, cpu = locate(f.seq) if f.seq is not None else (None, None)
            for k, v in (("id", f.id), ("severity", f.severity), ("seq", f.seq), ("ts", ts), ("cpu", cpu),
                         ("gfn", f.gfn), ("slot", f.slot), ("message", f.message), ("evidence", ev)):
                rows[k].append(v)
        if o.status == "failed" and not any(f.severity == SEVERITY[cid] for f in o.findings):
            o.status = "passed"
            o.reason = "findings only where events were lost or the file was cut short (downgraded to warnings)"
        for k, v in (("id", cid), ("status", o.status), ("reason", o.reason), ("findings", len(o.findings))):
            checks[k].append(v)
    return pa.table(rows, schema=FINDINGS_SCHEMA), pa.table(checks, schema=CHECKS_SCHEMA)
