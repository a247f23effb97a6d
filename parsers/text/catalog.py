"""The events the text reader decodes: format-file fields and every printed form, by era.

Each :class:`EventSpec` lists the event's fields exactly as the current format file names and
types them (so a text trace yields the same columns as a trace.dat), and its printed forms
newest first, each the kernel's ``TP_printk`` format verbatim with one slot per conversion
(docs/tracepoints.md §1, §2, §7). A line is decoded by the first form that matches it whole.
Events not listed here are kept with their raw argument text (see ``decode.py``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import polars as pl
import pyarrow as pa

from kvmtrace.parsers.text import pages
from kvmtrace.parsers.text.printf import Choice, Compiled, Flags, Pointer, Skip, Slot, Text, compile_format

#: C type of a format-file field -> Arrow type (by size and signedness, as the format file says).
ARROW_TYPES: Mapping[str, pa.DataType] = {
    "u8": pa.uint8(),
    "u16": pa.uint16(),
    "u32": pa.uint32(),
    "u64": pa.uint64(),
    "s8": pa.int8(),
    "s32": pa.int32(),
    "s64": pa.int64(),
    "bool": pa.bool_(),
    "str": pa.string(),
}

#: The same types for polars (the decoders build columns in polars, then hand Arrow out).
POLARS_TYPES: Mapping[str, pl.DataType] = {
    "u8": pl.UInt8(), "u16": pl.UInt16(), "u32": pl.UInt32(), "u64": pl.UInt64(), "s8": pl.Int8(), "s32": pl.Int32(),
    "s64": pl.Int64(), "bool": pl.Boolean(), "str": pl.String(),
}


#: Page-class tables: per printed form seen, the role layout assumed and the bits text does not carry.
META_ROLE_UNPRINTED = b"kvmtrace.role_unprinted"

PFERR = {"P": 1, "W": 2, "U": 4, "RSVD": 8, "F": 16}
PTR_REASON = "pointers are hashed in tracefs text (%p, Linux 4.15+ with hash-ptr); only unhashed values are kept"


@dataclass(frozen=True)
class Form:
    """One printed form of an event: a label for the era, the kernel's format and its slots, compiled."""

    era: str
    fmt: str
    slots: tuple[Slot, ...]
    compiled: Compiled
    #: A narrower printing of the same format tried first: its regex takes a subset of the
    #: form's lines, capturing the same groups with the same values, but matches in one pass
    #: where the form's own cannot (see :func:`_quick_exit_slots`).
    quick: Compiled | None = None


@dataclass(frozen=True)
class EventSpec:
    name: str
    system: str
    fields: tuple[tuple[str, str], ...]  # (format-file name, type code) in format-file order
    forms: tuple[Form, ...]
    #: Column -> why it can be null in text (set as table metadata when the column has nulls).
    null_reasons: Mapping[str, str] = field(default_factory=dict)
    #: Post-processing for values that need more than one captured group (exit reasons, role).
    finish: Callable[[pl.DataFrame], pl.DataFrame] | None = None
    #: ``trace-cmd report -R`` prints a number in the base its print fmt uses; when libtraceevent
    #: cannot parse the print fmt (page-class statement expressions) every number is decimal.
    raw_decimal: bool = False
    #: Columns text adds after the format file's fields (built by ``finish``), e.g. the partial role.
    derived: tuple[tuple[str, str], ...] = ()
    #: Table metadata built from the printed forms seen: key -> (forms -> value); empty value: no key.
    form_notes: Mapping[bytes, Callable[[set[str]], str]] = field(default_factory=dict)

    def schema_fields(self) -> list[pa.Field]:
        return [pa.field(n, ARROW_TYPES[t]) for n, t in (*self.fields, *self.derived)]


