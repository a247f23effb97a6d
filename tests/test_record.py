"""``kvmtrace record`` on the real kernel: a tiny KVM guest is traced, decoded two ways, and
tracefs must be exactly as before afterwards — after success, a failing command and Ctrl-C.

The traced command is this file run as a script: it writes a trace_marker line, creates a VM
with 64 KiB of memory and one vCPU in real mode, and runs a loop of N ``out 0x10, al``
(al = N, N-1, ... 1), a store and ``hlt``. So the trace must show exactly N port writes with
those values, N userspace exits KVM_EXIT_IO (2) and one KVM_EXIT_HLT (5) — facts of the guest
program, not of our code. Oracles: ``trace-cmd report -R`` and the kernel's own text
(``--text``) of the same records.

Every recording test holds the machine-wide recording lock, so no other recording can change tracefs
between the before and after snapshots (the recorder, a child of the lock holder, proceeds).
"""

from __future__ import annotations

import gzip
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

TRACEFS = Path("/sys/kernel/tracing")
KVMTRACE = [sys.executable, "-c", "from kvmtrace.cli import main; main()"]
GUEST = [sys.executable, str(Path(__file__).resolve())]


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "recording needs root"
    if not (TRACEFS / "tracing_on").exists():
        return "tracefs not mounted"
    if not Path("/dev/kvm").exists():
        return "no /dev/kvm"
    if not (TRACEFS / "events/kvmmmu").is_dir():
        return "kvm module not loaded (no kvmmmu events)"
    return None


def kvm_only(test):
    """Records for real: needs root, tracefs, /dev/kvm, and holds the machine's recording lock;
    writes to tracefs, so it runs only when asked (the ``tracefs`` marker, see conftest)."""
    skip = pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")
    return pytest.mark.tracefs(pytest.mark.kvm(skip(pytest.mark.usefixtures("hold_recording_lock")(test))))


@pytest.fixture
def hold_recording_lock():
    from kvmtrace.record.lock import recording_lock

    with recording_lock():
        yield


def tracefs_state() -> dict[str, str]:
    """The knobs a recording touches, read straight from tracefs (independent of the recorder).

    A never-used ring buffer reads ``7 (expanded: N)``; any tracing expands it to N, so N is the
    comparable value.
    """
    state = {name: (TRACEFS / name).read_text() for name in ("tracing_on", "trace_clock", "set_event")}
    state["buffer_size_kb"] = re.sub(r"^\d+ \(expanded: (\d+)\)", r"\1", (TRACEFS / "buffer_size_kb").read_text())
    for system in ("kvmmmu", "kvm"):
        for enable in sorted((TRACEFS / "events" / system).glob("*/enable")):
            state[str(enable.relative_to(TRACEFS))] = enable.read_text()
    return state


def run_kvmtrace(*args: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KVMTRACE, *args], capture_output=True, text=True, timeout=120, **kw)


def report_counts(trace_cmd: str, path: Path) -> Counter[str]:
    out = subprocess.run([trace_cmd, "report", "-R", "-i", str(path)], capture_output=True, text=True, check=True)
    return Counter(m.group(1) for m in re.finditer(r"^\s*\S.*?\[\d+\]\s+[\d.]+: (\w+):", out.stdout, re.MULTILINE))


def text_counts(path: Path) -> Counter[str]:
    """Events per name in the kernel's text; it names ftrace ``print`` by its print function."""
    with gzip.open(path, "rt") as f:
        names = [m.group(1) for line in f if (m := re.search(r"\s[\d.]+: (\w+):", line)) and not line.startswith("#")]
    return Counter("print" if name == "tracing_mark_write" else name for name in names)


@kvm_only
@pytest.mark.oracle
@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_native_recording_decodes_identically_and_restores_tracefs(
    compression: str, tmp_path: Path, trace_cmd: str
) -> None:
    from kvmtrace.parsers.tracedat import read_tracedat

    before = tracefs_state()
    out = tmp_path / "guest.dat"
    proc = run_kvmtrace("record", "--backend", "native", "--compression", compression, "--text",
                        "-o", str(out), "--", *GUEST)
    assert proc.returncode == 0, proc.stderr
    assert tracefs_state() == before
    assert "lost events" not in proc.stderr

    data = read_tracedat(out)
    ours = Counter({name: table.num_rows for name, table in data.tables.items() if table.num_rows})
    assert ours == report_counts(trace_cmd, out)
    # The kernel's own text rendering of the same records, saved before the pages were drained.
    assert ours == text_counts(tmp_path / "guest.txt.gz")

    pio = data.tables["kvm_pio"].to_pylist()
    assert [(r["rw"], r["port"], r["val"]) for r in pio] == [(1, 0x10, 1)]
    exits = [r["reason"] for r in data.tables["kvm_userspace_exit"].to_pylist()]
    assert exits == [2, 5]
    assert ours["kvm_mmu_get_page"] > 0  # the VM's first MMU root
    # trace_marker writes (ftrace print) are recorded without being asked for.
    assert data.tables["print"].column("buf").to_pylist() == [f"{MARKER} loops=1\n"]
    assert data.info.clock == "global"


