"""Event format files and header_page → field specs.

Grammar and flag rules follow libtraceevent's ``event_read_fields``: the type is everything
between ``field:`` and the last identifier, ``[N]`` marks a fixed array, ``__data_loc`` /
``__rel_loc`` a dynamic one, a size-0 field the rest of the record. Offsets and sizes are always
taken from the text: kernels leave holes and RT kernels add common fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kvmtrace.parsers.errors import TraceError

_FIELD_RE = re.compile(
    r"^\s*field(?: special)?:(?P<decl>[^;]*);\s*offset:(?P<offset>\d+);\s*size:(?P<size>\d+);"
    r"(?:\s*signed:(?P<signed>-?\d+);)?"
)
#: Element (size, signed) of dynamic arrays by C type ("long" and bitmasks: the kernel's long).
_ELEMENT_TYPES = {
    "u8": (1, False), "u16": (2, False), "u32": (4, False), "u64": (8, False),
    "s8": (1, True), "s16": (2, True), "s32": (4, True), "s64": (8, True),
    "char": (1, True), "bool": (1, False), "short": (2, True), "int": (4, True), "long long": (8, True),
}
_LONG_TYPES = ("long", "cpumask_t")


@dataclass(frozen=True)
class FieldSpec:
    """One field of an event record."""

    name: str
    type: str  # C type as written, without the array suffix or __data_loc prefix
    offset: int
    size: int
    signed: bool
    array_len: int = 0  # fixed arrays: element count; 0 for scalars and dynamic arrays
    dynamic: bool = False  # __data_loc / __rel_loc
    relative: bool = False  # __rel_loc: offset counts from the end of this field
    element_size: int = 0  # arrays: bytes per element; scalars: the size
    element_signed: bool = False  # arrays: element signedness (dynamic: from the C type)
    trailing: bool = False  # size 0 ("u32 buf[]"): the rest of the record (bprint's args)

    @property
    def is_array(self) -> bool:
        return self.array_len > 0 or self.dynamic or self.trailing

    @property
    def is_string(self) -> bool:
        """A char array. libtraceevent also treats u8/s8 arrays as strings, but prints them as
        bytes unless printable (``ARRAY[e6, 10, ...]`` for kvm_emulate_insn's ``__u8 insn[15]``);
        they are data, so kvmtrace keeps them as lists of uint8/int8."""
        return self.is_array and "char" in self.type

    @property
    def is_int_list(self) -> bool:
        """An array of integers (not text, elements of 1, 2, 4 or 8 bytes): a list column."""
        return self.is_array and not self.is_string and not self.trailing and self.element_size in (1, 2, 4, 8)


@dataclass(frozen=True)
class EventFormat:
    """A parsed format file."""

    id: int
    system: str
    name: str
    fields: tuple[FieldSpec, ...]  # common fields first
    print_fmt: str

    def field(self, name: str) -> FieldSpec | None:
        return next((f for f in self.fields if f.name == name), None)


def _parse_decl(decl: str) -> tuple[str, str, int, bool, bool]:
    """Split ``unsigned long caller[8]`` into (type, name, array_len, dynamic, relative).

    ``array_len`` is -1 for a fixed array without a length (``u32 buf[]``).
    """
    decl = decl.strip()
    dynamic = relative = False
    if decl.startswith("__data_loc"):
        dynamic, decl = True, decl[len("__data_loc"):].strip()
    elif decl.startswith("__rel_loc"):
        dynamic, relative, decl = True, True, decl[len("__rel_loc"):].strip()
    m = re.match(r"^(?P<type>.*?)(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<arr>\[[^\]]*\])?\s*$", decl)
    if not m:
        return decl, decl, 0, dynamic, relative
    ctype = m.group("type").strip()
    arr = m.group("arr")
    array_len = 0
    if ctype.endswith("[]"):  # "__data_loc char[] msg"
        ctype = ctype[:-2].strip()
    if arr and not dynamic:
        nums = re.findall(r"\d+", arr)
        array_len = int(nums[-1]) if nums else -1
    return ctype, m.group("name"), array_len, dynamic, relative


def _element(ctype: str, long_size: int) -> tuple[int, bool]:
    """(size, signed) of one element of a dynamic array of C type ``ctype`` (bytes if unknown)."""
    t = ctype.replace("const ", "").strip().lstrip("_")
    unsigned = "unsigned" in t
    t = " ".join(w for w in t.split() if w not in ("unsigned", "signed"))
    if t in _LONG_TYPES:
        return long_size, not unsigned and t == "long"
    size, signed = _ELEMENT_TYPES.get(t or "int", (1, False))
    return size, signed and not unsigned


def parse_format(text: str, system: str, long_size: int) -> EventFormat:
    """Parse one ``events/<system>/<event>/format`` text (``long_size``: the kernel's)."""
    name = event_id = None
    fields: list[FieldSpec] = []
    print_fmt = ""
    in_format = False
    for line in text.splitlines():
        if line.startswith("name:"):
            name = line[5:].strip()
        elif line.startswith("ID:") and line[3:].strip().isdigit():
            event_id = int(line[3:].strip())
        elif line.startswith("format:"):
            in_format = True
        elif line.startswith("print fmt:"):
            print_fmt = line[len("print fmt:"):].strip()
            in_format = False
        elif in_format and line.strip():
            m = _FIELD_RE.match(line)
            if not m:
                continue
            ctype, fname, array_len, dynamic, relative = _parse_decl(m.group("decl"))
            signed = m.group("signed")
            size = int(m.group("size"))
            # "u32 buf[]" (or "u32 buf" on old kernels) of size 0: the rest of the record.
            trailing = size == 0 and not dynamic
            if array_len < 0:  # "[TASK_COMM_LEN]": a length we cannot read; bytes then
                array_len = 0 if trailing else size
            is_signed = bool(int(signed)) if signed is not None else False
            offset = int(m.group("offset"))
            if dynamic:  # the format's size/signed describe the 32-bit location word
                element = _element(ctype, long_size)
            elif array_len:  # elements that do not tile the field exactly: kept as bytes
                element = (size // array_len if size % array_len == 0 else 0, is_signed)
            else:
                element = (size, is_signed)
            fields.append(FieldSpec(
                name=fname, type=ctype, offset=offset, size=size, signed=is_signed,
                array_len=array_len, dynamic=dynamic, relative=relative, trailing=trailing,
                element_size=element[0], element_signed=element[1],
            ))
    if name is None or event_id is None:
        raise TraceError(f"corrupt event format in system {system!r} (no name or ID)")
    return EventFormat(id=event_id, system=system, name=name, fields=tuple(fields), print_fmt=print_fmt)


@dataclass(frozen=True)
class PageHeader:
    """Layout of a ring-buffer page from header_page: where the commit word and the data start."""

    commit_offset: int
    commit_size: int  # = the kernel's sizeof(long)
    data_offset: int
    data_size: int


def parse_header_page(text: str, path: str, page_size: int) -> PageHeader:
    """Parse header_page: where the commit word and the records are in every page.

    Kernels before 2.6.31 wrote no header_page and used an older record encoding (libtraceevent
    keeps a separate "old format" walker for it); such files are refused rather than misread.
    The page it describes (header plus data) is the file's page size in every file trace-cmd
    writes; a file where they differ would be read at the wrong stride, so it is refused.
    """
    found: dict[str, tuple[int, int]] = {}
    for line in text.splitlines():
        m = _FIELD_RE.match(line)
        if m:
            fname = _parse_decl(m.group("decl"))[1]
            found.setdefault(fname, (int(m.group("offset")), int(m.group("size"))))
    if "commit" not in found or "data" not in found:
        raise TraceError(f"{path}: no ring-buffer page layout (header_page) in this trace.dat: a pre-2.6.31 "
                         f"kernel's format, which is not supported")
    if found["commit"][1] not in (4, 8):
        raise TraceError(f"{path}: corrupt header_page (commit field of {found['commit'][1]} bytes)")
    header = PageHeader(found["commit"][0], found["commit"][1], found["data"][0], found["data"][1])
    if header.data_offset + header.data_size != page_size:
        raise TraceError(f"{path}: corrupt trace.dat: the file header's page size {page_size} disagrees with "
                         f"header_page (pages of {header.data_offset} + {header.data_size} bytes)")
    return header
