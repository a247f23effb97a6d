"""Never a traceback: any real recording, cut any way a user's input can be cut, replays.

The cuts are the inputs people actually send: a recording made with fewer events enabled (a
subset of event types), a window of it (a contiguous run of seqs), one CPU's events, two runs in
one file (the second's seqs and timestamps continue after the first's), a mail excerpt. Hypothesis
chooses the cuts over every sample and every nested recording, derandomized (the same examples on
every run) and bounded, so the file runs in well under two minutes.

What each cut must give: a result (or the one-line TraceError of an input without kvmmmu events),
one outcome per registered check, and, for every check whose required events the cut does not
contain, ``not_evaluated`` with a reason that names them and no error finding. A subset of the
event types of a clean recording must not invent an error the whole recording does not have.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from conftest import NESTED, SAMPLES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutate import concatenated, keeping, without

from kvmtrace import parsers
from kvmtrace.parsers.errors import TraceError
from kvmtrace.parsers.schema import TraceData
from kvmtrace.replays import replay
from kvmtrace.replays.checks import CHECKS
from kvmtrace.replays.results import CHECK_IDS, ReplayResult

TEXT = Path(__file__).parent / "data" / "text"
RECORDINGS = sorted(p.stem for p in SAMPLES.glob("*.dat")) + sorted(p.stem for p in NESTED.glob("*.dat"))
SETTINGS = settings(derandomize=True, max_examples=60, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@cache
def _read(stem: str) -> TraceData:
    path = SAMPLES / f"{stem}.dat"
    return parsers.read(path if path.exists() else NESTED / f"{stem}.dat")


@cache
def _whole_errors(stem: str) -> frozenset[tuple]:
    return frozenset(_errors(replay(_read(stem))))


def _errors(result: ReplayResult) -> list[tuple]:
    return [(f["id"], f["seq"], f["gfn"]) for f in result.findings.to_pylist() if f["severity"] == "error"]


def _replay(data: TraceData) -> ReplayResult | None:
    """The replay, or None for the one refusal the contract allows: no kvmmmu event at all."""
    try:
        return replay(data)
    except TraceError as err:
        assert "no kvmmmu events" in str(err)
        return None


def _assert_contract(data: TraceData, result: ReplayResult | None) -> None:
    if result is None:
        return
    checks = {c["id"]: c for c in result.checks.to_pylist()}
    assert tuple(checks) == CHECK_IDS
    assert all(c["status"] in ("passed", "failed", "not_evaluated") and c["reason"] for c in checks.values())
    error_ids = {e[0] for e in _errors(result)}
    for check in CHECKS:
        if "memslot changes" in check.requires and result.memslots.num_rows == 0:
            assert checks[check.id]["status"] == "not_evaluated", (check.id, checks[check.id])
            assert "memslot layout unknown" in checks[check.id]["reason"]
            assert check.id not in error_ids
        for need in check.requires:
            alternatives = need.split("|")
            if need == "memslot changes" or any(e in data.tables for e in alternatives):
                continue
            c = checks[check.id]
            assert c["status"] == "not_evaluated", (check.id, need, c)
            assert alternatives[0] in c["reason"], c
            assert check.id not in error_ids
    assert 0 <= result.explained_events <= result.events


recording = st.sampled_from(RECORDINGS)


@SETTINGS
@given(stem=recording, data=st.data())
def test_any_subset_of_event_types(stem: str, data: st.DataObject, nested_dir) -> None:
    trace = _read(stem)
    names = sorted(trace.tables)
    keep = data.draw(st.sets(st.sampled_from(names), min_size=1), label="events kept")
    cut = keeping(trace, keep)
    result = _replay(cut)
    _assert_contract(cut, result)
    if result is not None:
        invented = set(_errors(result)) - _whole_errors(stem)
        assert not invented, sorted(invented)[:3]


@SETTINGS
@given(stem=recording, data=st.data())
def test_any_contiguous_seq_window(stem: str, data: st.DataObject, nested_dir) -> None:
    trace = _read(stem)
    ts = np.asarray(trace.events["ts"].to_numpy())
    first = data.draw(st.integers(0, len(ts) - 1), label="first event")
    last = data.draw(st.integers(first, len(ts) - 1), label="last event")
    cut = trace.select(since=int(ts[first]), until=int(ts[last]))  # seqs are ordered by ts
    _assert_contract(cut, _replay(cut))


@SETTINGS
@given(stem=recording, data=st.data())
def test_any_single_cpu(stem: str, data: st.DataObject, nested_dir) -> None:
    trace = _read(stem)
    cpu = data.draw(st.sampled_from(sorted(set(trace.events["cpu"].to_pylist()))), label="cpu")
    cut = trace.select(cpus=[cpu])
    _assert_contract(cut, _replay(cut))


@settings(SETTINGS, max_examples=12)
@given(first=recording, second=recording)
def test_two_recordings_concatenated(first: str, second: str, nested_dir) -> None:
    both = concatenated(_read(first), _read(second))
    a, b = _read(first), _read(second)
    assert both.events.num_rows == a.events.num_rows + b.events.num_rows
    seq = np.asarray(both.events["seq"].to_numpy())
    assert (np.diff(seq) > 0).all() and (np.diff(np.asarray(both.events["ts"].to_numpy())) >= 0).all()
    _assert_contract(both, _replay(both))


TEXT_TWINS = ("churn-zapslot", "mmio-zapall", "tdp-churn-noquirk-small-kt", "shadow-churn-noquirk-small-kt",
              "tdpmmu0-boot-small-kt")


@cache
def _read_text(stem: str) -> TraceData:
    """The kernel's own text of a recording (its ``.txt.gz`` twin): no role words, no empty tables."""
    path = SAMPLES / f"{stem}.txt.gz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # text twins note the hashed pointers and the truncated comms
        return parsers.read(path if path.exists() else NESTED / f"{stem}.txt.gz")


