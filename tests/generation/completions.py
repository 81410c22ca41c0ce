"""Streamed OpenAI completions for the generation tests: one held open on the `gated` streamer
(tests/generation/conftest.py) while a test acts, and raw requests for clients that leave or
stop reading, which no client library lets a test be.

A module of its own (not conftest.py) so test files can import it by a name no other file has.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import orjson
import requests

from servers import Server


@contextmanager
def held_stream(server: Server, model: str, gate: str) -> Iterator[Iterator[bytes]]:
    """A streamed completion of `model` (one that says "first ", then waits for the file `gate`
    names), once its first token has arrived; yields the rest of its lines."""
    with requests.post(
        server.url + "/v1/completions",
        json={"model": model, "prompt": gate, "stream": True},
        stream=True,
        timeout=60,
    ) as response:
        lines = response.iter_lines()
        assert b"first" in next(line for line in lines if line)
        yield lines


def raw_completion(body: dict, key: str | None = None) -> bytes:
    """The bytes of a POST /v1/completions with JSON `body` (and `key` as its bearer token)."""
    payload = orjson.dumps(body)
    authorization = f"Authorization: Bearer {key}\r\n" if key else ""
    return (
        b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + authorization.encode()
        + b"Content-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )


def receive_ticks(sock: socket.socket, count: int) -> None:
    """Read a stream of the `endless` streamer until it has said "tick" `count` times."""
    received = b""
    while received.count(b"tick") < count:
        piece = sock.recv(4096)
        assert piece, f"the server closed the stream: {received!r}"
        received += piece
