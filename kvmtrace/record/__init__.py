"""Recording kvmmmu traces: tracefs setup and restore, capture (the trace.dat writer they use is
:mod:`kvmtrace.parsers.tracedat.writer`, next to the reader it must agree with)."""
