"""Read a text trace (plain, gzip, xz, zstd) in chunks of whole lines.

Why chunks: a tracefs dump can be several GB; holding it whole would cost several times its
size in memory. Each chunk is split into lines and handed on with the number of its first line, so skipped lines can be reported by line number.
"""

from __future__ import annotations

import gzip
import io
import lzma
import os
from dataclasses import dataclass
from typing import BinaryIO, Iterator

import polars as pl
import zstandard

from parsers.errors import TraceError

CHUNK_BYTES = 32 << 20


@dataclass(frozen=True)
class Chunk:
    first_line: int  # 1-based number of the chunk's first line
    lines: pl.Series  # one string per line, line endings removed


def _open(path: str | os.PathLike[str], compression: str) -> BinaryIO:
    raw = open(path, "rb")
    if compression == "none":
        return raw
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw)
    if compression == "xz":
        return lzma.LZMAFile(raw)
    if compression == "zstd":
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
    raw.close()
    raise TraceError(f"{os.fspath(path)}: unknown text compression {compression!r}; use none, gzip, xz or zstd")


def _split(data: bytes) -> pl.Series:
    # Measured: str.split + pl.Series is ~10x faster than Arrow's split_pattern kernel or
    # pa.array over the same list.
    text = data.decode("utf-8", errors="replace")
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    return pl.Series("line", text.split("\n"), dtype=pl.String)


def read_chunks(path: str | os.PathLike[str], compression: str = "none", chunk_bytes: int = CHUNK_BYTES) -> Iterator[Chunk]:
    """Yield the file's lines chunk by chunk; a chunk never splits a line."""
    line_no = 1
    rest = b""
    try:
        with _open(path, compression) as f:
            while True:
                block = f.read(chunk_bytes)
                if not block:
                    break
                data = rest + block
                cut = data.rfind(b"\n")
                if cut < 0:
                    rest = data
                    continue
                rest = data[cut + 1 :]
                lines = _split(data[:cut])
                yield Chunk(line_no, lines)
                line_no += len(lines)
    except (OSError, EOFError, lzma.LZMAError, zstandard.ZstdError) as err:
        raise TraceError(f"{os.fspath(path)}: cannot read {compression} text ({err}); is the file complete?") from None
    if rest:
        yield Chunk(line_no, _split(rest))
