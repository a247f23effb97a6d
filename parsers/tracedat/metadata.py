"""Text metadata blobs: saved cmdlines, printk formats.

``comm`` follows trace-cmd/libtraceevent exactly (``find_cmdline``): pid 0 is ``<idle>``, a pid
missing from the kernel's bounded saved_cmdlines cache is ``<...>``. kvmtrace keeps those
markers rather than nulls so a row's ``comm`` matches what ``trace-cmd report`` shows.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from kvmtrace.parsers.tracedat.arrow import numeric, strings
from kvmtrace.parsers.tracedat.factorize import factorize_chunks

IDLE_COMM = "<idle>"
UNKNOWN_COMM = "<...>"

_PRINTK_RE = re.compile(r'^\s*0x([0-9a-fA-F]+)\s*:\s*"(.*)"\s*$')


def parse_cmdlines(blob: bytes) -> dict[int, str]:
    """``saved_cmdlines``: lines ``<pid> <comm>``; the first entry for a pid wins (as libtraceevent)."""
    out: dict[int, str] = {}
    for line in blob.decode("utf-8", "replace").split("\n"):
        pid, _, comm = line.strip("\0").partition(" ")
        if pid.lstrip("-").isdigit() and comm:
            out.setdefault(int(pid), comm)
    return out


def comm_column(pids: np.ndarray, cmdlines: dict[int, str]) -> pa.Array:
    """The ``comm`` of every row, looked up once per distinct pid (dictionary-encoded by pid)."""
    return comm_chunks([pids], cmdlines)[0]


def comm_chunks(pids: Sequence[np.ndarray], cmdlines: dict[int, str]) -> list[pa.DictionaryArray]:
    """:func:`comm_column` of each chunk of a ``pid`` column, all with one dictionary: the comms
    of the column's distinct pids, ascending (what one chunk of the whole column would have)."""
    uniques, codes = factorize_chunks(pids)
    names = comm_names(uniques, cmdlines)
    return [pa.DictionaryArray.from_arrays(numeric(c), names) for c in codes]


def comm_names(pids: list[int], cmdlines: dict[int, str]) -> pa.Array:
    """The comm of each pid (a ``comm`` column's dictionary, one entry per distinct pid)."""
    return strings([IDLE_COMM if p == 0 else cmdlines.get(p, UNKNOWN_COMM) for p in pids])


def parse_printk(blob: bytes) -> dict[int, str]:
    """printk_formats: ``0x<addr> : "<fmt>"``; as libtraceevent, a trailing ``\\n`` is dropped."""
    out: dict[int, str] = {}
    for line in blob.decode("utf-8", "replace").split("\n"):
        m = _PRINTK_RE.match(line)
        if m:
            fmt = m.group(2)
            if fmt.endswith("\\n"):
                fmt = fmt[:-2]
            out[int(m.group(1), 16)] = fmt
    return out


def kernel_release(uname: str | None) -> str | None:
    """The third word of the UNAME option (``Linux host 6.12.0 x86_64`` → ``6.12.0``)."""
    if not uname:
        return None
    words = uname.split()
    return words[2] if len(words) >= 3 else None
