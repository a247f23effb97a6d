"""The kernel's own text of a recording replays like its trace.dat.

Oracle: the same records decoded by an independent path (the binary reader over the trace.dat,
recorded together with the kernel's ``trace`` output of every sample and nested recording). Text
prints role words only in part (6.12 prints level, gpte size, quadrant, direct, access, invalid,
nxe and ad: bits 0-12 and 16) and names no kernel; the replay works on the printed bits, so every
check and finding must be the binary replay's: MMU family, zap policy, check statuses, findings.
Findings pair by (id, µs, CPU, gfn, severity): text seqs are the file's order, and text prints µs
where the trace.dat has ns (the kernel rounds, ``(ns + 500) / 1000``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import NESTED, SAMPLES
from mutate import keeping

from kvmtrace import parsers
from kvmtrace.replays import replay

TWINS = sorted(p for d in (SAMPLES, NESTED) for p in d.glob("*.txt.gz"))
#: The fields of the 6.12 role word (kvm_host.h, union kvm_mmu_page_role) that KVM_MMU_PAGE_PRINTK
#: does not print, by hand from the kernel's struct and print format.
UNPRINTED = ("cr0_wp (bit 13), smep_andnot_wp (bit 14), smap_andnot_wp (bit 15), guest_mode (bit 17), "
             "passthrough (bit 18), smm (bits 24-31)")
PRINTED_FIELDS = ("level", "has_4_byte_gpte", "quadrant", "direct", "access", "invalid", "efer_nx", "ad_disabled")
UNPRINTED_FIELDS = ("cr0_wp", "smep_andnot_wp", "smap_andnot_wp", "guest_mode", "passthrough", "smm")
_CACHE: dict[Path, tuple] = {}


def _dat(txt: Path) -> Path:
    return txt.with_name(txt.name[:-7] + ".dat")


def _pair(txt: Path):
    """(binary replay, text replay) of one recording; with its QEMU log where it has one (the
    recordings whose memslot lines are only there)."""
    if txt not in _CACHE:
        log = txt.with_name(txt.name[:-7] + ".qemu.log")
        kw = {"qemu_log_lines": log.read_text().splitlines()} if log.exists() else {}
        _CACHE[txt] = replay(parsers.read(_dat(txt)), **kw), replay(parsers.read(txt), **kw)
    return _CACHE[txt]


def _findings(result, ns: bool) -> list[tuple]:
    return sorted((f["id"], (f["ts"] + 500) // 1000 if ns else f["ts"] // 1000, f["cpu"], f["gfn"], f["severity"])
                  for f in result.findings.to_pylist())


def _checks(result) -> dict[str, str]:
    return dict(zip(result.checks["id"].to_pylist(), result.checks["status"].to_pylist()))


def test_every_recording_has_its_text_twin():
    assert len(TWINS) >= 25 and all(_dat(t).exists() for t in TWINS)


@pytest.mark.parametrize("txt", TWINS, ids=lambda p: p.name[:-7])
def test_text_twin_replays_like_the_binary(txt, nested_dir):
    rd, rt = _pair(txt)
    assert rt.events == rd.events
    assert rt.explained_events == rd.explained_events
    assert rt.mmu == rd.mmu
    assert rt.zap_policy == rd.zap_policy
    assert _checks(rt) == _checks(rd)
    assert _findings(rt, ns=False) == _findings(rd, ns=True)


def test_the_comparison_covers_what_needs_roles(nested_dir):
    """Not vacuous: across the twins, memslot_zap_miss is evaluated on text, the legacy TDP MMU is
    told from shadow paging, and there are findings to compare."""
    statuses = {_checks(_pair(t)[1])["memslot_zap_miss"] for t in TWINS}
    assert "passed" in statuses
    assert {_pair(t)[1].mmu for t in TWINS} == {"shadow", "legacy_tdp", "tdp"}
    assert sum(len(_findings(_pair(t)[1], ns=False)) for t in TWINS) > 1000


@pytest.mark.parametrize("name", ["ptslot-zapslot", "nested/tdpmmu0-ptslot-noquirk-qlog-kt",
                                  "nested/shadow-churn-noquirk-small-kt"])
def test_text_says_which_role_bits_it_lacks(name, nested_dir):
    txt = (NESTED / f"{name[7:]}.txt.gz") if name.startswith("nested/") else SAMPLES / f"{name}.txt.gz"
    rd, rt = _pair(txt)
    limit = next(x for x in rt.limits if x.startswith("role bits not in this input"))
    assert limit.startswith(f"role bits not in this input: {UNPRINTED} (the text reader: 5.4+:")
    assert "share one identity" in limit and "passthrough marks" in limit and "address space 0" in limit
    assert not any("role bits" in x for x in rd.limits)
    assert rt.mmu_evidence[-1] == f"decided from the role bits the text prints; not printed: {UNPRINTED}"
    assert rt.mmu_evidence[0] == rd.mmu_evidence[0] or rt.mmu == "shadow"
    reason = dict(zip(rt.checks["id"].to_pylist(), rt.checks["reason"].to_pylist()))["memslot_zap_miss"]
    assert "passthrough (bit 18) is not printed and only an indirect level-5 root can have it: no such root" in reason


@pytest.mark.parametrize("name", ["ptslot-zapslot", "churn-zapslot", "boot-zapall"])
def test_shadow_pages_carry_the_printed_role_fields(name):
    """The replay's page book from text is the binary's, field by field where text prints the
    field, and null where it does not."""
    rd, rt = _pair(SAMPLES / f"{name}.txt.gz")
    b, t = rd.shadow_pages, rt.shadow_pages
    assert t.num_rows == b.num_rows > 0
    for col in ("gfn", "mmu_valid_gen", "predates_trace", "zap_seq", "root_count", "uses", *PRINTED_FIELDS):
        if col == "zap_seq":  # seqs differ between the forms: compare which pages were zapped
            assert t[col].is_null().equals(b[col].is_null())
        else:
            assert t[col].equals(b[col]), col
    for col in UNPRINTED_FIELDS:
        assert t[col].null_count == t.num_rows, col
    assert set(t["role_mask"].to_pylist()) == {0x1FFF | 1 << 16}
    assert set(b["role_mask"].to_pylist()) == {0xFFFFFFFF}


@pytest.mark.parametrize("era, profile", [("5.1-5.3", "5.1-5.3 (role E"), ("3.11-5.0", "4.20-5.0 (role E)"),
                                          ("2.6.35-3.10", "2.6.35-4.1 (role B")])
def test_older_kernel_text_replays_by_its_own_layout(era, profile, tmp_path):
    """Real page events (ptslot-zapslot, shadow paging) printed the way an older kernel prints
    them (tests/test_text_roles.py builds the lines): the replay must read the printed bits by
    that era's layout (on 2.6.35-3.10 direct is bit 13, not 7), so its pages' level, direct,
    access and quadrant are the binary's."""
    from test_text_roles import ACCESS_STR, OLD_FORMS

    binary = parsers.read(SAMPLES / "ptslot-zapslot.dat")
    fmt = OLD_FORMS[era][0]
    rows = sorted([(r, "kvm_mmu_get_page") for r in binary.table("kvm_mmu_get_page").to_pylist()]
                  + [(r, "kvm_mmu_prepare_zap_page") for r in binary.table("kvm_mmu_prepare_zap_page").to_pylist()],
                  key=lambda x: x[0]["seq"])
    lines = []
    for i, (r, event) in enumerate(rows):
        w = r["role"]
        args = fmt.format(gfn=r["gfn"], gen=r["mmu_valid_gen"], level=w & 15, bytes=4 if w >> 4 & 1 else 8,
                          pae="" if w >> 4 & 1 else " pae", quadrant=w >> 5 & 3, direct=" direct" if w >> 7 & 1 else "",
                          access=ACCESS_STR[w >> 8 & 7], invalid=" invalid" if w >> 11 & 1 else "",
                          nxe="" if w >> 12 & 1 else "!", ad="!" if w >> 16 & 1 else "", root=r["root_count"],
                          sync="unsync" if r["unsync"] else "sync")
        if event == "kvm_mmu_get_page":
            args += " new" if r["created"] else " existing"
        lines.append(f"          kvmlab-324   [000] ....  {30 + i // 1000}.{i % 1000:06d}: {event}: {args}")
    path = tmp_path / f"{era}.txt"
    path.write_text("\n".join(lines) + "\n")
    rt = replay(parsers.read(path))
    rd = replay(keeping(binary, ("kvm_mmu_get_page", "kvm_mmu_prepare_zap_page")))
    assert rt.profile.startswith(profile)
    assert any(f"print the {era} form" in a for a in rt.assumptions)
    assert rt.mmu == rd.mmu == "shadow"
    t, b = rt.shadow_pages, rd.shadow_pages
    assert t.num_rows == b.num_rows > 0
    for col in ("gfn", "level", "direct", "access", "invalid", "quadrant"):
        assert t[col].equals(b[col]), col
    assert 0 < sum(t["direct"].to_pylist()) < t.num_rows


