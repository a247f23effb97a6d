"""Every printed form in the catalogue reads back what the kernel's printf wrote.

Many era forms (3.x page events, the 3-argument mark_mmio_spte, kvm_age_page ...) have no real
text we could find. The oracle here is independent of the reader: Python's own printf renders
each form's format string (the kernel's, verbatim, with C length modifiers dropped) from random
values, and the decoded columns must equal those values. Hand-made lines, by necessity; the
real-text tests are test_text_twins.py and test_text_excerpts.py.
"""

from __future__ import annotations

import dataclasses
import gzip
import random
import re

import polars as pl
import pytest

from kvmtrace.parsers.text.catalog import catalog
from kvmtrace.parsers.text.decode import decode_event
from kvmtrace.parsers.text.printf import CONVERSION, Choice, Flags, Pointer, Skip, Text

#: Fields a finishing step computes from helper columns (checked by the real-text tests).
DERIVED = {"exit_reason", "isa", "reason", "errno", "role", "ip", "buf"}
#: A value for each string slot that has no catalogue of its own.
TEXTS = {"_reason": "EPT_VIOLATION", "_rflags": "", "_ip": "tracing_mark_write", "buf": "kvmlab_phase x=1",
         "_what": "KVM_EXIT_IO"}
#: Candidates for derived text (``valid %d``, ``%u-byte``, ``%spae`` ...): the first that fits is printed.
SKIP_SAMPLES = ["", "0", "1", "8", " pae", "!", " direct", "wux", "w", "U|F", " ", "12"]
BITS = {"u8": 8, "u16": 16, "u32": 32, "u64": 64, "s8": 7, "s32": 31, "s64": 63, "bool": 1}


def _value(rng: random.Random, slot, conv: str, types: dict[str, str]):
    """(printed text, expected column value or None when not checked) for one conversion."""
    if isinstance(slot, Skip):
        return next(s for s in SKIP_SAMPLES if re.fullmatch(slot.pattern, s)), None
    if isinstance(slot, Choice):
        text = rng.choice(sorted(slot.options))
        return text, slot.options[text]
    if isinstance(slot, Flags):
        names = [n for n in slot.names if rng.random() < 0.5]
        return "|".join(names), sum(slot.names[n] for n in names)
    if isinstance(slot, Pointer):
        real = rng.random() < 0.5
        value = rng.randrange(0xFFFF888000000000, 0xFFFF888FFFFFFFFF) if real else rng.randrange(1 << 32)
        return f"{value:016x}", value if real else None
    if isinstance(slot, Text):
        return TEXTS[slot.field], None
    kind = types.get(slot, "u8")
    value = rng.randrange(1 << min(BITS.get(kind, 8), 40 if conv in "du" else 64))
    if kind.startswith("s") and conv == "d" and rng.random() < 0.3:
        value = -value
    return value, value


def _render(fmt: str, slots: tuple, types: dict[str, str], rng: random.Random) -> tuple[str, dict]:
    """Print ``fmt`` the way the kernel would, with Python's printf; return the line and expectations."""
    args, expect = [], {}
    it = iter(slots)

    def conv(m: re.Match) -> str:
        if m["conv"] == "%":
            return "%%"
        slot = next(it)
        printed, value = _value(rng, slot, m["conv"], types)
        args.append(printed)
        name = slot if isinstance(slot, str) else getattr(slot, "field", None)
        if value is not None and name and not name.startswith("_") and name not in DERIVED:
            expect[name] = value
        if m["conv"] in "psc" or not isinstance(printed, int):
            return "%s"
        return f"%{m['flags']}{m['width']}{'d' if m['conv'] == 'u' else m['conv']}"

    pyfmt = CONVERSION.sub(conv, fmt.replace("%%", "\0")).replace("\0", "%%")
    return pyfmt % tuple(args), expect


CASES = [(name, i) for name, spec in catalog().items() for i in range(len(spec.forms))]


@pytest.mark.parametrize("name,form", CASES, ids=[f"{n}-{catalog()[n].forms[i].era}" for n, i in CASES])
def test_form_reads_back_printed_values(name, form):
    spec = catalog()[name]
    types = dict(spec.fields)
    f = spec.forms[form]
    fmt, slots = f.fmt, f.slots
    rng = random.Random(f"{name}/{form}")
    lines, expected = [], []
    for _ in range(40):
        line, exp = _render(fmt, slots, types, rng)
        lines.append(line)
        expected.append(exp)
    got = decode_event(spec, pl.DataFrame({"line_no": range(len(lines)), "args": lines}))
    assert got.failed.len() == 0, f"{f.era}: {lines[got.failed[0]]!r} not decoded"
    assert got.forms == (f.era,), "an earlier form took lines printed by this one"
    rows = got.rows.sort("line_no").to_dicts()
    for line, exp, row in zip(lines, expected, rows):
        for col, value in exp.items():
            assert row[col] == value, f"{f.era}: {col} of {line!r}"



