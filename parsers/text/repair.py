"""Recover trace lines from text that went through mail, chat or a terminal.

Traces reach us pasted into mails and bug reports: ``> `` quoting, quoted-printable soft
breaks (``=`` at the end of a line, ``=3D`` for ``=``), lines hard-wrapped in two, ``...`` or
``<snip>`` where the author cut, shell prompts and prose around the trace. Only what can be
recovered *exactly* is kept: a wrapped line is rejoined only when exactly one way of joining
it (with or without a space at the break) decodes; everything else is skipped and reported.

Clean input never pays for this: every step first checks, vectorised over the whole chunk,
whether there is any evidence of damage, and the Python loops run only over damaged lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import polars as pl

from parsers.text.lines import PREFIX

_QUOTE = r"^\s*(?:>\s?)+"
_QP_ESCAPE = re.compile(r"=([0-9A-F]{2})")
_ELISION = re.compile(r"^\s*(?:\.{3,}|…|\[\s*\.\.\.\s*\]|<\s*snip\s*>|\[\s*snip\s*\]|-+\s*snip\s*-+|\(\s*snip\s*\))\s*$", re.I)
_PROMPT = re.compile(r"^\s*(?:\$|[\w.@:~/-]+[$#%]|\(.*\)\s*[\w.@:~/-]*[$#])\s")


def why_bad(line: str) -> str:
    """A short reason for a skipped line, for the report."""
    if _ELISION.match(line):
        return "elided text ('...', '<snip>')"
    if _PROMPT.match(line):
        return "shell prompt or command"
    return "not a trace line (prose, or damaged beyond exact repair)"


def _qp_decode(df: pl.DataFrame) -> pl.DataFrame:
    """Undo quoted-printable: join soft breaks, decode ``=XX``; a joined line keeps its first number."""
    out_no: list[int] = []
    out_line: list[str] = []
    pending: str | None = None
    start = 0
    for no, line in df.select("line_no", "line").iter_rows():
        line = line or ""
        if pending is None:
            start, pending = no, ""
        if line.endswith("="):
            pending += line[:-1]
            continue
        text = pending + line
        raw = _QP_ESCAPE.sub(lambda m: chr(int(m[1], 16)) if int(m[1], 16) < 0x80 else m[0], text)
        out_no.append(start)
        out_line.append(raw)
        pending = None
    if pending is not None:
        out_no.append(start)
        out_line.append(pending)
    return pl.DataFrame({"line_no": out_no, "line": out_line}, schema={"line_no": pl.Int64, "line": pl.String})


def unquote(df: pl.DataFrame) -> pl.DataFrame:
    """Strip mail quoting and undo quoted-printable, if (and only if) the chunk shows them."""
    line = pl.col("line")
    if df.select(line.str.contains(_QUOTE).any()).item():
        df = df.with_columns(line.str.replace(_QUOTE, ""))
    soft = line.str.ends_with("=") & ~line.shift(-1).str.contains(PREFIX).fill_null(False)
    if df.select((line.str.contains("=3D|=20$|=09") | soft).any()).item():
        df = _qp_decode(df.with_columns(pl.col("line_no").cast(pl.Int64)))
    return df


@dataclass
class Fixes:
    """Rejoined lines: their decoded results and every physical line they used."""

    split: pl.DataFrame | None = None
    decoded: dict = field(default_factory=dict)
    consumed: set[int] = field(default_factory=set)


Decoder = Callable[[pl.DataFrame], tuple[pl.DataFrame, dict]]


def _good(split: pl.DataFrame, decoded: dict) -> set[int]:
    failed = {n for d in decoded.values() for n in d.failed.to_list()}
    ok = split.filter(pl.col("kind") == "event")["line_no"].to_list()
    return {n for n in ok if n not in failed}


def rejoin(split: pl.DataFrame, failed: set[int], decode: Decoder) -> Fixes:
    """Rejoin two-line wraps: a line that is not a trace line, after one that did not decode alone."""
    bad = split.filter(pl.col("kind") == "bad")["line_no"].to_list()
    if not bad:
        return Fixes()
    broken = set(bad) | failed
    wanted = {n - 1 for n in bad} | set(bad)
    text = dict(split.filter(pl.col("line_no").is_in(list(wanted))).select("line_no", "line").iter_rows())
    starts: list[int] = []
    used: set[int] = set()
    for n in sorted(bad):
        if n - 1 in broken and n - 1 in text and n - 1 not in used and n not in used:
            starts.append(n - 1)
            used |= {n - 1, n}
    if not starts:
        return Fixes()
    joins = {
        sep: pl.DataFrame({"line_no": starts, "line": [text[s].rstrip() + sep + text[s + 1].strip() for s in starts]},
                          schema={"line_no": pl.Int64, "line": pl.String})
        for sep in ("", " ")
    }
    ok = {sep: _good(*decode(df)) for sep, df in joins.items()}
    # Exactly one way of joining must decode; two that both decode mean we cannot tell.
    pick = {s: sep for sep in joins for s in starts if s in ok[sep] and s not in ok["" if sep == " " else " "]}
    if not pick:
        return Fixes()
    lines = [(s, joins[sep].filter(pl.col("line_no") == s)["line"][0]) for s, sep in sorted(pick.items())]
    split_fixed, decoded_fixed = decode(pl.DataFrame(lines, schema={"line_no": pl.Int64, "line": pl.String}, orient="row"))
    return Fixes(split_fixed, decoded_fixed, {n for s in pick for n in (s, s + 1)})
