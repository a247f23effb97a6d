"""Repeated findings of one cause, grouped: what the human formats print instead of every instance.

A four-vCPU run can give hundreds of findings of one pattern; printed one by one they bury a
single real error further down. A group is every finding with the same check id, severity and
*cause*. The replay's findings carry no cause key, so the report derives one (the replay's
FINDINGS_SCHEMA is left as it is): the message with its numbers taken out. Detectors write one
sentence per situation and fill in gfns, seqs, slots, levels and SPTE values, so two findings
whose sentences differ only in those numbers describe the same kernel behaviour at different
places; a different anchor, kind of change or explanation changes the words and so the group.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

#: Human formats print this many findings of a group in full, with their evidence lines.
EXAMPLES_PER_GROUP = 3

#: Severity order of the report: a single error comes before any number of warnings and notes.
SEVERITY_RANK = {"error": 0, "warning": 1, "info": 2}

_NUMBER = re.compile(r"\b(?:0x[0-9a-fA-F]+|\d+)\b")


def cause_of(message: str) -> str:
    """The message with every number (hex or decimal) replaced by ``#``: the group's cause."""
    return _NUMBER.sub("#", message)


@dataclass(frozen=True)
class FindingGroup:
    """Findings of one id, severity and cause; ``members`` index ``Report.findings`` in seq order."""

    id: str
    severity: str
    cause: str
    members: tuple[int, ...]
    first_seq: int | None
    last_seq: int | None
    first_ts: int | None
    last_ts: int | None
    gfn_first: int | None
    gfn_last: int | None
    #: distinct gfns among the members (a range of 2 gfns and a range of 500 read differently)
    gfns: int
    slots: tuple[int, ...]
    cpus: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.members)

    @property
    def examples(self) -> tuple[int, ...]:
        return self.members[:EXAMPLES_PER_GROUP]


class _Row(Protocol):
    """The fields of one finding a group needs (read-only: findings are frozen)."""

    @property
    def id(self) -> str: ...
    @property
    def severity(self) -> str: ...
    @property
    def message(self) -> str: ...
    @property
    def seq(self) -> int | None: ...
    @property
    def ts(self) -> int | None: ...
    @property
    def gfn(self) -> int | None: ...
    @property
    def slot(self) -> int | None: ...
    @property
    def cpu(self) -> int | None: ...


def group_findings(findings: Sequence[_Row]) -> tuple[FindingGroup, ...]:
    """Groups in report order: by severity (errors first), then by the seq of their first member."""
    keyed: dict[tuple[str, str, str], list[int]] = {}
    for i, f in enumerate(findings):
        keyed.setdefault((f.id, f.severity, cause_of(f.message)), []).append(i)
    groups = [_group(key, idx, findings) for key, idx in keyed.items()]
    groups.sort(key=lambda g: (SEVERITY_RANK.get(g.severity, len(SEVERITY_RANK)),
                               g.first_seq if g.first_seq is not None else -1, g.id))
    return tuple(groups)


def _group(key: tuple[str, str, str], idx: list[int], findings: Sequence[_Row]) -> FindingGroup:
    members = sorted(idx, key=lambda i: (findings[i].seq is None, findings[i].seq or 0, i))
    seqs = [(findings[i].seq, findings[i].ts) for i in members if findings[i].seq is not None]
    gfns = sorted({g for i in members if (g := findings[i].gfn) is not None})
    return FindingGroup(
        id=key[0], severity=key[1], cause=key[2], members=tuple(members),
        first_seq=seqs[0][0] if seqs else None, last_seq=seqs[-1][0] if seqs else None,
        first_ts=seqs[0][1] if seqs else None, last_ts=seqs[-1][1] if seqs else None,
        gfn_first=gfns[0] if gfns else None, gfn_last=gfns[-1] if gfns else None, gfns=len(gfns),
        slots=tuple(sorted({s for i in members if (s := findings[i].slot) is not None})),
        cpus=tuple(sorted({c for i in members if (c := findings[i].cpu) is not None})),
    )
