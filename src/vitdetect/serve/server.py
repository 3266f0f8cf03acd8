"""`vitdetect serve`: bind the address, load the checkpoint, run the app under uvicorn until stopped."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import uvicorn

from vitdetect.config.commands import ServeSettings
from vitdetect.errors import VitdetectError
from vitdetect.inference.detector import Detector, default_checkpoint
from vitdetect.serve.app import create_app
from vitdetect.utils.distributed import make_accelerator, use_threads

ANNOUNCE_PREFIX = "vitdetect serve: listening on "


def serve(settings: ServeSettings, announce: Callable[[str], None]) -> None:
    """Serve until Ctrl-C or SIGTERM (a clean stop: requests in flight are answered first)."""
    listener = listen(settings.host, settings.port)  # a busy port fails at once, before the model loads
    settings = settings.model_copy(update={"checkpoint": Path(str(settings.checkpoint or default_checkpoint()))})
    use_threads(settings.threads)
    detector = Detector.load(settings.checkpoint, settings.backend, settings.cpu, threshold=settings.threshold,
                             batch_size=settings.max_batch, accelerator=make_accelerator(cpu=settings.cpu))
    app = create_app(detector, settings)
    config = uvicorn.Config(app, log_level="warning" if settings.quiet else "info", access_log=not settings.quiet,
                            server_header=False)
    announce(f"{ANNOUNCE_PREFIX}{url(listener)} (web page at /, API docs at /docs; Ctrl-C stops)")
    try:
        uvicorn.Server(config).run(sockets=[listener])
    except KeyboardInterrupt:  # uvicorn shut down cleanly, then re-raised the Ctrl-C / SIGTERM it caught
        pass
    finally:
        listener.close()
    announce("vitdetect serve: stopped")


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one), or one clear error."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        # IPPROTO_TCP, not 0 as socket.create_server leaves it: asyncio turns Nagle's algorithm off (TCP_NODELAY)
        # only on sockets that say they are TCP, and with it on, every keep-alive answer waited ~40 ms for an ACK.
        listener = socket.socket(family, kind, protocol)
    except OSError as exc:
        raise VitdetectError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(2048)
    except OSError as exc:
        listener.close()
        raise VitdetectError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return listener


def url(listener: socket.socket) -> str:
    host, port = listener.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
