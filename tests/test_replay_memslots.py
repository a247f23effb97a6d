"""The memslot timeline, from QEMU lines in real recordings (the lab writes QEMU >= 9.0 lines) and
from the two older QEMU formats, which no recording here has (hand-made from QEMU's
``accel/kvm/trace-events`` format strings, quoted in kvm-host-notes.md)."""

from __future__ import annotations

import collections
import itertools
import re

import numpy as np
import pytest
from conftest import SAMPLES

from kvmtrace import parsers
from kvmtrace.parsers.errors import TraceError
from kvmtrace.replays import memslots as ms
from kvmtrace.replays import replay
from kvmtrace.replays.qemu_lines import parse_set_memory

LAB_KIND = re.compile(r"kvmlab_memslot_ioctl .*?kind=([\w-]+)")


def _timeline(data):
    ev = data.events
    return ms.from_prints(data.tables.get("print"), ev.column("seq").to_numpy(), ev.column("pid").to_numpy())


def test_three_qemu_formats_parse_alike():
    v72 = "kvm_set_user_memory Slot#65538 flags=0x2 gpa=0xc0000 size=0x20000 ua=0x7f0000000000 ret=0"
    v8 = "kvm_set_user_memory AddrSpace#1 Slot#2 flags=0x2 gpa=0xc0000 size=0x20000 ua=0x7f0000000000 ret=0"
    v9 = ("kvm_set_user_memory AddrSpace#1 Slot#2 flags=0x2 gpa=0xc0000 size=0x20000 ua=0x7f0000000000 "
          "guest_memfd=-1 guest_memfd_offset=0x0 ret=0")
    lines = [parse_set_memory(t, 7, 1) for t in (v72, v8, v9)]
    assert all(line == lines[0] for line in lines)
    assert (lines[0].as_id, lines[0].slot, lines[0].gpa, lines[0].size) == (1, (1 << 16) | 2, 0xC0000, 0x20000)


@pytest.mark.parametrize(
    "name", ["tdp-churn-noquirk-small-kt", "shadow-churn-noquirk-small-kt", "k61tdp-churn-small-kt"])
def test_changes_match_lab_kinds(nested_dir, name):
    """Oracle: the lab's own ``kvmlab_memslot_ioctl kind=...`` marker beside every QEMU line, and the
    counts file's number of ``kvm_set_user_memory`` lines."""
    data = parsers.read(nested_dir / f"{name}.dat")
    tl = _timeline(data)
    counts = (nested_dir / f"{name}.counts.txt").read_text()
    n_lines = int(re.search(r"(\d+)\s+kvm_set_user_memory", counts).group(1))
    assert len(tl.changes) == n_lines
    lab = collections.Counter(LAB_KIND.search(b).group(1) for b in data.table("print").column("buf").to_pylist()
                              if b and b.startswith("kvmlab_memslot_ioctl"))
    ours = collections.Counter(c.kind for c in tl.changes)
    assert ours == lab
    assert tl.complete and tl.known_from is not None and tl.quirk_hint is not None


def test_window_anchor_on_traced_leaf_zaps(nested_dir):
    """tdp-churn-noquirk (zap-slot): a delete of a slot with SPTEs has its leaf zaps traced on the
    ioctl thread before the QEMU line; the window must start exactly at the first of them."""
    data = parsers.read(nested_dir / "tdp-churn-noquirk-small-kt.dat")
    changes = replay(data).memslots.to_pylist()
    changed = data.table("kvm_tdp_mmu_spte_changed").to_pydict()
    anchored = 0
    for prev, c in itertools.pairwise(changes):
        if c["kind"] != "delete":
            continue
        own = [s for s, p in zip(changed["seq"], changed["pid"]) if p == c["pid"] and prev["seq"] < s < c["seq"]]
        assert c["window_start"] <= c["seq"]
        if own:
            anchored += 1
            assert c["anchor"] == "zaps of the ioctl thread" and c["window_start"] == own[0]
    assert anchored > 0


