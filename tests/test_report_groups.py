"""Repeated findings of one cause are one entry in the human formats; JSON keeps every instance.

Real recordings: churn-lost-zapall (dozens of informational zap_of_unknown_sp of one cause: the
trace starts after the pages were built), tdp-multi3-kt (errors and warnings of two checks), and
ptslot-zapslot with one injected bug (a per-slot zap dropped) next to many notes caused by
dropping page creations: the single error must come first, not after the notes.
"""

from __future__ import annotations

import html
import json
import re

import jsonschema
import pytest
from conftest import NESTED, SAMPLES
from mutate import without

from kvmtrace import parsers
from kvmtrace.replays import replay
from kvmtrace.replays.profiles import decode_role, profile_for
from kvmtrace.report import build_report, render, report_schema
from kvmtrace.report.groups import EXAMPLES_PER_GROUP, SEVERITY_RANK, cause_of
from kvmtrace.report.markdown import md_escape

_HEADING = re.compile(r"^\d+\. \[(error|warning|info)\] (\w+)", re.M)


def _report(data, result, name):
    return build_report(data, result, path=name, version="test")


@pytest.fixture(scope="module", params=[SAMPLES / "churn-lost-zapall.dat", NESTED / "tdp-multi3-kt.dat"],
                ids=lambda p: p.name)
def real(request):
    data = parsers.read(request.param)
    report = _report(data, replay(data), request.param.name)
    return report, {fmt: render(report, fmt) for fmt in ("text", "markdown", "html", "json")}


def test_groups_partition_the_findings_by_id_severity_and_cause(real):
    report, out = real
    doc = json.loads(out["json"])
    jsonschema.validate(doc, report_schema())
    findings = doc["findings"]
    assert len(findings) == len(report.findings) > 1  # JSON keeps every instance
    members = sorted(i for g in doc["groups"] for i in g["findings"])
    assert members == list(range(len(findings)))  # each finding in exactly one group
    keys = {(f["id"], f["severity"], cause_of(f["message"])) for f in findings}
    assert len(doc["groups"]) == len(keys)
    for g in doc["groups"]:
        mine = [findings[i] for i in g["findings"]]
        got = {(f["id"], f["severity"], cause_of(f["message"])) for f in mine}
        assert got == {(g["id"], g["severity"], g["cause"])}
        assert g["count"] == len(mine)
        seqs = [f["seq"] for f in mine if f["seq"] is not None]
        assert (g["first_seq"], g["last_seq"]) == (min(seqs), max(seqs))
        gfns = {f["gfn"] for f in mine if f["gfn"] is not None}
        assert (g["gfn_first"], g["gfn_last"], g["gfns"]) == (min(gfns), max(gfns), len(gfns))
    ranks = [SEVERITY_RANK[g["severity"]] for g in doc["groups"]]
    assert ranks == sorted(ranks)


@pytest.mark.parametrize("fmt", ["text", "markdown", "html"])
def test_a_group_is_one_entry_with_its_extent_and_three_examples(real, fmt):
    report, out = real
    text = out[fmt]
    prose = {"markdown": md_escape, "html": html.escape}.get(fmt, str)  # markdown: code blocks verbatim
    for g in report.groups:
        first = report.findings[g.members[0]]
        if g.count == 1:
            assert prose(first.message.split(":")[0]) in text
            continue
        assert prose(f"{g.id}: {g.count} findings of one cause") in text
        shown = min(g.count, EXAMPLES_PER_GROUP)
        assert text.count(f" of {g.count}:") >= shown
        for i in g.examples:  # the examples' evidence lines are printed
            f = report.findings[i]
            assert f.evidence_lines
            squeezed = "".join(text.split())  # the text format wraps long lines
            assert all("".join((html.escape(ln, quote=False) if fmt == "html" else ln).split()) in squeezed
                       for ln in f.evidence_lines)
        for i in g.members[EXAMPLES_PER_GROUP:]:  # the rest are counted, not printed
            assert report.findings[i].evidence_lines == ()
    if fmt == "text":
        headings = _HEADING.findall(text)
        assert len(headings) == len(report.groups)
        assert [h[1] for h in headings] == [g.id for g in report.groups]


def test_one_error_comes_before_many_notes():
    """ptslot-zapslot (zap-slot policy): drop the prepare_zap the kernel emitted for an indirect
    level-1 page of the slot at its last delete (one memslot_zap_miss), and the creations of the
    pages built before the last two deletes (their zaps become notes, most of them earlier in the
    trace than the error)."""
    data = parsers.read(SAMPLES / "ptslot-zapslot.dat")
    clean = replay(data)
    removals = [c for c in clean.memslots.to_pylist() if c["kind"] in ("delete", "move") and c["old_npages"]]
    last = removals[-1]
    zaps = decode_role(data.table("kvm_mmu_prepare_zap_page"), profile_for(data.info.kernel)).to_pylist()
    target = next(z for z in zaps if last["window_start"] <= z["seq"] <= last["seq"] and not z["direct"]
                  and z["level"] == 1 and last["old_base_gfn"] <= z["gfn"] < last["old_base_gfn"] + last["old_npages"])
    creations = [g["seq"] for g in data.table("kvm_mmu_get_page").to_pylist()
                 if g["created"] and g["seq"] < removals[-2]["window_start"]]
    mutated = without(data, [*creations, target["seq"]])
    report = _report(mutated, replay(mutated), "ptslot-zapslot (mutated)")
    errors = [f for f in report.findings if f.severity == "error"]
    notes = [f for f in report.findings if f.severity == "info"]
    assert len(errors) == 1 and len(notes) > 10
    assert min(f.seq for f in notes) < errors[0].seq  # by seq alone the notes would come first
    text = render(report, "text")
    headings = _HEADING.findall(text)
    assert headings[0] == ("error", "memslot_zap_miss")
    assert len(headings) == len(report.groups) < len(report.findings)
    assert md_escape("1. [error] memslot_zap_miss") in render(report, "markdown")
    assert "<h3>1. [error] memslot_zap_miss</h3>" in render(report, "html")