def _spec(name: str, system: str, fields: str, forms: list[tuple[str, str, tuple[Slot, ...]]],
          quick: Mapping[str, tuple[Slot, ...]] | None = None, **kw: Any) -> EventSpec:
    """An event from its format-file ``fields`` (``name:type`` words) and printed ``forms``
    (era, format, slots); ``quick`` gives some eras' narrower slots (:attr:`Form.quick`)."""
    parsed = tuple((n, t) for n, _, t in (f.partition(":") for f in fields.split()))
    quick = quick or {}
    compiled = tuple(Form(era, fmt, tuple(slots), compile_format(fmt, tuple(slots)),
                          compile_format(fmt, quick[era]) if era in quick else None)
                     for era, fmt, slots in forms)
    return EventSpec(name, system, parsed, compiled, **kw)


@cache
def exit_reasons() -> dict[str, tuple[int, int]]:
    """Printed exit-reason name -> (exit_reason, isa), for the kernel's and the kvm plugin's names.

    The kernel tables are ``VMX_EXIT_REASONS``/``SVM_EXIT_REASONS`` as a 6.12 format file lists
    them, the plugin tables those of libtraceevent's plugin_kvm.c (``trace-cmd report``); the
    numbers are architectural, so newer kernels only add names. isa: 1 VMX, 2 SVM.
    """
    data = json.loads(resources.files("kvmtrace.parsers.text").joinpath("exit_reasons.json").read_text())
    out: dict[str, tuple[int, int]] = {}
    for table, isa in (("plugin_svm", 2), ("svm", 2), ("plugin_vmx", 1), ("vmx", 1)):
        out.update({name: (value, isa) for name, value in data[table].items()})
    return out


def _finish_exit(df: pl.DataFrame) -> pl.DataFrame:
    """``reason NAME [FAILED_VMENTRY]`` or the plugin's ``reason UNKNOWN (n)`` -> exit_reason, isa
    (a number out of u32, which only damage prints, is null)."""
    table = exit_reasons()
    name = pl.col("_reason")
    unknown = name.str.extract(r"^UNKNOWN \((\d+)\)$").str.to_integer(strict=False)
    code = name.replace_strict({k: v[0] for k, v in table.items()}, default=None, return_dtype=pl.Int64)
    isa = name.replace_strict({k: v[1] for k, v in table.items()}, default=None, return_dtype=pl.Int64)
    high = pl.when(pl.col("_rflags").fill_null("").str.contains("FAILED_VMENTRY")).then(0x80000000).otherwise(0)
    return df.with_columns(
        exit_reason=pl.coalesce(code + high, unknown, "exit_reason").cast(pl.UInt32, strict=False),
        isa=pl.coalesce(isa, "isa").cast(pl.UInt32, strict=False),
    )


def _finish_userspace_exit(df: pl.DataFrame) -> pl.DataFrame:
    """``reason %s (%d)`` prints -errno for failures and the reason otherwise, never both
    (a number out of the field's range, which only damage prints, is null)."""
    printed = pl.col("_what").is_not_null()
    failed = pl.col("_what").is_in(["restart", "error"])
    return df.with_columns(
        errno=pl.when(~printed).then("errno").when(failed).then(-pl.col("_num")).cast(pl.Int32, strict=False),
        reason=pl.when(~printed).then("reason").when(~failed).then(pl.col("_num")).cast(pl.UInt32, strict=False),
    )


def _finish_print(df: pl.DataFrame) -> pl.DataFrame:
    """``ip``: text shows the caller's symbol (``%ps``), so it is kept only when printed as a number.

    ``buf``: trace_marker always stores a trailing newline (the kernel adds one when the writer
    did not) and that newline is what ends the printed line, so it is restored here.
    """
    ip = pl.col("_ip").str.strip_prefix("0x").str.to_integer(base=16, dtype=pl.UInt64, strict=False)
    return df.with_columns(
        ip=pl.when(pl.col("_ip").str.starts_with("0x")).then(ip).otherwise("ip"),
        buf=pl.col("buf") + "\n",
    )



