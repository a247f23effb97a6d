"""numpy → Arrow without a detour: zero-copy wrappers over numpy buffers.

``pa.array(ndarray)`` checks whether its argument is a pandas object and so imports pandas on
first use (0.3-0.8 s here, more than decoding a million events). These builders wrap the numpy
buffers directly (``from_buffers``), which also guarantees no copy.
"""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa


def _validity(mask: np.ndarray | None) -> pa.Buffer | None:
    """Arrow validity bitmap from a numpy "is null" mask (None: no nulls)."""
    if mask is None or not mask.any():
        return None
    return pa.py_buffer(np.packbits(~mask, bitorder="little"))


def numeric(values: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    """A numeric (or bool) Arrow array over ``values``; ``mask`` marks nulls."""
    values = np.ascontiguousarray(values)
    n = len(values)
    if values.dtype == np.bool_:
        data = pa.py_buffer(np.packbits(values, bitorder="little"))
        return pa.Array.from_buffers(pa.bool_(), n, [_validity(mask), data])
    nulls = int(mask.sum()) if mask is not None else 0
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), n, [_validity(mask), pa.py_buffer(values)],
                                 null_count=nulls)


def strings_from_buffers(data: np.ndarray, offsets: np.ndarray) -> pa.Array:
    """A string array from concatenated UTF-8 bytes; invalid bytes are replaced (U+FFFD)."""
    arr = pa.LargeStringArray.from_buffers(
        len(offsets) - 1, pa.py_buffer(np.ascontiguousarray(offsets, np.int64)), pa.py_buffer(data)
    )
    try:
        arr.validate(full=True)
    except pa.ArrowInvalid:
        raw = data.tobytes()
        return strings([raw[a:b].decode("utf-8", "replace") for a, b in itertools.pairwise(offsets)])
    return arr.cast(pa.string())


def strings(items: list[str]) -> pa.Array:
    """A string array from Python strings."""
    encoded = [s.encode("utf-8") for s in items]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return strings_from_buffers(np.frombuffer(b"".join(encoded), np.uint8), offsets)


def empty_table(schema: pa.Schema) -> pa.Table:
    """An empty table of ``schema`` (``Schema.empty_table`` goes through pandas-aware code)."""
    return pa.Table.from_batches([], schema=schema)
