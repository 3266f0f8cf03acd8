"""A quick reachability check, so that offline machines get one clear line instead of minutes of retries."""

from __future__ import annotations

import socket
import urllib.request
from urllib.parse import urlsplit

CONNECT_TIMEOUT_S = 10.0


def unreachable_reason(url: str, timeout: float = CONNECT_TIMEOUT_S) -> tuple[str, str] | None:
    """(host:port, why) when a TCP connection to url's host, or to the proxy the environment sets for it,
    fails; None when it works."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy_parts.hostname or "", proxy_parts.port or 80
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        reason = ("host name not resolved" if isinstance(exc, socket.gaierror)
                  else f"no answer in {timeout:.0f} s" if isinstance(exc, TimeoutError)
                  else exc.strerror or type(exc).__name__)
        return f"{host}:{port}", reason
    return None
