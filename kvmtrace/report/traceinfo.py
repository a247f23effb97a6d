"""The facts of a recording (:class:`kvmtrace.parsers.schema.TraceInfo`) as JSON and as text.

Shared by ``kvmtrace info`` and the reports (the ``trace`` object of ``analyze --format json`` is
the same dictionary ``info --json`` prints), so the two can never disagree.
"""

from __future__ import annotations

from dataclasses import asdict

from kvmtrace.parsers.schema import CpuStats, TraceInfo
from kvmtrace.report.safe import printable


def info_dict(info: TraceInfo) -> dict:
    """The JSON form of :class:`TraceInfo` (also the ``trace`` object of ``analyze --format json``)."""
    d = asdict(info)
    d["total_events"] = info.total_events
    d["events"] = dict(sorted(d.pop("event_counts").items(), key=lambda kv: (-kv[1], kv[0])))
    d["lost_events"] = {str(k): v for k, v in info.lost_events.items()}
    d["lost_unknown"] = {str(k): v for k, v in info.lost_unknown.items()}
    d["instances"] = list(info.instances)
    d["cpu_stats"] = [asdict(s) | {"lost": s.lost} for s in info.cpu_stats]
    d["warnings"] = list(info.warnings)
    return d


def render_info(info: TraceInfo) -> str:
    lines = [
        f"file:         {info.path}",
        f"format:       {info.source}" + (f" v{info.version}" if info.version else "")
        + (f", {info.compression}" if info.compression != "none" else ""),
        f"kernel:       {info.kernel or 'unknown'}" + (f"  ({info.uname})" if info.uname else ""),
        f"cpus:         {info.cpus}",
        f"clock:        {info.clock or 'unknown'}",
    ]
    if info.first_ts is not None and info.last_ts is not None:
        span = (info.last_ts - info.first_ts) / 1e9
        lines.append(f"span:         {info.first_ts / 1e9:.6f} .. {info.last_ts / 1e9:.6f}  ({span:.6f} s)")
    lost = sum(info.lost_events.values())
    unknown = sum(info.lost_unknown.values())
    lost_txt = f"{lost}" + (f" (+{unknown} gaps of unknown size)" if unknown else "")
    if lost or unknown:
        per_cpu = ", ".join(f"cpu{c}: {n}" for c, n in sorted(info.lost_events.items()) if n)
        lost_txt += f"  [{per_cpu}]" if per_cpu else ""
    lines.append(f"lost events:  {lost_txt}")
    lines += _cpu_stats_lines(info.cpu_stats)
    if info.source == "text":
        lines.append(f"skipped lines: {info.skipped_lines}")
    if info.instances:
        lines.append(f"instances:    {', '.join(info.instances)}")
    lines.append(f"events:       {info.total_events}")
    counts = sorted(info.event_counts.items(), key=lambda kv: (-kv[1], kv[0]))
    width = max((len(name) for name, _ in counts), default=0)
    lines += [f"  {name:<{width}}  {n:>10}" for name, n in counts]
    # paths, uname and instance names come from the file: no escape sequence reaches the terminal
    return "\n".join(printable(ln) for ln in lines)



#: CPUSTAT columns shown by ``kvmtrace info``: (header, CpuStats attribute).
_STAT_COLUMNS = (("read events", "read_events"), ("entries", "entries"), ("overrun", "overrun"),
                 ("commit overrun", "commit_overrun"), ("dropped", "dropped_events"))


def _cpu_stats_lines(stats: tuple[CpuStats, ...]) -> list[str]:
    """The kernel's per-CPU buffer statistics as a small table (``-``: not printed by the kernel)."""
    if not stats:
        return []
    lines = ["cpu stats:    (the kernel's ring-buffer counters at the end of the recording)",
             "  cpu  " + "  ".join(f"{h:>14}" for h, _ in _STAT_COLUMNS)]
    for s in stats:
        cells = ["-" if getattr(s, a) is None else str(getattr(s, a)) for _, a in _STAT_COLUMNS]
        lines.append(f"  {s.cpu:>3}  " + "  ".join(f"{c:>14}" for c in cells))
    return lines
