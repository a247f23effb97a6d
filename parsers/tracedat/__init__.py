"""trace-cmd ``trace.dat`` (v6 and v7) reader: exact, columnar, into Arrow tables.

Entry point :func:`read_tracedat`. The format constants live in
:mod:`parsers.tracedat.constants` so that writers of test files import them from here.
"""

from parsers.tracedat.reader import read_tracedat

__all__ = ["read_tracedat"]
