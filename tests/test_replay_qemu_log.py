"""QEMU ``-trace`` logs placed on the trace by the kernel's response to each line.

Oracle: real recordings whose memslot lines are in the trace (``ftrace:print``). Those lines are
written out as a QEMU log with a clock of its own (an epoch offset and 30 ppm of drift), every
``print`` row is stripped from the trace, and the log replay is compared with the original:
a placed line must sit at or before its original marker with no event touching its gfns in
between (so every check sees the same order), an unplaced line must say why, and no finding may
appear that the original does not have.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SAMPLES
from mutate import without

from kvmtrace import parsers
from kvmtrace.replays import memslots as ms
from kvmtrace.replays import replay
from kvmtrace.replays.placement import facts_from, touching
from kvmtrace.replays.profiles import profile_for
from kvmtrace.replays.qemu_lines import parse_log_line, parse_set_memory

MSG = ("kvm_set_user_memory AddrSpace#0 Slot#2 flags=0x0 gpa=0xc1080000 size=0x4000 ua=0x7f0000000000 "
       "guest_memfd=-1 guest_memfd_offset=0x0 ret=0")
CASES = ["ptslot-zapslot", "churn-zapslot", "churn-zapall", "nested/tdp-churn-noquirk-small-kt",
         "nested/shadow-churn-noquirk-small-kt"]


def test_log_forms_parse_alike():
    """The log backend's ``PID@SEC.USEC:`` prefix, the kernel's text of QEMU's ftrace backend and a
    bare message give the same change; the prefixes give the pid and the log's own time."""
    forms = [f"4242@1700000000.000250:{MSG}",
             f"  qemu-system-x86-4242    [001] .....  1234.000250: tracing_mark_write: {MSG}",
             MSG]
    got = [parse_log_line(t, n) for n, t in enumerate(forms, 1)]
    assert all(g.line == parse_set_memory(MSG, None, 0) or (g.line.pid, g.line.gpa) == (4242, 0xC1080000) for g in got)
    assert [(g.pid, g.ts) for g in got] == [(4242, 1700000000.00025), (4242, 1234.00025), (None, None)]
    assert {(g.line.slot, g.line.gpa, g.line.size) for g in got} == {(2, 0xC1080000, 0x4000)}
    assert parse_log_line("qemu: unrelated line", 9) is None


def _as_log(data):
    """The trace's memslot lines as a QEMU log with its own clock, and the trace without them."""
    ts = dict(zip(data.events.column("seq").to_pylist(), data.events.column("ts").to_pylist()))
    rows = data.table("print").to_pydict()
    log = [f"{pid}@{1_700_000_012.5 + ts[seq] / 1e9 * (1 + 30e-6):.6f}:{buf.strip()}"
           for seq, pid, buf in zip(rows["seq"], rows["pid"], rows["buf"])
           if buf and ("kvm_set_user_memory" in buf or "kvmlab_memslot_move" in buf)]
    return log, without(data, rows["seq"])


def _key(f):
    return f["id"], f["severity"], f["seq"], f["gfn"]


@pytest.mark.parametrize("name", CASES)
def test_log_lines_placed_where_the_kernel_answered(name, nested_dir):
    path = nested_dir / f"{name[7:]}.dat" if name.startswith("nested/") else SAMPLES / f"{name}.dat"
    data = parsers.read(path)
    original = replay(data)
    log, stripped = _as_log(data)
    result = replay(stripped, qemu_log_lines=log)
    before, after = original.memslots.to_pylist(), result.memslots.to_pylist()
    assert [r["source"] for r in after] == [f"QEMU log line {n}" for n in range(1, len(log) + 1)]
    assert [r["kind"] for r in after] == [r["kind"] for r in before]
    seqs = stripped.events.column("seq").to_numpy()
    facts = facts_from(stripped, profile_for(data.info.kernel))
    changes = ms.log_changes([parse_log_line(t, n) for n, t in enumerate(log, 1)])
    placed = 0
    for old, new, change in zip(before, after, changes):
        truth = int(seqs[np.searchsorted(seqs, old["seq"]) - 1])  # last event before the marker
        if new["seq"] is None:
            assert new["placement"].startswith("unplaced: ") and new["confidence"] is None
            assert any(new["source"] in note for note in result.limits)
            continue
        placed += 1
        assert new["placement"].startswith(f"after seq {new['seq']}: ") and 0 < new["confidence"] <= 1
        # at or before the marker, with nothing touching its gfns in between: the same replay
        assert new["seq"] <= truth, (old, new)
        assert not len(touching(facts, change.ranges, new["seq"], truth + 1)), (old, new)
    # nothing the original does not find
    assert {_key(f) for f in result.findings.to_pylist()} <= {_key(f) for f in original.findings.to_pylist()}
    status = dict(zip(result.checks["id"].to_pylist(), result.checks["status"].to_pylist()))
    if placed == len(after):
        assert sorted(map(_key, result.findings.to_pylist())) == sorted(map(_key, original.findings.to_pylist()))
        assert status == dict(zip(original.checks["id"].to_pylist(), original.checks["status"].to_pylist()))
    elif placed == 0:
        # no zap response, generation or clock: nothing is guessed, and removal checks say so
        assert status["dangling_spte"] == status["fault_in_update_window"] == "not_evaluated"



