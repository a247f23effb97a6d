"""Run the traced command so that Ctrl-C stops *it*, not the recorder.

The recorder must outlive its command: after the command ends it still has to stop tracing,
save the buffer and restore tracefs. So while the command runs, the recorder blocks the
terminating signals and takes them synchronously with ``sigtimedwait``:

* a signal the terminal sent (Ctrl-C: ``si_code`` is not a user code) reached the command's
  process group — the command — already; the recorder only notes it;
* a signal sent to the recorder alone (``kill -INT <pid>``) is forwarded to the command.

Either way the recorder waits for the command to exit and then carries on with cleanup.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from kvmtrace.parsers.errors import TraceError

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


@dataclass(frozen=True)
class CommandResult:
    """Exit status in shell convention (128 + N when killed by signal N) and whether a
    terminating signal arrived while the command ran."""

    status: int
    interrupted: bool


def run_command(argv: list[str], on_tick: Callable[[], None] | None = None, tick: float = 0.05) -> CommandResult:
    """Run ``argv`` with inherited stdio; return its exit status once it has exited.

    ``on_tick`` is called about every ``tick`` seconds while the command runs, on this thread
    (signals stay blocked here, so no handler can interrupt it halfway).
    """
    waited = (*FORWARDED, signal.SIGCHLD)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    try:
        try:
            child = subprocess.Popen(argv, preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_SETMASK, old_mask))
        except FileNotFoundError:
            raise TraceError(f"command not found: {argv[0]}") from None
        except PermissionError:
            raise TraceError(f"command not executable: {argv[0]}") from None
        interrupted = False
        while child.poll() is None:
            info = signal.sigtimedwait(waited, tick)
            if on_tick is not None:
                on_tick()
            if info is None or info.si_signo == signal.SIGCHLD:
                continue
            interrupted = True
            # si_code <= 0 (SI_USER, SI_QUEUE, SI_TKILL): sent by a process to us alone.
            if info.si_code <= 0 and info.si_pid != child.pid:
                child.send_signal(info.si_signo)
        code = child.returncode
        return CommandResult(128 - code if code < 0 else code, interrupted)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
