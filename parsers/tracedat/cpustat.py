"""CPUSTAT options: the kernel's per-CPU ring-buffer statistics, as ``trace-cmd record`` saved them.

Each option is the text of ``per_cpu/cpuN/stats`` after a ``CPU: N`` line. trace-cmd writes the
top buffer's CPUs first, then for every other instance a ``\\nBuffer: NAME\\n\\n`` option followed
by that instance's CPUs (``trace-record.c`` ``add_buffer_stat``). Keys missing on older kernels
(``dropped events``, ``read events``, the timestamps) stay ``None``.

Why they matter: the page headers only report losses that the kernel noticed when it handed a
page to the reader, and often without a count. The stats count every event the buffer dropped:
``overrun`` (overwritten in overwrite mode), ``commit overrun`` (a nested writer wrapped the
buffer) and ``dropped events`` (buffer full in non-overwrite mode); ``kernel/trace/ring_buffer.c``
``rb_move_tail`` discards the event in each case, and trace-cmd reports the first two as
"events lost".
"""

from __future__ import annotations

from kvmtrace.parsers.schema import CpuStats

#: Text key → CpuStats field, for the integer keys.
_INT_KEYS = {
    "entries": "entries", "overrun": "overrun", "commit overrun": "commit_overrun", "bytes": "bytes",
    "dropped events": "dropped_events", "read events": "read_events",
}
_TEXT_KEYS = {"oldest event ts": "oldest_event_ts", "now ts": "now_ts"}


def _int(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() else None


def parse_cpustat(text: str) -> CpuStats | None:
    """One CPU's stats; None without a readable ``CPU:`` line."""
    values: dict[str, object] = {}
    cpu = None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip()
        if not sep:
            continue
        if key == "CPU":
            cpu = _int(value)
        elif key in _INT_KEYS:
            values[_INT_KEYS[key]] = _int(value)
        elif key in _TEXT_KEYS:
            values[_TEXT_KEYS[key]] = value.strip() or None
    return None if cpu is None else CpuStats(cpu=cpu, **values)  # type: ignore[arg-type]


def cpu_stats_by_buffer(payloads: list[bytes]) -> dict[str, tuple[CpuStats, ...]]:
    """Every CPUSTAT option, grouped by buffer instance (``""``: the top buffer)."""
    out: dict[str, list[CpuStats]] = {}
    name = ""
    for payload in payloads:
        text = payload.split(b"\0", 1)[0].decode("utf-8", "replace")
        head = text.strip()
        if head.startswith("Buffer:"):
            name = head[len("Buffer:"):].strip()
            continue
        stats = parse_cpustat(text)
        if stats is not None:
            out.setdefault(name, []).append(stats)
    return {k: tuple(sorted(v, key=lambda s: s.cpu)) for k, v in out.items()}


def merge_lost(known: dict[int, int], unknown: dict[int, int], stats: tuple[CpuStats, ...]
               ) -> tuple[dict[int, int], dict[int, int]]:
    """Lost events per CPU from the pages (``known`` counts, ``unknown``-size gaps) and the stats.

    The stats count every event the CPU's buffer discarded during the recording, so where they
    count more than the pages said, their count is the CPU's loss and it covers the gaps whose
    size the pages did not store.
    """
    known, unknown = dict(known), dict(unknown)
    for s in stats:
        if s.lost and s.lost >= known.get(s.cpu, 0):
            known[s.cpu] = s.lost
            unknown.pop(s.cpu, None)
    return known, unknown
