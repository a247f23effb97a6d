"""One module per ``kvmtrace`` subcommand: plain typer functions that :mod:`kvmtrace.cli` registers
(they never import it), plus :mod:`.common`, what they share."""