@kvm_only
def test_native_backend_drains_the_buffer_while_the_command_runs(tmp_path: Path) -> None:
    """About 11 MB of events through ring buffers of 8 MB in all: drained while the guest runs,
    none is lost; read only at the end (as --text must), the buffers overwrite the oldest."""
    from kvmtrace.parsers.tracedat import read_tracedat

    loops = 40_000
    guest = [*GUEST, str(loops)]
    cpus = len(list(TRACEFS.glob("per_cpu/cpu*")))
    buffer_kb = 8192 // cpus
    common = ["record", "--backend", "native", "--no-kallsyms", "--buffer-kb", str(buffer_kb)]
    streamed = tmp_path / "streamed.dat"
    proc = run_kvmtrace(*common, "--compression", "none", "-o", str(streamed), "--", *guest)
    assert proc.returncode == 0, proc.stderr
    assert "lost events" not in proc.stderr
    assert streamed.stat().st_size > cpus * buffer_kb * 1024  # more than the buffers could hold
    vals = read_tracedat(streamed).tables["kvm_pio"].column("val").to_pylist()
    assert vals == [n & 0xFF for n in range(loops, 0, -1)]

    proc = run_kvmtrace(*common, "--text", "-o", str(tmp_path / "at_end.dat"), "--", *guest)
    assert proc.returncode == 0, proc.stderr
    assert "lost events (overrun" in proc.stderr
    at_end = read_tracedat(tmp_path / "at_end.dat")
    assert at_end.tables["kvm_pio"].num_rows < loops
    assert at_end.gaps.num_rows > 0  # the kernel flagged the loss in the pages too


@kvm_only
def test_trace_cmd_backend_and_version_6(tmp_path: Path, trace_cmd: str) -> None:
    before = tracefs_state()
    out = tmp_path / "guest.dat"
    proc = run_kvmtrace("record", "--backend", "trace-cmd", "--file-version", "6", "-e", "kvm:kvm_pio",
                        "-o", str(out), "--", *GUEST)
    assert proc.returncode == 0, proc.stderr
    assert tracefs_state() == before
    assert out.read_bytes()[10:12] == b"6\0"
    assert report_counts(trace_cmd, out) == Counter({"kvm_pio": 1, "print": 1})  # print: the marker


@kvm_only
def test_failing_command_status_is_returned_and_tracefs_restored(tmp_path: Path) -> None:
    before = tracefs_state()
    out = tmp_path / "fail.dat"
    proc = run_kvmtrace("record", "--backend", "native", "--no-kallsyms", "-o", str(out), "--",
                        "sh", "-c", "exit 7")
    assert proc.returncode == 7, proc.stderr
    assert tracefs_state() == before
    assert out.exists()


#: Marks itself started, then sleeps until a signal ends it (SIGINT at its default: exit by signal).
WAIT_FOR_SIGINT = (
    "import pathlib, signal, sys, time; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "pathlib.Path(sys.argv[1]).touch(); time.sleep(60)"
)


