"""The `vitdetect` command line: one thin module per command over the library."""

from vitdetect.cli.app import app, main

__all__ = ["app", "main"]