def _exit_reason_slot() -> Text:
    """Reason names may contain spaces (SVM ``PF excp``), so known names are matched literally first."""
    names = sorted((n for n in exit_reasons() if " " in n), key=len, reverse=True)
    return Text("_reason", "|".join([re.escape(n) for n in names] + [r"UNKNOWN \(\d+\)", r"\S+"]))



def _quick_exit_slots() -> tuple[Slot, ...]:
    r"""The 5.11+ ``kvm_exit`` form's slots for its usual line: a one-word reason, no flag.

    Why: the full reason slot (spaced names, ``UNKNOWN (n)``, any word) followed by an optional
    blank and an optional flag cannot be matched in one pass, and capturing it cost 5x the
    other events per line. On a line ``reason WORD rip ...`` the full form's leftmost-first
    match takes the same groups: no spaced name or ``UNKNOWN (n)`` fits a word followed by
    `` rip``, so ``\S+`` takes the whole word, the blank and the flag match empty. Any other
    line fails here and goes to the full form.
    """
    return ("vcpu_id", Text("_reason", r"\S+"), Skip(""), Text("_rflags", ""), "guest_rip",
            "info1", "info2", "intr_info", "error_code")


def _page_spec(name: str) -> EventSpec:
    fields = "mmu_valid_gen:u8 gfn:u64 role:u32 root_count:u32 unsync:bool"
    if name == "kvm_mmu_get_page":
        fields += " created:bool"
    return _spec(name, "kvmmmu", fields, pages.variants(name), null_reasons=pages.NULL_REASONS,
                 finish=pages.add_role, raw_decimal=True, derived=pages.ROLE_COLUMNS,
                 form_notes={META_ROLE_UNPRINTED: pages.unprinted_notes})


