"""Decoded presentation checked against the kernel's own rendering of the same records.

Oracles: the kernel's text of a recording (``NAME.txt.gz``, written by the kernel's TP_printk)
prints each ``kvm_mmu_set_spte`` with its r/w/x/u flags and each ``kvm_mmu_get_page`` with its
role decoded (``l4 8-byte q0 wux``, `` direct``); the lab's ``kvmlab_vcpu_thread`` markers name
the thread of each vCPU independently of ``kvm_entry``.
"""

from __future__ import annotations

import gzip
import re
from collections import Counter

from conftest import NESTED, SAMPLES

import kvmtrace
from kvmtrace import parsers
from kvmtrace.replays.digest import digest_of
from kvmtrace.replays.ledger import profile_of
from kvmtrace.replays.threads import entry_pairs, vcpu_threads
from kvmtrace.report import render
from kvmtrace.report.decode import gpa_range, role_word_text, spte_text

_SET_SPTE = re.compile(r"kvm_mmu_set_spte: gfn [0-9a-f]+ spte ([0-9a-f]+) \((.)(.)(.)(.?)\) level")
_GET_PAGE = re.compile(r"kvm_mmu_get_page: sp gen \d+ gfn ([0-9a-f]+) l(\d) (\d)-byte q(\d)( direct)? (\S{3})")


def _kernel_text(path):
    return gzip.open(path.with_name(path.name.replace(".dat", ".txt.gz")), "rt").read()


def test_spte_bits_match_the_kernels_flags():
    path = SAMPLES / "ptslot-zapslot.dat"
    analysis = kvmtrace.open(path).analyze()
    profile = profile_of(analysis.replay)
    seen = 0
    for m in _SET_SPTE.finditer(_kernel_text(path)):
        value = int(m[1], 16)
        words = spte_text(value, profile).split()
        assert words[:2] == ["pfn", hex((value & profile.pfn_mask) >> 12)]
        assert ("W" in words) == (m[3] == "w")
        assert ("NX" not in words) == (m[4] == "x")
        assert ("U" in words) == (m[5] == "u")
        seen += 1
    assert seen == analysis.trace.data.info.event_counts["kvm_mmu_set_spte"]


def test_role_text_matches_the_kernels_get_page_lines():
    path = SAMPLES / "boot-zapall.dat"
    analysis = kvmtrace.open(path).analyze()
    profile = profile_of(analysis.replay)
    kernel = Counter((int(m[1], 16), f"L{m[2]} {'direct' if m[5] else 'indirect'} q{m[4]} {m[6]} {m[3]}-byte")
                     for m in _GET_PAGE.finditer(_kernel_text(path)))
    t = analysis.trace.data.table("kvm_mmu_get_page")
    ours = Counter((gfn, " ".join(role_word_text(role, profile).split()[:5]))
                   for gfn, role in zip(t.column("gfn").to_pylist(), t.column("role").to_pylist()))
    assert sum(kernel.values()) == t.num_rows > 0
    assert ours == kernel


def test_vcpu_threads_from_kvm_entry_agree_with_the_lab_markers(nested_dir):
    data = parsers.read(NESTED / "tdp-multi3-kt.dat")
    threads = vcpu_threads(data, digest_of(data).entry_pairs)
    assert threads.source == "kvm_entry vcpu_id"
    markers = {int(m[2]): int(m[1]) for m in re.finditer(r"kvmlab_vcpu_thread vcpu=(\d+) tid=(\d+)",
                                                         _kernel_text(NESTED / "tdp-multi3-kt.dat"))}
    assert len(markers) == 3 and threads.vcpu_of == markers
    assert entry_pairs(data.tables["kvm_entry"]) == digest_of(data).entry_pairs
    for keep in ("all", "analysis"):  # a full read's view reads the rows, a kept one the digest
        assert threads.text() in kvmtrace.open(NESTED / "tdp-multi3-kt.dat", keep=keep)._repr_html_()


def test_text_report_shows_vcpus_spte_bits_and_gpa_ranges(nested_dir):
    analysis = kvmtrace.open(NESTED / "tdp-multi3-kt.dat").analyze()
    text = render(analysis.model, "text")
    assert "pid 273 = vCPU 0" in text
    # every decoded evidence note sits right under its line
    notes = [ln for ln in text.splitlines() if ln.startswith("      = ")]
    assert notes and re.search(r"new_spte: pfn 0x[0-9a-f]+ P W U A D", " ".join(text.split()))
    for row in analysis.replay.memslots.to_pylist():
        if row["kind"] == "create":
            assert gpa_range(row["base_gfn"], row["npages"]) in text


def test_gpa_range_is_qemus_notation():
    assert gpa_range(0xfd000, 4096) == "0xfd000000-0xfdffffff"
    assert gpa_range(0, 160) == "0x0-0x9ffff"
