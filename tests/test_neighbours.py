"""The previous and next row of the same key, a block at a time, against a loop over the rows."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmtrace.replays.neighbours import neighbours


def _by_loop(keys: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    prev, nxt = np.full(len(keys), -1), np.full(len(keys), -1)
    last: dict[int, int] = {}
    for row in order.tolist():
        key = int(keys[row])
        if key in last:
            prev[row], nxt[last[key]] = last[key], row
        last[key] = row
    return prev, nxt


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 80), st.integers(1, 10), st.integers(1, 12), st.booleans(), st.integers(0, 2**32 - 1))
def test_neighbours_are_the_loop(n: int, distinct: int, block: int, shuffled: bool, seed: int) -> None:
    """Any block size (so a key's rows fall in several blocks, and new keys arrive in later
    blocks between carried ones), rows in their order or in a given one, uint64 keys near 2**64."""
    rng = np.random.default_rng(seed)
    keys = np.uint64(2**64 - 64) + rng.integers(0, distinct, n).astype(np.uint64) * np.uint64(8)
    order = rng.permutation(n) if shuffled else None
    got = neighbours(n, lambda rows: keys[rows], order, block)
    prev, nxt = _by_loop(keys, np.arange(n) if order is None else order)
    assert np.array_equal(got.prev, prev) and np.array_equal(got.next, nxt)
    assert got.prev.dtype == np.int32


def test_no_rows() -> None:
    got = neighbours(0, lambda rows: np.empty(0, np.uint64), None, 4)
    assert len(got.prev) == 0 and len(got.next) == 0
