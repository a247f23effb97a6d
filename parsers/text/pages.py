"""Shadow-page ("page-class") events as text: every printed form, and the role word.

``kvm_mmu_get_page``, ``kvm_mmu_sync_page``, ``kvm_mmu_unsync_page``,
``kvm_mmu_prepare_zap_page`` (``kvm_mmu_zap_page`` before ~2.6.35) print ``sp->role`` by its
bit fields, never as the word, and the printed set changed with the kernel era
(reference: tracepoints.md §1.2, §3, §7). This module is the ONE place in the text reader that
knows the role bit layout, because it is only needed to put a printed role back together.

The word is rebuilt only where the printed fields cover every bit of that era's layout:
2.6.3x kernels (layout A: ``glevels:4 level:4 quadrant:2 pad:6 direct:1 access:3 invalid:1
cr4_pge:1 nxe:1``) print all of them. Every later kernel print omits bits (``cr0_wp``,
``smep_andnot_wp``, ``smm``, ``guest_mode``...), and the kvm plugin of ``trace-cmd report``
never shows bits 16-23, so for those ``role`` is null and the table says why (except when the
plugin prints the word itself: ``WORD: %08x`` for a file of the other byte order).
"""

from __future__ import annotations

import polars as pl

from kvmtrace.parsers.text.printf import Choice, Skip

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

#: Kernel ``KVM_MMU_PAGE_PRINTK`` forms, newest first: (era, format, slots).
KERNEL_FORMS: tuple[tuple[str, str, tuple], ...] = (
    (
        "5.4+",
        "sp gen %u gfn %llx l%u %u-byte q%u%s %s%s %snxe %sad root %u %s",
        ("mmu_valid_gen", "gfn", "_level", Skip("4|8"), "_quadrant", _DIRECT, Choice("_access", ACCESS), _INVALID,
         Choice("_nxe", _NOT), Skip("!?"), "root_count", _SYNC),
    ),
    (
        "5.1-5.3",
        "sp gfn %llx l%u %u-byte q%u%s %s%s %snxe %sad root %u %s",
        ("gfn", "_level", Skip("4|8"), "_quadrant", _DIRECT, Choice("_access", ACCESS), _INVALID,
         Choice("_nxe", _NOT), Skip("!?"), "root_count", _SYNC),
    ),
    (
        "3.11-5.0",
        "sp gen %lx gfn %llx %u%s q%u%s %s%s %snxe root %u %s",
        ("mmu_valid_gen", "gfn", "_level", Skip("| pae"), "_quadrant", _DIRECT, Choice("_access", ACCESS), _INVALID,
         Choice("_nxe", _NOT), "root_count", _SYNC),
    ),
    (
        "2.6.35-3.10",
        "sp gfn %llx %u%s q%u%s %s%s %snxe root %u %s",
        ("gfn", "_level", Skip("| pae"), "_quadrant", _DIRECT, Choice("_access", ACCESS), _INVALID,
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
     Skip("!?"), Skip("| smep"), Skip("| smap"), Skip("| smm"), "root_count", _SYNC),
)

#: The plugin's first role printer (trace-cmd before 2015, layout A); ``trace-cmd`` builds of
#: that age were still used on much newer kernels, so its fields say nothing exact about the word.
PLUGIN_ROLE_A = (
    "%u/%u q%u%s %s%s %spge %snxe root %u %s",
    (Skip(r"\d+"), Skip(r"\d+"), Skip(r"\d+"), Skip("| direct"), Skip("|".join(ACCESS)), Skip("| invalid"),
     Skip("!?"), Skip("!?"), "root_count", _SYNC),
)

#: The plugin prints the word itself when the file's byte order is not the host's.
PLUGIN_WORD = ("WORD: %08x root %u %s", ("role", "root_count", _SYNC))

#: Why columns are null for each form (the table metadata carries these).
NULL_REASONS = {
    "role": "the role word is printed by its fields, and this kernel era's print omits some bits "
    "(cr0_wp, smep/smap, smm, guest_mode, ...); rebuilt only for 2.6.3x prints, which show every bit",
    "mmu_valid_gen": "not printed by this format (kvm plugin of trace-cmd report, or a kernel without it)",
    "gfn": "the kvm plugin of trace-cmd report prints gfn only for kvm_mmu_get_page",
}


def variants(event: str) -> list[tuple[str, str, tuple]]:
    """Every printed form of one page-class event: kernel forms, then the kvm plugin's."""
    created = event == "kvm_mmu_get_page"
    out = []
    for era, fmt, slots in KERNEL_FORMS:
        out.append((era, fmt + " %s", slots + (_CREATED,)) if created else (era, fmt, slots))
    for era, (fmt, slots) in (("plugin", PLUGIN_ROLE), ("plugin before 2015", PLUGIN_ROLE_A), ("plugin, other byte order", PLUGIN_WORD)):
        if created:
            out.append((era, "%s sp gfn %llx " + fmt, (_CREATED, "gfn") + slots))
        else:
            out.append((era, fmt, slots))
    return out


#: Layout A (2.6.3x): printed field -> bit position.
LAYOUT_A = {"_glevels": 0, "_level": 4, "_quadrant": 8, "_direct": 16, "_access": 17, "_invalid": 20, "_cr4_pge": 21, "_nxe": 22}


def role_expr() -> pl.Expr:
    """The 2.6.3x role word (layout A) from its printed fields; null for every other form."""
    return pl.sum_horizontal([pl.col(f) * (1 << bit) for f, bit in LAYOUT_A.items()], ignore_nulls=False)


def add_role(df: pl.DataFrame) -> pl.DataFrame:
    """Fill ``role`` where the printed form carries every bit (only the 2.6.3x form prints ``_glevels``)."""
    return df.with_columns(role=pl.coalesce(role_expr(), "role").cast(pl.UInt32))

