"""Which files a batch analyses, and the stable id each one gets.

A fleet hands us folders as often as files: a CI artefact store with one ``trace.dat`` per run,
a collection of ``trace`` dumps copied off hosts. Folders are expanded to the files in them (not
recursively) that are traces: every ``*.dat`` (a damaged one must still become an error row,
so its name is enough), and every other file whose first line reads like ftrace text, decided
by content as the readers decide, because the notes and counts people keep beside their traces
are text files too.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import zstandard

from kvmtrace.parsers.detect import open_input
from kvmtrace.parsers.errors import TraceError
from kvmtrace.parsers.text.lines import PREFIX

#: What the first non-blank line of an ftrace text trace looks like: the tracefs header, the
#: ``trace-cmd report`` header, or an event line.
_FIRST_LINE = re.compile(rf"^# tracer:|^cpus=\d+\s*$|{PREFIX}")
#: Bytes of a text file read to decide whether it is a trace (well past the tracefs header).
_HEAD_BYTES = 8192
_COMPRESSED_SUFFIXES = (".gz", ".xz", ".zst")
_TRACE_SUFFIXES = (".dat", ".txt")


@dataclass(frozen=True)
class TraceInput:
    """One trace of a batch: ``path`` as the user named it (reports cite it) and its id."""

    trace_id: str
    path: str


def trace_id(path: str | os.PathLike[str]) -> str:
    """``<name>-<8 hex>``: readable, and unique because the hash is of the resolved path.

    The same file always gets the same id (reruns of a CI batch line up); two ``trace.dat`` in
    different folders do not collide.
    """
    p = Path(path)
    name = p.name
    for suffixes in (_COMPRESSED_SUFFIXES, _TRACE_SUFFIXES):
        for s in suffixes:
            if name.endswith(s) and len(name) > len(s):
                name = name[: -len(s)]
                break
    digest = hashlib.sha1(os.fsencode(p.resolve())).hexdigest()[:8]
    return f"{name}-{digest}"


def _head(path: Path, compression: str) -> bytes:
    openers = {
        "none": lambda f: f,
        "gzip": lambda f: gzip.GzipFile(fileobj=f),
        "xz": lambda f: lzma.LZMAFile(f),
        "zstd": lambda f: zstandard.ZstdDecompressor().stream_reader(f),
    }
    with open(path, "rb") as raw:
        try:
            return openers[compression](raw).read(_HEAD_BYTES)
        except (OSError, EOFError, lzma.LZMAError, zstandard.ZstdError):
            return b""


def is_text_trace(path: Path) -> bool:
    """Whether ``path`` is ftrace text (plain or compressed), judged by its first line."""
    try:
        with open_input(path) as src:
            kind = src.kind
    except TraceError:
        return False
    if kind == "tracedat":
        return True
    text = _head(path, kind).decode("utf-8", errors="replace")
    for line in io.StringIO(text):
        if line.strip():
            return bool(_FIRST_LINE.match(line.rstrip("\n")))
    return False


def _folder(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file())
    return [p for p in files if p.suffix == ".dat" or is_text_trace(p)]


def expand(paths: Sequence[str | os.PathLike[str]]) -> list[TraceInput]:
    """Files as given, folders as their traces (sorted); each resolved file once, in order.

    A path that does not exist stays in the batch: it becomes a row with its error, like any
    other trace that cannot be read.
    """
    seen: set[Path] = set()
    out: list[TraceInput] = []
    for given in paths:
        p = Path(given)
        for f in _folder(p) if p.is_dir() else [p]:
            resolved = f.resolve()
            if resolved not in seen:
                seen.add(resolved)
                out.append(TraceInput(trace_id(f), os.fspath(f)))
    return out
