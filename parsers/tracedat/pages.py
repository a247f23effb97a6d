"""The ring-buffer page walk: every record header of every page, vectorised over pages.

Records inside one page form a linked chain (each header gives the next record's offset), so
the walk cannot be one numpy expression over records. It is one over *pages*: all pages advance
in lockstep, one record per step, and a step is a handful of numpy operations on the pages still
active. The number of steps is the largest record count of any page (≈ 100-300 for 4 KiB pages),
independent of the trace length, so the Python overhead is constant and the work is columnar.

Record encoding and timestamp rules are libtraceevent's ``kbuffer-parse.c`` (what trace-cmd
report uses): ``ts += delta`` for data *and* padding records, TIME_EXTEND adds
``array[0] << 27 | delta``, TIME_STAMP replaces the timestamp (keeping the TS_MSB bits).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kvmtrace.parsers.tracedat.constants import (
    COMMIT_MISSING_EVENTS,
    COMMIT_MISSING_STORED,
    COMMIT_SIZE_MASK,
    TS_DELTA_MASK,
    TS_MSB,
    TS_SHIFT,
    TYPE_LEN_DATA_MAX,
    TYPE_LEN_MASK,
    TYPE_LEN_PADDING,
    TYPE_LEN_TIME_EXTEND,
    TYPE_LEN_TIME_STAMP,
)
from kvmtrace.parsers.tracedat.formats import PageHeader


@dataclass(frozen=True)
class PageData:
    """All pages of one buffer instance, in one uint8 buffer.

    ``buf`` length is a multiple of 8 with at least 8 spare bytes at the end, so word views can
    read one word past any record without bounds checks. ``starts`` are 8-aligned offsets.
    """

    buf: np.ndarray  # uint8
    starts: np.ndarray  # int64, offset of each page in buf
    cpu: np.ndarray  # int16, CPU of each page
    big_endian: bool
    header: PageHeader
    #: Where each page came from, for error messages: its file offset, or for compressed data its
    #: offset in the CPU's decompressed stream.
    origin: np.ndarray
    #: Per page (bool): events were lost to damage in the file just before or on this page (a chunk
    #: that did not decompress, a corrupt page); set by the loader and the page walk, read by the gaps.
    damaged: np.ndarray
    compressed: bool = False

    def where(self, page: int) -> str:
        """A page's position as a user can look it up (trace-cmd dump, a hex editor)."""
        cpu, at = int(self.cpu[page]), int(self.origin[page])
        if self.compressed:
            return f"CPU {cpu} at offset {at} of its decompressed data"
        return f"CPU {cpu} at offset {at}"


@dataclass(frozen=True)
class Records:
    """Data records in file order (page by page, record by record)."""

    pos: np.ndarray  # int32 (int64 for buffers >= 2 GiB): payload (common_type) offset in PageData.buf
    length: np.ndarray  # int32: payload bytes (rounded up to 4, as stored)
    ts: np.ndarray  # uint64: raw timestamp in trace-clock units
    per_page: np.ndarray  # int64: data records on each page (records of page i follow those of i-1)

    def first_of_page(self) -> np.ndarray:
        """Index of each page's first record (= the next page's, for a page without records)."""
        first = np.zeros(len(self.per_page), np.int64)
        np.cumsum(self.per_page[:-1], out=first[1:])
        return first

    def cpu(self, page_cpu: np.ndarray) -> np.ndarray:
        """The CPU of every record, from the CPU of every page."""
        return np.repeat(page_cpu, self.per_page)


@dataclass(frozen=True)
class PageFlags:
    """Per page: the page timestamp and the kernel's missed-events report."""

    ts: np.ndarray  # uint64
    missed: np.ndarray  # bool: events were dropped before this page
    lost: np.ndarray  # int64: how many (-1: the kernel did not store a count)


def word_view(buf: np.ndarray, big_endian: bool) -> np.ndarray:
    """``buf`` as u32 words in the file's byte order."""
    return buf[: len(buf) & ~3].view(">u4" if big_endian else "<u4")


def read_u64(w32: np.ndarray, byte_pos: np.ndarray, big_endian: bool) -> np.ndarray:
    """u64 values at 4-aligned byte offsets, from two u32 words."""
    i = byte_pos >> 2
    first, second = w32[i].astype(np.uint64), w32[i + 1].astype(np.uint64)
    out: np.ndarray = (first << np.uint64(32)) | second if big_endian else (second << np.uint64(32)) | first
    return out


def _read_long(w32: np.ndarray, byte_pos: np.ndarray, long_size: int, big_endian: bool) -> np.ndarray:
    if long_size == 8:
        return read_u64(w32, byte_pos, big_endian)
    out: np.ndarray = w32[byte_pos >> 2].astype(np.uint64)
    return out


def page_flags(pages: PageData, w32: np.ndarray,
               problems: list[tuple[int, str]]) -> tuple[PageFlags, np.ndarray, np.ndarray]:
    """Page timestamps and missed-events flags, plus each page's data start and end.

    A page whose commit size exceeds its data area is corrupt: it is read as empty, marked
    damaged and described in ``problems`` (how many pages, the first one's description).
    """
    hdr = pages.header
    ts = read_u64(w32, pages.starts, pages.big_endian)
    commit = _read_long(w32, pages.starts + hdr.commit_offset, hdr.commit_size, pages.big_endian)
    size = (commit & np.uint64(COMMIT_SIZE_MASK)).astype(np.int64)
    bad = size > hdr.data_size
    if bad.any():
        p = int(np.flatnonzero(bad)[0])
        problems.append((int(bad.sum()), f"page on {pages.where(p)}: commit size {int(size[p])} exceeds the "
                                         f"page's {hdr.data_size} data bytes"))
        size[bad] = 0
        commit[bad] = 0
        pages.damaged[bad] = True
    start = pages.starts + hdr.data_offset
    end = start + size
    missed = (commit & np.uint64(COMMIT_MISSING_EVENTS)) != 0
    stored = missed & ((commit & np.uint64(COMMIT_MISSING_STORED)) != 0)
    lost = np.where(missed, -1, 0).astype(np.int64)
    if stored.any():
        idx = np.flatnonzero(stored)
        lost[idx] = _read_long(w32, end[idx], hdr.commit_size, pages.big_endian).astype(np.int64)
    return PageFlags(ts=ts, missed=missed, lost=lost), start, end


