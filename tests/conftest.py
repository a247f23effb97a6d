"""Shared test fixtures: where the real recordings live, the trace-cmd oracle, and which tests
may write to the machine's tracefs.

Real data first, all of it inside the repository: ``sample_traces/`` (recorded on a KVM host with
the lab) and ``tests/data/`` (see its README): ``public/`` holds trace.dat files written by other
trace-cmd versions and kernels, ``nested/`` the upstream-kernel recordings. The public files are
mostly zero padding and are stored xz-compressed; they are decompressed once per test session into
a temporary folder (while this module is imported, because several test modules build their
parameter lists from ``PUBLIC``/``NESTED`` at collection time, before any fixture could run).
Worker processes the tests start (a batch's process pool, Dask workers) import test modules and so
this one too: they find the session's folder in the environment and use it, and only the session
that made it removes it (a worker unpacking its own copy left 19 MB behind in the temporary folder
per worker).
The nested recordings are trace.dat v7 with zstd sections and gzip text twins, already
compressed, so they are read in place.
"""

from __future__ import annotations

import lzma
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_traces"
DATA = REPO / "tests" / "data"
NESTED = DATA / "nested"

#: Tests that write to the machine's tracefs (they record real traces, flip tracing_on and change
#: the buffers) carry this marker and run only when this variable is 1 (``.ci/run`` sets it):
#: on a developer's KVM host a plain ``pytest`` must not disturb someone else's recording.
TRACEFS_OPT_IN = "KVMTRACE_TRACEFS_TESTS"


def _unpack(src: Path, dest: Path) -> Path:
    """Copy ``src`` to ``dest``, decompressing ``NAME.xz`` to ``NAME``; returns ``dest``."""
    dest.mkdir(parents=True)
    for path in sorted(src.iterdir()):
        if path.suffix == ".xz":
            with lzma.open(path) as packed, open(dest / path.stem, "wb") as out:
                shutil.copyfileobj(packed, out, 1 << 20)
        elif path.is_file():
            shutil.copyfile(path, dest / path.name)
    return dest


_SHARED = "KVMTRACE_TESTDATA_UNPACKED"  # the session's folder, for the processes it starts
_OWNED = not os.path.isdir(os.environ.get(_SHARED, ""))
if _OWNED:
    os.environ[_SHARED] = tempfile.mkdtemp(prefix="kvmtrace-testdata-")
    _unpack(DATA / "public", Path(os.environ[_SHARED]) / "public")
PUBLIC = Path(os.environ[_SHARED]) / "public"


def pytest_unconfigure(config: pytest.Config) -> None:
    if _OWNED:
        shutil.rmtree(os.environ.pop(_SHARED), ignore_errors=True)


def _require(path: Path) -> Path:
    if not any(path.glob("*.dat")):
        pytest.fail(f"test data missing: no trace.dat in {path}")
    return path


@pytest.fixture(scope="session")
def public_dir() -> Path:
    """Public trace.dat files (tests/data/public, decompressed for this session)."""
    return _require(PUBLIC)


@pytest.fixture(scope="session")
def nested_dir() -> Path:
    """Upstream-kernel recordings (tests/data/nested)."""
    return _require(NESTED)


@pytest.fixture(scope="session")
def trace_cmd() -> str:
    """Path of trace-cmd, the oracle. CI installs it; a missing oracle is a failure there."""
    exe = shutil.which("trace-cmd")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("trace-cmd is not installed; .ci/run must install it (apt-get install trace-cmd)")
        pytest.skip("trace-cmd not installed (the oracle comparison runs in CI)")
    return exe


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the ``tracefs`` tests unless asked for, saying how to ask."""
    if os.environ.get(TRACEFS_OPT_IN) == "1":
        return
    # A skipif placed first: pytest evaluates every skipif before any skip, so a plain skip would
    # lose to the test's own "tracefs not mounted" or "needs root", and the reason would not say how to ask.
    why = f"writes to tracefs (records a real trace): set {TRACEFS_OPT_IN}=1 to run it"
    skip = pytest.mark.skipif(True, reason=why)
    for item in items:
        if item.get_closest_marker("tracefs") is not None:
            item.add_marker(skip, append=False)
