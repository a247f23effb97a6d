"""Turn a kernel ``TP_printk`` format into a regex plus typed polars conversions.

Why: most tracepoints print with a plain printf, so the exact inverse of the printing is
mechanical. Writing the kernel's format string down verbatim (it is an interface fact) and
deriving the parser from it keeps every decoder a one-line table entry and makes a wrong
decoder easy to spot by comparing it with the kernel source.

A format is paired with one *slot* per conversion: a field name (the number goes into that
column, typed later from the event's schema), or one of the slot classes below for ``%s``
arguments and printed values that are derived from other fields.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import polars as pl

from kvmtrace.parsers.text.program import Alternatives, Literal, Number, Op, Program, Span, program, span

HEX = r"[0-9a-fA-F]+"
#: The label of ``trace-cmd report -R`` lines (``field=value``), tried after every printed form;
#: also how ``trace-cmd report`` without plugins prints an event whose print fmt it cannot parse.
RAW_FORM = "trace-cmd report -R"


@dataclass(frozen=True)
class Choice:
    """A ``%s`` fed by a ternary or ``__print_symbolic``: printed text -> integer value."""

    field: str
    options: Mapping[str, int]


@dataclass(frozen=True)
class Flags:
    """A ``%s`` fed by ``__print_flags``: names joined by ``|``, unknown bits as ``0x..``."""

    field: str
    names: Mapping[str, int]


@dataclass(frozen=True)
class Text:
    """A ``%s`` kept as a string column (``field`` starting with ``_`` is a scratch column)."""

    field: str
    pattern: str = r".*?"


@dataclass(frozen=True)
class Pointer:
    """A ``%p``: real only when printed unhashed (see :func:`pointer_expr`)."""

    field: str


@dataclass(frozen=True)
class Skip:
    """Printed text derived from other fields (``valid %d``, the ``w`` of ``(rwxu)``)."""

    pattern: str


Slot = str | Choice | Flags | Text | Pointer | Skip

#: One printf conversion: flags, width, length modifier, conversion character (and %pK).
CONVERSION = re.compile(r"%(?P<flags>[#0\-+ ]*)(?P<width>\d*)(?P<len>hh|h|ll|l|z)?(?P<conv>[diuxXpsc%])(?P<ext>K)?")


def _literal_alternatives(pattern: str) -> tuple[str, ...] | None:
    """A :class:`Skip` pattern's alternatives when it is literal text joined by '|' (``0|1``)."""
    parts = tuple(pattern.split("|"))
    return parts if all(p == re.escape(p) for p in parts) else None


def _skipped(pattern: str) -> Op | None:
    """The op of a :class:`Skip` pattern, if the matcher has one for it."""
    alternatives = _literal_alternatives(pattern)
    if alternatives is not None:
        return Alternatives(None, tuple((t, 0) for t in alternatives))
    chars = span(pattern)
    return None if chars is None else Span(None, *chars)


@dataclass(frozen=True)
class Compiled:
    """A compiled format: the anchored regex and, per capture group, how to convert it; and
    the same form as a :class:`Program` where the compiled matcher can read it."""

    regex: str
    numbers: Mapping[str, int]  # group -> base (10 or 16)
    choices: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    flags: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    texts: tuple[str, ...] = ()
    pointers: tuple[str, ...] = ()
    program: Program | None = None


def _alternation(options: Mapping[str, int]) -> str:
    # Longest first, so "unsync" is tried before "sync".
    return "|".join(re.escape(o) for o in sorted(options, key=len, reverse=True))


