"""Plain-text rendering: at most 80 columns, ready to paste into a mail to kvm@vger.

Every string is passed through :func:`kvmtrace.report.safe.printable` before it is laid out, so
a task name or marker line full of escape sequences reaches the terminal as visible ``\x1b``.

Colour only when asked (the CLI asks when stdout is a terminal); a file or a pipe gets text
without escape codes, so it survives mail clients and bug trackers unchanged.
"""

from __future__ import annotations

import textwrap

from kvmtrace.report.blocks import Block, Bullets, Facts, Heading, Para, Plot, Table, TraceLines
from kvmtrace.report.grid import Grid
from kvmtrace.report.safe import printable

WIDTH = 80
_GAP = "  "
#: A last column at least this wide is prose (a check's reason): printed under its row.
_LONG_TEXT = 30
_ANSI = {"bold": "1", "red": "31", "yellow": "33", "green": "32"}
_STATUS_STYLE = {"failed": "red", "error": "red", "warning": "yellow", "passed": "green"}


class _Painter:
    def __init__(self, color: bool):
        self.color = color

    def __call__(self, text: str, style: str | None) -> str:
        if not self.color or style is None:
            return text
        return f"\x1b[{_ANSI[style]}m{text}\x1b[0m"


def _wrap(text: str, indent: str = "", first: str | None = None) -> list[str]:
    return textwrap.wrap(
        text, WIDTH, initial_indent=indent if first is None else first, subsequent_indent=indent,
        break_long_words=True, break_on_hyphens=False,
    ) or [indent.rstrip()]


def _fits(widths: list[int]) -> bool:
    return sum(widths) + len(_GAP) * (len(widths) - 1) <= WIDTH


#: Continuation lines of a wrapped table row are indented this much, so each row's first line
#: (with its key column) stands out.
_CONTINUED = "    "


def _row_lines(widths: list[int]) -> list[list[int]] | None:
    """Column indices per printed line of a row too wide for one line: the first line starts
    with column 0 (the key), later lines are indented by :data:`_CONTINUED`. None when a single
    column does not fit a line."""
    lines: list[list[int]] = [[0]]
    for i in range(1, len(widths)):
        indent = len(_CONTINUED) if len(lines) > 1 else 0
        if indent + sum(widths[j] for j in lines[-1] + [i]) + len(_GAP) * len(lines[-1]) <= WIDTH:
            lines[-1].append(i)
        else:
            lines.append([i])
    if any(len(_CONTINUED) * (n > 0) + sum(widths[j] for j in cols) + len(_GAP) * (len(cols) - 1) > WIDTH
           for n, cols in enumerate(lines)):
        return None
    return lines


def _table(grid: Grid, paint: _Painter) -> list[str]:
    """Aligned columns if they fit; else the last column (a long reason) wrapped under each row;
    else each row wrapped over several aligned lines, the key column first and the rest on
    indented continuation lines (one table: no column is separated from its row's key); else (a
    column wider than the page) every cell on its own wrapped line."""
    cells = [[printable(c) for c in row] for row in grid.text_rows()]
    head = [printable(c) for c in grid.text_columns]
    ws = [max(len(r[i]) for r in [head, *cells]) for i in range(len(head))]

    def line(row: list[str], cols: list[int]) -> str:
        return _GAP.join(paint(row[i].ljust(ws[i]), _STATUS_STYLE.get(row[i])) for i in cols).rstrip()

    def rule(cols: list[int]) -> str:
        return line(["-" * w for w in ws], cols)

    def wrapped(row: list[str], groups: list[list[int]]) -> list[str]:
        return [(_CONTINUED if n else "") + line(row, cols) for n, cols in enumerate(groups)]

    out: list[str] = []
    every = list(range(len(head)))
    groups = _row_lines(ws)
    below = f"{_GAP}({head[-1]} below)"
    if _fits(ws) or len(head) == 1:
        out += [line(head, every), rule(every)] + [line(r, every) for r in cells]
    elif _fits(ws[:-1]) and ws[-1] >= _LONG_TEXT and len(line(head, every[:-1]) + below) <= WIDTH:
        lead = every[:-1]
        out += [line(head, lead) + below, rule(lead)]
        for r in cells:
            out.append(line(r, lead))
            out += _wrap(r[-1], "    ")
    elif groups is not None:
        out += [*wrapped(head, groups), rule(groups[0])]
        for r in cells:
            out += wrapped(r, groups)
    else:  # a single column wider than the page: one "name: value" line per cell, wrapped
        for r in cells:
            for name, value in zip(head, r):
                out += _wrap(value, "    ", first=f"  {name}: ")
            out.append("")
    if grid.hidden:
        out.append(f"... {grid.hidden} more rows (the JSON report has every row)")
    if not cells:
        out.append("(none)")
    return out


def _block(block: Block, paint: _Painter) -> list[str]:
    if isinstance(block, Heading):
        text = printable(block.text)
        text = text if len(text) <= WIDTH else text[: WIDTH - 3] + "..."
        rule = {1: "=", 2: "-"}.get(block.level)
        return ["", paint(text, "bold")] + ([rule * len(text)] if rule else [])
    if isinstance(block, Facts):
        width = max(len(k) for k, _ in block.items) + 2
        indent = " " * width
        return [ln for k, v in block.items
                for ln in _wrap(printable(v), indent, first=f"{printable(k) + ':':<{width}}")]
    if isinstance(block, Table):
        return _table(block.grid, paint)
    if isinstance(block, Bullets):
        return [ln for item in block.items for ln in _wrap(printable(item), "  ", first="- ")]
    if isinstance(block, TraceLines):
        notes = block.notes or ("",) * len(block.lines)
        lines = [ln for t, note in zip(block.lines, notes)
                 for ln in _wrap(printable(t), "      ", first="    ")
                 + (_wrap(printable(note), "        ", first="      = ") if note else [])]
        return lines + ([f"    ... {block.more} more evidence events"] if block.more else [])
    if isinstance(block, Para):
        return _wrap(printable(block.text))
    if isinstance(block, Plot):
        return _wrap(f"(plot '{printable(block.figure.title)}' is in the HTML report)")
    raise TypeError(f"unknown block {block!r}")


def render_text(blocks: list[Block], *, color: bool = False) -> str:
    """The blocks as text lines of at most :data:`WIDTH` columns (colour codes excepted)."""
    paint = _Painter(color)
    lines: list[str] = []
    for block in blocks:
        lines += _block(block, paint)
    return "\n".join(lines).lstrip("\n") + "\n"