def test_slot_lookup_is_exclusive_inside_windows(nested_dir):
    data = parsers.read(nested_dir / "tdp-churn-noquirk-small-kt.dat")
    tl = _timeline(data)
    d = next(c for c in tl.changes if c.kind == "delete")
    gfn = np.array([d.old_base_gfn] * 3, dtype=np.uint64)
    seq = np.array([d.window_start - 1, d.window_start, d.seq + 1])
    assert tl.slot_at(gfn, seq).tolist() == [d.slot, -1, -1]
    assert (tl.window_of(gfn, seq) >= 0).tolist() == [False, True, False]


def test_layout_inputs_and_bad_logs():
    layout = ms.from_layout({"slots": [{"slot": 1, "gpa": "0x100000", "size": "0x4000000"}]})
    assert layout.slot_at(np.array([0x100], np.uint64), np.array([5])).tolist() == [1]
    with pytest.raises(TraceError):
        ms.from_layout({"regions": []})
    data = parsers.read(SAMPLES / "ptslot-zapslot.dat")
    with pytest.raises(TraceError, match="kvm_set_user_memory"):
        replay(data, qemu_log_lines=["nothing here"])


def test_true_moves_and_read_only_toggles():
    """Oracle: the lab's own markers. ``kvmlab_memslot_move`` (a KVM_MR_MOVE, for which QEMU writes
    no line) must become a move to the new gpa; a read-only toggle (two ioctls, ``kind=ro-toggle-*``,
    ONE QEMU line) must become one re-create with the new flags."""
    for name, marker, kind in (("churn-zapslot", "kvmlab_memslot_move", "move"),
                               ("rom-zapslot", "kind=ro-toggle-create", "recreate")):
        path = SAMPLES / f"{name}.dat"
        if not path.exists():
            pytest.fail(f"{name} is missing (lab/record-samples.sh records it)")
        data = parsers.read(path)
        bufs = data.table("print").to_pydict()
        marked = [(s, b) for s, b in zip(bufs["seq"], bufs["buf"]) if b and marker in b]
        tl = _timeline(data)
        got = [c for c in tl.changes if c.kind == kind]
        assert len(got) == len(marked) > 0
        if kind == "move":
            for c, (seq, buf) in zip(got, marked):
                gpa = int(re.search(r" gpa=(0x[0-9a-f]+)", buf).group(1), 16)
                assert c.seq == seq and c.base_gfn == gpa >> 12 and c.old_base_gfn != c.base_gfn
        else:
            assert all((c.flags ^ c.old_flags) & ms.KVM_MEM_READONLY for c in got)


def _layout_from_first_lines(result):
    """A layout file as a user would write it from the VM's first memslot lines: every slot the
    trace creates before its first delete/move."""
    rows = result.memslots.to_pylist()
    first = next(i for i, c in enumerate(rows) if c["kind"] in ms.REMOVING_KINDS)
    return {"slots": [{"slot": c["slot"] & 0xFFFF, "as_id": c["as_id"], "gpa": hex(c["base_gfn"] << 12),
                       "size": hex(c["npages"] << 12), "flags": c["flags"], "userspace_addr": hex(c["userspace_addr"])}
                      for c in rows[:first] if c["kind"] == "create"]}


