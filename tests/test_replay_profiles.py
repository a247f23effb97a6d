"""Kernel profiles: role words decoded with the profile must say what the kernel's own text says.

Oracle: the kernel's text twin of each recording (``.txt.gz``), whose ``KVM_MMU_PAGE_PRINTK``
output (``sp gen G gfn X lL N-byte qQ [direct] ACC [invalid] [!]nxe [!]ad root R sync|unsync``)
was printed by the kernel from the same role words, read here with an independent regex.
"""

from __future__ import annotations

import gzip
import re

import numpy as np
import pytest

from kvmtrace import parsers
from kvmtrace.parsers.errors import TraceError
from kvmtrace.replays.profiles import decode_role, profile_for

PAGE_EVENTS = ("kvm_mmu_get_page", "kvm_mmu_prepare_zap_page")
ACCESS = ["---", "--x", "w--", "w-x", "-u-", "-ux", "wu-", "wux"]
SP = re.compile(r": (kvm_mmu_get_page|kvm_mmu_prepare_zap_page): sp gen (\d+) gfn ([0-9a-f]+) l(\d) (\d)-byte "
                r"q(\d)( direct)? (\S{3})( invalid)? (!?)nxe (!?)ad root (\d+) (sync|unsync)")


def _text_pages(path, event):
    rows = []
    with gzip.open(path, "rt", errors="replace") as f:
        for line in f:
            m = SP.search(line)
            if m and m.group(1) == event:
                rows.append(m.groups()[1:])
    return rows


@pytest.mark.parametrize("name", ["tdp-boot-small-kt", "shadow-churn-noquirk-small-kt", "tdpmmu0-boot-small-kt",
                                  "k61tdp-churn-small-kt"])
@pytest.mark.parametrize("event", PAGE_EVENTS)
def test_role_decode_matches_kernel_text(nested_dir, name, event):
    data = parsers.read(nested_dir / f"{name}.dat")
    table = decode_role(data.table(event), profile_for(data.info.kernel))
    text = _text_pages(nested_dir / f"{name}.txt.gz", event)
    assert table.num_rows == len(text) > 0
    got = table.to_pydict()
    for i, (gen, gfn, level, nbytes, q, direct, acc, invalid, nxe, ad, root, _sync) in enumerate(text):
        assert got["gfn"][i] == int(gfn, 16)
        assert got["mmu_valid_gen"][i] == int(gen)
        assert got["level"][i] == int(level)
        assert got["has_4_byte_gpte"][i] == (nbytes == "4")
        assert got["quadrant"][i] == int(q)
        assert got["direct"][i] == bool(direct)
        assert ACCESS[got["access"][i]] == acc
        assert got["invalid"][i] == bool(invalid)
        assert got["efer_nx"][i] == (nxe == "")
        assert got["ad_disabled"][i] == (ad == "!")
        assert got["root_count"][i] == int(root)


def test_profile_by_release():
    """Era boundaries from tracepoints.md §3/§4: hand-checked facts, not the code's output."""
    p618, p61, p54 = profile_for("6.18.44"), profile_for("6.1.0-56-amd64"), profile_for("5.4.0")
    assert p618.nonpresent == 1 << 63 and p61.nonpresent == 0  # BIT(63) from 6.10
    assert p618.role_field("passthrough").shift == 18 and p54.role_field("passthrough") is None
    assert p618.role_field("has_4_byte_gpte") and p54.role_field("cr4_pae")  # bit 4 flips in 5.17
    assert profile_for("4.1.0").role_field("direct").shift == 13  # padded era B
    assert profile_for("5.2.0").slot_zap_rule == "gfn_2019"  # 4e103134b862 (test_zap_rules: the eras)
    assert p618.mmu_present_bit == 11 and profile_for("5.12.0").mmu_present_bit is None


def test_profile_rejects_garbage():
    with pytest.raises(TraceError, match=r"pass e\.g\. kernel 6\.12$"):
        profile_for("linux")


def test_present_and_mmio_on_real_values(nested_dir):
    """6.12 NPT SPTEs from tdp-churn: 0x10ba01e67 is a present leaf, 0x80008000e04b7 is an MMIO SPTE
    (the same event is followed by mark_mmio_spte gfn 8000e0), BIT(63) is non-present."""
    p = profile_for("6.12.107+deb12-amd64")
    values = np.array([0x10BA01E67, 0x80008000E04B7, 1 << 63], dtype=np.uint64)
    assert p.is_present(values).tolist() == [True, False, False]
    assert p.is_mmio(values).tolist() == [False, True, False]
    assert p.pfn(values[:1]).tolist() == [0x10BA01]


@pytest.mark.parametrize("name", ["tdp-churn-noquirk-small-kt", "k61tdp-churn-small-kt"])
def test_mmio_generation_layout_matches_kernel_decode(nested_dir, name):
    """On 5.10+ ``mark_mmio_spte.gen`` is the kernel's own decode of the MMIO SPTE it just wrote, and
    the TDP MMU traces that SPTE's value in the ``kvm_tdp_mmu_spte_changed`` right before it."""
    data = parsers.read(nested_dir / f"{name}.dat")
    p = profile_for(data.info.kernel)
    marks = data.table("mark_mmio_spte").to_pylist()
    changes = {(c["seq"], c["gfn"]): c["new_spte"] for c in data.table("kvm_tdp_mmu_spte_changed").to_pylist()}
    pairs = [(changes[(m["seq"] - 1, m["gfn"])], m["gen"]) for m in marks if (m["seq"] - 1, m["gfn"]) in changes]
    assert len(pairs) > 10
    values = np.array([v for v, _ in pairs], dtype=np.uint64)
    assert p.is_mmio(values).all()
    assert p.mmio_generation(values).tolist() == [g for _, g in pairs]


def test_spte_format_npt_on_real_traces_and_ept_by_construction(nested_dir):
    """The nested recordings are AMD NPT: their leaf SPTEs read as the x86 format. No Intel EPT
    recording exists here, so the EPT side is hand-made from the bit layout (tracepoints.md §4.1-§4.3:
    MMU-present bit 11, R/W/X bits 0-2, write-back memory type 6 in bits 3-5, A bit 8, D bit 9)."""
    from kvmtrace.replays import replay
    from kvmtrace.replays.profiles import ept, spte_flavour

    result = replay(parsers.read(nested_dir / "tdp-churn-noquirk-small-kt.dat"))
    assert any("SPTE format shadow/NPT" in a for a in result.assumptions)
    p = profile_for("6.12")
    pfns = np.arange(0x100000, 0x100020, dtype=np.uint64) << np.uint64(12)
    ept_leaves = pfns | np.uint64((1 << 11) | 0x7 | 0x30 | (1 << 8) | (1 << 9))
    assert spte_flavour(ept_leaves, p) == "EPT"
    e = ept(p)
    assert (e.accessed_mask, e.dirty_mask) == (1 << 8, 1 << 9)
    assert e.is_mmio(np.array([(1 << 63) | 0x6 | (0x1234 << 12), (1 << 63)], dtype=np.uint64)).tolist() == [True, False]