def compile_format(fmt: str, slots: tuple[Slot, ...]) -> Compiled:
    """Compile ``fmt`` (kernel printf syntax) with one slot per conversion into a :class:`Compiled`."""
    parts: list[str] = []
    ops: list[Op] | None = []
    numbers: dict[str, int] = {}
    choices: dict[str, Mapping[str, int]] = {}
    flags: dict[str, Mapping[str, int]] = {}
    texts: list[str] = []
    pointers: list[str] = []

    def literal(text: str) -> None:
        if ops is not None and text:
            if ops and isinstance(ops[-1], Literal):
                ops[-1] = Literal(ops[-1].text + text)
            else:
                ops.append(Literal(text))

    pos = 0
    last_conv = ""
    it = iter(slots)
    for m in CONVERSION.finditer(fmt):
        parts.append(re.escape(fmt[pos : m.start()]))
        literal(fmt[pos : m.start()])
        pos = m.end()
        conv = last_conv = m["conv"]
        if conv == "%":
            parts.append("%")
            literal("%")
            continue
        slot = next(it)
        op: Op | None = None
        if isinstance(slot, Skip):
            parts.append(f"(?:{slot.pattern})")
            op = _skipped(slot.pattern)
        elif isinstance(slot, Choice):
            parts.append(f"(?P<{slot.field}>{_alternation(slot.options)})")
            choices[slot.field] = slot.options
            longest_first = sorted(slot.options, key=len, reverse=True)
            op = Alternatives(slot.field, tuple((t, slot.options[t]) for t in longest_first))
        elif isinstance(slot, Flags):
            parts.append(rf"(?P<{slot.field}>[A-Za-z0-9_|]*)")
            flags[slot.field] = slot.names
        elif isinstance(slot, Text):
            parts.append(f"(?P<{slot.field}>{slot.pattern})")
            texts.append(slot.field)
            chars = span(slot.pattern)
            op = None if chars is None else Span(slot.field, *chars)
        elif isinstance(slot, Pointer) or conv == "p":
            name = slot.field if isinstance(slot, Pointer) else slot
            parts.append(rf"(?:0x)?(?P<{name}>{HEX}|\(____ptrval____\)|\(null\)|\(ptrval\))")
            pointers.append(name)
        elif conv in "xX":
            # "%#x" prints a 0x prefix (the kernel prints it even for zero); "0x%x" has it literally.
            prefix = "(?:0x)?" if "#" in m["flags"] else ""
            parts.append(rf"{prefix}(?P<{slot}>{HEX})")
            numbers[slot] = 16
            op = Number(slot, 3 if prefix else 2)
        elif conv in "di":
            parts.append(rf"(?P<{slot}>-?\d+)")
            numbers[slot] = 10
            op = Number(slot, 0)
        elif conv == "u":
            parts.append(rf"(?P<{slot}>\d+)")
            numbers[slot] = 10
            op = Number(slot, 1)
        else:  # a bare %s/%c given a field name: keep the text
            parts.append(rf"(?P<{slot}>.*?)")
            texts.append(slot)
        if op is None:
            ops = None
        elif ops is not None:
            ops.append(op)
    if next(it, None) is not None:
        raise ValueError(f"more slots than conversions in {fmt!r}")
    tail = fmt[pos:]
    if not tail and last_conv == "s" and len(parts) >= 2 and parts[-2].endswith(r"\ "):
        # A format ending in " %s" prints a trailing space when the %s is empty; copies of the
        # text often lose trailing blanks, so that space may be missing.
        parts[-2] = parts[-2][:-2] + r"(?:\ )?"
        if ops is not None and len(ops) >= 2 and isinstance(ops[-2], Literal) and ops[-2].text.endswith(" "):
            before = [Literal(ops[-2].text[:-1])] if ops[-2].text[:-1] else []
            ops[-2:-1] = [*before, Alternatives(None, ((" ", 0), ("", 0)))]
        else:
            ops = None
    parts.append(re.escape(tail))
    literal(tail)
    return Compiled("^" + "".join(parts) + r"\s*$", numbers, choices, flags, tuple(texts), tuple(pointers),
                    program(ops))


#: Regex escapes -> the same class restricted to ASCII (the regex crate's ASCII ``\s`` is
#: ``[\t\n\v\f\r ]``).
_ASCII_CLASSES = {r"\d": "[0-9]", r"\s": r"[\t-\r ]", r"\S": r"[^\t-\r ]", r"\w": "[0-9A-Za-z_]"}


def ascii_classes(regex: str) -> str:
    r"""``regex`` with ``\d``, ``\s``, ``\S``, ``\w`` spelled as ASCII classes.

    Why: the regex crate captures 1.8x faster without Unicode classes. On ASCII text the two
    match the same, so the reader uses this form only for chunks that are pure ASCII.
    """
    return re.sub(r"\\.", lambda m: _ASCII_CLASSES.get(m[0], m[0]), regex)


def number_expr(col: str, base: int, dtype: pl.DataType) -> pl.Expr:
    """Parse a captured number; u64 values above i64 need an unsigned parse."""
    parse_type = pl.Int64 if dtype in (pl.Int8, pl.Int16, pl.Int32, pl.Int64) else pl.UInt64
    return pl.col(col).str.to_integer(base=base, dtype=parse_type, strict=False).cast(dtype, strict=False)


def choice_expr(col: str, options: Mapping[str, int], dtype: pl.DataType) -> pl.Expr:
    return pl.col(col).replace_strict(dict(options), default=None, return_dtype=pl.Int64).cast(dtype, strict=False)


def flags_expr(col: str, names: Mapping[str, int], dtype: pl.DataType) -> pl.Expr:
    """Invert ``__print_flags``: the kernel prints every named bit, then the rest as one hex number."""
    el = pl.element()
    value = (
        pl.when(el.str.starts_with("0x"))
        .then(el.str.slice(2).str.to_integer(base=16, dtype=pl.UInt64, strict=False))
        .otherwise(el.replace_strict({k: v for k, v in names.items()}, default=None, return_dtype=pl.UInt64))
    )
    parts = pl.col(col).str.split("|").list.eval(pl.when(el == "").then(pl.lit(0, pl.UInt64)).otherwise(value))
    known = parts.list.eval(el.is_null().any()).list.first().not_()
    return pl.when(known).then(parts.list.sum()).otherwise(None).cast(dtype, strict=False)


def pointer_expr(col: str) -> pl.Expr:
    """A ``%p`` value, or null when the kernel hashed it.

    Hashed pointers (4.15+, ``hash-ptr`` on) are 32-bit hashes printed as 64-bit hex with the
    upper half zero, or ``(____ptrval____)`` before the hash key is ready; a real kernel
    pointer is always above 4 GiB. libtraceevent (``trace-cmd report``) prints the real value.
    """
    v = pl.col(col).str.to_integer(base=16, dtype=pl.UInt64, strict=False)
    return pl.when(v >= 1 << 32).then(v).otherwise(None)
