"""trace-cmd ``trace.dat`` (v6 and v7) reader: exact, columnar, into Arrow tables.

Entry point :func:`read_tracedat` (``kvmtrace.parsers.read`` dispatches here by content). What it returns,
beyond :mod:`kvmtrace.parsers.schema`:

- ``tables``: one per event name present, plus empty tables for the other events of every system
  that was recorded (so ``table("kvm_mmu_zap_page")`` exists, with 0 rows, when kvmmmu was on).
  Columns: ``seq, ts, cpu, pid, comm``, then ``common_flags``, ``common_preempt_count`` (and any
  other common field of the kernel), then the format file's fields with exact integer types;
  ``char`` arrays and ``__data_loc char[]`` are strings; other fixed/dynamic integer arrays are
  (fixed-size) lists (``__u8 insn[15]`` is ``list<uint8>[15]``, not text); other bytes are binary.
  A name two systems share is bare for the first, ``system:name`` for the later one.
- ``comm``: as trace-cmd shows it: ``<idle>`` for pid 0, ``<...>`` for a pid missing from the
  kernel's saved_cmdlines.
- ``ts``: nanoseconds exactly as ``trace-cmd report -t`` prints them (TIME_SHIFT, TSC2NSEC, DATE
  and OFFSET options applied as trace-cmd applies them).
- ``bprint``: ``fmt`` is the format string (from the printk formats), ``fmt_addr`` its address,
  ``buf`` the raw argument bytes (not formatted).
- ``gaps``: one row per page the kernel flagged with lost events, even when trace-cmd prints no
  marker (it only does when the page's first record is an event).
- Records whose event id has no format file appear in ``events`` as ``<unknown>`` (null system)
  and in no table; a TraceWarning counts them.

The format constants live in :mod:`kvmtrace.parsers.tracedat.constants`; the reader's twin,
:mod:`kvmtrace.parsers.tracedat.writer`, writes v6/v7 files from the same constants (the recorder
uses it, and the tests build hand-made and damaged files with it).
"""

from kvmtrace.parsers.tracedat.reader import read_tracedat

__all__ = ["read_tracedat"]