def test_placement_coverage_on_the_samples(nested_dir):
    """What the evidence of each recording allows (a record of the method's reach, from the data):
    ptslot-zapslot (shadow, page zaps of the slot) is placed entirely; churn-zapslot (no zap, no
    MMIO generation on this host) not at all; the nested runs in part, through TDP leaf zaps and
    the MMIO generations of 6.12."""
    got = {}
    for name in ("ptslot-zapslot", "churn-zapslot"):
        log, stripped = _as_log(parsers.read(SAMPLES / f"{name}.dat"))
        rows = replay(stripped, qemu_log_lines=log).memslots.to_pylist()
        got[name] = sum(r["seq"] is not None for r in rows) / len(rows)
    log, stripped = _as_log(parsers.read(nested_dir / "tdp-churn-noquirk-small-kt.dat"))
    rows = replay(stripped, qemu_log_lines=log).memslots.to_pylist()
    got["tdp"] = sum(r["seq"] is not None for r in rows) / len(rows)
    assert got["ptslot-zapslot"] == 1.0 and got["churn-zapslot"] == 0.0 and 0.3 < got["tdp"] < 1.0
    refused = [r for r in rows if r["placement"].startswith("unplaced: events touching its gfns")]
    assert refused and all("fit equally" in r["placement"] for r in refused)
    responses = [r for r in rows if r["seq"] is not None and "after its kernel response: zaps seq" in r["placement"]]
    assert responses and all(r["anchor"] == ms.ANCHOR_ZAPS for r in responses)


QLOG = SAMPLES.parent / "tests" / "data" / "nested" / "tdpmmu0-ptslot-noquirk-qlog-kt"


def test_2019_scenario_log_placed_outside_kvm_run():
    """The 2019 scenario on 6.12 (legacy MMU in TDP mode, zap-slot, memslot lines only in a QEMU
    log with its own clock, recorded with the nested lab): no zap is traced and no MMIO generation
    printed, so the lines are placed by the one thing the trace shows of the ioctl thread (a vCPU
    thread here): it issues ioctls only between its kvm_userspace_exit and its next kvm_entry. Of
    the clock offsets that fit, the placement that keeps the thread's own installs inside live
    slots holds nearly all the offset range; confidence says so."""
    data = parsers.read(QLOG.with_suffix(".dat"))
    log = QLOG.with_suffix(".qemu.log").read_text().splitlines()
    result = replay(data, qemu_log_lines=log)
    rows = result.memslots.to_pylist()
    removals = [r for r in rows if r["kind"] in ms.REMOVING_KINDS]
    assert result.mmu == "legacy_tdp" and result.zap_policy == "zap_slot"
    assert len(removals) == 7 and all(r["seq"] is not None for r in removals)
    assert all(0.5 < r["confidence"] < 1 and "log clock" in r["placement"] for r in rows)
    assert any("keep every leaf the thread installed inside a live slot" in n for n in result.limits)
    # each placed line lies in a stretch where its thread is out of the guest: around the
    # position, its last guest transition was a kvm_userspace_exit and its next is a kvm_entry
    ev = data.events.to_pydict()
    own = [(s, e) for s, e, p in zip(ev["seq"], ev["event"], ev["pid"])
           if p == 262 and e in ("kvm_userspace_exit", "kvm_entry")]
    for r in removals:
        before = [e for s, e in own if s <= r["seq"]][-1]
        after = next(e for s, e in own if s > r["seq"])
        assert (before, after) == ("kvm_userspace_exit", "kvm_entry"), r
    status = dict(zip(result.checks["id"].to_pylist(), result.checks["status"].to_pylist()))
    assert status["memslot_zap_miss"] == "passed" and status["fault_in_update_window"] == "passed"
