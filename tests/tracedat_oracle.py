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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kvmtrace.parsers.schema import COMMON_NAMES, META_FIELD_NAME, META_PRINT_FMT, TraceData

#: The timestamp as ``sec.nsec``, or now and then as bare nanoseconds right after the CPU
#: (``[003]7615709442088:``): trace-cmd 3.1.6 printed a whole report that way twice in CI
#: (2026-12-06), the run after as ``sec.nsec``; the digits are the same nanoseconds.
_HEAD_RE = re.compile(
    r"^(?:(?P<instance>[^\s:]+):\s)?\s*(?P<comm>.*?)-(?P<pid>-?\d+)\s+\[(?P<cpu>\d+)\]"
    r"(?:\s+(?P<sec>\d+)\.(?P<nsec>\d{9})|\s*(?P<ns>\d+)):\s+(?P<event>[^:\s]+):\s?(?P<body>.*)$"
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
    events: list[OracleEvent] = field(default_factory=list)  # the top buffer's
    #: Other buffer instances' events (trace-cmd prefixes their lines with "name:").
    instances: dict[str, list[OracleEvent]] = field(default_factory=dict)
    #: (cpu, count or None) for every "CPU:N [EVENTS DROPPED]" line, in order.
    dropped: list[tuple[int, int | None]] = field(default_factory=list)
    #: What a failing comparison should show: trace-cmd's stderr, how many lines it printed and
    #: how many of those came before the first event without being one (a header or an error).
    stderr: str = ""
    lines: int = 0
    unparsed: int = 0
    #: The first few of those lines (once, trace-cmd printed 758 lines none of which parsed, and
    #: the run after printed them as events: the next failure shows what they were).
    unparsed_sample: list[str] = field(default_factory=list)

    def describe(self) -> str:
        err = self.stderr.strip().replace("\n", " | ")[:400]
        return (f"trace-cmd printed {self.lines} lines, {len(self.events)} events, {self.unparsed} unparsed line(s) "
                f"before the first event (first: {self.unparsed_sample!r}); stderr: {err or '(empty)'}")


def run_report(trace_cmd: str, path: Path, *extra: str) -> OracleReport:
    """Run ``trace-cmd report -R -t`` and parse every event (continuation lines join the body)."""
    done = subprocess.run([trace_cmd, "report", "-R", "-t", *extra, "-i", str(path)], capture_output=True, check=True)
    out = done.stdout.decode("utf-8", "replace")
    report = OracleReport(stderr=done.stderr.decode("utf-8", "replace"))
    lines = out.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline ending the last line, not an empty line of an event body
    report.lines = len(lines)
    last: OracleEvent | None = None
    for line in lines:
        m = _HEAD_RE.match(line)
        if m:
            last = OracleEvent(
                comm=m["comm"], pid=int(m["pid"]), cpu=int(m["cpu"]),
                ts=int(m["ns"]) if m["ns"] is not None else int(m["sec"]) * 1_000_000_000 + int(m["nsec"]),
                event=m["event"], body=m["body"].lstrip(" "))
            if m["instance"]:
                report.instances.setdefault(m["instance"], []).append(last)
            else:
                report.events.append(last)
            continue
        d = _DROPPED_RE.match(line)
        if d:
            report.dropped.append((int(d["cpu"]), int(d["n"]) if d["n"] else None))
        elif last is not None:  # a field value with embedded newlines (print buf, bprint)
            last.body += "\n" + line
        else:
            report.unparsed += 1
            if len(report.unparsed_sample) < 3:
                report.unparsed_sample.append(line[:200])
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
    if conversion == "s":  # a pointer field (``const char *reason``) printed raw: hex, no 0x
        return int(text, 16)
    return int(text, 10)


def _is_byte_list(typ: pa.DataType) -> bool:
    return (pa.types.is_list(typ) or pa.types.is_fixed_size_list(typ)) and typ.value_type.bit_width == 8


def printed_names(table: pa.Table) -> dict[str, str]:
    """Field name as ``trace-cmd report -R`` prints it → the column holding it, in format order.

    A column renamed because it shares a common column's name (``pid_``) keeps its format-file
    name in its field metadata; bprint's ``fmt`` is printed as the address (``fmt_addr``).
    """
    out = {}
    for f in table.schema:
        if f.name in COMMON_NAMES or f.name.startswith("common_") or f.name == "fmt_addr":
            continue
        name = (f.metadata or {}).get(META_FIELD_NAME, f.name.encode()).decode()
        out[name] = "fmt_addr" if name == "fmt" and "fmt_addr" in table.column_names else f.name
    return out


def _compare_fields(table: pa.Table, bodies: list[str], stride: int) -> int:
    """Compare every comparable column of ``table`` with the oracle's printed values."""
    convs = field_conversions(table.schema.metadata.get(META_PRINT_FMT, b"").decode())
    names = printed_names(table)
    columns = {}
    for name, col_name in names.items():
        col = table.column(col_name)
        if (pa.types.is_integer(col.type) or pa.types.is_boolean(col.type) or pa.types.is_string(col.type)
                or _is_byte_list(col.type)):
            columns[name] = (col.type, col.to_pylist())
    checked = 0
    for i in range(0, table.num_rows, stride):
        printed = split_fields(bodies[i], list(names))
        for name, (typ, values) in columns.items():
            if name not in printed:
                continue
            want = values[i]
            text = printed[name]
            if text.startswith("ARRAY[") and _is_byte_list(typ):  # libtraceevent's bytes dump
                assert [int(b, 16) for b in text[6:-1].split(", ") if b] == [v & 0xFF for v in want], (
                    f"row {i} {name}: trace-cmd {text!r} != {want}")
            elif pa.types.is_string(typ):
                # trace-cmd ends each event with one newline, merging it with a value's own
                # trailing "\n" (trace_marker writes keep theirs; the column keeps it too).
                if want.endswith("\n") and not text.endswith("\n"):
                    want = want[:-1]
                assert text == want, f"row {i} {name}: trace-cmd {text!r} != {want!r}"
            else:
                number = parse_number(text, convs.get(name))
                if number is None:
                    continue
                bits = typ.bit_width if pa.types.is_integer(typ) else 8
                assert number % (1 << bits) == int(want) % (1 << bits), f"row {i} {name}: trace-cmd {text!r} != {want}"
            checked += 1
    return checked


def assert_matches(data: TraceData, report: OracleReport, field_limit: int = 10**9) -> int:
    """Assert ``data`` shows what trace-cmd printed; return the number of field values compared.

    Same events in the same order with equal ts (ns), cpu, pid, comm and event name; then every
    integer, bool, string and byte-array field equal to the printed value (on every k-th event
    above ``field_limit`` events).
    """
    ev = data.events
    assert ev.num_rows == len(report.events), f"event count differs from trace-cmd report: {report.describe()}"
    assert sum(data.info.event_counts.values()) == ev.num_rows
    if ev.num_rows == 0:
        return 0
    assert np.array_equal(ev["ts"].to_numpy(), np.array([e.ts for e in report.events], np.int64))
    assert ev["cpu"].to_pylist() == [e.cpu for e in report.events]
    assert ev["pid"].to_pylist() == [e.pid for e in report.events]
    assert ev["comm"].to_pylist() == [e.comm for e in report.events]
    names = [n.split(":")[-1] for n in ev["event"].cast(pa.string()).to_pylist()]
    assert names == [e.event for e in report.events]
    stride = 1 if ev.num_rows <= field_limit else 1 + ev.num_rows // field_limit
    checked = 0
    for table in data.tables.values():
        if table.num_rows == 0:
            continue
        bodies = [report.events[s].body for s in table["seq"].to_numpy()]
        checked += _compare_fields(table, bodies, stride)
    assert checked > 0 or all(t.num_columns == len(COMMON_NAMES) for t in data.tables.values())
    return checked


def cpu_rows(data: TraceData, cpu: int) -> list[tuple]:
    """One CPU's events in order as (ts, pid, comm, event): what damage elsewhere must not change."""
    ev = data.events.filter(pc.equal(data.events["cpu"], cpu))
    return list(zip(ev["ts"].to_pylist(), ev["pid"].to_pylist(), ev["comm"].to_pylist(),
                    ev["event"].cast(pa.string()).to_pylist()))
