"""``kvmtrace analyze`` and ``kvmtrace diff`` as a user runs them: exit codes, files, filters.

Oracles: the kernel's own text twin of a recording (``.txt.gz``, timestamps and CPUs of every
event) for --since/--until/--cpu, the JSON reports of the single traces for ``diff``.
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import NESTED, SAMPLES

CLI = [sys.executable, "-c", "from kvmtrace.cli import main; main()"]
_TEXT_EVENT = re.compile(r"^\s*.+?-\d+\s+\[(\d{3})\]\s+\S+\s+(\d+)\.(\d{6}):", re.M)


def kvmtrace(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600)


def real_trace(name: str) -> Path:
    for folder in (SAMPLES, NESTED):
        if (folder / name).exists():
            return folder / name
    pytest.fail(f"real recording {name} missing")


@pytest.fixture(scope="module")
def churn() -> Path:
    return real_trace("churn-zapslot.dat")


def analyze_json(path: Path, *extra: str) -> dict:
    run = kvmtrace("analyze", path, "--format", "json", *extra)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def text_twin_events(dat: Path) -> list[tuple[int, int]]:
    """(cpu, timestamp in µs) of every event line of the kernel's text of the same records."""
    text = gzip.open(dat.with_suffix(".txt.gz"), "rt", errors="replace").read()
    return [(int(c), int(s) * 10**6 + int(us)) for c, s, us in _TEXT_EVENT.findall(text)]


def _reported_events(doc: dict, words: str) -> int:
    note = next(limit for limit in doc["limits"] if limit.startswith("reported:") and words in limit)
    return int(re.search(r"\((\d+) of (\d+) events\)", note)[1])


