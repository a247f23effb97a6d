"""Terminal safety on stderr: the command's warnings and error lines quote paths and trace text,
and a control character in them never reaches the terminal raw.

Hand-made from a real recording: the first lines of the ptslot zap-slot recording's ftrace
text, with one line broken (so the reader warns, quoting the path), saved under a name holding
a sequence that would retitle the terminal; and a real ``trace_marker`` line of that recording
with the same sequence appended, quoted by a warning.
"""

from __future__ import annotations

import gzip
import re
import subprocess
import sys

import pytest
from conftest import SAMPLES

from kvmtrace import cli, parsers
from kvmtrace.parsers.errors import TraceWarning

PROBE = "\x1b]0;pwned\x07\x1b[2J"
SHOWN = r"\x1b]0;pwned\x07\x1b[2J"
#: any control character but the newline that ends each line
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def _kvmtrace(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvmtrace", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, check=False)


@pytest.fixture(scope="module")
def probed_text(tmp_path_factory):
    with gzip.open(SAMPLES / "ptslot-zapslot.txt.gz", "rt") as f:
        lines = [next(f) for _ in range(600)]
    lines.insert(400, f"          kvmlab-15103   [000] ...1.  GARBAGE{PROBE} tracing_mark_write: x\n")
    folder = tmp_path_factory.mktemp("probe")
    (folder / f"trace{PROBE}.txt").write_text("".join(lines))
    return folder, f"trace{PROBE}.txt"


@pytest.mark.parametrize("command", ["info", "analyze"])
def test_a_warning_about_a_file_with_an_escape_in_its_name(probed_text, command):
    folder, name = probed_text
    run = _kvmtrace(command, name, cwd=folder)
    assert run.returncode == 0, run.stderr
    warning = [ln for ln in run.stderr.splitlines() if ln.startswith("kvmtrace: warning:")]
    expected = (f"kvmtrace: warning: trace{SHOWN}.txt: 1 line(s) could not be read exactly and were skipped "
                "(first: line 401)")
    assert warning == [expected]
    assert not RAW_CONTROL.search(run.stderr)


def test_error_lines_show_paths_escaped(probed_text):
    folder, name = probed_text
    missing = _kvmtrace("analyze", f"gone{PROBE}.dat", cwd=folder)
    assert missing.returncode == 2 and missing.stderr == f"kvmtrace: gone{SHOWN}.dat: no such file\n"
    log = _kvmtrace("analyze", name, "--qemu-log", f"qemu{PROBE}.log", cwd=folder)
    assert log.returncode == 2 and f"kvmtrace: qemu{SHOWN}.log: no such file" in log.stderr
    assert not RAW_CONTROL.search(missing.stderr + log.stderr)


def test_a_warning_quoting_a_marker_line(capsys):
    prints = parsers.read(SAMPLES / "ptslot-zapslot.dat").table("print")
    marker = next(b for b in prints.column("buf").to_pylist() if b.startswith("kvm_set_user_memory")).rstrip("\n")
    for category in (TraceWarning, UserWarning):  # the reader's one-line form and Python's own
        cli._show_warning(f"unusable memslot line: {marker}{PROBE}", category, "x.py", 1)
        err = capsys.readouterr().err
        assert f"unusable memslot line: {marker}{SHOWN}" in err and not RAW_CONTROL.search(err)