@SETTINGS
@given(stem=st.sampled_from(TEXT_TWINS), data=st.data())
def test_text_twins_cut_any_way(stem: str, data: st.DataObject, nested_dir) -> None:
    """The same cuts on text input, where the role words are missing and an event that never fired
    has no table at all."""
    trace = _read_text(stem)
    how = data.draw(st.sampled_from(["types", "window", "cpu"]), label="cut")
    if how == "types":
        cut = keeping(trace, data.draw(st.sets(st.sampled_from(sorted(trace.tables)), min_size=1), label="kept"))
    elif how == "window":
        ts = np.asarray(trace.events["ts"].to_numpy())
        first = data.draw(st.integers(0, len(ts) - 1), label="first event")
        last = data.draw(st.integers(first, len(ts) - 1), label="last event")
        cut = trace.select(since=int(ts[first]), until=int(ts[last]))
    else:
        cut = trace.select(cpus=[data.draw(st.sampled_from(sorted(set(trace.events["cpu"].to_pylist()))))])
    _assert_contract(cut, _replay(cut))


# -- the inputs of the issue, named ---------------------------------------------------------------

def test_boot_without_set_spte_replays(nested_dir) -> None:
    """A real QEMU/SeaBIOS boot traces page lookups, zaps and MMIO but no kvm_mmu_set_spte; the
    same shape, cut from a real boot: this used to die with an IndexError in SpteLifetimes."""
    boot = _read("boot-zapall")
    cut = without(boot, boot.table("kvm_mmu_set_spte")["seq"].to_pylist())
    result = replay(cut)
    checks = {c["id"]: c for c in result.checks.to_pylist()}
    assert result.mmu == "shadow"
    assert checks["spte_for_unmapped_gfn"]["status"] == "not_evaluated"
    assert "no leaf SPTE installs" in checks["spte_for_unmapped_gfn"]["reason"]  # enabled, never fired
    assert result.spte_changes.num_rows == 0 and result.shadow_pages.num_rows > 0
    assert not _errors(result)


