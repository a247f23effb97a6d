"""``trace-cmd report`` output of real recordings, in each of its shapes, parses to the binary tables.

Oracle: the same trace.dat read by ``kvmtrace.parsers.tracedat``. The report text is produced here by the
installed trace-cmd (plugin rendering of page events and kvm_exit, ``-R`` raw fields, ``-t`` ns
timestamps, ``-l`` latency flags, ``--ts-diff`` deltas), so each shape is real output.
"""

from __future__ import annotations

import subprocess

import pytest
from conftest import NESTED
from test_text_twins import assert_same_as_binary

from kvmtrace.parsers.text import read_text
from kvmtrace.parsers.tracedat import read_tracedat

RECORDINGS = ["k61tdp-churn-small-kt", "shadow-churn-noquirk-small-kt", "tdpx-dirty-prefault-kt"]
SHAPES = {"plain": [], "raw": ["-R"], "ns": ["-t"], "raw-ns": ["-R", "-t"], "latency": ["-l"], "ts-diff": ["--ts-diff"]}


@pytest.fixture(scope="module", params=RECORDINGS)
def binary(request):
    return NESTED / f"{request.param}.dat", read_tracedat(NESTED / f"{request.param}.dat")


@pytest.mark.oracle
@pytest.mark.parametrize("shape", SHAPES)
def test_report_shape_matches_binary(binary, shape, trace_cmd, tmp_path):
    dat, data = binary
    out = tmp_path / "report.txt"
    with open(out, "wb") as f:
        subprocess.run([trace_cmd, "report", *SHAPES[shape], "-i", str(dat)],
                       stdout=f, stderr=subprocess.DEVNULL, check=True)
    text = read_text(out)
    assert text.skipped == []
    assert text.info.cpus == data.info.cpus
    assert_same_as_binary(text, data, ns_timestamps="-t" in SHAPES[shape])


@pytest.mark.oracle
def test_plugin_and_raw_forms_carry_what_the_plugin_prints(binary, trace_cmd, tmp_path):
    """The kvm plugin prints gfn only for get_page and never the generation; -R prints everything."""
    dat, _ = binary
    out = tmp_path / "plain.txt"
    with open(out, "wb") as f:
        subprocess.run([trace_cmd, "report", "-i", str(dat)], stdout=f, stderr=subprocess.DEVNULL, check=True)
    plain = read_text(out)
    if "kvm_mmu_prepare_zap_page" in plain.tables:
        zap = plain.tables["kvm_mmu_prepare_zap_page"]
        assert zap.column("gfn").null_count == zap.num_rows
        assert zap.column("root_count").null_count == 0
    get = plain.tables["kvm_mmu_get_page"]
    assert get.column("gfn").null_count == 0 and get.column("mmu_valid_gen").null_count == get.num_rows
    raw_out = tmp_path / "raw.txt"
    with open(raw_out, "wb") as f:
        subprocess.run([trace_cmd, "report", "-R", "-i", str(dat)], stdout=f, stderr=subprocess.DEVNULL, check=True)
    raw = read_text(raw_out)
    for name in ("kvm_mmu_get_page", "kvm_exit", "kvm_mmu_set_spte"):
        if name in raw.tables:
            t = raw.tables[name]
            assert all(t.column(c).null_count == 0 for c in t.schema.names[7:]), name
