"""Split the common prefix of ftrace text lines (task, pid, CPU, flags, timestamp, event).

One regex, run by polars over a whole chunk, covers every producer seen in the wild:

* tracefs ``trace`` / ``trace_pipe``: ``comm-pid [cpu] flags ts: event: args`` with a 4- or
  5-character flags column (irq-info on) or none, optionally a ``(tgid)`` column;
* ``trace-cmd report``: no flags (3.x), event names padded with spaces, optional
  ``(+delta)`` after the timestamp (``--ts-diff``), or latency flags glued to the CPU (``-l``).

Task names may contain spaces, slashes, hyphens and digits (``CPU 0/KVM-995362``,
``tdxvm-13694-13714``): the pid is the last ``-digits`` before the CPU column. A quoted mail
line (``> ...``) is not a task name; the repair pass removes the quoting first.

``common_flags`` is never rebuilt: the irq/resched letters are a lossy rendering whose bit
values changed across kernels.

Header lines (``# ...``, ``cpus=N``, ``CPU N is empty``) are recognised and lost-event lines
(tracefs ``CPU:N [LOST n EVENTS]``, trace-cmd ``CPU:N [n EVENTS DROPPED]``) become gaps.
"""

from __future__ import annotations

import polars as pl

PREFIX = (
    r"^\s*(?P<comm>[^\s>|].*?)-(?P<pid>\d+)\s+(?:\(\s*(?:\d+|-+)\)\s+)?"
    r"(?:\[(?P<cpu>\d+)\](?:\s+(?P<flags>[^\s\[\]]{4,5}))?|(?P<lcpu>\d+)(?P<lflags>[^\s\d][^\s]{3,4}))"
    r"\s+(?P<ts>\d+(?:\.\d+)?):\s+(?:\(\+\d+\)\s+)?(?P<event>\w+):\s*(?P<args>.*)$"
)
GAP = r"^\s*CPU:\s*(?P<gcpu>\d+)\s+\[(?:LOST (?P<lost1>\d+) EVENTS|(?P<lost2>\d+)? ?EVENTS DROPPED)\]\s*$"
HEADER = r"^\s*(?:#|cpus=\d+\s*$|version = \d+\s*$|CPU \d+ is empty\s*$|$)"

#: The latency layout prints the task name as ``%8.8s``: a name that fills it may be cut short.
LATENCY_COMM = 8

#: tracefs shows the ``print`` event (trace_marker) under its caller's name.
PRINT_CALLERS = ("tracing_mark_write",)


def split(lines: pl.DataFrame) -> pl.DataFrame:
    """Add the prefix columns to a frame with ``line_no`` and ``line``; ``kind`` says what each line is.

    ``kind`` is ``event``, ``gap``, ``header`` or ``bad``. Event rows get ``comm``, ``pid``,
    ``cpu``, ``ts`` (ns; integer timestamps of counter clocks are kept as they are), ``event``
    and ``args``; gap rows get ``cpu`` and ``lost`` (null when the count was not printed).
    """
    line = pl.col("line")
    parts = line.str.extract_groups(PREFIX)
    gap = line.str.extract_groups(GAP)
    df = lines.with_columns(p=parts, g=gap).unnest("p").unnest("g")
    ts = pl.col("ts")
    sec = ts.str.extract(r"^(\d+)").str.to_integer(strict=False)
    frac = ts.str.extract(r"\.(\d+)$")
    frac_ns = frac.str.slice(0, 9).str.pad_end(9, "0").str.to_integer(strict=False)
    ts_ns = pl.when(frac.is_null()).then(sec).otherwise(sec * 1_000_000_000 + frac_ns)
    is_event = pl.col("event").is_not_null()
    is_gap = pl.col("gcpu").is_not_null()
    kind = (
        pl.when(is_event).then(pl.lit("event"))
        .when(is_gap).then(pl.lit("gap"))
        .when(line.str.contains(HEADER)).then(pl.lit("header"))
        .otherwise(pl.lit("bad"))
    )
    event = pl.col("event")
    is_print = event.is_in(PRINT_CALLERS)
    return df.select(
        "line_no",
        "line",
        kind.alias("kind"),
        pl.when(pl.col("lcpu").is_not_null() & (pl.col("comm").str.strip_chars().str.len_chars() >= LATENCY_COMM))
        .then(None)
        .otherwise(pl.col("comm").str.strip_chars())
        .alias("comm"),
        pl.col("pid").str.to_integer(strict=False).cast(pl.Int32),
        pl.coalesce("cpu", "lcpu", "gcpu").str.to_integer(strict=False).cast(pl.Int16).alias("cpu"),
        ts_ns.alias("ts"),
        pl.when(is_print).then(pl.lit("print")).otherwise(event).alias("event"),
        pl.when(is_print).then(pl.concat_str(event, pl.lit(": "), pl.col("args"))).otherwise(pl.col("args")).alias("args"),
        pl.coalesce("lost1", "lost2").str.to_integer(strict=False).alias("lost"),
        preempt_count(pl.coalesce("flags", "lflags")).alias("common_preempt_count"),
    )


def preempt_count(flags: pl.Expr) -> pl.Expr:
    """``common_preempt_count`` from the flags column, where it is printed exactly.

    The 4th flags character is the preempt depth (``pc & 0xf`` in hex, ``.`` for 0) and, in the
    5-character layout (5.13+), the 5th is the migrate-disable depth (``pc >> 4``). Without a
    flags column (``trace-cmd report`` 3.x) the value is unknown: null.
    """
    def digit(i: int) -> pl.Expr:
        return flags.str.slice(i, 1).replace(".", "0").str.to_integer(base=16, strict=False)

    five = flags.str.len_chars() == 5
    value = pl.when(five).then(digit(3) + digit(4) * 16).otherwise(digit(3))
    return value.cast(pl.UInt8, strict=False)


def header_cpus(headers: pl.Series) -> int | None:
    """The CPU count a header states (tracefs ``#P:N``, trace-cmd ``cpus=N``), if any."""
    found = headers.str.extract(r"(?:#P:|^cpus=)(\d+)").drop_nulls()
    return int(found[0]) if len(found) else None
