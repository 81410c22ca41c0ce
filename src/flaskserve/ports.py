"""Refusing a busy port before the server starts.

The engine finds a busy port only when its workers bind, after `flaskserve serve` may have
spent many seconds building the default models; and Granian's workers bind with SO_REUSEPORT,
so a second server of the same user could even share the port with the first. Checking first,
without SO_REUSEPORT, gives the user one clear line at once.
"""

from __future__ import annotations

import errno
import socket


class PortInUse(OSError):
    """Another server listens on the address."""


def check_port_free(host: str, port: int) -> None:
    """Raise `PortInUse` when something already listens on `host:port`.

    The probe binds with SO_REUSEADDR, so the closing connections of a server that just stopped
    do not count; a listening socket still does.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return  # the engine reports an unknown host in its own words
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(exc.errno, f"{host}:{port} is already in use") from exc
            raise
