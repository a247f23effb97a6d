"""Shadow-MMU root lifecycle: a root zapped while in use is zapped twice, and the second zap is no
stranger.

mmu.c (__kvm_mmu_prepare_zap_page, mmu_free_root_page; the same from 5.4 to 6.18): zapping a root
whose ``root_count`` is not 0 traces ``kvm_mmu_prepare_zap_page`` with the role as it was and the
root count, then only takes the page off the list and sets ``role.invalid``; when the last vCPU
drops it, ``mmu_free_root_page`` zaps it again, traced with the invalid bit and root_count 0. The
fast zap-all's generation is one bit (5.4+), so two zap-alls later a new root can have the very
identity (gfn, role, generation) of one still waiting for its final zap.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pyarrow.compute as pc
import pytest
from conftest import NESTED, SAMPLES
from mutate import seqs_between, without

from kvmtrace import parsers
from kvmtrace.replays import replay
from kvmtrace.replays.profiles import profile_for

RECORDINGS = sorted(SAMPLES.glob("*.dat")) + sorted(NESTED.glob("*.dat"))


def _moved(data, event: str, seq: int, to: int):
    """``data`` with the ``event`` at ``seq`` happening at ``to`` instead (a free seq)."""
    t = data.table(event)
    col = t["seq"]
    t = t.set_column(t.schema.get_field_index("seq"), "seq", pc.if_else(pc.equal(col, seq), to, col)).sort_by("seq")
    return replace(data, tables={**data.tables, event: t})


def _unknown(result) -> list[dict]:
    return [f for f in result.findings.to_pylist() if f["id"] == "zap_of_unknown_sp"]


def _invalid_bit(data) -> int:
    return 1 << profile_for(data.info.kernel).role_field("invalid").shift


def test_every_root_zapped_in_use_gets_its_final_zap(nested_dir) -> None:
    """In every recording that starts with its VM (all but the lossy one), each zap with the
    invalid bit follows a zap of the same root with root_count > 0, and no zap is a stranger."""
    finals = 0
    for path in RECORDINGS:
        if "lost" in path.stem:
            continue
        data = parsers.read(path)
        zaps = data.tables.get("kvm_mmu_prepare_zap_page")
        if zaps is None:
            continue
        inv = _invalid_bit(data)
        role = np.asarray(zaps["role"].to_numpy(), dtype=np.int64)
        in_use = np.asarray(zaps["root_count"].to_numpy()) > 0
        final = (role & inv) != 0
        assert final.sum() == ((role & inv == 0) & in_use).sum(), path.stem  # one final zap per root zapped in use
        finals += int(final.sum())
        assert _unknown(replay(data)) == [], path.stem
    assert finals >= 60  # churn-zapall alone frees 16 roots this way


def test_late_start_says_which_zap_it_is(nested_dir) -> None:
    """multi-zapall from a quarter in: the root zapped in use before the cut has only its final
    zap in the trace, and the note says so; pages created before the cut say that instead."""
    data = parsers.read(SAMPLES / "multi-zapall.dat")
    ts = np.asarray(data.events["ts"].to_numpy())
    late = data.select(since=int(ts[len(ts) // 4]))
    notes = _unknown(replay(late))
    zaps = late.table("kvm_mmu_prepare_zap_page")
    inv = _invalid_bit(data)
    by_seq = {r["seq"]: r for r in zaps.to_pylist()}
    final = [n for n in notes if by_seq[n["seq"]]["role"] & inv]
    assert len(final) == 1
    assert "final free of an invalid root" in final[0]["message"]
    assert "mmu_free_root_page" in final[0]["message"]
    for n in notes:
        if n not in final:
            assert by_seq[n["seq"]]["root_count"] == 0
            assert "created before the trace started" in n["message"]
    assert all(n["severity"] == "info" for n in notes)


def test_final_zap_after_the_generation_wrapped(nested_dir) -> None:
    """churn-zapall's root gfn 0x10 is zapped in use at each of its 15 zap-alls and freed 50
    events later. Hold the first one (generation 0) across two more zap-alls, as a vCPU halted
    in the guest would: its final zap then arrives while a new generation-0 root of the same gfn
    and role is alive. It must free the old root, not the new one, whose own zap later must not
    look like a page from before the trace."""
    data = parsers.read(SAMPLES / "churn-zapall.dat")
    zaps = data.table("kvm_mmu_prepare_zap_page")
    inv = _invalid_bit(data)
    role = np.asarray(zaps["role"].to_numpy(), dtype=np.int64)
    gen = np.asarray(zaps["mmu_valid_gen"].to_numpy())
    seq = np.asarray(zaps["seq"].to_numpy())
    finals = seq[((role & inv) != 0) & (gen == 0)]
    in_use = seq[((role & inv) == 0) & (np.asarray(zaps["root_count"].to_numpy()) > 0) & (gen == 0)]
    held, later_root_zap = int(finals[0]), int(in_use[1])  # the first gen-0 final zap; the next gen-0 root's zap
    gets = data.table("kvm_mmu_get_page")
    new_root = gets.filter(pc.and_(pc.equal(gets["gfn"], 0x10), pc.and_(pc.equal(gets["mmu_valid_gen"], 0),
                                                                            pc.greater(gets["seq"], held))))
    born = new_root["seq"][0].as_py()
    assert born < later_root_zap
    # reuse the seq of a guest page-table walk element just before the next root's zap
    slot = int(seqs_between(data, "kvm_mmu_paging_element", born, later_root_zap)[-1])
    mutated = _moved(without(data, [slot]), "kvm_mmu_prepare_zap_page", held, slot)
    result = replay(mutated)
    assert _unknown(result) == []
    assert result.explained_share == 1.0
    pages = result.shadow_pages.filter(pc.equal(result.shadow_pages["first_seq"], born)).to_pylist()
    assert len(pages) == 1 and pages[0]["zap_seq"] == later_root_zap


@pytest.mark.parametrize("stem", ["churn-zapall", "ptslot-zapall", "boot-zapall", "churn-lost-zapall"])
def test_text_twin_pairs_root_zaps_without_role_words(stem: str) -> None:
    """The kernel's text prints no role word the reader can keep, so the invalid bit of a final
    zap is not seen and the levels of one gfn share an identity. The text twin must still pair
    every root's two zaps and tell pages apart, giving the notes its trace.dat gives."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = parsers.read(SAMPLES / f"{stem}.txt.gz")
    binary = parsers.read(SAMPLES / f"{stem}.dat")
    assert text.table("kvm_mmu_prepare_zap_page")["role"].null_count == text.table("kvm_mmu_prepare_zap_page").num_rows
    from_text = [(n["ts"], n["gfn"]) for n in _unknown(replay(text))]
    from_binary = [(n["ts"], n["gfn"]) for n in _unknown(replay(binary))]
    assert [g for _, g in from_text] == [g for _, g in from_binary]
    assert all(abs(a - b) < 1000 for (a, _), (b, _) in zip(from_text, from_binary))  # the text prints microseconds
    assert bool(from_text) == ("lost" in stem)  # only the recording that starts late has pages from before it
