"""One recording per machine: an exclusive ``flock`` on :data:`LOCK_PATH`.

tracefs has one top-level buffer; two recordings at once would clear, resize and read each
other's data. Everyone who records on a host takes the same lock, whether through
``kvmtrace record`` or by wrapping a manual session in ``flock /run/kvmtrace-rec.lock CMD``.

A recording started *under* such a wrapper (``flock /run/kvmtrace-rec.lock kvmtrace record
...``, or a test that holds the lock and runs ``kvmtrace record`` as a child) must not wait for
its own ancestor: when the lock is busy and ``/proc/locks`` says an ancestor process holds it,
the lock is taken as already ours.
"""

from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_PATH = Path("/run/kvmtrace-rec.lock")


def _ancestors() -> set[int]:
    pids, pid = set(), os.getppid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        # Field 4 is the parent pid; field 2 (comm) may contain spaces, so split after ')'.
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return pids


def _holders(path: Path) -> set[int]:
    """Pids holding a flock on ``path`` (from /proc/locks: pid, then major:minor:inode)."""
    st = os.stat(path)
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    out = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        major, minor, inode = fields[5].split(":")
        if (int(major, 16), int(minor, 16), int(inode)) == want:
            out.add(int(fields[4]))
    return out


@contextmanager
def recording_lock(path: Path = LOCK_PATH) -> Iterator[None]:
    """Hold the machine-wide recording lock for the ``with`` block (waits for other holders)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holders = _holders(path)
            if not holders & _ancestors():
                print(
                    f"kvmtrace: waiting for another recording to finish (lock {path} held by pid "
                    f"{', '.join(map(str, sorted(holders))) or '?'})",
                    file=sys.stderr,
                )
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