#: The checks that may follow pages through their zaps (which ones do depends on the MMU: the TDP
#: MMU's dangling_spte reads SPTE changes): trace-cmd report's kvm plugin prints no gfn in
#: kvm_mmu_prepare_zap_page lines, so from that form those are not evaluated.
NEEDS_ZAP_GFN = {"dangling_spte", "obsolete_sp_used", "memslot_zap_miss", "zap_of_unknown_sp"}


@pytest.fixture(scope="module", params=["ptslot-zapslot", "churn-zapall", "nested/tdpmmu0-ptslot-noquirk-qlog-kt",
                                        "nested/k61tdp-churn-small-kt"])
def reports(request, trace_cmd, tmp_path_factory):
    """A recording, its binary replay, and ``trace-cmd report`` of it in three forms: with the
    kvm plugin, without plugins (-N) and raw (-R)."""
    import subprocess

    name = request.param
    dat = NESTED / f"{name[7:]}.dat" if name.startswith("nested/") else SAMPLES / f"{name}.dat"
    log = dat.with_name(dat.stem + ".qemu.log")
    kw = {"qemu_log_lines": log.read_text().splitlines()} if log.exists() else {}
    out = tmp_path_factory.mktemp(dat.stem)
    files = {}
    for form, flags in (("plugin", []), ("no plugins", ["-N"]), ("raw", ["-R"])):
        files[form] = out / f"{form.replace(' ', '-')}.txt"
        with open(files[form], "wb") as f:
            subprocess.run([trace_cmd, "report", *flags, str(dat)], stdout=f, stderr=subprocess.DEVNULL, check=True,
                           timeout=300)
    return replay(parsers.read(dat), **kw), files, kw


