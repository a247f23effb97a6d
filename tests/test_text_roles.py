"""Text carries what it prints: the role bits of every page-class event, checked against the binary.

Oracle: the trace.dat of the same records (the role word as the kernel stored it). For every
row, ``role_partial`` must equal the binary ``role`` masked with ``role_mask``, in three text
forms of the same records: the kernel's own text (the twins), ``trace-cmd report`` with its kvm
plugin (which names the bits by the 4.2 layout) and without plugins (``[FAILED TO PARSE]`` and
the raw fields). Rows pair one to one because text keeps the trace.dat's order.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import polars as pl
import pytest
from conftest import NESTED, SAMPLES

from kvmtrace.parsers import read
from kvmtrace.parsers.text.catalog import META_ROLE_UNPRINTED
from kvmtrace.parsers.text.pages import FULL, PAGE_EVENTS

TWINS = sorted(p for d in (NESTED, SAMPLES) for p in d.glob("*.txt.gz") if p.with_name(p.name[:-7] + ".dat").exists())
#: 5.4+ kernel text: level, 4-byte gpte, quadrant, direct, access, invalid, efer_nx (bits 0-12), ad_disabled (16).
MODERN_MASK = 0x1FFF | 1 << 16
#: The kvm plugin: bits 0-15 and the smm byte.
PLUGIN_MASK = 0xFF00FFFF
#: Recordings whose pages differ in the bits text carries (indirect shadow pages, TDP pages).
REPORTED = ("shadow-churn-noquirk-small-kt", "tdp-boot-small-kt", "ptslot-zapslot")


def _dat(name: str) -> Path:
    return next(p for p in (NESTED / f"{name}.dat", SAMPLES / f"{name}.dat") if p.exists())


def assert_roles_match(text, binary, mask: int | None) -> int:
    """Every page-class row: role_partial == binary role & role_mask (and role where text has it)."""
    rows = 0
    for name in PAGE_EVENTS:
        if name not in text.tables:
            continue
        t = pl.from_arrow(text.tables[name])
        b = pl.from_arrow(binary.tables[name])
        assert t.height == b.height, name
        assert (t["gfn"].fill_null(b["gfn"]) == b["gfn"]).all(), f"{name}: rows do not pair"
        if mask is not None:
            assert t["role_mask"].unique().to_list() == [mask], name
        assert ((b["role"] & t["role_mask"]) == t["role_partial"]).all(), f"{name}: partial role differs"
        known = t["role"].is_not_null()
        assert (t["role"].filter(known) == b["role"].filter(known)).all(), name
        rows += t.height
    return rows


@pytest.mark.parametrize("txt", TWINS, ids=lambda p: p.name)
def test_kernel_text_role_bits_equal_binary(txt):
    text, binary = read(txt), read(txt.with_name(txt.name[:-7] + ".dat"))
    assert_roles_match(text, binary, MODERN_MASK)
    for name in PAGE_EVENTS:
        if name in text.tables:
            note = text.tables[name].schema.metadata[META_ROLE_UNPRINTED].decode()
            assert note.startswith("5.4+: layout of 5.17+ assumed") and "cr0_wp (bit 13)" in note
            assert "smm (24-31)" in note and "guest_mode (17)" in note


def test_twins_have_page_events_with_varied_roles():
    """The comparison above is not vacuous: the twins hold thousands of page rows, direct and indirect."""
    roles = set()
    for txt in TWINS:
        text = read(txt)
        for name in PAGE_EVENTS:
            if name in text.tables:
                roles.update(pl.from_arrow(text.tables[name])["role_partial"].unique().to_list())
    assert any(r & 0x80 for r in roles) and any(not r & 0x80 for r in roles), "direct and indirect pages"
    assert len(roles) >= 8


@pytest.fixture(scope="module", params=REPORTED)
def reports(request, trace_cmd, tmp_path_factory):
    """``trace-cmd report`` of a recording: with the kvm plugin, without plugins (-N), raw (-R)."""
    dat = _dat(request.param)
    out = tmp_path_factory.mktemp(request.param)
    files = {}
    for form, flags in (("plugin", []), ("no plugins", ["-N"]), ("raw", ["-R"])):
        path = out / f"{form.replace(' ', '-')}.txt"
        with open(path, "wb") as f:
            subprocess.run([trace_cmd, "report", *flags, str(dat)], stdout=f, stderr=subprocess.DEVNULL, check=True,
                           timeout=300)
        files[form] = path
    return read(dat), files


def test_report_with_kvm_plugin(reports):
    binary, files = reports
    text = read(files["plugin"])
    assert text.skipped == []
    assert assert_roles_match(text, binary, PLUGIN_MASK) > 0
    note = text.tables["kvm_mmu_prepare_zap_page"].schema.metadata[META_ROLE_UNPRINTED].decode()
    assert note.startswith("plugin: ") and "bits 16-23" in note


@pytest.mark.parametrize("form", ["no plugins", "raw"])
def test_report_without_plugin_prints_the_word(reports, form):
    binary, files = reports
    text = read(files[form])
    assert text.skipped == []
    assert assert_roles_match(text, binary, FULL) > 0
    for name in PAGE_EVENTS:
        if name in text.tables:
            assert text.tables[name].column("role").null_count == 0


def test_pre_2015_plugin_gives_the_word_bits_of_layout_a():
    """trace-cmd's first kvm plugin prints ``role.level, role.glevels, ...`` of the 2.6.3x union
    (plugin_kvm.c before 2015) whatever the kernel: those are the word's bits 0-9 and 16-22.
    Read by the layout of 4.20+ kernels, the 2019 report's ``1/4 q3 direct --x`` is level 4,
    8-byte gptes, access w-x, ad_disabled and guest_mode: an indirect page of a nested guest."""
    data = read(Path(__file__).parent / "data" / "text" / "mail-2019-kiszka-report-quoted.txt")
    t = data.tables["kvm_mmu_get_page"]
    got = pl.from_arrow(t)
    assert got["role_mask"].unique().to_list() == [0x3FF | 0x7F << 16]
    assert got["role"].null_count() == got.height
    # "1/4 q3 direct --x !pge !nxe": glevels 4 (bits 0-3), level 1 (4-7), quadrant 3 (8-9),
    # direct (16), access --x = 1 (17-19), invalid/pge/nxe 0.
    assert got["role_partial"].unique().to_list() == [4 | 1 << 4 | 3 << 8 | 1 << 16 | 1 << 17]
    assert b"plugin before 2015: " in t.schema.metadata[META_ROLE_UNPRINTED]


#: Older kernels' page prints (tracepoints.md §1.2, verbatim) and where their role word keeps
#: each printed field (§3: layout E for 5.1-5.3, C for 4.2-5.0, B for 2.6.35-4.1).
OLD_FORMS = {
    "5.1-5.3": ("sp gfn {gfn:x} l{level} {bytes}-byte q{quadrant}{direct} {access}{invalid} {nxe}nxe "
                "{ad}ad root {root} {sync}",
                {"level": 0, "gpte8": 4, "quadrant": 5, "direct": 7, "access": 8, "invalid": 11, "nxe": 12,
                 "ad_disabled": 16}),
    "3.11-5.0": ("sp gen {gen:x} gfn {gfn:x} {level}{pae} q{quadrant}{direct} {access}{invalid} {nxe}nxe "
                 "root {root} {sync}",
                 {"level": 0, "gpte8": 4, "quadrant": 5, "direct": 7, "access": 8, "invalid": 11, "nxe": 12}),
    "2.6.35-3.10": ("sp gfn {gfn:x} {level}{pae} q{quadrant}{direct} {access}{invalid} {nxe}nxe root {root} {sync}",
                    {"level": 0, "gpte8": 4, "quadrant": 5, "direct": 13, "access": 14, "invalid": 17, "nxe": 18}),
}
ACCESS_STR = ["---", "--x", "w--", "w-x", "-u-", "-ux", "wu-", "wux"]


@pytest.mark.parametrize("era", OLD_FORMS)
def test_older_kernel_prints_place_bits_by_their_layout(era, tmp_path):
    """Real page rows (6.12 shadow paging) printed the way an older kernel prints them, one edit per
    field; the partial role must be the word that kernel's layout holds."""
    fmt, layout = OLD_FORMS[era]
    rows = pl.from_arrow(read(_dat("shadow-churn-noquirk-small-kt")).tables["kvm_mmu_prepare_zap_page"])
    lines, expected = [], []
    for i, r in enumerate(rows.iter_rows(named=True)):
        # 6.12 layout: bit 4 has_4_byte_gpte, 7 direct, 8-10 access, 11 invalid, 12 efer_nx, 16 ad_disabled
        w = r["role"]
        f = {"level": w & 15, "gpte8": 0 if w >> 4 & 1 else 1, "quadrant": w >> 5 & 3, "direct": w >> 7 & 1,
             "access": w >> 8 & 7, "invalid": w >> 11 & 1, "nxe": w >> 12 & 1, "ad_disabled": w >> 16 & 1}
        args = fmt.format(gfn=r["gfn"], gen=r["mmu_valid_gen"], level=f["level"], bytes=8 if f["gpte8"] else 4,
                          pae=" pae" if f["gpte8"] else "", quadrant=f["quadrant"],
                          direct=" direct" if f["direct"] else "",
                          access=ACCESS_STR[f["access"]], invalid=" invalid" if f["invalid"] else "",
                          nxe="" if f["nxe"] else "!", ad="!" if f["ad_disabled"] else "", root=r["root_count"],
                          sync="unsync" if r["unsync"] else "sync")
        ts = f"{30 + i // 1000}.{i % 1000:06d}"
        lines.append(f"          kvmlab-324   [000] ....  {ts}: kvm_mmu_prepare_zap_page: {args}")
        expected.append(sum(f[k] << bit for k, bit in layout.items()))
    path = tmp_path / f"{era}.txt"
    path.write_text("\n".join(lines) + "\n")
    t = read(path).tables["kvm_mmu_prepare_zap_page"]
    assert t.schema.metadata[b"kvmtrace.text_forms"] == era.encode()
    got = pl.from_arrow(t)
    assert got["role_partial"].to_list() == expected
    widths = {"level": 4, "access": 3, "quadrant": 2}
    assert got["role_mask"].unique().to_list() == [sum(((1 << widths.get(k, 1)) - 1) << b for k, b in layout.items())]
    assert len(set(expected)) > 3


def test_a_printed_field_wider_than_its_bits_gives_no_role(tmp_path):
    """A damaged line can print a quadrant no kernel prints (the field has two bits): ``q4``
    would carry into the direct bit, ``q4294967296`` is beyond u32 (and stopped the reader).
    Such a row knows no role bit: mask 0, partial 0; the others keep theirs."""
    line = ("          kvmlab-324   [000] ....  30.{i:06d}: kvm_mmu_get_page: sp gen 0 gfn 1{i:x} l1 8-byte q{q} "
            "direct --- !nxe ad root 0 sync existing")
    quadrants = ["3", "4", "4294967296", "18446744073709551616"]
    (tmp_path / "t.txt").write_text("".join(line.format(i=i, q=q) + "\n" for i, q in enumerate(quadrants)))
    got = pl.from_arrow(read(tmp_path / "t.txt").tables["kvm_mmu_get_page"])
    assert got["role_mask"].to_list() == [MODERN_MASK, 0, 0, 0]
    assert got["role_partial"].to_list() == [1 | 3 << 5 | 1 << 7, 0, 0, 0]
