"""Every real recording replays with zero error findings, and the model explains its events.

Clean real traces give zero errors (design principle 2): the upstream recordings under
``tests/data/nested`` and this machine's ``sample_traces`` are all healthy kernels. The MMU
and zap policy each recording was made with are stated by its README (and file name), an oracle
independent of the replay's own inference.
"""

from __future__ import annotations

import pytest
from conftest import NESTED, SAMPLES

from kvmtrace import parsers
from kvmtrace.replays import replay
from kvmtrace.replays.results import CHECK_IDS

NESTED_MMU = {  # nested/README.md table
    "tdp-boot-small-kt": ("tdp", None),
    "tdp-churn-noquirk-small-kt": ("tdp", "zap_slot"),
    "tdpx-dirty-prefault-kt": ("tdp", None),
    "k61tdp-churn-small-kt": ("tdp", "zap_all"),
    "tdpmmu0-boot-small-kt": ("legacy_tdp", None),
    "shadow-churn-noquirk-small-kt": ("shadow", "zap_slot"),
    "tdp-multi3-kt": ("tdp", None),
    "tdp-multi4-kt": ("tdp", None),
    "k61tdp-multi4-kt": ("tdp", None),
    "tdpmmu0-ptslot-noquirk-qlog-kt": ("legacy_tdp", None),  # memslot lines only in its QEMU log
    "tdpmmu0-churn-noquirk-qlog-kt": ("legacy_tdp", None),
}
#: tests/data/host/README.md: recorded on this project's shadow-MMU host
HOST_MMU = {
    "seabios-boot": ("shadow", None),  # real mode, no paging: direct roles, PAE roots, no SPTE
    "churn-sched-zapall": ("shadow", "zap_all"),  # sched events beside kvmmmu
}
#: Files whose explained share is below 0.999, with the bound and the reason (none so far).
EXPLAINED_FLOOR: dict[str, tuple[float, str]] = {}


def _recordings():
    out = [pytest.param(NESTED / f"{n}.dat", mmu, pol, id=n) for n, (mmu, pol) in NESTED_MMU.items()]
    out += [pytest.param(NESTED.parent / "host" / f"{n}.dat", mmu, pol, id=n) for n, (mmu, pol) in HOST_MMU.items()]
    for path in sorted(SAMPLES.glob("*.dat")):
        # sample_traces/README.md: this host runs the shadow MMU; the suffix names the policy
        policy = "zap_slot" if path.stem.endswith("zapslot") else "zap_all"
        out.append(pytest.param(path, "shadow", None if "lost" in path.stem else policy, id=path.stem))
    return out


@pytest.mark.parametrize("path,mmu,policy", _recordings())
def test_real_recording_is_clean(path, mmu, policy, nested_dir):
    result = replay(parsers.read(path))
    errors = [r for r in result.findings.to_pylist() if r["severity"] == "error"]
    assert errors == [], errors[:3]
    floor = EXPLAINED_FLOOR.get(path.stem, (0.999, ""))[0]
    assert result.explained_share >= floor, result.unexplained.slice(0, 5).to_pylist()
    assert result.mmu == mmu
    if policy is not None:
        assert result.zap_policy == policy
    checks = result.checks.to_pydict()
    assert tuple(checks["id"]) == CHECK_IDS
    assert set(checks["status"]) <= {"passed", "failed", "not_evaluated"}
    assert all(checks["reason"])
    for status, cid in zip(checks["status"], checks["id"]):
        assert status != "failed" or cid in ("fault_in_update_window",)  # warnings only, never an error check


def test_samples_present():
    assert len(list(SAMPLES.glob("*.dat"))) >= 10, "sample_traces/ should hold the lab's recordings"


def test_lost_events_never_error():
    """churn-lost-zapall dropped ~58k events (sample_traces/README.md): the replay must say so."""
    path = SAMPLES / "churn-lost-zapall.dat"
    if not path.exists():
        pytest.fail("churn-lost-zapall is missing (lab/record-samples.sh records it)")
    result = replay(parsers.read(path))
    assert any("lost-event" in limit for limit in result.limits)
    assert not [r for r in result.findings.to_pylist() if r["severity"] == "error"]


def test_trace_replay_method(nested_dir):
    """``kvmtrace.open(p).analyze()`` is the notebook entry point: the same result as replays.replay."""
    import kvmtrace

    trace = kvmtrace.open(nested_dir / "tdp-churn-noquirk-small-kt.dat")
    result = trace.analyze().replay
    direct = replay(trace.data)
    assert result.checks.equals(direct.checks) and result.findings.equals(direct.findings)
    assert trace.analyze(kernel="6.12").replay.profile == direct.profile


def test_trace_without_kvmmmu_events_is_a_trace_error(public_dir):
    """A real scheduler trace from another project: a one-line TraceError that says what to record."""
    from kvmtrace.parsers.errors import TraceError

    with pytest.raises(TraceError, match=r"no kvmmmu events.*-e kvmmmu"):
        replay(parsers.read(public_dir / "sched_load.v7zstd.dat"))


@pytest.mark.parametrize("path", [SAMPLES / "churn-zapall.dat", SAMPLES / "multi-zapslot.dat",
                                  NESTED / "tdp-churn-noquirk-small-kt.dat"], ids=lambda p: p.stem)
def test_trace_that_starts_late_is_still_clean(path, nested_dir):
    """The same recordings cut to their second half, as if tracing had been switched on late: pages
    and SPTEs predate the trace, the layout is partial, and still nothing is an error."""
    from dataclasses import replace

    import pyarrow.compute as pc

    if not path.exists():
        pytest.fail(f"{path.name} is missing (lab/record-samples.sh records it)")
    data = parsers.read(path)
    cut = data.events.num_rows // 2
    late = replace(data, tables={n: t.filter(pc.greater_equal(t["seq"], cut)) for n, t in data.tables.items()},
                   events=data.events.filter(pc.greater_equal(data.events["seq"], cut)))
    result = replay(late)
    assert not [f for f in result.findings.to_pylist() if f["severity"] == "error"]
    assert result.explained_share >= 0.999
    assert any("partial" in limit for limit in result.limits)


def test_every_recording_is_in_the_clean_list():
    """A recording added to tests/data must be named above with its MMU, so it is replayed too."""
    assert {p.stem for p in NESTED.glob("*.dat")} == set(NESTED_MMU)
    assert {p.stem for p in (NESTED.parent / "host").glob("*.dat")} == set(HOST_MMU)
