"""Every file and folder kvmtrace writes goes through here: whole or not at all, never over an input.

CI jobs upload whatever ``-o`` names; a truncated HTML file that opens fine but lacks the
findings is worse than no file, and a Parquet folder holding half of one trace and half of
another is worse still. So each output is built under a temporary name in the target's own
folder (same file system, so the final rename is atomic) and renamed into place only once it
is complete; on any error the temporary is removed and the target is as it was.

Outputs are checked against the command's inputs first: a report written over the trace it
came from (same path, a hard link, a symlink to it) destroys the one thing that cannot be
recreated.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from kvmtrace.parsers.errors import TraceError

PathLike = str | os.PathLike[str]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _folder_of(target: Path, param: str) -> Path:
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise TraceError(f"{target}: folder {folder} does not exist", hint=f"create it or choose another {{{param}}}")
    return folder


def refuse_inputs(output: PathLike, inputs: Iterable[PathLike], *, param: str = "output") -> None:
    """Raise if writing ``output`` would destroy one of ``inputs``; ``param`` is the caller's
    name for ``output``, for the hint.

    That is: ``output`` is an input (same path, a hard link or a symlink to it), or is a folder
    that holds an input (``convert --force`` replaces the whole folder).
    """
    out = Path(output)
    for given in inputs:
        src = Path(given)
        if not src.exists():
            continue
        if out.exists() and os.path.samefile(out, src):
            raise TraceError(f"{out} is the input {src}: refusing to write over it", hint=f"choose another {{{param}}}")
        if out.is_dir() and src.resolve().is_relative_to(out.resolve()):
            raise TraceError(f"{out} holds the input {src}: refusing to write into it",
                             hint=f"choose another {{{param}}}")


@contextlib.contextmanager
def atomic_path(target: PathLike, *, param: str = "output") -> Iterator[Path]:
    """A temporary path beside ``target`` to write (by any means: a library, a child process);
    renamed to ``target`` when the block ends without an error, removed otherwise.

    An existing target that is not a regular file (``/dev/null``, a FIFO, a terminal) is yielded
    as it is: renaming over it would replace the device node, and a stream has nothing to leave
    half-written.
    """
    dest = Path(target)
    if dest.exists() and not dest.is_file():
        yield dest
        return
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=_folder_of(dest, param))
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would surprise whoever shares the file
        yield tmp
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_file(target: PathLike, mode: str = "wb", *, param: str = "output") -> Iterator[IO[Any]]:
    """An open file that becomes ``target`` when the block ends without an error."""
    with atomic_path(target, param=param) as tmp, open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
        yield f


def write_atomic(target: PathLike, text: str, *, param: str = "output") -> None:
    """Write ``text`` (UTF-8) to ``target``, whole or not at all."""
    with atomic_file(target, "w", param=param) as f:
        f.write(text)


def _is_dataset(folder: Path) -> bool:
    """Parquet files, and hive partition folders (``key=value``) of Parquet files."""
    return all((p.is_file() and p.suffix == ".parquet") or (p.is_dir() and "=" in p.name and _is_dataset(p))
               for p in folder.iterdir())


@contextlib.contextmanager
def atomic_dir(target: PathLike, *, force: bool = False, param: str = "outdir") -> Iterator[Path]:
    """A temporary folder beside ``target`` to fill; it becomes ``target`` when the block ends
    without an error, and is removed otherwise.

    A ``target`` that exists and is not empty is refused unless ``force``; ``force`` replaces
    the whole folder (never merges into it), and only a folder of Parquet files — a dataset —
    so that a mistyped path cannot wipe a folder of other files.
    """
    dest = Path(target)
    if dest.exists() and not dest.is_dir():
        raise TraceError(f"{dest} exists and is not a folder", hint=f"choose a new or empty folder as {{{param}}}")
    if dest.is_dir() and any(dest.iterdir()):
        if not force:
            raise TraceError(f"{dest} is not empty: its files would mix with this trace's",
                             hint=f"choose a new or empty {{{param}}}, or pass {{force}} to replace the dataset in it")
        if not _is_dataset(dest):
            raise TraceError(f"{dest} holds files that are not Parquet: refusing to replace it",
                             hint=f"choose a new or empty folder as {{{param}}}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=_folder_of(dest, param)))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        _swap_in(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(new: Path, dest: Path) -> None:
    """Rename ``new`` to ``dest``. An empty ``dest`` is replaced by the rename itself; a full one
    is first renamed aside (so the old dataset is whole until the new one is in place) and then
    removed."""
    if not dest.is_dir() or not any(dest.iterdir()):
        os.replace(new, dest)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
    os.replace(dest, old / dest.name)
    try:
        os.replace(new, dest)
    except BaseException:
        os.replace(old / dest.name, dest)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
