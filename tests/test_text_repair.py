"""Mail and terminal damage, applied to real lines; the oracle is the same lines undamaged.

The lines come from a real tracefs recording (6.12, TDP MMU; checked against its trace.dat in
test_text_twins.py). Each test applies one kind of damage the way the tool that causes it
does (textwrap for mail clients, quopri for quoted-printable, fixed columns for terminals).
"""

from __future__ import annotations

import gzip
import quopri
import re
import textwrap
import warnings
from pathlib import Path

import polars as pl
import pytest

from kvmtrace.parsers.text import read_text
from kvmtrace.parsers.text.catalog import catalog

FREE_TEXT = {"print"}  # plus every event without a decoder: their last field takes any text


@pytest.fixture(scope="module")
def lines(nested_dir) -> list[str]:
    with gzip.open(nested_dir / "tdp-churn-noquirk-small-kt.txt.gz", "rt") as f:
        out = [ln.rstrip("\n") for ln in f if not ln.startswith("#")]
    return out[:1500]


@pytest.fixture(scope="module")
def clean(lines, tmp_path_factory):
    p = tmp_path_factory.mktemp("clean") / "clean.txt"
    p.write_text("\n".join(lines) + "\n")
    return read_text(p)


def _free_text(line: str) -> bool:
    event = line.split(": ", 2)[1].strip() if line.count(": ") >= 2 else ""
    return event in FREE_TEXT or event == "tracing_mark_write" or event not in catalog()


def _parse(tmp_path: Path, text: str):
    p = tmp_path / "damaged.txt"
    p.write_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_text(p)


def _assert_decoded_tables_equal(clean, damaged, names=None) -> None:
    names = names or [n for n in clean.tables if n in catalog() and n not in FREE_TEXT]
    for name in names:
        a = pl.from_arrow(clean.tables[name]).drop("seq")
        b = pl.from_arrow(damaged.tables[name]).drop("seq")
        assert a.equals(b), name


def _wrapped(lines: list[str], wrap) -> tuple[str, set[int]]:
    """Wrap every line; return the text and the physical lines of wrapped free-text events.

    A free-text event (print, or one without a decoder) that wraps cannot be told from one
    followed by prose, so the reader gives up its first line and the continuation lines.
    """
    out: list[str] = []
    lost: set[int] = set()
    for line in lines:
        parts = wrap(line) or [line]
        # Broken after the event name, free text decodes alone; broken before it, it does not.
        if _free_text(line) and len(parts) > 1 and re.search(r"\d: \w+:", parts[0]):
            lost |= set(range(len(out) + 1, len(out) + len(parts) + 1))
        out += parts
    return "\n".join(out) + "\n", lost


def _no_wrong_values(clean, damaged) -> dict[str, int]:
    """Every decoded row of the damaged text is a row of the clean text; returns rows lost per event."""
    assert damaged.tables.keys() <= clean.tables.keys()
    lost = {}
    for name, table in clean.tables.items():
        a = pl.from_arrow(table).drop("seq")
        if name not in damaged.tables:
            lost[name] = a.height
            continue
        b = pl.from_arrow(damaged.tables[name]).drop("seq")
        missing = b.join(a, on=b.columns, how="anti", nulls_equal=True)
        assert missing.height == 0, f"{name}: values not in the clean text"
        lost[name] = a.height - b.height
    return lost


def test_mail_client_word_wrap(lines, clean, tmp_path):
    text, lost = _wrapped(lines, lambda ln: textwrap.wrap(ln, 72, break_long_words=False, break_on_hyphens=False))
    damaged = _parse(tmp_path, text)
    _no_wrong_values(clean, damaged)
    _assert_decoded_tables_equal(clean, damaged)
    assert {n for n, _ in damaged.skipped} == lost


def test_terminal_hard_wrap(lines, clean, tmp_path):
    """A break inside a number can leave a first half that decodes alone (``rip 0x1000`` + ``00``):
    such a record is given up with a reason, never decoded to the wrong value."""
    text, _ = _wrapped(lines, lambda ln: [ln[i : i + 80] for i in range(0, len(ln), 80)])
    damaged = _parse(tmp_path, text)
    missing = _no_wrong_values(clean, damaged)
    physical = text.split("\n")
    given_up = [n for n, why in damaged.skipped if "cannot tell" in why]
    for n in given_up:
        assert len(physical[n - 1]) == 80, "only a full-width first half can be mistaken for a whole record"
    assert sum(missing.values()) == len(given_up)
    # Records longer than 80 columns were rejoined, not only the short ones kept.
    long_records = sum(1 for ln in lines if len(ln) > 80)
    assert damaged.info.total_events > clean.info.total_events - long_records


def test_quoted_printable_and_quoting(lines, clean, tmp_path):
    """QP soft breaks at 76 columns and ``=3D`` for ``=``, then ``> `` quoting of the mail reply."""
    qp = quopri.encodestring(("\n".join(lines) + "\n").encode()).decode()
    assert "=3D" in qp and "=\n" in qp
    quoted = "".join("> " + ln + "\n" for ln in qp.splitlines())
    damaged = _parse(tmp_path, quoted)
    assert damaged.skipped == []
    assert damaged.tables.keys() == clean.tables.keys()
    _assert_decoded_tables_equal(clean, damaged, names=list(clean.tables))


def test_prose_prompts_and_elisions_are_skipped(lines, clean, tmp_path):
    head, tail = lines[:700], lines[700:]
    noise = ["Hi all,", "", "$ sudo cat /sys/kernel/tracing/trace", "...", "<snip>", "[ ... ]", "Thanks, Ann"]
    text = "\n".join(noise[:3] + head + noise[3:6] + tail + noise[6:]) + "\n"
    damaged = _parse(tmp_path, text)
    n_head = 3 + len(head)
    expected = {1: "not a trace line", 3: "shell prompt",
                n_head + 1: "elided", n_head + 2: "elided", n_head + 3: "elided",
                n_head + 3 + len(tail) + 1: "not a trace line"}
    got = dict(damaged.skipped)
    assert got.keys() == expected.keys()
    assert all(expected[n] in got[n] for n in got)
    _assert_decoded_tables_equal(clean, damaged, names=list(clean.tables))
