"""Split the common prefix of ftrace text lines (task, pid, CPU, flags, timestamp, event).

Vectorised over a whole chunk: a capture-free fast path (DFA finds and slices) takes the
common shape, and one regex with captures (:data:`PREFIX`) the lines it cannot, covering every
producer seen in the wild:

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


def _fast(df: pl.DataFrame) -> pl.DataFrame:
    """Split lines of the bracketed-CPU shape with finds and slices (no captures).

    Regex captures run on a slow engine; ``find`` and ``contains`` run as a DFA. This path
    takes every line of a normal tracefs or ``trace-cmd report`` file; :func:`split` checks
    the pieces and hands lines of any other shape to :func:`_slow`.
    """
    line = pl.col("line")
    lf = df.lazy().with_columns(_i=line.str.find(r"\s\[\d+\]"))
    lf = lf.with_columns(_head=line.str.slice(0, "_i").str.strip_chars(), _tail=line.str.slice(pl.col("_i") + 1))
    # A TGID column or --ts-diff deltas make the pieces fail the checks in split(): slow path.
    head = pl.col("_head")
    tail = pl.col("_tail")
    lf = lf.with_columns(_dash=head.str.find(r"-\d+$"), _c=tail.str.find(": ", literal=True),
                         _rb=tail.str.find("]", literal=True))
    lf = lf.with_columns(
        _pre=tail.str.slice(pl.col("_rb") + 1, pl.col("_c") - pl.col("_rb") - 1).str.strip_chars(),
        _rest=tail.str.slice(pl.col("_c") + 2),
    )
    lf = lf.with_columns(_sp=pl.col("_pre").str.find(" ", literal=True))
    lf = lf.with_columns(_e=pl.col("_rest").str.find(":", literal=True))
    pre, sp = pl.col("_pre"), pl.col("_sp")
    return lf.select(
        "line_no",
        "line",
        pl.lit("event").alias("kind"),
        head.str.slice(0, "_dash").alias("comm"),
        head.str.slice(pl.col("_dash") + 1).alias("pid"),
        tail.str.slice(1, pl.col("_rb") - 1).alias("cpu"),
        pl.when(sp.is_null()).then(None).otherwise(pre.str.slice(0, sp)).alias("flags"),
        pl.when(sp.is_null()).then(pre).otherwise(pre.str.slice(sp).str.strip_chars_start()).alias("ts"),
        pl.col("_rest").str.slice(0, "_e").alias("event"),
        pl.col("_rest").str.slice(pl.col("_e") + 1).str.strip_chars_start().alias("args"),
        pl.lit(None, pl.String).alias("lost"),
    ).collect()


def _slow(df: pl.DataFrame) -> pl.DataFrame:
    """Every other line: the full regex with captures (latency layout, gaps, headers, damage)."""
    line = pl.col("line")
    df = df.with_columns(p=line.str.extract_groups(PREFIX)).unnest("p")
    other = df.filter(pl.col("event").is_null()).with_columns(g=line.str.extract_groups(GAP)).unnest("g")
    events = df.filter(pl.col("event").is_not_null())
    kind = (
        pl.when(pl.col("gcpu").is_not_null()).then(pl.lit("gap"))
        .when(line.str.contains(HEADER)).then(pl.lit("header"))
        .otherwise(pl.lit("bad"))
    )
    comm = (
        pl.when(pl.col("lcpu").is_not_null() & (pl.col("comm").str.strip_chars().str.len_chars() >= LATENCY_COMM))
        .then(None)
        .otherwise(pl.col("comm").str.strip_chars())
    )
    events = events.select(
        "line_no", "line", pl.lit("event").alias("kind"), comm.alias("comm"), "pid",
        pl.coalesce("cpu", "lcpu").alias("cpu"), pl.coalesce("flags", "lflags").alias("flags"), "ts", "event",
        "args", pl.lit(None, pl.String).alias("lost"),
    )
    other = other.select(
        "line_no", "line", kind.alias("kind"),
        pl.lit(None, pl.String).alias("comm"), pl.lit(None, pl.String).alias("pid"),
        pl.col("gcpu").alias("cpu"), pl.lit(None, pl.String).alias("flags"), pl.lit(None, pl.String).alias("ts"),
        pl.lit(None, pl.String).alias("event"), pl.lit(None, pl.String).alias("args"),
        pl.coalesce("lost1", "lost2").alias("lost"),
    )
    return pl.concat([events, other])


def _typed(df: pl.DataFrame) -> pl.DataFrame:
    """Convert the string pieces: pid, cpu, ts (ns; counter-clock integers kept as printed),
    the preempt count from the flags, and ``print`` for trace_marker lines (whose ``caller``
    keeps the name tracefs printed in the event column)."""
    ts = pl.col("ts")
    dot = ts.str.find(".", literal=True)
    digits = ts.str.replace(".", "", literal=True).str.to_integer(strict=False)
    frac_len = ts.str.len_bytes() - dot - 1
    # seconds.fraction -> ns; counter clocks print a bare integer, kept as printed.
    ts_ns = pl.when(dot.is_null()).then(digits).when(frac_len <= 9).then(digits * (10 ** (9 - frac_len)).cast(pl.Int64))
    flags = df["flags"].drop_nulls().unique()
    preempt = dict(zip(flags.to_list(), pl.select(preempt_count(pl.lit(flags))).to_series().to_list()))
    event = pl.col("event")
    is_print = event.is_in(PRINT_CALLERS)
    return df.select(
        "line_no",
        "line",
        "kind",
        "comm",
        pl.col("pid").str.to_integer(strict=False).cast(pl.Int32, strict=False),
        pl.col("cpu").str.to_integer(strict=False).cast(pl.Int16, strict=False),
        ts_ns.alias("ts"),
        pl.when(is_print).then(pl.lit("print")).otherwise(event).alias("event"),
        "args",
        pl.when(is_print).then(event).alias("caller"),
        pl.col("lost").str.to_integer(strict=False).alias("lost"),
        pl.col("flags").replace_strict(preempt, default=None, return_dtype=pl.UInt8).alias("common_preempt_count"),
        pl.col("flags").alias("_flags"),
    )


def split(lines: pl.DataFrame) -> pl.DataFrame:
    """Add the prefix columns to a frame with ``line_no`` and ``line``; ``kind`` says what each line is.

    ``kind`` is ``event``, ``gap``, ``header`` or ``bad``. Event rows get ``comm``, ``pid``,
    ``cpu``, ``ts`` (ns; integer timestamps of counter clocks are kept as they are), ``event``
    and ``args`` (and ``caller`` for tracefs ``print`` lines); gap rows get ``cpu`` and ``lost``
    (null when the count was not printed).
    """
    # Split everything the fast way, then send the rows whose pieces do not check out to the
    # regex path.
    df = _typed(_fast(lines))
    ok = (
        pl.col("pid").is_not_null() & pl.col("cpu").is_not_null() & pl.col("ts").is_not_null()
        & pl.col("event").str.contains(r"^\w+$").fill_null(False)
        & (pl.col("_flags").is_null() | pl.col("_flags").str.contains(r"^[^\s\[\]]{4,5}$").fill_null(False))
        & ~pl.col("comm").str.contains(r"^[\s>|]|^$").fill_null(True)
    )
    good = df.select(ok).to_series()
    if not good.all():
        slow = _typed(_slow(df.filter(~good).select("line_no", "line")))
        df = pl.concat([df.filter(good), slow]).sort("line_no")
    return df.drop("_flags")


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
