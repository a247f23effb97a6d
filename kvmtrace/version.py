"""The version of kvmtrace: written once here; the package metadata (pyproject.toml) reads it."""

__version__ = "0.1.0"
