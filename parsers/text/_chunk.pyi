"""Type stub of the compiled passes over a chunk of text (``_chunk.c``)."""

import numpy as np
from numpy.typing import NDArray

def bounds(data: bytes) -> bytearray: ...
def quoted_printable(data: bytes, ends: NDArray[np.int64]) -> bool: ...
def split_prefix(
    data: bytes, starts: NDArray[np.int64], ends: NDArray[np.int64], check_ascii: bool,
    index: NDArray[np.int64], pid: NDArray[np.int32], cpu: NDArray[np.int16], ts: NDArray[np.int64],
    preempt: NDArray[np.uint8], preempt_ok: NDArray[np.bool_],
    comm: NDArray[np.uint32], event: NDArray[np.uint32], args: NDArray[np.uint32],
) -> int: ...
def match_form(
    program: bytes, offsets: NDArray[np.int64], data: object, hit: NDArray[np.uint8],  # data: any buffer
    values: NDArray[np.int64], valid: NDArray[np.uint8],
) -> int: ...
