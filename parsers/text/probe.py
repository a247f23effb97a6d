"""Is this input ftrace text at all? Decided on a bounded probe, with a refusal that says what it is.

Users attach what they have: a syslog, ``dmesg``, a QEMU log, a core file, a trace.dat run
through gzip. Reading such an input as if it were a trace costs memory and time in proportion
to its size (every line becomes a repair candidate) and ends in a message that does not help.
The first bytes (:func:`binary_kind`) and the first chunk's lines (:func:`text_kind`) say what
it is, so the reader refuses early, in one line, and names what to give instead.
"""

from __future__ import annotations

import re

import numpy as np
import polars as pl

#: What to give instead, for every refusal of an input that is not a trace.
WANTED = ("give a trace.dat (trace-cmd record/extract) or ftrace text (tracefs 'trace' or 'trace_pipe', "
          "'trace-cmd report'), plain or gzip/xz/zstd")
#: Magics of files people attach by mistake, for a refusal that says what the input is.
FOREIGN_MAGICS = {
    b"\x7fELF": "an ELF binary or core dump",
    b"PK\x03\x04": "a zip archive",
    b"%PDF": "a PDF document",
    b"BZh": "bzip2-compressed data (decompress it first, e.g. bzcat)",
    b"\x89PNG": "a PNG image",
    b"\xd4\xc3\xb2\xa1": "a pcap capture",
    b"\x0a\x0d\x0d\x0a": "a pcapng capture",
    b"\x17\x08\x44tracing": "a compressed trace.dat (decompress it first)",
}


def binary_kind(probe: bytes) -> str | None:
    """What a probe that is not text looks like, or None when it is text.

    Text traces hold almost no control bytes besides tab/CR/FF/ESC; random or compressed bytes
    have one in eight below 0x20. A few NULs inside otherwise good text (a log file whose last
    blocks were zero-filled by a crash, a damaged paste) do not make it binary: the lines around
    them are still events, and the damaged ones are listed as skipped.
    """
    for magic, what in FOREIGN_MAGICS.items():
        if probe.startswith(magic):
            return what
    if probe.startswith(b"\0" * min(len(probe), 64)):
        return "a stream of NUL bytes"
    # zero-filled blocks (runs of NULs) are damage inside text, not what the bytes are made of
    raw = np.frombuffer(re.sub(rb"\0{16,}", b"", probe), dtype=np.uint8)
    control = (raw < 0x20) & (raw != 9) & (raw != 10) & (raw != 12) & (raw != 13) & (raw != 27)
    if control.sum() > max(8, len(raw) // 100):
        return "binary data"
    return None


#: Line shapes of text that is not a trace, checked in order: (regex, what it is).
TEXT_SHAPES = (
    (r"^\d+@\d+\.\d+:\w+ ", "a QEMU -trace log (pass it to 'kvmtrace analyze --qemu-log')"),
    (r"^\[\s*\d+\.\d+\] ", "a kernel log (dmesg)"),
    (r"^<\d+>\[\s*\d+\.\d+\] ", "a kernel log (dmesg)"),
    (r"^[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \S+ ", "a system log (syslog or journalctl)"),
    (r"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d\S* \S+ \S+(?:\[\d+\])?: ", "a system log (syslog or journalctl)"),
)


def text_kind(lines: pl.Series) -> str:
    """What text without a single trace line looks like: the shape most of its lines have."""
    lines = lines.filter(lines.str.strip_chars() != "")
    if lines.str.contains(r"^# tracer: |^cpus=\d+\s*$").any():
        return "an ftrace text without events (the buffer was empty when it was saved)"
    if lines.len() == 0:
        return "text without any trace line (only headers or blank lines)"
    for regex, what in TEXT_SHAPES:
        share = lines.str.contains(regex).mean()  # of a non-empty boolean column: a float
        if isinstance(share, float) and share >= 0.5:
            return what
    return f"text without any trace line in its first {lines.len()} lines"
