"""What the serve tests share: the uploads they send, an app around a detector, multipart fields."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from conftest import make_image
from vitdetect.config.commands import ServeSettings
from vitdetect.serve.app import create_app


def upload_images(evaluated_run: Path) -> dict[str, bytes]:
    """name -> bytes: CIFAKE-like JPEGs of both classes from the run's test split, a PNG and a large WebP."""
    test = evaluated_run.parent / "cifake" / "test"
    files = {f"{label}-{path.name}": path.read_bytes()
             for label in ("REAL", "FAKE") for path in sorted((test / label).iterdir())[:3]}
    for name, fmt, size in (("render.png", "PNG", 32), ("big.webp", "WEBP", 300)):
        buffer = io.BytesIO()
        make_image(1, np.random.default_rng(len(name)), size).save(buffer, format=fmt)
        files[name] = buffer.getvalue()
    return files


def serving(detector, checkpoint: Path, **settings) -> TestClient:
    """A TestClient for an app around detector (use it as a context manager: that runs the batching worker)."""
    settings = {"max_files": 8, "max_upload_mb": 1, "max_wait_ms": 1, **settings}
    return TestClient(create_app(detector, ServeSettings(checkpoint=checkpoint, **settings)),
                      raise_server_exceptions=False)


def multipart(files: dict[str, bytes], field: str = "files") -> list:
    return [(field, (name, data, "application/octet-stream")) for name, data in files.items()]
