"""The check registry (``replays/checks.py``) is the one place that names a check: the README's
table, the JSON schema's enums and every replay's checks table agree with it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import NESTED, SAMPLES

from kvmtrace import parsers
from kvmtrace.replays import replay
from kvmtrace.replays.checks import CHECK_IDS, CHECKS, MmuKind, Severity, Status, ZapPolicy, markdown_table

REPO = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((REPO / "kvmtrace" / "report" / "report.schema.json").read_text())


def test_readme_table_is_the_registry():
    assert markdown_table() in (REPO / "README.md").read_text()


def test_schema_enums_are_the_registry():
    props = SCHEMA["properties"]
    assert SCHEMA["$defs"]["check_id"]["enum"] == list(CHECK_IDS)
    assert props["checks"]["items"]["properties"]["status"]["enum"] == [s.value for s in Status]
    assert props["findings"]["items"]["properties"]["severity"]["enum"] == [s.value for s in Severity]
    replay_props = json.dumps(SCHEMA)
    for enum in (MmuKind, ZapPolicy):
        assert json.dumps([k.value for k in enum]) in replay_props, enum


@pytest.mark.parametrize("path", [SAMPLES / "ptslot-zapslot.dat", NESTED / "tdp-multi3-kt.dat",
                                  NESTED / "tdpmmu0-boot-small-kt.dat"], ids=lambda p: p.stem)
def test_every_replay_reports_every_registered_check(path):
    result = replay(parsers.read(path))
    checks = result.checks.to_pylist()
    assert [c["id"] for c in checks] == list(CHECK_IDS)
    assert all(c["status"] in set(Status) and c["reason"] for c in checks)
    assert not any("not implemented" in c["reason"] for c in checks)
    severity = {c.id: c.severity for c in CHECKS}
    for f in result.findings.to_pylist():  # a finding is at its check's severity, or a doubtful error's warning
        assert (f["severity"] == severity[f["id"]]
                or (severity[f["id"]] == Severity.ERROR and f["severity"] == "warning"))
    assert result.mmu in set(MmuKind) and result.zap_policy in set(ZapPolicy)