def _specs() -> list[EventSpec]:
    reason = _exit_reason_slot()
    specs = [_page_spec(n) for n in pages.PAGE_EVENTS]
    specs += [
        _spec("kvm_mmu_pagetable_walk", "kvmmmu", "addr:u64 pferr:u32",
              [("3.6+", "addr %llx pferr %x %s", ("addr", "pferr", Skip(r"[A-Za-z0-9_|]*")))]),
        _spec("kvm_mmu_paging_element", "kvmmmu", "pte:u64 level:u32", [("all", "pte %llx level %u", ("pte", "level"))]),
        _spec("kvm_mmu_set_accessed_bit", "kvmmmu", "gpa:u64", [("all", "gpa %llx", ("gpa",))]),
        _spec("kvm_mmu_set_dirty_bit", "kvmmmu", "gpa:u64", [("all", "gpa %llx", ("gpa",))]),
        _spec("kvm_mmu_walker_error", "kvmmmu", "pferr:u32",
              [("all", "pferr %x %s", ("pferr", Skip(r"[A-Za-z0-9_|]*")))]),
        _spec("mark_mmio_spte", "kvmmmu", "sptep:u64 gfn:u64 access:u32 gen:u32",
              [("3.11+", "sptep:%p gfn %llx access %x gen %x", (Pointer("sptep"), "gfn", "access", "gen")),
               ("3.1-3.10", "sptep:%p gfn %llx access %x", (Pointer("sptep"), "gfn", "access"))],
              null_reasons={"sptep": PTR_REASON, "gen": "not printed before Linux 3.11"}),
        _spec("handle_mmio_page_fault", "kvmmmu", "addr:u64 gfn:u64 access:u32",
              [("all", "addr:%llx gfn %llx access %x", ("addr", "gfn", "access"))]),
        _spec("check_mmio_spte", "kvmmmu", "kvm_gen:u32 spte_gen:u32 spte:u64",
              [("3.11+", "spte %llx kvm_gen %x spte-gen %x valid %d", ("spte", "kvm_gen", "spte_gen", Skip("0|1")))]),
        _spec("fast_page_fault", "kvmmmu", "vcpu_id:s32 cr2_or_gpa:u64 error_code:u64 sptep:u64 old_spte:u64 new_spte:u64 ret:s32",
              [("3.6+", "vcpu %d gva %llx error_code %s sptep %p old %#llx new %llx spurious %d fixed %d",
                ("vcpu_id", "cr2_or_gpa", Flags("error_code", PFERR), Pointer("sptep"), "old_spte", "new_spte",
                 Skip("0|1"), Skip("0|1")))],
              null_reasons={"sptep": PTR_REASON,
                            "ret": "text prints only spurious/fixed flags; the RET_PF_* numbers differ by kernel"}),
        _spec("kvm_mmu_zap_all_fast", "kvmmmu", "mmu_valid_gen:u8 mmu_used_pages:u32",
              [("5.4+", "kvm-mmu-valid-gen %u used_pages %x", ("mmu_valid_gen", "mmu_used_pages"))]),
        _spec("kvm_mmu_invalidate_zap_all_pages", "kvmmmu", "mmu_valid_gen:u64 mmu_used_pages:u32",
              [("3.11-5.0", "kvm-mmu-valid-gen %lx used_pages %x", ("mmu_valid_gen", "mmu_used_pages"))]),
        _spec("kvm_mmu_set_spte", "kvmmmu", "gfn:u64 spte:u64 sptep:u64 level:u8 r:bool x:bool u:s8",
              [("4.19+", "gfn %llx spte %llx (%s%s%s%s) level %d at %llx",
                ("gfn", "spte", Choice("r", {"r": 1, "-": 0}), Skip("[w-]"), Choice("x", {"x": 1, "-": 0}),
                 Choice("u", {"u": 1, "-": 0, "": -1}), "level", "sptep"))]),
        _spec("kvm_mmu_spte_requested", "kvmmmu", "gfn:u64 pfn:u64 level:u8",
              [("5.4+", "gfn %llx pfn %llx level %d", ("gfn", "pfn", "level"))]),
        _spec("kvm_tdp_mmu_spte_changed", "kvmmmu", "gfn:u64 old_spte:u64 new_spte:u64 level:u8 as_id:u8",
              [("5.10+", "as id %d gfn %llx level %d old_spte %llx new_spte %llx",
                ("as_id", "gfn", "level", "old_spte", "new_spte"))]),
        _spec("kvm_mmu_split_huge_page", "kvmmmu", "gfn:u64 spte:u64 level:s32 errno:s32",
              [("5.18+", "gfn %llx spte %llx level %d errno %d", ("gfn", "spte", "level", "errno"))]),
        # ---- kvm system
        _spec("kvm_entry", "kvm", "vcpu_id:u32 rip:u64 immediate_exit:bool",
              # 6.10+ prints the flag only when set; without it a line is the same as 5.9-6.9's,
              # where the field does not exist, so a missing flag is unknown, not false.
              [("6.10+", "vcpu %u, rip 0x%lx%s", ("vcpu_id", "rip", Choice("immediate_exit", {"[immediate exit]": 1}))),
               ("5.9-6.9", "vcpu %u, rip 0x%lx", ("vcpu_id", "rip")),
               ("plugin", "vcpu %u rip 0x%llx", ("vcpu_id", "rip")),
               ("<=5.8", "vcpu %u", ("vcpu_id",))],
              null_reasons={"rip": "not printed before Linux 5.9",
                            "immediate_exit": "printed only when set (6.10+); an unset flag reads like a pre-6.10 line"}),
        _spec("kvm_exit", "kvm", "exit_reason:u32 guest_rip:u64 isa:u32 info1:u64 info2:u64 intr_info:u32 error_code:u32 vcpu_id:u32",
              [("5.11+", "vcpu %u reason %s%s%s rip 0x%lx info1 0x%016llx info2 0x%016llx intr_info 0x%08x error_code 0x%08x",
                ("vcpu_id", reason, Skip("| "), Text("_rflags", r"FAILED_VMENTRY|0x[0-9a-f]+|"), "guest_rip",
                 "info1", "info2", "intr_info", "error_code")),
               ("5.6-5.10", "vcpu %u reason %s rip 0x%lx info %llx %llx", ("vcpu_id", reason, "guest_rip", "info1", "info2")),
               ("3.x-5.5, plugin", "reason %s rip 0x%lx info %llx %llx", (reason, "guest_rip", "info1", "info2")),
               ("2.6.3x", "reason %s rip 0x%lx", (reason, "guest_rip"))],
              quick={"5.11+": _quick_exit_slots()},
              null_reasons={"exit_reason": "printed by name; names outside the kernel's VMX/SVM tables stay null",
                            "isa": "known only from the exit-reason name",
                            "vcpu_id": "not printed before ~5.6 or by the kvm plugin",
                            "intr_info": "not printed before ~5.11 or by the kvm plugin",
                            "error_code": "not printed before ~5.11 or by the kvm plugin"},
              finish=_finish_exit),
        _spec("kvm_page_fault", "kvm", "vcpu_id:u32 guest_rip:u64 fault_address:u64 error_code:u64",
              [("6.1+", "vcpu %u rip 0x%lx address 0x%016llx error_code 0x%llx", ("vcpu_id", "guest_rip", "fault_address", "error_code")),
               ("~6.1", "vcpu %u rip 0x%lx address 0x%lx error_code %x", ("vcpu_id", "guest_rip", "fault_address", "error_code")),
               ("<=6.0", "address %lx error_code %x", ("fault_address", "error_code"))],
              null_reasons={"vcpu_id": "not printed before Linux 6.1", "guest_rip": "not printed before Linux 6.1"}),
        _spec("kvm_mmio", "kvm", "type:u32 len:u32 gpa:u64 val:u64",
              [("all", "mmio %s len %u gpa 0x%llx val 0x%llx",
                (Choice("type", {"unsatisfied-read": 0, "read": 1, "write": 2}), "len", "gpa", "val"))]),
        _spec("kvm_userspace_exit", "kvm", "reason:u32 errno:s32",
              [("all", "reason %s (%d)", (Text("_what", r"\S+"), "_num"))],
              null_reasons={"reason": "text prints -errno instead of the reason when KVM_RUN failed",
                            "errno": "text prints the errno only when it is negative"},
              finish=_finish_userspace_exit),
        _spec("kvm_unmap_hva_range", "kvm", "start:u64 end:u64",
              [("5.13+", "mmu notifier unmap range: %#016lx -- %#016lx", ("start", "end"))]),
        _spec("kvm_set_spte_hva", "kvm", "hva:u64", [("5.13-6.9", "mmu notifier set pte hva: %#016lx", ("hva",))]),
        _spec("kvm_age_hva", "kvm", "start:u64 end:u64", [("5.13+", "mmu notifier age hva: %#016lx -- %#016lx", ("start", "end"))]),
        _spec("kvm_test_age_hva", "kvm", "hva:u64", [("5.13+", "mmu notifier test age hva: %#016lx", ("hva",))]),
        _spec("kvm_age_page", "kvm", "hva:u64 gfn:u64 level:u8 referenced:u8",
              [("4.x-5.12", "hva %llx gfn %llx level %u %s", ("hva", "gfn", "level", Choice("referenced", {"YOUNG": 1, "OLD": 0}))),
               ("3.x", "hva %llx gfn %llx %s", ("hva", "gfn", Choice("referenced", {"YOUNG": 1, "OLD": 0})))],
              null_reasons={"level": "not printed before 4.x"}),
        _spec("print", "ftrace", "ip:u64 buf:str",
              [("all", "%s: %s", (Text("_ip", r"\S+?"), Text("buf", ".*")))],
              null_reasons={"ip": "text shows the caller's symbol name (%ps), not its address"},
              finish=_finish_print),
    ]
    return specs


@cache
def catalog() -> dict[str, EventSpec]:
    return {s.name: s for s in _specs()}
