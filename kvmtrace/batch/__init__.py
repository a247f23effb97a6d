"""Fleets of traces: ``kvmtrace.batch.run(paths, engine="local"|"dask")`` and ``kvmtrace batch``.

A kernel CI or a fleet that samples hosts produces many traces that are read together; this
package analyses each one exactly as ``kvmtrace analyze`` would, on a local process pool or a
Dask cluster, and gathers findings, checks and per-trace summaries into polars frames (and, for
the command, Parquet files, per-trace reports and a fleet summary).
"""

from kvmtrace.batch.fleet import BatchResult, run

__all__ = ["BatchResult", "run"]
