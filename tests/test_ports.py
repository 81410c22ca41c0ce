"""A busy port is refused before the server starts; a free one is not."""

from __future__ import annotations

import socket

import pytest

from flaskserve.ports import PortInUse, check_port_free


@pytest.mark.parametrize("reuse_port", [False, True])
def test_a_port_another_server_listens_on_is_refused(reuse_port: bool) -> None:
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(PortInUse, match=f"127.0.0.1:{port} is already in use"):
            check_port_free("127.0.0.1", port)
    check_port_free("127.0.0.1", port)
