"""What the subcommands share and the library must not know: flag spellings, progress on the
terminal, where a command's text goes."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from kvmtrace.parsers.errors import TraceError
from kvmtrace.parsers.output import atomic_file
from kvmtrace.report.safe import printable

#: Parameters whose spelling on the command line (a flag, or an argument's name) is not ``--`` +
#: the keyword with dashes.
_FLAGS = {"fmt": "--format", "cpus": "--cpu", "output": "-o", "outdir": "OUTDIR",
          "command": "COMMAND after '--' (kvmtrace record -o x.dat -- ./workload)"}


#: ``--format``/``-f`` of the commands that render a report (analyze, diff).
ReportFormat = Annotated[str, typer.Option("--format", "-f", metavar="FORMAT", help="text, markdown, html or json.")]
#: ``--output``/``-o`` of the commands that print one document (written by :func:`emit`).
ReportOutput = Annotated[Path | None, typer.Option(
    "--output", "-o", metavar="FILE", help="Write the output to FILE (whole or not at all; - is standard output).")]


def flag(param: str) -> str:
    """The command-line spelling of an API keyword (``qemu_log`` -> ``--qemu-log``)."""
    return _FLAGS.get(param, "--" + param.replace("_", "-"))


def cli_message(err: TraceError) -> str:
    """A library error as the shell user reads it: the hint's parameters as flags."""
    return err.render(flag)


def say(text: str) -> None:
    """One line for the user on stderr, after ``kvmtrace: ``. Paths, QEMU and marker lines and
    task names in it come from whoever named the file or ran the guest: :func:`printable` shows
    their control characters as escapes, so none reaches the terminal (a file named
    ``\\x1b]0;x\\x07`` would retitle it)."""
    print(f"kvmtrace: {printable(text)}", file=sys.stderr)


class Steps:
    """A spinner on stderr naming the current step, shown only when stderr is a terminal, so
    redirected output and CI logs stay clean."""

    def __init__(self) -> None:
        self.console = Console(stderr=True)

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[None]:
        if not self.console.is_terminal:
            yield
            return
        with self.console.status(Text(printable(what))):  # Text: a path's "[...]" is not rich markup
            yield


def check_format(fmt: str, allowed: tuple[str, ...]) -> None:
    if fmt not in allowed:
        raise TraceError(f"--format {fmt}: unknown", hint=f"choose one of {', '.join(allowed)}")


def output_file(output: Path | None) -> Path | None:
    """The file ``-o`` names, or None for standard output (no ``-o``, or ``-o -`` as in every
    other Unix tool)."""
    return None if output is None or str(output) == "-" else output


#: 128 + SIGPIPE: what a shell reports for a program whose reader went away (``| head``).
EXIT_PIPE = 141


def emit(text: str | Iterable[str], output: Path | None) -> None:
    """Print to standard output, or write the file ``output`` whole or not at all; ``text`` may
    come in pieces (:func:`kvmtrace.report.render_parts`), written as they come.

    A reader that went away (``kvmtrace analyze t.dat | head``) is not an error of ours and
    not a finding: the exit status is :data:`EXIT_PIPE`, never click's 1, which ``--fail-on``
    owns.
    """
    parts = (text,) if isinstance(text, str) else text
    if output is not None:
        with atomic_file(output, "w") as f:
            f.writelines(parts)
        return
    try:
        sys.stdout.writelines(parts)
        sys.stdout.flush()
    except BrokenPipeError:
        # the interpreter flushes stdout again at exit: point it at /dev/null so that is silent
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(EXIT_PIPE) from None
