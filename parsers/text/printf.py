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


@dataclass(frozen=True)
class Literal:
    text: str


@dataclass(frozen=True)
class Number:
    r"""A number the regex captures as ``-?\d+`` (kind 0), ``\d+`` (1), hex (2), ``(?:0x)?`` hex (3)."""

    group: str
    kind: int


@dataclass(frozen=True)
class Alternatives:
    """Literal alternatives in the regex's order; ``group`` None for a :class:`Skip`."""

    group: str | None
    options: tuple[tuple[str, int], ...]


Op = Literal | Number | Alternatives
_DIGITS = {0: "0123456789", 1: "0123456789", 2: "0123456789abcdefABCDEF", 3: "0123456789abcdefABCDEFx"}


@dataclass(frozen=True)
class Program:
    """A form as the compiled matcher's program (``_chunk.c``, ``match_form``): the same rows
    and values as its regex, without the regex.

    Why only some forms: the matcher takes every digit a number can, and the regex does the
    same only where what follows the number cannot begin with one of its digits (nor with the
    ``x`` of an optional ``0x``); :func:`program` refuses the others, and forms with text,
    flags or pointers, which stay with the regex.
    """

    ops: tuple[Op, ...]

    @property
    def groups(self) -> tuple[str, ...]:
        """The captured groups in slot order."""
        return tuple(op.group for op in self.ops if isinstance(op, (Number, Alternatives)) and op.group)

    def code(self, signed: Mapping[str, bool]) -> bytes:
        """The program's bytes; ``signed[group]``: the number is parsed as int64, else uint64."""
        slot = {g: k for k, g in enumerate(self.groups)}
        out = bytearray()
        for op in self.ops:
            if isinstance(op, Literal):
                out += b"L" + len(op.text.encode()).to_bytes(2, "little") + op.text.encode()
            elif isinstance(op, Number):
                out += bytes((ord("N"), op.kind, signed[op.group], slot[op.group]))
            else:
                out += bytes((ord("A"), 255 if op.group is None else slot[op.group], len(op.options)))
                for option, value in op.options:
                    out += bytes((len(option.encode()),)) + option.encode() + value.to_bytes(8, "little", signed=True)
        return bytes(out + b"E")


def program(ops: list[Op] | None) -> Program | None:
    """The ops as a :class:`Program`, or None where the matcher and the regex could differ."""
    if ops is None or len(ops) > 200 or any(isinstance(op, Number) and op.kind not in _DIGITS for op in ops):
        return None
    for op, after in zip(ops, [*ops[1:], None]):
        if not isinstance(op, Number) or after is None:
            continue
        if isinstance(after, Number):
            return None
        starts = [after.text] if isinstance(after, Literal) else [t for t, _ in after.options]
        if any(not t or t[0] in _DIGITS[op.kind] for t in starts):
            return None
    groups = [op.group for op in ops if isinstance(op, (Number, Alternatives)) and op.group]
    texts = [op.text for op in ops if isinstance(op, Literal)]
    texts += [t for op in ops if isinstance(op, Alternatives) for t, _ in op.options]
    if len(groups) > 254 or any(len(t.encode()) > 255 for t in texts):
        return None
    return Program(tuple(ops))


def _literal_alternatives(pattern: str) -> tuple[str, ...] | None:
    """A :class:`Skip` pattern's alternatives when it is literal text joined by '|' (``0|1``)."""
    parts = tuple(pattern.split("|"))
    return parts if all(p == re.escape(p) for p in parts) else None


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
            skipped = _literal_alternatives(slot.pattern)
            op = None if skipped is None else Alternatives(None, tuple((t, 0) for t in skipped))
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
