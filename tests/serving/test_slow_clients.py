"""Slow clients cannot starve the server: connections that stall mid-headers or mid-body hold
no thread that health checks and inference need, and stalled headers are cut off."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest
import requests

BODY = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0] * 64}]}
STALLS = 100
#: What each kind of stalled client sends, and then nothing more.
STALLED = {
    "headers": b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: localhost\r\nContent-Le",
    "body": (
        b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/json\r\nContent-Length: 4000\r\n\r\n"
        b'{"inputs": [{"name": "input", "shape": [1, 64], '
    ),
}


@contextmanager
def stalled_clients(port: int, sent: bytes, count: int) -> Iterator[list[socket.socket]]:
    """`count` open connections that each sent `sent` and then stall."""
    with ExitStack() as stack:
        clients = []
        for _ in range(count):
            client = stack.enter_context(socket.create_connection(("127.0.0.1", port)))
            client.sendall(sent)
            clients.append(client)
        yield clients


def answered_within(seconds: float, method: str, url: str, **kwargs: object) -> int:
    """The status of a request that must be answered within `seconds`."""
    started = time.monotonic()
    response = requests.request(method, url, timeout=seconds, **kwargs)  # type: ignore[arg-type]
    assert time.monotonic() - started < seconds
    return response.status_code


@pytest.mark.parametrize("stall", sorted(STALLED))
def test_stalled_clients_do_not_delay_health_or_inference(digits_server, stall: str) -> None:
    digits_server.wait_for_log("model digits version 1 is ready", count=2)  # both workers up
    url = digits_server.url
    with stalled_clients(digits_server.port, STALLED[stall], STALLS):
        for _ in range(3):  # the connections are spread over both workers: ask each
            assert answered_within(1.0, "GET", f"{url}/v2/health/ready") == 200
            status = answered_within(1.0, "POST", f"{url}/v2/models/digits/infer", json=BODY)
            assert status == 200


def test_a_client_that_never_finishes_its_headers_is_disconnected(start_server, digits_repo):
    server = start_server([str(digits_repo), "--workers", "1", "--header-timeout-ms", "1000"])
    with stalled_clients(server.port, STALLED["headers"], 1) as (client,):
        started = time.monotonic()
        client.settimeout(10)
        try:
            closed = client.recv(4096) == b""
        except ConnectionResetError:
            closed = True
        waited = time.monotonic() - started
    assert closed, "the server answered a request whose headers never ended"
    assert 0.5 < waited < 5, f"disconnected after {waited:.1f}s, not after about 1 s"
