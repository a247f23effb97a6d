"""A printed form as a program for the compiled matcher (``_chunk.c``, ``match_form``).

Why: most printed forms are literal text, numbers, and words from a short list or a character
set. For those, ``_chunk.c`` matches a line the way a backtracking regex engine would (which is
how the regex crate defines its leftmost-first matches) and parses the numbers in the same pass,
where the reader would run the form's regex with captures, then a parse per captured number.
:func:`kvmtrace.parsers.text.printf.compile_format` builds the ops next to the regex, piece by
piece; a form with a piece the matcher has no op for (free text ``.*?``, flags, pointers,
regex alternations) has no program and keeps its regex.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise

#: ASCII whitespace: what ``\s`` matches in the ASCII form of a regex (``[\t-\r ]``).
_BLANKS = frozenset(b"\t\n\v\f\r ")


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
    """Literal alternatives in the regex's order; ``group`` None for a skipped piece."""

    group: str | None
    options: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Span:
    """``least`` to ``most`` (None: any number of) bytes of ``chars``; kept as text when ``group``."""

    group: str | None
    chars: frozenset[int]
    least: int
    most: int | None


Op = Literal | Number | Alternatives | Span


def span(pattern: str) -> tuple[frozenset[int], int, int | None] | None:
    r"""The (bytes, least, most) of a pattern that is one set with a count: ``""``, ``\S+``,
    ``[a-z_|]*`` and the like (literal bytes and ranges in the brackets); None for any other."""
    if pattern == "":
        return frozenset(), 0, 0
    body, count = (pattern[:-1], pattern[-1]) if pattern[-1] in "*+" else (pattern, "")
    least, most = {"*": (0, None), "+": (1, None), "": (1, 1)}[count]
    if body == r"\S":
        return frozenset(range(256)) - _BLANKS, least, most
    if len(body) < 3 or body[0] != "[" or body[-1] != "]" or any(c in "[]\\^" for c in body[1:-1]):
        return None
    inner, chars = body[1:-1], set()
    while inner:
        if len(inner) >= 3 and inner[1] == "-":
            chars |= set(range(ord(inner[0]), ord(inner[2]) + 1))
            inner = inner[3:]
        else:
            chars.add(ord(inner[0]))
            inner = inner[1:]
    return (frozenset(chars), least, most) if max(chars) < 0x80 else None


@dataclass(frozen=True)
class Program:
    """A form's ops, and their bytes for ``_chunk.match_form`` (the op codes are listed there)."""

    ops: tuple[Op, ...]

    @property
    def slots(self) -> tuple[tuple[str, str], ...]:
        """(group, what) per output slot, in order: ``number``, ``choice``, or a text's ``start``
        then ``length``."""
        out: list[tuple[str, str]] = []
        for op in self.ops:
            if isinstance(op, Number):
                out.append((op.group, "number"))
            elif isinstance(op, Alternatives) and op.group is not None:
                out.append((op.group, "choice"))
            elif isinstance(op, Span) and op.group is not None:
                out += [(op.group, "start"), (op.group, "length")]
        return tuple(out)

    def code(self, signed: Mapping[str, bool]) -> bytes:
        """The program's bytes; ``signed[group]``: the number is parsed as int64, else uint64."""
        slot: dict[str, int] = {}
        for k, (group, _) in enumerate(self.slots):
            slot.setdefault(group, k)
        out = bytearray()
        for op in self.ops:
            if isinstance(op, Literal):
                out += b"L" + len(op.text.encode()).to_bytes(2, "little") + op.text.encode()
            elif isinstance(op, Number):
                out += bytes((ord("N"), op.kind, signed[op.group], slot[op.group]))
            elif isinstance(op, Span):
                bitmap = sum(1 << c for c in op.chars).to_bytes(32, "little")
                index = 255 if op.group is None else slot[op.group]
                out += bytes((ord("T"), index, op.least, 255 if op.most is None else op.most)) + bitmap
            else:
                out += bytes((ord("A"), 255 if op.group is None else slot[op.group], len(op.options)))
                for option, value in op.options:
                    out += bytes((len(option.encode()),)) + option.encode() + value.to_bytes(8, "little", signed=True)
        return bytes(out + b"E")


def _varies(op: Op) -> bool:
    """Whether the op may take more than one length (a number, a set with a count)."""
    return isinstance(op, Number) or (isinstance(op, Span) and op.most != 0)


def program(ops: list[Op] | None) -> Program | None:
    """The ops as a :class:`Program`, or None when they do not fit the matcher's encoding or
    could make it backtrack through every split of a run (two varying ops back to back)."""
    if ops is None or any(_varies(op) and _varies(after) for op, after in pairwise(ops)):
        return None
    options = [t for op in ops if isinstance(op, Alternatives) for t, _ in op.options]
    fits = (len(Program(tuple(ops)).slots) <= 254
            and all(len(op.options) <= 255 for op in ops if isinstance(op, Alternatives))
            and all(len(t.encode()) <= 255 for t in options)
            and all(len(op.text.encode()) <= 65535 for op in ops if isinstance(op, Literal))
            and all(op.most is None or op.most <= 254 for op in ops if isinstance(op, Span)))
    return Program(tuple(ops)) if fits else None