def test_layout_file_is_the_starting_layout():
    """churn-zapslot moves and deletes BAR slots. A layout file built from its first lines is the
    layout at the start; the trace's own lines still apply, so the replay must give exactly the
    findings and checks of the trace alone, and every row says where it came from."""
    path = SAMPLES / "churn-zapslot.dat"
    if not path.exists():
        pytest.fail("churn-zapslot is missing (lab/record-samples.sh records it)")
    data = parsers.read(path)
    plain = replay(data)
    layout = _layout_from_first_lines(plain)
    with_file = replay(data, memslots=layout)

    def findings(r):
        return sorted((f["id"], f["severity"], f["seq"], f["gfn"], f["message"]) for f in r.findings.to_pylist())

    assert findings(with_file) == findings(plain)
    assert with_file.checks.to_pylist() == plain.checks.to_pylist()
    rows = with_file.memslots.to_pylist()
    seeded = rows[:len(layout["slots"])]
    assert all(r["source"] == f"layout file slot {r['slot']}" and r["placement"] == ms.AT_START and r["seq"] is None
               for r in seeded)
    traced = rows[len(seeded):]
    prints = data.table("print")
    lines = {s for s, b in zip(prints.column("seq").to_pylist(), prints.column("buf").to_pylist())
             if b and ("kvm_set_user_memory" in b or "kvmlab_memslot_move" in b)}
    assert {r["seq"] for r in traced} == lines
    assert all(r["source"] == f"trace marker seq {r['seq']}" and r["placement"] == ms.AT_MARKER and r["confidence"] == 1
               for r in traced)
    # the first lines repeat what the file said (no-ops); later moves still move the slots
    assert [r["kind"] for r in traced[:len(seeded)]] == ["unchanged"] * len(seeded)
    assert [r["kind"] for r in traced[len(seeded):]] == [r["kind"] for r in plain.memslots.to_pylist()[len(seeded):]]
    assert any(r["kind"] == "move" for r in traced)
    # the file alone (a trace without lines) keeps its slots for the whole trace, and says so
    alone = ms.from_layout(layout)
    assert [lt.until_seq for lt in alone.lifetimes] == [np.iinfo(np.int64).max] * len(layout["slots"])


def _window_of_one_by_one(tl, gfn, seq):
    """window_of as a plain loop: every window in change order, a later one overwriting."""
    out = np.full(len(gfn), -1, dtype=np.int64)
    for k, c in enumerate(tl.changes):
        if c.window_start is None or c.window_end is None:
            continue
        inside = (seq >= c.window_start) & (seq <= c.window_end)
        touch = np.zeros(len(gfn), bool)
        for base, n in ((c.base_gfn, c.npages), (c.old_base_gfn, c.old_npages)):
            if base is not None and n:
                touch |= (gfn >= base) & (gfn < base + n)
        out[inside & touch] = k
    return out


@pytest.mark.parametrize("seed", range(10))
def test_window_of_applies_repeated_windows_once_with_the_same_answer(seed):
    """A QEMU log's unplaced lines all have the whole trace as their window; window_of applies
    each distinct window and range once (at its last change) and answers as one pass per change."""
    rng = np.random.default_rng(seed)
    inf = np.iinfo(np.int64).max
    changes = []
    for _ in range(int(rng.integers(1, 60))):
        base = int(rng.choice([0x100, 0x180, 0x400]))
        whole = rng.random() < 0.5
        start = 0 if whole else int(rng.integers(0, 900))
        end = inf if whole else start + int(rng.integers(0, 200))
        old = int(rng.choice([0x100, 0x200])) if rng.random() < 0.5 else None
        changes.append(ms.MemslotChange(None if whole else end, start, "test", 1, 0, 2, "delete", base, 64, 0,
                                        old, 32 if old is not None else None, window_end=end))
    tl = ms.MemslotTimeline(changes=changes)
    seq = rng.integers(0, 1200, 3000)
    gfn = rng.integers(0xF0, 0x480, 3000).astype(np.uint64)
    assert np.array_equal(tl.window_of(gfn, seq), _window_of_one_by_one(tl, gfn, seq))
    in_order = np.argsort(seq, kind="stable")  # a trace's columns come sorted: read in place
    gfn, seq = gfn[in_order], seq[in_order]
    assert np.array_equal(tl.window_of(gfn, seq), _window_of_one_by_one(tl, gfn, seq))


