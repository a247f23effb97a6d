"""Trace-derived text made inert: control characters shown as escapes, never emitted.

Task names (``comm``), ``trace_marker`` lines, QEMU log lines and file paths are written by
whoever ran the guest or named the file; the report is read by someone else, often on a
terminal. A task named ``\\x1b]0;pwned\\x07\\x1b[2J`` would retitle that terminal and clear its
screen. Every renderer passes every string through :func:`printable`, so text, Markdown and
HTML show such a name as the characters ``\\x1b]0;pwned\\x07\\x1b[2J`` (HTML escapes markup on
top). JSON needs nothing: ``json.dumps`` already writes control characters as ``\\u001b``.
"""

from __future__ import annotations

import re

#: C0 controls and DEL, C1 controls, the line/paragraph separators, and the bidirectional
#: overrides and isolates that reorder what a reader sees ("trojan source").
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def printable(text: str) -> str:
    """``text`` with every control character replaced by its Python-style escape (``\\x1b``)."""
    return _UNSAFE.sub(_escape, text)
