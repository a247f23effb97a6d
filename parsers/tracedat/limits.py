"""How much a trace.dat may make the reader allocate, and which sizes it believes.

A trace.dat states its own sizes (page size, CPU count, section and chunk sizes, offsets), and
the reader allocates from them before it has seen the data. A damaged or hostile file must not
turn a few kilobytes into gigabytes (a zstd frame of zeros expands 30,000-fold), so every size is
checked against what the file itself can hold and against a cap far above any real recording:

- metadata sections (format files, kallsyms, cmdlines, ...): at most :data:`MAX_SECTION` each and
  :data:`MAX_METADATA` in all (a distribution kernel's kallsyms is ~10 MB, its formats ~3 MB);
- compressed CPU data: at most :data:`MAX_CHUNK` per chunk (trace-cmd writes 10 pages) and, in
  all, the larger of :data:`PAGE_DATA_FLOOR` and :data:`PAGE_DATA_RATIO` times the file size
  (real ring-buffer pages compress 5-10 fold);
- uncompressed CPU data: what the file holds; CPU streams may not overlap;
- page size: a power of two between :data:`MIN_PAGE_SIZE` and :data:`MAX_PAGE_SIZE`, equal to the
  sub-buffer size that ``header_page`` describes;
- CPUs: at most :data:`MAX_CPUS` (the ``cpu`` column is int16; Linux's NR_CPUS tops out at 8192).

A refusal is a one-line :class:`TraceError` that names the size and the cap.
"""

from __future__ import annotations

MAX_SECTION = 128 << 20
MAX_METADATA = 256 << 20
MAX_CHUNK = 16 << 20
PAGE_DATA_FLOOR = 1 << 30
PAGE_DATA_RATIO = 64
MIN_PAGE_SIZE = 4096
#: The commit word's size field has 27 bits, so no sub-buffer can be larger.
MAX_PAGE_SIZE = 1 << 27
MAX_CPUS = 32768


def mib(n: int) -> str:
    """A byte count for a message: ``4096 MiB``."""
    return f"{n / (1 << 20):.0f} MiB" if n >= 1 << 20 else f"{n} bytes"


def page_data_cap(file_size: int) -> int:
    """The most uncompressed CPU data a file of ``file_size`` bytes may declare."""
    return max(PAGE_DATA_FLOOR, PAGE_DATA_RATIO * file_size)


def page_size_problem(size: int) -> str | None:
    """Why ``size`` cannot be a ring-buffer page size (None if it can)."""
    if size & (size - 1) or not MIN_PAGE_SIZE <= size <= MAX_PAGE_SIZE:
        return (f"page size {size} is not a power of two between {MIN_PAGE_SIZE} and {MAX_PAGE_SIZE}")
    return None