@pytest.mark.parametrize("seed", range(10))
def test_spans_asked_a_block_at_a_time_answer_as_every_interval_one_by_one(seed):
    """A long trace's rows are asked a block of rows at a time with one :class:`ms.Spans`: each
    block visits only the intervals that hold some of its seqs, and the answers are the plain
    loop's over every window (every lifetime, in its address space), a later one overwriting."""
    rng = np.random.default_rng(seed)
    inf = np.iinfo(np.int64).max
    changes, lifetimes = [], []
    for _ in range(int(rng.integers(1, 60))):
        base = int(rng.choice([0x100, 0x180, 0x400]))
        start = int(rng.integers(0, 1100))
        end = inf if rng.random() < 0.1 else start + int(rng.integers(0, 200))
        old = int(rng.choice([0x100, 0x200])) if rng.random() < 0.5 else None
        changes.append(ms.MemslotChange(end, start, "test", 1, 0, 2, "delete", base, 64, 0,
                                        old, 32 if old is not None else None, window_end=end))
        lifetimes.append(ms.Lifetime(int(rng.integers(0, 2)), 2, base, int(rng.choice([0, 64])), 0, start,
                                     inf if rng.random() < 0.1 else start + int(rng.integers(0, 300))))
    tl = ms.MemslotTimeline(changes=changes, lifetimes=lifetimes)
    seq = np.sort(rng.integers(0, 1200, 3000))  # a trace's columns come in seq order
    gfn = rng.integers(0xF0, 0x480, 3000).astype(np.uint64)
    as_id = rng.integers(0, 2, 3000)
    want_life = np.full(len(gfn), -1, dtype=np.int64)
    for k, lt in enumerate(lifetimes):
        want_life[(seq >= lt.from_seq) & (seq < lt.until_seq) & (gfn >= lt.base_gfn)
                  & (gfn < lt.base_gfn + lt.npages) & (as_id == lt.as_id)] = k
    cuts = np.sort(rng.choice(np.arange(1, len(seq)), 12, replace=False))
    blocks = list(itertools.pairwise([0, *cuts.tolist(), len(seq)]))
    windows, lives = tl.window_spans(), tl.lifetime_spans()
    got_windows = np.concatenate([windows.at(gfn[a:z], seq[a:z]) for a, z in blocks])
    got_life = np.concatenate([lives.at(gfn[a:z], seq[a:z], as_id[a:z]) for a, z in blocks])
    assert np.array_equal(got_windows, _window_of_one_by_one(tl, gfn, seq))
    assert np.array_equal(got_life, want_life)
    assert (got_life >= 0).any() and (got_life < 0).any() and (got_windows >= 0).any()


@pytest.mark.parametrize("seed", range(5))
def test_known_holes_per_range_are_every_removals_holes(seed):
    """gfns of a removed range after that removal's window: one pass per range (from its earliest
    window end) marks what a pass per removal marks."""
    from types import SimpleNamespace

    from kvmtrace.replays.detectors.layout import _known_holes

    rng = np.random.default_rng(seed)
    changes = [ms.MemslotChange(None, 0, "test", 1, 0, 2, str(rng.choice(["delete", "move", "create"])), 0x900, 8, 0,
                                int(rng.choice([0x100, 0x180])), 64, window_end=int(rng.integers(0, 1000)))
               for _ in range(40)]
    seq = rng.integers(0, 1200, 2000)
    gfn = rng.integers(0xF0, 0x200, 2000).astype(np.uint64)
    want = np.zeros(len(gfn), bool)
    for c in changes:
        if c.kind in ms.REMOVING_KINDS:
            want |= (seq > c.window_end) & (gfn >= c.old_base_gfn) & (gfn < c.old_base_gfn + c.old_npages)
    got = _known_holes(SimpleNamespace(timeline=ms.MemslotTimeline(changes=changes)), gfn, seq)
    assert np.array_equal(got, want) and want.any() and not want.all()