@kvm_only
def test_sigint_stops_the_command_and_restores_tracefs(tmp_path: Path) -> None:
    before = tracefs_state()
    out, started = tmp_path / "int.dat", tmp_path / "started"
    rec = subprocess.Popen(
        [*KVMTRACE, "record", "--backend", "native", "--no-kallsyms", "-o", str(out), "--",
         "sh", "-c", f"{' '.join(GUEST)} && exec {sys.executable} -c '{WAIT_FOR_SIGINT}' {started}"],
        stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 60
    while not started.exists():
        assert rec.poll() is None and time.monotonic() < deadline, "recording did not start"
        time.sleep(0.05)
    assert (TRACEFS / "tracing_on").read_text().strip() == "1"
    rec.send_signal(signal.SIGINT)  # to the recorder alone, as `kill -INT` would
    _, err = rec.communicate(timeout=30)
    assert rec.returncode == 128 + signal.SIGINT, err  # the command was interrupted
    assert tracefs_state() == before
    assert out.exists()  # what was recorded up to the interrupt is kept


@kvm_only
def test_error_messages_are_one_line_and_touch_nothing(tmp_path: Path) -> None:
    before = tracefs_state()
    for args, message in [
        (["-e", "kvmmmu:no_such_event"], "unknown event 'kvmmmu:no_such_event'"),
        (["-e", "nosuchsystem"], "unknown event system 'nosuchsystem'"),
        (["--backend", "perf"], "unknown backend 'perf'"),
        (["--clock", "sundial"], "unknown trace clock 'sundial'"),
        (["--backend", "native", "--", "/nonexistent/workload"], "command not found: /nonexistent/workload"),
    ]:
        proc = run_kvmtrace("record", "-o", str(tmp_path / "x.dat"), *args, *([] if "--" in args else ["--", "true"]))
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.strip().splitlines() == [f"kvmtrace: {proc.stderr.strip().removeprefix('kvmtrace: ')}"]
        assert message in proc.stderr
        assert tracefs_state() == before
    assert not list(tmp_path.iterdir())


@kvm_only
def test_trace_cmd_failure_is_reported_and_nothing_is_left(tmp_path: Path) -> None:
    """Hand-made failure: a `trace-cmd` on PATH that fails as a broken install would."""
    fake = tmp_path / "bin" / "trace-cmd"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'trace-cmd: Permission denied' >&2\necho '  opening per_cpu' >&2\nexit 1\n")
    fake.chmod(0o755)
    before = tracefs_state()
    out = tmp_path / "x.dat"
    proc = run_kvmtrace("record", "--backend", "trace-cmd", "-o", str(out), "--", *GUEST,
                        env={**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"})
    assert proc.returncode == 2
    assert proc.stderr.strip() == "kvmtrace: trace-cmd extract failed: trace-cmd: Permission denied; opening per_cpu"
    assert tracefs_state() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin"]


@kvm_only
def test_auto_backend_without_trace_cmd_is_native(tmp_path: Path) -> None:
    """Where trace-cmd is not installed (containers), recording still works, natively."""
    out = tmp_path / "auto.dat"
    proc = run_kvmtrace("record", "--no-kallsyms", "-o", str(out), "--", *GUEST, env={"PATH": "/nonexistent"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().endswith("(native)")
    assert out.read_bytes().startswith(b"\x17\x08\x44tracing7\0")


def test_not_root_is_refused_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hand-made condition (the tests run as root here): a non-root user gets told to use sudo."""
    from kvmtrace.parsers.errors import TraceError
    from kvmtrace.record.recorder import RecordOptions, record

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(TraceError, match=r"recording needs root .*: run kvmtrace record with sudo"):
        record(RecordOptions(output=tmp_path / "x.dat", command=("true",)))


@pytest.mark.skipif(os.geteuid() != 0, reason="the root check comes first")
def test_tracefs_without_kvmmmu_says_load_kvm(tmp_path: Path) -> None:
    """Hand-made tracefs folder (no real host lacks only the kvm module here)."""
    from kvmtrace.parsers.errors import TraceError
    from kvmtrace.record.recorder import RecordOptions, record

    (tmp_path / "tracing_on").write_text("1\n")
    with pytest.raises(TraceError, match="no kvmmmu events in tracefs: the kvm module is not loaded"):
        record(RecordOptions(output=tmp_path / "x.dat", command=("true",), tracefs=tmp_path))


@pytest.mark.skipif(os.geteuid() != 0, reason="the root check comes first")
def test_missing_tracefs_says_how_to_mount(tmp_path: Path) -> None:
    from kvmtrace.parsers.errors import TraceError
    from kvmtrace.record.recorder import RecordOptions, record

    with pytest.raises(TraceError, match=f"mount -t tracefs nodev {tmp_path}"):
        record(RecordOptions(output=tmp_path / "x.dat", command=("true",), tracefs=tmp_path))


MARKER = "kvmtrace-test tiny guest"


def tiny_guest(loops: int) -> None:
    """Write a trace_marker line; create a VM and a real-mode vCPU; write port 0x10 ``loops``
    times (values loops..1, low byte), store one byte, hlt. Raw KVM ioctls; exits non-zero if
    the guest did not run as written."""
    import ctypes
    import fcntl
    import mmap
    import struct

    create_vm, vcpu_mmap_size, create_vcpu, run = 0xAE01, 0xAE04, 0xAE41, 0xAE80
    set_memory_region, get_sregs, set_sregs, set_regs = 0x4020AE46, 0x8138AE83, 0x4138AE84, 0x4090AE82
    exit_io, exit_hlt = 2, 5
    (TRACEFS / "trace_marker").write_text(f"{MARKER} loops={loops}\n")
    kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    vm = fcntl.ioctl(kvm, create_vm, 0)
    mem = mmap.mmap(-1, 0x10000)
    code = bytes([
        0xB9, loops & 0xFF, loops >> 8,  # mov cx, loops
        0x88, 0xC8,                      # 1: mov al, cl
        0xE6, 0x10,                      # out 0x10, al
        0x49,                            # dec cx
        0x75, 0xF9,                      # jnz 1b
        0xC6, 0x06, 0x00, 0x20, 0x42,    # mov byte [0x2000], 0x42
        0xF4,                            # hlt
    ])
    mem[0x1000 : 0x1000 + len(code)] = code
    addr = ctypes.addressof(ctypes.c_char.from_buffer(mem))
    fcntl.ioctl(vm, set_memory_region, struct.pack("<IIQQQ", 0, 0, 0, len(mem), addr))
    vcpu = fcntl.ioctl(vm, create_vcpu, 0)
    kvm_run = mmap.mmap(vcpu, fcntl.ioctl(kvm, vcpu_mmap_size, 0), mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    sregs = bytearray(312)
    fcntl.ioctl(vcpu, get_sregs, sregs, True)
    struct.pack_into("<Q", sregs, 0, 0)  # cs.base
    struct.pack_into("<H", sregs, 12, 0)  # cs.selector
    fcntl.ioctl(vcpu, set_sregs, bytes(sregs))
    regs = bytearray(144)
    struct.pack_into("<QQ", regs, 128, 0x1000, 0x2)  # rip, rflags
    fcntl.ioctl(vcpu, set_regs, bytes(regs))
    reasons = []
    while not reasons or reasons[-1] == exit_io:
        fcntl.ioctl(vcpu, run, 0)
        reasons.append(struct.unpack_from("<I", kvm_run, 8)[0])
    if reasons != [exit_io] * loops + [exit_hlt] or mem[0x2000] != 0x42:
        sys.exit(f"unexpected guest run: {len(reasons)} exits ending {reasons[-3:]}, byte {mem[0x2000]:#x}")


if __name__ == "__main__":
    tiny_guest(int(sys.argv[1]) if len(sys.argv) > 1 else 1)


def test_tracefs_tests_skip_unless_asked() -> None:
    """Without KVMTRACE_TRACEFS_TESTS=1 no recording test runs, and the skip says how to ask."""
    env = {k: v for k, v in os.environ.items() if k != "KVMTRACE_TRACEFS_TESTS"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(Path(__file__)),
                           "-k", "native_recording or failing_command"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stdout
    assert re.search(r"^3 skipped", proc.stdout, re.M), proc.stdout
    assert proc.stdout.count("set KVMTRACE_TRACEFS_TESTS=1 to run it") == 2  # -rs groups the two parameters


def test_lock_waits_for_another_holder(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A recording started beside (not under) a holder of the lock waits for it."""
    from kvmtrace.record.lock import recording_lock

    lock = tmp_path / "rec.lock"
    holder = subprocess.Popen(["flock", str(lock), "sh", "-c", "echo locked; exec sleep 1"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
    started = time.monotonic()
    with recording_lock(lock):
        waited = time.monotonic() - started
    holder.wait()
    assert waited > 0.3
    assert f"waiting for another recording to finish (lock {lock} held by pid {holder.pid})" in capfd.readouterr().err


def test_lock_held_by_an_ancestor_is_ours(tmp_path: Path) -> None:
    """`flock LOCK kvmtrace record ...` (or a test holding the lock) must not deadlock."""
    lock = tmp_path / "rec.lock"
    child = (
        "import sys; from pathlib import Path; from kvmtrace.record.lock import recording_lock\n"
        f"with recording_lock(Path({str(lock)!r})): print('inside')"
    )
    proc = subprocess.run(["flock", str(lock), sys.executable, "-c", child], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "inside\n" and proc.stderr == ""
