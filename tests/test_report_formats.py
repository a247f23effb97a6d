"""Every report format for every real recording, checked against facts that do not come from
the report code: trace-cmd's event counts (``.counts.txt``), the replay's own tables, and the
JSON Schema of docs/report-json.md.
"""

from __future__ import annotations

import gzip
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import jsonschema
import pyarrow.compute as pc
import pytest
from conftest import NESTED, SAMPLES

import kvmtrace
from kvmtrace.report import render, render_parts, report_dict, report_schema
from kvmtrace.report.jsonout import Each, iter_json
from kvmtrace.report.markdown import md_escape
from kvmtrace.report.text import WIDTH

#: every real binary recording, plus two kernel text twins (the text reader's path to a report)
TRACES = sorted(SAMPLES.glob("*.dat")) + sorted(NESTED.glob("*.dat")) + [
    NESTED / "tdp-churn-noquirk-small-kt.txt.gz", NESTED / "shadow-churn-noquirk-small-kt.txt.gz"]


def _base(path: Path) -> Path:
    """``x.dat`` and ``x.txt.gz`` -> ``x`` (the stem the .counts.txt and the twin share)."""
    return path.with_name(path.name.split(".")[0])


def trace_cmd_counts(path: Path) -> tuple[int, dict[str, int]]:
    """total_events and per-event counts from ``.counts.txt``: its ``trace-cmd report`` section
    for a trace.dat, its kernel-text section for a text twin."""
    text = _base(path).with_suffix(".counts.txt").read_text()
    marker = "## trace-cmd report" if path.suffix == ".dat" else "## ftrace text"
    section = text.split(marker, 1)[1].split("trace_marker lines", 1)[0]
    total = int(re.search(r"^total_events (\d+)", section, re.M).group(1))
    counts = {m[2]: int(m[1]) for m in re.finditer(r"^\s+(\d+)\s+(\w+)\s*$", section, re.M)}
    return total, counts


@pytest.fixture(scope="module", params=TRACES, ids=lambda p: p.name)
def analyzed(request):
    analysis = kvmtrace.open(request.param).analyze()
    report = analysis.model
    rendered = {fmt: render(report, fmt) for fmt in ("text", "markdown", "json", "html")}
    return analysis, report, rendered


def test_there_are_real_traces():
    assert len(TRACES) >= 6, "no real recordings found (sample_traces/ and tests/data)"


def test_json_validates_and_trace_matches_trace_cmd(analyzed):
    analysis, _, rendered = analyzed
    doc = json.loads(rendered["json"])
    jsonschema.validate(doc, report_schema())
    total, counts = trace_cmd_counts(analysis.path)
    assert doc["trace"]["total_events"] == total
    assert doc["trace"]["events"] == counts


def test_json_written_in_pieces_is_the_whole_documents_text(analyzed):
    """The JSON report is encoded a piece at a time (long lists an item at a time); its text is
    exactly what the standard library makes of the whole document."""
    _, report, rendered = analyzed
    whole = json.dumps(report_dict(report), indent=2, default=str) + "\n"
    assert rendered["json"] == whole
    assert "".join(render_parts(report, "json")) == whole


def test_json_pieces_come_before_a_long_list_is_made():
    """An :class:`Each` list is made while it is written, not before: the first piece is handed
    on when only a few of 100 000 rows exist, and nested empty and non-empty lists encode as
    ``json.dumps`` encodes them."""
    made = 0

    def rows():
        nonlocal made
        for i in range(100_000):
            made += 1
            yield {"i": i, "s": "a\nb", "empty": [], "nested": {"x": [1, {}]}}

    doc = {"title": "t", "rows": Each(rows), "none": Each(lambda: iter(())), "tail": [Each(lambda: [1, 2])]}
    pieces = iter_json(doc)
    first = next(pieces)
    assert 0 < made < 10_000 and first.startswith('{\n  "title": "t",\n  "rows": [\n    {\n      "i": 0,')
    text = first + "".join(pieces)
    expect = {"title": "t", "rows": list(rows()), "none": [], "tail": [[1, 2]]}
    assert text == json.dumps(expect, indent=2) + "\n"


def test_json_checks_and_findings_are_the_replays(analyzed):
    analysis, _, rendered = analyzed
    doc = json.loads(rendered["json"])
    checks = analysis.replay.checks.to_pylist()
    assert doc["checks"] == [{k: c[k] for k in ("id", "status", "reason", "findings")} for c in checks]
    findings = analysis.replay.findings.to_pylist()
    assert [(f["id"], f["severity"], f["seq"], f["gfn"]) for f in doc["findings"]] == [
        (f["id"], f["severity"], f["seq"], f["gfn"]) for f in findings
    ]
    assert [f["evidence"] for f in doc["findings"]] == [sorted(f["evidence"]) for f in findings]
    r = analysis.replay
    assert doc["replay"]["events"] == r.events and doc["replay"]["explained_events"] == r.explained_events
    assert doc["replay"]["mmu"] == r.mmu and doc["replay"]["zap_policy"] == r.zap_policy
    assert doc["replay"]["memslot_changes"] == r.memslots.num_rows


def test_sp_lifetime_counts_match_the_replay_table(analyzed):
    analysis, _, rendered = analyzed
    sp = analysis.replay.shadow_pages
    measures = {r["measure"]: r["value"] for r in json.loads(rendered["json"])["sp_lifetimes"]["rows"]}
    assert measures["lifetimes"] == sp.num_rows
    assert measures["predate trace"] == (pc.sum(sp["predates_trace"]).as_py() or 0)
    assert measures["zapped in trace"] == sp["zap_seq"].drop_null().length()
    assert measures["alive at end"] == sp.num_rows - sp["zap_seq"].drop_null().length()