def test_since_until_cpu_select_what_the_kernel_text_says(churn):
    events = text_twin_events(churn)
    us = sorted({t for _, t in events})
    # window bounds between two microseconds no event shares, so µs text timestamps decide
    lo = next(a + 1 for a, b in zip(us[len(us) // 4:], us[len(us) // 4 + 1:]) if b - a >= 2)
    hi = next(a + 1 for a, b in zip(us[3 * len(us) // 4:], us[3 * len(us) // 4 + 1:]) if b - a >= 2)
    doc = analyze_json(churn, "--since", f"{lo / 1e6:.6f}", "--until", f"{hi / 1e6:.6f}")
    assert _reported_events(doc, "only events from") == sum(1 for _, t in events if lo <= t < hi)
    assert doc["trace"]["total_events"] == len(events)  # the replay saw the whole trace
    sel = doc["selection"]
    assert sel["since"] == round(lo / 1e6, 6) and sel["until"] == round(hi / 1e6, 6) and sel["cpus"] is None
    assert sel["events"] == _reported_events(doc, "only events from") and sel["total_events"] == len(events)
    assert analyze_json(churn)["selection"] is None
    assert all(lo * 1000 <= f["ts"] <= hi * 1000 for f in doc["findings"])
    per_cpu = Counter(c for c, _ in events)
    busiest = per_cpu.most_common(1)[0][0]  # the vCPU thread's CPU: kvmmmu events are there
    doc = analyze_json(churn, "--cpu", str(busiest))
    assert _reported_events(doc, f"only events on CPU {busiest}") == per_cpu[busiest]
    assert all(f["cpu"] == busiest for f in doc["findings"])


def test_selection_reports_what_the_whole_replay_found_there():
    """A window around each finding shows that finding exactly as the whole trace does (the
    replay runs over everything: the memslot delete before the window still counts), and
    nothing else than the whole run's findings inside the window."""
    churn = NESTED / "tdp-churn-noquirk-small-kt.dat"
    whole = analyze_json(churn)["findings"]
    assert whole, "the upstream 6.12 TDP churn has fault_in_update_window findings"
    for f in whole:
        lo, hi = f"{(f['ts'] - 1000) / 1e9:.6f}", f"{(f['ts'] + 1000) / 1e9:.6f}"
        doc = analyze_json(churn, "--since", lo, "--until", hi)
        inside = [g for g in whole if round(float(lo) * 1e9) <= g["ts"] <= round(float(hi) * 1e9)]
        assert doc["findings"] == inside and f in doc["findings"]


def test_selection_that_leaves_nothing_says_so(churn):
    run = kvmtrace("analyze", churn, "--cpu", "63")
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1 and "only events on CPU 63" in run.stderr


def test_fail_on_exit_codes_follow_the_findings(churn):
    doc = analyze_json(churn)
    severities = {f["severity"] for f in doc["findings"]}
    for level, meets in (("error", {"error"}), ("warning", {"error", "warning"})):
        run = kvmtrace("analyze", churn, "--fail-on", level, "-o", "/dev/null")
        assert run.returncode == (1 if severities & meets else 0), run.stderr


def test_output_file_is_written_whole(churn, tmp_path):
    out = tmp_path / "report.md"
    run = kvmtrace("analyze", churn, "--format", "markdown", "-o", out)
    assert run.returncode == 0, run.stderr
    assert run.stdout == ""
    assert out.read_text().startswith("# kvmtrace analyze:")
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]  # no temporary left over


def test_broken_trace_is_one_line_exit_2_and_no_output_file(churn, tmp_path):
    broken = tmp_path / "broken.dat"
    broken.write_bytes(churn.read_bytes()[:3000])  # a real header cut short
    out = tmp_path / "report.html"
    run = kvmtrace("analyze", broken, "--format", "html", "-o", out)
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1 and run.stderr.startswith("kvmtrace: ")
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["broken.dat"]


@pytest.mark.parametrize("args, words", [
    (["analyze", "no-such.dat"], "no such file"),
    (["analyze", "{churn}", "--format", "pdf"], "--format pdf"),
    (["analyze", "{churn}", "--fail-on", "info"], "--fail-on info"),
    (["analyze", "{churn}", "--since", "2", "--until", "1"], "--since"),
    (["analyze", "{churn}", "--memslots", "{churn}"], "--memslots"),
    (["analyze", "{churn}", "--qemu-log", "no-such.log"], "--qemu-log"),
])
def test_usage_and_input_errors_exit_2_with_one_line(churn, tmp_path, args, words):
    run = kvmtrace(*[a.format(churn=churn) for a in args], cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and words in run.stderr


def test_diff_with_itself_changes_nothing(churn):
    run = kvmtrace("diff", churn, churn, "--format", "json")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert not any(row["changed"] for row in doc["checks"]["rows"])
    assert all(row["B - A"] == 0 for row in doc["findings"]["rows"])
    for table in doc["activity"]:
        assert all(row["B - A"] in (0, None) for row in table["rows"])


def test_diff_of_two_policies_matches_the_single_reports(churn):
    other = real_trace("churn-zapall.dat")
    a, b = analyze_json(churn), analyze_json(other)
    run = kvmtrace("diff", churn, other, "--format", "json")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    sa = {c["id"]: c for c in a["checks"]}
    sb = {c["id"]: c for c in b["checks"]}
    for row in doc["checks"]["rows"]:
        ca, cb = sa[row["check"]], sb[row["check"]]
        assert (row["A"], row["B"]) == (ca["status"], cb["status"])
        assert row["changed"] == (ca["status"] != cb["status"] or ca["findings"] != cb["findings"])
    for row in doc["findings"]["rows"]:
        n_a = sum(1 for f in a["findings"] if f["id"] == row["finding"])
        n_b = sum(1 for f in b["findings"] if f["id"] == row["finding"])
        assert (row["A"], row["B"], row["B - A"]) == (n_a, n_b, n_b - n_a)
    overview = {r["measure"]: (r["A"], r["B"]) for r in doc["overview"]["rows"]}
    assert overview["events"] == (a["trace"]["total_events"], b["trace"]["total_events"])
    for fmt in ("text", "markdown"):
        run = kvmtrace("diff", churn, other, "--format", fmt)
        assert run.returncode == 0 and "Checks that changed" in run.stdout


def _run_with_pty(args: list[str], *, stdout_tty: bool) -> tuple[bytes, bytes, int]:
    """Run the CLI with stderr (and optionally stdout) on a pseudo-terminal."""
    import os
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen([*CLI, *args], stdin=subprocess.DEVNULL, stderr=slave,
                            stdout=slave if stdout_tty else subprocess.PIPE)
    os.close(slave)
    # drain the stdout pipe meanwhile: a report longer than the pipe's buffer would block the child
    # before it closes the terminal
    import threading
    piped: list[bytes] = []
    reader = threading.Thread(target=lambda: piped.append(proc.stdout.read())) if proc.stdout else None
    if reader:
        reader.start()
    tty_bytes = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        tty_bytes += chunk
    if reader:
        reader.join()
    out = piped[0] if piped else b""
    os.close(master)
    return out, tty_bytes, proc.wait(timeout=600)


def test_piped_report_is_plain_even_with_a_terminal_on_stderr(churn):
    plain = kvmtrace("analyze", churn)
    out, _, rc = _run_with_pty(["analyze", str(churn)], stdout_tty=False)
    assert rc == 0
    assert out.decode() == plain.stdout  # progress went to the terminal, not into the report
    assert b"\x1b[" not in out


def test_report_on_a_terminal_is_coloured(churn):
    _, tty, rc = _run_with_pty(["analyze", str(churn)], stdout_tty=True)
    assert rc == 0
    assert b"\x1b[" in tty and b"kvmtrace analyze:" in tty


def test_diff_text_fits_80_columns(churn):
    run = kvmtrace("diff", churn, real_trace("churn-zapall.dat"))
    assert run.returncode == 0, run.stderr
    assert max(len(ln) for ln in run.stdout.splitlines()) <= 80


def _qemu_lines(dat: Path) -> list[str]:
    """QEMU's own kvm_set_user_memory lines, taken from the kernel text of a real recording (the
    lab wrote them to trace_marker exactly as QEMU >= 9.0 prints them), in QEMU -trace log form."""
    text = gzip.open(dat.with_suffix(".txt.gz"), "rt", errors="replace").read()
    found = re.findall(r"-(\d+)\s+\[\d{3}\].*?\s(\d+\.\d{6}): tracing_mark_write: (kvm_set_user_memory .*)$",
                       text, re.M)
    return [f"{pid}@{ts}:{line}" for pid, ts, line in found]


def test_qemu_log_is_read_and_replaces_the_trace_markers(churn, tmp_path):
    lines = _qemu_lines(churn)
    assert lines
    log = tmp_path / "qemu.log"
    log.write_text("\n".join(lines) + "\n")
    doc = analyze_json(churn, "--qemu-log", log)
    rows = doc["memslots"]["rows"]
    assert doc["replay"]["memslot_changes"] >= len({ln.split("Slot#")[1].split()[0] for ln in lines})
    assert rows and all(r["seq"] is None and r["ts"] is None for r in rows)  # a log has no trace position
    assert {r["slot"] for r in rows} == {int(ln.split("Slot#")[1].split()[0]) for ln in lines}


def test_memslot_layout_file_is_read(churn, tmp_path):
    first = {}
    for ln in _qemu_lines(churn):  # the first layout QEMU set up, as a layout file
        slot = int(ln.split("Slot#")[1].split()[0])
        size = int(re.search(r"size=(0x[0-9a-f]+)", ln)[1], 16)
        if slot not in first and size:
            first[slot] = {"slot": slot, "gpa": re.search(r"gpa=(0x[0-9a-f]+)", ln)[1], "size": hex(size)}
    layout = tmp_path / "layout.json"
    layout.write_text(json.dumps({"slots": list(first.values())}))
    doc = analyze_json(churn, "--memslots", layout)
    # the file is the starting layout: its slots have no seq; the trace's own lines follow
    rows = [r for r in doc["memslots"]["rows"] if r["seq"] is None]
    assert len(doc["memslots"]["rows"]) > len(rows)
    assert sorted(r["slot"] for r in rows) == sorted(first)
    assert all(r["kind"] == "create" and r["seq"] is None for r in rows)
    assert {r["slot"]: r["base_gfn"] for r in rows} == {s: int(v["gpa"], 16) >> 12 for s, v in first.items()}


def test_trace_without_kvmmmu_events_is_one_line_exit_2(public_dir, tmp_path):
    """A real trace.dat of another subsystem (scheduler events) has nothing to replay."""
    out = tmp_path / "r.json"
    run = kvmtrace("analyze", public_dir / "sched_load.dat", "--format", "json", "-o", out)
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1 and "kvmmmu" in run.stderr
    assert not out.exists()
