"""The example notebook runs top to bottom on a real recording and shows what it promises:
the trace's facts, DataFrames, the analysis as HTML, the zap ledger, update windows and
consequences as tables, a reported window, three plots and a diff."""

from __future__ import annotations

import os

import nbformat
from conftest import REPO, SAMPLES
from nbclient import NotebookClient

import kvmtrace

NOTEBOOK = REPO / "examples" / "deep-dive.ipynb"


def test_deep_dive_notebook_runs_on_a_real_trace():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    trace = SAMPLES / "churn-zapslot.dat"
    os.environ["KVMTRACE_TRACE"] = str(trace)  # the kernel inherits it
    try:
        resources = {"metadata": {"path": str(NOTEBOOK.parent)}}
        NotebookClient(nb, timeout=600, kernel_name="python3", resources=resources).execute()
    finally:
        del os.environ["KVMTRACE_TRACE"]
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any(trace.name in h and "kvm_mmu_set_spte" in h for h in html)  # the trace's facts
    assert any("Checks" in h and "dangling_spte" in h for h in html)  # the replay report
    ledger = kvmtrace.open(trace).analyze().table("ledger")
    shown = [h for h in html if "slot_instance" in h and "pages_zapped" in h]  # the zap ledger
    assert len(shown) == 1 and all(f"<td>&quot;{s}&quot;</td>" in shown[0] for s in ledger["slot_instance"].head(5))
    assert any("window_end" in h and "window_ms" in h for h in html)  # update windows with their ends
    assert any("page_survived" in h and "reinstall" in h for h in html)  # consequences (pandas)
    assert any("new_pfn" in h and "vcpu" in h for h in html)  # decoded SPTE changes
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "kvmtrace diff:" in printed and "churn-zapall.dat" in printed  # the policy comparison
    assert "only events from" in printed and "ReportedSelection(since=" in printed  # the window's selection
