"""Shadow-page ("page-class") events as text: every printed form, and the role word.

``kvm_mmu_get_page``, ``kvm_mmu_sync_page``, ``kvm_mmu_unsync_page``,
``kvm_mmu_prepare_zap_page`` (``kvm_mmu_zap_page`` before ~2.6.35) print ``sp->role`` by its
bit fields, never as the word, and the printed set changed with the kernel era
(docs/tracepoints.md §1.2, §3, §7). This module is the ONE place in the text reader that
knows the role bit layout, because it is only needed to put a printed role back together.

``role`` (the whole word) is rebuilt only where the print covers every bit: 2.6.3x kernels
(layout A), and the forms that print the word itself (``trace-cmd report -R``, the
``[FAILED TO PARSE]`` fallback without the kvm plugin, the plugin's ``WORD:``). Every other form
omits bits, so each row also gets ``role_partial`` (the printed bits, placed where the word of
that form's era has them; every other bit 0) and ``role_mask`` (the bits that are printed), so
``(gfn, role_partial, role_mask)`` identifies a page as far as text can. The table metadata
``kvmtrace.role_unprinted`` names, per printed form, the layout assumed and the bits not printed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import polars as pl

from kvmtrace.parsers.text.printf import RAW_FORM, Choice, Slot

PAGE_EVENTS = (
    "kvm_mmu_get_page",
    "kvm_mmu_sync_page",
    "kvm_mmu_unsync_page",
    "kvm_mmu_prepare_zap_page",
    "kvm_mmu_zap_page",
    "kvm_mmu_delay_free_pages",
)

ACCESS = {"---": 0, "--x": 1, "w--": 2, "w-x": 3, "-u-": 4, "-ux": 5, "wu-": 6, "wux": 7}
_DIRECT = Choice("_direct", {" direct": 1, "": 0})
_INVALID = Choice("_invalid", {" invalid": 1, "": 0})
_NOT = {"": 1, "!": 0}
_SYNC = Choice("unsync", {"unsync": 1, "sync": 0})
_CREATED = Choice("created", {"new": 1, "existing": 0})
_BYTES = Choice("_bytes", {"4": 4, "8": 8})
_PAE = Choice("_pae", {" pae": 1, "": 0})
_AD_DISABLED = Choice("_ad_disabled", {"!": 1, "": 0})

#: Kernel ``KVM_MMU_PAGE_PRINTK`` forms, newest first: (era, format, slots).
KERNEL_FORMS: tuple[tuple[str, str, tuple[Slot, ...]], ...] = (
    (
        "5.4+",
        "sp gen %u gfn %llx l%u %u-byte q%u%s %s%s %snxe %sad root %u %s",
        ("mmu_valid_gen", "gfn", "_level", _BYTES, "_quadrant", _DIRECT, Choice("_access", ACCESS), _INVALID,
         Choice("_nxe", _NOT), _AD_DISABLED, "root_count", _SYNC),
    ),
    (
        "5.1-5.3",
        "sp gfn %llx l%u %u-byte q%u%s %s%s %snxe %sad root %u %s",
        ("gfn", "_level", _BYTES, "_quadrant", _DIRECT, Choice("_access", ACCESS), _INVALID,
         Choice("_nxe", _NOT), _AD_DISABLED, "root_count", _SYNC),
    ),
    (
        "3.11-5.0",
        "sp gen %lx gfn %llx %u%s q%u%s %s%s %snxe root %u %s",
        ("mmu_valid_gen", "gfn", "_level", _PAE, "_quadrant", _DIRECT, Choice("_access", ACCESS), _INVALID,
         Choice("_nxe", _NOT), "root_count", _SYNC),
    ),
    (
        "2.6.35-3.10",
        "sp gfn %llx %u%s q%u%s %s%s %snxe root %u %s",
        ("gfn", "_level", _PAE, "_quadrant", _DIRECT, Choice("_access", ACCESS), _INVALID,
         Choice("_nxe", _NOT), "root_count", _SYNC),
    ),
    (
        "2.6.3x",
        "sp gfn %llx %u/%u q%u%s %s%s %spge %snxe root %u %s",
        ("gfn", "_level", "_glevels", "_quadrant", _DIRECT, Choice("_access", ACCESS), _INVALID,
         Choice("_cr4_pge", _NOT), Choice("_nxe", _NOT), "root_count", _SYNC),
    ),
)

#: libtraceevent plugin_kvm.c role printer (since 2015), as ``trace-cmd report`` shows it.
PLUGIN_ROLE = (
    "%u q%u%s %s%s %spae %snxe %swp%s%s%s root %u %s",
    ("_level", "_quadrant", _DIRECT, Choice("_access", ACCESS), _INVALID, Choice("_pae", _NOT), Choice("_nxe", _NOT),
     Choice("_cr0_wp", _NOT), Choice("_smep", {" smep": 1, "": 0}), Choice("_smap", {" smap": 1, "": 0}),
     Choice("_smm", {" smm": 1, "": 0}), "root_count", _SYNC),
)

#: The plugin's first role printer (trace-cmd before 2015): ``role.level, role.glevels, ...`` of
#: the layout A union, whatever the kernel. ``trace-cmd`` builds of that age were still used on
#: much newer kernels: the names are then wrong, but the values are the word's bits at layout A
#: positions (0-9 and 16-22).
PLUGIN_ROLE_A = (
    "%u/%u q%u%s %s%s %spge %snxe root %u %s",
    ("_level", "_glevels", "_quadrant", _DIRECT, Choice("_access", ACCESS), _INVALID, Choice("_cr4_pge", _NOT),
     Choice("_nxe", _NOT), "root_count", _SYNC),
)

#: The plugin prints the word itself when the file's byte order is not the host's.
PLUGIN_WORD = ("WORD: %08x root %u %s", ("role", "root_count", _SYNC))

#: Why columns are null for each form (the table metadata carries these).
NULL_REASONS = {
    "role": "the role word is printed by its fields, and this kernel era's print omits some bits "
    "(cr0_wp, smep/smap, smm, guest_mode, ...): see role_partial, role_mask and kvmtrace.role_unprinted",
    "mmu_valid_gen": "not printed by this format (kvm plugin of trace-cmd report, or a kernel without it)",
    "gfn": "the kvm plugin of trace-cmd report prints gfn only for kvm_mmu_get_page",
}


def variants(event: str) -> list[tuple[str, str, tuple[Slot, ...]]]:
    """Every printed form of one page-class event: kernel forms, then the kvm plugin's."""
    created = event == "kvm_mmu_get_page"
    out = []
    for era, fmt, slots in KERNEL_FORMS:
        out.append((era, fmt + " %s", (*slots, _CREATED)) if created else (era, fmt, slots))
    plugin_forms = (
        ("plugin", PLUGIN_ROLE), ("plugin before 2015", PLUGIN_ROLE_A), ("plugin, other byte order", PLUGIN_WORD),
    )
    for era, (fmt, slots) in plugin_forms:
        if created:
            out.append((era, "%s sp gfn %llx " + fmt, (_CREATED, "gfn", *slots)))
        else:
            out.append((era, fmt, slots))
    return out


