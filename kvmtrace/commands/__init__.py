"""One module per ``kvmtrace`` subcommand; each registers itself on :data:`kvmtrace.cli.app`."""
