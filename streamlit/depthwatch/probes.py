"""Local sockets and HTTP, as the supervisor (supervisor.py) uses them: a
free port for the simulator, a refusal in one line when a port is taken,
whether a server accepts connections yet, and the dashboard's health check."""

from __future__ import annotations

import errno
import socket
from functools import cache
from typing import Any

from depthwatch.config import ConfigError

SIM_HOST = "127.0.0.1"
HEALTH_TIMEOUT_S = 1.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((SIM_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def ensure_port_free(address: str, port: int, flag: str) -> None:
    """Fail before starting anything, with a clear line, rather than letting a
    child die on a busy port after the database and the others started."""
    try:
        infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve the address {address!r}: {exc.strerror}") from None
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:  # others: an unusable family, skip it
                    raise ConfigError(
                        f"port {port} on {address} is already in use; choose another with {flag}"
                    ) from None


def accepts_tcp(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=HEALTH_TIMEOUT_S):
            return True
    except OSError:
        return False


def probe_host(address: str) -> str:
    """Where to reach a server listening on `address` from this machine."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(address, address)
    return f"[{host}]" if ":" in host else host


def url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


@cache
def _direct_opener() -> Any:
    """An opener that ignores http_proxy: the dashboard is local. Imported
    late because every depthwatch command builds this module's parsers."""
    import urllib.request

    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def health_ok(url: str) -> bool:
    import http.client

    try:
        with _direct_opener().open(url, timeout=HEALTH_TIMEOUT_S) as response:
            return bool(response.status == 200)
    except (OSError, http.client.HTTPException):  # URLError is an OSError
        return False