#: The columns every page-class table gets beside the format file's fields.
ROLE_COLUMNS = (("role_partial", "u32"), ("role_mask", "u32"))
FULL = 0xFFFFFFFF
#: Bit widths of the multi-bit role fields (every other printed field is one bit); the plugin
#: prints " smm" when the smm byte is not 0, and the kernel only ever sets it to 0 or 1.
_WIDTHS = {"_level": 4, "_glevels": 4, "_quadrant": 2, "_access": 3, "_smm": 8}


@dataclass(frozen=True)
class RoleForm:
    """How one printed form carries the role word: printed field -> its lowest bit in the word,
    in the layout of the kernel era the form belongs to, and what that form leaves out."""

    bits: Mapping[str, int]
    unprinted: str
    whole: bool = False  # the print covers every bit of the word: ``role`` is rebuilt from it

    @property
    def mask(self) -> int:
        return sum(((1 << _WIDTHS.get(f, 1)) - 1) << b for f, b in self.bits.items())


_MODERN = {"_level": 0, "_quadrant": 5, "_direct": 7, "_access": 8, "_invalid": 11, "_nxe": 12, "_ad_disabled": 16}
#: Layout A (2.6.3x): printed field -> bit; the pre-2015 plugin prints the same fields.
_LAYOUT_A = {"_glevels": 0, "_level": 4, "_quadrant": 8, "_direct": 16, "_access": 17, "_invalid": 20, "_cr4_pge": 21,
             "_nxe": 22}
_PLUGIN = {"_level": 0, "_pae": 4, "_quadrant": 5, "_direct": 7, "_access": 8, "_invalid": 11, "_nxe": 12,
           "_cr0_wp": 13, "_smep": 14, "_smap": 15, "_smm": 24}

