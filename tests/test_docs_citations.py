"""Every document the code cites is in the repository, and every section it cites exists.

Docstrings and comments explain *why* by pointing at kernel sources or at the repository's own
reference pages (``docs/tracepoints.md §3``). A citation of a page that is not in the checkout, or
of a section number that a page does not have, sends a reader nowhere; so does a private shorthand
("seed 000") that names no public thread. This test reads every module of the three layers and the
docs themselves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from kvmtrace.replays.checks import markdown_table

REPO = Path(__file__).resolve().parent.parent
LAYERS = ("parsers", "replays", "kvmtrace")

#: a repository-relative path of a Markdown file: ``docs/tracepoints.md``, ``lab/README.md``
_MD_PATH = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w.-]+\.md)\b")
#: a section number: ``§3``, ``§1.2``
_SECTION = re.compile(r"§(\d+(?:\.\d+)*)")
#: a Markdown heading that opens a numbered section: ``## 3. ...``, ``### 1.2 ...``
_HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)\.?\s")
#: citations of notes that were never part of the repository, or of mailing-list threads by a
#: private number instead of by subject (docs/threads.md)
_PRIVATE = re.compile(r"(?<![\w/])(?:tracepoints|kvm-host-notes|tracedat_format|replay-and-detectors)\.md"
                      r"|\bseeds?[ _-]?\d{3}\b|\bseeds/", re.IGNORECASE)


@dataclass(frozen=True)
class Citation:
    """One mention of a Markdown file, with the section numbers cited right after it."""

    source: str  # file:line that cites
    path: str  # repository-relative
    sections: tuple[str, ...]


def citations(text: str, source: str) -> list[Citation]:
    """The Markdown files ``text`` names, each with the ``§N`` that follow it up to the end of its
    parenthesis, clause or line (``docs/tracepoints.md §3 layouts A-G, §7`` cites §3 and §7)."""
    found = []
    for m in _MD_PATH.finditer(text):
        tail = re.split(r"[)\n;]|docs/|\.md\b", text[m.end():], maxsplit=1)[0]
        line = text.count("\n", 0, m.start()) + 1
        found.append(Citation(f"{source}:{line}", m.group(1), tuple(_SECTION.findall(tail))))
    return found


def sections(markdown: str) -> set[str]:
    """The numbered sections of a Markdown page (headings inside fenced code blocks are code)."""
    numbers, fenced = set(), False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and (m := _HEADING.match(line)):
            numbers.add(m.group(1))
    return numbers


def _code_files() -> list[Path]:
    return sorted(p for layer in LAYERS for p in (REPO / layer).rglob("*.py"))


def _doc_files() -> list[Path]:
    return sorted((REPO / "docs").glob("*.md"))


def _all_citations() -> list[Citation]:
    return [c for p in _code_files() + _doc_files()
            for c in citations(p.read_text(encoding="utf-8"), str(p.relative_to(REPO)))]


def problems(cites: list[Citation]) -> list[str]:
    """What is wrong with each citation: a missing file, or a section its page does not have."""
    out, cache = [], {}
    for c in cites:
        target = REPO / c.path
        if not target.is_file():
            out.append(f"{c.source}: cites {c.path}, which is not in the repository")
            continue
        if c.path not in cache:
            cache[c.path] = sections(target.read_text(encoding="utf-8"))
        out += [f"{c.source}: cites {c.path} §{s}, which has no such section" for s in c.sections
                if s not in cache[c.path]]
    return out


def test_cited_documents_and_sections_exist():
    cites = _all_citations()
    # the scan sees the citations it is meant to check (an empty scan would pass vacuously)
    by_page = {c.path for c in cites}
    assert {"docs/tracepoints.md", "docs/threads.md", "docs/qemu-memslot-lines.md",
            "docs/checks.md", "docs/report-json.md"} <= by_page
    assert sum(len(c.sections) for c in cites if c.path == "docs/tracepoints.md") >= 15
    assert problems(cites) == []


def own_sections(markdown: str) -> set[str]:
    """The ``§N`` a page cites without naming another file: references to its own sections."""
    for m in _MD_PATH.finditer(markdown):  # blank out every cross-file citation and its sections
        tail = re.split(r"[)\n;]|docs/|\.md\b", markdown[m.end():], maxsplit=1)[0]
        markdown = markdown[:m.start()] + " " * (m.end() - m.start() + len(tail)) + markdown[m.end() + len(tail):]
    return set(_SECTION.findall(markdown))


@pytest.mark.parametrize("page", [p.name for p in _doc_files()])
def test_sections_a_page_cites_of_itself_exist(page):
    text = (REPO / "docs" / page).read_text(encoding="utf-8")
    assert own_sections(text) <= sections(text)


def test_no_citation_outside_the_repository():
    bad = [f"{p.relative_to(REPO)}:{n}: {line.strip()}"
           for p in _code_files() + _doc_files()
           for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
           if _PRIVATE.search(line)]
    assert bad == []


@pytest.mark.parametrize(("text", "expected"), [
    ("(docs/tracepoints.md §3 layouts A-G, §7)", [("docs/tracepoints.md", ("3", "7"))]),
    ("(docs/tracepoints.md §3-§5): role", [("docs/tracepoints.md", ("3", "5"))]),
    ("see lab/README.md and docs/threads.md §2.", [("lab/README.md", ()), ("docs/threads.md", ("2",))]),
    ("QEMU does (docs/qemu-memslot-lines.md): every line §9", [("docs/qemu-memslot-lines.md", ())]),
])
def test_citation_parser(text, expected):
    assert [(c.path, c.sections) for c in citations(text, "x")] == expected


def test_problems_are_reported():
    """A missing page, a missing section and a bare note name are each caught."""
    cites = citations("(docs/tracepoints.md §3, §99) and docs/no-such-page.md", "x.py")
    assert problems(cites) == ["x.py:1: cites docs/tracepoints.md §99, which has no such section",
                               "x.py:1: cites docs/no-such-page.md, which is not in the repository"]
    assert problems(citations("(tracepoints.md §3)", "y.py")) == [
        "y.py:1: cites tracepoints.md, which is not in the repository"]
    assert _PRIVATE.search("the racing fault of seed 001") and _PRIVATE.search("kvm-host-notes.md")
    assert not _PRIVATE.search("docs/tracepoints.md §1.2")


def test_sections_skip_fenced_code():
    page = "## 1. Events\n```c\n#define X 1\n# 2 not a heading\n```\n### 1.2 Pages (see §1, docs/x.md §4)\n"
    assert sections(page) == {"1", "1.2"}
    assert own_sections(page) == {"1"}


def test_checks_page_carries_the_registry_table():
    """docs/checks.md shows the check table as the registry generates it, so it cannot drift."""
    assert markdown_table() in (REPO / "docs" / "checks.md").read_text(encoding="utf-8")
