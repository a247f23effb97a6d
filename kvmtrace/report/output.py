"""Writing a report file so that a failure never leaves half a report behind.

CI jobs upload whatever ``-o`` names; a truncated HTML file that opens fine but lacks the
findings is worse than no file. We write a temporary file in the target's folder and rename it
into place only once the whole text is on disk.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from kvmtrace.parsers.errors import TraceError


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    target = Path(path)
    if target.exists() and not target.is_file():
        # /dev/null, a FIFO, /dev/stdout: renaming over them would replace the device node.
        # There is nothing to leave half-written in a stream, so write straight through.
        with open(target, "w", encoding="utf-8") as f:
            f.write(text)
        return
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise TraceError(f"{target}: folder {folder} does not exist; create it or choose another -o path")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would surprise whoever shares the report
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
