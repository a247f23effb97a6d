"""The previous and next row of the same key, a block at a time, against a loop over the rows;
and the carry between blocks against a dict."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmtrace.replays import neighbours as neighbours_module
from kvmtrace.replays.neighbours import KeyCarry, neighbours


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
@given(st.integers(0, 80), st.integers(1, 10), st.integers(1, 12), st.booleans(), st.integers(0, 2**32 - 1),
       st.sampled_from([1, 2, 3, neighbours_module.SEGMENT]))
def test_neighbours_are_the_loop(n: int, distinct: int, block: int, shuffled: bool, seed: int, segment: int) -> None:
    """Any block size (so a key's rows fall in several blocks, and new keys arrive in later
    blocks between carried ones), rows in their order or in a given one, uint64 keys near 2**64,
    carried in segments of any size."""
    rng = np.random.default_rng(seed)
    keys = np.uint64(2**64 - 64) + rng.integers(0, distinct, n).astype(np.uint64) * np.uint64(8)
    order = rng.permutation(n) if shuffled else None
    whole = neighbours_module.SEGMENT
    try:
        neighbours_module.SEGMENT = segment
        got = neighbours(n, lambda rows: keys[rows], order, block)
    finally:
        neighbours_module.SEGMENT = whole
    prev, nxt = _by_loop(keys, np.arange(n) if order is None else order)
    assert np.array_equal(got.prev, prev) and np.array_equal(got.next, nxt)
    assert got.prev.dtype == np.int32


def test_no_rows() -> None:
    got = neighbours(0, lambda rows: np.empty(0, np.uint64), None, 4)
    assert len(got.prev) == 0 and len(got.next) == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 300), max_size=40), max_size=12), st.sampled_from([1, 2, 5, 1 << 16]),
       st.integers(0, 2**32 - 1))
def test_key_carry_is_a_dict(blocks: list[list[int]], segment: int, seed: int) -> None:
    """Blocks of distinct ascending keys, each found and then put with new values: what is found
    carried, and its values (two columns of two dtypes), are a dict's; keys below, between and
    above the carried ones, segments cut as they fill (a cut segment is its own copy)."""
    rng = np.random.default_rng(seed)
    whole = neighbours_module.SEGMENT
    try:
        neighbours_module.SEGMENT = segment
        carry = KeyCarry(row=np.int32, level=np.int8)
        want: dict[int, tuple[int, int]] = {}
        for block in blocks:
            keys = np.unique(np.asarray(block, np.uint64) * np.uint64(2**54))  # spread up to 2**63 and beyond
            found = carry.find(keys)
            assert found.seen.tolist() == [int(k) in want for k in keys.tolist()]
            assert carry.get(found, "row").tolist() == [want[int(k)][0] for k in keys[found.seen].tolist()]
            assert carry.get(found, "level").tolist() == [want[int(k)][1] for k in keys[found.seen].tolist()]
            row = rng.integers(-5, 2**31 - 1, len(keys)).astype(np.int32)
            level = rng.integers(-128, 128, len(keys)).astype(np.int8)
            carry.put(keys, found, row=row, level=level)
            want.update(zip(keys.tolist(), zip(row.tolist(), level.tolist())))
            assert len(carry) == len(want)
            assert all(len(k) <= 2 * segment for k in carry._keys)
            assert carry.get(carry.find(keys), "level").dtype == np.int8
    finally:
        neighbours_module.SEGMENT = whole
