"""What the subcommands share and the library must not know: flag spellings, progress on the
terminal, where a command's text goes."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console

from kvmtrace.parsers.errors import TraceError
from kvmtrace.report.output import write_atomic

#: Parameters whose spelling on the command line (a flag, or an argument's name) is not ``--`` + the keyword with dashes.
_FLAGS = {"fmt": "--format", "cpus": "--cpu", "output": "-o", "outdir": "OUTDIR",
          "command": "COMMAND after '--' (kvmtrace record -o x.dat -- ./workload)"}


def flag(param: str) -> str:
    """The command-line spelling of an API keyword (``qemu_log`` -> ``--qemu-log``)."""
    return _FLAGS.get(param, "--" + param.replace("_", "-"))


def cli_message(err: TraceError) -> str:
    """A library error as the shell user reads it: the hint's parameters as flags."""
    return err.render(flag)


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
        with self.console.status(what):
            yield


def check_format(fmt: str, allowed: tuple[str, ...]) -> None:
    if fmt not in allowed:
        raise TraceError(f"--format {fmt}: unknown", hint=f"choose one of {', '.join(allowed)}")


def output_file(output: Path | None) -> Path | None:
    """The file ``-o`` names, or None for standard output (no ``-o``, or ``-o -`` as in every
    other Unix tool)."""
    return None if output is None or str(output) == "-" else output


def emit(text: str, output: Path | None) -> None:
    """Print to standard output, or write the file ``output`` whole or not at all."""
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        write_atomic(output, text)