#: Printed form (era label) -> how it carries the role (docs/tracepoints.md §3 layouts A-G, §7).
ROLE_FORMS: Mapping[str, RoleForm] = {
    "5.4+": RoleForm(
        {**_MODERN, "_gpte4": 4},
        "layout of 5.17+ assumed, bit 4 = has_4_byte_gpte (set when '4-byte' is printed; on 5.4-5.16 the bit is "
        "gpte_is_8_bytes, the inverse); not printed: cr0_wp (bit 13), smep_andnot_wp (14), smap_andnot_wp (15), "
        "guest_mode (17), passthrough (18, 5.19+), is_mirror (19, TDX), smm (24-31)"),
    "5.1-5.3": RoleForm(
        {**_MODERN, "_gpte8": 4},
        "layout E, bit 4 = gpte_is_8_bytes; not printed: cr0_wp (bit 13), smep_andnot_wp (14), smap_andnot_wp (15), "
        "guest_mode (17), smm (24-31)"),
    "3.11-5.0": RoleForm(
        {"_level": 0, "_pae": 4, "_quadrant": 5, "_direct": 7, "_access": 8, "_invalid": 11, "_nxe": 12},
        "layout of 4.2-5.0 assumed (3.11-4.1 kernels have direct at bit 13, access 14-16, invalid 17, nxe 18); "
        "not printed: cr0_wp (bit 13), smep_andnot_wp (14), smap_andnot_wp (15), ad_disabled (16, 4.13+), "
        "guest_mode (17, 4.20+), smm (24-31, 4.2+)"),
    "2.6.35-3.10": RoleForm(
        {"_level": 0, "_pae": 4, "_quadrant": 5, "_direct": 13, "_access": 14, "_invalid": 17, "_nxe": 18},
        "layout B; not printed: cr0_wp (bit 19), smep_andnot_wp (20)"),
    "2.6.3x": RoleForm(_LAYOUT_A, "layout A: every bit is printed (bits 10-15 and 23-31 are padding)", whole=True),
    "plugin": RoleForm(
        _PLUGIN,
        "the kvm plugin decodes the word by the 4.2 layout whatever the kernel, so its fields are the word's bits "
        "0-15 and the smm byte even where their names are wrong (pae is has_4_byte_gpte on 5.17+); not printed: "
        "bits 16-23 (ad_disabled, guest_mode, passthrough, is_mirror)"),
    "plugin before 2015": RoleForm(
        _LAYOUT_A,
        "the pre-2015 kvm plugin decodes the word by the 2.6.3x layout whatever the kernel, so its fields are the "
        "word's bits 0-9 and 16-22 (on later kernels under wrong names); not printed: bits 10-15 and 23-31"),
}
#: Forms that print the whole word (``role`` column parsed as is).
WORD_FORMS = ("plugin, other byte order", RAW_FORM)


def _partial(form: RoleForm) -> pl.Expr:
    return pl.sum_horizontal([pl.col(f).cast(pl.UInt32, strict=False) * (1 << b) for f, b in form.bits.items()],
                             ignore_nulls=False)


def _fits(form: RoleForm) -> pl.Expr:
    """Whether every printed field fits its bits: a damaged line can print ``q4`` (into the
    next field's bit) or ``q4294967296`` (beyond u32, or u64: no value), which no kernel prints."""
    return pl.all_horizontal([pl.col(f).cast(pl.Int64).is_between(0, (1 << _WIDTHS.get(f, 1)) - 1)
                              for f in form.bits]).fill_null(False)


def add_role(df: pl.DataFrame) -> pl.DataFrame:
    """``role`` where the print covers the whole word, and ``role_partial``/``role_mask`` for every row.

    ``_form`` is the era label of the form each row matched (set by the decoder). Only the
    forms present are built (a file has one, so one pass over its columns). A row whose printed
    fields do not fit their bits knows no role bit: no ``role``, a zero mask.
    """
    present = set(df["_form"].unique().to_list())
    forms = {era: f for era, f in ROLE_FORMS.items() if era in present and f.mask}
    df = df.with_columns(_gpte4=pl.col("_bytes") == 4, _gpte8=pl.col("_bytes") == 8)
    form = pl.col("_form")
    fits = pl.coalesce([pl.when(form == era).then(_fits(f)) for era, f in forms.items()] + [pl.lit(True)])
    whole = [pl.when(form == era).then(_partial(f)) for era, f in forms.items() if f.whole]
    role = pl.when(fits).then(pl.coalesce([*whole, pl.col("role")]))
    partial = pl.coalesce([pl.when(form.is_in(WORD_FORMS)).then(pl.col("role"))]
                          + [pl.when(form == era).then(_partial(f)) for era, f in forms.items()]
                          + [pl.lit(0, pl.UInt32)])
    masks = {era: f.mask for era, f in ROLE_FORMS.items()} | {era: FULL for era in WORD_FORMS}
    masks |= {era: FULL for era, f in ROLE_FORMS.items() if f.whole}
    mask = form.replace_strict(masks, default=0, return_dtype=pl.Int64)
    return df.with_columns(role=role.cast(pl.UInt32), role_partial=pl.when(fits).then(partial).otherwise(0)
                           .cast(pl.UInt32), role_mask=pl.when(fits).then(mask).otherwise(0).cast(pl.UInt32))


def unprinted_notes(forms: set[str]) -> str:
    """``kvmtrace.role_unprinted``: per printed form seen, the layout assumed and the bits not printed."""
    notes = [f"{era}: {f.unprinted}" for era, f in ROLE_FORMS.items() if era in forms]
    notes += [f"{era}: the whole word is printed" for era in WORD_FORMS if era in forms]
    return "; ".join(notes)
