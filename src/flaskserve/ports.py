"""Refusing a busy port before the server starts.

gunicorn meets a busy port by retrying the bind five times, a second apart, and then exits
with "Can't connect"; by then `flaskserve serve` may have spent many seconds building the
default models. Checking first gives the user one clear line at once.
"""

from __future__ import annotations

import errno
import socket


class PortInUse(OSError):
    """Another server listens on the address."""


def check_port_free(host: str, port: int) -> None:
    """Raise `PortInUse` when something already listens on `host:port`.

    The probe binds as gunicorn does, with SO_REUSEADDR, so the closing connections of a server
    that just stopped do not count; a listening socket still does.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return  # gunicorn reports an unknown host in its own words
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(exc.errno, f"{host}:{port} is already in use") from exc
            raise