def _without_quick(spec):
    return dataclasses.replace(spec, forms=tuple(dataclasses.replace(f, quick=None) for f in spec.forms))


#: Reason texts of the 5.11+ kvm_exit form: the usual one-word name, then every shape the quick
#: regex must leave to the full form (spaced SVM names, the plugin's UNKNOWN (n), a flag) and
#: words that begin like those shapes.
EXIT_REASONS = ["EPT_VIOLATION", "npf", "PF excp", "PF", "excp", "UNKNOWN (77)", "UNKNOWN", "(77)",
                "EPT_VIOLATION FAILED_VMENTRY", "npf 0x1", "FAILED_VMENTRY", "0x1", "PF excp FAILED_VMENTRY",
                "EXTERNAL_INTERRUPT  FAILED_VMENTRY", "a\tb"]


def test_quick_exit_regex_takes_the_same_values_as_the_full_form(nested_dir):
    """The 5.11+ kvm_exit quick regex (catalog._quick_exit_slots) is an optimisation only:
    real lines and lines with every reason shape decode exactly as with the full form alone."""
    spec = catalog()["kvm_exit"]
    assert any(f.quick is not None for f in spec.forms)
    with gzip.open(nested_dir / "k61tdp-multi4-kt.txt.gz", "rt") as f:
        real = [line.split(" kvm_exit: ", 1)[1].rstrip("\n") for line in f if " kvm_exit: " in line]
    assert len(real) > 10_000
    template = real[0]
    head, tail = template.split(" reason ", 1)
    tail = tail[tail.index(" rip "):]
    shaped = [f"{head} reason {r}{tail}" for r in EXIT_REASONS] + [f"{head} reason {r}{tail}  " for r in EXIT_REASONS]
    lines = real + shaped
    df = pl.DataFrame({"line_no": range(len(lines)), "args": lines})
    for ascii_only in (False, True):
        quick = decode_event(spec, df, ascii_only)
        full = decode_event(_without_quick(spec), df, ascii_only)
        assert quick.rows.sort("line_no").equals(full.rows.sort("line_no"))
        assert quick.failed.to_list() == full.failed.to_list()
        assert quick.forms == full.forms
    # the shapes really are read by the full form: spaced names and flags get their values
    got = dict(quick.rows.select("line_no", "exit_reason").iter_rows())
    by_reason = {r: got.get(len(real) + i) for i, r in enumerate(EXIT_REASONS)}
    assert by_reason["PF excp"] == 0x4E and by_reason["UNKNOWN (77)"] == 77
    assert by_reason["EPT_VIOLATION FAILED_VMENTRY"] == 48 | 0x80000000 and by_reason["a\tb"] is None


def test_userspace_exit_numbers_out_of_range_are_null():
    """``reason %s (%d)``: a reason below 0 or an errno beyond s32 only damage prints (it stopped
    the reader: a strict cast); such values are null, the others kept."""
    args = ["reason KVM_EXIT_IO (2)", "reason restart (-4)", "reason KVM_EXIT_IO (-1)", "reason error (-4294967296)",
            "reason error (-9223372036854775808)", "reason KVM_EXIT_IO (4294967296)"]
    rows = pl.DataFrame({"line_no": pl.Series(range(len(args)), dtype=pl.Int64), "args": args})
    got = decode_event(catalog()["kvm_userspace_exit"], rows, ascii_only=True).rows
    assert got["reason"].to_list() == [2, None, None, None, None, None]
    assert got["errno"].to_list() == [None, 4, None, None, None, None]


def test_exit_reason_numbers_out_of_range_are_null():
    """``reason UNKNOWN (n)`` (the kvm plugin's name for a number it has no name for): n beyond
    u32, which only damage prints, stopped the reader (a strict cast); it is null now."""
    tail = " rip 0x1 info1 0x0000000000000001 info2 0x0000000000000002 intr_info 0x00000000 error_code 0x00000000"
    args = [f"vcpu 0 reason {r}{tail}" for r in ("npf", "UNKNOWN (99999999999)", "UNKNOWN (7)",
                                                  "EXCEPTION_NMI FAILED_VMENTRY")]
    rows = pl.DataFrame({"line_no": pl.Series(range(len(args)), dtype=pl.Int64), "args": args})
    got = decode_event(catalog()["kvm_exit"], rows, ascii_only=True).rows
    assert got["exit_reason"].to_list() == [1024, None, 7, 0x80000000]
    assert got["isa"].to_list() == [2, None, None, 1]
