"""`vitdetect serve`: the HTTP API and web page (the `[serve]` extra)."""

from __future__ import annotations

from pathlib import Path

import typer

from vitdetect.cli.support import described, user_errors
from vitdetect.config.commands import Backend, ServeSettings
from vitdetect.config.settings import build_settings
from vitdetect.errors import VitdetectError


@user_errors
def serve(
    checkpoint: Path = described(ServeSettings, "checkpoint", "--checkpoint"),
    threshold: float = described(ServeSettings, "threshold", "--threshold"),
    host: str = described(ServeSettings, "host", "--host"),
    port: int = described(ServeSettings, "port", "--port"),
    max_batch: int = described(ServeSettings, "max_batch", "--max-batch"),
    max_wait_ms: float = described(ServeSettings, "max_wait_ms", "--max-wait-ms"),
    max_upload_mb: float = described(ServeSettings, "max_upload_mb", "--max-upload-mb"),
    max_files: int = described(ServeSettings, "max_files", "--max-files"),
    backend: Backend = described(ServeSettings, "backend", "--backend"),
    read_timeout_s: float = described(ServeSettings, "read_timeout_s", "--read-timeout"),
    cpu: bool = described(ServeSettings, "cpu", "--cpu/--no-cpu"),
    threads: int = described(ServeSettings, "threads", "--threads"),
    quiet: bool = described(ServeSettings, "quiet", "--quiet/--no-quiet", "-q"),
) -> None:
    """Serve an HTTP API (POST /v1/predict, GET /v1/model, /healthz) and a web page for judging images."""
    settings = build_settings(ServeSettings, None, **locals())
    from vitdetect.serve import INSTALL_HINT, missing_packages

    if missing_packages():
        raise VitdetectError(f"vitdetect serve needs {', '.join(missing_packages())}: {INSTALL_HINT}")
    from vitdetect.serve.server import serve as run_server

    run_server(settings, announce=lambda line: typer.echo(line))