@pytest.mark.parametrize("form", ["no plugins", "raw"])
def test_trace_cmd_report_without_plugin_replays_like_the_binary(reports, form):
    """Without the kvm plugin the role word is printed whole: nothing may differ."""
    rd, files, kw = reports
    rt = replay(parsers.read(files[form]), **kw)
    assert (rt.mmu, rt.zap_policy, rt.events) == (rd.mmu, rd.zap_policy, rd.events)
    assert _checks(rt) == _checks(rd)
    assert _findings(rt, ns=False) == _findings(rd, ns=True)
    assert not any(x.startswith(("role bits", "page events without a gfn")) for x in rt.limits)


def test_trace_cmd_report_with_kvm_plugin(reports):
    """The plugin prints the role bits 0-15 and smm, but kvm_mmu_prepare_zap_page without its gfn
    and no page generation: the checks that follow pages through their zaps are not evaluated
    (and say why); every other check and finding is the binary's."""
    rd, files, kw = reports
    rt = replay(parsers.read(files["plugin"]), **kw)
    assert (rt.mmu, rt.zap_policy, rt.events) == (rd.mmu, rd.zap_policy, rd.events)
    text, binary = _checks(rt), _checks(rd)
    reasons = dict(zip(rt.checks["id"].to_pylist(), rt.checks["reason"].to_pylist()))
    gated = {cid for cid in NEEDS_ZAP_GFN if text[cid] != binary[cid]}
    assert "zap_of_unknown_sp" in gated  # every MMU's zaps name their page by gfn
    if rd.mmu != "tdp":
        assert gated == {cid for cid in NEEDS_ZAP_GFN if binary[cid] != "not_evaluated"}
    for cid in gated:
        assert text[cid] == "not_evaluated" and "kvm_mmu_prepare_zap_page its lines here carry no gfn" in reasons[cid]
    assert {c: s for c, s in text.items() if c not in gated} == {c: s for c, s in binary.items() if c not in gated}
    assert _findings(rt, ns=False) == [f for f in _findings(rd, ns=True) if f[0] not in gated]
    limit = next(x for x in rt.limits if x.startswith("role bits not in this input"))
    assert limit.startswith("role bits not in this input: "
                            "ad_disabled (bit 16), guest_mode (bit 17), passthrough (bit 18)")
    assert any(x.startswith("page events without a gfn") for x in rt.limits)
    assert rt.unexplained.num_rows == 0


def test_gpte_size_bit_follows_the_kernel_named(nested_dir):
    """The 5.4+ print says ``4-byte``/``8-byte``; the role bit behind it is has_4_byte_gpte on
    5.17+ and gpte_is_8_bytes (cr4_pae here) on 5.4-5.16 (kvm_host.h of each; tracepoints.md §3).
    Oracle: the binary word decoded by its own 6.12 layout, i.e. what the kernel printed."""
    txt = SAMPLES / "ptslot-zapslot.txt.gz"
    rd, rt = _pair(txt)
    four = rd.shadow_pages["has_4_byte_gpte"].to_pylist()
    assert rt.shadow_pages["has_4_byte_gpte"].to_pylist() == four
    old = replay(parsers.read(txt), kernel="5.10")
    assert old.shadow_pages["cr4_pae"].to_pylist() == [1 - x for x in four]
    assert old.shadow_pages["has_4_byte_gpte"].null_count == old.shadow_pages.num_rows
    assert any("bit 4 is gpte_is_8_bytes" in x for x in old.limits)
    assert not any("bit 4 is gpte_is_8_bytes" in x for x in rt.limits)
