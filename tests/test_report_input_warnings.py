"""Every warning about the input is in every report format, near the top (before the trace facts).

Real inputs: a sample trace.dat cut short (its bytes truncated here, as an interrupted copy or a
full disk leaves it) and churn-lost-zapall, recorded with a 64 KiB buffer that dropped events.
"""

from __future__ import annotations

import html
import json
import warnings

import jsonschema
import pytest
from conftest import SAMPLES

import kvmtrace
from kvmtrace.parsers.errors import TraceWarning
from kvmtrace.report import render, report_schema
from kvmtrace.report.markdown import md_escape

#: where the trace facts begin in each human format: every input warning must come before
FACTS_START = {"text": "\nTrace\n-----", "markdown": "\n## Trace\n", "html": "<h2>Trace</h2>"}


def _cut(tmp_path, name: str, keep: float):
    src = SAMPLES / name
    dst = tmp_path / f"cut-{name}"
    raw = src.read_bytes()
    dst.write_bytes(raw[: int(len(raw) * keep)])
    return dst


@pytest.fixture(scope="module")
def cut_short(tmp_path_factory):
    path = _cut(tmp_path_factory.mktemp("cut"), "ptslot-zapslot.dat", 0.97)
    with warnings.catch_warnings(record=True) as heard:
        warnings.simplefilter("always")
        analysis = kvmtrace.open(path).analyze()
    stderr = [str(w.message) for w in heard if issubclass(w.category, TraceWarning)]
    assert any("cut short" in m for m in stderr), stderr
    return stderr, analysis.model


def _near_top(out: str, fmt: str, sentence: str) -> bool:
    shown = {"markdown": md_escape, "html": lambda s: html.escape(s, quote=True)}.get(fmt, str)(sentence)
    head = out[: out.index(FACTS_START[fmt])]
    return "".join(shown.split()) in "".join(head.split())  # the text format wraps


@pytest.mark.parametrize("fmt", ["text", "markdown", "html"])
def test_every_reader_warning_is_near_the_top(cut_short, fmt):
    stderr, report = cut_short
    out = render(report, fmt)
    for message in stderr:  # what stderr heard, the attached report says too
        assert _near_top(out, fmt, message), message


def test_json_lists_the_reader_warnings(cut_short):
    stderr, report = cut_short
    doc = json.loads(render(report, "json"))
    jsonschema.validate(doc, report_schema())
    assert doc["input_warnings"][: len(stderr)] == stderr
    assert list(doc)[:2] == ["kvmtrace_version", "input_warnings"]


@pytest.mark.parametrize("fmt", ["text", "markdown", "html", "json"])
def test_lost_events_are_an_input_warning(fmt):
    analysis = kvmtrace.open(SAMPLES / "churn-lost-zapall.dat").analyze()
    lost = analysis.trace.data.info.lost_events
    assert sum(lost.values()) > 0
    report = analysis.model
    sentence = next(w for w in report.input_warnings if "dropped" in w)
    for cpu, n in lost.items():
        if n:
            assert f"CPU {cpu}: {n}" in sentence
    out = render(report, fmt)
    if fmt == "json":
        assert sentence in json.loads(out)["input_warnings"]
    else:
        assert _near_top(out, fmt, sentence)


def test_a_complete_recording_has_no_input_warnings():
    report = kvmtrace.open(SAMPLES / "mmio-zapslot.dat").analyze().model
    assert report.input_warnings == ()
    assert "Input warnings" not in render(report, "text")