#: the binary recordings that have the kernel's own text of the same run beside them and memslot
#: lines in the trace: not churn-lost (its overwritten buffer kept none of them) nor the -qlog-
#: recordings (their lines are in a QEMU log beside the trace: tests/test_scenario_2019.py)
TWINNED = [p for p in TRACES if p.suffix == ".dat" and _base(p).with_suffix(".txt.gz").exists()
           and "-qlog-" not in p.name and not p.name.startswith("churn-lost")]


@pytest.mark.parametrize("analyzed", TWINNED, ids=lambda p: p.name, indirect=True)
def test_memslot_changes_sit_at_the_qemu_lines_of_the_kernel_text(analyzed):
    """Each timeline row's time is that of a memslot line for the same slot in the kernel's own
    text of the recording (µs resolution there): QEMU's kvm_set_user_memory, or the lab's
    kvmlab_memslot_move marker that confirms a true move."""
    analysis, _, rendered = analyzed
    twin = _base(analysis.path).with_suffix(".txt.gz")
    rows = [r for r in json.loads(rendered["json"])["memslots"]["rows"] if r["ts"] is not None]
    assert rows, "every twinned recording changes its memslots"
    marks: dict[int, list[str]] = {}
    memslot_line = r"\s(\d+)\.(\d{6}): tracing_mark_write: ((?:kvm_set_user_memory|kvmlab_memslot_move) .*)$"
    for m in re.finditer(memslot_line, gzip.open(twin, "rt").read(), re.M):
        marks.setdefault(int(m[1]) * 10**6 + int(m[2]), []).append(m[3])
    for r in rows:
        lines = marks.get((r["ts"] + 500) // 1000, [])  # the kernel rounds to the nearest µs
        assert any(f"Slot#{r['slot'] & 0xFFFF} " in ln for ln in lines), (r, lines)


def test_totals_add_up_the_replay_tables(analyzed):
    analysis, _, rendered = analyzed
    doc = json.loads(rendered["json"])
    whatif = analysis.replay.whatif
    if whatif is not None and whatif.num_rows:
        got = {r["policy"]: r for r in doc["whatif_totals"]["rows"]}
        for policy in set(whatif["policy"].to_pylist()):
            mine = whatif.filter(pc.equal(whatif["policy"], policy))
            assert got[policy]["rows"] == mine.num_rows
            assert got[policy]["pages_destroyed"] == pc.sum(mine["pages_destroyed"]).as_py()
    memslot = analysis.replay.summaries.get("memslot")
    if memslot is not None and memslot.num_rows:
        grid = next(g for g in doc["totals"] if g["title"].startswith("per-memslot"))
        totals = {r["slot"]: r for r in grid["rows"]}
        for slot in set(memslot["slot"].to_pylist()):
            mine = memslot.filter(pc.equal(memslot["slot"], slot))
            assert totals[slot]["rows"] == mine.num_rows
            assert totals[slot]["faults"] == pc.sum(mine["faults"]).as_py()


def test_text_fits_80_columns_and_has_no_colour(analyzed):
    _, report, rendered = analyzed
    text = rendered["text"]
    too_wide = [ln for ln in text.splitlines() if len(ln) > WIDTH]
    assert not too_wide, too_wide[:3]
    assert "\x1b[" not in text
    assert f"events:      {report.trace.events}" in text


@pytest.mark.parametrize("fmt", ["text", "markdown", "html"])
def test_every_check_and_finding_is_in_every_format(analyzed, fmt):
    analysis, _, rendered = analyzed
    out = rendered[fmt]
    for c in analysis.replay.checks.to_pylist():
        ident, status = (md_escape(c["id"]), md_escape(c["status"])) if fmt == "markdown" else (c["id"], c["status"])
        line = next((ln for ln in out.splitlines() if ident in ln and status in ln), None)
        assert line is not None, f"check {c['id']} ({c['status']}) missing from {fmt}"
    for f in analysis.replay.findings.to_pylist():
        assert (md_escape(f["id"]) if fmt == "markdown" else f["id"]) in out


def test_markdown_tables_are_well_formed(analyzed):
    _, report, rendered = analyzed
    rows = [ln for ln in rendered["markdown"].splitlines() if ln.startswith("| ")]
    check_rows = [ln for ln in rows if any(ln.startswith(f"| {md_escape(c.id)} |") for c in report.checks)]
    assert len(check_rows) == len(report.checks)
    for ln in rows:  # every row of a table has as many cells as its header
        assert ln.endswith(" |")


class _TagCounter(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: dict[str, int] = {}

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1


def test_html_is_one_file_without_scripts(analyzed):
    _, report, rendered = analyzed
    html = rendered["html"]
    parser = _TagCounter()
    parser.feed(html)
    assert parser.tags.get("script", 0) == 0
    assert parser.tags.get("link", 0) == 0 and parser.tags.get("img", 0) == 0  # nothing fetched
    assert parser.tags["tr"] >= len(report.checks) + 1


def test_limits_say_when_events_were_lost(analyzed):
    analysis, report, _rendered = analyzed
    lost = sum(analysis.trace.data.info.lost_events.values()) + sum(analysis.trace.data.info.lost_unknown.values())
    said = any("lost" in limit for limit in report.limits)
    assert said == bool(lost)
