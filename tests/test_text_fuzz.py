"""Fuzzing the ftrace text reader with lines of a real recording's kernel text.

Hypothesis (derandomized, a bounded number of examples) deletes, duplicates, cuts and corrupts
lines of ``mmio-zapslot.txt.gz`` (the kernel's own text of a sample recording, 2884 events) and
asserts what a user can rely on: every input is either read or refused with one
:class:`TraceError` — nothing else escapes; and a read never silently disagrees with its input:
when only whole event lines were removed, exactly the kept lines are events, and when lines were
damaged, every line is either an event or listed as skipped.
"""

from __future__ import annotations

import gzip
import warnings

from conftest import SAMPLES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmtrace import parsers
from kvmtrace.parsers.errors import TraceError

LINES = gzip.decompress((SAMPLES / "mmio-zapslot.txt.gz").read_bytes()).decode().splitlines(keepends=True)
HEADER = [ln for ln in LINES if ln.startswith("#")]
EVENTS = [ln for ln in LINES if not ln.startswith("#")]
FUZZ = settings(max_examples=120, derandomize=True, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _read(tmp_path, text: bytes):
    path = tmp_path / "fuzz.txt"
    path.write_bytes(text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return parsers.read(path)


def test_the_source_reads_whole():
    data = parsers.read(SAMPLES / "mmio-zapslot.txt.gz")
    assert data.info.total_events == len(EVENTS) and not data.skipped


@FUZZ
@given(keep=st.lists(st.booleans(), min_size=len(EVENTS), max_size=len(EVENTS)))
def test_deleted_lines_leave_exactly_the_kept_events(tmp_path_factory, keep):
    kept = [ln for ln, k in zip(EVENTS, keep, strict=True) if k]
    text = "".join(HEADER + kept).encode()
    try:
        data = _read(tmp_path_factory.mktemp("del"), text)
    except TraceError:
        assert not kept  # only an input without a single event line may be refused
        return
    assert data.info.total_events == len(kept)
    assert not data.skipped


@st.composite
def _damaged(draw):
    """The first few hundred event lines with some of them cut, flipped, duplicated or replaced."""
    n = draw(st.integers(1, 300))
    lines = list(EVENTS[:n])
    for _ in range(draw(st.integers(1, 8))):
        i = draw(st.integers(0, len(lines) - 1))
        kind = draw(st.sampled_from(["cut", "flip", "dup", "junk", "nul"]))
        line = lines[i]
        if kind == "cut":
            lines[i] = line[: draw(st.integers(0, len(line)))] + "\n"
        elif kind == "flip":
            j = draw(st.integers(0, len(line) - 1))
            lines[i] = line[:j] + chr(draw(st.integers(0x20, 0x7e))) + line[j + 1:]
        elif kind == "dup":
            lines.insert(i, line)
        elif kind == "junk":
            lines[i] = draw(st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=200)) + "\n"
        else:
            lines[i] = "\x00" * draw(st.integers(1, 64)) + "\n"
    return "".join(HEADER + lines).encode("utf-8", errors="surrogatepass")


@FUZZ
@given(text=_damaged())
def test_damaged_lines_are_events_or_skipped_never_lost(tmp_path_factory, text):
    try:
        data = _read(tmp_path_factory.mktemp("dmg"), text)
    except TraceError as err:
        assert "\n" not in str(err)  # one line, for the terminal
        return
    body = [ln for ln in text.decode("utf-8", errors="replace").splitlines() if ln.strip() and not ln.startswith("#")]
    # every non-comment line is accounted for: an event, a skipped line, or part of a repaired wrap
    assert data.info.total_events + len(data.skipped) <= len(body)
    assert data.info.total_events >= 1 or data.skipped


def test_a_zero_filled_block_costs_only_its_own_lines(tmp_path):
    """A crash can leave a text file with a zero-filled block in the middle: the lines around it
    are still events, the damaged line is listed as skipped (it was refused as binary before)."""
    text = "".join(HEADER + EVENTS[:1000] + ["\x00" * 4096 + "\n"] + EVENTS[1000:]).encode()
    data = _read(tmp_path, text)
    assert data.info.total_events == len(EVENTS) and len(data.skipped) == 1
