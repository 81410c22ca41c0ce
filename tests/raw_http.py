"""HTTP over a bare socket, for requests a client library would tidy up (or refuse to send).

A module of its own so test files in any folder can import it by a name no other file has.
"""

from __future__ import annotations

import socket

import orjson


def exchange(port: int, head: str, body: bytes = b"", timeout: float = 10.0) -> tuple[int, dict]:
    """Send `head` (request line and headers, without the blank line) and `body`, and read one
    response: (status, JSON body). The connection stays open while waiting, so a server that
    waits for body bytes never sent makes this raise `TimeoutError` after `timeout` seconds."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode("latin-1") + b"\r\n\r\n" + body)
        return read_response(sock)


def read_response(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before a response: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines[1:])
    }
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, orjson.loads(rest[:length]) if length else {}
