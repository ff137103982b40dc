"""The package version (the lowest layer: imports nothing)."""

__version__ = "0.1.0"
