"""The trace-cmd oracle: run ``trace-cmd report -R -t`` and parse what it prints.

``-R`` prints every event as ``comm-pid [cpu] sec.nsec: event: name=value ...`` with the raw
field values (libtraceevent ``tep_record_print_fields``), ``-t`` prints nanosecond timestamps.
How a number is printed follows libtraceevent's ``print_field``: when the event's print fmt
passes ``REC->field`` straight to a conversion, that conversion is used (``%llx`` prints hex
*without* ``0x``, so "8000000000000000" is hex there); otherwise pointers and ``long`` fields
print as ``0x…`` and the rest in decimal. :func:`field_conversions` recovers that mapping from
the print fmt text, independently of the reader under test.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

_HEAD_RE = re.compile(
    r"^\s*(?P<comm>.*?)-(?P<pid>-?\d+)\s+\[(?P<cpu>\d+)\]\s+(?P<sec>\d+)\.(?P<nsec>\d{9}):\s+"
    r"(?P<event>[^:\s]+):\s?(?P<body>.*)$"
)
_DROPPED_RE = re.compile(r"^CPU:(?P<cpu>\d+) \[(?:(?P<n>\d+) )?EVENTS DROPPED\]")


@dataclass
class OracleEvent:
    comm: str
    pid: int
    cpu: int
    ts: int
    event: str
    body: str


@dataclass
class OracleReport:
    events: list[OracleEvent] = field(default_factory=list)
    #: (cpu, count or None) for every "CPU:N [EVENTS DROPPED]" line, in order.
    dropped: list[tuple[int, int | None]] = field(default_factory=list)


def run_report(trace_cmd: str, path: Path, *extra: str) -> OracleReport:
    """Run ``trace-cmd report -R -t`` and parse every event (continuation lines join the body)."""
    out = subprocess.run([trace_cmd, "report", "-R", "-t", *extra, "-i", str(path)],
                         capture_output=True, check=True).stdout.decode("utf-8", "replace")
    report = OracleReport()
    lines = out.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline ending the last line, not an empty line of an event body
    for line in lines:
        m = _HEAD_RE.match(line)
        if m:
            report.events.append(OracleEvent(
                comm=m["comm"], pid=int(m["pid"]), cpu=int(m["cpu"]),
                ts=int(m["sec"]) * 1_000_000_000 + int(m["nsec"]), event=m["event"], body=m["body"].lstrip(" ")))
            continue
        d = _DROPPED_RE.match(line)
        if d:
            report.dropped.append((int(d["cpu"]), int(d["n"]) if d["n"] else None))
        elif report.events:  # a field value with embedded newlines (print buf, bprint)
            report.events[-1].body += "\n" + line
    return report


def split_fields(body: str, names: list[str]) -> dict[str, str]:
    """Split ``a=1 b=x y c=3`` knowing the field names in order (values may contain spaces)."""
    out: dict[str, str] = {}
    rest = body
    for i, name in enumerate(names):
        prefix = f"{name}="
        if not rest.startswith(prefix):
            break
        rest = rest[len(prefix):]
        end = len(rest)
        for nxt in names[i + 1:i + 2]:
            at = rest.find(f" {nxt}=")
            if at >= 0:
                end = at
        out[name] = rest[:end]
        rest = rest[end + 1:]
    return out


def _split_args(text: str) -> list[str]:
    """Split a print fmt argument list at top-level commas."""
    args, depth, cur, quote = [], 0, [], False
    for ch in text:
        if ch == '"':
            quote = not quote
        if not quote:
            if ch in "([{":
                depth += 1
            elif ch in ")]}":
                depth -= 1
            elif ch == "," and depth == 0:
                args.append("".join(cur).strip())
                cur = []
                continue
        cur.append(ch)
    if cur:
        args.append("".join(cur).strip())
    return args


def field_conversions(print_fmt: str) -> dict[str, str]:
    """Field name → printf conversion letter, for args that are exactly ``REC->field``."""
    m = re.match(r'^"((?:[^"\\]|\\.)*)"\s*,?(.*)$', print_fmt, re.S)
    if not m:
        return {}
    fmt, rest = m.group(1), m.group(2)
    convs = re.findall(r"%(?!%)[-+ #0-9.*]*(?:hh|h|ll|l|L|z|Z)*([a-zA-Z])", fmt.replace("%%", ""))
    out: dict[str, str] = {}
    for conv, arg in zip(convs, _split_args(rest)):
        am = re.fullmatch(r"(?:\(\s*[\w\s*]+\)\s*)*REC->(\w+)", arg.strip())  # casts allowed
        if am:
            out.setdefault(am.group(1), conv)
    return out


def parse_number(text: str, conversion: str | None) -> int | None:
    """A printed integer: ``0x…`` or a hex conversion → base 16, else base 10.

    ``None`` for a ``%ps``-style conversion that trace-cmd printed as a kernel symbol name
    (``ip=tracing_mark_write``): the number itself is not in the text.
    """
    text = text.strip()
    if conversion == "p" and not re.fullmatch(r"(0x)?[0-9a-fA-F]+", text):
        return None
    if text.lower().startswith("0x"):
        return int(text, 16)
    if conversion in ("x", "X"):
        return int(text, 16)
    return int(text, 10)
