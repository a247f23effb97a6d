"""The exit-status contract of the ``kvmtrace`` command (0 clean, 1 only for ``--fail-on``,
2 unusable input or usage, 3 internal error in one line), ``--version`` and ``--debug``.

Internal errors are provoked in-process: pytest's monkeypatch makes one step of a real analysis
raise, and :func:`kvmtrace.cli.run` is called the way ``main`` calls it.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import SAMPLES

import kvmtrace
from kvmtrace import cli
from kvmtrace.parsers.errors import TraceError

CHURN = SAMPLES / "churn-zapslot.dat"


def _boom(*args: object, **kwargs: object) -> None:
    raise IndexError("index 0 is out of bounds for axis 0 with size 0")


@pytest.fixture
def crashing_replay(monkeypatch):
    """The replay step of ``analyze`` fails the way a bug in it would."""
    import kvmtrace.analysis

    monkeypatch.setattr(kvmtrace.analysis, "run_replay", _boom)


def test_internal_error_is_exit_3_and_one_line_naming_the_exception(crashing_replay, capsys):
    assert cli.run(["analyze", str(CHURN), "--fail-on", "error"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "internal error: IndexError: index 0 is out of bounds" in err and "--debug" in err
    assert "Traceback" not in err


def test_debug_shows_the_traceback(crashing_replay, capsys):
    assert cli.run(["--debug", "analyze", str(CHURN)]) == 3
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and "_boom" in err
    assert err.rstrip().splitlines()[-1].startswith("kvmtrace: internal error: IndexError")


def test_version(capsys):
    assert cli.run(["--version"]) == 0
    assert capsys.readouterr().out == f"kvmtrace {kvmtrace.__version__}\n"


@pytest.mark.parametrize("argv", [["analyze"], ["analyze", str(CHURN), "--no-such-option"], ["frobnicate"], []],
                         ids=["missing-path", "unknown-option", "unknown-command", "no-command"])
def test_usage_errors_are_exit_2(argv, capsys):
    assert cli.run(argv) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_unreadable_input_is_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.dat"
    bad.write_bytes(b"hello, this is not a trace\n")
    assert cli.run(["analyze", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kvmtrace: {bad}: no trace events found") and err.count("\n") == 1


def test_clean_run_is_exit_0_even_with_fail_on(capsys):
    """mmio-zapall has no error finding: --fail-on error is not met."""
    assert cli.run(["analyze", str(SAMPLES / "mmio-zapall.dat"), "--fail-on", "error", "--format", "json"]) == 0


def test_hints_name_flags_on_the_command_line_and_keywords_in_python(capsys):
    err = TraceError("kernel release 'x' is not of the form MAJOR.MINOR", hint="pass e.g. {kernel} 6.12")
    assert str(err) == "kernel release 'x' is not of the form MAJOR.MINOR; pass e.g. kernel 6.12"
    from kvmtrace.commands.common import cli_message

    assert cli_message(err).endswith("; pass e.g. --kernel 6.12")


def test_a_library_error_names_the_keyword_in_python_and_the_flag_on_the_command_line(capsys):
    with pytest.raises(TraceError) as err:
        kvmtrace.open(CHURN).analyze(kernel="banana")
    assert str(err.value).endswith("pass e.g. kernel 6.12") and "--" not in str(err.value)
    assert cli.run(["analyze", str(CHURN), "--kernel", "banana"]) == 2
    assert capsys.readouterr().err == ("kvmtrace: kernel release 'banana' is not of the form MAJOR.MINOR[...]; "
                                       "pass e.g. --kernel 6.12\n")


@pytest.mark.parametrize("command, usage", [
    ("analyze", "Usage: kvmtrace analyze [OPTIONS] PATH"), ("diff", "Usage: kvmtrace diff [OPTIONS] A B"),
    ("convert", "Usage: kvmtrace convert [OPTIONS] PATH OUTDIR"),
    ("record", "Usage: kvmtrace record [OPTIONS] COMMAND..."),
    ("info", "Usage: kvmtrace info [OPTIONS] PATH"),
])
def test_help_reads_as_typer_users_expect(command, usage, capsys):
    assert cli.run([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert usage in out
    assert "<bool>" not in out and "<str>" not in out and "<path>" not in out and "{" not in out.split("Options")[0]


def test_zap_rule_is_passed_to_the_replay_only_when_given(monkeypatch, capsys):
    """``--zap-rule NAME`` reaches ``replays.replay(zap_rule=NAME)``; without it the replay is
    called exactly as before (so the option works with replays that predate the parameter)."""
    import kvmtrace.analysis

    seen: list[dict] = []
    real = kvmtrace.analysis.run_replay

    def spy(data, **kwargs):
        seen.append(kwargs)
        return real(data, **{k: v for k, v in kwargs.items() if k != "zap_rule"})

    monkeypatch.setattr(kvmtrace.analysis, "run_replay", spy)
    assert cli.run(["analyze", str(CHURN), "--format", "json"]) == 0
    assert cli.run(["analyze", str(CHURN), "--format", "json", "--zap-rule", "gptes_6_12"]) == 0
    assert "zap_rule" not in seen[0] and seen[1]["zap_rule"] == "gptes_6_12"


def test_a_reader_that_goes_away_is_not_exit_1():
    """``kvmtrace analyze t.dat | head``: click would exit 1 on the broken pipe, which a CI gate
    reads as --fail-on met. The HTML report (with its plots) is larger than a pipe's buffer."""
    proc = subprocess.Popen([sys.executable, "-m", "kvmtrace", "analyze", str(CHURN), "--format", "html"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the report is written
    assert proc.wait(timeout=600) == 141
    assert proc.stderr.read() == b""
