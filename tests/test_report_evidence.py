"""Evidence lines (``comm-pid [cpu] ts: event: field=value``) against trace-cmd's raw output.

The oracle is ``trace-cmd report -R -t`` of the same real recording: for events we cite by
``seq``, the task, pid, CPU, nanosecond timestamp, event name and every field value must match
what trace-cmd decodes independently from the same bytes.
"""

from __future__ import annotations

import re
import subprocess
from collections import defaultdict
from dataclasses import replace

import pyarrow as pa
import pytest

from kvmtrace import parsers
from kvmtrace.report.evidence import EvidenceReader, _column_texts, _field_text, evidence_fields, evidence_lines

TRACES = ["tdp-churn-noquirk-small-kt.dat", "shadow-churn-noquirk-small-kt.dat"]
CITED_EVENTS = ("kvm_mmu_set_spte", "kvm_mmu_get_page", "kvm_tdp_mmu_spte_changed", "print")

_ORACLE = re.compile(
    r"^\s*(?P<comm>.+?)-(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+(?P<s>\d+)\.(?P<ns>\d{9}):\s+(?P<event>\w+):\s*(?P<body>.*)$")
_OURS = re.compile(
    r"^(?P<comm>.+?)-(?P<pid>\d+) \[(?P<cpu>\d{3})\] (?P<s>\d+)\.(?P<us>\d{6}): (?P<event>\w+): ?(?P<body>.*)$")


def _fields(body: str) -> dict[str, str]:
    return dict(m.groups() for m in re.finditer(r"(\w+)=(\S+)", body))


def _same_number(ours: str, theirs: str) -> bool:
    """trace-cmd -R prints some integer fields in hex without a prefix, others in decimal."""
    try:
        value = int(ours, 0)
    except ValueError:
        return ours == theirs
    t = theirs.lower()
    if t.startswith("0x"):
        return int(t, 16) == value
    return any(int(t, base) == value for base in (10, 16) if re.fullmatch(r"[0-9a-f]+" if base == 16 else r"\d+", t))


@pytest.mark.oracle
@pytest.mark.parametrize("name", TRACES)
def test_evidence_lines_match_trace_cmd_raw(name, nested_dir, trace_cmd):
    path = nested_dir / name
    data = parsers.read(path)
    out = subprocess.run([trace_cmd, "report", "-R", "-t", str(path)],
                         capture_output=True, text=True, check=True).stdout
    # the same report with the microsecond times users see (same lines, same order)
    out_us = subprocess.run([trace_cmd, "report", "-R", str(path)], capture_output=True, text=True, check=True).stdout
    oracle = defaultdict(list)
    for line, line_us in zip(out.splitlines(), out_us.splitlines(), strict=True):
        m = _ORACLE.match(line)
        if m:
            shown = re.search(r"\s(\d+\.\d{6}):", line_us)[1]
            oracle[(int(m["cpu"]), int(m["s"]) * 10**9 + int(m["ns"]), m["event"])].append((m, shown))
    # cite a spread of events of several kinds: every 37th row of each cited event table
    seqs = [s for ev in CITED_EVENTS if ev in data.tables for s in data.table(ev).column("seq").to_pylist()[::37]]
    assert len(seqs) > 20
    lines = evidence_lines(data, seqs)
    assert sorted(lines) == sorted(set(seqs))
    ts_of = dict(zip(data.events.column("seq").to_pylist(), data.events.column("ts").to_pylist()))
    for seq in seqs:
        ours = _OURS.match(lines[seq])
        assert ours, lines[seq]
        candidates = oracle[(int(ours["cpu"]), ts_of[seq], ours["event"])]
        assert len(candidates) == 1, (seq, lines[seq])
        theirs, shown = candidates[0]
        assert f"{ours['s']}.{ours['us']}" == shown
        assert (ours["comm"], ours["pid"]) == (theirs["comm"].strip(), theirs["pid"])
        f_ours, f_theirs = _fields(ours["body"]), _fields(theirs["body"])
        if ours["event"] == "print":  # buf holds spaces; compare the text after buf=
            assert ours["body"].split("buf=", 1)[1] == theirs["body"].split("buf=", 1)[1].rstrip()
            continue
        assert set(f_ours) == set(f_theirs), (lines[seq], theirs.string)
        for k in f_ours:
            assert _same_number(f_ours[k], f_theirs[k]), (k, lines[seq], theirs.string)


def test_seq_not_in_trace_is_said_not_invented(nested_dir):
    data = parsers.read(nested_dir / "tdp-boot-small-kt.dat")
    missing = data.events.num_rows + 10
    assert evidence_lines(data, [missing]) == {missing: f"(seq {missing} is not in this trace)"}


@pytest.mark.parametrize("name", ["tdp-churn-noquirk-small-kt", "shadow-churn-noquirk-small-kt"])
@pytest.mark.parametrize("suffix", [".dat", ".txt.gz"])
def test_column_texts_are_each_values_field_text(nested_dir, name, suffix):
    """A column's texts made at once (the type decided once per column) are each value's
    :func:`_field_text`, on every field of every table of a recording and of its text twin
    (whose columns carry nulls and dictionary-typed strings the binary's do not)."""
    data = parsers.read(nested_dir / f"{name}{suffix}")
    checked = 0
    for event in data.tables:
        table = data.table(event)
        for field in table.schema:
            values = table.column(field.name).to_pylist()
            assert _column_texts(values, field.type) == [_field_text(v, field.type) for v in values], (event, field)
            checked += 1
    assert checked > 50


@pytest.mark.parametrize("name", ["shadow-churn-noquirk-small-kt.dat", "tdp-churn-noquirk-small-kt.dat"])
def test_reader_finds_rows_in_tables_of_many_small_batches(nested_dir, name):
    """A long trace's tables come in many batches (kept on disk in pieces), and a reader answers
    many questions (the report's removals, a block at a time): every cited row is found in its
    own batch, across batch edges and past empty batches, the same as in the tables as read."""
    data = parsers.read(nested_dir / name)

    def cut(table: pa.Table) -> pa.Table:
        small = table.to_batches(max_chunksize=7)
        empty = table.schema.empty_table().to_batches() or [pa.RecordBatch.from_pylist([], schema=table.schema)]
        return pa.Table.from_batches([b for batch in small for b in (batch, *empty)], schema=table.schema)

    pieces = replace(data, tables={name: cut(t) for name, t in data.tables.items()})
    assert max(t.column("seq").num_chunks for t in pieces.tables.values()) > 100
    seqs = [s for ev in CITED_EVENTS if ev in data.tables for s in data.table(ev).column("seq").to_pylist()[::5]]
    reader = EvidenceReader(pieces)
    for k in range(0, len(seqs), 50):  # several questions, one reader
        asked = seqs[k:k + 50] + seqs[k // 2:k // 2 + 3]  # and some asked again
        assert reader.lines(asked) == evidence_lines(data, asked)
        assert reader.fields(asked) == evidence_fields(data, asked)
