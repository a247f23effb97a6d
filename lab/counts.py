#!/usr/bin/env python3
"""Per-event counts of one recording, from two independent readers, plus the ring-buffer stats.

Usage: counts.py OUT.dat OUT.txt.gz > OUT.counts.txt

`trace-cmd report` (libtraceevent's reading of the .dat) and the kernel's own text (`trace`,
saved before extraction) are counted separately so a reader under test can be checked against
either; `report_matches_text` says whether they agree. Lost events: `trace-cmd report` prints
lost-event markers; the kernel's text header says `entries-in-buffer/entries-written: A/B`,
and B - A events were overwritten (the buffer runs in overwrite mode).
"""

from __future__ import annotations

import gzip
import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field

# "comm-pid [cpu] (flags) ts: event: ..." -- flags only in the kernel text.
EVENT = re.compile(
    r"^\s*(?P<comm>.+?)-(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+(?:\S+\s+)?"
    r"(?P<ts>\d+\.\d+):\s+(?P<name>[\w]+):\s?(?P<rest>.*)$"
)
LOST = re.compile(r"LOST (\d+) EVENTS|(\d+) EVENTS DROPPED|\[(?:LOST )?EVENTS(?: DROPPED)?\]")


@dataclass
class Tally:
    """What one reader saw."""

    events: Counter = field(default_factory=Counter)
    markers: Counter = field(default_factory=Counter)
    comms: Counter = field(default_factory=Counter)
    first: float | None = None
    last: float | None = None
    lost_markers: int = 0
    lost_reported: int = 0

    def add_line(self, line: str) -> None:
        lost = LOST.search(line)
        if lost and not EVENT.match(line):
            self.lost_markers += 1
            self.lost_reported += int(lost.group(1) or lost.group(2) or 0)
            return
        m = EVENT.match(line)
        if not m:
            return
        name, rest = m["name"], m["rest"]
        if name == "print":  # trace-cmd report: "print: tracing_mark_write: msg" (ip may precede)
            rest = rest.split("tracing_mark_write:", 1)[-1]
        if name in ("print", "tracing_mark_write"):
            name = "print"
            self.markers[rest.strip().split(" ", 1)[0] if rest.strip() else ""] += 1
        self.events[name] += 1
        self.comms[m["comm"].strip()] += 1
        ts = float(m["ts"])
        self.first = ts if self.first is None else self.first
        self.last = ts

    def render(self, title: str, header: str = "") -> str:
        total = sum(self.events.values())
        span = (self.last or 0) - (self.first or 0)
        out = [f"## {title}", f"total_events {total}"]
        if header:
            out.append(header)
        out.append(f"time_span_s {span:.6f}  (first {self.first or 0:.6f} last {self.last or 0:.6f})")
        out.append(f"lost_event_markers {self.lost_markers} lost_events_reported {self.lost_reported}")
        out += [f"{n:>12}  {k}" for k, n in self.events.most_common()]
        out.append("trace_marker lines by first word:")
        out += [f"{n:>12}  {k}" for k, n in self.markers.most_common()]
        out.append("events by task (comm):")
        out += [f"{n:>12}  {k}" for k, n in self.comms.most_common()]
        return "\n".join(out)


def tally(lines) -> tuple[Tally, str]:
    t, header = Tally(), ""
    for line in lines:
        if line.startswith("#"):
            if "entries-in-buffer" in line:
                header = line.lstrip("# ").strip()
            continue
        t.add_line(line)
    return t, header


def main(dat: str, txt: str) -> None:
    report = subprocess.run(["trace-cmd", "report", dat], capture_output=True, text=True, check=True)
    rep, _ = tally(report.stdout.splitlines())
    with gzip.open(txt, "rt", encoding="utf-8", errors="replace") as f:
        text, header = tally(f)
    in_buffer, written = map(int, header.split(":")[1].split()[0].split("/"))
    print(f"total_events {sum(rep.events.values())}")
    print(f"lost_events {written - in_buffer}")
    print(f"report_matches_text {rep.events == text.events}")
    print()
    print(rep.render(f"trace-cmd report: {dat.rsplit('/', 1)[-1]}"))
    print()
    print(text.render(f"ftrace text (tracing/trace): {txt.rsplit('/', 1)[-1]}", header))


if __name__ == "__main__":
    main(*sys.argv[1:3])
