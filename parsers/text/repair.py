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
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise, product

import polars as pl

from kvmtrace.parsers.text.decode import Decoded
from kvmtrace.parsers.text.lines import PREFIX

_QUOTE = r"^\s*(?:>\s?)+"
_QP_ESCAPE = re.compile(r"=([0-9A-F]{2})")
_ELISION = re.compile(
    r"^\s*(?:\.{3,}|…|\[\s*\.\.\.\s*\]|<\s*snip\s*>"
    r"|\[\s*snip\s*\]|-+\s*snip\s*-+|\(\s*snip\s*\))\s*$",
    re.I,
)
_PROMPT = re.compile(r"^\s*(?:\$|[\w.@:~/-]+[$#%]\s|\[[^\]]*\][$#]\s|\(.*\)\s*[\w.@:~/-]*[$#]\s)")


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
    quoted, qp_hint = df.select(
        (line.str.starts_with(">").any() | line.str.contains(_QUOTE).any()).alias("quoted"),
        (line.str.ends_with("=") | line.str.contains("=3D", literal=True)).any().alias("qp"),
    ).row(0)
    if quoted:
        df = df.with_columns(line.str.replace(_QUOTE, ""))
    if qp_hint:
        # Soft breaks: a line ending in "=" whose next line does not start a trace line.
        soft = line.str.ends_with("=") & ~line.shift(-1).str.contains(PREFIX).fill_null(False)
        if df.select((line.str.contains("=3D", literal=True) | soft).any()).item():
            df = _qp_decode(df.with_columns(pl.col("line_no").cast(pl.Int64)))
    return df


@dataclass
class Fixes:
    """Rejoined lines (their decoded results and every physical line they used), and decoded
    lines that had to be given up because they may continue on the next line."""

    split: pl.DataFrame | None = None
    decoded: dict[str, Decoded] = field(default_factory=dict)
    consumed: set[int] = field(default_factory=set)
    ambiguous: set[int] = field(default_factory=set)


#: The start of a record: a task-pid and a bracketed CPU.
RECORD_START = r"^\s*[^\s>|].*-\d+\s+(?:\(\s*(?:\d+|-+)\)\s+)?\[\d+\]"
#: The start of a record in any layout: a bracketed CPU, or the latency layout's CPU and flags.
WRAPPED_START = r"^\s*[^\s>|].*-\d+\s+(?:\(\s*(?:\d+|-+)\)\s+)?(?:\[\d+\]|\d+[^\s\d]\S{3,4}\s)"
#: The longest piece of a wrapped line: mail lines end by 998 characters (RFC 5322).
WRAPPED_MAX = 998
AMBIGUOUS = "decodes alone and joined with the next line too (wrapped?); cannot tell which is exact"


Decoder = Callable[[pl.DataFrame], tuple[pl.DataFrame, dict[str, Decoded]]]
#: What a candidate decodes to: its prefix fields and arguments.
Key = tuple[object, ...]


def _good_keys(split: pl.DataFrame, decoded: dict[str, Decoded]) -> dict[int, Key]:
    """Candidate index -> what it decodes to (prefix fields and arguments), for the ones that decode.

    Two joins that differ only where the reader ignores whitespace decode to the same key and
    count as one.
    """
    failed = {n for d in decoded.values() for n in d.failed.to_list()}
    rows = split.filter(pl.col("kind") == "event").select("line_no", "comm", "pid", "cpu", "ts", "event", "args")
    return {r[0]: r[1:] for r in rows.iter_rows() if r[0] not in failed}


#: A wrapped line is rejoined from at most this many continuation lines.
MAX_CONTINUATIONS = 3


def _candidates(
    start: int, follow: dict[int, int], text: dict[int, str], bad: set[int]
) -> list[tuple[tuple[int, ...], str]]:
    """Every way of joining ``start`` with 1..MAX_CONTINUATIONS following non-trace lines.

    ``follow`` maps a line number to the next line's: after a quoted-printable join the
    numbers are no longer consecutive.
    """
    out = []
    chain = [start]
    for _ in range(MAX_CONTINUATIONS):
        nxt = follow.get(chain[-1])
        if nxt not in bad:
            break
        chain.append(nxt)
        for seps in product(("", " "), repeat=len(chain) - 1):
            joined = text[start].rstrip()
            for sep, n in zip(seps, chain[1:]):
                joined += sep + text[n].strip()
            out.append((tuple(chain), joined))
    return out


def rejoin(split: pl.DataFrame, failed: set[int], decode: Decoder) -> Fixes:
    """Rejoin wrapped lines: a line that did not decode alone, plus the non-trace lines after it.

    The fewest continuation lines that give a decodable line win, and only if exactly one way
    of joining them (a space or nothing at each break) decodes: a break inside a number and a
    break between two words cannot be told apart otherwise. A line that decodes alone but also
    decodes joined with the next one (``rip 0x1000`` + ``00``; any free text) is ambiguous and
    given up (``Fixes.ambiguous``), never guessed.
    """
    bad = set(split.filter(pl.col("kind") == "bad")["line_no"].to_list())
    if not bad:
        return Fixes()
    order = split["line_no"].to_list()
    follow = dict(pairwise(order))
    events = set(split.filter(pl.col("kind") == "event")["line_no"].to_list())
    # A line that begins like a record ("task-pid [cpu]") starts one; it never continues another.
    is_bad = pl.col("kind") == "bad"
    heads = set(split.filter(is_bad & pl.col("line").str.contains(RECORD_START))["line_no"].to_list())
    # Only a line that begins like a record can have been wrapped (mail and terminals wrap
    # after the prefix), and only short pieces are pieces of a wrapped line: prose and junk
    # then cost nothing here, where every line used to start a dozen trial joins.
    short = set(split.filter(pl.col("line").str.len_bytes() <= WRAPPED_MAX)["line_no"].to_list())
    tails = (bad - heads) & short
    wrapped = set(split.filter(is_bad & pl.col("line").str.contains(WRAPPED_START))["line_no"].to_list())
    starts = [n for n in order if (n in wrapped or n in events) and n in short and follow.get(n) in tails]
    text = dict(split.select("line_no", "line").iter_rows())
    cands = [c for s in starts for c in _candidates(s, follow, text, tails)]
    if not cands:
        return Fixes()
    trial = pl.DataFrame({"line_no": list(range(len(cands))), "line": [c[1] for c in cands]},
                         schema={"line_no": pl.Int64, "line": pl.String})
    keys = _good_keys(*decode(trial))
    by_start: dict[int, dict[tuple[int, ...], dict[Key, str]]] = {}
    for i, (chain, joined) in enumerate(cands):
        if i in keys:
            by_start.setdefault(chain[0], {}).setdefault(chain, {}).setdefault(keys[i], joined)
    consumed: set[int] = set()
    ambiguous: set[int] = set()
    picked: list[tuple[int, str]] = []
    for s in starts:
        if s not in by_start or s in consumed:
            continue
        if s in events and s not in failed:
            ambiguous.add(s)  # it decoded alone, and also joined with what follows
            continue
        chain = min(by_start[s], key=len)
        if len(by_start[s][chain]) == 1 and not set(chain) & consumed:
            picked.append((s, next(iter(by_start[s][chain].values()))))
            consumed |= set(chain)
    if not picked:
        return Fixes(ambiguous=ambiguous)
    fixed_lines = pl.DataFrame(picked, schema={"line_no": pl.Int64, "line": pl.String}, orient="row")
    split_fixed, decoded_fixed = decode(fixed_lines)
    return Fixes(split_fixed, decoded_fixed, consumed, ambiguous)
