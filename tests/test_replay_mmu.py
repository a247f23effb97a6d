"""Which MMU made a trace, decided from role bits and events, with the evidence in words.

The oracle is each recording's README (sample_traces/: this host's shadow MMU; nested/: the
table of kernels and MMUs), never the replay's own inference. "Every page is direct" is not
enough: a shadow-paged guest's huge pages are mapped by direct pages too, and a guest running
without paging (real mode) has nothing but direct pages.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
from conftest import NESTED, SAMPLES
from mutate import keeping

from kvmtrace import parsers
from kvmtrace.parsers.schema import TraceData
from kvmtrace.replays import replay
from kvmtrace.replays.classify import detect_mmu
from kvmtrace.replays.inputs import PAGE_EVENTS
from kvmtrace.replays.profiles import profile_for

NESTED_MMU = {  # nested/README.md
    "tdp-boot-small-kt": "tdp", "tdp-churn-noquirk-small-kt": "tdp", "tdpx-dirty-prefault-kt": "tdp",
    "k61tdp-churn-small-kt": "tdp", "tdp-multi3-kt": "tdp", "tdpmmu0-boot-small-kt": "legacy_tdp",
    "shadow-churn-noquirk-small-kt": "shadow",
}
SHADOW_SAMPLES = sorted(SAMPLES.glob("*.dat"))  # sample_traces/README.md: tdp_mmu=N, shadow paging


def _recordings():
    return ([pytest.param(NESTED / f"{n}.dat", mmu, id=n) for n, mmu in NESTED_MMU.items()]
            + [pytest.param(p, "shadow", id=p.stem) for p in SHADOW_SAMPLES])


@pytest.mark.parametrize("path,mmu", _recordings())
def test_mmu_and_what_it_rests_on(path, mmu, nested_dir) -> None:
    data = parsers.read(path)
    kind, evidence = detect_mmu(data, profile_for(data.info.kernel))
    assert kind == mmu
    assert evidence and all(s.strip() for s in evidence)
    deciding = {"tdp": "kvm_tdp_mmu_spte_changed", "legacy_tdp": "TDP root level",
                "shadow": "shadow the guest's own page tables"}[mmu]
    assert deciding in evidence[0]
    result = replay(data)
    assert result.mmu_evidence == evidence
    assert any(a.startswith(f"MMU {mmu}, decided from the trace") for a in result.assumptions)


def _direct_pages_only(data: TraceData) -> TraceData:
    """The recording with the page events of indirect pages (role.direct=0) taken out."""
    shift = profile_for(data.info.kernel).role_field("direct").shift
    tables = dict(data.tables)
    for e in PAGE_EVENTS:
        t = tables.get(e)
        if t is not None:
            direct = (np.asarray(t["role"].to_numpy(), dtype=np.uint64) >> np.uint64(shift)) & np.uint64(1)
            tables[e] = t.filter(pa.array(direct == 1))
    return replace(data, tables=tables)


@pytest.mark.parametrize("path", [p for p in SHADOW_SAMPLES if "lost" not in p.stem], ids=lambda p: p.stem)
def test_shadow_trace_with_only_its_direct_pages_is_still_shadow(path) -> None:
    """Without the pages that shadow guest page tables, what is left is direct pages (a guest's
    huge pages, the lab's 2 MiB mappings): the guest PTE's access in their role, or a guest walk
    before every fault, still says shadow paging."""
    data = _direct_pages_only(parsers.read(path))
    kind, evidence = detect_mmu(data, profile_for(data.info.kernel))
    assert kind == "shadow", evidence
    assert "below ACC_ALL" in evidence[0] or "followed a guest page-table walk" in evidence[0]


def test_direct_pages_without_walks_are_not_claimed(nested_dir) -> None:
    """multi-zapall keeps 4 direct level-1 pages with full access once its indirect pages and its
    walk events are gone: nothing left distinguishes shadow paging from legacy TDP, and the
    evidence must say the answer was assumed."""
    trace = _direct_pages_only(parsers.read(SAMPLES / "multi-zapall.dat"))
    walks = {"kvm_mmu_pagetable_walk", "kvm_mmu_paging_element", "kvm_mmu_set_accessed_bit",
             "kvm_mmu_set_dirty_bit", "kvm_mmu_walker_error"}
    cut = keeping(trace, set(trace.tables) - walks)
    kind, evidence = detect_mmu(cut, profile_for(cut.info.kernel))
    assert kind == "legacy_tdp"
    assert "assumed" in evidence[0]


def test_legacy_tdp_without_its_upper_levels_is_told_by_walks(nested_dir) -> None:
    """tdpmmu0-boot (legacy TDP) cut to its level-1 pages: no role bit decides, and its faults come
    without guest page-table walks, so the walk rule must not call it shadow paging."""
    data = parsers.read(NESTED / "tdpmmu0-boot-small-kt.dat")
    prof = profile_for(data.info.kernel)
    lvl = prof.role_field("level")
    tables = dict(data.tables)
    for e in PAGE_EVENTS:
        t = tables.get(e)
        if t is not None:
            level = np.asarray(t["role"].to_numpy(), dtype=np.uint64) & np.uint64((1 << lvl.width) - 1)
            tables[e] = t.filter(pa.array(level == 1))
    kind, evidence = detect_mmu(replace(data, tables=tables), prof)
    assert kind == "legacy_tdp" and "assumed" in evidence[0]
