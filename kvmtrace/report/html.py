"""HTML rendering: one self-contained file (inline CSS, plots as inline SVG, no scripts).

Every string that came from the trace or the replay goes through :func:`escape` (control
characters as ``\x1b``, then :func:`html.escape`): comm names and ``trace_marker`` text are
written by whoever ran the guest, and the report is opened in a browser by someone else.
"""

from __future__ import annotations

from html import escape as _html_escape

from kvmtrace.report.blocks import Block, Bullets, Facts, Heading, Para, Plot, Table, TraceLines
from kvmtrace.report.grid import Grid
from kvmtrace.report.safe import printable

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
h1 { font-size: 1.4em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .2em .5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: .1em 1em; }
dl.facts dt { font-weight: 600; } dl.facts dd { margin: 0; }
pre { background: #f7f7f7; padding: .6em; overflow-x: auto; font-size: .85em; }
.failed, .error { color: #b00020; font-weight: 600; } .warning { color: #a86b00; font-weight: 600; }
.passed { color: #1b7f2a; } .not_evaluated { color: #666; }
figure { margin: 1em 0; } figure svg { max-width: 100%; height: auto; }
""".strip()


def escape(text: str) -> str:
    """Markup escaped, control characters shown as ``\\x1b`` (a browser would drop them silently,
    and someone may read the file on a terminal)."""
    return _html_escape(printable(text))


_STATUS = {"passed", "failed", "not_evaluated", "error", "warning", "info"}


def _cell(text: str) -> str:
    """A table cell; status words get a class so they are coloured."""
    return f'<td class="{text}">{escape(text)}</td>' if text in _STATUS else f"<td>{escape(text)}</td>"


def _table(grid: Grid) -> str:
    if not grid.rows:
        return "<p><em>(none)</em></p>"
    head = "".join(f"<th>{escape(c)}</th>" for c in grid.text_columns)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in grid.text_rows())
    more = f"<p><em>... {grid.hidden} more rows (the JSON report has every row)</em></p>" if grid.hidden else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def _block(block: Block) -> str:
    if isinstance(block, Heading):
        level = min(block.level, 6)
        return f"<h{level}>{escape(block.text)}</h{level}>"
    if isinstance(block, Facts):
        items = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in block.items)
        return f'<dl class="facts">{items}</dl>'
    if isinstance(block, Table):
        return _table(block.grid)
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{escape(i)}</li>" for i in block.items) + "</ul>"
    if isinstance(block, TraceLines):
        more = f"<p><em>... {block.more} more evidence events</em></p>" if block.more else ""
        notes = block.notes or ("",) * len(block.lines)
        shown = [s for ln, note in zip(block.lines, notes) for s in ((ln, f"  = {note}") if note else (ln,))]
        return "<pre>" + "\n".join(escape(ln) for ln in shown) + "</pre>" + more
    if isinstance(block, Para):
        return f"<p>{escape(block.text)}</p>"
    if isinstance(block, Plot):
        # The SVG is drawn by kvmtrace.plot (matplotlib), not taken from the trace.
        return f"<figure>{block.figure.svg}<figcaption>{escape(block.figure.title)}</figcaption></figure>"
    raise TypeError(f"unknown block {block!r}")


def render_html_fragment(blocks: list[Block]) -> str:
    """The blocks as an HTML fragment (for notebooks, which supply the page around it)."""
    return "\n".join(_block(b) for b in blocks)


def render_html(blocks: list[Block], *, title: str) -> str:
    body = render_html_fragment(blocks)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )
