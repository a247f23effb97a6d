"""The HTML report in a real browser (headless Chromium), and escaping of trace-derived text.

The screenshot check compares the same report with and without its plots: the plots must add
many distinct colours to the page (a blank or broken SVG adds none). The XSS probe puts a
script tag into the comm of every event and into a trace_marker line of a real recording.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import NESTED, SAMPLES
from matplotlib.image import imread

import kvmtrace
from kvmtrace import parsers
from kvmtrace.replays.replay import replay
from kvmtrace.report import build_report, render

PROBE = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs it")
        pytest.skip("chromium not installed (the browser check runs in CI)")
    return exe


def screenshot(chromium: str, html: Path, tmp_path: Path) -> np.ndarray:
    png = tmp_path / f"{html.stem}.png"
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={png}", "--window-size=1200,2000",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", html.as_uri()],
        capture_output=True, timeout=120, check=True,
    )
    return imread(png)


def distinct_colours(img: np.ndarray) -> int:
    rgb = (img[..., :3] * 255).astype(np.uint32)
    return len(np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]))


def test_html_report_renders_its_plots_in_chromium(chromium, tmp_path):
    analysis = kvmtrace.open(SAMPLES / "churn-zapslot.dat").analyze()
    with_plots = tmp_path / "with.html"
    without = tmp_path / "without.html"
    with_plots.write_text(analysis.report("html"))
    without.write_text(analysis.report("html", figures=False))
    shot, plain = screenshot(chromium, with_plots, tmp_path), screenshot(chromium, without, tmp_path)
    assert shot.shape[:2] == (2000, 1200)
    # the plots sit below the trace and MMU facts: the lower half of the first screen
    region, plain_region = shot[1000:], plain[1000:]
    assert distinct_colours(region) > 3 * distinct_colours(plain_region) and distinct_colours(region) > 200
    assert (region[..., :3] < 0.9).any(axis=-1).mean() > 0.05  # not a white page


def _replace_strings(table: pa.Table, column: str, value: str) -> pa.Table:
    i = table.schema.get_field_index(column)
    return table.set_column(i, table.schema.field(i), pa.array([value] * table.num_rows, table.schema.field(i).type))


def test_trace_strings_are_escaped_everywhere(nested_dir):
    real = NESTED / "tdp-churn-noquirk-small-kt.dat"  # its replay has findings with evidence lines
    data = parsers.read(real)
    # Hand-made from a real recording (no real trace has a script tag for a task name): every
    # event's comm and the first trace_marker line become the probe.
    tables = {n: _replace_strings(t, "comm", PROBE) for n, t in data.tables.items()}
    prints = tables["print"]
    bufs = prints.column("buf").to_pylist()
    bufs[0] = PROBE
    buf = pa.array(bufs, prints.schema.field("buf").type)
    tables["print"] = prints.set_column(prints.schema.get_field_index("buf"), "buf", buf)
    probed = dataclasses.replace(data, tables=tables, events=_replace_strings(data.events, "comm", PROBE))
    result = replay(probed)
    report = build_report(probed, result, path=f"{PROBE}.dat", version="test")
    html = render(report, "html")
    assert PROBE not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    markdown = render(report, "markdown")
    outside_code = re.sub(r"(`{3,}).*?\1", "", markdown, flags=re.S)
    assert PROBE not in outside_code  # outside code blocks it is escaped too
    assert report.findings, "the probe needs a recording whose replay cites evidence"
    for finding in report.findings:  # evidence lines carry the probed comm, escaped in HTML
        for line in finding.evidence_lines:
            assert PROBE in line
            assert line.replace("<", "&lt;").replace(">", "&gt;") in html


def test_the_html_report_is_the_same_bytes_every_time():
    """Two analyses of one trace give the same HTML, figures included (no date, fixed SVG ids): a
    report attached to a bug can be diffed against the next one."""
    path = SAMPLES / "churn-zapslot.dat"
    first, second = (kvmtrace.open(path).analyze().report("html") for _ in range(2))
    assert first == second and "<svg" in first and "<dc:date>" not in first
