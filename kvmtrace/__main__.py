"""``python -m kvmtrace``: the same CLI as the ``kvmtrace`` command."""

from kvmtrace.cli import main

main()
