"""Recording kvmmmu traces: tracefs setup and restore, capture, and our own trace.dat writer."""
