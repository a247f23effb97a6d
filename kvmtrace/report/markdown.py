"""Markdown rendering for GitHub, GitLab and bugzilla comments.

Trace-derived strings (comm names, marker text) are escaped outside code blocks: these sites
render inline HTML, and a table cell must not be split by a ``|`` in a task name. Control
characters are shown as escapes everywhere, code blocks included (a terminal may display the
file).
"""

from __future__ import annotations

import re

from kvmtrace.report.blocks import Block, Bullets, Facts, Heading, Para, Plot, Table, TraceLines
from kvmtrace.report.grid import Grid
from kvmtrace.report.safe import printable

_SPECIAL = re.compile(r"([\\`*_{}\[\]<>|#])")


def md_escape(text: str) -> str:
    """Make ``text`` literal in Markdown prose and table cells (one line, control characters
    shown as escapes)."""
    return _SPECIAL.sub(r"\\\1", printable(text)).replace("&", "&amp;")


def _fence(lines: tuple[str, ...]) -> str:
    """A code fence longer than any backtick run in the lines, so none can close it early."""
    longest = max((len(m) for ln in lines for m in re.findall(r"`+", ln)), default=0)
    return "`" * max(3, longest + 1)


def _table(grid: Grid) -> list[str]:
    if not grid.rows:
        return ["*(none)*"]
    out = [
        "| " + " | ".join(md_escape(c) for c in grid.text_columns) + " |",
        "|" + "|".join(" --- " for _ in grid.text_columns) + "|",
    ]
    out += ["| " + " | ".join(md_escape(v) for v in row) + " |" for row in grid.text_rows()]
    if grid.hidden:
        out += ["", f"*... {grid.hidden} more rows (the JSON report has every row)*"]
    return out


def _block(block: Block) -> list[str]:
    if isinstance(block, Heading):
        return ["#" * block.level + " " + md_escape(block.text), ""]
    if isinstance(block, Facts):
        return [f"- **{md_escape(k)}:** {md_escape(v)}" for k, v in block.items] + [""]
    if isinstance(block, Table):
        return [*_table(block.grid), ""]
    if isinstance(block, Bullets):
        return [f"- {md_escape(item)}" for item in block.items] + [""]
    if isinstance(block, TraceLines):
        notes = block.notes or ("",) * len(block.lines)
        lines = tuple(printable(s) for ln, note in zip(block.lines, notes)
                      for s in ((ln, f"  = {note}") if note else (ln,)))
        fence = _fence(lines)
        more = [f"*... {block.more} more evidence events*", ""] if block.more else []
        return [fence, *lines, fence, "", *more]
    if isinstance(block, Para):
        return [md_escape(block.text), ""]
    if isinstance(block, Plot):
        return [f"*(plot \"{md_escape(block.figure.title)}\" is in the HTML report)*", ""]
    raise TypeError(f"unknown block {block!r}")


def render_markdown(blocks: list[Block]) -> str:
    lines: list[str] = []
    for block in blocks:
        lines += _block(block)
    return "\n".join(lines).rstrip("\n") + "\n"
