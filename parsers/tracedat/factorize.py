"""Distinct values and per-row codes of an integer column, by hashing (no sort).

Used to look up per-pid comms, per-id event names and per-address printk formats once per
distinct value: a trace has millions of rows but only a handful of pids and event ids, and
``np.unique`` would sort all the rows to find them.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def factorize(values: np.ndarray) -> tuple[list[int], pa.Array]:
    """Return (distinct values in first-seen order, int32 codes of each row into them)."""
    encoded = pa.array(values).dictionary_encode()
    return encoded.dictionary.to_pylist(), encoded.indices


def lookup(values: np.ndarray, name_of) -> pa.Array:  # type: ignore[no-untyped-def]
    """``name_of(v)`` for every row, computed once per distinct value, as a string array."""
    uniques, codes = factorize(values)
    return pa.array([name_of(v) for v in uniques], pa.string()).take(codes)
