"""The batch's output folder, which appears whole or not at all.

A CI job that uploads OUTDIR after a batch that died half-way must not upload a folder whose
``summary.parquet`` is missing or whose reports stop at trace 600 of 1000. Everything is written
into a temporary folder beside OUTDIR and renamed into place at the end; an existing non-empty
OUTDIR is refused unless the caller forces replacing it (it is then swapped out and removed only
once the new folder is in place).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

import pyarrow.parquet as pq

from kvmtrace.batch.tables import CHECKS_SCHEMA, FINDINGS_SCHEMA, SUMMARY_SCHEMA, WHATIF_SCHEMA
from kvmtrace.batch.worker import Outcome
from kvmtrace.parsers.errors import TraceError

#: The fleet tables written to OUTDIR, with their schemas.
TABLES = {"findings": FINDINGS_SCHEMA, "checks": CHECKS_SCHEMA, "summary": SUMMARY_SCHEMA, "whatif": WHATIF_SCHEMA}
REPORTS = "reports"


def check_outdir(out: Path, force: bool) -> None:
    """Refuse an OUTDIR that would lose someone's files (before any trace is analysed)."""
    if out.exists() and not out.is_dir():
        raise TraceError(f"{out}: exists and is not a folder; choose another -o")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise TraceError(f"{out}: folder is not empty; choose another -o or pass --force to replace it")


class OutputFolder:
    """``with OutputFolder(out, force) as folder:`` write files, then it becomes ``out``."""

    def __init__(self, out: Path, force: bool = False):
        check_outdir(out, force)
        self.out = out
        self.force = force
        out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        (self.tmp / REPORTS).mkdir()

    def __enter__(self) -> OutputFolder:
        return self

    def write_reports(self, outcome: Outcome) -> None:
        """A trace's rendered reports as ``reports/<trace id>.<format>``."""
        for fmt, text in outcome.reports.items():
            (self.tmp / REPORTS / f"{outcome.trace.trace_id}.{fmt}").write_text(text, encoding="utf-8")

    def write_table(self, name: str, frame) -> None:
        """A fleet table as ``<name>.parquet``, cast to its declared schema."""
        pq.write_table(frame.to_arrow().cast(TABLES[name]), self.tmp / f"{name}.parquet")

    def write_text(self, name: str, text: str) -> None:
        (self.tmp / name).write_text(text, encoding="utf-8")

    def _commit(self) -> None:
        os.chmod(self.tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would hide the results from others
        old = None
        if self.out.exists():
            check_outdir(self.out, self.force)  # someone may have written into it meanwhile
            old = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.old.", dir=self.out.parent))
            os.replace(self.out, old / "out")
        os.replace(self.tmp, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if kind is None:
                self._commit()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