def test_mail_excerpt_replays() -> None:
    """Ten lines pasted into a 2019 bug report, two of them kvm_mmu_get_page: every check that
    needs SPTEs, zaps or memslots says which event it lacks."""
    with pytest.warns(UserWarning):
        data = parsers.read(TEXT / "mail-2019-kiszka-report-quoted.txt")
    result = replay(data)
    checks = {c["id"]: c for c in result.checks.to_pylist()}
    assert result.events == 2
    assert checks["zap_of_unknown_sp"]["status"] == "not_evaluated"
    assert "kvm_mmu_prepare_zap_page" in checks["zap_of_unknown_sp"]["reason"]
    assert "text output lists only events that occurred" in checks["dangling_spte"]["reason"]
    assert result.findings.num_rows == 0


def test_zap_events_filtered_out_are_not_dangling_sptes(nested_dir) -> None:
    """Without kvm_mmu_prepare_zap_page the shadow model keeps every page, and so every SPTE,
    alive: a delete under zap-all would look like SPTEs left behind. The check must say it
    cannot tell instead (found by the subset property on dirty-zapall)."""
    trace = _read("dirty-zapall")
    whole = {c["id"]: c["status"] for c in replay(trace).checks.to_pylist()}
    cut = keeping(trace, set(trace.tables) - {"kvm_mmu_prepare_zap_page"})
    checks = {c["id"]: c for c in replay(cut).checks.to_pylist()}
    assert whole["dangling_spte"] == "passed"
    assert checks["dangling_spte"]["status"] == "not_evaluated"
    assert "page zaps end the lifetime" in checks["dangling_spte"]["reason"]


# -- a file cut short -----------------------------------------------------------------------------

@SETTINGS
@given(stem=recording, data=st.data())
def test_any_prefix_read_as_cut_short_invents_no_error(stem: str, data: st.DataObject, nested_dir) -> None:
    """A recording that stops early, as a reader salvaging a cut file reports it: what the
    missing tail would have shown (the re-creating memslot line, a zap on a CPU that stopped
    earlier) cannot make an error the whole recording does not have."""
    trace = _read(stem)
    ts = np.asarray(trace.events["ts"].to_numpy())
    last = data.draw(st.integers(0, len(ts) - 1), label="last event")
    cut = trace.select(since=None, until=int(ts[last]))
    cut = replace(cut, info=replace(cut.info, cut_short=True))
    result = _replay(cut)
    _assert_contract(cut, result)
    if result is not None:
        invented = set(_errors(result)) - _whole_errors(stem)
        assert not invented, sorted(invented)[:3]


@pytest.mark.parametrize("stem,cut,hidden", [
    ("churn-zapslot", 80_000, 4),  # the installs come after the earliest CPU's last event
    ("churn-thp-zapall", 40_000, 32),  # they come before it: only their horizon reaches the cut
])
def test_truncated_file_gives_warnings_that_say_so(stem: str, cut: int, hidden: int, tmp_path) -> None:
    """A sample without its last bytes: the reader salvages the complete pages. The re-creating
    memslot line of a BAR is among what was lost, so SPTEs installed in its update window look
    unmapped; they are warnings that name the cut, not errors (the whole file has none). An
    install's verdict depends on the lines after it up to the one that covers its gfn again, so
    even one made before every CPU's last event is uncertain when that line is missing."""
    raw = (SAMPLES / f"{stem}.dat").read_bytes()
    path = tmp_path / "cut.dat"
    path.write_bytes(raw[: len(raw) - cut])
    with pytest.warns(UserWarning, match="cut short"):
        data = parsers.read(path)
    assert data.info.cut_short
    assert not _whole_errors(stem)
    result = replay(data)
    assert not _errors(result)
    notes = [f for f in result.findings.to_pylist() if f["id"] == "spte_for_unmapped_gfn"]
    assert len(notes) == hidden
    assert all(f["severity"] == "warning" and "the file was cut short" in f["message"] for f in notes)
    assert any("the file was cut short" in limit for limit in result.limits)
    assert not parsers.read(SAMPLES / f"{stem}.dat").info.cut_short
