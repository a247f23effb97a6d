"""The ``kvmtrace`` command line.

Each subcommand lives in its own module under :mod:`kvmtrace.commands` and registers itself on
:data:`app`. This module owns only what is common to all of them: the one-line error contract
(a :class:`kvmtrace.parsers.TraceError` becomes ``kvmtrace: <message>`` on stderr and exit status 2, never a
traceback) and the entry point.
"""

from __future__ import annotations

import sys
import warnings

import typer

from kvmtrace.parsers.errors import TraceError, TraceWarning

app = typer.Typer(
    name="kvmtrace",
    help="Trace-replay analyzer for the Linux KVM x86 MMU: read kvmmmu traces, replay them "
    "against a simulated MMU, and report anomalies.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Subcommand modules; importing one registers its command on ``app``.
from kvmtrace.commands import info, convert, analyze, diff, record, batch  # noqa: E402,F401


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Reader warnings (cut-short file, skipped lines) are for the user: one line, no source."""
    if issubclass(category, TraceWarning):
        print(f"kvmtrace: warning: {message}", file=sys.stderr)
    else:
        print(warnings.formatwarning(message, category, filename, lineno, line), end="", file=sys.stderr)


def main() -> None:
    """Entry point: click handles usage errors itself (exit 2); reader errors become one line."""
    warnings.showwarning = _show_warning
    try:
        app()
    except TraceError as err:
        print(f"kvmtrace: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:  # an output folder we cannot write, a disk that filled up
        where = f"{err.filename}: " if err.filename else ""
        print(f"kvmtrace: {where}{err.strerror or err}", file=sys.stderr)
        sys.exit(2)
