"""Shared test fixtures: where the real recordings live, and the trace-cmd oracle.

Real data first: ``sample_traces/`` (recorded on a KVM host with the lab), the public trace.dat
files and the upstream-kernel recordings in ``shared/testdata`` (a sibling of the repository, as
on every development machine and in CI; ``KVMTRACE_SHARED`` overrides the location).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_traces"
SHARED = Path(os.environ.get("KVMTRACE_SHARED", REPO.parent / "shared"))
PUBLIC = SHARED / "testdata" / "public"
NESTED = SHARED / "testdata" / "nested"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"test data missing: {path} (set KVMTRACE_SHARED to the shared/ folder)")
    return path


@pytest.fixture(scope="session")
def public_dir() -> Path:
    return _require(PUBLIC)


@pytest.fixture(scope="session")
def nested_dir() -> Path:
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
