"""`vitdetect serve`: an HTTP API (FastAPI + uvicorn) and a web page for judging images.

Needs the `[serve]` extra; importing this package alone stays cheap (no FastAPI, no torch), so the
CLI can say which install is missing in one line.
"""

from __future__ import annotations

import importlib.util

EXTRA_MODULES = {"fastapi": "fastapi", "uvicorn": "uvicorn", "python_multipart": "python-multipart"}
INSTALL_HINT = "pip install \"vitdetect[serve]\""


def missing_packages() -> list[str]:
    """The [serve] packages that are not installed (names as pip knows them)."""
    return [package for module, package in EXTRA_MODULES.items() if importlib.util.find_spec(module) is None]