def _mark_cut(pages: PageData, cut: np.ndarray) -> None:
    """Pages whose walk stopped at a corrupt record lost their later records: the loss sits
    before the CPU's next page (or, on its last page, on the page itself)."""
    nxt = cut + 1
    same_cpu = nxt < len(pages.cpu)
    same_cpu[same_cpu] = pages.cpu[nxt[same_cpu]] == pages.cpu[cut[same_cpu]]
    pages.damaged[np.where(same_cpu, nxt, cut)] = True


def walk(pages: PageData) -> tuple[Records, PageFlags, list[tuple[int, str]]]:
    """Decode every record header of every page; return data records, page flags and the
    corrupt pages found (per kind of damage: how many pages, the first one's description).

    Each page keeps a running timestamp that advances with every record, exactly as kbuffer
    does, so a data record's timestamp is known at the step that reads it. Only data records are
    kept, each with its rank among its page's data records (to restore file order later). A
    record that runs past its page's committed data ends the page's walk: it and what follows
    are dropped, and the page is marked damaged, as a cut-short file keeps its complete pages.
    """
    problems: list[tuple[int, str]] = []
    w32 = word_view(pages.buf, pages.big_endian)
    flags, start, end = page_flags(pages, w32, problems)
    pos = start.copy()
    clock = flags.ts.copy()  # per page: the running timestamp
    taken = np.zeros(len(start), np.int64)  # per page: data records seen so far
    active = np.flatnonzero(pos < end)
    pos_type = np.int32 if len(pages.buf) < 2**31 else np.int64
    steps: list[tuple[np.ndarray, ...]] = []
    while active.size:
        p = pos[active]
        w = w32[p >> 2]
        if pages.big_endian:
            tl, delta = w >> np.uint32(TS_SHIFT), w & np.uint32(TS_DELTA_MASK)
        else:
            tl, delta = w & np.uint32(TYPE_LEN_MASK), w >> np.uint32(5)
        tl = tl.astype(np.int64)
        payload = p + 4
        length = tl * 4
        now = clock[active] + delta
        meta = tl > TYPE_LEN_DATA_MAX
        large = tl == 0
        if large.any() or meta.any():
            a0 = w32[(p >> 2) + 1].astype(np.int64)
            payload = np.where(large, p + 8, payload)
            length = np.where(large, (a0 - 4 + 3) & ~3, np.where(meta, 0, length))
            nxt = np.where(tl == TYPE_LEN_PADDING, p + 4 + a0, np.where(meta, p + 8, payload + length))
            extend = a0.astype(np.uint64) << np.uint64(TS_SHIFT)
            now = np.where(tl == TYPE_LEN_TIME_EXTEND, now + extend, now)
            # Absolute stamp: 59 bits from the record, the top bits from the running clock.
            stamp = tl == TYPE_LEN_TIME_STAMP
            now = np.where(stamp, (extend + delta) | (clock[active] & np.uint64(TS_MSB)), now)
        else:
            nxt = payload + length
        data = ~meta
        bad = data & ((nxt > end[active]) | (length < 0))
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            at = int(p[k] - pages.starts[active[k]])
            problems.append((int(bad.sum()), f"page on {pages.where(int(active[k]))}: record at byte {at} "
                                             f"runs past the page's committed data"))
            _mark_cut(pages, active[bad])
            nxt = np.where(bad, end[active], nxt)
            data &= ~bad
        clock[active] = now
        if not data.all():
            page_d, now, payload, length = active[data], now[data], payload[data], length[data]
        else:
            page_d = active
        # Compact dtypes: these arrays are the reader's largest intermediate (one row per event).
        steps.append((page_d.astype(np.int32), taken[page_d].astype(np.int32), now,
                      payload.astype(pos_type), length.astype(np.int32)))
        taken[page_d] += 1
        pos[active] = nxt
        active = active[nxt < end[active]]
    return _file_order(steps, taken), flags, problems


def _file_order(steps: list[tuple[np.ndarray, ...]], per_page: np.ndarray) -> Records:
    """Scatter the per-step arrays into file order (page by page, record by record).

    Step ``k`` holds the next data record of every page still active; a record's place is its
    page's first slot plus its rank in the page: a scatter, no sort. Steps are consumed (and
    freed) one by one so the peak holds the records only about twice.
    """
    n = int(per_page.sum())
    pos_type = steps[0][3].dtype if steps else np.int64
    out = Records(pos=np.empty(n, pos_type), length=np.empty(n, np.int32), ts=np.empty(n, np.uint64),
                  per_page=per_page)
    first_slot = out.first_of_page()
    steps.reverse()
    while steps:
        page, rank, ts, payload, length = steps.pop()
        where = first_slot[page] + rank
        out.ts[where] = ts
        out.pos[where] = payload
        out.length[where] = length
    return out
