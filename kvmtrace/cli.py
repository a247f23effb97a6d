"""The ``kvmtrace`` command line and its exit-status contract.

Each subcommand is a plain function in :mod:`kvmtrace.commands`; this module registers them on
:data:`app` (the commands never import this module, so there is no import cycle) and owns what is
common to all of them — how a run ends:

====  ==========================================================================================
0     the command did its job (``analyze`` found nothing at or above ``--fail-on``)
1     only ``analyze --fail-on`` met: a CI gate may read 1 as "the trace shows a bug"
2     unusable input or usage: a file that cannot be read as a trace, a bad option, an output
      that would overwrite an input — one line on stderr saying what and what to do
3     an internal error (a bug in kvmtrace): one line naming the exception; ``--debug`` shows the
      traceback. Never 1, so that a crash is not mistaken for a finding
130   interrupted (Ctrl-C)
141   the reader of standard output went away (``| head``), as a shell reports SIGPIPE
====  ==========================================================================================

``record`` is the exception by design: it exits with the recorded command's status.
"""

from __future__ import annotations

import errno
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import Annotated, NoReturn

import typer

from kvmtrace.commands import analyze, batch, convert, diff, info, record
from kvmtrace.commands.common import EXIT_PIPE, cli_message, say
from kvmtrace.parsers.errors import TraceError, TraceWarning
from kvmtrace.report.safe import printable
from kvmtrace.version import __version__

EXIT_OK = 0
EXIT_FAIL_ON = 1
EXIT_INPUT = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130

#: click's base of every usage error. Recent typer releases carry their own copy of click, so the
#: class is taken from typer's exceptions rather than imported from the ``click`` package.
_UsageErrors: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class _ClassicHelp:
    """``--help`` as typer users know it: ``PATH`` (not ``{path}``) in the usage line, the metavar
    (``FILE``, ``SECONDS``) or click's type name (``TEXT``, ``INTEGER``) for an option's value,
    and nothing for flags (not ``<bool>``). Recent typer releases changed these; the commands are
    written against the classic look, which the README and users' scripts quote."""

    @staticmethod
    def adopt(params: list) -> list:
        for p in params:
            if isinstance(p, typer.core.TyperArgument):
                p.__class__ = _Argument
                p.metavar = p.metavar or (p.name or "").upper()
            elif isinstance(p, typer.core.TyperOption):
                p.__class__ = _Option
        return params


#: typer's ``<type>`` labels as click names them.
_CLICK_TYPES = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "path": "PATH", "list[str]": "TEXT"}


class _Argument(typer.core.TyperArgument):
    def get_usage_pieces(self, ctx) -> list[str]:  # type: ignore[no-untyped-def]
        name = (self.metavar or "") + ("..." if self.nargs != 1 else "")
        return [name if self.required else f"[{name}]"]

    def display_type_rich(self, ctx) -> None:  # type: ignore[no-untyped-def]
        return None


class _Option(typer.core.TyperOption):
    def display_type_rich(self, ctx):  # type: ignore[no-untyped-def]
        if self.is_flag:
            return None
        if self.metavar:
            return str(self.metavar)
        shown = str(super().display_type_rich(ctx) or "").strip("<>")
        return _CLICK_TYPES.get(shown, shown.upper())


class _Command(typer.core.TyperCommand):
    def get_params(self, ctx):  # type: ignore[no-untyped-def]
        return _ClassicHelp.adopt(super().get_params(ctx))


class _Group(typer.core.TyperGroup):
    def get_params(self, ctx):  # type: ignore[no-untyped-def]
        return _ClassicHelp.adopt(super().get_params(ctx))


app = typer.Typer(
    cls=_Group,
    rich_markup_mode="markdown",
    name="kvmtrace",
    help="Trace-replay analyzer for the Linux KVM x86 MMU: read kvmmmu traces, replay them "
    "against a simulated MMU, and report anomalies.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command(cls=_Command)(info.info)
app.command(cls=_Command)(convert.convert)
app.command(cls=_Command)(analyze.analyze)
app.command(cls=_Command)(diff.diff)
app.command(cls=_Command, context_settings={"allow_interspersed_args": False})(record.record)
app.command(cls=_Command)(batch.batch)


class _Run:
    """What the root options asked for, read by :func:`run` after the command has ended."""

    debug = False


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"kvmtrace {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="On an internal error, show the traceback.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    _Run.debug = debug


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # type: ignore[no-untyped-def]
    """Reader warnings (cut-short file, skipped lines) are for the user: one line, no source.
    Any warning may quote a path or a trace's text: each line goes through :func:`printable`."""
    if issubclass(category, TraceWarning):
        say(f"warning: {message}")
    else:
        text = warnings.formatwarning(message, category, filename, lineno, line)
        print("\n".join(map(printable, text.splitlines())), file=sys.stderr)


def _show_usage_error(err: Exception) -> None:
    try:
        from typer import rich_utils  # typer's own rendering of usage errors, when rich is there

        rich_utils.rich_format_error(err)  # type: ignore[arg-type]
    except ImportError:
        err.show()  # type: ignore[attr-defined]


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default: ``sys.argv[1:]``) and return the exit status."""
    _Run.debug = False
    warnings.showwarning = _show_warning
    try:
        status = app(args=argv, standalone_mode=False, prog_name="kvmtrace")
    except TraceError as err:
        say(cli_message(err))
        return EXIT_INPUT
    except typer.Abort:
        return EXIT_INTERRUPTED
    except _UsageErrors as err:
        _show_usage_error(err)
        return EXIT_INPUT
    except OSError as err:
        if err.errno == errno.EPIPE:
            return EXIT_PIPE
        # an output folder we cannot write, a disk that filled up, a file that vanished
        where = f"{err.filename}: " if err.filename else ""
        say(f"{where}{err.strerror or err}")
        return EXIT_INPUT
    except Exception as err:
        if _Run.debug:
            traceback.print_exc()
        where = "" if _Run.debug else "; rerun as 'kvmtrace --debug ...' to see the traceback"
        say(f"internal error: {type(err).__name__}: {_one_line(err)}{where}")
        return EXIT_INTERNAL
    return status if isinstance(status, int) else EXIT_OK


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def main() -> NoReturn:
    """Entry point of the ``kvmtrace`` command."""
    sys.exit(run())
