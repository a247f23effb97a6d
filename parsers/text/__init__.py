"""ftrace text in, the same tables as a trace.dat out.

Inputs: tracefs ``trace`` (with its ``# tracer:`` header) and ``trace_pipe`` text, and
``trace-cmd report`` output (plugin-rendered or ``-R`` raw), plain or gzip/xz/zstd. Pasted
excerpts survive mail damage (quoting, quoted-printable, wrapped lines) where the repair is
exact. Modules: ``probe`` (is this text a trace at all? refusals that say what it is),
``source`` (chunks of lines, from any stream), ``scan`` (the common prefix of tracefs-layout
lines, from the bytes; ``layout`` splits a chunk's most common column layout, ``words`` holds
the byte arithmetic both use), ``lines`` (the common prefix of any line, from strings), ``catalog`` and
``pages`` (every printed form of the decoded events), ``printf`` (format string -> regex),
``decode`` (vectorised field extraction), ``repair`` (damaged text), ``assemble`` (seq, tables,
gaps, info), ``reader`` (the chunk loop).

What text cannot carry is null, and the table's schema metadata (``kvmtrace.null.<column>``)
says why: hashed ``%p`` pointers, the kvm plugin's missing gfn/generation, role words printed
by their fields, ``common_flags``. Page-class tables add ``role_partial`` and ``role_mask``: the
role bits the text prints and which they are (``kvmtrace.role_unprinted`` names the rest).
Events without a decoder keep their arguments in a ``text`` column. ``kvmtrace.text_forms``
lists the printed forms (kernel eras) an event's lines matched, the text's own evidence of the
kernel era.
"""

from kvmtrace.parsers.text.reader import read_text

__all__ = ["read_text"]
