"""Terminal and markup safety: control characters from a trace never reach a report raw.

Hand-made from a real recording (no real trace names a task with escape sequences): every
event's task name, the trace's path and the tail of every ```trace_marker`` line of the upstream
6.12 TDP churn recording (whose fault_in_update_window findings cite QEMU's memslot lines)
become a sequence that would retitle a terminal and clear its screen.
"""

from __future__ import annotations

import dataclasses
import html
import json
import re

import pyarrow as pa
import pytest
from conftest import NESTED, SAMPLES

from kvmtrace import parsers
from kvmtrace.replays import replay
from kvmtrace.report import build_report, render
from kvmtrace.report.markdown import md_escape
from kvmtrace.report.safe import printable
from kvmtrace.report.traceinfo import render_info

REAL = NESTED / "tdp-churn-noquirk-small-kt.dat"
PROBE = "\x1b]0;pwned\x07\x1b[2J"
SHOWN = r"\x1b]0;pwned\x07\x1b[2J"
#: any control character but the newline that ends each line of a report
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def _with_comm(table: pa.Table, value: str) -> pa.Table:
    i = table.schema.get_field_index("comm")
    return table.set_column(i, table.schema.field(i), pa.array([value] * table.num_rows, table.schema.field(i).type))


@pytest.fixture(scope="module")
def probed():
    data = parsers.read(REAL)
    tables = {n: _with_comm(t, PROBE) for n, t in data.tables.items()}
    prints = tables["print"]
    bufs = [b.rstrip("\n") + " " + PROBE for b in prints.column("buf").to_pylist()]
    tables["print"] = prints.set_column(prints.schema.get_field_index("buf"), "buf",
                                        pa.array(bufs, prints.schema.field("buf").type))
    info = dataclasses.replace(data.info, path=f"{PROBE}.dat")
    data = dataclasses.replace(data, info=info, tables=tables, events=_with_comm(data.events, PROBE))
    result = replay(data)
    assert result.memslots.num_rows == replay(parsers.read(REAL)).memslots.num_rows
    report = build_report(data, result, path=f"{PROBE}.dat", version="test")
    assert report.findings and any("print:" in ln for f in report.findings for ln in f.evidence_lines)
    return report, {fmt: render(report, fmt) for fmt in ("text", "markdown", "html", "json")}


@pytest.mark.parametrize("fmt", ["text", "markdown", "html", "json"])
def test_no_control_character_reaches_the_output(probed, fmt):
    _, out = probed
    assert not RAW_CONTROL.search(out[fmt])


def test_text_shows_the_escapes(probed):
    report, out = probed
    squeezed = "".join(out["text"].split())
    assert f"file:{SHOWN}.dat" in squeezed
    cited = [ln for f in report.findings for ln in f.evidence_lines]
    assert cited
    for line in cited:  # task names in every evidence line; marker text in the print lines
        assert "".join(printable(line).split()) in squeezed
        assert line.startswith(PROBE)
    assert any(f"{SHOWN}" in ln and "buf=kvm_set_user_memory" in ln for ln in map(printable, cited))


def test_markdown_shows_the_escapes_in_prose_and_code(probed):
    report, out = probed
    md = out["markdown"]
    assert md_escape(f"{PROBE}.dat") in md and "\\\\x1b" in md_escape(PROBE)
    code = "\n".join(body for _, body in re.findall(r"(`{3,})\n(.*?)\n\1", md, flags=re.S))
    for f in report.findings:
        for line in f.evidence_lines:
            assert printable(line) in code


def test_html_escapes_markup_and_shows_the_escapes(probed):
    report, out = probed
    page = out["html"]
    assert html.escape(printable(f"{PROBE}.dat")) in page
    for f in report.findings:
        for line in f.evidence_lines:
            assert html.escape(printable(line)) in page


def test_json_keeps_the_exact_string_escaped(probed):
    _, out = probed
    doc = json.loads(out["json"])
    assert doc["trace"]["path"] == f"{PROBE}.dat"  # exact for machines, \u001b on the wire
    assert "\\u001b]0;pwned\\u0007" in out["json"]


def test_info_on_a_terminal_shows_the_escapes():
    info = dataclasses.replace(parsers.read(SAMPLES / "mmio-zapslot.dat").info, path=f"{PROBE}.dat")
    text = render_info(info)
    assert not RAW_CONTROL.search(text) and f"{SHOWN}.dat" in text
